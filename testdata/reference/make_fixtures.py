#!/usr/bin/python3
"""PyTorch reference fixtures for dllm's Go engine and masked-diffusion objective.

Written from the Hugging Face modeling semantics of LlamaForCausalLM, Qwen2ForCausalLM and
Qwen3ForCausalLM (no transformers import: standard library + torch + numpy only), and from
DESIGN.md sections 2 (engine, attention visibility, hash) and 3 (objective).

Everything is computed in float64 (weights are drawn in float64, rounded to float32 and then
widened again, so the Go engine loading the F32 files uses exactly the same weights); results are
stored as little-endian F32 safetensors. Gradients come from torch autograd in float64.

Run with Debian's PyTorch:   apt-get install python3-torch
                             /usr/bin/python3 testdata/reference/make_fixtures.py
The output is deterministic: a rerun rewrites byte-identical files under
testdata/reference/fixtures/ (the folder is deleted and rebuilt). See README.md next to this file.
"""

import json
import math
import os
import shutil
import struct
from fractions import Fraction
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")

torch.manual_seed(0)  # nothing below draws from torch's generator; fixed anyway
np.random.seed(0)  # likewise for numpy's legacy global generator
torch.set_num_threads(1)  # one thread: float64 reductions in a fixed order, run to run
torch.set_default_dtype(torch.float64)

M64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------------
# Output helpers: safetensors writer/reader and a stable JSON layout
# --------------------------------------------------------------------------------------------


def write_safetensors(path, tensors):
    """Writes {name: array} as F32 safetensors.

    8-byte little-endian header length; compact JSON header with "__metadata__" {"format": "pt"}
    first and the tensors in sorted name order; header padded with spaces to a multiple of 8;
    data little-endian float32, offsets contiguous from 0 in the same sorted order.
    """
    names = sorted(tensors)
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in names:
        a = np.ascontiguousarray(np.asarray(tensors[name], dtype="<f4"))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads back what write_safetensors writes, checking the format rules on the way."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and 8 + n <= len(raw), path
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    assert header.pop("__metadata__") == {"format": "pt"}
    data = raw[8 + n :]
    out = {}
    off = 0
    for name in sorted(header):
        e = header[name]
        assert e["dtype"] == "F32"
        s, t = e["data_offsets"]
        assert s == off and t - s == 4 * int(np.prod(e["shape"], dtype=np.int64)), (path, name)
        out[name] = np.frombuffer(data[s:t], dtype="<f4").reshape(e["shape"])
        off = t
    assert off == len(data), path
    return out


