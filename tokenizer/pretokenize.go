package tokenizer

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// preTokenizer splits a normalized section into words; section is the index
// of the section among the added-token splits (Metaspace "first" needs it).
type preTokenizer interface {
	split(pieces []string, section int) []string
}

type preSequence []preTokenizer

func (q preSequence) split(p []string, section int) []string {
	for _, t := range q {
		p = t.split(p, section)
	}
	return p
}

// preSplit is the Split pre-tokenizer: a pattern (hand-written scanner for
// the known regexes, Go regexp otherwise, or a literal string) and a
// behavior.
type preSplit struct {
	scan     scanner
	re       *regexp.Regexp
	re2      *regexp2.Regexp // patterns Go's regexp cannot run (look-ahead)
	literal  string
	behavior string // Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous
	invert   bool
}

func (p *preSplit) matches(s string) [][2]int {
	var m [][2]int
	switch {
	case p.scan != nil:
		for i := 0; i < len(s); {
			e := p.scan(s, i)
			m = append(m, [2]int{i, e})
			i = e
		}
	case p.re != nil:
		for _, x := range p.re.FindAllStringIndex(s, -1) {
			if x[1] > x[0] {
				m = append(m, [2]int{x[0], x[1]})
			}
		}
	case p.re2 != nil:
		// regexp2 counts runes; off maps them back to bytes (an invalid
		// byte is one rune, U+FFFD, either way).
		runes := []rune(s)
		off := make([]int, len(runes)+1)
		for k, i := 0, 0; k < len(runes); k++ {
			off[k] = i
			_, sz := utf8.DecodeRuneInString(s[i:])
			i += sz
		}
		off[len(runes)] = len(s)
		x, err := p.re2.FindRunesMatch(runes)
		for ; x != nil && err == nil; x, err = p.re2.FindNextMatch(x) {
			if x.Length > 0 {
				m = append(m, [2]int{off[x.Index], off[x.Index+x.Length]})
			}
		}
	default:
		if p.literal == "" {
			return nil
		}
		for i := 0; ; {
			j := strings.Index(s[i:], p.literal)
			if j < 0 {
				break
			}
			m = append(m, [2]int{i + j, i + j + len(p.literal)})
			i += j + len(p.literal)
		}
	}
	return m
}

func (p *preSplit) split(pieces []string, _ int) []string {
	var out []string
	for _, s := range pieces {
		out = splitWithBehavior(out, s, p.matches(s), p.behavior, p.invert)
	}
	return out
}

// splitWithBehavior cuts s at the matched spans as tokenizers'
// SplitDelimiterBehavior does.
func splitWithBehavior(out []string, s string, m [][2]int, behavior string, invert bool) []string {
	type seg struct {
		a, b  int
		match bool
	}
	var segs []seg
	prev := 0
	for _, x := range m {
		if x[0] > prev {
			segs = append(segs, seg{prev, x[0], invert})
		}
		segs = append(segs, seg{x[0], x[1], !invert})
		prev = x[1]
	}
	if prev < len(s) {
		segs = append(segs, seg{prev, len(s), invert})
	}
	switch behavior {
	case "Removed":
		for _, g := range segs {
			if !g.match {
				out = append(out, s[g.a:g.b])
			}
		}
	case "MergedWithPrevious":
		start := -1
		for _, g := range segs {
			if start < 0 {
				start = g.a
			}
			if g.match {
				out = append(out, s[start:g.b])
				start = -1
			}
		}
		if start >= 0 {
			out = append(out, s[start:])
		}
	case "MergedWithNext":
		start := -1
		for _, g := range segs {
			if g.match {
				if start >= 0 {
					out = append(out, s[start:g.a])
				}
				start = g.a
			} else if start < 0 {
				start = g.a
			}
		}
		if start >= 0 {
			out = append(out, s[start:])
		}
	case "Contiguous":
		for k := 0; k < len(segs); {
			j := k + 1
			if segs[k].match {
				for j < len(segs) && segs[j].match {
					j++
				}
			}
			out = append(out, s[segs[k].a:segs[j-1].b])
			k = j
		}
	default: // Isolated
		for _, g := range segs {
			out = append(out, s[g.a:g.b])
		}
	}
	return out
}

// preByteLevel is the ByteLevel pre-tokenizer. The mapping of bytes to the
// printable alphabet itself is done by the BPE model, which works on raw
// bytes; this only adds the prefix space and the GPT-2 split.
type preByteLevel struct {
	addPrefixSpace bool
	useRegex       bool
}

