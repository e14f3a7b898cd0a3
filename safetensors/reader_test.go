package safetensors

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// mixedFile holds every float dtype, an F32 tensor at an aligned offset and
// two at offsets that are not multiples of 4, and tensors of dtypes that
// cannot be computed with.
func mixedFile(t *testing.T) (path string, want map[string][]float32) {
	t.Helper()
	want = map[string][]float32{
		"a.f32":     {1, -2, 3.5, float32(math.Inf(1))}, // [0,16) aligned
		"b.bf16":    {1.5},                              // [16,18)
		"c.f32":     {0.1, -0.2, 1e-40, 7},              // [18,34) misaligned
		"d.f16":     {0.5, -65504, 6e-8, 1},             // [34,42)
		"f.f32":     {42},                               // [50,54) misaligned
		"g.bf16":    {-3, 0.25},                         // [54,58)
		"h.f32.nil": {},                                 // [58,58)
	}
	hdr := `{"__metadata__":{"format":"pt","k":"v"},` +
		`"a.f32":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},` +
		`"b.bf16":{"dtype":"BF16","shape":[1],"data_offsets":[16,18]},` +
		`"c.f32":{"dtype":"F32","shape":[4],"data_offsets":[18,34]},` +
		`"d.f16":{"dtype":"F16","shape":[2,2],"data_offsets":[34,42]},` +
		`"e.i64":{"dtype":"I64","shape":[1],"data_offsets":[42,50]},` +
		`"f.f32":{"dtype":"F32","shape":[],"data_offsets":[50,54]},` +
		`"g.bf16":{"dtype":"BF16","shape":[2],"data_offsets":[54,58]},` +
		`"h.f32.nil":{"dtype":"F32","shape":[0],"data_offsets":[58,58]},` +
		`"i.u8":{"dtype":"U8","shape":[2],"data_offsets":[58,60]},` +
		`"j.f64":{"dtype":"F64","shape":[1],"data_offsets":[60,68]}}`
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	data := make([]byte, 68)
	F32ToBytes(data[0:], want["a.f32"])
	F32ToBF16(data[16:], want["b.bf16"])
	F32ToBytes(data[18:], want["c.f32"])
	F32ToF16(data[34:], want["d.f16"])
	F32ToBytes(data[50:], want["f.f32"])
	F32ToBF16(data[54:], want["g.bf16"])
	// The values as stored (BF16/F16 round).
	want["d.f16"] = []float32{0.5, -65504, float32(halfValue(refF16(6e-8))), 1}
	path = writeBytes(t, t.TempDir(), "mixed.safetensors", craft(hdr, data))
	return path, want
}

func TestReadFloatDTypes(t *testing.T) {
	path, want := mixedFile(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Dir != "" || len(r.Files) != 1 || r.Metadata()["k"] != "v" {
		t.Errorf("dir %q files %d metadata %v", r.Dir, len(r.Files), r.Metadata())
	}
	mapping := r.Files[0].data
	lo, hi := uintptr(unsafe.Pointer(&mapping[0])), uintptr(unsafe.Pointer(&mapping[len(mapping)-1]))
	inMapping := func(v []float32) bool {
		if len(v) == 0 {
			return false
		}
		p := uintptr(unsafe.Pointer(&v[0]))
		return p >= lo && p <= hi
	}
	for name, w := range want {
		got, err := r.Float32(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(got, w) {
			t.Errorf("%s = %v, want %v", name, got, w)
		}
		into := make([]float32, len(w))
		if err := r.ReadFloat32Into(name, into); err != nil || !slices.Equal(into, w) {
			t.Errorf("ReadFloat32Into(%s) = %v, %v", name, into, err)
		}
		// Only the aligned F32 tensor is a view into the mapping.
		if view := inMapping(got); view != (name == "a.f32") {
			t.Errorf("%s: view into the mapping = %v", name, view)
		}
	}
	if err := r.ReadFloat32Into("a.f32", make([]float32, 3)); err == nil || !strings.Contains(err.Error(), "destination holds 3") {
		t.Errorf("wrong length: %v", err)
	}
}

func TestReadRefusesNonFloat(t *testing.T) {
	path, _ := mixedFile(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for name, dt := range map[string]string{"e.i64": "I64", "i.u8": "U8", "j.f64": "F64"} {
		_, err1 := r.Float32(name)
		err2 := r.ReadFloat32Into(name, make([]float32, 1))
		for _, err := range []error{err1, err2} {
			if err == nil || !strings.Contains(err.Error(), `"`+name+`"`) || !strings.Contains(err.Error(), dt) {
				t.Errorf("%s: error %v should name the tensor and %s", name, err, dt)
			}
		}
	}
	if _, err := r.Float32("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestReadAfterClose(t *testing.T) {
	path, _ := mixedFile(t)
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Float32("c.f32"); err == nil {
		t.Error("read after Close succeeded")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenDirectory(t *testing.T) {
	dir := t.TempDir()
	// No weights at all: one line that says what was looked for.
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), SingleName) {
		t.Errorf("empty dir: %v", err)
	}
	// One file under another name is taken.
	writeBytes(t, dir, "weights.safetensors", f32File("w"))
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Names(), []string{"w"}) || filepath.Base(r.FileOf("w")) != "weights.safetensors" {
		t.Errorf("names %v", r.Names())
	}
	r.Close()
	// Two such files are ambiguous.
	writeBytes(t, dir, "other.safetensors", f32File("v"))
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "found 2") {
		t.Errorf("two files: %v", err)
	}
	// model.safetensors wins over the others.
	writeBytes(t, dir, SingleName, f32File("m"))
	if r, err := Open(dir); err != nil || !slices.Equal(r.Names(), []string{"m"}) {
		t.Errorf("model.safetensors: %v", err)
	} else {
		r.Close()
	}
	if _, err := Open(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := OpenFile(dir); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("OpenFile on a dir: %v", err)
	}
}
