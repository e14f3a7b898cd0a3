package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// writeSet is a handful of tensors of assorted shapes holding the special
// values, random values, a scalar and an empty tensor.
func writeSet() (map[string][]float32, map[string][]int64) {
	sp := specialFloats()
	vals := map[string][]float32{
		"model.embed_tokens.weight": sp[:1200],
		"model.layers.0.w":          sp[1200:2400],
		"model.layers.1.w":          sp[2400:3000],
		"model.norm.weight":         sp[3000:3040],
		"lm_head.weight":            sp[3040:4040],
		"scalar":                    {3.14159},
		"empty":                     {},
		"zz.bias":                   makeFloats(7, 1),
	}
	shapes := map[string][]int64{
		"model.embed_tokens.weight": {30, 40},
		"model.layers.0.w":          {1200},
		"model.layers.1.w":          {20, 30},
		"model.norm.weight":         {40},
		"lm_head.weight":            {25, 40},
		"scalar":                    {},
		"empty":                     {0, 5},
		"zz.bias":                   {7},
	}
	return vals, shapes
}

// encoded is what a value should read back as after storing it in dt.
func encoded(f float32, dt DType) float32 {
	switch dt {
	case BF16:
		if f != f {
			return f
		}
		return math.Float32frombits(uint32(refBF16(f)) << 16)
	case F16:
		if f != f {
			return f
		}
		h := refF16(f)
		if h&0x7fff == 0x7c00 {
			return float32(math.Inf(1 - 2*int(h>>15)))
		}
		return float32(halfValue(h))
	}
	return f
}

func sameFloat(a, b float32) bool {
	if a != a || b != b {
		return a != a && b != b
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

// rawHeader returns the JSON header of a file and its keys in file order.
func rawHeader(t *testing.T, path string) ([]byte, []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	js := b[8 : 8+n]
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.Token()
	var keys []string
	for dec.More() {
		tok, _ := dec.Token()
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return js, keys
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

func TestWriteReadBack(t *testing.T) {
	vals, shapes := writeSet()
	for _, dt := range []DType{F32, BF16, F16} {
		for _, sharded := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sharded=%v", dt, sharded), func(t *testing.T) {
				dir := t.TempDir()
				opt := WriteOptions{DType: dt}
				if sharded {
					opt.MaxShardSize = 2500 // forces several shards; a tensor larger than this gets a shard of its own
				}
				files := writeTensors(t, dir, vals, shapes, opt)
				noTemps(t, dir)
				esize := int64(dt.Bits() / 8)
				var total int64
				for n, s := range shapes {
					total += int64(len(vals[n])) * esize
					if e := (Spec{n, s}).Elements(); e != int64(len(vals[n])) {
						t.Fatalf("bad fixture %s", n)
					}
				}

				checkLayout(t, dir, files, sharded, opt.MaxShardSize, esize)
				if sharded {
					checkIndex(t, dir, files, total)
				}

				r, err := Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if r.Metadata()["format"] != "pt" {
					t.Errorf("metadata %v", r.Metadata())
				}
				names := slices.Sorted(func(yield func(string) bool) {
					for n := range vals {
						if !yield(n) {
							return
						}
					}
				})
				if !slices.Equal(r.Names(), names) {
					t.Fatalf("names %v, want %v", r.Names(), names)
				}
				for _, n := range names {
					info, _ := r.Info(n)
					if info.DType != dt || !slices.Equal(info.Shape, shapes[n]) {
						t.Errorf("%s: %s %v", n, info.DType, info.Shape)
					}
					got, err := r.Float32(n)
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != len(vals[n]) {
						t.Fatalf("%s: %d values, want %d", n, len(got), len(vals[n]))
					}
					for i, v := range vals[n] {
						if want := encoded(v, dt); !sameFloat(got[i], want) {
							t.Fatalf("%s[%d]: wrote %g (%#08x), read %g (%#08x), want %g (%#08x)", n, i,
								v, math.Float32bits(v), got[i], math.Float32bits(got[i]), want, math.Float32bits(want))
						}
					}
				}
			})
		}
	}
}

// checkLayout checks each file: names sorted, header padded to 8, metadata
// {"format":"pt"}, shards within the size limit and named as transformers
// names them.
func checkLayout(t *testing.T, dir string, files []string, sharded bool, maxShard, esize int64) {
	t.Helper()
	weights := files
	if sharded {
		if len(files) < 3 || filepath.Base(files[len(files)-1]) != IndexName {
			t.Fatalf("files %v: want several shards and the index last", files)
		}
		weights = files[:len(files)-1]
	} else if len(files) != 1 || filepath.Base(files[0]) != SingleName {
		t.Fatalf("files %v, want one %s", files, SingleName)
	}
	for i, p := range weights {
		if filepath.Dir(p) != dir {
			t.Errorf("%s not in %s", p, dir)
		}
		if sharded {
			if want := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(weights)); filepath.Base(p) != want {
				t.Errorf("shard %d is %s, want %s", i, filepath.Base(p), want)
			}
		}
		js, keys := rawHeader(t, p)
		if (8+len(js))%8 != 0 {
			t.Errorf("%s: header of %d bytes, data not 8-aligned", p, len(js))
		}
		if !sort.StringsAreSorted(keys) || keys[0] != "__metadata__" {
			t.Errorf("%s: header keys not sorted: %v", p, keys)
		}
		var h map[string]json.RawMessage
		if err := json.Unmarshal(js, &h); err != nil {
			t.Fatal(err)
		}
		if string(h["__metadata__"]) != `{"format":"pt"}` {
			t.Errorf("%s: __metadata__ %s", p, h["__metadata__"])
		}
		f, err := OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if sharded && len(f.Header.Tensors) > 1 && f.Header.DataLen > maxShard {
			t.Errorf("%s: %d data bytes over the %d limit", p, f.Header.DataLen, maxShard)
		}
		f.Close()
	}
}

