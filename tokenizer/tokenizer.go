// Package tokenizer reads Hugging Face tokenizer.json files (with their
// tokenizer_config.json) and encodes and decodes text exactly as the
// reference implementations do.
//
// Supported: the BPE model, byte-level (GPT-2, Llama-3, Qwen2/2.5/3) and
// SentencePiece-style (Llama-2: Prepend/Replace normalizer or Metaspace,
// byte_fallback, unk, fuse_unk); normalizers NFC/NFD/NFKC/NFKD, Prepend,
// Replace, Lowercase, Strip, Sequence; pre-tokenizers Split (the GPT-2,
// Llama-3 and Qwen regexes are implemented by hand, other regexes go through
// Go's regexp when it can compile them), ByteLevel, Metaspace, Digits,
// Whitespace, WhitespaceSplit, Sequence; post-processors TemplateProcessing,
// ByteLevel, Bert/Roberta, Sequence; decoders ByteLevel, Replace,
// ByteFallback, Fuse, Strip, Metaspace, Sequence.
//
// Where the Rust tokenizers library and transformers.js disagree, the golden
// encodings in ../shared (made with @lenml/tokenizers, a transformers.js
// fork) decide; see the notes on Load about LlamaTokenizer with legacy=false.
package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// Tokenizer encodes text to ids and decodes ids to text. Encode, Decode and
// the accessors are safe for concurrent use; AddSpecialToken is not.
type Tokenizer struct {
	dir      string
	model    *bpe
	tokens   []string // id -> token string as written in the files ("" where no id)
	inVocab  []bool   // id is a model vocabulary entry
	added    []AddedToken
	addedIDs map[string]int
	special  []bool
	match    *matcher

	norm normalizer
	pre  preTokenizer
	scan scanner
	dec  decoder

	prefix, suffix []int
	// llamaMetaspace: transformers' LlamaTokenizer with legacy=false (see Load).
	llamaMetaspace bool
	spaceID        int
	// splitSpace: no vocabulary token has "▁" after another character, so
	// a word can be cut before each "▁" that follows another character
	// without changing its BPE result (Llama-2 style vocabularies); the
	// pieces are short and cacheable.
	splitSpace bool
	cleanup    bool

	bos, eos, pad, unk int
	configMask         string
	mask               string // set by ApplyMask

	rawJSON   []byte
	rawConfig []byte // nil when there is no tokenizer_config.json
	// chatTemplate, when set, replaces chat_template on Save.
	chatTemplate string
	newTokens    []AddedToken

	// idle workers (word caches survive garbage collection, unlike in a
	// sync.Pool)
	mu      sync.Mutex
	workers []*worker
}

type fileJSON struct {
	AddedTokens   []AddedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type templateItem struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

type configJSON struct {
	BOS                     json.RawMessage            `json:"bos_token"`
	EOS                     json.RawMessage            `json:"eos_token"`
	Pad                     json.RawMessage            `json:"pad_token"`
	Unk                     json.RawMessage            `json:"unk_token"`
	Mask                    json.RawMessage            `json:"mask_token"`
	AddedTokensDecoder      map[string]json.RawMessage `json:"added_tokens_decoder"`
	AdditionalSpecialTokens []json.RawMessage          `json:"additional_special_tokens"`
	TokenizerClass          string                     `json:"tokenizer_class"`
	Legacy                  *bool                      `json:"legacy"`
	CleanUp                 *bool                      `json:"clean_up_tokenization_spaces"`
}

// tokenString reads a config token given as "text" or {"content": "text"}.
func tokenString(raw json.RawMessage) string {
	if isNull(raw) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &o) == nil {
		return o.Content
	}
	return ""
}

