// Package corpus turns text files into training rows: it reads .txt and
// JSONL files (or folders of them), splits them into documents, tokenizes
// them (with a cache), packs the token stream into rows of SeqLen tokens
// with per-token document ids, holds out an eval split and serves shuffled
// batches from a resumable cursor.
package corpus

import (
	"fmt"
	"math"
	"math/bits"
	"sort"
	"sync"

	"github.com/dllm-dev/dllm/tokenizer"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// DataError is data or options refused for what they are (a path that is
// not there or not a file, text that is not UTF-8, a JSONL row without its
// field, too little text for one row), not a failure to read or cache them.
// The command line exits 2 on it (bad input).
type DataError struct{ Err error }

func (e *DataError) Error() string { return e.Err.Error() }
func (e *DataError) Unwrap() error { return e.Err }

func dataErrorf(format string, a ...any) error {
	return &DataError{fmt.Errorf(format, a...)}
}

// Options says what to read and how to pack it.
type Options struct {
	Paths        []string // files and folders of .txt / .jsonl / .json (JSON lines)
	EvalPaths    []string // held-out text; when empty, EvalFraction of the documents of Paths
	EvalFraction float64  // the last fraction of the documents (in corpus order) becomes eval
	TextField    string   // JSONL field holding the text (default "text")
	Separator    string   // .txt without <|endoftext|>: "blank" (default), "line", "none", "single-newline"
	SeqLen       int      // tokens per row
	Seed         uint64   // shuffle seed, kept for the caller (NextBatch takes the seed it uses)
	CacheDir     string   // where the tokenized stream is cached ("" = no cache)
	// BOSAtRowStart sets position 0 of every row to BOS (use
	// DefaultBOSAtRowStart(tok) for the usual choice: when the tokenizer
	// has a BOS).
	BOSAtRowStart bool
	// Stop, when not nil, is asked between files and batches of documents;
	// an error from it ends Load with that error.
	Stop func() error
}

// DefaultBOSAtRowStart is the default of Options.BOSAtRowStart: true when
// the tokenizer has a BOS token.
func DefaultBOSAtRowStart(tok *tokenizer.Tokenizer) bool { return tok.BOS() >= 0 }

// Corpus is the loaded training data.
type Corpus struct {
	Train *Split
	Eval  *Split // nil when there is no eval split
	Stats Stats
}

// Stats describes what Load read and built.
type Stats struct {
	Files          int      `json:"files"`
	Bytes          int64    `json:"bytes"`
	Documents      int      `json:"documents"`
	TrainDocuments int      `json:"train_documents"`
	EvalDocuments  int      `json:"eval_documents"`
	TrainTokens    int64    `json:"train_tokens"` // in the stream, before cutting rows
	EvalTokens     int64    `json:"eval_tokens"`
	TrainRows      int      `json:"train_rows"`
	EvalRows       int      `json:"eval_rows"`
	DroppedTokens  int64    `json:"dropped_tokens"` // tails shorter than a row
	SeqLen         int      `json:"seq_len"`
	DocumentBOS    bool     `json:"document_bos"` // each document starts with BOS
	BOS            int      `json:"bos"`
	EOS            int      `json:"eos"` // appended to each document; -1: none
	BOSAtRowStart  bool     `json:"bos_at_row_start"`
	CacheHit       bool     `json:"cache_hit"`
	CacheFiles     []string `json:"cache_files,omitempty"`
	// SFT is set for instruction data (LoadSFT): one example per row.
	SFT *SFTStats `json:"sft,omitempty"`
}

// Load reads, tokenizes (or loads from the cache) and packs the corpus.
// progress, when not nil, is called with bytes of text tokenized so far
// and the total (not called for a cache hit).
//
// Each document is BOS (when tok.AddsBOS()) + Encode(text, false) + EOS
// (when tok.EOS() >= 0): set the tokenizer's EOS from the model's config
// first if they differ.
func Load(tok *tokenizer.Tokenizer, opt Options, progress func(done, total int64)) (*Corpus, error) {
	if tok == nil {
		return nil, fmt.Errorf("corpus: no tokenizer")
	}
	if opt.SeqLen < 2 {
		return nil, dataErrorf("corpus: sequence length %d is too short", opt.SeqLen)
	}
	if len(opt.Paths) == 0 {
		return nil, dataErrorf("corpus: no training data given")
	}
	if opt.EvalFraction < 0 || opt.EvalFraction >= 1 || math.IsNaN(opt.EvalFraction) {
		return nil, dataErrorf("corpus: eval fraction %g is not in [0, 1)", opt.EvalFraction)
	}
	if len(opt.EvalPaths) > 0 && opt.EvalFraction > 0 {
		return nil, dataErrorf("corpus: give either eval paths or an eval fraction, not both")
	}
	if opt.TextField == "" {
		opt.TextField = "text"
	}
	switch opt.Separator {
	case "":
		opt.Separator = SepBlank
	case SepBlank, SepLine, SepNone, SepSingleNewline:
	default:
		return nil, dataErrorf("corpus: unknown document separator %q (want blank, line, none or single-newline)", opt.Separator)
	}
	st := Stats{SeqLen: opt.SeqLen, DocumentBOS: tok.AddsBOS() && tok.BOS() >= 0, BOS: tok.BOS(), EOS: tok.EOS()}
	st.BOSAtRowStart = opt.BOSAtRowStart
	if st.BOSAtRowStart && tok.BOS() < 0 {
		return nil, dataErrorf("corpus: BOS at row start asked for, but the tokenizer has no BOS token")
	}

	trainFiles, err := listFiles(opt.Paths)
	if err != nil {
		return nil, err
	}
	var evalFiles []inputFile
	if len(opt.EvalPaths) > 0 {
		if evalFiles, err = listFiles(opt.EvalPaths); err != nil {
			return nil, err
		}
	}
	var total int64
	for _, f := range append(append([]inputFile(nil), trainFiles...), evalFiles...) {
		total += f.size
	}
	st.Files = len(trainFiles) + len(evalFiles)
	st.Bytes = total
	tk := &tokenizing{tok: tok, opt: &opt, progress: progress, total: total, stats: &st}

	all, err := tk.stream(trainFiles)
	if err != nil {
		return nil, err
	}
	if all.docs() == 0 {
		return nil, dataErrorf("corpus: no documents in %v (%d files, all empty)", opt.Paths, len(trainFiles))
	}
	var train, eval *stream
	switch {
	case len(evalFiles) > 0:
		train = all
		if eval, err = tk.stream(evalFiles); err != nil {
			return nil, err
		}
		if eval.docs() == 0 {
			return nil, dataErrorf("corpus: no documents in the eval data %v", opt.EvalPaths)
		}
	case opt.EvalFraction > 0:
		n := all.docs()
		if n < 2 {
			return nil, dataErrorf("corpus: an eval fraction needs at least 2 documents, the corpus has %d", n)
		}
		k := int(math.Round(opt.EvalFraction * float64(n)))
		k = min(max(k, 1), n-1)
		train, eval = all.cut(n - k)
	default:
		train = all
	}
	c := &Corpus{}
	bos := int32(-1)
	if st.BOSAtRowStart {
		bos = int32(tok.BOS())
	}
	c.Train = newSplit(train, opt.SeqLen, bos)
	st.TrainDocuments, st.TrainTokens, st.TrainRows = train.docs(), int64(len(train.tokens)), c.Train.rows
	st.DroppedTokens = int64(len(train.tokens) - c.Train.rows*opt.SeqLen)
	if c.Train.rows == 0 {
		return nil, dataErrorf("corpus: the training data has %d tokens, fewer than one row of %d: add data or lower --seq-len", len(train.tokens), opt.SeqLen)
	}
	if eval != nil {
		c.Eval = newSplit(eval, opt.SeqLen, bos)
		st.EvalDocuments, st.EvalTokens, st.EvalRows = eval.docs(), int64(len(eval.tokens)), c.Eval.rows
		st.DroppedTokens += int64(len(eval.tokens) - c.Eval.rows*opt.SeqLen)
		if c.Eval.rows == 0 {
			return nil, dataErrorf("corpus: the eval split has %d tokens, fewer than one row of %d: give more eval text or a larger eval fraction", len(eval.tokens), opt.SeqLen)
		}
	}
	st.Documents = st.TrainDocuments + st.EvalDocuments
	st.CacheHit = opt.CacheDir != "" && tk.misses == 0
	c.Stats = st
	return c, nil
}

// stream is a tokenized run of documents.
type stream struct {
	tokens []int32
	starts []int64 // start offset of each document in tokens
}

func (s *stream) docs() int { return len(s.starts) }

// cut splits the stream before document k.
func (s *stream) cut(k int) (*stream, *stream) {
	at := s.starts[k]
	a := &stream{tokens: s.tokens[:at], starts: s.starts[:k]}
	b := &stream{tokens: s.tokens[at:], starts: make([]int64, len(s.starts)-k)}
	for i := range b.starts {
		b.starts[i] = s.starts[k+i] - at
	}
	return a, b
}

// tokenizing carries what the tokenization of a list of files needs.
type tokenizing struct {
	tok      *tokenizer.Tokenizer
	opt      *Options
	progress func(done, total int64)
	misses   int
	done     int64
	total    int64
	stats    *Stats
}

// stream tokenizes files (or reads them from the cache).
func (t *tokenizing) stream(files []inputFile) (*stream, error) {
	key, err := t.cacheKey(files)
	if err != nil {
		return nil, err
	}
	var path string
	if t.opt.CacheDir != "" {
		path = cachePath(t.opt.CacheDir, key)
		t.stats.CacheFiles = append(t.stats.CacheFiles, path)
		if s, err := readCache(path, key); err == nil {
			return s, nil
		}
	}
	t.misses++
	s := &stream{}
	for _, f := range files {
		data, err := regfile.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("corpus: %v", err)
		}
		docs, err := splitDocuments(f, data, t.opt.Separator, t.opt.TextField)
		if err != nil {
			return nil, err
		}
		if err := t.encode(s, docs); err != nil {
			return nil, err
		}
	}
	if path != "" {
		if err := writeCache(path, key, s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// encode appends documents to the stream, in batches encoded on all cores.
func (t *tokenizing) encode(s *stream, docs []string) error {
	bos, eos := -1, t.tok.EOS()
	if t.tok.AddsBOS() {
		bos = t.tok.BOS()
	}
	// Small batches keep Stop answered within a fraction of a second.
	const batchBytes = 1 << 20
	for len(docs) > 0 {
		if t.opt.Stop != nil {
			if err := t.opt.Stop(); err != nil {
				return err
			}
		}
		n, size := 0, 0
		for n < len(docs) && (n == 0 || size < batchBytes) {
			size += len(docs[n])
			n++
		}
		for _, ids := range t.tok.EncodeBatch(docs[:n], false) {
			s.starts = append(s.starts, int64(len(s.tokens)))
			if bos >= 0 {
				s.tokens = append(s.tokens, int32(bos))
			}
			for _, id := range ids {
				s.tokens = append(s.tokens, int32(id))
			}
			if eos >= 0 {
				s.tokens = append(s.tokens, int32(eos))
			}
		}
		docs = docs[n:]
		t.done += int64(size)
		if t.progress != nil {
			t.progress(min(t.done, t.total), t.total)
		}
	}
	return nil
}

// Split is a packed run of rows of SeqLen tokens.
type Split struct {
	tokens []int32
	starts []int64
	seqLen int
	rows   int
	bos    int32 // written at position 0 of every row; -1: not
	// fixed marks prompt tokens (and PadNone padding) of SFT rows: never
	// masked, never scored. nil for pre-training data.
	fixed []bool

	mu        sync.Mutex
	permSeed  uint64
	permEpoch int
	perm      []int32
}

func newSplit(s *stream, seqLen int, bos int32) *Split {
	return &Split{tokens: s.tokens, starts: s.starts, seqLen: seqLen, rows: len(s.tokens) / seqLen, bos: bos, permEpoch: -1}
}

// Rows is the number of rows (0 for a nil split).
func (s *Split) Rows() int {
	if s == nil {
		return 0
	}
	return s.rows
}

// SeqLen is the number of tokens per row.
func (s *Split) SeqLen() int { return s.seqLen }

// Documents is the number of documents in the split (0 for a nil split).
func (s *Split) Documents() int {
	if s == nil {
		return 0
	}
	return len(s.starts)
}

// SFT reports whether the rows have fixed (prompt) positions.
func (s *Split) SFT() bool { return s != nil && s.fixed != nil }

// Fixed fills fixed (SeqLen values) with row i's positions that are never
// masked or scored: prompt tokens of SFT rows; all false otherwise.
func (s *Split) Fixed(i int, fixed []bool) {
	if i < 0 || i >= s.rows {
		panic(fmt.Sprintf("corpus: row %d of %d", i, s.rows))
	}
	if s.fixed == nil {
		clear(fixed[:s.seqLen])
		return
	}
	copy(fixed[:s.seqLen], s.fixed[i*s.seqLen:(i+1)*s.seqLen])
}

// Row fills ids (and docs, when not nil) with row i: the tokens and their
// document ids, renumbered from 0 within the row. Both hold SeqLen values.
func (s *Split) Row(i int, ids, docs []int32) {
	if i < 0 || i >= s.rows {
		panic(fmt.Sprintf("corpus: row %d of %d", i, s.rows))
	}
	a := i * s.seqLen
	copy(ids[:s.seqLen], s.tokens[a:a+s.seqLen])
	if s.bos >= 0 {
		ids[0] = s.bos
	}
	if docs == nil {
		return
	}
	// k: the document holding token a.
	k := sort.Search(len(s.starts), func(j int) bool { return s.starts[j] > int64(a) }) - 1
	next := int64(len(s.tokens))
	if k+1 < len(s.starts) {
		next = s.starts[k+1]
	}
	d := int32(0)
	for j := 0; j < s.seqLen; j++ {
		for int64(a+j) >= next {
			k++
			d++
			next = int64(len(s.tokens))
			if k+1 < len(s.starts) {
				next = s.starts[k+1]
			}
		}
		docs[j] = d
	}
}

// Cursor is a position in the shuffled stream of training rows: Index
// rows of epoch Epoch have been served. It is what a checkpoint saves.
type Cursor struct {
	Epoch int `json:"epoch"`
	Index int `json:"index"`
}

// Order returns the order in which epoch serves the rows: a permutation
// drawn from (seed, epoch) alone, the same on every machine and Go version.
func (s *Split) Order(seed uint64, epoch int) []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int32(nil), s.order(seed, epoch)...)
}

func (s *Split) order(seed uint64, epoch int) []int32 {
	if s.perm == nil || s.permSeed != seed || s.permEpoch != epoch {
		s.perm = permutation(s.rows, seed, epoch)
		s.permSeed, s.permEpoch = seed, epoch
	}
	return s.perm
}

// NextBatch fills batch rows (ids and docs hold batch*SeqLen values; docs
// may be nil) in the shuffled order of seed, advancing the cursor; at the
// end of an epoch it goes on with the next epoch's order.
func (s *Split) NextBatch(c *Cursor, seed uint64, ids, docs []int32, batch int) {
	s.NextBatchFixed(c, seed, ids, docs, nil, batch)
}

// NextBatchFixed is NextBatch that also fills fixed (batch*SeqLen values,
// may be nil) as Fixed does.
func (s *Split) NextBatchFixed(c *Cursor, seed uint64, ids, docs []int32, fixed []bool, batch int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	L := s.seqLen
	for b := 0; b < batch; b++ {
		if c.Index >= s.rows || c.Index < 0 {
			c.Epoch++
			c.Index = 0
		}
		r := s.order(seed, c.Epoch)[c.Index]
		var d []int32
		if docs != nil {
			d = docs[b*L : (b+1)*L]
		}
		s.Row(int(r), ids[b*L:(b+1)*L], d)
		if fixed != nil {
			s.Fixed(int(r), fixed[b*L:(b+1)*L])
		}
		c.Index++
	}
}

// permutation is a Fisher-Yates shuffle of 0..n-1 driven by splitmix64
// seeded from (seed, epoch).
func permutation(n int, seed uint64, epoch int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(i)
	}
	state := mix64(seed ^ mix64(uint64(epoch)+0x632BE59BD9B4E019))
	for i := n - 1; i > 0; i-- {
		state += 0x9E3779B97F4A7C15
		j := bounded(mix64(state), uint64(i+1))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// bounded maps x to [0, n) (Lemire's multiply-shift).
func bounded(x, n uint64) int {
	hi, _ := bits.Mul64(x, n)
	return int(hi)
}
