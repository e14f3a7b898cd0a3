package diffusion

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
)

const tinyLlama = "../testdata/tiny/llama"

func tinyModel(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Load(tinyLlama, cpu.New(2))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var prompt = []int32{1, 40, 41, 42, 43}

// TestSamplersDeterministic: every sampler with a fixed seed gives the same
// samples twice (and, with temperature, different ones for another seed).
func TestSamplersDeterministic(t *testing.T) {
	m := tinyModel(t)
	info := Info{MaskID: 380, Shift: true}
	for _, alg := range []Alg{AlgRandom, AlgConfidence, AlgMargin, AlgEntropy} {
		for _, temp := range []float64{0, 0.8} {
			run := func(seed uint64) [][]int32 {
				s, err := NewSampler(m, info, GenOptions{GenLen: 16, Steps: 8, BlockLen: 8, Temperature: temp, TopK: 50,
					Alg: alg, Seed: seed, Batch: 2})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Free()
				res, err := s.Generate(prompt)
				if err != nil {
					t.Fatal(err)
				}
				return res.Tokens
			}
			a, b := run(7), run(7)
			for r := range a {
				if !slices.Equal(a[r], b[r]) {
					t.Fatalf("%s T=%v: seed 7 gave %v then %v", alg, temp, a[r], b[r])
				}
				for _, tok := range a[r] {
					if tok == info.MaskID {
						t.Fatalf("%s T=%v: a mask token left in %v", alg, temp, a[r])
					}
				}
			}
			if temp > 0 && slices.Equal(a[0], run(8)[0]) && slices.Equal(a[1], run(9)[1]) {
				t.Errorf("%s T=%v: other seeds give the same samples", alg, temp)
			}
		}
	}
}

// handBuilt replaces the model with logits that depend only on the
// position: position p puts probability mass conf[p] on token 10+p.
func handBuilt(s *Sampler, V int, conf map[int]float64) {
	s.score = func(lo, hi int, _ bool) error {
		s.logits = s.logits[:0]
		for _, c := range s.cand {
			row := make([]float32, V)
			// softmax over one peak of weight w and V-1 equal others:
			// p_peak = e^a / (e^a + V-1) = conf  =>  a = log(conf (V-1) / (1-conf)).
			a := math.Log(conf[c.pos] * float64(V-1) / (1 - conf[c.pos]))
			row[10+c.pos] = float32(a)
			s.logits = append(s.logits, row...)
		}
		return nil
	}
}

// TestConfidenceOrder: at temperature 0 with one token per step, the
// confidence sampler reveals positions in descending confidence.
func TestConfidenceOrder(t *testing.T) {
	m := tinyModel(t)
	V := m.Cfg.Vocab
	P, G := len(prompt), 6
	conf := map[int]float64{P: 0.30, P + 1: 0.95, P + 2: 0.10, P + 3: 0.60, P + 4: 0.80, P + 5: 0.45}
	want := []int{P + 1, P + 4, P + 3, P + 5, P, P + 2}
	var got []int
	var prev []int32
	s, err := NewSampler(m, Info{MaskID: 380, Shift: true}, GenOptions{GenLen: G, Steps: G, Alg: AlgConfidence,
		Observe: func(step int, x [][]int32) {
			for i := P; i < P+G; i++ {
				if x[0][i] != 380 && (prev == nil || prev[i] == 380) {
					got = append(got, i)
				}
			}
			prev = slices.Clone(x[0])
		}})
	if err != nil {
		t.Fatal(err)
	}
	handBuilt(s, V, conf)
	res, err := s.Generate(prompt)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("reveal order %v, want %v", got, want)
	}
	for i, tok := range res.Tokens[0] {
		if int(tok) != 10+P+i {
			t.Fatalf("position %d got token %d, want the peak %d", P+i, tok, 10+P+i)
		}
	}
}

