package model

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// TestOpenMergedOpensSourceOnce: a merged export of a LoadFrozen base reads
// every tensor through the one reader OpenMerged opened (a 7B base's shards
// are not reopened, their headers parsed, per tensor): with the source's
// files removed after the open, every tensor still reads, bit for bit as
// before. A later open of the removed source fails with its path.
func TestOpenMergedOpensSourceOnce(t *testing.T) {
	be := cpu.New(1)
	for _, name := range []string{"llama-sharded", "qwen2"} {
		dir := filepath.Join(t.TempDir(), name)
		os.Mkdir(dir, 0o755)
		srcDir := filepath.Join("..", "testdata", "tiny", name)
		files, _ := os.ReadDir(srcDir)
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(srcDir, f.Name()))
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, f.Name()), b, 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		m, err := LoadFrozen(dir, be, 1)
		if err != nil {
			t.Fatal(err)
		}
		a, err := NewLoRA(m, LoRAConfig{Rank: 2, Alpha: 4, Targets: LoRATargets, TrainRows: []int{m.Cfg.Vocab - 1}}, 3)
		if err != nil {
			t.Fatal(err)
		}
		be.Upload(a.Params, randVec(rand.New(rand.NewPCG(1, 2)), a.Params.N, 0.2))
		readAll := func(between func()) map[string][]float32 {
			fetch, closeFetch, err := a.OpenMerged(m)
			if err != nil {
				t.Fatal(err)
			}
			between()
			out := map[string][]float32{}
			for _, s := range m.ExportSpecs() {
				v := make([]float32, s.Elements())
				if err := fetch(s.Name, v); err != nil {
					t.Fatalf("%s: %s after the source was removed: %v", name, s.Name, err)
				}
				out[s.Name] = v
			}
			if err := closeFetch(); err != nil {
				t.Fatal(err)
			}
			return out
		}
		want := readAll(func() {})
		got := readAll(func() {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		})
		for n, w := range want {
			for i := range w {
				if math.Float32bits(w[i]) != math.Float32bits(got[n][i]) {
					t.Fatalf("%s: %s[%d] = %v, before the removal %v", name, n, i, got[n][i], w[i])
				}
			}
		}
		if _, _, err := a.OpenMerged(m); err == nil || !strings.Contains(err.Error(), dir) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: opening a removed source: %v, want one line naming %s", name, err, dir)
		}
	}
}
