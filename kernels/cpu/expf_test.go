package cpu

import (
	"math"
	"testing"
)

func TestExpf(t *testing.T) {
	var worst float64
	for x := float32(-87); x < 88; x += 0.001 {
		want := math.Exp(float64(x))
		got := float64(expf(x))
		if rel := math.Abs(got-want) / want; rel > worst {
			worst = rel
		}
	}
	if worst > 3e-7 {
		t.Fatalf("worst relative error %g", worst)
	}
	if expf(-100) != 0 || !math.IsInf(float64(expf(100)), 1) || expf(0) != 1 {
		t.Fatalf("limits: %v %v %v", expf(-100), expf(100), expf(0))
	}
	if v := expf(float32(math.NaN())); v == v {
		t.Fatalf("NaN in, %v out", v)
	}
}

func TestExpShiftMatchesScalar(t *testing.T) {
	src := make([]float32, 1000)
	for i := range src {
		src[i] = float32(i%200)/10 - 12
	}
	src[5], src[700] = float32(math.Inf(-1)), float32(math.Inf(-1))
	src[6] = -200
	dst := make([]float32, len(src))
	sum := expShift(dst, src, 1.5)
	var want float64
	for i, v := range src {
		e := float64(expf(v - 1.5))
		want += e
		if d := math.Abs(float64(dst[i]) - e); d > 2e-7*e {
			t.Fatalf("exp(%v - 1.5): %v, scalar %v", v, dst[i], e)
		}
	}
	if dst[5] != 0 || dst[700] != 0 || dst[6] != 0 {
		t.Fatalf("-Inf and underflow must give 0: %v %v %v", dst[5], dst[700], dst[6])
	}
	if math.Abs(float64(sum)-want)/want > 1e-5 {
		t.Fatalf("sum %v, want %v", sum, want)
	}
}
