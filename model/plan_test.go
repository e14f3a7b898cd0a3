package model

import (
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
)

// TestPlanIsTheArena: the plan's activations are exactly what
// NewActivationsWith allocates (the float and int arenas plus the host
// staging), for every architecture, training or not, with and without
// recompute; recompute keeps less.
func TestPlanIsTheArena(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		for _, o := range []ActOptions{{}, {Training: true}, {Training: true, Recompute: true}} {
			B, L := 3, 20
			a := m.NewActivationsWith(B, L, o)
			got := int64(4*a.arena.N+4*a.iarena.N) + 4*int64(len(a.IDs)+len(a.Pos)+len(a.Docs)+len(a.rowStore)+len(a.tgtStore)+len(a.wStore)+len(a.lossH)+len(a.corrH))
			p, err := ComputePlan(m.Cfg, PlanOptions{SeqLen: L, BatchSize: B, Inference: !o.Training, Recompute: o.Recompute, Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			if p.ActivationBytes != got {
				t.Errorf("%s %+v: plan %d activation bytes, NewActivations %d", arch, o, p.ActivationBytes, got)
			}
			if p.ParamBytes != int64(4*m.Layout.Total) || p.Params != int64(m.Layout.Total) {
				t.Errorf("%s: plan %d parameters, layout %d", arch, p.Params, m.Layout.Total)
			}
			want := p.ParamBytes + p.GradBytes + p.OptimizerBytes + p.ActivationBytes + p.WorkspaceBytes
			if p.TotalBytes != want || (o.Training && p.OptimizerBytes != 2*p.GradBytes) {
				t.Errorf("%s %+v: total %d, parts sum to %d", arch, o, p.TotalBytes, want)
			}
		}
		full, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: 64, BatchSize: 4})
		rc, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: 64, BatchSize: 4, Recompute: true})
		if rc.ActivationBytes >= full.ActivationBytes {
			t.Errorf("%s: recompute plans %d activation bytes, without %d", arch, rc.ActivationBytes, full.ActivationBytes)
		}
	}
}

// TestPlanTrainableHook: frozen tensors get no gradient or moments (LoRA's
// hook), adapters' parameters are counted.
func TestPlanTrainableHook(t *testing.T) {
	m := loadTiny(t, "llama")
	p, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: 8, BatchSize: 1, Trainable: func(name string) bool { return name == EmbedName }, ExtraTrainable: 100})
	emb := int64(m.Cfg.Vocab * m.Cfg.Hidden)
	if p.Trainable != emb+100 || p.GradBytes != 4*(emb+100) || p.ParamBytes != 4*(p.Params+100) {
		t.Errorf("trainable %d (want %d), gradient bytes %d", p.Trainable, emb+100, p.GradBytes)
	}
	if _, err := ComputePlan(m.Cfg, PlanOptions{SeqLen: 0, BatchSize: 1}); err == nil {
		t.Error("a plan of 0 tokens")
	}
	if _, err := ComputePlan(m.Cfg, PlanOptions{SeqLen: 8, BatchSize: 1, Device: "tpu"}); err == nil {
		t.Error("a plan for an unknown device")
	}
}

// TestPlanCUDA: on the GPU every buffer is rounded to the pool's classes
// and the workspace holds the bf16 copies of matmul operands.
func TestPlanCUDA(t *testing.T) {
	m := loadTiny(t, "qwen2")
	c, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: 32, BatchSize: 2, Device: "cuda"})
	h, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: 32, BatchSize: 2, Threads: 1})
	if c.ParamBytes%256 != 0 || c.ParamBytes < h.ParamBytes || c.WorkspaceBytes <= 0 {
		t.Errorf("cuda plan: parameters %d (cpu %d), workspace %d", c.ParamBytes, h.ParamBytes, c.WorkspaceBytes)
	}
	for _, n := range []uint64{1, 256, 257, 1 << 20, 1<<20 + 1, 3 << 20} {
		if cl := kernels.PoolClass(n); cl < n || cl > n+n/4+256 {
			t.Errorf("kernels.PoolClass(%d) = %d", n, cl)
		}
	}
}

