package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"sort"
	"unicode/utf8"
)

// MaxHeaderSize is the reference implementation's limit on the JSON header.
const MaxHeaderSize = 100_000_000

// Rule names one check of the format; every validation error carries one.
type Rule string

// The rules of the format (DESIGN.md §4) and of a sharded index.
const (
	RuleHeaderLength Rule = "header length"          // 8-byte prefix present and header inside the file
	RuleHeaderSize   Rule = "header size limit"      // header <= 100 MB
	RuleHeaderJSON   Rule = "header is UTF-8 JSON"   // UTF-8, one JSON object of tensor entries
	RuleDType        Rule = "known dtype"            // dtype is one of the format's
	RuleByteLength   Rule = "byte length"            // end-begin == product(shape) x dtype size, no overflow
	RuleOffsets      Rule = "contiguous offsets"     // sorted by begin: from 0, no gap, no overlap
	RuleDataLength   Rule = "data length"            // last end == bytes after the header
	RuleIndexJSON    Rule = "index is JSON"          // model.safetensors.index.json parses
	RuleIndexPath    Rule = "shard inside directory" // no absolute path, no "..", no separators
	RuleIndexShard   Rule = "shard exists"           // every shard named exists
	RuleIndexUnique  Rule = "tensor in one shard"    // no tensor claimed twice
	RuleIndexFound   Rule = "tensor found in shard"  // every indexed tensor is in the shard named
)

// ValidationError is one broken rule, naming the file and, where there is
// one, the tensor.
type ValidationError struct {
	File   string
	Tensor string
	Rule   Rule
	Detail string
}

func (e *ValidationError) Error() string {
	var b bytes.Buffer
	b.WriteString(e.File)
	if e.Tensor != "" {
		fmt.Fprintf(&b, ": tensor %q", e.Tensor)
	}
	fmt.Fprintf(&b, ": rule %q broken: %s", string(e.Rule), e.Detail)
	return b.String()
}

// TensorInfo is one header entry. Begin and End are relative to the start of
// the data section.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int64
	Begin int64
	End   int64
}

