package model

import "math"

// InvFreq returns the rotary inverse frequencies (head_dim/2 values) with the
// config's rope_scaling applied, computed in float64.
func (c *Config) InvFreq() []float64 {
	half := c.HeadDim / 2
	inv := make([]float64, half)
	for i := range inv {
		inv[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	s := c.RopeScaling
	if s == nil {
		return inv
	}
	switch s.Type {
	case "linear":
		for i := range inv {
			inv[i] /= s.Factor
		}
	case "llama3":
		// transformers' _compute_llama3_parameters.
		old := float64(s.OriginalMaxPositions)
		lowWave := old / s.LowFreqFactor
		highWave := old / s.HighFreqFactor
		for i, f := range inv {
			wave := 2 * math.Pi / f
			switch {
			case wave < highWave:
			case wave > lowWave:
				inv[i] = f / s.Factor
			default:
				smooth := (old/wave - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				inv[i] = (1-smooth)*f/s.Factor + smooth*f
			}
		}
	}
	return inv
}

// RopeTables returns cos and sin for positions [0, n), n x head_dim/2 each.
func (c *Config) RopeTables(n int) (cos, sin []float32) {
	inv := c.InvFreq()
	half := len(inv)
	cos, sin = make([]float32, n*half), make([]float32, n*half)
	for p := 0; p < n; p++ {
		for i, f := range inv {
			a := float64(p) * f
			cos[p*half+i] = float32(math.Cos(a))
			sin[p*half+i] = float32(math.Sin(a))
		}
	}
	return cos, sin
}
