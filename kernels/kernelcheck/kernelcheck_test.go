package kernelcheck

import (
	"math"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
)

// The CPU against itself passes every case with no error at all.
func TestCPUAgainstItself(t *testing.T) {
	cases, err := Run(cpu.New(2), cpu.New(1), Config{Small: true, Seed: 1, Matmul: "fp32"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) < 300 {
		t.Errorf("only %d cases", len(cases))
	}
	for _, c := range cases {
		if !c.Pass || c.RelErr > 1e-6 {
			t.Errorf("%s %s: %g", c.Op, c.Shape, c.RelErr)
		}
	}
}

// A backend that gets one op wrong fails exactly that op's cases.
type brokenAdd struct{ *cpu.Backend }

func (b brokenAdd) Add(out, a, c kernels.Buf, n int) {
	b.Backend.Add(out, a, c, n)
	out.Host[n-1] += 1e-3
}

type unwritten struct{ *cpu.Backend }

func (b unwritten) SwiGLU(out, g, u kernels.Buf, n int) { b.Backend.SwiGLU(out, g, u, n-1) }

func TestHarnessCatchesErrors(t *testing.T) {
	cases, err := Run(cpu.New(1), brokenAdd{cpu.New(1)}, Config{Small: true, Only: "^Add/Scale$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := Failed(cases); f == 0 {
		t.Error("an off-by-1e-3 Add passed")
	}
	cases, _ = Run(cpu.New(1), unwritten{cpu.New(1)}, Config{Small: true, Only: "^SwiGLU$"}, nil)
	for _, c := range cases {
		if c.Op == "SwiGLU" && c.Pass {
			t.Errorf("an output left as NaN passed: %+v", c)
		}
	}
}

func TestRelErr(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, c := range []struct {
		r, d []float32
		ok   bool
	}{
		{[]float32{1, 2}, []float32{1, 2}, true},
		{[]float32{1, 2}, []float32{1, nan}, false},
		{[]float32{1, inf}, []float32{1, inf}, true},
		{[]float32{1, 2}, []float32{1, inf}, false},
		{[]float32{0, 0}, []float32{0, 0}, true},
	} {
		e := RelErr(c.r, c.d)
		if (e == 0) != c.ok {
			t.Errorf("RelErr(%v, %v) = %g", c.r, c.d, e)
		}
	}
	if RelErr([]float32{3, 4}, []float32{3, 4.5}) != 0.1 {
		t.Error("RelErr value")
	}
	if bf16RNE(math.Float32frombits(0x3f808000)) != 1 || bf16RNE(math.Float32frombits(0x3f818000)) != math.Float32frombits(0x3f820000) {
		t.Error("bf16 ties to even")
	}
}
