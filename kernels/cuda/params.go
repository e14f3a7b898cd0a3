package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

const (
	maxParams  = 32
	paramBytes = 256
)

// params packs the arguments of one kernel launch the way the CUDA ABI lays
// out a kernel's parameter buffer: each value at the next offset aligned to
// its size (8 for pointers and 64-bit integers, 4 for int and float). The
// kernelParams array that cuLaunchKernel takes points at each value in turn.
// kind records each argument's class for the signature checks:
// p pointer, q 64-bit integer, i 32-bit integer, f float32.
type params struct {
	buf  [paramBytes]byte
	off  [maxParams]uint16
	kind [maxParams]byte
	ptrs [maxParams]unsafe.Pointer
	n    int
	size int
}

func (p *params) put(kind byte, size int, v uint64) *params {
	off := (p.size + size - 1) &^ (size - 1)
	if p.n == maxParams || off+size > paramBytes {
		panic(fmt.Sprintf("cuda: more than %d kernel parameters or %d bytes", maxParams, paramBytes))
	}
	if size == 8 {
		binary.LittleEndian.PutUint64(p.buf[off:], v)
	} else {
		binary.LittleEndian.PutUint32(p.buf[off:], uint32(v))
	}
	p.off[p.n], p.kind[p.n] = uint16(off), kind
	p.n++
	p.size = off + size
	return p
}

// ptr adds a device address.
func (p *params) ptr(a uintptr) *params { return p.put('p', 8, uint64(a)) }

// i64 adds a 64-bit integer (C long long).
func (p *params) i64(v int) *params { return p.put('q', 8, uint64(int64(v))) }

// u64 adds a 64-bit unsigned integer.
func (p *params) u64(v uint64) *params { return p.put('q', 8, v) }

// i32 adds a C int.
func (p *params) i32(v int) *params {
	if v != int(int32(v)) {
		panic(fmt.Sprintf("cuda: kernel int parameter %d overflows int32", v))
	}
	return p.put('i', 4, uint64(uint32(int32(v))))
}

// f32 adds a float.
func (p *params) f32(v float32) *params { return p.put('f', 4, uint64(math.Float32bits(v))) }

// signature is the argument classes in order, e.g. "pppq".
func (p *params) signature() string { return string(p.kind[:p.n]) }

// matches reports whether the arguments have the classes of sig.
func (p *params) matches(sig string) bool {
	if len(sig) != p.n {
		return false
	}
	for i := 0; i < p.n; i++ {
		if p.kind[i] != sig[i] {
			return false
		}
	}
	return true
}

// pointers fills and returns the kernelParams array (void**). p must not
// move or be copied while the launch reads it.
func (p *params) pointers() unsafe.Pointer {
	for i := 0; i < p.n; i++ {
		p.ptrs[i] = unsafe.Pointer(&p.buf[p.off[i]])
	}
	return unsafe.Pointer(&p.ptrs[0])
}
