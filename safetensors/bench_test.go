package safetensors

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// sharedDir is ../shared next to the module root, or "" when absent.
func sharedDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
	s := filepath.Join(filepath.Dir(dir), "shared")
	if _, err := os.Stat(s); err != nil {
		return ""
	}
	return s
}

func sharedModel(tb testing.TB, name string) string {
	tb.Helper()
	s := sharedDir(tb)
	if s == "" {
		tb.Skip("../shared (reference models) is absent: skipping; it is present in CI")
	}
	p := filepath.Join(s, "models", name)
	if _, err := os.Stat(p); err != nil {
		tb.Skipf("%s is absent: skipping", p)
	}
	return p
}

// BenchmarkBF16ToF32 widens 32 Mi bf16 values (64 MB in, 128 MB out).
func BenchmarkBF16ToF32(b *testing.B) {
	const n = 32 << 20
	src := make([]byte, 2*n)
	for i := range src {
		src[i] = byte(i * 7)
	}
	dst := make([]float32, n)
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	for b.Loop() {
		BF16ToF32(dst, src)
	}
}

// bf16ToF32Scalar is the plain loop BF16ToF32 replaced, kept to measure
// the speed-up side by side.
func bf16ToF32Scalar(dst []float32, src []byte) {
	n := len(dst)
	if n == 0 {
		return
	}
	_ = src[2*n-1]
	for i := 0; i < n; i++ {
		dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
	}
}

func BenchmarkBF16ToF32Scalar(b *testing.B) {
	const n = 32 << 20
	src := make([]byte, 2*n)
	for i := range src {
		src[i] = byte(i * 7)
	}
	dst := make([]float32, n)
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	for b.Loop() {
		bf16ToF32Scalar(dst, src)
	}
}

// BenchmarkF16ToF32 is the same for IEEE half (table lookup).
func BenchmarkF16ToF32(b *testing.B) {
	const n = 32 << 20
	src := make([]byte, 2*n)
	for i := range src {
		src[i] = byte(i * 7)
	}
	dst := make([]float32, n)
	F16ToF32(dst[:1], src) // build the table outside the timing
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	for b.Loop() {
		F16ToF32(dst, src)
	}
}

// BenchmarkOpenStories260K opens the real checkpoint and reads every tensor
// as float32 (copied, as the engine's parameter buffer would).
func BenchmarkOpenStories260K(b *testing.B) {
	dir := sharedModel(b, "stories260K")
	var bytes int64
	for b.Loop() {
		r, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		bytes = 0
		for _, n := range r.Names() {
			info, _ := r.Info(n)
			dst := make([]float32, info.Elements())
			if err := r.ReadFloat32Into(n, dst); err != nil {
				b.Fatal(err)
			}
			bytes += info.End - info.Begin
		}
		r.Close()
	}
	b.SetBytes(bytes)
}

func TestStories260KReadable(t *testing.T) {
	dir := sharedModel(t, "stories260K")
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(r.Names()) != 47 || r.DiskBytes() != 1_044_992 {
		t.Errorf("%d tensors, %d bytes", len(r.Names()), r.DiskBytes())
	}
	var elems int64
	for _, n := range r.Names() {
		v, err := r.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		elems += int64(len(v))
	}
	if elems != 260_032 {
		t.Errorf("%d values, want 260,032", elems)
	}
}
