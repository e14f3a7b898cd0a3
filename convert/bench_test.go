package convert

import (
	"os"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
)

// BenchmarkTrainStepStories260K times the conversion's training step on the
// stories260K shape at B8 L256 (EXPERIMENTS.md: PyTorch 7,499 tokens/s).
func BenchmarkTrainStepStories260K(b *testing.B) {
	dir := "../../shared/models/stories260K"
	if _, err := os.Stat(dir); err != nil {
		b.Skip("../shared is absent")
	}
	m, err := model.Load(dir, cpu.New(0))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	r, err := BenchStep(m, 8, 256, 0, b.N, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.TokensPerSec, "tokens/s")
}

// BenchmarkTrainStepLlama42M times the step of the 41.7M llama of
// EXPERIMENTS.md at B4 L512 (PyTorch: 460 tokens/s).
func BenchmarkTrainStepLlama42M(b *testing.B) {
	cfg, err := model.LoadConfig("../testdata/configs/llama-42m.json")
	if err != nil {
		b.Fatal(err)
	}
	m := model.New(cfg, cpu.New(0))
	m.InitRandom(1)
	b.ResetTimer()
	r, err := BenchStep(m, 4, 512, 0, b.N, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.TokensPerSec, "tokens/s")
}
