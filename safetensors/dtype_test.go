package safetensors

import (
	"math"
	"testing"
)

// The references below round by comparing distances to the two candidate
// neighbours in float64, independent of the bit tricks in dtype.go.

// bf16Value is the value of bfloat16 bits, with the all-ones exponent
// standing for 2^128, the next step after the largest finite value (so that
// rounding to infinity follows the same nearest-even rule).
func bf16Value(b uint16) float64 {
	if b&0x7f80 == 0x7f80 {
		return math.Copysign(math.Ldexp(1, 128), float64(int16(b)))
	}
	return float64(math.Float32frombits(uint32(b) << 16))
}

// refBF16 is nearest-even bfloat16 of a non-NaN float32.
func refBF16(f float32) uint16 {
	u := math.Float32bits(f)
	lo := uint16(u >> 16) // truncated magnitude
	if u&0xffff == 0 {
		return lo
	}
	hi := lo + 1 // next magnitude, same sign
	d1 := math.Abs(float64(f) - bf16Value(lo))
	d2 := math.Abs(bf16Value(hi) - float64(f))
	switch {
	case d1 < d2:
		return lo
	case d2 < d1:
		return hi
	case lo&1 == 0:
		return lo
	}
	return hi
}

// halfValue decodes IEEE binary16 from its definition; 0x7c00 is 2^16 for
// the same reason as in bf16Value.
func halfValue(h uint16) float64 {
	e, m := int(h>>10&31), float64(h&1023)
	var v float64
	switch e {
	case 0:
		v = math.Ldexp(m, -24)
	case 31:
		if m != 0 {
			return math.NaN()
		}
		v = math.Ldexp(1, 16)
	default:
		v = math.Ldexp(1024+m, e-25)
	}
	if h&0x8000 != 0 {
		v = -v
	}
	return v
}

// refF16 is nearest-even binary16 of a non-NaN float32, by binary search
// over the positive codes (monotonic in value).
func refF16(f float32) uint16 {
	a := math.Abs(float64(f))
	var sign uint16
	if math.Signbit(float64(f)) {
		sign = 0x8000
	}
	if a >= math.Ldexp(1, 16) {
		return sign | 0x7c00
	}
	lo, hi := uint16(0), uint16(0x7c00) // halfValue(lo) <= a < halfValue(hi)
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if halfValue(mid) <= a {
			lo = mid
		} else {
			hi = mid
		}
	}
	d1, d2 := a-halfValue(lo), halfValue(hi)-a
	switch {
	case d1 < d2 || (d1 == d2 && lo&1 == 0):
		return sign | lo
	}
	return sign | hi
}

// specialFloats covers ties, neighbours of ties, subnormals, overflow to
// infinity, signed zeros, infinities and NaNs for both 16-bit formats.
func specialFloats() []float32 {
	bits := []uint32{
		0, 0x80000000, 0x7f800000, 0xff800000, // zeros, infinities
		0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7f80ffff, 0x7fffffff, // NaNs (some would truncate to Inf)
		0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, // bf16 ties to even (down, up) and neighbours
		0xbf808000, 0xbf818000, // negative ties
		0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0xff7fffff, // largest finite: rounds to Inf, tie to Inf, stays
		0x00000001, 0x00008000, 0x00018000, 0x00007fff, 0x807fffff, 0x00800000, 0x007f8000, // subnormals
		0x3f800000, 0x3f801000, 0x3f803000, 0x3f800fff, // f16: 1, tie down, tie up, below tie
		0x477fe000, 0x477ff000, 0x477fefff, 0x477fffff, 0xc77ff000, // f16: 65504, 65520 (tie -> Inf), 65519.99
		0x33000000, 0x33400000, 0x33c00000, 0x32ffffff, 0x387fc000, 0x38800000, // f16 subnormal ties, min normal
	}
	out := make([]float32, 0, len(bits)+4000)
	for _, b := range bits {
		out = append(out, math.Float32frombits(b))
	}
	// Random bit patterns over the whole range, and random values near 1.
	x := uint64(0x9E3779B97F4A7C15)
	for i := 0; i < 4000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		if i%2 == 0 {
			out = append(out, math.Float32frombits(uint32(x)))
		} else {
			out = append(out, float32(int32(x))/(1<<28))
		}
	}
	return out
}

