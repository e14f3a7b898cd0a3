package model

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/safetensors"
)

func randVec(rng *rand.Rand, n int, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * std)
	}
	return v
}

// TestLoRALinearGradients checks LoRALinear's forward and backward, with
// and without dropout, against an independent float64 evaluation of L =
// sum(dout * scale B A drop(x)) and central finite differences of it.
func TestLoRALinearGradients(t *testing.T) {
	for _, p := range []float64{0, 0.3} {
		testLoRALinear(t, p)
	}
}

func testLoRALinear(t *testing.T, p float64) {
	be := cpu.New(1)
	const rows, in, out, r = 5, 7, 6, 3
	scale := float32(2.5)
	rng := rand.New(rand.NewPCG(1, 2))
	A, B, X, D := randVec(rng, r*in, 0.5), randVec(rng, out*r, 0.5), randVec(rng, rows*in, 1), randVec(rng, rows*out, 1)
	up := func(v []float32) kernels.Buf { b := be.Alloc(len(v)); be.Upload(b, v); return b }
	ad := &LoRA{Cfg: LoRAConfig{Rank: r, Dropout: p}}
	ad.drop.on, ad.drop.gateVal = p > 0, float32(siluInverse(1/(1-p)))
	ad.SetDropout(true, 77)
	const id = 5
	l := &LoRALinear{A: up(A), B: up(B), GA: be.Alloc(r * in), GB: be.Alloc(out * r), R: r, In: in, Out: out, Scale: scale, ad: ad, id: id}
	be.Zero(l.GA)
	be.Zero(l.GB)
	x, dout, y, dx := up(X), up(D), be.Alloc(rows*out), be.Alloc(rows*in)
	be.Zero(y)
	ones := make([]float32, rows*in)
	for i := range ones {
		ones[i] = 1
	}
	be.Upload(dx, ones) // Backward accumulates into dx
	l.Forward(be, y, x, rows)
	l.Backward(be, dx, dout, x, rows)
	get := func(b kernels.Buf) []float32 { v := make([]float32, b.N); be.Download(v, b); return v }

	// The mask as the hash draws it, kept entries scaled by 1/(1-p).
	mask := make([]float64, rows*in)
	kept := 0
	for i := range mask {
		if p == 0 || kernels.Hash01(77, id, i) >= float32(p) {
			mask[i] = 1 / (1 - p)
			kept++
		}
	}
	if p > 0 && (kept == 0 || kept == len(mask)) {
		t.Fatalf("dropout %v kept %d of %d", p, kept, len(mask))
	}
	loss := func(A, B, X []float64) float64 {
		var s float64
		for i := 0; i < rows; i++ {
			for o := 0; o < out; o++ {
				var y float64
				for k := 0; k < r; k++ {
					var ax float64
					for j := 0; j < in; j++ {
						ax += A[k*in+j] * X[i*in+j] * mask[i*in+j]
					}
					y += B[o*r+k] * ax
				}
				s += float64(D[i*out+o]) * float64(scale) * y
			}
		}
		return s
	}
	f64 := func(v []float32) []float64 {
		o := make([]float64, len(v))
		for i, x := range v {
			o[i] = float64(x)
		}
		return o
	}
	a64, b64, x64 := f64(A), f64(B), f64(X)
	yv := get(y)
	for i := 0; i < rows; i++ {
		for o := 0; o < out; o++ {
			var want float64
			for k := 0; k < r; k++ {
				var ax float64
				for j := 0; j < in; j++ {
					ax += a64[k*in+j] * x64[i*in+j] * mask[i*in+j]
				}
				want += b64[o*r+k] * ax
			}
			want *= float64(scale)
			if d := math.Abs(float64(yv[i*out+o]) - want); d > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("dropout %v: forward y[%d,%d] = %v, want %v", p, i, o, yv[i*out+o], want)
			}
		}
	}
	dxMinus1 := get(dx)
	for i := range dxMinus1 {
		dxMinus1[i]--
	}
	fd := func(q []float64, i int) float64 {
		const eps = 1e-6
		old := q[i]
		q[i] = old + eps
		lp := loss(a64, b64, x64)
		q[i] = old - eps
		lm := loss(a64, b64, x64)
		q[i] = old
		return (lp - lm) / (2 * eps)
	}
	for _, c := range []struct {
		name string
		got  []float32
		q    []float64
	}{{"dA", get(l.GA), a64}, {"dB", get(l.GB), b64}, {"dx", dxMinus1, x64}} {
		for i := range c.q {
			want := fd(c.q, i)
			if d := math.Abs(float64(c.got[i]) - want); d > 1e-4*(1+math.Abs(want)) {
				t.Errorf("dropout %v: %s[%d] = %v, finite differences %v", p, c.name, i, c.got[i], want)
			}
		}
	}
}

