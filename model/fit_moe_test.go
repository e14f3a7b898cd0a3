package model

import "testing"

// TestActivationBytesMoE: the memory check's estimate follows the arena
// NewActivations allocates, for dense and sparse layers alike (within the
// scratch and alignment it leaves out).
func TestActivationBytesMoE(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		for _, training := range []bool{false, true} {
			a := m.NewActivations(4, 64, training)
			got := 4 * float64(a.arena.N)
			p, err := ComputePlan(m.Cfg, PlanOptions{SeqLen: 64, BatchSize: 4, Inference: !training, Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			est := float64(p.ActivationBytes)
			a.Free(m.BE)
			if r := est / got; r < 0.7 || r > 1.3 {
				t.Errorf("%s training %v: estimate %.0f bytes, arena %.0f (ratio %.2f)", arch, training, est, got, r)
			} else {
				t.Logf("%s training %v: estimate/arena %.2f", arch, training, r)
			}
		}
	}
}
