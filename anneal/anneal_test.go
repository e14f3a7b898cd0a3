package anneal

import (
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
)

func TestRatio(t *testing.T) {
	for _, c := range []struct {
		step, steps int
		want        float64
	}{{0, 0, 1}, {0, 10, 0.1}, {4, 10, 0.5}, {9, 10, 1}, {50, 10, 1}} {
		if got := Ratio(c.step, c.steps); got != c.want {
			t.Errorf("Ratio(%d, %d) = %v, want %v", c.step, c.steps, got, c.want)
		}
	}
	if v := Annealed(3, 10, 1, true); v.Mode != kernels.Annealed || v.Ratio != 0.4 || !v.DocMask {
		t.Errorf("Annealed(3, 10) = %+v", v)
	}
	if v := Annealed(9, 10, 1, false); v.Mode != kernels.Bidirectional {
		t.Errorf("ratio 1 should be plain bidirectional, got %+v", v)
	}
	if StepSeed(7, 3) != StepSeed(7, 3) || StepSeed(7, 3) == StepSeed(7, 4) || StepSeed(7, 3) == StepSeed(8, 3) {
		t.Error("StepSeed must be a function of (run seed, step) that changes with both")
	}
}

func TestParseSchedule(t *testing.T) {
	st, err := ParseSchedule("1:20, 4:20,32:30,full:100,256:5,32:10", 256)
	if err != nil {
		t.Fatal(err)
	}
	want := []Stage{{1, 20}, {4, 20}, {32, 30}, {0, 100}, {0, 5}, {32, 10}}
	for i := range want {
		if st[i] != want[i] {
			t.Fatalf("stage %d: %+v, want %+v", i, st[i], want[i])
		}
	}
	if TotalSteps(st) != 185 {
		t.Fatalf("total %d", TotalSteps(st))
	}
	for _, c := range []struct {
		step, block, idx int
	}{{0, 1, 0}, {19, 1, 0}, {20, 4, 1}, {70, 0, 3}, {175, 32, 5}, {999, 32, 5}} {
		s, i := StageAt(st, c.step)
		if s.Block != c.block || i != c.idx {
			t.Errorf("StageAt(%d) = %+v #%d, want block %d #%d", c.step, s, i, c.block, c.idx)
		}
	}
	for _, bad := range []string{"", "32", "x:10", "32:0", "32:-1", "7:10", "full:x"} {
		if _, err := ParseSchedule(bad, 256); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseSchedule(%q): %v", bad, err)
		}
	}
}