// TestPlanKVCache: the plan's KV cache is what NewKVCache allocates, counted
// only for inference and in the total.
func TestPlanKVCache(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		B, L := 3, 40
		c := m.NewKVCache(B, L)
		var got int64
		for l := range c.K {
			got += 4 * int64(c.K[l].N+c.V[l].N)
		}
		c.Free(m.BE)
		p, err := ComputePlan(m.Cfg, PlanOptions{SeqLen: L, BatchSize: B, Inference: true, KVCache: true, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: L, BatchSize: B, Inference: true, Threads: 1})
		train, _ := ComputePlan(m.Cfg, PlanOptions{SeqLen: L, BatchSize: B, KVCache: true, Threads: 1})
		if p.KVCacheBytes != got || got == 0 || p.TotalBytes != plain.TotalBytes+got || train.KVCacheBytes != 0 {
			t.Errorf("%s: plan %d KV bytes (total %d, without %d, training %d), NewKVCache %d", arch, p.KVCacheBytes,
				p.TotalBytes, plain.TotalBytes, train.KVCacheBytes, got)
		}
	}
}

// TestPlanHeadLogits: on the GPU training fuses the LM head with the loss
// (no logits buffer) unless HeadLogits (LoRA training a tied row): then the
// activations are the CPU's, which keep the logits, up to the pool's
// rounding.
func TestPlanHeadLogits(t *testing.T) {
	m := loadTiny(t, "llama")
	o := PlanOptions{SeqLen: 16, BatchSize: 2, Threads: 1}
	cpu, _ := ComputePlan(m.Cfg, o)
	o.Device = "cuda"
	fused, _ := ComputePlan(m.Cfg, o)
	o.HeadLogits = true
	logits, _ := ComputePlan(m.Cfg, o)
	tv := int64(4 * 32 * m.Cfg.Vocab)
	if !(fused.ActivationBytes+tv <= logits.ActivationBytes && cpu.ActivationBytes <= logits.ActivationBytes && logits.ActivationBytes < cpu.ActivationBytes+4096) {
		t.Errorf("activations: cpu %d, cuda fused %d, cuda with logits %d (logits %d bytes)", cpu.ActivationBytes, fused.ActivationBytes, logits.ActivationBytes, tv)
	}
}

// TestPlanCopiesOnOff: on CUDA with bf16 matmuls, full fine-tuning with
// and without the bf16 copies of the weights differ in the parameters by
// exactly the copies (one pool block of 2 bytes per copied weight) and,
// without them, in the workspace that holds the per-product casts; nothing
// differs where no copies apply (CPU, fp32 matmuls, LoRA, inference).
func TestPlanCopiesOnOff(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		o := PlanOptions{SeqLen: 64, BatchSize: 2, Device: "cuda", Matmul: "bf16"}
		on, err := ComputePlan(m.Cfg, o)
		if err != nil {
			t.Fatal(err)
		}
		o.NoCopies = true
		off, _ := ComputePlan(m.Cfg, o)
		var n int // every linear's weight and the head's matrix, aligned
		for _, l := range m.allLinears() {
			pack(&n, l.In*l.Out)
		}
		want := int64(kernels.PoolClass(uint64(2 * n)))
		if on.CopyBytes != want || off.CopyBytes != 0 || on.ParamBytes-off.ParamBytes != want {
			t.Errorf("%s: copies %d (want %d), parameters %d with them, %d without", arch, on.CopyBytes, want, on.ParamBytes, off.ParamBytes)
		}
		if on.GradBytes != off.GradBytes || on.OptimizerBytes != off.OptimizerBytes || on.ActivationBytes != off.ActivationBytes || off.WorkspaceBytes < on.WorkspaceBytes {
			t.Errorf("%s: gradients, optimizer, activations or workspace differ beyond the copies: %+v / %+v", arch, on, off)
		}
		if on.TotalBytes-off.TotalBytes != want-(off.WorkspaceBytes-on.WorkspaceBytes) {
			t.Errorf("%s: totals %d and %d", arch, on.TotalBytes, off.TotalBytes)
		}
		var says [2]bool
		for i, p := range []*Plan{on, off} {
			for _, r := range p.Rows {
				says[i] = says[i] || strings.Contains(r.Detail, []string{"bf16 copies of the weights the matmuls read", "no bf16 copies of the weights"}[i])
			}
		}
		if !says[0] || !says[1] {
			t.Errorf("%s: the rows do not say which (%v)", arch, says)
		}
		for _, q := range []PlanOptions{{Device: "cpu"}, {Device: "cuda", Matmul: "fp32"}, {Device: "cuda", FrozenBase: true}, {Device: "cuda", Inference: true}} {
			q.SeqLen, q.BatchSize = 64, 2
			a, _ := ComputePlan(m.Cfg, q)
			q.NoCopies = true
			b, _ := ComputePlan(m.Cfg, q)
			if a.TotalBytes != b.TotalBytes || a.CopyBytes != 0 {
				t.Errorf("%s %+v: NoCopies changes a plan without copies (%d, %d)", arch, q, a.TotalBytes, b.TotalBytes)
			}
		}
	}
}
