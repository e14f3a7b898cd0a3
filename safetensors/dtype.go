// Package safetensors reads and writes the safetensors format: a validated,
// memory-mapped reader for single files and sharded Hugging Face model
// directories, and a streaming writer that never holds more than one tensor.
package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"unsafe"

	"github.com/x448/float16"
)

// DType is a safetensors element type, spelled as in the file header.
type DType string

// The dtypes the reference implementation knows. Only F32, F16 and BF16 can
// be read as float32 for compute; the others are listed and refused.
const (
	BOOL    DType = "BOOL"
	U8      DType = "U8"
	I8      DType = "I8"
	F8E5M2  DType = "F8_E5M2"
	F8E4M3  DType = "F8_E4M3"
	F8E8M0  DType = "F8_E8M0"
	F4      DType = "F4"
	F6E2M3  DType = "F6_E2M3"
	F6E3M2  DType = "F6_E3M2"
	I16     DType = "I16"
	U16     DType = "U16"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I32     DType = "I32"
	U32     DType = "U32"
	F32     DType = "F32"
	F64     DType = "F64"
	I64     DType = "I64"
	U64     DType = "U64"
	C64     DType = "C64"
	unknown DType = ""
)

var dtypeBits = map[DType]uint64{
	BOOL: 8, U8: 8, I8: 8, F8E5M2: 8, F8E4M3: 8, F8E8M0: 8, F4: 4, F6E2M3: 6, F6E3M2: 6,
	I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32,
	F64: 64, I64: 64, U64: 64, C64: 64,
}

// Bits is the element size in bits, 0 for an unknown dtype.
func (d DType) Bits() uint64 { return dtypeBits[d] }

// Known reports whether d is a dtype of the format.
func (d DType) Known() bool { return dtypeBits[d] != 0 }

// Float reports whether tensors of this dtype can be read as float32.
func (d DType) Float() bool { return d == F32 || d == F16 || d == BF16 }

// ParseDType accepts the header spelling, case-insensitively, for CLI flags.
func ParseDType(s string) (DType, error) {
	switch s {
	case "f32", "F32", "float32", "fp32":
		return F32, nil
	case "bf16", "BF16", "bfloat16":
		return BF16, nil
	case "f16", "F16", "float16", "fp16":
		return F16, nil
	}
	return unknown, fmt.Errorf("unsupported output dtype %q: use f32, bf16 or f16", s)
}

// littleEndian reports whether float32 values are stored little-endian in
// memory, so dst can be written as bytes.
var littleEndian = func() bool {
	x := uint32(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// BF16ToF32 widens bfloat16 values (little-endian bytes) into dst.
func BF16ToF32(dst []float32, src []byte) {
	n := len(dst)
	if n == 0 {
		return
	}
	_ = src[2*n-1]
	i := 0
	if littleEndian && n >= 8 {
		// Eight values at a time: two 8-byte loads, four 8-byte stores,
		// each bf16 moved into the high half of its float32.
		out := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*n)
		in := src[:2*n]
		for len(in) >= 16 && len(out) >= 32 {
			x := binary.LittleEndian.Uint64(in)
			y := binary.LittleEndian.Uint64(in[8:16])
			binary.LittleEndian.PutUint64(out, (x&0xffff)<<16|(x&0xffff0000)<<32)
			binary.LittleEndian.PutUint64(out[8:16], (x>>16)&0xffff0000|x&0xffff000000000000)
			binary.LittleEndian.PutUint64(out[16:24], (y&0xffff)<<16|(y&0xffff0000)<<32)
			binary.LittleEndian.PutUint64(out[24:32], (y>>16)&0xffff0000|y&0xffff000000000000)
			in, out, i = in[16:], out[32:], i+8
		}
	}
	for ; i < n; i++ {
		dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
	}
}

// F32ToBF16 rounds to nearest even (NaN stays NaN) into little-endian bytes.
func F32ToBF16(dst []byte, src []float32) {
	if len(src) == 0 {
		return
	}
	_ = dst[2*len(src)-1]
	for i, f := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], BF16Bits(f))
	}
}

// BF16Bits rounds one float32 to bfloat16, nearest even, keeping NaNs quiet.
func BF16Bits(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

var (
	f16Once  sync.Once
	f16Table []float32
)

// f16Lookup is a 65536-entry table: widening a half is then one load.
func f16Lookup() []float32 {
	f16Once.Do(func() {
		f16Table = make([]float32, 1<<16)
		for i := range f16Table {
			f16Table[i] = float16.Frombits(uint16(i)).Float32()
		}
	})
	return f16Table
}

// F16ToF32 widens IEEE half values (little-endian bytes) into dst.
func F16ToF32(dst []float32, src []byte) {
	t := f16Lookup()
	if len(dst) == 0 {
		return
	}
	_ = src[2*len(dst)-1]
	for i := range dst {
		dst[i] = t[binary.LittleEndian.Uint16(src[2*i:])]
	}
}

// F32ToF16 rounds to nearest even half precision into little-endian bytes.
func F32ToF16(dst []byte, src []float32) {
	if len(src) == 0 {
		return
	}
	_ = dst[2*len(src)-1]
	for i, f := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], float16.Fromfloat32(f).Bits())
	}
}

// F32ToBytes stores float32 values as little-endian bytes.
func F32ToBytes(dst []byte, src []float32) {
	if len(src) == 0 {
		return
	}
	_ = dst[4*len(src)-1]
	for i, f := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
	}
}

// BytesToF32 loads little-endian float32 bytes.
func BytesToF32(dst []float32, src []byte) {
	if len(dst) == 0 {
		return
	}
	_ = src[4*len(dst)-1]
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}