def jfmt(obj, indent=0):
    """JSON with dicts broken over lines and lists of scalars on one line (git-diffable)."""
    sp = "  "
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [sp * (indent + 1) + json.dumps(k) + ": " + jfmt(v, indent + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + sp * indent + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (list, tuple, dict)) for x in obj):
            return "[" + ", ".join(jfmt(x) for x in obj) + "]"
        items = [sp * (indent + 1) + jfmt(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + sp * indent + "]"
    if isinstance(obj, (np.integer,)):
        return json.dumps(int(obj))
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        assert math.isfinite(v)
        return json.dumps(v)  # repr: shortest string that round-trips the float64
    return json.dumps(obj)


def write_json(path, obj, sort_keys=False):
    if sort_keys:
        text = json.dumps(obj, indent=2, sort_keys=True)
    else:
        text = jfmt(obj)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def f32(x):
    """The float64 value of x rounded to float32 (exact in JSON, parses back to the same f32)."""
    return float(np.float32(x))


# --------------------------------------------------------------------------------------------
# Attention visibility (DESIGN.md section 2)
# --------------------------------------------------------------------------------------------


def hash_bits(seed, i, j):
    """splitmix64 finaliser of (seed, i, j); returns (z, z >> 40). Python ints, wrapped to 64 bits."""
    z = (seed + ((((i << 32) | j) * 0x9E3779B97F4A7C15) & M64)) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z = z ^ (z >> 31)
    return z, z >> 40


def hash_u(seed, i, j):
    """u in [0, 1): float32(z >> 40) / 2^24, exact in float32 and float64."""
    return float(np.float32(hash_bits(seed, i, j)[1]) / np.float32(1 << 24))


def hash_u_matrix_np(seed, L):
    """The same hash vectorised with numpy uint64 (wrapping); cross-checked against hash_u."""
    i = np.arange(L, dtype=np.uint64)[:, None]
    j = np.arange(L, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + ((i << np.uint64(32)) | j) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def visibility(mode, L, ratio=None, seed=None, block=None):
    """[L, L] boolean matrix visible[i, j] (query i, key j)."""
    i = np.arange(L)[:, None]
    j = np.arange(L)[None, :]
    causal = j <= i
    if mode == "causal":
        return causal
    if mode == "bidirectional":
        return np.ones((L, L), dtype=bool)
    if mode == "annealed":
        u = np.array([[hash_u(seed, a, b) for b in range(L)] for a in range(L)], dtype=np.float32)
        assert np.array_equal(u, hash_u_matrix_np(seed, L))
        return causal | (u < np.float32(ratio))
    if mode == "block":
        return (j // block) <= (i // block)
    raise ValueError(mode)


def doc_visibility(vis, doc_ids):
    """[B, L, L]: vis and doc(i) == doc(j), per row."""
    d = np.asarray(doc_ids)
    same = d[:, :, None] == d[:, None, :]
    return vis[None, :, :] & same


# --------------------------------------------------------------------------------------------
# The model (HF LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM semantics, float64)
# --------------------------------------------------------------------------------------------


def param_specs(cfg):
    """(name, shape, kind) in HF module-definition order; kind is matrix, bias or norm."""
    H, hd, KV = cfg["num_attention_heads"], cfg["head_dim"], cfg["num_key_value_heads"]
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    mt = cfg["model_type"]
    qkv_bias = (mt == "qwen2") or (mt == "qwen2_moe" and cfg.get("qkv_bias", True)) or cfg["attention_bias"]
    o_bias = mt not in ("qwen2", "qwen2_moe") and cfg["attention_bias"]
    specs = [("model.embed_tokens.weight", (V, D), "matrix")]
    for n in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % n
        specs.append((p + "input_layernorm.weight", (D,), "norm"))
        for proj, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            specs.append((p + "self_attn.%s_proj.weight" % proj, (rows, D), "matrix"))
            if qkv_bias:
                specs.append((p + "self_attn.%s_proj.bias" % proj, (rows,), "bias"))
        specs.append((p + "self_attn.o_proj.weight", (D, H * hd), "matrix"))
        if o_bias:
            specs.append((p + "self_attn.o_proj.bias", (D,), "bias"))
        if mt in ("qwen3", "qwen3_moe"):
            specs.append((p + "self_attn.q_norm.weight", (hd,), "norm"))
            specs.append((p + "self_attn.k_norm.weight", (hd,), "norm"))
        specs.append((p + "post_attention_layernorm.weight", (D,), "norm"))
        if sparse_layer(cfg, n):
            specs.extend(moe_specs(cfg, p))
            continue
        specs.append((p + "mlp.gate_proj.weight", (I, D), "matrix"))
        specs.append((p + "mlp.up_proj.weight", (I, D), "matrix"))
        specs.append((p + "mlp.down_proj.weight", (D, I), "matrix"))
    specs.append(("model.norm.weight", (D,), "norm"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (V, D), "matrix"))
    return specs


def init_weights(cfg, rng):
    """Drawn in float64 in param_specs order, then rounded to float32."""
    W = {}
    for name, shape, kind in param_specs(cfg):
        # routers get normal(0, 0.3): more decisive routing, so that no token's k-th and (k+1)-th
        # experts are within float32 rounding of each other (router_margin checks it)
        x = rng.normal(0.0, 0.3 if kind == "router" else 0.1, size=shape)
        if kind == "norm":
            x = 1.0 + x
        W[name] = x.astype(np.float32)
    return W


def rope_inv_freq(cfg):
    """HF _compute_default_rope_parameters + linear / llama3 scaling, in float64."""
    hd = cfg["head_dim"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).double() / hd))
    rs = cfg.get("rope_scaling")
    bands = None
    if rs is not None:
        t = rs.get("rope_type", rs.get("type"))
        if t == "linear":
            inv_freq = inv_freq / rs["factor"]
        elif t == "llama3":
            # transcription of transformers' _compute_llama3_parameters
            factor = rs["factor"]
            lff, hff = rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            low_freq_wavelen = old / lff
            high_freq_wavelen = old / hff
            wavelen = 2 * math.pi / inv_freq
            llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
            smooth = (old / wavelen - lff) / (hff - lff)
            smoothed = (1 - smooth) * llama / factor + smooth * llama
            medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
            llama = torch.where(medium, smoothed, llama)
            bands = {
                "high (unchanged)": int((wavelen < high_freq_wavelen).sum()),
                "medium (smoothed)": int(medium.sum()),
                "low (divided by factor)": int((wavelen > low_freq_wavelen).sum()),
                "wavelen": [round(float(w), 3) for w in wavelen],
                "smooth": [round(float(s), 4) for s in smooth],
            }
            inv_freq = llama
        elif t not in (None, "default"):
            raise ValueError(t)
    return inv_freq, bands


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def forward(cfg, P, ids, vis, positions=None, router=None):
    """logits [B, L, V]. P: name -> float64 tensor; ids [B, L] long; vis bool [L, L] or [B, L, L];
    positions [L] (default 0..L-1). router, a list, receives (probs, top-k indices) of every
    sparse layer of an MoE config."""
    B, L = ids.shape
    H, hd, KV = cfg["num_attention_heads"], cfg["head_dim"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    rep = H // KV

    def lin(x, name):
        y = x @ P[name + ".weight"].t()
        if name + ".bias" in P:
            y = y + P[name + ".bias"]
        return y

    inv_freq, _ = rope_inv_freq(cfg)
    pos = torch.arange(L, dtype=torch.float64) if positions is None else torch.as_tensor(positions, dtype=torch.float64)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # [L, hd]
    cos, sin = emb.cos(), emb.sin()

    vis = torch.as_tensor(vis)
    if vis.dim() == 2:
        vis = vis[None]
    vis = vis[:, None, :, :]  # [B or 1, 1, L, L]

    h = P["model.embed_tokens.weight"][ids]
    for n in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % n
        x = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        q = lin(x, p + "self_attn.q_proj").view(B, L, H, hd)
        k = lin(x, p + "self_attn.k_proj").view(B, L, KV, hd)
        v = lin(x, p + "self_attn.v_proj").view(B, L, KV, hd)
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):
            q = rms_norm(q, P[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, P[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, hd]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(rep, dim=1)  # q head h reads kv head h // rep (HF repeat_kv)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~vis, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, L, H * hd)
        h = h + lin(a, p + "self_attn.o_proj")
        x = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        if sparse_layer(cfg, n):
            h = h + moe_ffn(cfg, P, p, x, router)
            continue
        g = lin(x, p + "mlp.gate_proj")
        u = lin(x, p + "mlp.up_proj")
        h = h + lin(torch.nn.functional.silu(g) * u, p + "mlp.down_proj")
    x = rms_norm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    return x @ head.t()



# --------------------------------------------------------------------------------------------
# Mixture of experts (HF Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock, MixtralSparseMoeBlock)
# --------------------------------------------------------------------------------------------


def moe_info(cfg):
    """(experts, top_k, expert intermediate, shared intermediate, renormalise, module prefix,
    (gate, up, down) projection names) of an MoE config, None for a dense one."""
    mt = cfg["model_type"]
    if mt == "mixtral":
        return (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"], 0, True,
                "block_sparse_moe.", ("w1", "w3", "w2"))
    if mt in ("qwen2_moe", "qwen3_moe"):
        shared = cfg.get("shared_expert_intermediate_size", 0) if mt == "qwen2_moe" else 0
        return (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"], shared,
                cfg.get("norm_topk_prob", False), "mlp.", ("gate_proj", "up_proj", "down_proj"))
    return None


def sparse_layer(cfg, n):
    """HF's rule: mixtral always; qwen MoE unless n is in mlp_only_layers or (n+1) % decoder_sparse_step."""
    if cfg["model_type"] == "mixtral":
        return True
    if cfg["model_type"] not in ("qwen2_moe", "qwen3_moe"):
        return False
    return n not in cfg.get("mlp_only_layers", []) and cfg["num_experts"] > 0 and (n + 1) % cfg.get("decoder_sparse_step", 1) == 0


def moe_specs(cfg, p):
    """A sparse layer's tensors in HF module order: gate, experts, [shared_expert, shared_expert_gate]."""
    E, _, I, SI, _, pre, (gn, un, dn) = moe_info(cfg)
    D = cfg["hidden_size"]
    specs = [(p + pre + "gate.weight", (E, D), "router")]
    for e in range(E):
        ep = p + pre + "experts.%d." % e
        specs += [(ep + gn + ".weight", (I, D), "matrix"), (ep + un + ".weight", (I, D), "matrix"),
                  (ep + dn + ".weight", (D, I), "matrix")]
    if SI:
        sp = p + pre + "shared_expert."
        specs += [(sp + gn + ".weight", (SI, D), "matrix"), (sp + un + ".weight", (SI, D), "matrix"),
                  (sp + dn + ".weight", (D, SI), "matrix"), (p + pre + "shared_expert_gate.weight", (1, D), "router")]
    return specs


def moe_ffn(cfg, P, p, x, router=None):
    """The sparse block on x [B, L, D]: softmax router, top-k, optional renormalisation, the chosen
    experts' SwiGLU outputs weighted and summed per token (index_add, as HF), plus the shared expert
    scaled by sigmoid(shared_expert_gate x). Dropless."""
    E, k, _, SI, renorm, pre, (gn, un, dn) = moe_info(cfg)
    B, L, D = x.shape
    xf = x.reshape(-1, D)
    probs = torch.softmax(xf @ P[p + pre + "gate.weight"].t(), dim=-1)
    topv, topi = torch.topk(probs, k, dim=-1)
    if renorm:
        topv = topv / topv.sum(dim=-1, keepdim=True)
    if router is not None:
        router.append((probs, topi))

    def mlp(xs, ep):
        g = xs @ P[ep + gn + ".weight"].t()
        u = xs @ P[ep + un + ".weight"].t()
        return (torch.nn.functional.silu(g) * u) @ P[ep + dn + ".weight"].t()

    out = torch.zeros_like(xf)
    for e in range(E):
        rows, slot = torch.where(topi == e)
        if rows.numel() == 0:
            continue
        y = mlp(xf[rows], p + pre + "experts.%d." % e) * topv[rows, slot, None]
        out = out.index_add(0, rows, y)
    if SI:
        gate = torch.sigmoid(xf @ P[p + pre + "shared_expert_gate.weight"].t())
        out = out + gate * mlp(xf, p + pre + "shared_expert.")
    return out.view(B, L, D)


def naive_moe(cfg, Wd, p, x):
    """The sparse block for one token vector x (numpy float64), written as loops."""
    E, k, _, SI, renorm, pre, (gn, un, dn) = moe_info(cfg)
    z = Wd[p + pre + "gate.weight"] @ x
    ex = np.exp(z - z.max())
    pr = ex / ex.sum()
    order = sorted(range(E), key=lambda e: (-pr[e], e))[:k]
    w = [pr[e] for e in order]
    if renorm:
        w = [v / sum(w) for v in w]

    def mlp(ep):
        g, u = Wd[ep + gn + ".weight"] @ x, Wd[ep + un + ".weight"] @ x
        return Wd[ep + dn + ".weight"] @ (g / (1 + np.exp(-g)) * u)

    out = np.zeros_like(x)
    for e, we in zip(order, w):
        out = out + we * mlp(p + pre + "experts.%d." % e)
    if SI:
        s = float(Wd[p + pre + "shared_expert_gate.weight"] @ x)
        out = out + 1 / (1 + math.exp(-s)) * mlp(p + pre + "shared_expert.")
    return out


def load_balancing_loss(router, E, k):
    """transformers' load_balancing_loss_func without an attention mask: the sparse layers'
    (probs, top-k) concatenated over N = layers x tokens rows; f[j, e] = mean one_hot(top-k)
    (a [k, E] matrix), P[e] = mean probs; aux = E * sum_{j,e} f[j, e] P[e]."""
    probs = torch.cat([pr for pr, _ in router], dim=0)
    topi = torch.cat([ti for _, ti in router], dim=0)
    mask = torch.nn.functional.one_hot(topi, E).double()  # [N, k, E]
    f = mask.mean(dim=0)
    P = probs.mean(dim=0)
    return E * (f * P[None, :]).sum()


def naive_forward(cfg, W, ids, vis):
    """A second, loop-based numpy float64 forward (per row, position and head), used only to
    cross-check forward(): same maths, written independently of the tensor layout tricks."""
    ids = np.asarray(ids)
    B, L = ids.shape
    H, hd, KV = cfg["num_attention_heads"], cfg["head_dim"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    Wd = {k: v.astype(np.float64) for k, v in W.items()}
    vis = np.asarray(vis)
    if vis.ndim == 2:
        vis = np.broadcast_to(vis, (B, L, L))
    inv = rope_inv_freq(cfg)[0].numpy()
    half = hd // 2

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x) + eps) * w

    def mv(name, x):
        y = Wd[name + ".weight"] @ x
        return y + Wd[name + ".bias"] if name + ".bias" in Wd else y

    def rope(vec, m):
        out = np.empty_like(vec)
        for c in range(half):
            th = m * inv[c]
            a, b = vec[c], vec[c + half]
            out[c] = a * math.cos(th) - b * math.sin(th)
            out[c + half] = b * math.cos(th) + a * math.sin(th)
        return out

    logits = np.zeros((B, L, cfg["vocab_size"]))
    for b in range(B):
        h = [Wd["model.embed_tokens.weight"][ids[b, m]].copy() for m in range(L)]
        for n in range(cfg["num_hidden_layers"]):
            p = "model.layers.%d." % n
            Q, K, Vv = [], [], []
            for m in range(L):
                x = rms(h[m], Wd[p + "input_layernorm.weight"])
                q = mv(p + "self_attn.q_proj", x).reshape(H, hd)
                k = mv(p + "self_attn.k_proj", x).reshape(KV, hd)
                v = mv(p + "self_attn.v_proj", x).reshape(KV, hd)
                if cfg["model_type"] in ("qwen3", "qwen3_moe"):
                    q = np.stack([rms(q[e], Wd[p + "self_attn.q_norm.weight"]) for e in range(H)])
                    k = np.stack([rms(k[e], Wd[p + "self_attn.k_norm.weight"]) for e in range(KV)])
                Q.append([rope(q[e], m) for e in range(H)])
                K.append([rope(k[e], m) for e in range(KV)])
                Vv.append(v)
            newh = []
            for m in range(L):
                heads = []
                for e in range(H):
                    kv = e // (H // KV)
                    sc = [(np.dot(Q[m][e], K[j][kv]) / math.sqrt(hd)) if vis[b, m, j] else None for j in range(L)]
                    mx = max(s for s in sc if s is not None)
                    ex = [math.exp(s - mx) if s is not None else 0.0 for s in sc]
                    z = sum(ex)
                    heads.append(sum(ex[j] / z * Vv[j][kv] for j in range(L)))
                hm = h[m] + mv(p + "self_attn.o_proj", np.concatenate(heads))
                x = rms(hm, Wd[p + "post_attention_layernorm.weight"])
                if sparse_layer(cfg, n):
                    newh.append(hm + naive_moe(cfg, Wd, p, x))
                    continue
                g, u = mv(p + "mlp.gate_proj", x), mv(p + "mlp.up_proj", x)
                newh.append(hm + mv(p + "mlp.down_proj", g / (1 + np.exp(-g)) * u))
            h = newh
        head = Wd["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else Wd["lm_head.weight"]
        for m in range(L):
            logits[b, m] = head @ rms(h[m], Wd["model.norm.weight"])
    return logits


def weighted_ce(logits, targets, weights, norm):
    """sum_n w_n * CE(logits[n], target[n]) / norm; target -100 is ignored (weight 0)."""
    t = torch.as_tensor(targets, dtype=torch.long)
    w = torch.as_tensor(weights, dtype=torch.float64) * (t != -100)
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, t.clamp(min=0)[..., None])[..., 0]
    return (w * ce).sum() / norm


def run_model(cfg, W, ids, vis, loss_fn, positions=None):
    """Forward + loss + autograd. Returns logits, loss, grads (float64 numpy)."""
    P = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in W.items()}
    logits = forward(cfg, P, torch.as_tensor(np.asarray(ids), dtype=torch.long), vis, positions)
    loss = loss_fn(logits)
    loss.backward()
    grads = {k: P[k].grad.numpy().copy() for k in W}
    return logits.detach().numpy(), float(loss), grads


def finite_difference_check(cfg, W, ids, vis, loss_fn, grads, rng, count=4):
    """Central differences on a few parameter entries (float64) against the autograd gradients."""

    def loss_at(Wx):
        P = {k: torch.tensor(v) for k, v in Wx.items()}
        with torch.no_grad():
            return float(loss_fn(forward(cfg, P, torch.as_tensor(np.asarray(ids), dtype=torch.long), vis)))

    names = sorted(W)
    W64 = {k: v.astype(np.float64) for k, v in W.items()}
    worst = 0.0
    for _ in range(count):
        name = names[rng.integers(len(names))]
        idx = tuple(int(rng.integers(s)) for s in W[name].shape)
        e = 1e-6
        Wp = {k: v.copy() for k, v in W64.items()}
        Wm = {k: v.copy() for k, v in W64.items()}
        Wp[name][idx] += e
        Wm[name][idx] -= e
        fd = (loss_at(Wp) - loss_at(Wm)) / (2 * e)
        err = abs(fd - grads[name][idx])
        worst = max(worst, err)
        assert err < 1e-7 * max(1.0, abs(fd)), (cfg["model_type"], name, idx, fd, grads[name][idx])
    return worst


# --------------------------------------------------------------------------------------------
# Engine fixtures
# --------------------------------------------------------------------------------------------

B, L = 2, 16
ANNEAL_RATIO = 0.3
ANNEAL_SEED = 0x1234567  # 19088743
BLOCK = 4
DOC_LENGTHS = [[5, 7, 4], [9, 7]]


def base_config(model_type, arch, **kw):
    c = {
        "architectures": [arch],
        "model_type": model_type,
        "max_position_embeddings": 64,
        "rope_scaling": None,
        "attention_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    c.update(kw)
    return c


CONFIGS = [
    (
        "llama",
        1001,
        base_config(
            "llama", "LlamaForCausalLM", hidden_size=16, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=4, vocab_size=40, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=True,
        ),
    ),
    (
        "qwen2",
        1002,
        base_config(
            "qwen2", "Qwen2ForCausalLM", hidden_size=16, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=4, vocab_size=40, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=False,
        ),
    ),
    (
        "qwen3",
        1003,
        base_config(
            "qwen3", "Qwen3ForCausalLM", hidden_size=16, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=6, vocab_size=40, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=True,
        ),
    ),
    (
        "llama3rope",
        1004,
        base_config(
            "llama", "LlamaForCausalLM", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=40, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False,
            # original_max_position_embeddings is 32, not 16: inv_freq[0] is always 1 (wavelength
            # 2*pi), so with 16/4 = 4 as the high-frequency cut-off no band is "high"; with 32 the
            # cut-offs are 8 and 32 and head_dim 16 has one high, one medium and six low bands.
            rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
]

MODES = [
    ("causal", {}),
    ("bidirectional", {}),
    ("annealed", {"ratio": ANNEAL_RATIO, "seed": ANNEAL_SEED}),
    ("block", {"block": BLOCK}),
]


def engine_inputs(cfg, rng):
    V = cfg["vocab_size"]
    ids = rng.integers(0, V, size=(B, L))
    doc = [sum(([d] * n for d, n in enumerate(lens)), []) for lens in DOC_LENGTHS]
    targets = rng.integers(0, V, size=(B, L))
    ignore = rng.random((B, L)) < 0.3
    targets[ignore] = -100
    w = rng.uniform(0.5, 3.0, size=(B, L)).astype(np.float32).astype(np.float64)
    w[ignore] = 0.0
    assert all(len(r) == L for r in doc) and (~ignore).sum(1).min() >= 2
    return {
        "input_ids": ids.tolist(),
        "doc_ids": doc,
        "targets": targets.tolist(),
        "weights": [[float(x) for x in r] for r in w],
        "norm": float((~ignore).sum()),
    }


def make_engine():
    root = os.path.join(OUT, "engine")
    os.makedirs(root)
    cases = []
    models = {}
    for name, seed, cfg in CONFIGS:
        d = os.path.join(root, name)
        os.makedirs(d)
        W = init_weights(cfg, np.random.default_rng([seed, 0]))
        inp = engine_inputs(cfg, np.random.default_rng([seed, 1]))
        models[name] = (cfg, W)
        write_json(os.path.join(d, "config.json"), cfg, sort_keys=True)
        write_safetensors(os.path.join(d, "model.safetensors"), W)
        back = read_safetensors(os.path.join(d, "model.safetensors"))
        assert all(np.array_equal(back[k], W[k]) for k in W)
        write_json(os.path.join(d, "inputs.json"), inp)

        _, bands = rope_inv_freq(cfg)
        if bands is not None:
            print("  %s llama3 rope bands: %s" % (name, bands))
            assert bands["high (unchanged)"] > 0 and bands["medium (smoothed)"] > 0 and bands["low (divided by factor)"] > 0

        fd_rng = np.random.default_rng([seed, 2])
        for mode, opts in MODES:
            vis = visibility(mode, L, **opts)
            for doc_mask in (False, True):
                v = doc_visibility(vis, inp["doc_ids"]) if doc_mask else vis
                loss_fn = lambda lg: weighted_ce(lg, inp["targets"], inp["weights"], inp["norm"])
                logits, loss, grads = run_model(cfg, W, inp["input_ids"], v, loss_fn)
                assert np.isfinite(logits).all() and math.isfinite(loss)
                if mode == "annealed" and doc_mask:
                    ref = naive_forward(cfg, W, inp["input_ids"], v)
                    diff = np.abs(ref - logits).max()
                    assert diff < 1e-12, diff
                    worst = finite_difference_check(cfg, W, inp["input_ids"], v, loss_fn, grads, fd_rng)
                    print("  %s: naive forward max |diff| %.1e, finite-difference max |err| %.1e" % (name, diff, worst))
                fname = "case_%s%s.safetensors" % (mode, "_doc" if doc_mask else "")
                out = {"logits": logits, "loss": np.array([loss]), "visible": v.astype(np.float32)}
                for k, g in grads.items():
                    out["grad." + k] = g
                write_safetensors(os.path.join(d, fname), out)
                cases.append({
                    "config": name,
                    "file": name + "/" + fname,
                    "mode": mode,
                    "ratio": opts.get("ratio"),
                    "seed": opts.get("seed"),
                    "block": opts.get("block"),
                    "doc_mask": doc_mask,
                })
    write_json(os.path.join(root, "cases.json"), {"cases": cases})
    return models


def make_hash():
    picks = [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (7, 0, 0), (7, 3, 5), (7, 511, 511),
        (7, 0, 511), (7, 511, 0), (7, 255, 256), (ANNEAL_SEED, 2, 9), (ANNEAL_SEED, 15, 14),
        (ANNEAL_SEED, 300, 17), (123456789, 42, 421), ((1 << 53) - 1, 0, 0), ((1 << 53) - 1, 17, 400),
        ((1 << 53) - 1, 511, 510), ((1 << 53) - 12345, 128, 64), ((1 << 52) + 3, 99, 500), (0xDEADBEEF, 510, 1),
    ]
    samples = []
    for seed, i, j in picks:
        assert seed < (1 << 53)
        z, bits = hash_bits(seed, i, j)
        samples.append({"seed": seed, "i": i, "j": j, "u": hash_u(seed, i, j), "u24": bits, "z": "0x%016x" % z})
        assert hash_u_matrix_np(seed, max(i, j) + 1)[i, j] == np.float32(samples[-1]["u"])
    Lc, seed, ratio = 512, 7, ANNEAL_RATIO
    u = hash_u_matrix_np(seed, Lc)
    future = np.triu(np.ones((Lc, Lc), dtype=bool), k=1)
    count = int((future & (u < np.float32(ratio))).sum())
    # the same count with the scalar Python-int hash, as a check on the numpy version
    thr = np.float32(ratio)
    slow = sum(1 for i in range(Lc) for j in range(i + 1, Lc) if np.float32(hash_u(seed, i, j)) < thr)
    assert slow == count
    doc = {
        "formula": "z = seed + ((i<<32)|j)*0x9E3779B97F4A7C15; z = (z^(z>>30))*0xBF58476D1CE4E5B9; "
                   "z = (z^(z>>27))*0x94D049BB133111EB; z = z^(z>>31); u = float32(z>>40)/2^24 (uint64 wrapping)",
        "samples": samples,
        "annealed_count": {
            "L": Lc, "seed": seed, "ratio": ratio,
            "rule": "number of pairs j > i with u(seed, i, j) < float32(ratio)",
            "future_pairs": Lc * (Lc - 1) // 2,
            "visible_future_pairs": count,
        },
    }
    write_json(os.path.join(OUT, "engine", "hash.json"), doc)
    print("  hash: %d samples; L=512 seed 7 ratio 0.3: %d of %d future pairs visible" % (len(samples), count, Lc * (Lc - 1) // 2))


# --------------------------------------------------------------------------------------------
# Objective fixtures (DESIGN.md section 3)
# --------------------------------------------------------------------------------------------

OB, OL, MASK_ID, CART_P = 3, 16, 3, 0.1  # cart_weights uses p = 1/10 exactly
T = [0.2, 0.55, 0.9]


def cart_weights_exact(masked_row, p=Fraction(1, 10)):
    """w_n = 1/2 * sum over unmasked i != n of p (1-p)^(|n-i|-1), for masked n; 0 elsewhere.
    Exact rationals (p = 1/10 exactly); float(w) is the correctly rounded float64."""
    Lr = len(masked_row)
    w = [Fraction(0)] * Lr
    for n in range(Lr):
        if masked_row[n]:
            w[n] = Fraction(1, 2) * sum(p * (1 - p) ** (abs(n - i) - 1) for i in range(Lr) if i != n and not masked_row[i])
    return w


def cart_weights(masked_row):
    return [float(x) for x in cart_weights_exact(masked_row)]


def make_objective(models):
    root = os.path.join(OUT, "objective")
    os.makedirs(root)
    cfg, W = models["llama"]
    shutil.copyfile(os.path.join(OUT, "engine", "llama", "config.json"), os.path.join(root, "config.json"))
    shutil.copyfile(os.path.join(OUT, "engine", "llama", "model.safetensors"), os.path.join(root, "model.safetensors"))

    rng = np.random.default_rng(2001)
    x0 = rng.integers(4, cfg["vocab_size"], size=(OB, OL))
    x0[:, 0] = 1  # BOS
    settings = {}
    for shift in ("shift", "noshift"):
        masked = np.zeros((OB, OL), dtype=bool)
        for b in range(OB):
            while True:  # redraw the row until >= 1 masked and >= 2 unmasked
                row = rng.random(OL) < T[b]
                if shift == "shift":
                    row[0] = False  # position 0 is not maskable with shift on
                if row.sum() >= 1 and (~row).sum() >= 2:
                    break
            masked[b] = row
        xt = np.where(masked, MASK_ID, x0)
        settings[shift] = (masked, xt)

    # Hand-checkable CART example. By hand, w_1 (unmasked 0, 3, 7 at distances 1, 2, 6):
    #   0.5 * 0.1 * (0.9^0 + 0.9^1 + 0.9^5) = 0.05 * (1 + 0.9 + 0.59049) = 0.05 * 2.49049 = 0.1245245
    ex_masked = [i in (1, 2, 4, 5, 6) for i in range(8)]
    ex_exact = cart_weights_exact(ex_masked)
    assert ex_exact[1] == Fraction(1245245, 10000000)
    ex_w = [float(x) for x in ex_exact]

    inputs = {
        "x0": x0.tolist(),
        "t": T,
        "mask_id": MASK_ID,
        "p": CART_P,
        "attention": "bidirectional",
        "doc_mask": False,
        "shift": {"masked_positions": [np.flatnonzero(r).tolist() for r in settings["shift"][0]],
                  "xt": settings["shift"][1].tolist()},
        "noshift": {"masked_positions": [np.flatnonzero(r).tolist() for r in settings["noshift"][0]],
                    "xt": settings["noshift"][1].tolist()},
        "cart_example": {
            "length": 8, "p": 0.1, "unmasked": [0, 3, 7], "masked": [1, 2, 4, 5, 6],
            "weights": ex_w,
            "weights_exact": [str(x) for x in ex_exact],
            "check_w1": "0.5*0.1*(0.9^0 + 0.9^1 + 0.9^5) = 0.05*2.49049 = 0.1245245",
        },
        "cases": [],
    }

    P_vis = np.ones((OL, OL), dtype=bool)
    for weighting in ("elbo", "cart", "uniform"):
        for shift in ("shift", "noshift"):
            masked, xt = settings[shift]
            tw = np.zeros((OB, OL))
            for b in range(OB):
                cw = cart_weights(masked[b].tolist())
                for n in range(OL):
                    if masked[b, n]:
                        tw[b, n] = {"elbo": 1.0 / T[b], "cart": cw[n], "uniform": 1.0}[weighting]
            # per-logit-row targets and weights: masked n is scored by logits[n-1] (shift) or logits[n]
            targets = np.full((OB, OL), -100)
            rw = np.zeros((OB, OL))
            for b in range(OB):
                for n in np.flatnonzero(masked[b]):
                    r = n - 1 if shift == "shift" else n
                    assert r >= 0 and targets[b, r] == -100
                    targets[b, r] = x0[b, n]
                    rw[b, r] = tw[b, n]
            for normname in ("masked", "tokens"):
                norm = float(masked.sum()) if normname == "masked" else float(OB * OL)
                loss_fn = lambda lg: weighted_ce(lg, targets, rw, norm)
                logits, loss, grads = run_model(cfg, W, xt, P_vis, loss_fn)
                fname = "%s_%s_%s.safetensors" % (weighting, shift, normname)
                out = {"logits": logits, "loss": np.array([loss]), "token_weights": tw}
                for k, g in grads.items():
                    out["grad." + k] = g
                write_safetensors(os.path.join(root, fname), out)
                inputs["cases"].append({"file": fname, "weighting": weighting, "shift": shift == "shift",
                                        "norm": normname, "norm_value": norm})
    write_json(os.path.join(root, "inputs.json"), inputs)
    print("  objective: masked per row shift %s, noshift %s" % (
        settings["shift"][0].sum(1).tolist(), settings["noshift"][0].sum(1).tolist()))


# Block diffusion (BD3-LM / LLaDA 2.0): rows [xt ; x0] of length 2L.
BD_L = 64
BD_T = [0.3, 0.7]
BD_DOCS = [[20, 30, 14], [40, 24]]


def block_diff_mask(q_idx, kv_idx, block_size, n):
    """The published block-diffusion mask (BD3-LM's block_diff_mask), for
    query / key indices into [xt ; x0] with n = L."""
    x0_q, x0_kv = q_idx >= n, kv_idx >= n
    block_q = np.where(x0_q, (q_idx - n) // block_size, q_idx // block_size)
    block_kv = np.where(x0_kv, (kv_idx - n) // block_size, kv_idx // block_size)
    block_diagonal = (block_q == block_kv) & (x0_q == x0_kv)
    offset_block_causal = (block_q > block_kv) & x0_kv & ~x0_q
    block_causal = (block_q >= block_kv) & x0_kv & x0_q
    return block_diagonal | offset_block_causal | block_causal


def make_blockdiff(models):
    root = os.path.join(OUT, "blockdiff")
    os.makedirs(root)
    cfg, W = models["llama"]
    shutil.copyfile(os.path.join(OUT, "engine", "llama", "config.json"), os.path.join(root, "config.json"))
    shutil.copyfile(os.path.join(OUT, "engine", "llama", "model.safetensors"), os.path.join(root, "model.safetensors"))
    rng = np.random.default_rng(3001)
    B, L = len(BD_T), BD_L
    x0 = rng.integers(4, cfg["vocab_size"], size=(B, L))
    x0[:, 0] = 1
    docs = np.array([sum(([d] * n for d, n in enumerate(lens)), []) for lens in BD_DOCS])
    masked = np.zeros((B, L), dtype=bool)
    for b in range(B):
        masked[b] = rng.random(L) < BD_T[b]
        masked[b, 0] = False  # shift: position 0 is never masked
    xt = np.where(masked, MASK_ID, x0)
    ids2 = np.concatenate([xt, x0], axis=1)
    pos2 = np.concatenate([np.arange(L), np.arange(L)])
    docs2 = np.concatenate([docs, docs], axis=1)
    idx = np.arange(2 * L)
    inputs = {"x0": x0.tolist(), "xt": xt.tolist(), "t": BD_T, "mask_id": MASK_ID, "doc_ids": docs.tolist(),
              "masked_positions": [np.flatnonzero(r).tolist() for r in masked], "shift": True,
              "rule": "noisy n is scored by logits[n-1] (noisy half) or, at a block start, by logits[L+n-1] (clean copy); weight 1/t; norm = masked count",
              "cases": []}
    norm = float(masked.sum())
    for block in (4, 16):
        base = block_diff_mask(idx[:, None], idx[None, :], block, L)
        for doc_mask in (False, True):
            vis = base
            if doc_mask:
                vis = np.stack([base & (docs2[b][:, None] == docs2[b][None, :]) for b in range(B)])
            targets = np.full((B, 2 * L), -100)
            rw = np.zeros((B, 2 * L))
            for b in range(B):
                for n in np.flatnonzero(masked[b]):
                    r = n - 1 if n % block != 0 else L + n - 1
                    targets[b, r] = x0[b, n]
                    rw[b, r] = 1.0 / BD_T[b]
            loss_fn = lambda lg: weighted_ce(lg, targets, rw, norm)
            logits, loss, grads = run_model(cfg, W, ids2, vis, loss_fn, positions=pos2)
            fname = "block%d%s.safetensors" % (block, "_doc" if doc_mask else "")
            out = {"logits": logits, "loss": np.array([loss]), "visible": vis.astype(np.float64)}
            for k, g in grads.items():
                out["grad." + k] = g
            write_safetensors(os.path.join(root, fname), out)
            inputs["cases"].append({"file": fname, "block": block, "doc_mask": doc_mask, "norm": norm})
    write_json(os.path.join(root, "inputs.json"), inputs)
    print("  blockdiff: L=%d, masked per row %s" % (L, masked.sum(1).tolist()))


# --------------------------------------------------------------------------------------------
# Choice log-likelihoods (AR mode of `dllm eval --task`)
# --------------------------------------------------------------------------------------------


def make_choice(models):
    """Exact continuation log-likelihoods under causal attention, each segment alone (batch 1,
    positions 0..n-1): sum over continuation tokens j of log softmax(logits[j-1])[ids[j]]."""
    root = os.path.join(OUT, "choice")
    os.makedirs(root)
    rng = np.random.default_rng(3001)
    cases = []
    for name in ("llama", "qwen2", "qwen3", "llama3rope"):
        cfg, W = models[name]
        P = {k: torch.tensor(v, dtype=torch.float64) for k, v in W.items()}
        segs = []
        for _ in range(7):
            nctx = int(rng.integers(1, 10))
            ncont = int(rng.integers(1, 7))
            ids = rng.integers(3, cfg["vocab_size"], size=nctx + ncont)
            ids[0] = 1  # BOS
            x = torch.tensor(ids[None, :], dtype=torch.long)
            L = len(ids)
            vis = np.tril(np.ones((L, L), dtype=bool))
            with torch.no_grad():
                lp = torch.log_softmax(forward(cfg, P, x, vis)[0], dim=-1)
            tok = [float(lp[j - 1, ids[j]]) for j in range(nctx, L)]
            segs.append({"tokens": ids.tolist(), "context": nctx, "token_logprobs": tok,
                         "loglikelihood": float(sum(tok))})
        cases.append({"config": name, "dir": "engine/" + name, "segments": segs})
    write_json(os.path.join(root, "cases.json"), {"cases": cases})


# --------------------------------------------------------------------------------------------
# MoE fixtures
# --------------------------------------------------------------------------------------------

MOE_COEF = 0.05  # router_aux_loss_coef of the fixture configs: large enough to matter in every gradient

MOE_CONFIGS = [
    (
        "qwen2_moe",
        1101,
        base_config(
            "qwen2_moe", "Qwen2MoeForCausalLM", hidden_size=16, intermediate_size=40, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=4, vocab_size=40, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=12, shared_expert_intermediate_size=20, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[1], router_aux_loss_coef=MOE_COEF,
        ),
    ),
    (
        "qwen3_moe",
        1102,
        base_config(
            "qwen3_moe", "Qwen3MoeForCausalLM", hidden_size=16, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=6, vocab_size=40, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=True, num_experts=6, num_experts_per_tok=2,
            moe_intermediate_size=10, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
            router_aux_loss_coef=MOE_COEF,
        ),
    ),
    (
        "mixtral",
        1103,
        base_config(
            "mixtral", "MixtralForCausalLM", hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=4, vocab_size=40, rms_norm_eps=1e-5,
            rope_theta=1000000.0, tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2,
            router_aux_loss_coef=MOE_COEF,
        ),
    ),
]

MOE_MODES = MODES + [("annealed_doc", {"ratio": ANNEAL_RATIO, "seed": ANNEAL_SEED})]


def moe_loss(cfg, P, ids, vis, inp):
    """(logits, loss = CE + coef * aux, CE, aux, router stats)."""
    router = []
    logits = forward(cfg, P, torch.as_tensor(np.asarray(ids), dtype=torch.long), vis, router=router)
    ce = weighted_ce(logits, inp["targets"], inp["weights"], inp["norm"])
    E, k = moe_info(cfg)[:2]
    aux = load_balancing_loss(router, E, k)
    return logits, ce + cfg["router_aux_loss_coef"] * aux, ce, aux, router


def router_margin(router, k):
    """The smallest relative gap (p_k - p_k+1) / p_k between the k-th and (k+1)-th probability of
    any token: float32 engines choose the same experts only when it is far above their rounding
    error (about 1e-6 relative here)."""
    gap = 1.0
    for probs, _ in router:
        srt = torch.sort(probs, dim=-1, descending=True).values
        if srt.shape[1] > k:
            gap = min(gap, float(((srt[:, k - 1] - srt[:, k]) / srt[:, k - 1]).min()))
    return gap


def make_moe():
    root = os.path.join(OUT, "moe")
    os.makedirs(root)
    cases = []
    for name, seed, cfg in MOE_CONFIGS:
        d = os.path.join(root, name)
        os.makedirs(d)
        W = init_weights(cfg, np.random.default_rng([seed, 0]))
        inp = engine_inputs(cfg, np.random.default_rng([seed, 1]))
        write_json(os.path.join(d, "config.json"), cfg, sort_keys=True)
        write_safetensors(os.path.join(d, "model.safetensors"), W)
        back = read_safetensors(os.path.join(d, "model.safetensors"))
        assert all(np.array_equal(back[k], W[k]) for k in W)
        write_json(os.path.join(d, "inputs.json"), inp)
        E, k = moe_info(cfg)[:2]
        fd_rng = np.random.default_rng([seed, 2])
        for mode, opts in MOE_MODES:
            doc_mask = mode.endswith("_doc")
            base = mode[:-4] if doc_mask else mode
            vis = visibility(base, L, **opts)
            if doc_mask:
                vis = doc_visibility(vis, inp["doc_ids"])
            P = {kk: torch.tensor(v.astype(np.float64), requires_grad=True) for kk, v in W.items()}
            logits, loss, ce, aux, router = moe_loss(cfg, P, inp["input_ids"], vis, inp)
            loss.backward()
            grads = {kk: P[kk].grad.numpy().copy() for kk in W}
            logits = logits.detach().numpy()
            gap = router_margin(router, k)
            assert gap > 1e-4, (name, mode, gap)
            counts = np.stack([torch.nn.functional.one_hot(ti, E).sum(dim=(0, 1)).numpy() for _, ti in router])
            assert np.isfinite(logits).all() and math.isfinite(float(loss))
            if mode == "annealed_doc":
                ref = naive_forward(cfg, W, inp["input_ids"], vis)
                diff = np.abs(ref - logits).max()
                assert diff < 1e-12, diff

                def loss_at(Wx):
                    Px = {kk: torch.tensor(v) for kk, v in Wx.items()}
                    with torch.no_grad():
                        return float(moe_loss(cfg, Px, inp["input_ids"], vis, inp)[1])

                worst = fd_check(W, grads, loss_at, fd_rng, count=6)
                print("  %s: naive forward max |diff| %.1e, finite-difference max |err| %.1e, router margin %.1e" % (
                    name, diff, worst, gap))
            fname = "case_%s.safetensors" % mode
            out = {"logits": logits, "loss": np.array([float(loss)]), "ce": np.array([float(ce)]),
                   "aux": np.array([float(aux)]), "expert_counts": counts.astype(np.float64)}
            for kk, g in grads.items():
                out["grad." + kk] = g
            write_safetensors(os.path.join(d, fname), out)
            cases.append({"config": name, "file": name + "/" + fname, "mode": base, "ratio": opts.get("ratio"),
                          "seed": opts.get("seed"), "block": opts.get("block"), "doc_mask": doc_mask,
                          "aux_coef": cfg["router_aux_loss_coef"]})
    write_json(os.path.join(root, "cases.json"), {"cases": cases})


def fd_check(W, grads, loss_at, rng, count):
    """Central differences on a few entries (float64), half of them in the router and experts."""
    names = sorted(W)
    moe_names = [n for n in names if "expert" in n or n.endswith("gate.weight")]
    W64 = {kk: v.astype(np.float64) for kk, v in W.items()}
    worst = 0.0
    for i in range(count):
        pool = moe_names if i % 2 == 0 else names
        name = pool[rng.integers(len(pool))]
        idx = tuple(int(rng.integers(sz)) for sz in W[name].shape)
        e = 1e-6
        Wp = {kk: v.copy() for kk, v in W64.items()}
        Wm = {kk: v.copy() for kk, v in W64.items()}
        Wp[name][idx] += e
        Wm[name][idx] -= e
        fd = (loss_at(Wp) - loss_at(Wm)) / (2 * e)
        err = abs(fd - grads[name][idx])
        worst = max(worst, err)
        assert err < 1e-7 * max(1.0, abs(fd)), (name, idx, fd, grads[name][idx])
    return worst


def main():
    print("torch %s, numpy %s" % (torch.__version__, np.__version__))
    if sys.argv[1:] == ["moe"]:  # only fixtures/moe (while developing); a plain run rebuilds everything
        shutil.rmtree(os.path.join(OUT, "moe"), ignore_errors=True)
        make_moe()
        return
    # this script's folders only: fixtures/chat_templates.json comes from chat_templates*.{mjs,py}
    for d in ("engine", "objective", "blockdiff", "choice", "moe"):
        shutil.rmtree(os.path.join(OUT, d), ignore_errors=True)
    os.makedirs(OUT, exist_ok=True)
    models = make_engine()
    make_hash()
    make_objective(models)
    make_blockdiff(models)
    make_choice(models)
    make_moe()
    nfiles, nbytes = 0, 0
    for dp, _, fs in os.walk(OUT):
        for f in fs:
            nfiles += 1
            nbytes += os.path.getsize(os.path.join(dp, f))
    print("wrote %d files, %d bytes under %s" % (nfiles, nbytes, os.path.relpath(OUT, os.getcwd())))


if __name__ == "__main__":
    sys.exit(main())
