package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the pre-tokenizer Split regexes of the GPT-2,
// Llama-3 and Qwen2/2.5/3 tokenizers. Go's regexp has no lookahead, which
// `\s+(?!\S)` needs, so each pattern is implemented as a scanner that returns
// the end of the match starting at a position, with the semantics of a
// backtracking engine (leftmost-first alternation, greedy quantifiers), as
// Oniguruma (Rust tokenizers) and JavaScript use.
//
// Character classes: \p{L} = unicode.IsLetter, \p{N} = unicode.IsNumber,
// \s = the Unicode White_Space property (unicode.IsSpace), as in Rust and
// Python's regex module. JavaScript's \s differs on two code points (it
// includes U+FEFF and excludes U+0085).

// The Split regexes we recognise, exactly as they appear in tokenizer.json.
const (
	patternQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// scanner returns the end of the match that starts at i (i < len(s)); every
// position of the text is covered by some match for the known patterns.
type scanner func(s string, i int) int

func knownScanner(pattern string) scanner {
	switch pattern {
	case patternQwen2:
		return scanQwen2
	case patternLlama3:
		return scanLlama3
	case patternGPT2:
		return scanGPT2
	}
	return nil
}

const (
	clsL  = 1 << iota // \p{L}
	clsN              // \p{N}
	clsS              // \s
	clsNL             // \r or \n
)

var asciiClass [128]uint8

func init() {
	for c := 0; c < 128; c++ {
		var k uint8
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			k = clsL
		case c >= '0' && c <= '9':
			k = clsN
		case c == ' ', c == '\t', c == '\v', c == '\f':
			k = clsS
		case c == '\r', c == '\n':
			k = clsS | clsNL
		}
		asciiClass[c] = k
	}
}

// class decodes the rune at i and returns its classes and size.
func class(s string, i int) (uint8, rune, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], rune(c), 1
	}
	r, sz := utf8.DecodeRuneInString(s[i:])
	var k uint8
	switch {
	case unicode.IsLetter(r):
		k = clsL
	case unicode.IsNumber(r):
		k = clsN
	case unicode.IsSpace(r):
		k = clsS
	}
	return k, r, sz
}

// spanClass returns the end of the run of runes having class bit cls from i.
func spanClass(s string, i int, cls uint8) int {
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if asciiClass[c]&cls == 0 {
				return i
			}
			i++
			continue
		}
		k, _, sz := class(s, i)
		if k&cls == 0 {
			return i
		}
		i += sz
	}
	return i
}

// spanOther returns the end of the run of [^\s\p{L}\p{N}] from i.
func spanOther(s string, i int) int {
	for i < len(s) {
		k, _, sz := class(s, i)
		if k&(clsL|clsN|clsS) != 0 {
			return i
		}
		i += sz
	}
	return i
}

// contraction matches 's|'t|'re|'ve|'m|'ll|'d after the apostrophe at i-1
// and returns the number of bytes after the apostrophe (0: no match).
// foldCase applies Unicode simple case folding ((?i:...)): s also matches
// S and U+017F LATIN SMALL LETTER LONG S.
func contraction(s string, i int, foldCase bool) int {
	if i >= len(s) {
		return 0
	}
	lower := func(c byte) byte {
		if foldCase && c >= 'A' && c <= 'Z' {
			return c + 32
		}
		return c
	}
	c := lower(s[i])
	switch c {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if i+1 < len(s) && lower(s[i+1]) == 'e' {
			return 2
		}
	case 'l':
		if i+1 < len(s) && lower(s[i+1]) == 'l' {
			return 2
		}
	case 0xC5: // U+017F is C5 BF
		if foldCase && i+1 < len(s) && s[i+1] == 0xBF {
			return 2
		}
	}
	return 0
}

func scanQwen2(s string, i int) int  { return scanLlamaFamily(s, i, 1) }
func scanLlama3(s string, i int) int { return scanLlamaFamily(s, i, 3) }

// scanLlamaFamily implements
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}|
//	 ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func scanLlamaFamily(s string, i, maxDigits int) int {
	k, r, sz := class(s, i)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if n := contraction(s, i+1, true); n > 0 {
			return i + 1 + n
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if k&clsL != 0 {
		return spanClass(s, i+sz, clsL)
	}
	if k&(clsNL|clsN) == 0 && i+sz < len(s) {
		if k2, _, sz2 := class(s, i+sz); k2&clsL != 0 {
			return spanClass(s, i+sz+sz2, clsL)
		}
	}
	// \p{N}{1,maxDigits}
	if k&clsN != 0 {
		j := i + sz
		for n := 1; n < maxDigits && j < len(s); n++ {
			k2, _, sz2 := class(s, j)
			if k2&clsN == 0 {
				break
			}
			j += sz2
		}
		return j
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	j := i
	if r == ' ' {
		j++
	}
	if j < len(s) {
		if k2, _, _ := class(s, j); k2&(clsL|clsN|clsS) == 0 {
			e := spanOther(s, j)
			for e < len(s) && (s[e] == '\r' || s[e] == '\n') {
				e++
			}
			return e
		}
	}
	// Here s[i] is whitespace.
	return scanSpace(s, i, true)
}

// scanSpace handles the whitespace alternatives from i (a whitespace rune):
// \s*[\r\n]+ (when withNewline), \s+(?!\S), \s+.
func scanSpace(s string, i int, withNewline bool) int {
	end, lastNL, lastStart := i, -1, i
	for end < len(s) {
		k, _, sz := class(s, end)
		if k&clsS == 0 {
			break
		}
		if k&clsNL != 0 {
			lastNL = end
		}
		lastStart = end
		end += sz
	}
	if withNewline && lastNL >= 0 {
		return lastNL + 1
	}
	if end == len(s) || lastStart == i {
		return end
	}
	return lastStart
}

// scanGPT2 implements
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func scanGPT2(s string, i int) int {
	k, r, _ := class(s, i)
	if r == '\'' {
		if n := contraction(s, i+1, false); n > 0 {
			return i + 1 + n
		}
	}
	j := i
	if r == ' ' && i+1 < len(s) {
		j = i + 1
		k, _, _ = class(s, j)
	}
	switch {
	case k&clsL != 0:
		return spanClass(s, j, clsL)
	case k&clsN != 0:
		return spanClass(s, j, clsN)
	case k&clsS == 0:
		return spanOther(s, j)
	}
	return scanSpace(s, i, false)
}
