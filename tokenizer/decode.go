package tokenizer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// decoder is one step of the tokenizer.json decoder: it maps the token
// strings to new strings (Fuse joins them into one). isAdded tells added
// tokens apart, which the ByteLevel decoder leaves as they are.
type decoder func(toks []string, isAdded func(string) bool) []string

func buildDecoder(raw json.RawMessage) (decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("decoder: %v", err)
	}
	switch c.Type {
	case "Sequence":
		var steps []decoder
		for _, r := range c.Decoders {
			d, err := buildDecoder(r)
			if err != nil {
				return nil, err
			}
			if d != nil {
				steps = append(steps, d)
			}
		}
		return func(t []string, isAdded func(string) bool) []string {
			for _, d := range steps {
				t = d(t, isAdded)
			}
			return t
		}, nil
	case "ByteLevel":
		return decodeByteLevel, nil
	case "Replace":
		if c.Pattern == nil || c.Pattern.String == nil {
			return nil, fmt.Errorf("decoder Replace: only string patterns are supported")
		}
		old, content := *c.Pattern.String, c.contentString()
		return func(t []string, _ func(string) bool) []string {
			for i := range t {
				t[i] = strings.ReplaceAll(t[i], old, content)
			}
			return t
		}, nil
	case "ByteFallback":
		return decodeByteFallback, nil
	case "Fuse":
		return func(t []string, _ func(string) bool) []string { return []string{strings.Join(t, "")} }, nil
	case "Strip":
		content := c.contentString()
		r, _ := utf8.DecodeRuneInString(content)
		start, stop := c.Start, c.Stop
		return func(t []string, _ func(string) bool) []string {
			for i, s := range t {
				for k := 0; k < start && strings.HasPrefix(s, string(r)); k++ {
					s = s[utf8.RuneLen(r):]
				}
				for k := 0; k < stop && strings.HasSuffix(s, string(r)); k++ {
					s = s[:len(s)-utf8.RuneLen(r)]
				}
				t[i] = s
			}
			return t
		}, nil
	case "Metaspace":
		rep := c.Replacement
		if rep == "" {
			rep = "\u2581"
		}
		prefix := c.PrependScheme != "never"
		if c.PrependScheme == "" && c.AddPrefixSpace != nil {
			prefix = *c.AddPrefixSpace
		}
		return func(t []string, _ func(string) bool) []string {
			for i := range t {
				t[i] = strings.ReplaceAll(t[i], rep, " ")
				if i == 0 && prefix {
					t[i] = strings.TrimPrefix(t[i], " ")
				}
			}
			return t
		}, nil
	}
	return nil, fmt.Errorf("decoder type %q is not supported", c.Type)
}

// decodeByteLevel maps runs of ordinary tokens from the byte-level alphabet
// back to bytes (lossy UTF-8); added tokens stay as written.
func decodeByteLevel(t []string, isAdded func(string) bool) []string {
	var out []string
	var buf []byte
	flush := func() {
		if len(buf) > 0 {
			out = append(out, lossyUTF8(buf))
			buf = buf[:0]
		}
	}
	for _, s := range t {
		if isAdded(s) {
			flush()
			out = append(out, s)
			continue
		}
		start := len(buf)
		ok := true
		for _, r := range s {
			b, in := runeToByte[r]
			if !in {
				ok = false
				break
			}
			buf = append(buf, b)
		}
		if !ok {
			buf = append(buf[:start], s...)
		}
	}
	flush()
	return out
}

// decodeByteFallback turns runs of <0xXX> tokens into text; a run that is
// not valid UTF-8 becomes one U+FFFD per byte (as tokenizers does).
func decodeByteFallback(t []string, _ func(string) bool) []string {
	var out []string
	var buf []byte
	flush := func() {
		if len(buf) == 0 {
			return
		}
		if utf8.Valid(buf) {
			out = append(out, string(buf))
		} else {
			for range buf {
				out = append(out, "\uFFFD")
			}
		}
		buf = buf[:0]
	}
	for _, s := range t {
		if len(s) == 6 && strings.HasPrefix(s, "<0x") && s[5] == '>' {
			if v, err := strconv.ParseUint(s[3:5], 16, 8); err == nil {
				buf = append(buf, byte(v))
				continue
			}
		}
		flush()
		out = append(out, s)
	}
	flush()
	return out
}

// cleanUpTokenization is transformers' clean_up_tokenization.
func cleanUpTokenization(s string) string {
	for _, r := range [][2]string{
		{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
		{" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
	} {
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	return s
}
