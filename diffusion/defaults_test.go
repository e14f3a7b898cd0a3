package diffusion

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenDefaults(t *testing.T) {
	dir := t.TempDir()
	if got := GenDefaults(dir); got.GenLen != DefaultGenLen || got.Alg != AlgConfidence || got.Steps != 0 {
		t.Fatalf("no generation_config.json: %+v", got)
	}
	gc := `{"gen_length": 64, "steps": 32, "block_length": 16, "alg": "margin", "alg_temp": 0.1,
		"temperature": 0.5, "top_p": 0.9, "top_k": "many", "threshold": 0.8, "max_new_tokens": 7}`
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(gc), 0o644); err != nil {
		t.Fatal(err)
	}
	want := GenOptions{GenLen: 64, Steps: 32, BlockLen: 16, Alg: AlgMargin, AlgTemp: 0.1, Temperature: 0.5, TopP: 0.9, Threshold: 0.8}
	if got := GenDefaults(dir); got.GenLen != want.GenLen || got.Steps != want.Steps || got.BlockLen != want.BlockLen ||
		got.Alg != want.Alg || got.AlgTemp != want.AlgTemp || got.Temperature != want.Temperature || got.TopP != want.TopP ||
		got.TopK != 0 || got.Threshold != want.Threshold {
		t.Fatalf("got %+v, want %+v (top_k of the wrong type ignored)", got, want)
	}
}

// TestValidateAlg: Validate refuses an --alg the sampler has not (before a
// model is loaded); "" is the default, confidence.
func TestValidateAlg(t *testing.T) {
	for _, a := range []Alg{"", AlgRandom, AlgConfidence, AlgMargin, AlgEntropy, "maskgit_plus", "Confidence"} {
		err := GenOptions{GenLen: 4, Alg: a}.Validate()
		known := a == "" || a == AlgRandom || a == AlgConfidence || a == AlgMargin || a == AlgEntropy
		if (err == nil) != known || (err != nil && !strings.Contains(err.Error(), "unknown --alg")) {
			t.Errorf("alg %q: %v", a, err)
		}
	}
}
