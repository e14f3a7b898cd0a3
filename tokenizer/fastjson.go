package tokenizer

import (
	"encoding/json"
	"errors"
	"strconv"
)

// Fast parsers for the two big parts of tokenizer.json, the vocabulary
// object and the merges array (encoding/json spends most of a 150k-token
// load on them). Anything unexpected returns errSlowPath and the caller
// falls back to encoding/json.

var errSlowPath = errors.New("slow path")

type jsonScan struct {
	b []byte
	i int
}

func (s *jsonScan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\n', '\r', '\t':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScan) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *jsonScan) expect(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

func (s *jsonScan) str() (string, error) {
	if !s.expect('"') {
		return "", errSlowPath
	}
	start := s.i
	escaped := false
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '\\':
			escaped = true
			s.i += 2
			continue
		case c == '"':
			s.i++
			if !escaped {
				return string(s.b[start : s.i-1]), nil
			}
			var v string
			if err := json.Unmarshal(s.b[start-1:s.i], &v); err != nil {
				return "", errSlowPath
			}
			return v, nil
		case c < 0x20:
			return "", errSlowPath
		}
		s.i++
	}
	return "", errSlowPath
}

func (s *jsonScan) int() (int, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && (s.b[s.i] == '-' || (s.b[s.i] >= '0' && s.b[s.i] <= '9')) {
		s.i++
	}
	return strconv.Atoi(string(s.b[start:s.i]))
}

func (s *jsonScan) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// parseVocab parses {"token": id, ...}.
func parseVocab(raw []byte) (map[string]int, error) {
	s := &jsonScan{b: raw}
	if !s.expect('{') {
		return nil, errSlowPath
	}
	m := make(map[string]int, len(raw)/16)
	if s.expect('}') {
		return m, nil
	}
	for {
		k, err := s.str()
		if err != nil {
			return nil, err
		}
		if !s.expect(':') {
			return nil, errSlowPath
		}
		v, err := s.int()
		if err != nil {
			return nil, errSlowPath
		}
		m[k] = v
		if s.expect(',') {
			continue
		}
		if s.expect('}') && s.end() {
			return m, nil
		}
		return nil, errSlowPath
	}
}

// parseMergeList parses ["a b", ...] or [["a", "b"], ...] into pairs; in
// the string form a merge is split at its one space.
func parseMergeList(raw []byte) ([][2]string, bool, error) {
	s := &jsonScan{b: raw}
	if !s.expect('[') {
		return nil, false, errSlowPath
	}
	var out [][2]string
	if s.expect(']') {
		return out, false, nil
	}
	pairs := s.peek() == '['
	for {
		var p [2]string
		if pairs {
			if !s.expect('[') {
				return nil, false, errSlowPath
			}
			var err error
			if p[0], err = s.str(); err != nil || !s.expect(',') {
				return nil, false, errSlowPath
			}
			if p[1], err = s.str(); err != nil || !s.expect(']') {
				return nil, false, errSlowPath
			}
		} else {
			v, err := s.str()
			if err != nil {
				return nil, false, err
			}
			sp := -1
			for k := 0; k < len(v); k++ {
				if v[k] == ' ' {
					if sp >= 0 {
						return nil, false, errSlowPath
					}
					sp = k
				}
			}
			if sp < 0 {
				return nil, false, errSlowPath
			}
			p = [2]string{v[:sp], v[sp+1:]}
		}
		out = append(out, p)
		if s.expect(',') {
			continue
		}
		if s.expect(']') && s.end() {
			return out, pairs, nil
		}
		return nil, false, errSlowPath
	}
}

// skipValue moves past one JSON value without decoding it (strings,
// brackets and literals are recognised; validation is left to whoever
// decodes the value).
func (s *jsonScan) skipValue() error {
	s.ws()
	if s.i >= len(s.b) {
		return errSlowPath
	}
	depth := 0
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '"':
			s.i++
			for s.i < len(s.b) && s.b[s.i] != '"' {
				if s.b[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			if s.i >= len(s.b) {
				return errSlowPath
			}
			s.i++
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			if depth == 0 {
				return nil
			}
			depth--
			s.i++
		case ',':
			if depth == 0 {
				return nil
			}
			s.i++
		default:
			if depth == 0 && (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
				return nil
			}
			s.i++
		}
		if depth == 0 && s.i > 0 && (s.b[s.i-1] == '"' || s.b[s.i-1] == '}' || s.b[s.i-1] == ']') {
			return nil
		}
	}
	if depth != 0 {
		return errSlowPath
	}
	return nil
}

// objectMembers splits a JSON object into its members' raw values, in
// order.
func objectMembers(raw []byte) ([]string, []json.RawMessage, error) {
	s := &jsonScan{b: raw}
	if !s.expect('{') {
		return nil, nil, errSlowPath
	}
	var keys []string
	var vals []json.RawMessage
	if s.expect('}') {
		return keys, vals, nil
	}
	for {
		k, err := s.str()
		if err != nil {
			return nil, nil, err
		}
		if !s.expect(':') {
			return nil, nil, errSlowPath
		}
		s.ws()
		start := s.i
		if err := s.skipValue(); err != nil {
			return nil, nil, err
		}
		keys = append(keys, k)
		vals = append(vals, json.RawMessage(s.b[start:s.i]))
		if s.expect(',') {
			continue
		}
		if s.expect('}') && s.end() {
			return keys, vals, nil
		}
		return nil, nil, errSlowPath
	}
}

// decodeLarge unmarshals a JSON object into v, handing the members named in
// big over as raw values (set through the callback) without running
// encoding/json over them; the other members go through encoding/json.
func decodeLarge(raw []byte, v any, big map[string]*json.RawMessage) error {
	keys, vals, err := objectMembers(raw)
	if err != nil {
		// Not an object we can split: let encoding/json report it.
		return json.Unmarshal(raw, v)
	}
	small := []byte{'{'}
	for i, k := range keys {
		if dst, ok := big[k]; ok {
			*dst = vals[i]
			continue
		}
		if len(small) > 1 {
			small = append(small, ',')
		}
		small = append(small, mustMarshal(k, "", "")...)
		small = append(small, ':')
		small = append(small, vals[i]...)
	}
	small = append(small, '}')
	return json.Unmarshal(small, v)
}
