package safetensors

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

const validHeader = `{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}`

func validFile() []byte { return craft(validHeader, make([]byte, 16)) }

// badCase is one crafted file that breaks a rule.
type badCase struct {
	name   string
	file   []byte
	tensor string // the tensor the error must name, "" for none
}

// checkBad runs each case through ParseHeader and through OpenFile on a
// real file, and wants the rule named both times.
func checkBad(t *testing.T, rule Rule, cases []badCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseHeader("crafted", c.file, int64(len(c.file)))
			ve := wantRule(t, err, rule, c.tensor)
			if ve.File != "crafted" {
				t.Errorf("error names file %q", ve.File)
			}
			p := writeBytes(t, t.TempDir(), "bad.safetensors", c.file)
			f, err := OpenFile(p)
			if err == nil {
				f.Close()
			}
			ve = wantRule(t, err, rule, c.tensor)
			if ve.File != p || !strings.HasPrefix(err.Error(), p) {
				t.Errorf("error %q does not start with the path %s", err, p)
			}
			r, err := Open(p)
			if err == nil {
				r.Close()
			}
			wantRule(t, err, rule, c.tensor)
		})
	}
}

func TestParseHeaderValid(t *testing.T) {
	b := validFile()
	h, err := ParseHeader("ok", b, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Tensors) != 2 || h.Tensors[0].Name != "a" || h.Tensors[1].Name != "b" {
		t.Fatalf("tensors %+v, want a then b", h.Tensors)
	}
	if a := h.Tensors[0]; a.DType != BF16 || a.Begin != 0 || a.End != 8 || a.Elements() != 4 {
		t.Errorf("a = %+v", a)
	}
	if h.Metadata["format"] != "pt" || h.DataLen != 16 || h.Size != int64(len(validHeader)) {
		t.Errorf("metadata %v, data %d, size %d", h.Metadata, h.DataLen, h.Size)
	}

	// Padding after the object, an empty header, zero-sized tensors sharing
	// an offset and a scalar are all fine.
	for _, hdr := range []string{
		validHeader + "      ",
		"{}",
		"  {}\n",
		`{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"y":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"x":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}}`,
		`{"__metadata__":null}`,
		`{"f4":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}`,
	} {
		var data []byte
		switch {
		case strings.Contains(hdr, `"y"`):
			data = make([]byte, 8)
		case strings.Contains(hdr, "f4"):
			data = make([]byte, 3)
		case strings.Contains(hdr, `"b"`):
			data = make([]byte, 16)
		}
		f := craft(hdr, data)
		if _, err := ParseHeader("ok", f, int64(len(f))); err != nil {
			t.Errorf("%s: %v", hdr, err)
		}
	}
}

func TestRuleHeaderLength(t *testing.T) {
	claims := func(n uint64, total int) []byte {
		b := make([]byte, total)
		binary.LittleEndian.PutUint64(b, n)
		return b
	}
	checkBad(t, RuleHeaderLength, []badCase{
		{name: "empty file", file: nil},
		{name: "7 bytes", file: []byte{2, 0, 0, 0, 0, 0, 0}},
		{name: "header past end of file", file: claims(100, 50)},
		{name: "header one byte past end", file: craft("{}", nil)[:9]},
		{name: "at the size limit but past end", file: claims(MaxHeaderSize, 64)},
	})
	// The caller handed over fewer bytes than the header claims.
	b := validFile()
	_, err := ParseHeader("short-prefix", b[:20], int64(len(b)))
	wantRule(t, err, RuleHeaderLength, "")
	_, err = ParseHeader("short-prefix", b[:7], int64(len(b)))
	wantRule(t, err, RuleHeaderLength, "")
}

func TestRuleHeaderSize(t *testing.T) {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint64(b, MaxHeaderSize+1)
	c := make([]byte, 64)
	binary.LittleEndian.PutUint64(c, ^uint64(0))
	checkBad(t, RuleHeaderSize, []badCase{
		{name: "limit+1", file: b},
		{name: "max uint64", file: c},
	})
	// A huge file does not make a huge header acceptable.
	_, err := ParseHeader("huge", b[:8], 1<<40)
	wantRule(t, err, RuleHeaderSize, "")
}