func (p *preByteLevel) split(pieces []string, _ int) []string {
	if !p.addPrefixSpace && !p.useRegex {
		return pieces
	}
	var out []string
	for _, s := range pieces {
		if p.addPrefixSpace && !strings.HasPrefix(s, " ") {
			s = " " + s
		}
		if !p.useRegex {
			out = append(out, s)
			continue
		}
		for i := 0; i < len(s); {
			e := scanGPT2(s, i)
			out = append(out, s[i:e])
			i = e
		}
	}
	return out
}

// preMetaspace replaces spaces by the replacement character, prepends it
// (prepend_scheme always / first / never) and optionally splits before it.
type preMetaspace struct {
	replacement string
	scheme      string
	splitWords  bool
}

func (p *preMetaspace) split(pieces []string, section int) []string {
	var out []string
	for _, s := range pieces {
		s = strings.ReplaceAll(s, " ", p.replacement)
		if !strings.HasPrefix(s, p.replacement) && (p.scheme == "always" || (p.scheme == "first" && section == 0)) {
			s = p.replacement + s
		}
		if !p.splitWords {
			out = append(out, s)
			continue
		}
		var m [][2]int
		for i := 0; ; {
			j := strings.Index(s[i:], p.replacement)
			if j < 0 {
				break
			}
			m = append(m, [2]int{i + j, i + j + len(p.replacement)})
			i += j + len(p.replacement)
		}
		out = splitWithBehavior(out, s, m, "MergedWithNext", false)
	}
	return out
}

// preDigits splits digits from the rest (individual_digits: one per digit).
type preDigits struct{ individual bool }

func (p *preDigits) split(pieces []string, _ int) []string {
	var out []string
	for _, s := range pieces {
		var m [][2]int
		for i := 0; i < len(s); {
			k, _, sz := class(s, i)
			if k&clsN == 0 || !isDigitRune(s, i) {
				i += sz
				continue
			}
			j := i + sz
			if !p.individual {
				for j < len(s) && isDigitRune(s, j) {
					_, _, sz2 := class(s, j)
					j += sz2
				}
			}
			m = append(m, [2]int{i, j})
			i = j
		}
		beh := "Contiguous"
		if p.individual {
			beh = "Isolated"
		}
		out = splitWithBehavior(out, s, m, beh, false)
	}
	return out
}

func isDigitRune(s string, i int) bool {
	_, r, _ := class(s, i)
	return unicode.IsDigit(r)
}

// preWhitespaceSplit splits on whitespace, dropping it.
type preWhitespaceSplit struct{}

func (preWhitespaceSplit) split(pieces []string, _ int) []string {
	var out []string
	for _, s := range pieces {
		out = append(out, strings.Fields(s)...)
	}
	return out
}

// preRegexIsolated splits with a Go regexp, keeping matches and gaps
// (the Whitespace pre-tokenizer: \w+|[^\w\s]+ with gaps removed).
type preRegexRemoveGaps struct{ re *regexp.Regexp }

func (p preRegexRemoveGaps) split(pieces []string, _ int) []string {
	var out []string
	for _, s := range pieces {
		out = append(out, p.re.FindAllString(s, -1)...)
	}
	return out
}

