// Package kernelcheck compares two kernels.Backend implementations op by op:
// a reference (kernels/cpu) and a device under test (kernels/cuda, or its
// host emulator in tests). Every case draws fresh random inputs, fills the
// outputs that an op must overwrite with NaN and the ones it accumulates
// into with random values, runs the op on both backends and compares
// ||dut - ref|| / ||ref|| with a threshold set by the arithmetic involved.
// NaN or Inf where the reference is finite never passes.
package kernelcheck

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"

	"github.com/dllm-dev/dllm/kernels"
)

// Thresholds on the relative error (see /work/.library/device/METHOD.md's
// rule: float32 arithmetic far under 1e-3, bf16 operands up to 1e-2).
const (
	// TolExact is for ops that move values without arithmetic.
	TolExact = 0
	// TolFP32 is for float32 elementwise ops and reductions.
	TolFP32 = 1e-5
	// TolAttention is for attention: float32, but exp, a softmax and sums
	// over hundreds of keys in another order (and, backward, D - dp
	// cancellations).
	TolAttention = 1e-4
	// TolLongSum is for float32 reductions over 10^4 to 10^5 terms where
	// the reference sums sequentially (cross-entropy over a vocabulary of
	// 151936: kernels/cpu's own rounding error is about 2e-5 there).
	TolLongSum = 1e-4
	// TolMatmulFP32 is for float32 matmuls with fp32 accumulation (no
	// TF32) summed in another order over k up to 151936.
	TolMatmulFP32 = 1e-4
	// TolMatmulBF16 is for bfloat16 inputs with float32 accumulation.
	TolMatmulBF16 = 1e-2
	// TolAttentionBF16 is for attention with bf16 inputs to fp32
	// accumulation (the tensor-core kernels of the bf16 mode): q, k, v,
	// dout and the probabilities rounded to bf16.
	TolAttentionBF16 = 1e-2
	// TolFloat64 is for the float64 reductions.
	TolFloat64 = 1e-10
)

// Case is the outcome of one comparison.
type Case struct {
	Op        string  `json:"op"`
	Shape     string  `json:"shape"`
	RelErr    float64 `json:"rel_err"`
	Threshold float64 `json:"threshold"`
	Pass      bool    `json:"pass"`
}

// Config selects the cases.
type Config struct {
	// Small keeps to small shapes (for the emulator); otherwise the cases
	// include the shapes of real models (vocabulary 151936, 2048 tokens).
	Small bool
	// Seed of the random inputs.
	Seed uint64
	// Matmul is the dut's matmul precision: "fp32" or "bf16".
	Matmul string
	// Only, when set, is a regular expression on the op names to run.
	Only string
}

// RoundTripper is what a backend with bf16 matmuls exposes of its cast.
type RoundTripper interface {
	BF16RoundTrip(dst, src kernels.Buf)
}

type harness struct {
	ref, dut kernels.Backend
	cfg      Config
	rng      *rand.Rand
	only     *regexp.Regexp
	report   func(Case)
	cases    []Case
	refBufs  []kernels.Buf
	dutBufs  []kernels.Buf
	refInts  []kernels.IBuf
	dutInts  []kernels.IBuf
}

// Run runs every case, calls report (if not nil) after each one and returns
// them all.
func Run(ref, dut kernels.Backend, cfg Config, report func(Case)) ([]Case, error) {
	h := &harness{ref: ref, dut: dut, cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x6b636865636b)), report: report}
	if cfg.Only != "" {
		re, err := regexp.Compile(cfg.Only)
		if err != nil {
			return nil, err
		}
		h.only = re
	}
	for _, s := range suites {
		if h.only != nil && !h.only.MatchString(s.name) {
			continue
		}
		s.run(h)
		if err := dut.Err(); err != nil {
			return h.cases, fmt.Errorf("%s on %s: %w", s.name, dut.Name(), err)
		}
		if err := ref.Err(); err != nil {
			return h.cases, fmt.Errorf("%s on %s: %w", s.name, ref.Name(), err)
		}
	}
	return h.cases, nil
}

