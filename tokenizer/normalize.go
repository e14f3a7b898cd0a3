package tokenizer

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer is one step of the tokenizer.json normalizer. Normalizers run
// on each section of text between added tokens.
type normalizer func(string) string

func buildNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("normalizer: %v", err)
	}
	switch c.Type {
	case "Sequence":
		var steps []normalizer
		for _, r := range c.Normalizers {
			n, err := buildNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				steps = append(steps, n)
			}
		}
		if len(steps) == 0 {
			return nil, nil
		}
		return func(s string) string {
			for _, n := range steps {
				s = n(s)
			}
			return s
		}, nil
	case "NFC":
		return unicodeForm(norm.NFC), nil
	case "NFD":
		return unicodeForm(norm.NFD), nil
	case "NFKC":
		return unicodeForm(norm.NFKC), nil
	case "NFKD":
		return unicodeForm(norm.NFKD), nil
	case "Lowercase":
		return strings.ToLower, nil
	case "Strip":
		l, r := c.StripLeft, c.StripRight
		return func(s string) string {
			if l {
				s = strings.TrimLeftFunc(s, unicode.IsSpace)
			}
			if r {
				s = strings.TrimRightFunc(s, unicode.IsSpace)
			}
			return s
		}, nil
	case "Prepend":
		p := c.Prepend
		return func(s string) string {
			if s == "" {
				return s
			}
			return p + s
		}, nil
	case "Replace":
		content := c.contentString()
		switch {
		case c.Pattern != nil && c.Pattern.String != nil:
			old := *c.Pattern.String
			return func(s string) string { return strings.ReplaceAll(s, old, content) }, nil
		case c.Pattern != nil && c.Pattern.Regex != nil:
			re, err := regexp.Compile(*c.Pattern.Regex)
			if err != nil {
				return nil, fmt.Errorf("normalizer Replace regex %q: %v", *c.Pattern.Regex, err)
			}
			return func(s string) string { return re.ReplaceAllLiteralString(s, content) }, nil
		}
		return nil, fmt.Errorf("normalizer Replace without a pattern")
	}
	return nil, fmt.Errorf("normalizer type %q is not supported", c.Type)
}

func unicodeForm(f norm.Form) normalizer {
	return func(s string) string {
		// Fast path: ASCII text is in every normal form.
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return f.String(s)
			}
		}
		return s
	}
}