func loadTinyOn(t *testing.T, be kernels.Backend, name string) *Model {
	t.Helper()
	m, err := Load(filepath.Join("..", "testdata", "tiny", name), be)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAdapterInit(t *testing.T) {
	be := cpu.New(1)
	m := loadTinyOn(t, be, "qwen2")
	lc := LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"v_proj", "q_proj", "down_proj"}, TrainRows: []int{7}, TrainNorms: true}
	a, err := NewLoRA(m, lc, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Cfg.Targets, []string{"q_proj", "v_proj", "down_proj"}) {
		t.Errorf("targets not in layer order: %v", a.Cfg.Targets)
	}
	c := m.Cfg
	wantN := 0
	for range c.Layers {
		wantN += 4*c.Hidden + c.QDim()*4 + 4*c.Hidden + c.KVDim()*4 + 4*c.Intermediate + c.Hidden*4
		wantN += 2 * c.Hidden // input and post-attention norms
	}
	wantN += c.Hidden + c.Hidden // the trained row, the final norm
	if a.Trainable() != wantN {
		t.Errorf("trainable %d, want %d", a.Trainable(), wantN)
	}
	host := make([]float32, a.Params.N)
	be.Download(host, a.Params)
	for i, s := range a.Layout.Specs {
		v := host[a.Layout.Offsets[i] : a.Layout.Offsets[i]+s.Elements()]
		switch {
		case strings.HasSuffix(s.Name, "lora_A.weight"):
			bound := float32(1 / math.Sqrt(float64(s.Shape[1])))
			var sum2 float64
			for _, x := range v {
				if x < -bound || x > bound {
					t.Fatalf("%s: %v outside +-%v", s.Name, x, bound)
				}
				sum2 += float64(x) * float64(x)
			}
			// U(-b, b) has variance b^2/3.
			if got, want := sum2/float64(len(v)), float64(bound*bound)/3; math.Abs(got-want) > 0.35*want {
				t.Errorf("%s: variance %v, want about %v", s.Name, got, want)
			}
		case strings.HasSuffix(s.Name, "lora_B.weight"):
			for _, x := range v {
				if x != 0 {
					t.Fatalf("%s not zero", s.Name)
				}
			}
		case s.Name == TrainedRowsName:
			want := make([]float32, c.Hidden)
			be.Download(want, m.Embed.W.Slice(7*c.Hidden, c.Hidden))
			if !slices.Equal(v, want) {
				t.Errorf("trained row is not the model's row 7")
			}
		default:
			want, _ := m.Layout.View(m.Params, s.Name)
			w := make([]float32, want.N)
			be.Download(w, want)
			if !slices.Equal(v, w) {
				t.Errorf("%s is not the model's", s.Name)
			}
		}
	}
	b, _ := NewLoRA(m, lc, 3)
	h2 := make([]float32, b.Params.N)
	be.Download(h2, b.Params)
	if !slices.Equal(host, h2) {
		t.Errorf("same seed, different init")
	}
	if _, err := NewLoRA(m, LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"qkv"}}, 1); err == nil {
		t.Errorf("unknown target accepted")
	}
}