// Load reads dir/tokenizer.json and, when present, dir/tokenizer_config.json
// (dir may also be the path of a tokenizer.json file).
//
// bos/eos/pad come from tokenizer_config.json (bos_token, eos_token,
// pad_token); without it, BOS is the special token the post-processor puts
// first. clean_up_tokenization_spaces applies only when the config sets it.
//
// LlamaTokenizer with "legacy": false: transformers.js (and the
// @lenml/tokenizers fork that made the golden encodings) drops the
// tokenizer.json normalizer, prepends "▁" to the whole text (mapping "▁" in
// the input to spaces), splits added tokens, turns spaces of each section
// into "▁" (Metaspace, prepend_scheme "first") and drops the leading "▁"
// when the token after it is special (e.g. <unk>). The Rust library applies
// the Prepend normalizer to every section instead. We follow
// transformers.js, which is what the golden encodings of TinyStories-656K
// show.
func Load(dir string) (*Tokenizer, error) {
	path := filepath.Join(dir, "tokenizer.json")
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		path, dir = dir, filepath.Dir(dir)
	}
	data, err := regfile.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, err2 := os.Stat(dir); err2 != nil {
				return nil, fmt.Errorf("tokenizer: cannot open %s: no such directory", dir)
			}
			return nil, fmt.Errorf("tokenizer: no tokenizer.json in %s", dir)
		}
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	var cfgData []byte
	if b, err := regfile.ReadFile(filepath.Join(dir, "tokenizer_config.json")); err == nil {
		cfgData = b
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	var mapData []byte
	if b, err := regfile.ReadFile(filepath.Join(dir, "special_tokens_map.json")); err == nil {
		mapData = b
	}
	t, err := parse(data, cfgData, mapData)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	t.dir = dir
	return t, nil
}

func parse(data, cfgData, mapData []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := decodeLarge(data, &f, map[string]*json.RawMessage{"model": &f.Model}); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	var cfg configJSON
	if cfgData != nil {
		if err := json.Unmarshal(cfgData, &cfg); err != nil {
			return nil, fmt.Errorf("tokenizer_config.json is not valid JSON: %v", err)
		}
	}
	// special_tokens_map.json fills in what tokenizer_config.json lacks.
	var smap configJSON
	if mapData != nil && json.Unmarshal(mapData, &smap) == nil {
		for _, f := range []struct{ dst, src *json.RawMessage }{
			{&cfg.BOS, &smap.BOS}, {&cfg.EOS, &smap.EOS}, {&cfg.Pad, &smap.Pad}, {&cfg.Unk, &smap.Unk}, {&cfg.Mask, &smap.Mask},
		} {
			if len(*f.dst) == 0 { // absent; an explicit null stays
				*f.dst = *f.src
			}
		}
		if cfg.AdditionalSpecialTokens == nil {
			cfg.AdditionalSpecialTokens = smap.AdditionalSpecialTokens
		}
	}
	if isNull(f.Model) {
		return nil, fmt.Errorf("no model")
	}
	var m bpeJSON
	if err := decodeLarge(f.Model, &m, map[string]*json.RawMessage{"vocab": &m.VocabRaw, "merges": &m.Merges}); err != nil {
		var probe struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(f.Model, &probe) == nil && probe.Type != "" && probe.Type != "BPE" {
			return nil, fmt.Errorf("model type %q is not supported (only BPE)", probe.Type)
		}
		return nil, fmt.Errorf("model: %v", err)
	}
	if m.Type != "" && m.Type != "BPE" {
		return nil, fmt.Errorf("model type %q is not supported (only BPE)", m.Type)
	}
	t := &Tokenizer{rawJSON: data, rawConfig: cfgData, bos: -1, eos: -1, pad: -1, unk: -1, spaceID: -1}
	var err error
	if t.norm, err = buildNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if t.pre, err = buildPreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if t.dec, err = buildDecoder(f.Decoder); err != nil {
		return nil, err
	}
	byteLevel := t.pre != nil && hasByteLevel(t.pre)
	if t.model, err = newBPE(&m, byteLevel); err != nil {
		return nil, err
	}
	if t.pre != nil {
		t.scan = fastScanner(t.pre)
	}
	if strings.TrimSuffix(cfg.TokenizerClass, "Fast") == "LlamaTokenizer" && cfg.Legacy != nil && !*cfg.Legacy {
		t.llamaMetaspace = true
		t.norm = nil
		t.pre = &preMetaspace{replacement: "\u2581", scheme: "first"}
		t.scan = nil
	}

	size := 0
	for _, id := range m.Vocab {
		size = max(size, id+1)
	}
	for _, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("added token %q has id %d", a.Content, a.ID)
		}
		size = max(size, a.ID+1)
	}
	t.tokens = make([]string, size)
	t.inVocab = make([]bool, size)
	t.special = make([]bool, size)
	for tok, id := range m.Vocab {
		t.tokens[id] = tok
		t.inVocab[id] = true
	}
	t.addedIDs = map[string]int{}
	for _, a := range f.AddedTokens {
		t.registerAdded(a)
	}
	// tokenizer_config.json may name more specials.
	for _, r := range cfg.AdditionalSpecialTokens {
		if id, ok := t.ID(tokenString(r)); ok {
			t.special[id] = true
		}
	}
	t.match = newMatcher(t.added)

	if err := t.buildPost(f.PostProcessor); err != nil {
		return nil, err
	}
	if cfg.CleanUp != nil {
		t.cleanup = *cfg.CleanUp
	}
	if m.UnkToken != nil {
		if id, ok := t.ID(*m.UnkToken); ok {
			t.unk = id
		}
	}
	lookup := func(raw json.RawMessage) int {
		if id, ok := t.ID(tokenString(raw)); ok && tokenString(raw) != "" {
			return id
		}
		return -1
	}
	t.bos, t.eos, t.pad = lookup(cfg.BOS), lookup(cfg.EOS), lookup(cfg.Pad)
	if u := lookup(cfg.Unk); u >= 0 {
		t.unk = u
	}
	if len(cfg.BOS) == 0 && len(t.prefix) == 1 { // no bos_token anywhere: the template's
		t.bos = t.prefix[0]
	}
	t.configMask = tokenString(cfg.Mask)
	if t.llamaMetaspace {
		if id, ok := t.ID("\u2581"); ok {
			t.spaceID = id
		}
	}
	if _, ok := m.Vocab["\u2581"]; ok && !byteLevel && !m.IgnoreMerges {
		t.splitSpace = true
		for tok := range m.Vocab {
			if strings.Contains(strings.TrimLeft(tok, "\u2581"), "\u2581") {
				t.splitSpace = false
				break
			}
		}
	}
	return t, nil
}

