#!/usr/bin/env python3
"""Does a dllm export load in plain transformers and compute dllm's function?

Loads FINAL (a converted model's final/ folder) with AutoModelForCausalLM,
no remote code, in float32, and runs IDS under an all-visible 4-D attention
mask (the diffusion model's bidirectional attention), with the eager and the
sdpa attention of transformers; compares the logits with DLLM_LOGITS, the
float32 L x vocab file `dllm logits --model FINAL --ids IDS` wrote.
Prints one JSON line: the model class, max |difference| and the max relative
to max |logit| per implementation, and pass (max relative < 1e-3).
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("final")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--dllm-logits", required=True)
    args = ap.parse_args()
    ids = [int(x) for x in args.ids.split(",")]
    L = len(ids)
    raw = open(args.dllm_logits, "rb").read()
    ref = torch.frombuffer(bytearray(raw), dtype=torch.float32)
    if ref.numel() % L:
        sys.exit(f"hf_logits_check: {args.dllm_logits} has {ref.numel()} values, not a multiple of {L} positions")
    ref = ref.view(L, -1).double()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor([ids], device=dev)
    res = {"ids": L, "vocab": ref.shape[1], "device": dev}
    ok = True
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(args.final, torch_dtype=torch.float32, trust_remote_code=False,
                                                     attn_implementation=impl).to(dev).eval()
        res["class"] = type(model).__name__
        # All visible: an additive float mask of zeros (B, 1, L, L).
        mask = torch.zeros(1, 1, L, L, dtype=torch.float32, device=dev)
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=mask, use_cache=False).logits[0].double().cpu()
        if out.shape != ref.shape:
            res[impl] = f"shape {tuple(out.shape)} != dllm's {tuple(ref.shape)}"
            ok = False
            continue
        diff = (out - ref).abs().max().item()
        rel = diff / max(ref.abs().max().item(), 1e-30)
        # The same logits under a causal mask differ: the mask was honoured.
        with torch.no_grad():
            causal = model(input_ids=x, use_cache=False).logits[0].double().cpu()
        res[impl] = {"max_abs_diff": diff, "max_rel_diff": rel, "causal_differs_by": (causal - ref).abs().max().item()}
        ok = ok and rel < 1e-3
    res["pass"] = ok
    print(json.dumps(res))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
