package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// AddedToken is an entry of tokenizer.json's added_tokens.
type AddedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// matcher finds added tokens in raw text: leftmost, then longest match (a
// byte trie), as transformers' and tokenizers' added-vocabulary splitting.
type matcher struct {
	nodes  []trieNode
	first  [256]bool
	single int // the only first byte, or -1
	tokens []AddedToken
}

type trieNode struct {
	edges []trieEdge
	token int // index into tokens, -1 if no token ends here
}

type trieEdge struct {
	b    byte
	next int32
}

func newMatcher(tokens []AddedToken) *matcher {
	m := &matcher{nodes: []trieNode{{token: -1}}, single: -1, tokens: tokens}
	firsts := 0
	for ti, t := range tokens {
		if t.Content == "" {
			continue
		}
		if !m.first[t.Content[0]] {
			m.first[t.Content[0]] = true
			firsts++
			m.single = int(t.Content[0])
		}
		n := 0
		for i := 0; i < len(t.Content); i++ {
			c := t.Content[i]
			next := -1
			for _, e := range m.nodes[n].edges {
				if e.b == c {
					next = int(e.next)
					break
				}
			}
			if next < 0 {
				next = len(m.nodes)
				m.nodes = append(m.nodes, trieNode{token: -1})
				m.nodes[n].edges = append(m.nodes[n].edges, trieEdge{c, int32(next)})
			}
			n = next
		}
		if m.nodes[n].token < 0 {
			m.nodes[n].token = ti
		}
	}
	if firsts != 1 {
		m.single = -1
	}
	return m
}

// match returns the index of the longest token starting at s[i:] whose
// single_word constraint holds, and its length.
func (m *matcher) match(s string, i int) (int, int) {
	best, bestLen := -1, 0
	n := 0
	for j := i; j < len(s); j++ {
		next := -1
		for _, e := range m.nodes[n].edges {
			if e.b == s[j] {
				next = int(e.next)
				break
			}
		}
		if next < 0 {
			break
		}
		n = next
		if t := m.nodes[n].token; t >= 0 {
			if !m.tokens[t].SingleWord || singleWordOK(s, i, j+1) {
				best, bestLen = t, j+1-i
			}
		}
	}
	return best, bestLen
}

func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

func singleWordOK(s string, a, b int) bool {
	if a > 0 {
		if r, _ := utf8.DecodeLastRuneInString(s[:a]); isWordRune(r) {
			return false
		}
	}
	if b < len(s) {
		if r, _ := utf8.DecodeRuneInString(s[b:]); isWordRune(r) {
			return false
		}
	}
	return true
}

// section is a piece of the input: plain text (token < 0) or an added token.
type section struct {
	text  string
	token int // index into matcher.tokens, -1 for text
}

func (m *matcher) split(s string, out []section) []section {
	if m == nil || len(m.nodes) == 1 {
		return append(out, section{s, -1})
	}
	start := len(out)
	prev := 0
	for i := 0; i < len(s); {
		if m.single >= 0 {
			k := strings.IndexByte(s[i:], byte(m.single))
			if k < 0 {
				break
			}
			i += k
		} else if !m.first[s[i]] {
			i++
			continue
		}
		t, n := m.match(s, i)
		if t < 0 {
			i++
			continue
		}
		if i > prev {
			out = append(out, section{s[prev:i], -1})
		}
		out = append(out, section{s[i : i+n], t})
		i += n
		prev = i
	}
	if prev < len(s) {
		out = append(out, section{s[prev:], -1})
	}
	// lstrip / rstrip: the whitespace next to such a token is dropped.
	for k := start; k < len(out); k++ {
		if out[k].token < 0 {
			continue
		}
		t := m.tokens[out[k].token]
		if t.LStrip && k > start && out[k-1].token < 0 {
			out[k-1].text = strings.TrimRightFunc(out[k-1].text, unicode.IsSpace)
		}
		if t.RStrip && k+1 < len(out) && out[k+1].token < 0 {
			out[k+1].text = strings.TrimLeftFunc(out[k+1].text, unicode.IsSpace)
		}
	}
	return out
}