func checkIndex(t *testing.T, dir string, files []string, total int64) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, IndexName))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]json.Number `json:"metadata"`
		WeightMap map[string]string      `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if got := idx.Metadata["total_size"].String(); got != fmt.Sprint(total) {
		t.Errorf("total_size %s, want %d", got, total)
	}
	seen := map[string]bool{}
	for _, p := range files[:len(files)-1] {
		f, err := OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range f.Header.Tensors {
			if idx.WeightMap[ti.Name] != filepath.Base(p) {
				t.Errorf("weight_map[%s] = %q, stored in %s", ti.Name, idx.WeightMap[ti.Name], filepath.Base(p))
			}
			seen[ti.Name] = true
		}
		f.Close()
	}
	if len(seen) != len(idx.WeightMap) {
		t.Errorf("weight_map has %d entries, shards hold %d tensors", len(idx.WeightMap), len(seen))
	}
}

func TestWriteMetadataAndEmpty(t *testing.T) {
	dir := t.TempDir()
	files, err := Write(dir, nil, nil, WriteOptions{Metadata: map[string]string{"dllm": "1"}})
	if err != nil || len(files) != 1 {
		t.Fatal(files, err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(r.Names()) != 0 || r.Metadata()["format"] != "pt" || r.Metadata()["dllm"] != "1" {
		t.Errorf("names %v metadata %v", r.Names(), r.Metadata())
	}
}

func TestWriteRefusesBadInput(t *testing.T) {
	fetch := func(string, []float32) error { return nil }
	for _, c := range []struct {
		specs []Spec
		opt   WriteOptions
		want  string
	}{
		{[]Spec{{"a", []int64{1}}}, WriteOptions{DType: I64}, "I64"},
		{[]Spec{{"a", []int64{1}}, {"a", []int64{2}}}, WriteOptions{}, `"a" given twice`},
		{[]Spec{{"a", []int64{2, -1}}}, WriteOptions{}, "negative"},
	} {
		dir := t.TempDir()
		_, err := Write(dir, c.specs, fetch, c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%d files left", len(ents))
		}
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteOverwrite(t *testing.T) {
	vals, shapes := writeSet()
	dir := t.TempDir()
	writeBytes(t, dir, "config.json", []byte("{}"))
	sharded := writeTensors(t, dir, vals, shapes, WriteOptions{MaxShardSize: 2500})
	before := dirNames(t, dir)

	// Without Overwrite: refused, nothing touched.
	var specs []Spec
	for n, s := range shapes {
		specs = append(specs, Spec{n, s})
	}
	fetched := 0
	_, err := Write(dir, specs, func(string, []float32) error { fetched++; return nil }, WriteOptions{})
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("error %v, want a refusal", err)
	}
	if fetched != 0 || !slices.Equal(dirNames(t, dir), before) {
		t.Fatalf("refused write touched the folder: fetched %d, %v", fetched, dirNames(t, dir))
	}

	// Sharded -> single with Overwrite: every old shard and the index go.
	single := writeTensors(t, dir, vals, shapes, WriteOptions{Overwrite: true, DType: BF16})
	if got := dirNames(t, dir); !slices.Equal(got, []string{"config.json", SingleName}) {
		t.Fatalf("after sharded -> single: %v (had %v)", got, sharded)
	}
	if len(single) != 1 {
		t.Fatal(single)
	}
	// Single -> 2 shards -> more shards: the single file, then the shards
	// of the smaller layout, are removed.
	two := writeTensors(t, dir, vals, shapes, WriteOptions{Overwrite: true, MaxShardSize: 8000})
	if len(two) < 3 || slices.Contains(dirNames(t, dir), SingleName) {
		t.Fatalf("after single -> sharded: %v", dirNames(t, dir))
	}
	many := writeTensors(t, dir, vals, shapes, WriteOptions{Overwrite: true, MaxShardSize: 2500})
	want := []string{"config.json"}
	for _, p := range many {
		want = append(want, filepath.Base(p))
	}
	sort.Strings(want)
	if got := dirNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("after re-sharding: %v, want %v", got, want)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()

	// Another base name is not ours to remove.
	writeTensors(t, dir, map[string][]float32{"opt": {1}}, map[string][]int64{"opt": {1}}, WriteOptions{BaseName: "optimizer"})
	writeTensors(t, dir, vals, shapes, WriteOptions{Overwrite: true})
	if got := dirNames(t, dir); !slices.Equal(got, []string{"config.json", SingleName, "optimizer.safetensors"}) {
		t.Fatalf("other base name touched: %v", got)
	}
}

func TestWriteFetchError(t *testing.T) {
	vals, shapes := writeSet()
	var specs []Spec
	for n, s := range shapes {
		specs = append(specs, Spec{n, s})
	}
	boom := errors.New("boom")
	failOn := func(bad string) Fetch {
		return func(name string, dst []float32) error {
			if name == bad {
				return boom
			}
			copy(dst, vals[name])
			return nil
		}
	}
	for _, opt := range []WriteOptions{{}, {MaxShardSize: 2500}, {MaxShardSize: 2500, DType: BF16}} {
		// A fresh folder stays empty, whichever tensor fails (the last one
		// lives in the last shard, after others were complete).
		for _, bad := range []string{"empty", "zz.bias"} {
			dir := t.TempDir()
			files, err := Write(dir, specs, failOn(bad), opt)
			if !errors.Is(err, boom) || !strings.Contains(err.Error(), bad) {
				t.Fatalf("error %v, want boom naming %s", err, bad)
			}
			if len(files) != 0 {
				t.Errorf("reported files %v after a failure", files)
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Errorf("%+v, failing on %s: left %v", opt, bad, got)
			}
		}
	}

	// Over an existing checkpoint with Overwrite: the old files survive
	// byte for byte.
	dir := t.TempDir()
	writeTensors(t, dir, vals, shapes, WriteOptions{MaxShardSize: 2500})
	old := map[string][]byte{}
	for _, n := range dirNames(t, dir) {
		old[n], _ = os.ReadFile(filepath.Join(dir, n))
	}
	if _, err := Write(dir, specs, failOn("zz.bias"), WriteOptions{Overwrite: true, DType: F16}); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if got := dirNames(t, dir); len(got) != len(old) {
		t.Fatalf("left %v", got)
	}
	for n, b := range old {
		if now, _ := os.ReadFile(filepath.Join(dir, n)); !bytes.Equal(now, b) {
			t.Errorf("%s changed by a failed write", n)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "config.json")
	if err := WriteFileAtomic(p, []byte("one"), false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("two"), false); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("overwrote without asking: %v", err)
	}
	if err := WriteFileAtomic(p, []byte("three"), true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "three" {
		t.Errorf("content %q", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
	noTemps(t, dir)
}
