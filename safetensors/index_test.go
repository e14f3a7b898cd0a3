package safetensors

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// f32File is a one-file checkpoint holding the named F32 tensors of two
// values each: name i holds {i+1, -(i+1)}.
func f32File(names ...string) []byte {
	hdr := "{"
	var data []byte
	for i, n := range names {
		if i > 0 {
			hdr += ","
		}
		hdr += `"` + n + `":{"dtype":"F32","shape":[2],"data_offsets":[` + itoa(8*i) + `,` + itoa(8*i+8) + `]}`
		b := make([]byte, 8)
		F32ToBytes(b, []float32{float32(i + 1), -float32(i + 1)})
		data = append(data, b...)
	}
	return craft(hdr+"}", data)
}

// shardedDir lays out dir/model/{a,b}.safetensors (x in a, y in b), a
// symlink inside pointing at a, dir/outside.safetensors holding a valid
// "secret" and "x", and a symlink from the model folder to it.
func shardedDir(t testing.TB) (model, outside string) {
	t.Helper()
	root := t.TempDir()
	model = filepath.Join(root, "model")
	if err := os.Mkdir(model, 0o755); err != nil {
		t.Fatal(err)
	}
	writeBytes(t, model, "a.safetensors", f32File("x"))
	writeBytes(t, model, "b.safetensors", f32File("y"))
	outside = writeBytes(t, root, "outside.safetensors", f32File("secret", "x"))
	if err := os.Symlink("a.safetensors", filepath.Join(model, "in-link.safetensors")); err != nil {
		t.Skipf("no symlinks here: %v", err)
	}
	if err := os.Symlink(outside, filepath.Join(model, "out-link.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside.safetensors", filepath.Join(model, "rel-link.safetensors")); err != nil {
		t.Fatal(err)
	}
	return model, outside
}

func setIndex(t testing.TB, dir, js string) {
	t.Helper()
	writeBytes(t, dir, IndexName, []byte(js))
}

func TestOpenSharded(t *testing.T) {
	dir, _ := shardedDir(t)
	setIndex(t, dir, `{"metadata":{"total_size":16},"weight_map":{"y":"b.safetensors","x":"in-link.safetensors"}}`)
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !slices.Equal(r.Names(), []string{"x", "y"}) || r.Index == nil || len(r.Files) != 2 {
		t.Fatalf("names %v, files %d", r.Names(), len(r.Files))
	}
	if got := filepath.Base(r.FileOf("y")); got != "b.safetensors" {
		t.Errorf("y in %s", got)
	}
	if r.FileOf("nope") != "" || r.Has("nope") {
		t.Error("unknown tensor reported present")
	}
	if v, err := r.Float32("y"); err != nil || !slices.Equal(v, []float32{1, -1}) {
		t.Errorf("y = %v, %v", v, err)
	}
	if r.DiskBytes() != int64(2*len(f32File("x"))) {
		t.Errorf("disk bytes %d", r.DiskBytes())
	}
}

func TestRuleIndexJSON(t *testing.T) {
	dir, _ := shardedDir(t)
	for _, js := range []string{
		`{"weight_map":`,
		`not json`,
		`[]`,
		`{"weight_map":{"x":1}}`,
		`{"weight_map":["a.safetensors"]}`,
		`{"metadata":{}}`,
		`{"weight_map":{}}`,
		`{"weight_map":null}`,
	} {
		setIndex(t, dir, js)
		r, err := Open(dir)
		if err == nil {
			r.Close()
		}
		ve := wantRule(t, err, RuleIndexJSON, "")
		if ve.File != filepath.Join(dir, IndexName) {
			t.Errorf("%s: error names %s", js, ve.File)
		}
	}
}

func TestRuleIndexPath(t *testing.T) {
	dir, outside := shardedDir(t)
	for _, shard := range []string{
		outside,                  // absolute
		"../outside.safetensors", // parent
		"./../outside.safetensors",
		"sub/../a.safetensors", // harmless, but shards are plain names
		"sub/a.safetensors",
		`..\outside.safetensors`,
		"..",
		".",
		"",
		"out-link.safetensors", // symlink with an absolute target outside
		"rel-link.safetensors", // symlink with a relative target outside
	} {
		t.Run(shard, func(t *testing.T) {
			js, _ := json.Marshal(map[string]any{"weight_map": map[string]string{"x": shard, "y": "b.safetensors"}})
			setIndex(t, dir, string(js))
			// The outside file holds a valid "x": had it been opened, Open
			// would succeed.
			r, err := Open(dir)
			if err == nil {
				r.Close()
				t.Fatalf("opened shard %q", shard)
			}
			wantRule(t, err, RuleIndexPath, "x")
		})
	}
}

func TestRuleIndexShard(t *testing.T) {
	dir, _ := shardedDir(t)
	if err := os.Symlink("gone.safetensors", filepath.Join(dir, "dangling.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, shard := range []string{"missing.safetensors", "dangling.safetensors", "sub"} {
		setIndex(t, dir, `{"weight_map":{"x":"a.safetensors","y":"`+shard+`"}}`)
		r, err := Open(dir)
		if err == nil {
			r.Close()
		}
		ve := wantRule(t, err, RuleIndexShard, "y")
		if !strings.Contains(ve.Detail, shard) {
			t.Errorf("detail %q does not name the shard", ve.Detail)
		}
	}
}

func TestRuleIndexUnique(t *testing.T) {
	dir, _ := shardedDir(t)
	// The same key twice in weight_map (a decoder would keep the last).
	setIndex(t, dir, `{"weight_map":{"x":"a.safetensors","y":"b.safetensors","x":"b.safetensors"}}`)
	r, err := Open(dir)
	if err == nil {
		r.Close()
	}
	wantRule(t, err, RuleIndexUnique, "x")

	// The same tensor stored in two shards.
	writeBytes(t, dir, "c.safetensors", f32File("x", "z"))
	setIndex(t, dir, `{"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"c.safetensors"}}`)
	r, err = Open(dir)
	if err == nil {
		r.Close()
	}
	wantRule(t, err, RuleIndexUnique, "x")
}

func TestRuleIndexFound(t *testing.T) {
	dir, _ := shardedDir(t)
	for _, c := range []struct{ js, tensor string }{
		{`{"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"a.safetensors"}}`, "z"},
		{`{"weight_map":{"x":"b.safetensors","y":"b.safetensors"}}`, "x"},
		{`{"weight_map":{"x":"a.safetensors","y":"a.safetensors","q":"b.safetensors"}}`, "q"},
	} {
		setIndex(t, dir, c.js)
		r, err := Open(dir)
		if err == nil {
			r.Close()
		}
		wantRule(t, err, RuleIndexFound, c.tensor)
	}
}

func TestOpenShardWithBadHeader(t *testing.T) {
	dir, _ := shardedDir(t)
	p := writeBytes(t, dir, "bad.safetensors", craft(`{"y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4)))
	setIndex(t, dir, `{"weight_map":{"x":"a.safetensors","y":"bad.safetensors"}}`)
	_, err := Open(dir)
	if ve := wantRule(t, err, RuleDataLength, ""); ve.File != p {
		t.Errorf("error names %s, want the shard %s", ve.File, p)
	}
}

// FuzzIndex opens a model folder with a random index: it must never panic,
// and what it accepts must come from files inside the folder.
func FuzzIndex(f *testing.F) {
	for _, js := range []string{
		`{"metadata":{"total_size":16},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}`,
		`{"weight_map":{"x":"in-link.safetensors"}}`,
		`{"weight_map":{"x":"out-link.safetensors","y":"b.safetensors"}}`,
		`{"weight_map":{"secret":"rel-link.safetensors"}}`,
		`{"weight_map":{"x":"../outside.safetensors"}}`,
		`{"weight_map":{"x":"/etc/passwd"}}`,
		`{"weight_map":{"x":"a.safetensors","x":"b.safetensors"}}`,
		`{"weight_map":{"x":"a.safetensors","y":"c.safetensors"}}`,
		`{"weight_map":{"x":"missing.safetensors"}}`,
		`{"weight_map":{"z":"a.safetensors"}}`,
		`{"weight_map":{"x":"sub"}}`,
		`{"weight_map":{"x":"model.safetensors.index.json"}}`,
		`{"weight_map":null}`,
		`{"weight_map":{}}`,
		`[]`,
		``,
	} {
		f.Add([]byte(js))
	}
	root := f.TempDir()
	dir := filepath.Join(root, "model")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		f.Fatal(err)
	}
	writeBytes(f, dir, "a.safetensors", f32File("x"))
	writeBytes(f, dir, "b.safetensors", f32File("y"))
	writeBytes(f, dir, "c.safetensors", f32File("x", "z"))
	writeBytes(f, filepath.Join(dir, "sub"), "a.safetensors", f32File("x"))
	outside := writeBytes(f, root, "outside.safetensors", f32File("secret", "x"))
	if err := os.Symlink("a.safetensors", filepath.Join(dir, "in-link.safetensors")); err != nil {
		f.Skipf("no symlinks here: %v", err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "out-link.safetensors")); err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink("../outside.safetensors", filepath.Join(dir, "rel-link.safetensors")); err != nil {
		f.Fatal(err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, index []byte) {
		writeBytes(t, dir, IndexName, index)
		r, err := Open(dir)
		if err != nil {
			return
		}
		defer r.Close()
		if len(r.Names()) == 0 {
			t.Fatal("accepted an index with no tensors")
		}
		for _, n := range r.Names() {
			if n == "secret" {
				t.Fatal("read a tensor from outside the folder")
			}
			real, err := filepath.EvalSymlinks(r.FileOf(n))
			if err != nil || filepath.Dir(real) != realDir {
				t.Fatalf("tensor %q from %s (%s, %v)", n, r.FileOf(n), real, err)
			}
			if _, err := r.Float32(n); err != nil {
				t.Fatalf("tensor %q listed but unreadable: %v", n, err)
			}
		}
	})
}
