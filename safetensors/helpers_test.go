package safetensors

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// craft builds a safetensors file from a literal header and data section.
func craft(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func writeBytes(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantRule asserts that err is a *ValidationError for rule and, when tensor
// is not empty, that it names that tensor.
func wantRule(t testing.TB, err error, rule Rule, tensor string) *ValidationError {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want rule %q", rule)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *ValidationError, want rule %q", err, err, rule)
	}
	if ve.Rule != rule {
		t.Fatalf("rule %q (%v), want %q", ve.Rule, err, rule)
	}
	if tensor != "" && ve.Tensor != tensor {
		t.Fatalf("error names tensor %q (%v), want %q", ve.Tensor, err, tensor)
	}
	if !strings.Contains(err.Error(), string(rule)) {
		t.Fatalf("message %q does not name the rule %q", err, rule)
	}
	return ve
}

// makeFloats is n deterministic values in [-1, 1) with a few specials.
func makeFloats(n int, seed uint32) []float32 {
	out := make([]float32, n)
	x := seed*2654435761 + 1
	for i := range out {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		out[i] = float32(int32(x)) / (1 << 31)
	}
	return out
}

// writeTensors writes tensors into dir through Write and returns the files.
func writeTensors(t testing.TB, dir string, tensors map[string][]float32, shapes map[string][]int64, opt WriteOptions) []string {
	t.Helper()
	var specs []Spec
	for name := range tensors {
		specs = append(specs, Spec{Name: name, Shape: shapes[name]})
	}
	files, err := Write(dir, specs, func(name string, dst []float32) error {
		copy(dst, tensors[name])
		return nil
	}, opt)
	if err != nil {
		t.Fatal(err)
	}
	return files
}
