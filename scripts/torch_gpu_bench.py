#!/usr/bin/env python3
"""The PyTorch peer of `dllm bench --arch CONFIG --device cuda`.

Times the same training step on the same GPU: a transformers model built from
the config.json with random weights (Qwen2ForCausalLM for
testdata/configs/qwen2.5-0.5b.json), random tokens, the masked-diffusion loss
dllm's bench uses (mask id vocab-1, t ~ U(1e-3, 1) antithetic across the
batch, shift: masked position n scored with the hidden state of n-1, weights
1/t, normalised by the number of masked tokens, the LM head applied to the
masked rows only), bidirectional attention, global-norm clipping at 1 and
AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1, fused).

Precision: fp32 master weights, gradients and optimizer state; the forward
and backward under torch.autocast(bfloat16) (bf16 matmuls and attention,
RMSNorm and the loss in fp32). dllm runs bf16 matmuls with fp32 accumulation
and its attention in fp32.

Bidirectional attention: every attention module's is_causal is set False
and no mask is passed, so sdpa may use its flash kernel (transformers 5.x
and >= 4.53: sdpa's is_causal is that flag when no mask is given), if a
check shows that this is bidirectional; else (eager, or a transformers whose
sdpa is causal without a mask, 4.48-4.52) an all-zeros 4-D mask. The
annealed mask and that fallback are additive float masks (0 visible, the
dtype's minimum hidden) of shape (B, 1, L, L), which transformers >= 4.40
uses as given; a bool mask is refused by 4.40-4.43 ("inverted form with
max==0") and would be added as 0/1 by eager attention (5.x adds a 4-D mask
as given).

Each shape and mask: warm-up steps, then the median of timed steps (CUDA
events). Prints one JSON object per shape and mask. --device cpu (float32
and bf16 autocast on the CPU, wall-clock timing) is for the CPU dry run of
this script (scripts/gpu-check-dryrun), not for measuring.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


def build(config_path, seed, dev, attn="sdpa"):
    raw = json.load(open(config_path))
    model_type = raw.pop("model_type")
    raw.pop("torch_dtype", None)
    raw.pop("dtype", None)
    config = AutoConfig.for_model(model_type, **raw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model = model.float().to(dev)
    for m in model.modules():  # no causal shortcut anywhere
        if hasattr(m, "is_causal"):
            m.is_causal = False
    return model.config, model


def additive(visible, dtype):
    # The 4-D mask as transformers takes it: 0 where visible, the minimum elsewhere.
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, torch.finfo(dtype).min)


@torch.no_grad()
def attention_is_bidirectional(model, vocab, dev, zeros_mask):
    # In fp32: does changing the last token change the first position's
    # logits? (Under a causal mask they stay bit for bit the same.)
    model.eval()
    x = torch.randint(0, vocab - 1, (1, 16), device=dev)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % (vocab - 1)
    mask = torch.zeros(1, 1, 16, 16, device=dev) if zeros_mask else None
    a = model(input_ids=x, attention_mask=mask, use_cache=False).logits[0, 0]
    b = model(input_ids=y, attention_mask=mask, use_cache=False).logits[0, 0]
    model.train()
    return not torch.equal(a, b)


def run(config, model, B, L, steps, warmup, peak, seed, mask="bidirectional", ratio=0.5, dev="cuda", zeros_mask=True):
    V = config.vocab_size
    mask_id = V - 1
    params = sum(p.numel() for p in model.parameters())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    qdim = config.num_attention_heads * head_dim
    cuda = dev == "cuda"
    fused = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **fused)
    g = torch.Generator(device=dev).manual_seed(seed)
    # The mask in the dtype the attention runs in under autocast; None: bidirectional through is_causal=False.
    attn = torch.zeros(B, 1, L, L, dtype=torch.bfloat16, device=dev) if zeros_mask else None
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=dev))
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        nonlocal attn
        if mask == "annealed":  # dllm's annealed rule: causal, plus each future key with probability ratio
            attn = additive(causal | (torch.rand(B, 1, L, L, device=dev, generator=g) < ratio), torch.bfloat16)
        x0 = torch.randint(0, V - 1, (B, L), device=dev, generator=g)
        u0 = torch.rand(1, device=dev, generator=g)
        t = 1e-3 + (1 - 1e-3) * torch.remainder(u0 + torch.arange(B, device=dev) / B, 1.0)
        masked = torch.rand(B, L, device=dev, generator=g) < t[:, None]
        masked[:, 0] = False  # shift: position 0 is never scored
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        with torch.autocast(dev, dtype=torch.bfloat16):
            hidden = model.model(input_ids=xt, attention_mask=attn, use_cache=False).last_hidden_state
            b_idx, n_idx = masked.nonzero(as_tuple=True)
            logits = model.lm_head(hidden[b_idx, n_idx - 1])
        ce = F.cross_entropy(logits.float(), x0[b_idx, n_idx], reduction="none")
        loss = (ce / t[b_idx]).sum() / max(len(b_idx), 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    loss = None
    for _ in range(steps):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            loss = step()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            s = time.perf_counter()
            loss = step()
            times.append(1e3 * (time.perf_counter() - s))
    ms = statistics.median(times)
    tokens = B * L
    flops = 6 * params * tokens + 12 * config.num_hidden_layers * L * qdim * tokens
    tflops = flops / (ms / 1e3) / 1e12
    return {
        "framework": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if cuda else dev, "batch": B, "seq_len": L, "params": params,
        "steps": steps, "warmup": warmup, "ms_per_step": ms, "tokens_per_second": tokens / (ms / 1e3),
        "flops_per_step": flops, "tflops": tflops, "peak_tflops": peak, "mfu": tflops / peak,
        "loss": float(loss), "precision": "fp32 master weights, bf16 autocast", "mask": mask,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "mask_passed": "none (is_causal=False)" if attn is None else f"4-D {str(attn.dtype).replace('torch.', '')}",
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def die(msg):
    print(f"torch_gpu_bench: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config.json of the architecture")
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shapes", nargs="+", help="BxL shapes (e.g. 4x512 1x2048), instead of --batch and --seq-len")
    ap.add_argument("--mask", nargs="+", default=["bidirectional"], choices=["bidirectional", "annealed"])
    ap.add_argument("--ratio", type=float, default=0.5, help="the annealed mask's ratio of visible future keys")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: only to dry-run this script")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention implementation")
    args = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else [(B, args.seq_len) for B in args.batch]
    except ValueError:
        die(f"--shapes {' '.join(args.shapes)}: each must be BxL, e.g. 4x512")
    if any(len(s) != 2 or min(s) < 1 for s in shapes):
        die(f"--shapes {' '.join(args.shapes)}: each must be BxL, e.g. 4x512")
    if args.device == "cuda" and not torch.cuda.is_available():
        die("no CUDA device")
    config, model = build(args.config, args.seed, args.device, args.attn)
    zeros_mask = not attention_is_bidirectional(model, config.vocab_size, args.device, zeros_mask=False)
    bidir = not zeros_mask or attention_is_bidirectional(model, config.vocab_size, args.device, zeros_mask=True)
    print(f"attention: {'CAUSAL: the 4-D mask was not honoured' if not bidir else 'bidirectional (checked), ' + ('through a 4-D zeros mask' if zeros_mask else 'through is_causal=False, no mask')}",
          file=sys.stderr)
    for B, L in shapes:
        for mask in args.mask:
            r = run(config, model, B, L, args.steps, args.warmup, args.peak_tflops, args.seed, mask, args.ratio, args.device, zeros_mask)
            r["attention"] = "bidirectional" if bidir else "causal"
            print(json.dumps(r), flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
