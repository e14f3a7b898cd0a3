package tokenizer

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func shakespeare(b testing.TB) string {
	data, err := os.ReadFile(filepath.Join(sharedDir(b), "data/tinyshakespeare/input.txt"))
	if err != nil {
		b.Fatal(err)
	}
	return string(data)
}

// chunks cuts text after "\n\n" when a non-space follows: for the Qwen and
// Llama-3 split patterns such a cut never changes the pre-tokens, so the
// chunks encode to exactly the ids of the whole text.
func chunks(text string, size int) []string {
	var out []string
	for len(text) > size {
		k := strings.Index(text[size:], "\n\n")
		for k >= 0 && size+k+2 < len(text) && (text[size+k+2] == '\n' || text[size+k+2] == ' ' || text[size+k+2] == '\r' || text[size+k+2] == '\t') {
			n := strings.Index(text[size+k+2:], "\n\n")
			if n < 0 {
				k = -1
				break
			}
			k += 2 + n
		}
		if k < 0 {
			break
		}
		out = append(out, text[:size+k+2])
		text = text[size+k+2:]
	}
	return append(out, text)
}

func benchEncode(b *testing.B, rel string, parallel, cold bool) {
	tk := loadShared(b, rel)
	text := shakespeare(b)
	parts := chunks(text, 16<<10)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	for i := 0; i < b.N; i++ {
		switch {
		case parallel:
			n = 0
			for _, ids := range tk.EncodeBatch(parts, false) {
				n += len(ids)
			}
		case cold:
			n = len(tk.encode(&worker{cache: map[string][]int{}}, text, false, nil))
		default:
			n = len(tk.Encode(text, false))
		}
	}
	b.ReportMetric(float64(n), "tokens")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
}

// Single goroutine, word cache warm after the first iteration.
func BenchmarkEncodeQwen3(b *testing.B)  { benchEncode(b, "tokenizers/qwen3", false, false) }
func BenchmarkEncodeLlama3(b *testing.B) { benchEncode(b, "tokenizers/llama3", false, false) }

// Single goroutine, empty word cache at every iteration.
func BenchmarkEncodeColdQwen3(b *testing.B)  { benchEncode(b, "tokenizers/qwen3", false, true) }
func BenchmarkEncodeColdLlama3(b *testing.B) { benchEncode(b, "tokenizers/llama3", false, true) }

// EncodeBatch over 16 KB chunks on GOMAXPROCS goroutines.
func BenchmarkEncodeBatchQwen3(b *testing.B)  { benchEncode(b, "tokenizers/qwen3", true, false) }
func BenchmarkEncodeBatchLlama3(b *testing.B) { benchEncode(b, "tokenizers/llama3", true, false) }

func BenchmarkLoadQwen3(b *testing.B)  { benchLoad(b, "tokenizers/qwen3") }
func BenchmarkLoadLlama3(b *testing.B) { benchLoad(b, "tokenizers/llama3") }

func benchLoad(b *testing.B, rel string) {
	dir := filepath.Join(sharedDir(b), rel)
	for i := 0; i < b.N; i++ {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeQwen3(b *testing.B) {
	tk := loadShared(b, "tokenizers/qwen3")
	text := shakespeare(b)
	ids := tk.Encode(text, false)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tk.Decode(ids, false)
	}
}

// The chunked batch encodes to the same ids as the whole text.
func TestChunkedEqualsWhole(t *testing.T) {
	text := shakespeare(t)
	for _, rel := range []string{"tokenizers/qwen3", "tokenizers/llama3"} {
		tk := loadShared(t, rel)
		whole := tk.Encode(text, false)
		var joined []int
		parts := chunks(text, 16<<10)
		for _, ids := range tk.EncodeBatch(parts, false) {
			joined = append(joined, ids...)
		}
		if strings.Join(parts, "") != text {
			t.Fatal("chunks do not cover the text")
		}
		if !equalInts(whole, joined) {
			t.Errorf("%s: %d chunks give %d tokens, whole text %d", rel, len(parts), len(joined), len(whole))
		}
		want := text
		if tk.cleanup {
			want = cleanUpTokenization(text)
		}
		if d := tk.Decode(whole, false); d != want {
			t.Errorf("%s: decode of the whole text differs", rel)
		}
		t.Logf("%s: %d bytes -> %d tokens (%d chunks)", rel, len(text), len(whole), len(parts))
	}
}

// SentencePiece-style BPE (no pre-tokenizer: a story is one word), stories
// of TinyStories-train-head.txt on one goroutine.
func BenchmarkEncodeStories260K(b *testing.B) {
	tk := loadShared(b, "models/stories260K")
	data, err := os.ReadFile(filepath.Join(sharedDir(b), "data/tinystories/TinyStories-train-head.txt"))
	if err != nil {
		b.Fatal(err)
	}
	stories := splitStories(string(data))
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range stories {
			tk.Encode(s, true)
		}
	}
}