// Elements is the product of the shape (1 for a scalar).
func (t *TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Header is a parsed and validated header.
type Header struct {
	Tensors  []TensorInfo // sorted by name
	Metadata map[string]string
	DataLen  int64 // bytes of the data section
	Size     int64 // JSON header bytes (without the 8-byte prefix)
}

type rawEntry struct {
	DType   *string  `json:"dtype"`
	Shape   *[]int64 `json:"shape"`
	Offsets *[]int64 `json:"data_offsets"`
}

// ParseHeader validates the first bytes of a file of fileSize bytes: prefix
// must hold at least the 8-byte length and, when the length fits, the whole
// header. It checks every rule of the format and returns the first broken one.
func ParseHeader(file string, prefix []byte, fileSize int64) (*Header, error) {
	bad := func(tensor string, r Rule, format string, a ...any) error {
		return &ValidationError{File: file, Tensor: tensor, Rule: r, Detail: fmt.Sprintf(format, a...)}
	}
	if fileSize < 8 || len(prefix) < 8 {
		return nil, bad("", RuleHeaderLength, "file has %d bytes, fewer than the 8-byte header length", fileSize)
	}
	n := binary.LittleEndian.Uint64(prefix)
	if n > MaxHeaderSize {
		return nil, bad("", RuleHeaderSize, "header claims %d bytes, more than the %d-byte limit", n, MaxHeaderSize)
	}
	if int64(n) > fileSize-8 {
		return nil, bad("", RuleHeaderLength, "header claims %d bytes but the file has only %d after the length", n, fileSize-8)
	}
	if uint64(len(prefix)) < 8+n {
		return nil, bad("", RuleHeaderLength, "header truncated: %d of %d bytes available", len(prefix)-8, n)
	}
	js := prefix[8 : 8+n]
	if !utf8.Valid(js) {
		return nil, bad("", RuleHeaderJSON, "header is not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(js, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, bad("", RuleHeaderJSON, "header does not start with a JSON object")
	}
	entries, meta, culprit, err := decodeHeaderObject(js)
	if err != nil {
		return nil, bad(culprit, RuleHeaderJSON, "%v", err)
	}

	h := &Header{Metadata: meta, DataLen: fileSize - 8 - int64(n), Size: int64(n)}
	for _, e := range entries {
		t, err := checkEntry(e.name, e.raw)
		if err != nil {
			return nil, bad(e.name, err.rule, "%s", err.msg)
		}
		h.Tensors = append(h.Tensors, t)
	}

	byOffset := make([]int, len(h.Tensors))
	for i := range byOffset {
		byOffset[i] = i
	}
	sort.SliceStable(byOffset, func(a, b int) bool {
		ta, tb := &h.Tensors[byOffset[a]], &h.Tensors[byOffset[b]]
		if ta.Begin != tb.Begin {
			return ta.Begin < tb.Begin
		}
		return ta.End < tb.End
	})
	var end int64
	for _, i := range byOffset {
		t := &h.Tensors[i]
		switch {
		case t.Begin > end:
			return nil, bad(t.Name, RuleOffsets, "begins at %d, leaving a gap after the previous end %d", t.Begin, end)
		case t.Begin < end:
			return nil, bad(t.Name, RuleOffsets, "begins at %d, overlapping data that ends at %d", t.Begin, end)
		}
		end = t.End
	}
	if end != h.DataLen {
		return nil, bad("", RuleDataLength, "tensors end at byte %d but the data section has %d bytes", end, h.DataLen)
	}
	sort.Slice(h.Tensors, func(a, b int) bool { return h.Tensors[a].Name < h.Tensors[b].Name })
	return h, nil
}

type ruleErr struct {
	rule Rule
	msg  string
}

func checkEntry(name string, e rawEntry) (TensorInfo, *ruleErr) {
	t := TensorInfo{Name: name}
	if e.DType == nil || e.Shape == nil || e.Offsets == nil {
		return t, &ruleErr{RuleHeaderJSON, "entry needs dtype, shape and data_offsets"}
	}
	t.DType = DType(*e.DType)
	if !t.DType.Known() {
		return t, &ruleErr{RuleDType, fmt.Sprintf("unknown dtype %q", *e.DType)}
	}
	t.Shape = *e.Shape
	off := *e.Offsets
	if len(off) != 2 {
		return t, &ruleErr{RuleHeaderJSON, fmt.Sprintf("data_offsets has %d values, want 2", len(off))}
	}
	t.Begin, t.End = off[0], off[1]
	if t.Begin < 0 || t.End < t.Begin {
		return t, &ruleErr{RuleOffsets, fmt.Sprintf("data_offsets [%d, %d] are not an increasing pair", t.Begin, t.End)}
	}
	elems := uint64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return t, &ruleErr{RuleByteLength, fmt.Sprintf("negative dimension %d in shape %v", d, t.Shape)}
		}
		hi, lo := bits.Mul64(elems, uint64(d))
		if hi != 0 {
			return t, &ruleErr{RuleByteLength, fmt.Sprintf("shape %v overflows", t.Shape)}
		}
		elems = lo
	}
	hi, nbits := bits.Mul64(elems, t.DType.Bits())
	if hi != 0 || nbits/8 > 1<<62 {
		return t, &ruleErr{RuleByteLength, fmt.Sprintf("shape %v x %s overflows", t.Shape, t.DType)}
	}
	if nbits%8 != 0 {
		return t, &ruleErr{RuleByteLength, fmt.Sprintf("shape %v of %s is not a whole number of bytes", t.Shape, t.DType)}
	}
	if want := int64(nbits / 8); t.End-t.Begin != want {
		return t, &ruleErr{RuleByteLength, fmt.Sprintf("data_offsets span %d bytes, shape %v x %s needs %d", t.End-t.Begin, t.Shape, t.DType, want)}
	}
	return t, nil
}

type namedEntry struct {
	name string
	raw  rawEntry
}

// decodeHeaderObject walks the top-level object token by token so that a
// name given twice is an error rather than silently the last one. On error
// it also returns the tensor name at fault, if any.
func decodeHeaderObject(js []byte) ([]namedEntry, map[string]string, string, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, nil, "", err
	}
	seen := map[string]bool{}
	var out []namedEntry
	var meta map[string]string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, "", err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, "", fmt.Errorf("expected a tensor name, got %v", tok)
		}
		if seen[name] {
			return nil, nil, name, fmt.Errorf("name %q appears twice", name)
		}
		seen[name] = true
		if name == "__metadata__" {
			if err := dec.Decode(&meta); err != nil {
				return nil, nil, "", fmt.Errorf("__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		var e rawEntry
		if err := dec.Decode(&e); err != nil {
			return nil, nil, name, fmt.Errorf("tensor %q: %v", name, err)
		}
		out = append(out, namedEntry{name, e})
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, "", err
	}
	// Only padding may follow the object.
	rest := js[dec.InputOffset():]
	if len(bytes.Trim(rest, " \t\r\n")) != 0 {
		return nil, nil, "", fmt.Errorf("%d unexpected bytes after the header object", len(bytes.TrimRight(rest, " \t\r\n")))
	}
	return out, meta, "", nil
}
