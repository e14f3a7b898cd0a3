#!/usr/bin/env python3
"""Does a dllm export load in plain transformers and compute dllm's function?

Loads FINAL (a converted model's final/ folder) with AutoModelForCausalLM,
no remote code, in float32, and runs IDS under an all-visible 4-D attention
mask (the diffusion model's bidirectional attention: an additive float mask
of zeros, shape (1, 1, L, L), which transformers >= 4.40 uses as given: in
5.x masking_utils._preprocess_mask_arguments returns any 4-D mask untouched,
eager adds it to the scores and sdpa passes it to
scaled_dot_product_attention), with the eager and the sdpa attention of
transformers, each checked to be the one the model runs; compares the logits with
DLLM_LOGITS, the float32 L x vocab file `dllm logits --model FINAL --ids IDS`
wrote. The same ids without a mask (transformers' causal default) must
differ from dllm's logits by far more than the bidirectional run does, or the
comparison could not tell the two apart.

Prints one JSON line: versions, the model class, per implementation the max
|difference|, the max relative to max |logit| and the causal run's
difference; pass = every implementation within --tol and discriminating.
Exit 0 on pass, 1 on a failed comparison, 2 on bad input.
"""
import argparse
import json
import os
import sys

# A local folder needs no network, and the GPU machine has none: never wait on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def version(v):
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def load(final, impl, dev):
    # transformers 4.56 renamed torch_dtype to dtype (the old name warns, and goes later).
    key = "dtype" if version(transformers.__version__) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=False, attn_implementation=impl,
                                                 **{key: torch.float32})
    return model.float().to(dev).eval()


def die(msg):
    print(f"hf_logits_check: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("final")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--dllm-logits", required=True)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tol", type=float, default=1e-4, help="largest max |diff| / max |logit| that passes")
    ap.add_argument("--impl", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    args = ap.parse_args()
    try:
        ids = [int(x) for x in args.ids.split(",")]
    except ValueError:
        die(f"--ids {args.ids!r}: not comma-separated integers")
    try:
        V = int(json.load(open(os.path.join(args.final, "config.json")))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"{args.final}/config.json: no vocab_size ({e}); is it a converted model's final/?")
    bad = [i for i in ids if not 0 <= i < V]
    if bad:
        die(f"--ids {bad[0]}: not a token id of this model (vocab_size {V} in {args.final}/config.json)")
    L = len(ids)
    try:
        raw = open(args.dllm_logits, "rb").read()
    except OSError as e:
        die(f"{e}")
    if len(raw) != 4 * L * V:
        die(f"{args.dllm_logits} has {len(raw)} bytes, not float32 x {L} ids x vocab {V}: "
                 "was it written by `dllm logits` for the same --ids and model?")
    ref = torch.frombuffer(bytearray(raw), dtype=torch.float32).view(L, -1).double()
    if args.device == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        dev = args.device
    if dev == "cuda":  # fp32 means fp32: no TF32 in matmuls (PyTorch's default, made sure)
        try:  # torch >= 2.9 raises on a mix of its new and legacy TF32 switches: the new one where it exists
            if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
                torch.backends.cuda.matmul.fp32_precision = "ieee"
            else:
                torch.backends.cuda.matmul.allow_tf32 = False
        except Exception as e:
            print(f"hf_logits_check: could not turn TF32 off ({e}); PyTorch's default is off", file=sys.stderr)
    x = torch.tensor([ids], device=dev)
    res = {"torch": torch.__version__, "transformers": transformers.__version__, "ids": L, "vocab": ref.shape[1],
           "device": torch.cuda.get_device_name() if dev == "cuda" else dev, "tol": args.tol}
    if getattr(transformers, "STANDIN", False):
        res["standin"] = "scripts/testing/transformers: NOT the real library (CPU dry run)"
    ok = True
    for impl in args.impl:
        try:
            model = load(args.final, impl, dev)
            res["class"] = type(model).__name__
            used = getattr(model.config, "_attn_implementation", impl)
            if used != impl:  # a silent fallback would compare the other implementation twice
                raise ValueError(f"asked for {impl}, the model runs {used}")
            mask = torch.zeros(1, 1, L, L, dtype=torch.float32, device=dev)
            with torch.no_grad():
                out = model(input_ids=x, attention_mask=mask, use_cache=False).logits[0].double().cpu()
                causal = model(input_ids=x, use_cache=False).logits[0].double().cpu()
        except Exception as e:  # one line in the JSON; the other implementation still runs
            res[impl] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ok = False
            continue
        if out.shape != ref.shape:
            res[impl] = f"shape {tuple(out.shape)} != dllm's {tuple(ref.shape)}"
            ok = False
            continue
        diff = (out - ref).abs().max().item()
        rel = diff / max(ref.abs().max().item(), 1e-30)
        cdiff = (causal - ref).abs().max().item()
        passed = rel < args.tol and cdiff > 10 * diff
        res[impl] = {"max_abs_diff": diff, "max_rel_diff": rel, "causal_differs_by": cdiff, "pass": passed}
        ok = ok and passed
    res["pass"] = ok
    print(json.dumps(res))
    if not ok:
        print("hf_logits_check: FAIL: transformers' logits differ from dllm's (see the JSON line)", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