func (t *Tokenizer) registerAdded(a AddedToken) {
	for a.ID >= len(t.tokens) {
		t.tokens = append(t.tokens, "")
		t.inVocab = append(t.inVocab, false)
		t.special = append(t.special, false)
	}
	if _, dup := t.addedIDs[a.Content]; !dup {
		t.added = append(t.added, a)
	}
	t.addedIDs[a.Content] = a.ID
	t.tokens[a.ID] = a.Content
	if a.Special {
		t.special[a.ID] = true
	}
}

func (t *Tokenizer) buildPost(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("post_processor: %v", err)
	}
	switch c.Type {
	case "ByteLevel":
	case "Sequence":
		for _, p := range c.Processors {
			if err := t.buildPost(p); err != nil {
				return err
			}
		}
	case "TemplateProcessing":
		seen := false
		for _, it := range c.Single {
			switch {
			case it.Sequence != nil:
				seen = true
			case it.SpecialToken != nil:
				st, ok := c.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return fmt.Errorf("post_processor: template names special token %q that special_tokens does not list", it.SpecialToken.ID)
				}
				if seen {
					t.suffix = append(t.suffix, st.IDs...)
				} else {
					t.prefix = append(t.prefix, st.IDs...)
				}
			}
		}
	case "BertProcessing", "RobertaProcessing":
		get := func(r []json.RawMessage) (int, error) {
			var id int
			if len(r) != 2 || json.Unmarshal(r[1], &id) != nil {
				return 0, fmt.Errorf("post_processor %s: bad cls/sep", c.Type)
			}
			return id, nil
		}
		cls, err := get(c.Cls)
		if err != nil {
			return err
		}
		sep, err := get(c.Sep)
		if err != nil {
			return err
		}
		t.prefix = append(t.prefix, cls)
		t.suffix = append(t.suffix, sep)
	default:
		return fmt.Errorf("post_processor type %q is not supported", c.Type)
	}
	return nil
}

