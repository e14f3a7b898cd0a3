package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// IndexName is the file that maps tensors to shards in a sharded directory.
const IndexName = "model.safetensors.index.json"

// SingleName is the weights file of an unsharded directory.
const SingleName = "model.safetensors"

// File is one memory-mapped, validated safetensors file.
type File struct {
	Path   string
	Header *Header
	Size   int64
	data   []byte // the whole file, mapped
	unmap  func() error
	byName map[string]int
}

// OpenFile maps and validates one file. Nothing beyond the header is read
// until a tensor is asked for.
func OpenFile(path string) (*File, error) {
	// Stat first: opening a FIFO would block.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if st.IsDir() {
		return nil, fmt.Errorf("%s is a directory, not a safetensors file", path)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data, unmap, err := mapFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: cannot map: %w", path, err)
	}
	h, err := ParseHeader(path, data, st.Size())
	if err != nil {
		unmap()
		return nil, err
	}
	sf := &File{Path: path, Header: h, Size: st.Size(), data: data, unmap: unmap, byName: map[string]int{}}
	for i, t := range h.Tensors {
		sf.byName[t.Name] = i
	}
	return sf, nil
}

// Close unmaps the file; views returned by Float32 are invalid afterwards.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	err := f.unmap()
	f.unmap, f.data = nil, nil
	return err
}

// Info returns the header entry of a tensor.
func (f *File) Info(name string) (TensorInfo, bool) {
	i, ok := f.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Header.Tensors[i], true
}

// Raw returns the bytes of a tensor inside the mapping (read-only).
func (f *File) Raw(name string) ([]byte, error) {
	t, ok := f.Info(name)
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", f.Path, name)
	}
	if f.unmap == nil {
		return nil, fmt.Errorf("%s: tensor %q read after Close", f.Path, name)
	}
	start := 8 + f.Header.Size + t.Begin
	return f.data[start : start+(t.End-t.Begin) : start+(t.End-t.Begin)], nil
}

// Reader reads a single file or an HF model directory (one file, or shards
// named by model.safetensors.index.json) as one set of named tensors.
type Reader struct {
	Dir      string  // the model directory ("" for a lone file)
	Files    []*File // in index order, deduplicated
	Index    *Index  // nil unless sharded
	where    map[string]*File
	names    []string
	metadata map[string]string
}

// Index is the content of model.safetensors.index.json.
type Index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// Open opens path: a .safetensors file or a model directory.
func Open(path string) (*Reader, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		f, err := OpenFile(path)
		if err != nil {
			return nil, err
		}
		return newReader("", []*File{f}, nil)
	}
	if _, err := os.Stat(filepath.Join(path, IndexName)); err == nil {
		return openSharded(path)
	}
	single := filepath.Join(path, SingleName)
	if _, err := os.Stat(single); err != nil {
		matches, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
		if len(matches) != 1 {
			return nil, fmt.Errorf("%s: no %s, no %s and not exactly one *.safetensors file (found %d): is this a Hugging Face model directory?", path, SingleName, IndexName, len(matches))
		}
		single = matches[0]
	}
	f, err := OpenFile(single)
	if err != nil {
		return nil, err
	}
	return newReader(path, []*File{f}, nil)
}

func newReader(dir string, files []*File, idx *Index) (*Reader, error) {
	r := &Reader{Dir: dir, Files: files, Index: idx, where: map[string]*File{}}
	if len(files) > 0 {
		r.metadata = files[0].Header.Metadata
	}
	if idx == nil {
		for _, f := range files {
			for _, t := range f.Header.Tensors {
				r.where[t.Name] = f
			}
		}
	} else {
		byPath := map[string]*File{}
		for _, f := range files {
			byPath[f.Path] = f
		}
		for name, shard := range idx.WeightMap {
			r.where[name] = byPath[filepath.Join(dir, shard)]
		}
	}
	for n := range r.where {
		r.names = append(r.names, n)
	}
	sort.Strings(r.names)
	return r, nil
}