// Failed counts the cases that did not pass.
func Failed(cases []Case) int {
	n := 0
	for _, c := range cases {
		if !c.Pass {
			n++
		}
	}
	return n
}

// --- buffers -------------------------------------------------------------

func (h *harness) randn(n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(h.rng.NormFloat64() * scale)
	}
	return x
}

func nans(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(math.NaN())
	}
	return x
}

// pair puts the same values on both backends.
func (h *harness) pair(host []float32) (r, d kernels.Buf) {
	r, d = h.ref.Alloc(len(host)), h.dut.Alloc(len(host))
	h.ref.Upload(r, host)
	h.dut.Upload(d, host)
	h.refBufs = append(h.refBufs, r)
	h.dutBufs = append(h.dutBufs, d)
	return r, d
}

func (h *harness) pairInt(host []int32) (r, d kernels.IBuf) {
	r, d = h.ref.AllocInt(len(host)), h.dut.AllocInt(len(host))
	h.ref.UploadInt(r, host)
	h.dut.UploadInt(d, host)
	h.refInts = append(h.refInts, r)
	h.dutInts = append(h.dutInts, d)
	return r, d
}

// done frees the case's buffers.
func (h *harness) done() {
	for _, b := range h.refBufs {
		h.ref.Free(b)
	}
	for _, b := range h.dutBufs {
		h.dut.Free(b)
	}
	for _, b := range h.refInts {
		h.ref.FreeInt(b)
	}
	for _, b := range h.dutInts {
		h.dut.FreeInt(b)
	}
	h.refBufs, h.dutBufs, h.refInts, h.dutInts = nil, nil, nil, nil
}

func (h *harness) fetch(r, d kernels.Buf) (rv, dv []float32) {
	rv, dv = make([]float32, r.N), nans(d.N)
	h.ref.Download(rv, r)
	h.dut.Download(dv, d)
	return rv, dv
}

// RelErr is ||d - r|| / ||r|| in float64; NaN when d has a NaN or Inf where
// r is finite (or the lengths differ). A zero reference compares ||d - r||.
func RelErr(r, d []float32) float64 {
	if len(r) != len(d) {
		return math.NaN()
	}
	var num, den float64
	for i := range r {
		rv, dv := float64(r[i]), float64(d[i])
		if math.IsNaN(dv) || math.IsInf(dv, 0) {
			if rv == dv {
				continue
			}
			return math.NaN()
		}
		if math.IsNaN(rv) || math.IsInf(rv, 0) {
			return math.NaN()
		}
		num += (dv - rv) * (dv - rv)
		den += rv * rv
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func (h *harness) record(op, shape string, thr, rel float64) {
	c := Case{Op: op, Shape: shape, RelErr: rel, Threshold: thr, Pass: !math.IsNaN(rel) && rel <= thr}
	h.cases = append(h.cases, c)
	if h.report != nil {
		h.report(c)
	}
}

// compare downloads a pair of outputs and records the case.
func (h *harness) compare(op, shape string, thr float64, r, d kernels.Buf) {
	rv, dv := h.fetch(r, d)
	h.record(op, shape, thr, RelErr(rv, dv))
}

func (h *harness) sized(small, full []int) []int {
	if h.cfg.Small {
		return small
	}
	return append(append([]int{}, small...), full...)
}

type suite struct {
	name string
	run  func(*harness)
}

var suites = []suite{
	{"Upload/Copy/Zero", checkMemory},
	{"MatMul", checkMatMul},
	{"AddBias", checkBias},
	{"Embedding", checkEmbedding},
	{"RMSNorm", checkRMSNorm},
	{"RoPE", checkRoPE},
	{"Attention", checkAttention},
	{"SwiGLU", checkSwiGLU},
	{"MoE", checkMoE},
	{"Add/Scale", checkAddScale},
	{"CrossEntropy", checkCrossEntropy},
	{"HeadLoss", checkHeadLoss},
	{"AdamW", checkAdamW},
	{"Sum", checkSums},
	{"BF16", checkBF16},
}