// TestThresholdAndBlocks: threshold decoding reveals at least one token a
// step, never changes a revealed position, and semi-autoregressive blocks
// never reveal past the current block.
func TestThresholdAndBlocks(t *testing.T) {
	m := tinyModel(t)
	const G, block = 24, 8
	P := len(prompt)
	for _, opt := range []GenOptions{
		{GenLen: G, Steps: G, BlockLen: block, Threshold: 0.05, Alg: AlgConfidence},
		{GenLen: G, Steps: G, BlockLen: block, Threshold: 0.9, Alg: AlgConfidence, Batch: 2},
		{GenLen: G, Steps: G / 2, BlockLen: block, Alg: AlgMargin, Temperature: 0.7, Batch: 2},
		{GenLen: G, Steps: G, BlockLen: block, Alg: AlgRandom, Temperature: 0.7},
	} {
		name := fmt.Sprintf("%s/threshold=%v", opt.Alg, opt.Threshold)
		var prev [][]int32
		steps := 0
		opt.Observe = func(step int, x [][]int32) {
			steps++
			revealed := 0
			for r := range x {
				first := -1 // first masked position of the row
				for i := P; i < P+G; i++ {
					if prev != nil && prev[r][i] != 380 && x[r][i] != prev[r][i] {
						t.Fatalf("%s: step %d changed revealed position %d", name, step, i)
					}
					if prev == nil || prev[r][i] == 380 && x[r][i] != 380 {
						if prev != nil {
							revealed++
						}
					}
					if x[r][i] == 380 && first < 0 {
						first = i
					}
				}
				if first >= 0 {
					end := P + ((first-P)/block+1)*block
					for i := end; i < P+G; i++ {
						if x[r][i] != 380 {
							t.Fatalf("%s: position %d revealed while block from %d is unfinished", name, i, first)
						}
					}
				}
			}
			if opt.Threshold > 0 && prev != nil && revealed == 0 {
				t.Fatalf("%s: step %d revealed nothing", name, step)
			}
			prev = make([][]int32, len(x))
			for r := range x {
				prev[r] = slices.Clone(x[r])
			}
		}
		s, err := NewSampler(m, Info{MaskID: 380, Shift: true}, opt)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Generate(prompt)
		s.Free()
		if err != nil {
			t.Fatal(err)
		}
		if opt.Threshold > 0 && (res.Steps > G || res.Steps < G/block) {
			t.Fatalf("%s: %d steps", name, res.Steps)
		}
		for _, row := range res.Tokens {
			if slices.Contains(row, 380) {
				t.Fatalf("%s: mask left in %v", name, row)
			}
		}
		_ = steps
	}
}

func TestTransferCounts(t *testing.T) {
	if got := transferCounts(10, 4); !slices.Equal(got, []int{3, 3, 2, 2}) {
		t.Fatalf("transferCounts(10, 4) = %v", got)
	}
	if got := transferCounts(3, 5); !slices.Equal(got, []int{1, 1, 1, 0, 0}) {
		t.Fatalf("transferCounts(3, 5) = %v", got)
	}
}