func openSharded(dir string) (r *Reader, err error) {
	ipath := filepath.Join(dir, IndexName)
	raw, err := regfile.ReadFile(ipath)
	if err != nil {
		return nil, err
	}
	bad := func(tensor string, rule Rule, format string, a ...any) error {
		return &ValidationError{File: ipath, Tensor: tensor, Rule: rule, Detail: fmt.Sprintf(format, a...)}
	}
	idx, dup, err := parseIndex(raw)
	if err != nil {
		return nil, bad("", RuleIndexJSON, "%v", err)
	}
	if dup != "" {
		return nil, bad(dup, RuleIndexUnique, "named twice in weight_map")
	}
	if len(idx.WeightMap) == 0 {
		return nil, bad("", RuleIndexJSON, "weight_map is missing or empty")
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	var shards []string
	seen := map[string]bool{}
	names := make([]string, 0, len(idx.WeightMap))
	for n := range idx.WeightMap {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := idx.WeightMap[n]
		if seen[s] {
			continue
		}
		seen[s] = true
		if !filepath.IsLocal(s) || strings.ContainsAny(s, `/\`) || s == "." {
			return nil, bad(n, RuleIndexPath, "shard %q is not a plain file name inside the model directory", s)
		}
		p := filepath.Join(dir, s)
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, bad(n, RuleIndexShard, "shard %q does not exist", s)
			}
			return nil, bad(n, RuleIndexShard, "shard %q: %v", s, err)
		}
		if rel, err := filepath.Rel(realDir, real); err != nil || !filepath.IsLocal(rel) {
			return nil, bad(n, RuleIndexPath, "shard %q resolves outside the model directory", s)
		}
		// Not a directory, and not a FIFO or device that would block open.
		if st, err := os.Stat(real); err != nil || !st.Mode().IsRegular() {
			return nil, bad(n, RuleIndexShard, "shard %q is not a regular file", s)
		}
		shards = append(shards, s)
	}
	var files []*File
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	owner := map[string]string{}
	for _, s := range shards {
		f, err := OpenFile(filepath.Join(dir, s))
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		for _, t := range f.Header.Tensors {
			if prev, ok := owner[t.Name]; ok {
				return nil, bad(t.Name, RuleIndexUnique, "stored in both %q and %q", prev, s)
			}
			owner[t.Name] = s
		}
	}
	for _, n := range names {
		if owner[n] != idx.WeightMap[n] {
			return nil, bad(n, RuleIndexFound, "not found in shard %q", idx.WeightMap[n])
		}
	}
	return newReader(dir, files, idx)
}

// parseIndex decodes the index and reports a tensor named twice in weight_map.
func parseIndex(raw []byte) (*Index, string, error) {
	var idx Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, "", err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, "", err
	}
	wm, ok := top["weight_map"]
	if !ok {
		return &idx, "", nil
	}
	dec := json.NewDecoder(bytes.NewReader(wm))
	if _, err := dec.Token(); err != nil {
		return nil, "", err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, "", err
		}
		name, _ := tok.(string)
		if seen[name] {
			return &idx, name, nil
		}
		seen[name] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, "", err
		}
	}
	return &idx, "", nil
}

// Close unmaps every file.
func (r *Reader) Close() error {
	var first error
	for _, f := range r.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Names lists every tensor, sorted.
func (r *Reader) Names() []string { return r.names }

// Metadata is the __metadata__ of the first file.
func (r *Reader) Metadata() map[string]string { return r.metadata }

// Has reports whether a tensor is present.
func (r *Reader) Has(name string) bool { _, ok := r.where[name]; return ok }

// Info returns a tensor's header entry.
func (r *Reader) Info(name string) (TensorInfo, bool) {
	f, ok := r.where[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Info(name)
}

// FileOf names the file that holds a tensor.
func (r *Reader) FileOf(name string) string {
	if f, ok := r.where[name]; ok {
		return f.Path
	}
	return ""
}

// DiskBytes is the total size of the weight files.
func (r *Reader) DiskBytes() int64 {
	var n int64
	for _, f := range r.Files {
		n += f.Size
	}
	return n
}

func (r *Reader) floatTensor(name string) (*File, TensorInfo, []byte, error) {
	f, ok := r.where[name]
	if !ok {
		return nil, TensorInfo{}, nil, fmt.Errorf("no tensor %q in the checkpoint", name)
	}
	t, _ := f.Info(name)
	if !t.DType.Float() {
		return nil, t, nil, fmt.Errorf("%s: tensor %q has dtype %s, which cannot be read for compute (F32, F16 or BF16 only)", f.Path, name, t.DType)
	}
	raw, err := f.Raw(name)
	return f, t, raw, err
}

// Float32 returns a tensor as float32. For an aligned F32 tensor it is a
// read-only view into the mapping, valid until Close; otherwise a new slice.
func (r *Reader) Float32(name string) ([]float32, error) {
	_, t, raw, err := r.floatTensor(name)
	if err != nil {
		return nil, err
	}
	n := int(t.Elements())
	if t.DType == F32 && n > 0 && uintptr(unsafe.Pointer(&raw[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), n), nil
	}
	out := make([]float32, n)
	decodeFloats(out, raw, t.DType)
	return out, nil
}

// ReadFloat32Into converts a tensor into dst, which must have exactly as
// many elements.
func (r *Reader) ReadFloat32Into(name string, dst []float32) error {
	_, t, raw, err := r.floatTensor(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Elements() {
		return fmt.Errorf("tensor %q has %d elements, destination holds %d", name, t.Elements(), len(dst))
	}
	decodeFloats(dst, raw, t.DType)
	return nil
}

func decodeFloats(dst []float32, raw []byte, d DType) {
	switch d {
	case F32:
		BytesToF32(dst, raw)
	case F16:
		F16ToF32(dst, raw)
	case BF16:
		BF16ToF32(dst, raw)
	}
}
