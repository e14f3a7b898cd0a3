package model

import (
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// gpuLike is a backend that reports its memory as a GPU's: free on the
// device, and cached blocks in its pool.
type gpuLike struct {
	*cpu.Backend
	free, cached uint64
}

func (g gpuLike) MemInfo() (free, total uint64, err error) { return g.free, 1 << 40, nil }
func (g gpuLike) PoolCached() uint64                       { return g.cached }

// TestAvailablePoolCached: on a GPU the memory a run may take is the
// device's free memory and the blocks the pool keeps (it gives them back
// when an allocation would fail): a model freed before the next one is
// loaded counts as free.
func TestAvailablePoolCached(t *testing.T) {
	be := cpu.New(1)
	if got, src := Available(gpuLike{be, 1000, 0}); got != 1000 || src != "free on the GPU" {
		t.Errorf("no cached blocks: %v %q", got, src)
	}
	if got, src := Available(gpuLike{be, 1000, 24}); got != 1024 || src != "free on the GPU, with its pool's cached blocks" {
		t.Errorf("24 cached bytes: %v %q", got, src)
	}
}