// TestBlockCacheExact: for a block-causal model, decoding with finished
// blocks served from the KV cache gives the same tokens as recomputing the
// whole sequence every step (temperature 0, fixed seed), with and without
// shift, with a prompt that ends inside a block.
func TestBlockCacheExact(t *testing.T) {
	m := tinyModel(t)
	for _, shift := range []bool{true, false} {
		for _, opt := range []GenOptions{
			{GenLen: 20, Steps: 20, Alg: AlgConfidence, Batch: 2},
			{GenLen: 20, Steps: 10, Alg: AlgMargin, Threshold: 0.3},
			{GenLen: 16, Steps: 16, Alg: AlgEntropy, Temperature: 0.5, Seed: 3},
		} {
			info := Info{MaskID: 380, Shift: shift, BlockSize: 4}
			run := func(noCache bool) *GenResult {
				o := opt
				o.NoCache = noCache
				s, err := NewSampler(m, info, o)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Free()
				res, err := s.Generate(prompt)
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			cached, full := run(false), run(true)
			if !cached.Cached || full.Cached {
				t.Fatalf("cache flags: %v %v", cached.Cached, full.Cached)
			}
			for r := range full.Tokens {
				if !slices.Equal(cached.Tokens[r], full.Tokens[r]) {
					t.Fatalf("shift %v %s: cached %v, recomputed %v", shift, opt.Alg, cached.Tokens[r], full.Tokens[r])
				}
			}
		}
	}
}

// TestGroupsEqualAlone: groups decoded together in one batch get exactly
// the tokens each gets alone with its seed (own random stream per group),
// for every sampler, with temperature, threshold, position temperature and
// a block-causal model with its cache; a cancelled group does not change
// the others.
func TestGroupsEqualAlone(t *testing.T) {
	m := tinyModel(t)
	other := []int32{1, 50, 51, 52, 53}
	for _, c := range []struct {
		info Info
		opt  GenOptions
	}{
		{Info{MaskID: 380, Shift: true}, GenOptions{GenLen: 12, Steps: 6, BlockLen: 4, Alg: AlgConfidence}},
		{Info{MaskID: 380, Shift: true}, GenOptions{GenLen: 12, Steps: 6, BlockLen: 4, Alg: AlgConfidence, Temperature: 0.9, TopP: 0.9}},
		{Info{MaskID: 380, Shift: true}, GenOptions{GenLen: 12, Steps: 12, Alg: AlgMargin, Temperature: 0.7, AlgTemp: 0.5}},
		{Info{MaskID: 380, Shift: false}, GenOptions{GenLen: 12, Steps: 12, BlockLen: 6, Alg: AlgRandom, Temperature: 1}},
		{Info{MaskID: 380, Shift: true}, GenOptions{GenLen: 12, Steps: 12, Alg: AlgEntropy, Threshold: 0.02, Temperature: 0.5}},
		{Info{MaskID: 380, Shift: true, BlockSize: 4}, GenOptions{GenLen: 14, Steps: 7, Alg: AlgConfidence, Temperature: 0.8}},
	} {
		name := fmt.Sprintf("%s/T=%v/block=%d", c.opt.Alg, c.opt.Temperature, c.info.BlockSize)
		alone := func(p []int32, rows int, seed uint64) [][]int32 {
			o := c.opt
			o.Batch, o.Seed = rows, seed
			s, err := NewSampler(m, c.info, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Free()
			res, err := s.Generate(p)
			if err != nil {
				t.Fatal(err)
			}
			return res.Tokens
		}
		want := append(alone(prompt, 2, 7), alone(other, 1, 9)...)
		cancelled := make(chan struct{})
		close(cancelled)
		for _, cancel := range []bool{false, true} {
			o := c.opt
			o.Batch = 4
			s, err := NewSampler(m, c.info, o)
			if err != nil {
				t.Fatal(err)
			}
			g := Group{Prompt: []int32{1, 60, 61, 62, 63}, Rows: 1, Seed: 5}
			if cancel {
				g.Done = cancelled
			}
			var blocks []int
			s.opt.OnBlock = func(hi int, _ [][]int32) { blocks = append(blocks, hi) }
			res, err := s.GenerateGroups([]Group{{Prompt: prompt, Rows: 2, Seed: 7}, g, {Prompt: other, Rows: 1, Seed: 9}})
			s.Free()
			if err != nil {
				t.Fatal(err)
			}
			got := [][]int32{res.Tokens[0], res.Tokens[1], res.Tokens[3]}
			for r := range want {
				if !slices.Equal(got[r], want[r]) {
					t.Fatalf("%s cancel=%v row %d: batched %v, alone %v", name, cancel, r, got[r], want[r])
				}
			}
			if cancel && !slices.Contains(res.Tokens[2], 380) {
				t.Fatalf("%s: the cancelled group was decoded: %v", name, res.Tokens[2])
			}
			if len(blocks) == 0 || blocks[len(blocks)-1] != len(prompt)+c.opt.GenLen {
				t.Fatalf("%s: blocks finished at %v", name, blocks)
			}
		}
	}
	s, err := NewSampler(m, Info{MaskID: 380, Shift: true}, GenOptions{GenLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Free()
	done := make(chan struct{})
	close(done)
	if _, err := s.GenerateGroups([]Group{{Prompt: prompt, Rows: 1, Done: done}}); err != ErrCancelled {
		t.Fatalf("all groups cancelled: %v, want ErrCancelled", err)
	}
}
