package kernels

import "fmt"

// Mode is an attention visibility rule (DESIGN.md §2).
type Mode uint8

const (
	// Causal: j <= i.
	Causal Mode = iota
	// Bidirectional: every pair.
	Bidirectional
	// Annealed: j <= i, or u(seed, i, j) < ratio.
	Annealed
	// Block: block(j) <= block(i), block(k) = k / b.
	Block
	// BlockDiffusion is block diffusion on a row [xt ; x0] of length 2*Half:
	// a noisy query in block k sees the noisy keys of block k and the clean
	// keys of blocks < k; a clean query sees clean keys of blocks <= its own.
	BlockDiffusion
)

var modeNames = []string{"causal", "bidirectional", "annealed", "block", "block-diffusion"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", m)
}

// ParseMode reads a mode name.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown attention mode %q (causal, bidirectional, annealed, block, block-diffusion)", s)
}

// Visibility is the rule for one step: which key j a query i may attend to,
// positions counted within a row. It is computed, never stored as a matrix.
type Visibility struct {
	Mode    Mode
	Ratio   float32 // Annealed
	Seed    uint64  // Annealed
	Block   int     // Block, BlockDiffusion
	Half    int     // BlockDiffusion: length of the noisy half
	DocMask bool    // also require doc(i) == doc(j)
}

// Hash01 is the counter-based hash of DESIGN.md §2: splitmix64's finaliser
// on seed + ((i<<32)|j) * golden, top 24 bits scaled to [0, 1). Every backend
// computes exactly this.
func Hash01(seed uint64, i, j int) float32 {
	z := seed + (uint64(i)<<32|uint64(uint32(j)))*0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return float32(z>>40) / (1 << 24)
}

// Visible reports whether query position i sees key position j (document
// ids are the caller's business).
func (v *Visibility) Visible(i, j int) bool {
	switch v.Mode {
	case Causal:
		return j <= i
	case Bidirectional:
		return true
	case Annealed:
		return j <= i || Hash01(v.Seed, i, j) < v.Ratio
	case Block:
		return j/v.Block <= i/v.Block
	case BlockDiffusion:
		L, b := v.Half, v.Block
		qNoisy, kNoisy := i < L, j < L
		qb, kb := (i%L)/b, (j%L)/b
		switch {
		case qNoisy && kNoisy:
			return qb == kb
		case qNoisy:
			return kb < qb
		case kNoisy:
			return false
		default:
			return kb <= qb
		}
	}
	return false
}

// MaxVisibleKey is the largest key position query i can possibly see, for
// backends that stop scanning early: i for causal rules, n-1 otherwise.
func (v *Visibility) MaxVisibleKey(i, n int) int {
	switch v.Mode {
	case Causal:
		return min(i, n-1)
	case Block:
		return min((i/v.Block+1)*v.Block-1, n-1)
	}
	return n - 1
}

// Validate rejects impossible parameters.
func (v *Visibility) Validate() error {
	switch v.Mode {
	case Block, BlockDiffusion:
		if v.Block <= 0 {
			return fmt.Errorf("block attention needs a positive block size, got %d", v.Block)
		}
		if v.Mode == BlockDiffusion && v.Half <= 0 {
			return fmt.Errorf("block diffusion needs the noisy half length")
		}
	case Annealed:
		if v.Ratio < 0 || v.Ratio > 1 {
			return fmt.Errorf("annealing ratio %g outside [0, 1]", v.Ratio)
		}
	case Causal, Bidirectional:
	default:
		return fmt.Errorf("unknown attention mode %d", v.Mode)
	}
	return nil
}