// Dir is the folder the tokenizer was loaded from.
func (t *Tokenizer) Dir() string { return t.dir }

// Size is the number of ids the tokenizer can emit (max id + 1).
func (t *Tokenizer) Size() int { return len(t.tokens) }

// ID returns the id of a vocabulary or added token.
func (t *Tokenizer) ID(token string) (int, bool) {
	if id, ok := t.addedIDs[token]; ok {
		return id, true
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// Token returns the string of an id ("" when the id is unknown).
func (t *Tokenizer) Token(id int) string {
	if id < 0 || id >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// BOS, EOS and Pad return the ids of those tokens, -1 when there is none.
func (t *Tokenizer) BOS() int { return t.bos }
func (t *Tokenizer) EOS() int { return t.eos }
func (t *Tokenizer) Pad() int { return t.pad }

// Unk returns the id of the unknown token, -1 when there is none.
func (t *Tokenizer) Unk() int { return t.unk }

// SetBOS, SetEOS and SetPad override the ids (e.g. from config.json); -1
// means none.
func (t *Tokenizer) SetBOS(id int) { t.bos = id }
func (t *Tokenizer) SetEOS(id int) { t.eos = id }
func (t *Tokenizer) SetPad(id int) { t.pad = id }

// Specials returns the added tokens marked special, by id.
func (t *Tokenizer) Specials() []AddedToken {
	var out []AddedToken
	for _, a := range t.added {
		if a.Special {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Added returns every added token (special or not), by id.
func (t *Tokenizer) Added() []AddedToken {
	out := append([]AddedToken(nil), t.added...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// IsSpecial reports whether id is a special token (skipped by Decode with
// skipSpecial).
func (t *Tokenizer) IsSpecial(id int) bool { return id >= 0 && id < len(t.special) && t.special[id] }

// AddsBOS reports whether Encode(text, true) starts with BOS.
func (t *Tokenizer) AddsBOS() bool { return t.bos >= 0 && len(t.prefix) > 0 && t.prefix[0] == t.bos }

// SpecialPrefix and SpecialSuffix are the ids Encode(text, true) puts
// around the text.
func (t *Tokenizer) SpecialPrefix() []int { return append([]int(nil), t.prefix...) }
func (t *Tokenizer) SpecialSuffix() []int { return append([]int(nil), t.suffix...) }

// worker holds the per-goroutine state of encoding: BPE buffers and a cache
// of the ids of words already seen.
type worker struct {
	sc    bpeScratch
	cache map[string][]int
	secs  []section
}

const (
	cacheMaxWord    = 64
	cacheMaxEntries = 1 << 16
	maxIdleWorkers  = 64
)

func (t *Tokenizer) getWorker() *worker {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.workers); n > 0 {
		w := t.workers[n-1]
		t.workers = t.workers[:n-1]
		return w
	}
	return &worker{cache: map[string][]int{}}
}

func (t *Tokenizer) putWorker(w *worker) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.workers) < maxIdleWorkers {
		t.workers = append(t.workers, w)
	}
}

// Encode returns the ids of text; addSpecial adds the post-processor's
// special tokens (e.g. BOS). Added tokens in the text are always matched.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	w := t.getWorker()
	out := t.encode(w, text, addSpecial, make([]int, 0, len(text)/4+4))
	t.putWorker(w)
	return out
}

// EncodeBatch encodes every text in parallel on all cores.
func (t *Tokenizer) EncodeBatch(texts []string, addSpecial bool) [][]int {
	out := make([][]int, len(texts))
	var next atomic.Int64
	var wg sync.WaitGroup
	n := min(runtime.GOMAXPROCS(0), len(texts))
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := t.getWorker()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(texts) {
					break
				}
				out[i] = t.encode(w, texts[i], addSpecial, make([]int, 0, len(texts[i])/4+4))
			}
			t.putWorker(w)
		}()
	}
	wg.Wait()
	return out
}

func (t *Tokenizer) encode(w *worker, text string, addSpecial bool, out []int) []int {
	if addSpecial {
		out = append(out, t.prefix...)
	}
	start := len(out)
	if t.llamaMetaspace && text != "" {
		text = "\u2581" + strings.ReplaceAll(text, "\u2581", " ")
	}
	if text != "" {
		secs := t.match.split(text, w.secs[:0])
		w.secs = secs
		for idx, s := range secs {
			if s.token >= 0 {
				out = append(out, t.match.tokens[s.token].ID)
				continue
			}
			if s.text != "" {
				out = t.encodeSection(w, s.text, idx, out)
			}
		}
	}
	if t.llamaMetaspace && len(out)-start > 1 && out[start] == t.spaceID && t.IsSpecial(out[start+1]) {
		out = append(out[:start], out[start+1:]...)
	}
	if addSpecial {
		out = append(out, t.suffix...)
	}
	return out
}

func (t *Tokenizer) encodeSection(w *worker, s string, idx int, out []int) []int {
	if t.norm != nil {
		if s = t.norm(s); s == "" {
			return out
		}
	}
	switch {
	case t.scan != nil:
		for i := 0; i < len(s); {
			e := t.scan(s, i)
			out = t.encodeWord(w, s[i:e], out)
			i = e
		}
	case t.pre != nil:
		for _, p := range t.pre.split([]string{s}, idx) {
			out = t.encodePiece(w, p, out)
		}
	default:
		out = t.encodePiece(w, s, out)
	}
	return out
}

// encodePiece encodes a pre-token, cut before each "▁" that follows another
// character when that cannot change the result (see splitSpace).
func (t *Tokenizer) encodePiece(w *worker, p string, out []int) []int {
	if !t.splitSpace || len(p) <= cacheMaxWord {
		return t.encodeWord(w, p, out)
	}
	const space = "\u2581"
	start := 0
	for i := 1; i < len(p); {
		j := strings.Index(p[i:], space)
		if j < 0 {
			break
		}
		i += j
		if !strings.HasSuffix(p[:i], space) {
			out = t.encodeWord(w, p[start:i], out)
			start = i
		}
		i += len(space)
	}
	return t.encodeWord(w, p[start:], out)
}

func (t *Tokenizer) encodeWord(w *worker, word string, out []int) []int {
	if word == "" {
		return out
	}
	if len(word) > cacheMaxWord {
		return t.model.encodeWord(word, out, &w.sc)
	}
	if ids, ok := w.cache[word]; ok {
		return append(out, ids...)
	}
	start := len(out)
	out = t.model.encodeWord(word, out, &w.sc)
	if len(w.cache) >= cacheMaxEntries {
		clear(w.cache)
	}
	w.cache[strings.Clone(word)] = append([]int(nil), out[start:]...)
	return out
}

// Decode turns ids back into text; skipSpecial drops special tokens. Ids
// the tokenizer does not know are skipped.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id >= len(t.tokens) || (t.tokens[id] == "" && !t.inVocab[id]) {
			continue
		}
		if skipSpecial && t.special[id] {
			continue
		}
		toks = append(toks, t.tokens[id])
	}
	var s string
	if t.dec != nil {
		s = strings.Join(t.dec(toks, t.isAdded), "")
	} else {
		s = strings.Join(toks, " ")
	}
	if t.cleanup {
		s = cleanUpTokenization(s)
	}
	return s
}

func (t *Tokenizer) isAdded(s string) bool {
	_, ok := t.addedIDs[s]
	return ok
}

// Fingerprint is a hash of everything that decides how text encodes: the
// tokenizer files as loaded, tokens added since, and the BOS/EOS/pad ids.
// Caches of tokenized text key on it.
func (t *Tokenizer) Fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "dllm-tokenizer-v1\x00%d\x00%d\x00", len(t.rawJSON), len(t.rawConfig))
	h.Write(t.rawJSON)
	h.Write(t.rawConfig)
	for _, a := range t.newTokens {
		fmt.Fprintf(h, "\x00added %d %q", a.ID, a.Content)
	}
	fmt.Fprintf(h, "\x00bos %d eos %d pad %d", t.bos, t.eos, t.pad)
	return hex.EncodeToString(h.Sum(nil))
}
