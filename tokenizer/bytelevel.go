package tokenizer

import "unicode/utf8"

// The GPT-2 byte-to-unicode table used by the ByteLevel pre-tokenizer and
// decoder: printable bytes map to themselves, the others (0-32, 127-160,
// 173) to U+0100 onwards, in order.
var (
	byteToRune [256]rune
	runeToByte = map[rune]byte{}
)

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
		runeToByte[byteToRune[b]] = byte(b)
	}
}

// byteLevelToRaw turns a byte-level vocabulary string ("Ġhello") into the
// raw bytes it stands for (" hello"). ok is false when a character is not
// in the table.
func byteLevelToRaw(s string) (string, bool) {
	buf := make([]byte, 0, len(s))
	for _, r := range s {
		b, ok := runeToByte[r]
		if !ok {
			return "", false
		}
		buf = append(buf, b)
	}
	return string(buf), true
}

// rawToByteLevel is the inverse of byteLevelToRaw.
func rawToByteLevel(s string) string {
	buf := make([]byte, 0, 2*len(s))
	for i := 0; i < len(s); i++ {
		buf = utf8.AppendRune(buf, byteToRune[s[i]])
	}
	return string(buf)
}

// lossyUTF8 converts bytes to a string, replacing each maximal invalid
// subpart with one U+FFFD, as Rust's String::from_utf8_lossy and the WHATWG
// TextDecoder do (Go's own conversion replaces byte by byte).
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		r, sz := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || sz > 1 {
			out = append(out, b[i:i+sz]...)
			i += sz
			continue
		}
		// Invalid: skip the maximal prefix of a well-formed sequence.
		c := b[i]
		need, lo, hi := 0, byte(0x80), byte(0xBF)
		switch {
		case c >= 0xC2 && c <= 0xDF:
			need = 1
		case c == 0xE0:
			need, lo = 2, 0xA0
		case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
			need = 2
		case c == 0xED:
			need, hi = 2, 0x9F
		case c == 0xF0:
			need, lo = 3, 0x90
		case c >= 0xF1 && c <= 0xF3:
			need = 3
		case c == 0xF4:
			need, hi = 3, 0x8F
		}
		j := i + 1
		for k := 0; k < need && j < len(b); k++ {
			if b[j] < lo || b[j] > hi {
				break
			}
			lo, hi = 0x80, 0xBF
			j++
		}
		out = append(out, "\uFFFD"...)
		i = j
	}
	return string(out)
}
