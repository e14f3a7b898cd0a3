package model

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
)

// TestCachedForwardMatchesFull: positions run through the KV cache in two
// chunks get the logits of one causal forward over the whole row, for every
// tiny architecture (the MoE ones route each new token on its own).
func TestCachedForwardMatchesFull(t *testing.T) {
	const L, first = 12, 8
	vis := kernels.Visibility{Mode: kernels.Causal}
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		V := m.Cfg.Vocab
		rng := rand.New(rand.NewPCG(5, 6))
		ids := make([]int32, L)
		for i := range ids {
			ids[i] = int32(rng.IntN(V))
		}
		full := m.NewActivations(1, L, false)
		copy(full.IDs, ids)
		full.Upload(m.BE)
		m.Forward(full, vis)
		want := slices.Clone(full.Logits.Host[first*V : L*V])
		full.Free(m.BE)

		cache := m.NewKVCache(1, L)
		for _, part := range [][2]int{{0, first}, {first, L}} {
			n := part[1] - part[0]
			a := m.NewActivations(1, n, false)
			copy(a.IDs, ids[part[0]:part[1]])
			for i := range a.Pos {
				a.Pos[i] = int32(part[0] + i)
			}
			a.Upload(m.BE)
			m.ForwardCached(a, cache, part[0], vis)
			if part[0] == first {
				if e := relErr(a.Logits.Host[:n*V], want); !(e < 1e-5) {
					t.Errorf("%s: cached logits differ from the full forward by %g", arch, e)
				}
			}
			a.Free(m.BE)
		}
		cache.Free(m.BE)
	}
}
