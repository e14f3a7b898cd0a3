#!/usr/bin/python3
"""PyTorch CPU peer of `dllm bench`: the same training step (masked-diffusion
loss with shift and 1/t weights, bidirectional attention, backward, global-norm
clip, AdamW) on the same architecture with random weights and tokens, and the
same matrix products. Written from the HF LLaMA semantics; fp32.

Usage (Debian's python3-torch + libopenblas0-pthread; unset OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE in the benchmark command only, see DESIGN.md §6):

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 \\
      testdata/reference/bench_torch.py --config CONFIG.json --batch 8 --seq-len 256
  ... --matmul

Prints one JSON object per line, like `dllm bench --json`.
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F


class Decoder(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        H, I = c["hidden_size"], c["intermediate_size"]
        self.heads = c["num_attention_heads"]
        self.kv = c.get("num_key_value_heads", self.heads)
        self.hd = c.get("head_dim", H // self.heads)
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.vocab = c["vocab_size"]
        bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)
        self.embed = torch.nn.Embedding(self.vocab, H)
        self.layers = torch.nn.ModuleList()
        for _ in range(c["num_hidden_layers"]):
            l = torch.nn.Module()
            l.n1 = torch.nn.Parameter(torch.ones(H))
            l.q = torch.nn.Linear(H, self.heads * self.hd, bias=bias)
            l.k = torch.nn.Linear(H, self.kv * self.hd, bias=bias)
            l.v = torch.nn.Linear(H, self.kv * self.hd, bias=bias)
            l.o = torch.nn.Linear(self.heads * self.hd, H, bias=False)
            l.n2 = torch.nn.Parameter(torch.ones(H))
            l.gate = torch.nn.Linear(H, I, bias=False)
            l.up = torch.nn.Linear(H, I, bias=False)
            l.down = torch.nn.Linear(I, H, bias=False)
            self.layers.append(l)
        self.norm = torch.nn.Parameter(torch.ones(H))
        self.tied = c.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = torch.nn.Linear(H, self.vocab, bias=False)
        theta = c.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.hd, 2).float() / self.hd)
        for p in self.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, cos, sin):
        h = x.shape[-1] // 2
        rot = torch.cat((-x[..., h:], x[..., :h]), -1)
        return x * cos + rot * sin

    def forward(self, ids, rows):
        B, L = ids.shape
        f = torch.outer(torch.arange(L).float(), self.inv_freq)
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        h = self.embed(ids)
        for l in self.layers:
            x = self.rms(h, l.n1)
            q = l.q(x).view(B, L, self.heads, self.hd).transpose(1, 2)
            k = l.k(x).view(B, L, self.kv, self.hd).transpose(1, 2)
            v = l.v(x).view(B, L, self.kv, self.hd).transpose(1, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            rep = self.heads // self.kv
            k = k.repeat_interleave(rep, 1)
            v = v.repeat_interleave(rep, 1)
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd), -1)
            h = h + l.o((p @ v).transpose(1, 2).reshape(B, L, -1))
            x = self.rms(h, l.n2)
            h = h + l.down(F.silu(l.gate(x)) * l.up(x))
        x = self.rms(h, self.norm).reshape(B * L, -1)[rows]
        w = self.embed.weight if self.tied else self.lm_head.weight
        return x @ w.t()


def bench_step(cfg, B, L, warmup, steps, seed):
    torch.manual_seed(seed)
    m = Decoder(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    mask_id = cfg["vocab_size"] - 1
    g = torch.Generator().manual_seed(seed)
    loss = None

    def step():
        nonlocal loss
        x0 = torch.randint(0, mask_id, (B, L), generator=g)
        t = (torch.rand(1, generator=g) + torch.arange(B) / B) % 1 * (1 - 1e-3) + 1e-3
        masked = torch.rand(B, L, generator=g) < t[:, None]
        masked[:, 0] = False
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        b, n = masked.nonzero(as_tuple=True)
        rows = b * L + n - 1  # shift: position n is scored by the logits of n-1
        logits = m(xt, rows)
        ce = F.cross_entropy(logits, x0[b, n], reduction="none")
        loss = (ce / t[b]).sum() / max(len(b), 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    n = sum(p.numel() for p in m.parameters())
    flops = 6 * n * B * L + 12 * cfg["num_hidden_layers"] * L * m.heads * m.hd * B * L
    return {"backend": f"pytorch {torch.__version__} cpu x{torch.get_num_threads()}", "batch": B, "seq_len": L,
            "params": n, "steps": steps, "ms_per_step": dt * 1e3, "tokens_per_second": B * L / dt,
            "tflops": flops / dt / 1e12, "loss": float(loss)}


SHAPES = [  # the same list as cmd/dllm/bench.go
    ("1024x1024x1024 NN", 1024, 1024, 1024, False, False),
    ("qkvo fwd 2048x512x512 NT", 2048, 512, 512, False, True),
    ("ffn up fwd 2048x1376x512 NT", 2048, 1376, 512, False, True),
    ("ffn down fwd 2048x512x1376 NT", 2048, 512, 1376, False, True),
    ("ffn dX 2048x512x1376 NN", 2048, 512, 1376, False, False),
    ("ffn dW 1376x512x2048 TN", 1376, 512, 2048, True, False),
    ("lm head 1024x32000x512 NT", 1024, 32000, 512, False, True),
]


def bench_matmul():
    out = []
    for name, m, n, k, ta, tb in SHAPES:
        a = torch.randn(k, m).t() if ta else torch.randn(m, k)
        b = torch.randn(n, k).t() if tb else torch.randn(k, n)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5 or reps < 3:
            a @ b
            reps += 1
        out.append({"shape": name, "gflops": 2 * m * n * k * reps / (time.perf_counter() - t0) / 1e9})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--matmul", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.matmul:
        print(json.dumps(bench_matmul()))
        return
    cfg = json.load(open(a.config))
    print(json.dumps(bench_step(cfg, a.batch, a.seq_len, a.warmup, a.steps, a.seed)))


if __name__ == "__main__":
    main()
