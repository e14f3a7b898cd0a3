package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// DefaultMaxShardSize matches transformers' save_pretrained default.
const DefaultMaxShardSize int64 = 5_000_000_000

// Spec announces one tensor to the writer before any data is written: the
// header comes first in the file, so every name and shape is needed up front.
type Spec struct {
	Name  string
	Shape []int64
}

// Elements is the number of values of the tensor.
func (s Spec) Elements() int64 {
	n := int64(1)
	for _, d := range s.Shape {
		n *= d
	}
	return n
}

// WriteOptions controls Write.
type WriteOptions struct {
	DType        DType             // F32 (default), BF16 or F16
	MaxShardSize int64             // bytes of tensor data per shard; 0 = DefaultMaxShardSize
	Overwrite    bool              // replace existing weight files in the directory
	Metadata     map[string]string // merged into __metadata__ after {"format":"pt"}
	BaseName     string            // "model" (default): model.safetensors, model-00001-of-00002.safetensors
}

// Fetch fills dst (len = product of the shape) with a tensor's values.
type Fetch func(name string, dst []float32) error

// Write writes tensors into dir as one file or as shards plus an index.
// Tensors are fetched one at a time in name order, so memory is bounded by
// the largest tensor. Every file is written under a temporary name and
// synced; only when all are complete are they renamed, the index last, so
// an error leaves the directory as it was. It returns the files written.
func Write(dir string, specs []Spec, fetch Fetch, opt WriteOptions) ([]string, error) {
	if opt.DType == "" {
		opt.DType = F32
	}
	if !opt.DType.Float() {
		return nil, fmt.Errorf("cannot write dtype %s: use F32, BF16 or F16", opt.DType)
	}
	if opt.MaxShardSize <= 0 {
		opt.MaxShardSize = DefaultMaxShardSize
	}
	if opt.BaseName == "" {
		opt.BaseName = "model"
	}
	specs = append([]Spec(nil), specs...)
	sort.Slice(specs, func(a, b int) bool { return specs[a].Name < specs[b].Name })
	for i := range specs {
		if i > 0 && specs[i].Name == specs[i-1].Name {
			return nil, fmt.Errorf("tensor %q given twice", specs[i].Name)
		}
		for _, d := range specs[i].Shape {
			if d < 0 {
				return nil, fmt.Errorf("tensor %q: negative dimension in %v", specs[i].Name, specs[i].Shape)
			}
		}
	}
	esize := int64(opt.DType.Bits() / 8)

	var shards [][]Spec
	var cur []Spec
	var curBytes, total int64
	for _, s := range specs {
		b := s.Elements() * esize
		if len(cur) > 0 && curBytes+b > opt.MaxShardSize {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, s)
		curBytes += b
		total += b
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, cur)
	}

	names := make([]string, len(shards))
	if len(shards) == 1 {
		names[0] = opt.BaseName + ".safetensors"
	} else {
		for i := range shards {
			names[i] = fmt.Sprintf("%s-%05d-of-%05d.safetensors", opt.BaseName, i+1, len(shards))
		}
	}
	indexName := opt.BaseName + ".safetensors.index.json"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	old, err := existingWeights(dir, opt.BaseName)
	if err != nil {
		return nil, err
	}
	if len(old) > 0 && !opt.Overwrite {
		return nil, fmt.Errorf("%s already holds %s: refusing to overwrite (use --force)", dir, old[0])
	}

	var maxElems int64
	for _, s := range specs {
		maxElems = max(maxElems, s.Elements())
	}
	buf := make([]float32, maxElems)
	enc := make([]byte, maxElems*esize)

	// Every file is staged under a temporary name first and renamed only
	// once all of them are complete, so a failed fetch or a full disk leaves
	// the directory as it was (no new shard without its index, no temp file).
	var staged []staging
	defer func() {
		for _, s := range staged {
			os.Remove(s.tmp) // already renamed on success: a harmless ENOENT
		}
	}()
	for i, shard := range shards {
		p := filepath.Join(dir, names[i])
		tmp, err := writeTemp(p, func(w *bufio.Writer) error {
			return writeShard(w, shard, opt, buf, enc, fetch)
		})
		if err != nil {
			return nil, err
		}
		staged = append(staged, staging{tmp, p})
	}
	if len(shards) > 1 {
		wm := map[string]string{}
		for i, shard := range shards {
			for _, s := range shard {
				wm[s.Name] = names[i]
			}
		}
		js, err := json.MarshalIndent(map[string]any{
			"metadata":   map[string]any{"total_size": total},
			"weight_map": wm,
		}, "", "  ")
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, indexName)
		tmp, err := writeTemp(p, func(w *bufio.Writer) error { _, err := w.Write(append(js, '\n')); return err })
		if err != nil {
			return nil, err
		}
		staged = append(staged, staging{tmp, p}) // renamed last
	}
	var written []string
	for _, s := range staged {
		if err := os.Rename(s.tmp, s.final); err != nil {
			return written, err
		}
		written = append(written, s.final)
	}
	// Weight files of an earlier layout would confuse loaders: remove those
	// not rewritten (only with Overwrite, where old is non-empty), a stale
	// index before the shards it names.
	keep := map[string]bool{}
	for _, p := range written {
		keep[filepath.Base(p)] = true
	}
	sort.SliceStable(old, func(a, b int) bool { return old[a] == indexName && old[b] != indexName })
	for _, o := range old {
		if !keep[o] {
			if err := os.Remove(filepath.Join(dir, o)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return written, err
			}
		}
	}
	return written, syncDir(dir)
}

