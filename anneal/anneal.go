// Package anneal schedules attention visibility over training steps:
// DiffuLLaMA's causal -> bidirectional annealing, and LLaDA 2.0's block-size
// schedule for block diffusion.
package anneal

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
)

// Ratio is DiffuLLaMA's linear annealing ratio at an optimizer step:
// min(1, (step+1)/annealSteps); annealSteps <= 0 means 1 from the start.
func Ratio(step, annealSteps int) float64 {
	if annealSteps <= 0 {
		return 1
	}
	return min(1, float64(step+1)/float64(annealSteps))
}

// StepSeed derives the visibility seed of a step from the run's seed, so a
// resumed run draws the same matrices.
func StepSeed(runSeed uint64, step int) uint64 {
	z := runSeed ^ (uint64(step)+1)*0xD1B54A32D192ED03
	z = (z ^ (z >> 32)) * 0xD6E8FEB86659FD93
	return z ^ (z >> 32)
}

// Annealed is the visibility at a step of a run annealed over annealSteps:
// causal plus a random fraction of the future, bidirectional once the ratio
// reaches 1.
func Annealed(step, annealSteps int, runSeed uint64, docMask bool) kernels.Visibility {
	r := Ratio(step, annealSteps)
	if r >= 1 {
		return kernels.Visibility{Mode: kernels.Bidirectional, DocMask: docMask}
	}
	return kernels.Visibility{Mode: kernels.Annealed, Ratio: float32(r), Seed: StepSeed(runSeed, step), DocMask: docMask}
}

// Stage is one entry of a block-size schedule: Block tokens per block
// (0 = the full sequence, plain masked diffusion) for Steps steps.
type Stage struct {
	Block int
	Steps int
}

func (s Stage) String() string {
	if s.Block == 0 {
		return fmt.Sprintf("full:%d", s.Steps)
	}
	return fmt.Sprintf("%d:%d", s.Block, s.Steps)
}

// ParseSchedule reads a block-size schedule such as
// "1:2000,4:2000,32:2000,full:20000,32:4000" (block size : steps; "full" is
// the whole sequence). Block sizes must divide seqLen.
func ParseSchedule(s string, seqLen int) ([]Stage, error) {
	var out []Stage
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		bs, st, ok := strings.Cut(part, ":")
		if !ok {
			return nil, fmt.Errorf("block schedule entry %q: want SIZE:STEPS, e.g. 32:2000 or full:20000", part)
		}
		steps, err := strconv.Atoi(strings.TrimSpace(st))
		if err != nil || steps <= 0 {
			return nil, fmt.Errorf("block schedule entry %q: steps must be a positive integer", part)
		}
		stage := Stage{Steps: steps}
		if b := strings.TrimSpace(bs); b != "full" {
			n, err := strconv.Atoi(b)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("block schedule entry %q: size must be a positive integer or \"full\"", part)
			}
			if n >= seqLen {
				n = 0
			} else if seqLen%n != 0 {
				return nil, fmt.Errorf("block schedule entry %q: block size %d does not divide --seq-len %d", part, n, seqLen)
			}
			stage.Block = n
		}
		out = append(out, stage)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty block schedule")
	}
	return out, nil
}

// TotalSteps is the length of a schedule.
func TotalSteps(stages []Stage) int {
	n := 0
	for _, s := range stages {
		n += s.Steps
	}
	return n
}

// StageAt returns the stage active at step and its index; steps past the end
// stay in the last stage.
func StageAt(stages []Stage, step int) (Stage, int) {
	for i, s := range stages {
		if step < s.Steps {
			return s, i
		}
		step -= s.Steps
	}
	return stages[len(stages)-1], len(stages) - 1
}
