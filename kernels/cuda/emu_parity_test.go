//go:build linux

package cuda

import (
	"fmt"
	"os"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/kernels/kernelcheck"
)

// TestEmulatorParity runs the parity harness of `dllm gpucheck` with small
// shapes against the emulated device: every op, forward and backward, every
// visibility mode, GQA, KV-cache dims, odd sizes, vocabulary 151936.
func TestEmulatorParity(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, mm := range []string{"fp32", "bf16"} {
		t.Run(mm, func(t *testing.T) {
			be := newEmuBackend(t, mm)
			// DLLM_KERNELCHECK_FULL=1 adds the real-model shapes (slow: minutes).
			cfg := kernelcheck.Config{Small: os.Getenv("DLLM_KERNELCHECK_FULL") == "", Seed: 7, Matmul: mm}
			if mm == "bf16" {
				cfg.Only = "^(MatMul|BF16|Attention|HeadLoss)$"
			} else if only := os.Getenv("DLLM_KERNELCHECK_ONLY"); only != "" {
				cfg.Only = only
			}
			cases, err := kernelcheck.Run(cpu.New(2), be, cfg, func(c kernelcheck.Case) {
				if !c.Pass {
					t.Errorf("%-28s %-44s rel err %.3g > %.0e", c.Op, c.Shape, c.RelErr, c.Threshold)
				} else if testing.Verbose() {
					fmt.Printf("%-28s %-44s %.3g\n", c.Op, c.Shape, c.RelErr)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(cases) < 20 && cfg.Only == "" {
				t.Fatalf("only %d cases ran", len(cases))
			}
			t.Logf("%d cases, %d failed", len(cases), kernelcheck.Failed(cases))
		})
	}
}