// staging is a complete, synced temporary file waiting to be renamed.
type staging struct{ tmp, final string }

// existingWeights lists weight files of this base name already in dir.
func existingWeights(dir, base string) ([]string, error) {
	var out []string
	for _, pat := range []string{base + ".safetensors", base + "-*-of-*.safetensors", base + ".safetensors.index.json"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		for _, p := range m {
			out = append(out, filepath.Base(p))
		}
	}
	sort.Strings(out)
	return out, nil
}

func writeShard(w *bufio.Writer, specs []Spec, opt WriteOptions, buf []float32, enc []byte, fetch Fetch) error {
	esize := int64(opt.DType.Bits() / 8)
	hdr, err := headerJSON(specs, opt.DType, opt.Metadata)
	if err != nil {
		return err
	}
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(len(hdr)))
	if _, err := w.Write(lenb[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	for _, s := range specs {
		n := s.Elements()
		dst := buf[:n]
		if err := fetch(s.Name, dst); err != nil {
			return fmt.Errorf("tensor %q: %w", s.Name, err)
		}
		out := enc[:n*esize]
		switch opt.DType {
		case F32:
			F32ToBytes(out, dst)
		case BF16:
			F32ToBF16(out, dst)
		case F16:
			F32ToF16(out, dst)
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	return nil
}

// headerJSON builds the header with names sorted, padded with spaces to a
// multiple of 8 bytes so the data section starts aligned.
func headerJSON(specs []Spec, dt DType, extra map[string]string) ([]byte, error) {
	type entry struct {
		DType   DType    `json:"dtype"`
		Shape   []int64  `json:"shape"`
		Offsets [2]int64 `json:"data_offsets"`
	}
	meta := map[string]string{"format": "pt"}
	for k, v := range extra {
		meta[k] = v
	}
	obj := map[string]any{"__metadata__": meta} // encoding/json sorts map keys
	esize := int64(dt.Bits() / 8)
	var off int64
	for _, s := range specs {
		shape := s.Shape
		if shape == nil {
			shape = []int64{}
		}
		n := s.Elements() * esize
		obj[s.Name] = entry{dt, shape, [2]int64{off, off + n}}
		off += n
	}
	js, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	return js, nil
}

// writeTemp fills a temporary file next to path, fsyncs and closes it, and
// returns its name; on error nothing is left behind.
func writeTemp(path string, fill func(*bufio.Writer) error) (_ string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if err = fill(w); err != nil {
		return "", err
	}
	if err = w.Flush(); err != nil {
		return "", err
	}
	if err = f.Sync(); err != nil {
		return "", err
	}
	if err = f.Close(); err != nil {
		return "", err
	}
	if err = os.Chmod(tmp, 0o644); err != nil {
		return "", err
	}
	return tmp, nil
}

// writeAtomic writes path through a temporary file in the same directory,
// fsyncs and renames it, so a crash never leaves a half-written file there.
func writeAtomic(path string, fill func(*bufio.Writer) error) error {
	tmp, err := writeTemp(path, fill)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// WriteFileAtomic writes data to path the same crash-safe way; an existing
// file is replaced only when overwrite is set.
func WriteFileAtomic(path string, data []byte, overwrite bool) error {
	if !overwrite {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("%s already exists: refusing to overwrite (use --force)", path)
		}
	}
	return writeAtomic(path, func(w *bufio.Writer) error { _, err := w.Write(data); return err })
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	// Some filesystems refuse to sync a directory; the renames still stand.
	_ = d.Sync()
	return nil
}
