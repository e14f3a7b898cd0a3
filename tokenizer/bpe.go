package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// bpe is the BPE model. For byte-level tokenizers it works on raw bytes:
// the initial symbols come from the byte table, so words are not mapped to
// the printable alphabet (except for the ignore_merges whole-word lookup).
type bpe struct {
	vocab     map[string]int // token string as in the file -> id
	merges    map[uint64]uint64
	byteLevel bool
	byteIDs   [256]int32     // byte-level: initial symbol of each byte (-1: none)
	asciiIDs  [128]int32     // otherwise: single-character tokens
	runeIDs   map[rune]int32 // otherwise: single-character tokens beyond ASCII
	fallback  [256]int32     // <0xXX> tokens when byte_fallback (-1: none)
	useBytes  bool           // byte_fallback set
	unk       int32          // -1: none
	fuseUnk   bool
	ignoreMrg bool
}

const noMerge = ^uint64(0)

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

type bpeJSON struct {
	Type                    string          `json:"type"`
	VocabRaw                json.RawMessage `json:"vocab"`
	Vocab                   map[string]int  `json:"-"`
	Merges                  json.RawMessage `json:"merges"`
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Dropout                 *float64        `json:"dropout"`
}

// parseMerges accepts both layouts: ["a b", ...] and [["a","b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if out, _, err := parseMergeList(raw); err == nil {
		return out, nil
	}
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	inner := bytes.TrimSpace(bytes.TrimPrefix(t, []byte("[")))
	if len(inner) > 0 && inner[0] == '"' {
		var ss []string
		if err := json.Unmarshal(t, &ss); err != nil {
			return nil, err
		}
		out := make([][2]string, len(ss))
		for i, s := range ss {
			a, b, ok := strings.Cut(s, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, fmt.Errorf("merge %d %q is not two tokens separated by one space", i, s)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(t, &pairs); err != nil {
		return nil, err
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("merge %d has %d parts, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// newBPE builds the model; tokens receives id -> vocabulary string.
func newBPE(m *bpeJSON, byteLevel bool) (*bpe, error) {
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("BPE continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("BPE end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	}
	if m.Vocab == nil {
		v, err := parseVocab(m.VocabRaw)
		if err != nil {
			v = nil
			if err := json.Unmarshal(m.VocabRaw, &v); err != nil {
				return nil, fmt.Errorf("model.vocab: %v", err)
			}
		}
		m.Vocab = v
	}
	if len(m.Vocab) == 0 {
		return nil, fmt.Errorf("model.vocab is empty: this tokenizer.json cannot encode text")
	}
	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, fmt.Errorf("model.merges: %v", err)
	}
	b := &bpe{
		vocab:     m.Vocab,
		merges:    make(map[uint64]uint64, len(merges)),
		byteLevel: byteLevel,
		runeIDs:   map[rune]int32{},
		unk:       -1,
		fuseUnk:   m.FuseUnk,
		useBytes:  m.ByteFallback,
		ignoreMrg: m.IgnoreMerges,
	}
	for i := range b.byteIDs {
		b.byteIDs[i], b.fallback[i] = -1, -1
	}
	for i := range b.asciiIDs {
		b.asciiIDs[i] = -1
	}
	for tok, id := range m.Vocab {
		if id < 0 || id > 1<<30 {
			return nil, fmt.Errorf("model.vocab: token %q has id %d", tok, id)
		}
		r, sz := utf8.DecodeRuneInString(tok)
		if sz != len(tok) || r == utf8.RuneError {
			if !byteLevel && len(tok) == 6 && strings.HasPrefix(tok, "<0x") && tok[5] == '>' {
				if v, err := strconv.ParseUint(tok[3:5], 16, 8); err == nil && strings.ToUpper(tok[3:5]) == tok[3:5] {
					b.fallback[v] = int32(id)
				}
			}
			continue
		}
		switch {
		case byteLevel:
			if c, ok := runeToByte[r]; ok {
				b.byteIDs[c] = int32(id)
			}
		case r < 128:
			b.asciiIDs[r] = int32(id)
		default:
			b.runeIDs[r] = int32(id)
		}
	}
	if m.UnkToken != nil {
		if id, ok := m.Vocab[*m.UnkToken]; ok {
			b.unk = int32(id)
		}
	}
	for rank, mg := range merges {
		x, y := mg[0], mg[1]
		a, ok1 := m.Vocab[x]
		c, ok2 := m.Vocab[y]
		n, ok3 := m.Vocab[x+y]
		if !ok1 || !ok2 || !ok3 {
			// As tokenizers does: such a file was not made by a BPE trainer.
			missing := x + y
			if !ok1 {
				missing = x
			} else if !ok2 {
				missing = y
			}
			return nil, fmt.Errorf("model.merges: merge %d (%q %q) needs %q, which is not in model.vocab: this tokenizer.json cannot encode text", rank, x, y, missing)
		}
		k := pairKey(int32(a), int32(c))
		if _, dup := b.merges[k]; !dup {
			b.merges[k] = uint64(rank)<<32 | uint64(uint32(n))
		}
	}
	return b, nil
}

// bpeScratch holds the buffers of one encoding goroutine.
type bpeScratch struct {
	ids  []int32
	pv   []uint64
	syms []bpeSym
	heap []heapItem
}

type bpeSym struct {
	id         int32
	prev, next int32
}

type heapItem struct {
	key                 uint64 // rank << 32 | position of the left symbol
	left, right, merged int32
}

// initial appends the symbols of word before any merge.
func (b *bpe) initial(word string, ids []int32) []int32 {
	if b.byteLevel {
		for i := 0; i < len(word); i++ {
			if id := b.byteIDs[word[i]]; id >= 0 {
				ids = append(ids, id)
			} else if b.unk >= 0 && !(b.fuseUnk && len(ids) > 0 && ids[len(ids)-1] == b.unk) {
				ids = append(ids, b.unk)
			}
		}
		return ids
	}
	lastUnk := false
	for i := 0; i < len(word); {
		var id int32 = -1
		c := word[i]
		sz := 1
		if c < utf8.RuneSelf {
			id = b.asciiIDs[c]
		} else {
			var r rune
			r, sz = utf8.DecodeRuneInString(word[i:])
			if v, ok := b.runeIDs[r]; ok {
				id = v
			}
		}
		if id >= 0 {
			ids = append(ids, id)
			lastUnk = false
			i += sz
			continue
		}
		if b.useBytes {
			all := true
			for k := i; k < i+sz; k++ {
				if b.fallback[word[k]] < 0 {
					all = false
					break
				}
			}
			if all {
				for k := i; k < i+sz; k++ {
					ids = append(ids, b.fallback[word[k]])
				}
				lastUnk = false
				i += sz
				continue
			}
		}
		if b.unk >= 0 && !(b.fuseUnk && lastUnk) {
			ids = append(ids, b.unk)
		}
		lastUnk = b.unk >= 0
		i += sz
	}
	return ids
}

func (b *bpe) pair(x, y int32) uint64 {
	if v, ok := b.merges[pairKey(x, y)]; ok {
		return v
	}
	return noMerge
}

// encodeWord appends the ids of one pre-tokenized word.
func (b *bpe) encodeWord(word string, out []int, sc *bpeScratch) []int {
	if b.ignoreMrg {
		key := word
		if b.byteLevel {
			key = rawToByteLevel(word)
		}
		if id, ok := b.vocab[key]; ok {
			return append(out, id)
		}
	}
	ids := b.initial(word, sc.ids[:0])
	sc.ids = ids
	if len(ids) > 1 {
		if len(ids) <= 48 {
			ids = b.mergeSmall(ids, sc)
		} else {
			ids = b.mergeHeap(ids, sc)
		}
	}
	for _, id := range ids {
		out = append(out, int(id))
	}
	return out
}

// mergeSmall: rank of every adjacent pair kept in an array; each step merges
// the lowest rank (leftmost on ties) and recomputes the two neighbours.
func (b *bpe) mergeSmall(ids []int32, sc *bpeScratch) []int32 {
	pv := sc.pv[:0]
	for i := 0; i+1 < len(ids); i++ {
		pv = append(pv, b.pair(ids[i], ids[i+1]))
	}
	for {
		best, bi := noMerge, -1
		for i, v := range pv {
			if v < best {
				best, bi = v, i
			}
		}
		if bi < 0 {
			break
		}
		ids[bi] = int32(uint32(best))
		copy(ids[bi+1:], ids[bi+2:])
		ids = ids[:len(ids)-1]
		copy(pv[bi:], pv[bi+1:])
		pv = pv[:len(pv)-1]
		if bi > 0 {
			pv[bi-1] = b.pair(ids[bi-1], ids[bi])
		}
		if bi < len(pv) {
			pv[bi] = b.pair(ids[bi], ids[bi+1])
		}
	}
	sc.pv = pv
	return ids
}

// mergeHeap: linked list of symbols and a binary heap of candidate merges
// ordered by (rank, position), as the tokenizers library does. A heap entry
// records the pair it was made for; it is stale when the symbols changed.
func (b *bpe) mergeHeap(ids []int32, sc *bpeScratch) []int32 {
	n := len(ids)
	syms := sc.syms[:0]
	for i, id := range ids {
		syms = append(syms, bpeSym{id: id, prev: int32(i - 1), next: int32(i + 1)})
	}
	syms[n-1].next = -1
	h := mergeQueue(sc.heap[:0])
	for i := 0; i+1 < n; i++ {
		if v := b.pair(ids[i], ids[i+1]); v != noMerge {
			h.push(heapItem{key: v>>32<<32 | uint64(i), left: ids[i], right: ids[i+1], merged: int32(uint32(v))})
		}
	}
	for len(h) > 0 {
		it := h.pop()
		pos := int32(uint32(it.key))
		s := &syms[pos]
		if s.id != it.left || s.next < 0 || syms[s.next].id != it.right {
			continue
		}
		nx := s.next
		s.id = it.merged
		s.next = syms[nx].next
		if s.next >= 0 {
			syms[s.next].prev = pos
		}
		syms[nx].id = -1
		if p := s.prev; p >= 0 {
			if v := b.pair(syms[p].id, s.id); v != noMerge {
				h.push(heapItem{key: v>>32<<32 | uint64(p), left: syms[p].id, right: s.id, merged: int32(uint32(v))})
			}
		}
		if nn := s.next; nn >= 0 {
			if v := b.pair(s.id, syms[nn].id); v != noMerge {
				h.push(heapItem{key: v>>32<<32 | uint64(pos), left: s.id, right: syms[nn].id, merged: int32(uint32(v))})
			}
		}
	}
	ids = ids[:0]
	for i := int32(0); i >= 0; i = syms[i].next {
		ids = append(ids, syms[i].id)
	}
	sc.syms, sc.heap = syms, h
	return ids
}

// mergeQueue is a binary min-heap on heapItem.key (rank << 32 | position).
type mergeQueue []heapItem

func (h *mergeQueue) push(it heapItem) {
	q := append(*h, it)
	i := len(q) - 1
	for i > 0 {
		p := (i - 1) / 2
		if q[p].key <= it.key {
			break
		}
		q[i] = q[p]
		i = p
	}
	q[i] = it
	*h = q
}

func (h *mergeQueue) pop() heapItem {
	q := *h
	top := q[0]
	last := q[len(q)-1]
	q = q[:len(q)-1]
	if n := len(q); n > 0 {
		i := 0
		for {
			c := 2*i + 1
			if c >= n {
				break
			}
			if c+1 < n && q[c+1].key < q[c].key {
				c++
			}
			if last.key <= q[c].key {
				break
			}
			q[i] = q[c]
			i = c
		}
		q[i] = last
	}
	*h = q
	return top
}