func TestF32ToBF16RoundsNearestEven(t *testing.T) {
	for _, f := range specialFloats() {
		got := BF16Bits(f)
		if f != f {
			if got&0x7f80 != 0x7f80 || got&0x7f == 0 || got>>15 != uint16(math.Float32bits(f)>>31) {
				t.Errorf("NaN %#08x -> %#04x, not a NaN of the same sign", math.Float32bits(f), got)
			}
			continue
		}
		if want := refBF16(f); got != want {
			t.Errorf("%g (%#08x) -> %#04x, want %#04x", f, math.Float32bits(f), got, want)
		}
	}
	// The slice form agrees with the scalar one.
	vals := specialFloats()
	b := make([]byte, 2*len(vals))
	F32ToBF16(b, vals)
	for i, f := range vals {
		if got := uint16(b[2*i]) | uint16(b[2*i+1])<<8; got != BF16Bits(f) {
			t.Fatalf("F32ToBF16[%d] = %#04x, BF16Bits = %#04x", i, got, BF16Bits(f))
		}
	}
}

func TestF32ToF16RoundsNearestEven(t *testing.T) {
	vals := specialFloats()
	b := make([]byte, 2*len(vals))
	F32ToF16(b, vals)
	for i, f := range vals {
		got := uint16(b[2*i]) | uint16(b[2*i+1])<<8
		if f != f {
			if got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Errorf("NaN %#08x -> %#04x", math.Float32bits(f), got)
			}
			continue
		}
		if want := refF16(f); got != want {
			t.Errorf("%g (%#08x) -> %#04x, want %#04x", f, math.Float32bits(f), got, want)
		}
	}
}

// TestWidenAllCodes checks both 16-bit decoders on every bit pattern.
func TestWidenAllCodes(t *testing.T) {
	src := make([]byte, 2<<16)
	for i := 0; i < 1<<16; i++ {
		src[2*i], src[2*i+1] = byte(i), byte(i>>8)
	}
	bf := make([]float32, 1<<16)
	BF16ToF32(bf, src)
	hf := make([]float32, 1<<16)
	F16ToF32(hf, src)
	for i := 0; i < 1<<16; i++ {
		if got := math.Float32bits(bf[i]); got != uint32(i)<<16 {
			t.Fatalf("BF16 %#04x -> %#08x", i, got)
		}
		want := halfValue(uint16(i))
		switch {
		case want != want:
			if hf[i] == hf[i] {
				t.Fatalf("F16 %#04x -> %g, want NaN", i, hf[i])
			}
		case i&0x7fff == 0x7c00:
			if !math.IsInf(float64(hf[i]), int(1-2*(i>>15))) {
				t.Fatalf("F16 %#04x -> %g, want Inf", i, hf[i])
			}
		default:
			if float64(hf[i]) != want || math.Signbit(float64(hf[i])) != (i>>15 == 1) {
				t.Fatalf("F16 %#04x -> %g, want %g", i, hf[i], want)
			}
		}
	}
	// Odd lengths and unaligned sources.
	for n := 0; n < 40; n++ {
		for off := 0; off < 3; off++ {
			dst := make([]float32, n)
			BF16ToF32(dst, src[off:off+2*n])
			for i := range dst {
				w := uint32(src[off+2*i]) | uint32(src[off+2*i+1])<<8
				if math.Float32bits(dst[i]) != w<<16 {
					t.Fatalf("n=%d off=%d i=%d: %#08x", n, off, i, math.Float32bits(dst[i]))
				}
			}
		}
	}
}

func TestF32BytesRoundTrip(t *testing.T) {
	vals := specialFloats()
	b := make([]byte, 4*len(vals))
	F32ToBytes(b, vals)
	back := make([]float32, len(vals))
	BytesToF32(back, b)
	for i := range vals {
		if math.Float32bits(back[i]) != math.Float32bits(vals[i]) {
			t.Fatalf("%d: %#08x -> %#08x", i, math.Float32bits(vals[i]), math.Float32bits(back[i]))
		}
	}
}

func TestParseDType(t *testing.T) {
	for s, want := range map[string]DType{"bf16": BF16, "F32": F32, "fp16": F16, "float32": F32, "bfloat16": BF16} {
		if got, err := ParseDType(s); err != nil || got != want {
			t.Errorf("%s -> %s, %v", s, got, err)
		}
	}
	if _, err := ParseDType("int8"); err == nil {
		t.Error("int8 accepted")
	}
	if !F16.Float() || I64.Float() || !I64.Known() || DType("X").Known() || F4.Bits() != 4 {
		t.Error("dtype helpers")
	}
}