func TestRuleHeaderJSON(t *testing.T) {
	entry := `{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`
	four := make([]byte, 4)
	checkBad(t, RuleHeaderJSON, []badCase{
		{name: "non-UTF-8 name", file: craft("{\"a\xff\":"+entry+"}", four)},
		{name: "non-UTF-8 after object", file: craft("{}\xc3", nil)},
		{name: "UTF-16 BOM", file: craft("\xff\xfe{}", nil)},
		{name: "array", file: craft(`[]`, nil)},
		{name: "string", file: craft(`"tensor"`, nil)},
		{name: "number", file: craft(`42`, nil)},
		{name: "null", file: craft(`null`, nil)},
		{name: "empty", file: craft(``, nil)},
		{name: "spaces only", file: craft(`        `, nil)},
		{name: "trailing garbage", file: craft(`{"a":`+entry+`}xyz`, four)},
		{name: "second object", file: craft(`{"a":`+entry+`}{}`, four)},
		{name: "NUL padding", file: craft("{}\x00\x00", nil)},
		{name: "unterminated", file: craft(`{"a":`+entry, four)},
		{name: "trailing comma", file: craft(`{"a":`+entry+`,}`, four)},
		{name: "duplicate names", file: craft(`{"a":`+entry+`,"a":`+entry+`}`, four), tensor: "a"},
		{name: "duplicate metadata", file: craft(`{"__metadata__":{},"__metadata__":{}}`, nil), tensor: "__metadata__"},
		{name: "entry not an object", file: craft(`{"a":[1,2]}`, nil), tensor: "a"},
		{name: "entry null", file: craft(`{"a":null}`, nil), tensor: "a"},
		{name: "missing dtype", file: craft(`{"a":{"shape":[1],"data_offsets":[0,4]}}`, four), tensor: "a"},
		{name: "missing shape", file: craft(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, four), tensor: "a"},
		{name: "missing offsets", file: craft(`{"a":{"dtype":"F32","shape":[1]}}`, four), tensor: "a"},
		{name: "three offsets", file: craft(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, four), tensor: "a"},
		{name: "fractional dim", file: craft(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, four), tensor: "a"},
		{name: "dim beyond int64", file: craft(`{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}`, four), tensor: "a"},
		{name: "dtype not a string", file: craft(`{"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}`, four), tensor: "a"},
		{name: "metadata not strings", file: craft(`{"__metadata__":{"format":1}}`, nil)},
	})
}

