package cuda

import (
	"encoding/binary"
	"math"
	"testing"
	"unsafe"
)

// The parameter buffer follows the CUDA ABI: each value at an offset
// aligned to its size, and kernelParams[i] points at value i.
func TestParamsLayout(t *testing.T) {
	p := new(params).ptr(0x1234_5678_9abc).i32(-7).f32(1.5).u64(1 << 63).i32(3).ptr(0xdead).i64(-2)
	wantOff := []uint16{0, 8, 12, 16, 24, 32, 40}
	for i, w := range wantOff {
		if p.off[i] != w {
			t.Errorf("argument %d at offset %d, want %d", i, p.off[i], w)
		}
	}
	if p.size != 48 || p.signature() != "pifqipq" {
		t.Fatalf("size %d signature %q", p.size, p.signature())
	}
	le := binary.LittleEndian
	if le.Uint64(p.buf[0:]) != 0x1234_5678_9abc || int32(le.Uint32(p.buf[8:])) != -7 ||
		math.Float32frombits(le.Uint32(p.buf[12:])) != 1.5 || le.Uint64(p.buf[16:]) != 1<<63 ||
		le.Uint32(p.buf[24:]) != 3 || le.Uint64(p.buf[32:]) != 0xdead || int64(le.Uint64(p.buf[40:])) != -2 {
		t.Errorf("buffer % x", p.buf[:48])
	}
	arr := (*[maxParams]unsafe.Pointer)(p.pointers())
	for i := 0; i < p.n; i++ {
		if arr[i] != unsafe.Pointer(&p.buf[wantOff[i]]) {
			t.Errorf("kernelParams[%d] does not point at its value", i)
		}
	}
	if !p.matches("pifqipq") || p.matches("pifqip") || p.matches("pifqipp") {
		t.Error("matches")
	}
}

func TestParamsLimits(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	mustPanic("int32 overflow", func() { new(params).i32(1 << 31) })
	mustPanic("too many", func() {
		p := new(params)
		for i := 0; i <= maxParams; i++ {
			p.i32(i)
		}
	})
}

// Every launch site packs what the kernel declares: each op of the
// Backend is checked at launch (Backend.launch), and kernelInfo against
// the PTX (TestPTXEntries); here the signatures are well-formed.
func TestKernelInfo(t *testing.T) {
	seen := map[string]bool{}
	for k := kernel(0); k < numKernels; k++ {
		info := kernelInfo[k]
		if info.name == "" || seen[info.name] {
			t.Errorf("kernel %d: name %q missing or repeated", k, info.name)
		}
		seen[info.name] = true
		for _, c := range info.sig {
			if c != 'p' && c != 'q' && c != 'i' && c != 'f' {
				t.Errorf("%s: bad class %q", info.name, c)
			}
		}
	}
}