// TestPEFTRoundTrip writes an adapter with random A, B, rows and norms as a
// PEFT folder, checks its names and config, merges it into a fresh copy of
// the base and compares every tensor with W + (alpha/r) B A computed here
// in float64 (and untouched tensors bit for bit); the export path
// (OpenMerged) must give the same.
func TestPEFTRoundTrip(t *testing.T) {
	be := cpu.New(1)
	for _, name := range []string{"llama", "qwen2"} {
		m := loadTinyOn(t, be, name)
		c := m.Cfg
		// Row c.Vocab is new: the adapter grows the vocabulary.
		g, err := m.GrowVocab(1)
		if err != nil {
			t.Fatal(err)
		}
		lc := LoRAConfig{Rank: 3, Alpha: 12, Targets: LoRATargets, TrainRows: []int{c.Vocab}, TrainNorms: name == "qwen2"}
		a, err := NewLoRA(g, lc, 9)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(5, 6))
		vals := randVec(rng, a.Params.N, 0.3)
		be.Upload(a.Params, vals)
		dir := t.TempDir()
		if err := a.WritePEFT(dir, "some/base", g); err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		raw, _ := os.ReadFile(filepath.Join(dir, PEFTConfigName))
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]any{"peft_type": "LORA", "r": 3.0, "lora_alpha": 12.0, "lora_dropout": 0.0, "task_type": "CAUSAL_LM",
			"bias": "none", "base_model_name_or_path": "some/base"} {
			if cfg[k] != v {
				t.Errorf("%s: %s = %v, want %v", name, k, cfg[k], v)
			}
		}
		if tm, _ := json.Marshal(cfg["target_modules"]); string(tm) != `["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]` {
			t.Errorf("target_modules %s", tm)
		}
		if ti, _ := json.Marshal(cfg["trainable_token_indices"]); string(ti) != "["+itoa(c.Vocab)+"]" {
			t.Errorf("trainable_token_indices %s", ti)
		}
		r, err := safetensors.Open(filepath.Join(dir, "adapter_model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		for n, shape := range map[string][]int64{
			"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight":           {3, int64(c.Hidden)},
			"base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight":           {int64(c.QDim()), 3},
			"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight":              {3, int64(c.Intermediate)},
			"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": {1, int64(c.Hidden)},
		} {
			info, ok := r.Info(n)
			if !ok || !slices.Equal(info.Shape, shape) {
				t.Errorf("%s: %s shape %v (present %v), want %v", name, n, info.Shape, ok, shape)
			}
		}
		if got, want := len(r.Names()), len(a.Layout.Specs); got != want {
			t.Errorf("%d tensors in the file, want %d", got, want)
		}
		r.Close()

		// Independent merge of the written file.
		fr, _ := safetensors.Open(filepath.Join(dir, "adapter_model.safetensors"))
		defer fr.Close()
		src, _ := safetensors.Open(filepath.Join("..", "testdata", "tiny", name))
		defer src.Close()
		want := map[string][]float64{}
		for _, s := range g.Layout.Specs {
			n := s.Name
			if n == EmbedName && c.TieEmbeddings && !src.Has(n) {
				n = LMHeadName
			}
			w, err := src.Float32(n)
			if err != nil {
				t.Fatal(err)
			}
			v := make([]float64, s.Elements())
			for i := range w {
				v[i] = float64(w[i])
			}
			mod := strings.TrimSuffix(s.Name, ".weight")
			if A, err := fr.Float32(PEFTPrefix + mod + ".lora_A.weight"); err == nil {
				B, _ := fr.Float32(PEFTPrefix + mod + ".lora_B.weight")
				out, in := s.Shape[0], s.Shape[1]
				for o := 0; o < out; o++ {
					for j := 0; j < in; j++ {
						var ba float64
						for k := 0; k < 3; k++ {
							ba += float64(B[o*3+k]) * float64(A[k*in+j])
						}
						v[o*in+j] += 12.0 / 3 * ba
					}
				}
			}
			if n, err := fr.Float32(PEFTPrefix + s.Name); err == nil { // a norm
				for i := range n {
					v[i] = float64(n[i])
				}
			}
			if s.Name == EmbedName {
				row, _ := fr.Float32(PEFTPrefix + TrainedRowsName)
				for j, x := range row {
					v[c.Vocab*c.Hidden+j] = float64(x)
				}
			}
			if s.Name == LMHeadName {
				// untied: the new row is the mean, as GrowVocab makes it
				gv, _ := g.Layout.View(g.Params, LMHeadName)
				hv := make([]float32, gv.N)
				be.Download(hv, gv)
				for j := 0; j < c.Hidden; j++ {
					v[c.Vocab*c.Hidden+j] = float64(hv[c.Vocab*c.Hidden+j])
				}
			}
			want[s.Name] = v
		}

		p, err := LoadPEFT(dir)
		if err != nil {
			t.Fatal(err)
		}
		merged, err := p.Merge(loadTinyOn(t, be, name))
		if err != nil {
			t.Fatal(err)
		}
		if merged.Cfg.Vocab != c.Vocab+1 {
			t.Fatalf("merged vocab %d, want %d", merged.Cfg.Vocab, c.Vocab+1)
		}
		fetch, closeFetch, err := a.OpenMerged(g)
		if err != nil {
			t.Fatal(err)
		}
		defer closeFetch()
		for _, s := range merged.Layout.Specs {
			v, _ := merged.Layout.View(merged.Params, s.Name)
			got := make([]float32, v.N)
			be.Download(got, v)
			exp := make([]float32, v.N)
			if err := fetch(s.Name, exp); err != nil {
				t.Fatal(err)
			}
			adapted := strings.Contains(s.Name, "_proj")
			for i := range got {
				w := want[s.Name][i]
				if adapted {
					if math.Abs(float64(got[i])-w) > 1e-6*(1+math.Abs(w)) || math.Abs(float64(exp[i])-w) > 1e-6*(1+math.Abs(w)) {
						t.Fatalf("%s %s[%d]: merged %v, export %v, want %v", name, s.Name, i, got[i], exp[i], w)
					}
				} else if got[i] != float32(w) || exp[i] != float32(w) {
					t.Fatalf("%s %s[%d]: merged %v, export %v, want exactly %v", name, s.Name, i, got[i], exp[i], w)
				}
			}
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestLoadPEFTRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadPEFT(dir); err == nil || !strings.Contains(err.Error(), "adapter_config.json") {
		t.Errorf("missing config: %v", err)
	}
	os.WriteFile(filepath.Join(dir, PEFTConfigName), []byte(`{"peft_type": "LORA", "r": 4, "lora_alpha": 16}`), 0o644)
	if _, err := LoadPEFT(dir); err == nil || !strings.Contains(err.Error(), "no adapter_model.safetensors") {
		t.Errorf("missing weights: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), nil, 0o644)
	for _, c := range []struct{ cfg, want string }{
		{`{"peft_type": "IA3"}`, "only LORA"},
		{`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": true}`, "use_dora"},
		{`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "all"}`, "bias"},
		{`{"peft_type": "LORA", "r": 0, "lora_alpha": 16}`, "positive"},
		{`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}}`, "rank_pattern"},
	} {
		os.WriteFile(filepath.Join(dir, PEFTConfigName), []byte(c.cfg), 0o644)
		if _, err := LoadPEFT(dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %s", c.cfg, err, c.want)
		}
	}
	os.WriteFile(filepath.Join(dir, PEFTConfigName), []byte(`{"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": true}`), 0o644)
	if p, err := LoadPEFT(dir); err != nil || p.Scale != 8 {
		t.Errorf("rslora scale: %+v %v", p, err)
	}
}

// TestLoRAModelGradients: with adapters on every target of the tiny llama
// (tied; a trained embedding row used as input and, tied, as output) and
// qwen2 (untied, biases, trained norms, dropout), the gradient of the loss
// with respect to every kind of adapter value matches central finite
// differences of the float32 loss, and the base gets no gradient buffer.
var attention = []string{"q_proj", "k_proj", "v_proj", "o_proj"}

func TestLoRAModelGradients(t *testing.T) {
	for _, c := range []struct {
		arch    string
		norms   bool
		dropout float64
		rec     bool
		targets []string
	}{{"llama", false, 0, false, nil}, {"qwen2", true, 0, true, nil}, {"qwen2", false, 0.2, false, nil}, {"llama", false, 0.2, true, nil},
		// Mixture-of-experts models: experts, shared expert, dense layer.
		{"qwen2_moe", true, 0, false, nil}, {"qwen3_moe", false, 0.2, true, nil}, {"mixtral", false, 0, false, nil},
		{"qwen3_moe", false, 0, true, nil}, {"qwen3_moe", false, 0, false, attention}} {
		be := cpu.New(1)
		m := loadTinyOn(t, be, c.arch)
		const row = 5
		targets := LoRATargets
		if c.targets != nil {
			targets = c.targets
		}
		ad, err := NewLoRA(m, LoRAConfig{Rank: 2, Alpha: 4, Dropout: c.dropout, Targets: targets, TrainRows: []int{row}, TrainNorms: c.norms}, 1)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		host := make([]float32, ad.Params.N)
		be.Download(host, ad.Params)
		for i, s := range ad.Layout.Specs {
			if strings.Contains(s.Name, "lora_") {
				for j := ad.Layout.Offsets[i]; j < ad.Layout.Offsets[i]+s.Elements(); j++ {
					host[j] = float32(rng.NormFloat64() * 0.2)
				}
			}
		}
		be.Upload(ad.Params, host)
		ad.CopyInto(m)
		m.SetAdapter(ad)
		ad.SetDropout(true, 11)

		B, L, V := 2, 8, m.Cfg.Vocab
		a := m.NewActivationsWith(B, L, ActOptions{Training: true, Recompute: c.rec})
		rows := a.ScoreRows(B * L)
		k := 0
		for i := 0; i < B*L; i++ {
			a.IDs[i], a.Docs[i] = int32(rng.IntN(V)), 0
			if i%3 == 1 {
				a.IDs[i] = row
			}
			if i%2 == 0 {
				rows[k], a.Targets[k], a.Weights[k] = int32(i), int32(rng.IntN(V)), 1
				k++
			}
		}
		a.ScoreRows(k)
		a.Upload(be)
		vis := kernels.Visibility{Mode: kernels.Bidirectional}
		lossAt := func() float64 {
			ad.CopyInto(m)
			m.Forward(a, vis)
			s, _ := m.Loss(a, float64(k), false)
			return s / float64(k)
		}
		m.Forward(a, vis)
		m.Loss(a, float64(k), true)
		if err := m.Backward(a, vis); err != nil {
			t.Fatal(err)
		}
		if m.Grads.N != 0 {
			t.Fatalf("%s: the frozen base has a gradient buffer of %d values", c.arch, m.Grads.N)
		}
		grad := make([]float32, ad.Grads.N)
		be.Download(grad, ad.Grads)
		checked := map[string]int{}
		for i, s := range ad.Layout.Specs {
			kind := "lora"
			switch {
			case s.Name == TrainedRowsName:
				kind = "row"
			case strings.Contains(s.Name, "norm"):
				kind = "norm"
			}
			if checked[kind] >= 12 && rng.IntN(8) != 0 {
				continue
			}
			for n := 0; n < 3; n++ {
				j := ad.Layout.Offsets[i] + rng.IntN(s.Elements())
				// The tiny models' embedding rows are small (RMS about
				// 0.02), so the final norm is far from linear over 1e-2.
				eps := float32(1e-2)
				if m.Cfg.MoE != nil {
					eps = 1e-3
				}
				if kind == "row" {
					eps = 1e-3
				}
				old := host[j]
				host[j] = old + eps
				be.Upload(ad.Params, host)
				lp := lossAt()
				host[j] = old - eps
				be.Upload(ad.Params, host)
				lm := lossAt()
				host[j] = old
				be.Upload(ad.Params, host)
				want := (lp - lm) / float64(2*eps)
				if kind == "lora" && math.Abs(float64(grad[j])-want) > 2e-3+0.05*math.Abs(want) {
					t.Errorf("%s %s[%d]: gradient %v, finite differences %v", c.arch, s.Name, j-ad.Layout.Offsets[i], grad[j], want)
				}
				checked[kind]++
			}
		}
		if c.dropout == 0 {
			compareWithFull(t, c.arch, ad, host, a, vis, k)
		}
		if checked["row"] == 0 || checked["lora"] < 12 || (c.norms && checked["norm"] == 0) {
			t.Errorf("%s: checked %v", c.arch, checked)
		}
		a.Free(be)
	}
}

// compareWithFull runs the batch of a through a fully trainable copy of the
// base with the adapter merged in: its gradients of the trained rows and
// norms (the engine's full backward, checked against PyTorch) must be the
// adapter's.
func compareWithFull(t *testing.T, arch string, ad *LoRA, host []float32, a *Activations, vis kernels.Visibility, k int) {
	be := cpu.New(1)
	m := loadTinyOn(t, be, arch)
	H := m.Cfg.Hidden
	for i, s := range ad.Layout.Specs {
		v := host[ad.Layout.Offsets[i] : ad.Layout.Offsets[i]+s.Elements()]
		switch {
		case strings.HasSuffix(s.Name, ".lora_A.weight"):
			mod := strings.TrimSuffix(s.Name, ".lora_A.weight")
			bi := ad.Layout.index[mod+".lora_B.weight"]
			B := host[ad.Layout.Offsets[bi] : ad.Layout.Offsets[bi]+ad.Layout.Specs[bi].Elements()]
			W, _ := m.Layout.View(m.Params, mod+".weight")
			if err := MergeLoRA(be, W, v, B, ad.Layout.Specs[bi].Shape[0], s.Shape[1], s.Shape[0], ad.Cfg.Scale()); err != nil {
				t.Fatal(err)
			}
		case s.Name == TrainedRowsName:
			for r, row := range ad.Cfg.TrainRows {
				be.Upload(m.Embed.W.Slice(row*H, H), v[r*H:(r+1)*H])
			}
		case strings.Contains(s.Name, "norm"):
			w, _ := m.Layout.View(m.Params, s.Name)
			be.Upload(w, v)
		}
	}
	m.EnableGrads()
	b := m.NewActivationsWith(a.B, a.L, ActOptions{Training: true})
	defer b.Free(be)
	copy(b.IDs, a.IDs)
	copy(b.Docs, a.Docs)
	copy(b.ScoreRows(len(a.Rows)), a.Rows)
	copy(b.Targets, a.Targets)
	copy(b.Weights, a.Weights)
	b.Upload(be)
	m.Forward(b, vis)
	m.Loss(b, float64(k), true)
	if err := m.Backward(b, vis); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, ad.Grads.N)
	copy(got, ad.Grads.Host)
	lora := 0
	for i, s := range ad.Layout.Specs {
		var want []float32
		switch {
		case strings.HasSuffix(s.Name, ".lora_A.weight"):
			// With G the merged weight's gradient, dA = scale B^T G and
			// dB = scale G A^T.
			mod := strings.TrimSuffix(s.Name, ".lora_A.weight")
			bi := ad.Layout.index[mod+".lora_B.weight"]
			A := host[ad.Layout.Offsets[i] : ad.Layout.Offsets[i]+s.Elements()]
			B := host[ad.Layout.Offsets[bi] : ad.Layout.Offsets[bi]+ad.Layout.Specs[bi].Elements()]
			G, _ := m.Layout.View(m.Grads, mod+".weight")
			r, in, out := s.Shape[0], s.Shape[1], ad.Layout.Specs[bi].Shape[0]
			sc := float64(ad.Cfg.Scale())
			wa, wb := make([]float32, r*in), make([]float32, out*r)
			for k := 0; k < r; k++ {
				for j := 0; j < in; j++ {
					var v float64
					for o := 0; o < out; o++ {
						v += float64(B[o*r+k]) * float64(G.Host[o*in+j])
					}
					wa[k*in+j] = float32(sc * v)
				}
			}
			for o := 0; o < out; o++ {
				for k := 0; k < r; k++ {
					var v float64
					for j := 0; j < in; j++ {
						v += float64(G.Host[o*in+j]) * float64(A[k*in+j])
					}
					wb[o*r+k] = float32(sc * v)
				}
			}
			ga := got[ad.Layout.Offsets[i] : ad.Layout.Offsets[i]+s.Elements()]
			gb := got[ad.Layout.Offsets[bi] : ad.Layout.Offsets[bi]+ad.Layout.Specs[bi].Elements()]
			if ea, eb := relErr(ga, wa), relErr(gb, wb); ea > 1e-3 || eb > 1e-3 {
				t.Errorf("%s %s: A and B gradients differ from the merged model's by %.2g and %.2g (relative)", arch, mod, ea, eb)
			}
			lora++
			continue
		case strings.HasSuffix(s.Name, ".lora_B.weight"):
			continue
		case s.Name == TrainedRowsName:
			row := ad.Cfg.TrainRows[0]
			want = m.Grads.Host[m.Layout.Offsets[0]+row*H : m.Layout.Offsets[0]+(row+1)*H]
		case strings.Contains(s.Name, "norm"):
			v, _ := m.Layout.View(m.Grads, s.Name)
			want = v.Host
		default:
			continue
		}
		g := got[ad.Layout.Offsets[i] : ad.Layout.Offsets[i]+s.Elements()]
		if e := relErr(g, want); e > 1e-4 {
			t.Errorf("%s %s: adapter gradient differs from full fine-tuning's by %.2g (relative)", arch, s.Name, e)
		}
	}
	if lora == 0 {
		t.Errorf("%s: no adapted linear compared", arch)
	}
}

func TestLoRABytesCountsTheAdapter(t *testing.T) {
	be := cpu.New(1)
	m := loadTinyOn(t, be, "qwen2")
	lc := LoRAConfig{Rank: 4, Alpha: 4, Targets: LoRATargets, TrainRows: []int{3}, TrainNorms: true}
	a, err := NewLoRA(m, lc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := lc.TrainableCount(m.Cfg, 1); got != int64(a.Trainable()) {
		t.Fatalf("TrainableCount %d, the adapter has %d", got, a.Trainable())
	}
	if b := lc.Bytes(m.Cfg, 64); b < 16*float64(a.Trainable()) {
		t.Fatalf("Bytes %v below the values, gradients and moments (%d)", b, 16*a.Trainable())
	}
}

// TestLoRAMoEExperts: on a mixture-of-experts model gate/up/down_proj
// adapt every expert, the shared expert and dense layers (Mixtral's w1, w3,
// w2), never the router or the shared-expert gate; PEFT's target_modules
// name the linears as the model does.
func TestLoRAMoEExperts(t *testing.T) {
	for _, c := range []struct {
		arch, expert string
		modules      []string
	}{
		{"qwen2_moe", "mlp.experts.1.up_proj", LoRATargets},
		{"qwen3_moe", "mlp.experts.7.down_proj", LoRATargets},
		{"mixtral", "block_sparse_moe.experts.0.w1", []string{"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2"}},
	} {
		m := loadTiny(t, c.arch)
		ad, err := NewLoRA(m, LoRAConfig{Rank: 2, Alpha: 2, Targets: LoRATargets}, 1)
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, s := range ad.Layout.Specs {
			names[s.Name] = true
			if strings.Contains(s.Name, "gate.lora") || strings.Contains(s.Name, "shared_expert_gate") {
				t.Errorf("%s: the router is adapted: %s", c.arch, s.Name)
			}
		}
		want := LayerPrefix(1) + c.expert + ".lora_A.weight"
		if !names[want] {
			t.Errorf("%s: no %s among %d adapter tensors", c.arch, want, len(names))
		}
		if c.arch == "qwen2_moe" && (!names[LayerPrefix(0)+"mlp.gate_proj.lora_B.weight"] || !names[LayerPrefix(1)+"mlp.shared_expert.down_proj.lora_A.weight"]) {
			t.Errorf("qwen2_moe: the dense layer 0 or the shared expert is not adapted")
		}
		if n := ad.Cfg.TrainableCount(m.Cfg, 0); n != int64(ad.Layout.Total) {
			t.Errorf("%s: the plan counts %d adapter values, the adapter has %d", c.arch, n, ad.Layout.Total)
		}
		if got := ad.PEFTConfig("base", m.Cfg)["target_modules"]; !reflect.DeepEqual(got, c.modules) {
			t.Errorf("%s: target_modules %v", c.arch, got)
		}
		ad.Free(m.BE)
	}
}