func TestRuleDType(t *testing.T) {
	f := func(dt string) []byte {
		return craft(`{"w":{"dtype":"`+dt+`","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))
	}
	checkBad(t, RuleDType, []badCase{
		{name: "F33", file: f("F33"), tensor: "w"},
		{name: "lower case", file: f("f32"), tensor: "w"},
		{name: "empty", file: f(""), tensor: "w"},
		{name: "torch spelling", file: f("float32"), tensor: "w"},
	})
}

func TestRuleByteLength(t *testing.T) {
	f := func(dt, shape string, end int) []byte {
		return craft(`{"w":{"dtype":"`+dt+`","shape":`+shape+`,"data_offsets":[0,`+itoa(end)+`]}}`, make([]byte, end))
	}
	checkBad(t, RuleByteLength, []badCase{
		{name: "too few bytes", file: f("F32", "[2,3]", 20), tensor: "w"},
		{name: "too many bytes", file: f("BF16", "[2,3]", 16), tensor: "w"},
		{name: "scalar", file: f("F32", "[]", 8), tensor: "w"},
		{name: "shape product overflows", file: f("U8", "[4294967296,4294967296]", 8), tensor: "w"},
		{name: "shape product overflows late", file: f("U8", "[2,3,9223372036854775807]", 8), tensor: "w"},
		{name: "product fits, x dtype size overflows", file: f("F32", "[2305843009213693952]", 8), tensor: "w"},
		{name: "product fits, x dtype size overflows int64", file: f("U8", "[9223372036854775807]", 8), tensor: "w"},
		{name: "negative dim", file: f("F32", "[-1]", 4), tensor: "w"},
		{name: "negative dims multiply to positive", file: f("F32", "[-1,-1]", 4), tensor: "w"},
		{name: "F4 half byte", file: f("F4", "[3]", 2), tensor: "w"},
	})
}

func TestRuleOffsets(t *testing.T) {
	e := func(name string, b, e int) string {
		return `"` + name + `":{"dtype":"U8","shape":[` + itoa(e-b) + `],"data_offsets":[` + itoa(b) + `,` + itoa(e) + `]}`
	}
	checkBad(t, RuleOffsets, []badCase{
		{name: "gap", file: craft(`{`+e("a", 0, 8)+`,`+e("b", 12, 20)+`}`, make([]byte, 20)), tensor: "b"},
		{name: "overlap", file: craft(`{`+e("a", 0, 8)+`,`+e("b", 4, 12)+`}`, make([]byte, 12)), tensor: "b"},
		{name: "same range twice", file: craft(`{`+e("a", 0, 8)+`,`+e("b", 0, 8)+`}`, make([]byte, 8)), tensor: "b"},
		{name: "not starting at 0", file: craft(`{`+e("a", 4, 12)+`}`, make([]byte, 12)), tensor: "a"},
		{name: "reversed pair", file: craft(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[8,0]}}`, make([]byte, 8)), tensor: "a"},
		{name: "negative begin", file: craft(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[-8,0]}}`, make([]byte, 8)), tensor: "a"},
	})
}

func TestRuleDataLength(t *testing.T) {
	hdr := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	checkBad(t, RuleDataLength, []badCase{
		{name: "trailing bytes", file: craft(hdr, make([]byte, 12))},
		{name: "short data", file: craft(hdr, make([]byte, 4))},
		{name: "no data", file: craft(hdr, nil)},
		{name: "empty header with data", file: craft(`{}`, make([]byte, 1))},
	})
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// FuzzParseHeader feeds random files (and file sizes that disagree with the
// bytes at hand) to the header parser: it must never panic, every error
// must be a *ValidationError, and an accepted header must describe tensors
// that lie inside the file.
func FuzzParseHeader(f *testing.F) {
	f.Add(validFile(), int64(0))
	f.Add(craft("{}", nil), int64(0))
	f.Add(craft(`{"a":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}`, make([]byte, 3)), int64(0))
	f.Add(craft(`{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"y":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}`, make([]byte, 8)), int64(0))
	f.Add(validFile(), int64(-30))
	f.Add(validFile(), int64(1<<40))
	f.Add([]byte{1, 2, 3}, int64(0))
	for _, c := range [][]byte{
		craft(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)),
		craft(`{"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, make([]byte, 8)),
		craft(`{"w":{"dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,8]}}`, make([]byte, 8)),
		craft(`{"w":{"dtype":"F32","shape":[-1,-1],"data_offsets":[0,4]}}`, make([]byte, 4)),
		craft(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}`, make([]byte, 12)),
		craft(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}`, make([]byte, 12)),
		craft(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 12)),
		craft(`{"__metadata__":{"format":"pt"}}xyz`, nil),
		craft("{\"a\xff\":{}}", nil),
		craft(`{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)),
	} {
		f.Add(c, int64(0))
	}
	f.Fuzz(func(t *testing.T, file []byte, sizeDelta int64) {
		size := int64(len(file)) + sizeDelta
		h, err := ParseHeader("fuzz", file, size)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is %T, not a *ValidationError", err, err)
			}
			if ve.Rule == "" || ve.File != "fuzz" {
				t.Fatalf("incomplete error %+v", ve)
			}
			return
		}
		if h.Size < 0 || 8+h.Size > int64(len(file)) || h.DataLen != size-8-h.Size || h.DataLen < 0 {
			t.Fatalf("sizes: header %d data %d of file %d (%d bytes at hand)", h.Size, h.DataLen, size, len(file))
		}
		var total int64
		for i, ti := range h.Tensors {
			if i > 0 && h.Tensors[i-1].Name >= ti.Name {
				t.Fatalf("tensors not sorted/unique: %q then %q", h.Tensors[i-1].Name, ti.Name)
			}
			if !ti.DType.Known() || ti.Begin < 0 || ti.End < ti.Begin || ti.End > h.DataLen {
				t.Fatalf("accepted bad entry %+v (data %d)", ti, h.DataLen)
			}
			n := ti.Elements()
			if n < 0 || uint64(n)*ti.DType.Bits() != 8*uint64(ti.End-ti.Begin) {
				t.Fatalf("accepted %+v: %d elements of %d bits in %d bytes", ti, n, ti.DType.Bits(), ti.End-ti.Begin)
			}
			total += ti.End - ti.Begin
		}
		if total != h.DataLen {
			t.Fatalf("tensors cover %d of %d data bytes", total, h.DataLen)
		}
	})
}
