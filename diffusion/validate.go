package diffusion

import (
	"fmt"
	"math"
)

// Validate checks the sampler settings a caller gave, naming the flag of
// `dllm generate` that is wrong. NaN, negative and infinite values are
// refused; 0 keeps meaning "off" or "the default".
func (o GenOptions) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case o.GenLen <= 0:
		return fmt.Errorf("--gen-len must be positive, got %d", o.GenLen)
	case o.Steps < 0:
		return fmt.Errorf("--steps must be >= 0 (0: one per generated token), got %d", o.Steps)
	case o.BlockLen < 0:
		return fmt.Errorf("--block-len must be >= 0 (0: the whole generation, or the model's block size), got %d", o.BlockLen)
	case o.Batch < 0:
		return fmt.Errorf("--batch must be positive, got %d", o.Batch)
	case o.TopK < 0:
		return fmt.Errorf("--top-k must be >= 0 (0: off), got %d", o.TopK)
	case !finite(o.Temperature) || o.Temperature < 0:
		return fmt.Errorf("--temperature must be a number >= 0 (0: greedy), got %g", o.Temperature)
	case !finite(o.TopP) || o.TopP < 0 || o.TopP > 1:
		return fmt.Errorf("--top-p must be in [0, 1], got %g", o.TopP)
	case !finite(o.AlgTemp) || o.AlgTemp < 0:
		return fmt.Errorf("--alg-temp must be a number >= 0, got %g", o.AlgTemp)
	case !finite(o.Threshold) || o.Threshold < 0 || o.Threshold >= 1:
		return fmt.Errorf("--threshold must be in [0, 1), got %g", o.Threshold)
	case o.Alg != "" && o.Alg != AlgRandom && o.Alg != AlgConfidence && o.Alg != AlgMargin && o.Alg != AlgEntropy:
		return fmt.Errorf("unknown --alg %q (random, confidence, margin, entropy)", o.Alg)
	case !finite(o.Eps) || o.Eps < 0:
		return fmt.Errorf("eps must be a number >= 0, got %g", o.Eps)
	}
	return nil
}