type componentJSON struct {
	Type           string            `json:"type"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	Pretokenizers  []json.RawMessage `json:"pretokenizers"`
	Decoders       []json.RawMessage `json:"decoders"`
	Processors     []json.RawMessage `json:"processors"`
	Prepend        string            `json:"prepend"`
	Pattern        *patternJSON      `json:"pattern"`
	Content        json.RawMessage   `json:"content"`
	Behavior       string            `json:"behavior"`
	Invert         bool              `json:"invert"`
	AddPrefixSpace *bool             `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Replacement    string            `json:"replacement"`
	PrependScheme  string            `json:"prepend_scheme"`
	Split          *bool             `json:"split"`
	Start          int               `json:"start"`
	Stop           int               `json:"stop"`
	Individual     bool              `json:"individual_digits"`
	StripLeft      bool              `json:"strip_left"`
	StripRight     bool              `json:"strip_right"`
	Single         []templateItem    `json:"single"`
	SpecialTokens  map[string]struct {
		ID  string `json:"id"`
		IDs []int  `json:"ids"`
	} `json:"special_tokens"`
	Cls []json.RawMessage `json:"cls"`
	Sep []json.RawMessage `json:"sep"`
}

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (c *componentJSON) contentString() string {
	var s string
	_ = json.Unmarshal(c.Content, &s)
	return s
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

func buildPreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %v", err)
	}
	switch c.Type {
	case "Sequence":
		var q preSequence
		for _, r := range c.Pretokenizers {
			p, err := buildPreTokenizer(r)
			if err != nil {
				return nil, err
			}
			if p != nil {
				q = append(q, p)
			}
		}
		return q, nil
	case "Split":
		p := &preSplit{behavior: c.Behavior, invert: c.Invert}
		switch {
		case c.Pattern == nil:
			return nil, fmt.Errorf("pre_tokenizer Split without a pattern")
		case c.Pattern.String != nil:
			p.literal = *c.Pattern.String
		case c.Pattern.Regex != nil:
			if p.scan = knownScanner(*c.Pattern.Regex); p.scan == nil {
				var err error
				if p.re, p.re2, err = compileSplit(*c.Pattern.Regex); err != nil {
					return nil, err
				}
			}
		}
		return p, nil
	case "ByteLevel":
		p := &preByteLevel{useRegex: true}
		if c.AddPrefixSpace != nil {
			p.addPrefixSpace = *c.AddPrefixSpace
		}
		if c.UseRegex != nil {
			p.useRegex = *c.UseRegex
		}
		return p, nil
	case "Metaspace":
		p := &preMetaspace{replacement: c.Replacement, scheme: c.PrependScheme, splitWords: true}
		if p.replacement == "" {
			p.replacement = "\u2581"
		}
		if p.scheme == "" {
			p.scheme = "always"
			if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
				p.scheme = "never"
			}
		}
		if c.Split != nil {
			p.splitWords = *c.Split
		}
		return p, nil
	case "Digits":
		return &preDigits{individual: c.Individual}, nil
	case "WhitespaceSplit":
		return preWhitespaceSplit{}, nil
	case "Whitespace":
		return preRegexRemoveGaps{regexp.MustCompile(`\w+|[^\w\s]+`)}, nil
	}
	return nil, fmt.Errorf("pre_tokenizer type %q is not supported", c.Type)
}

// compileSplit compiles a Split regex that has no hand-written scanner. Go's
// regexp runs it when it can and means the same as Oniguruma (Rust
// tokenizers): not with look-around, and not with \s, \d, \w or \b, which
// are ASCII in Go and Unicode there. Everything else runs on regexp2, a
// backtracking engine with .NET semantics (Unicode classes, look-ahead).
func compileSplit(pattern string) (*regexp.Regexp, *regexp2.Regexp, error) {
	perlClass := false
	for i := 0; i+1 < len(pattern); i++ {
		if pattern[i] == '\\' {
			if strings.IndexByte("sSdDwWbB", pattern[i+1]) >= 0 {
				perlClass = true
			}
			i++
		}
	}
	if !perlClass {
		if re, err := regexp.Compile(pattern); err == nil {
			return re, nil, nil
		}
	}
	re2, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, nil, fmt.Errorf("pre_tokenizer Split regex %q cannot be compiled: %v", pattern, err)
	}
	return nil, re2, nil
}

// hasByteLevel reports whether a ByteLevel pre-tokenizer is in the chain.
func hasByteLevel(p preTokenizer) bool {
	switch v := p.(type) {
	case *preByteLevel:
		return true
	case preSequence:
		for _, x := range v {
			if hasByteLevel(x) {
				return true
			}
		}
	}
	return false
}

// fastScanner returns the scanner when the chain is one known Split
// (Isolated) optionally followed by a plain ByteLevel, or a ByteLevel with
// the GPT-2 regex and no prefix space; the encoder then scans words without
// building slices.
func fastScanner(p preTokenizer) scanner {
	steps := []preTokenizer{p}
	if q, ok := p.(preSequence); ok {
		steps = q
	}
	var scan scanner
	for k, s := range steps {
		switch v := s.(type) {
		case *preSplit:
			if k != 0 || v.scan == nil || v.invert || (v.behavior != "Isolated" && v.behavior != "") {
				return nil
			}
			scan = v.scan
		case *preByteLevel:
			if v.addPrefixSpace {
				return nil
			}
			if v.useRegex {
				if k != 0 {
					return nil
				}
				scan = scanGPT2
			}
		default:
			return nil
		}
	}
	return scan
}
