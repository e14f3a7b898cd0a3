"""A TEST-ONLY stand-in for Hugging Face transformers, for the CPU dry run of
scripts/hf_logits_check.py and scripts/torch_gpu_bench.py
(scripts/gpu-check-dryrun puts scripts/testing on PYTHONPATH; nothing else
does). It is NOT transformers: it is our own plain-torch LLaMA/Qwen2 written
to the layout and semantics of transformers 5.x (read in its 5.15 source:
masking_utils.py, integrations/sdpa_attention.py, modeling_llama.py,
configuration_utils.py, modeling_utils.py), providing only what the two
scripts call:

  AutoConfig.for_model(model_type, **config)
  AutoModelForCausalLM.from_pretrained(dir, dtype= | torch_dtype=,
      trust_remote_code=, attn_implementation="eager" | "sdpa")
  AutoModelForCausalLM.from_config(config, attn_implementation=)
  model(input_ids=, attention_mask=, use_cache=).logits,
  model.model(...).last_hidden_state, model.lm_head

A pass with it proves the scripts' flow, arguments, paths, output and
comparison logic, and that dllm's export is a LLaMA/Qwen2 by this reading of
the layout; it proves nothing about the real library's behaviour, which only
the GPU machine's transformers can show.

What it follows of 5.x:
- A 4-D attention_mask is used as given (_preprocess_mask_arguments returns
  it untouched): eager attention adds it to the scores (a bool mask is added
  as 0/1, so it does NOT mask), sdpa hands it to scaled_dot_product_attention
  (bool: True attends; float: added). transformers 4.40-4.43 refused a 4-D
  mask whose max is not 0; additive float masks work in all.
- No mask: eager builds the causal mask; sdpa uses is_causal, i.e. causal
  unless the attention module's is_causal was set False.
- dtype (torch_dtype kept for BC) defaults to "auto": config.json's dtype,
  else torch_dtype, else float32.
- RoPE: rope_theta and rope_scaling become config.rope_parameters (a config
  that already has rope_parameters is read as is).
- Tied embeddings: tied to whichever of embed_tokens / lm_head the
  checkpoint holds; if it holds both with different values, not tied.
- LlamaConfig refuses hidden_size not a multiple of num_attention_heads;
  rms_norm_eps and initializer_range must be floats (strict dataclasses).
Stricter than 5.x (which warns and initialises at random): missing or
unexpected tensors are an error.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F
from torch import nn

__version__ = "5.17.0+dllm-standin"  # the version whose behaviour it follows
STANDIN = True


class PretrainedConfig:
    """The config.json keys as attributes, with the defaults of the real
    LlamaConfig / Qwen2Config for the keys the model reads."""

    defaults = {
        "llama": dict(rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                      hidden_act="silu", rope_parameters=None),
        "qwen2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu", rope_parameters=None),
    }

    def __init__(self, model_type, **kw):
        if model_type not in self.defaults:
            raise ValueError(f"stand-in transformers: model_type {model_type!r} not implemented (llama, qwen2)")
        self.model_type = model_type
        for k, v in self.defaults[model_type].items():
            setattr(self, k, v)
        # configuration_utils: torch_dtype is kept for BC; dtype wins when both are given.
        td = kw.pop("torch_dtype", None)
        self.dtype = kw.pop("dtype", None) or td
        # modeling_rope_utils.convert_rope_params_to_dict: rope_scaling or rope_parameters, plus rope_theta.
        rope = dict(kw.pop("rope_scaling", None) or kw.pop("rope_parameters", None) or {})
        kw.pop("rope_parameters", None)
        rope.setdefault("rope_theta", kw.pop("rope_theta", 10000.0))
        rope.setdefault("rope_type", rope.get("type", "default"))
        self.rope_parameters = rope
        for k, v in kw.items():
            # @strict (huggingface_hub): a field declared float refuses an int, e.g. 0 for 0.0
            if k in ("rms_norm_eps", "initializer_range") and not isinstance(v, float):
                raise TypeError(f"Field '{k}' expected float, got {type(v).__name__} (value: {v!r})")
            setattr(self, k, v)
        if getattr(self, "num_key_value_heads", None) is None:
            self.num_key_value_heads = self.num_attention_heads
        if getattr(self, "head_dim", None) is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if model_type == "llama" and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"The hidden size ({self.hidden_size}) is not a multiple of the number of attention "
                             f"heads ({self.num_attention_heads}).")
        self._attn_implementation = None


class AutoConfig:
    @classmethod
    def for_model(cls, model_type, **kw):
        return PretrainedConfig(model_type, **kw)

    @classmethod
    def from_pretrained(cls, path, **_):
        raw = json.load(open(os.path.join(path, "config.json")))
        return PretrainedConfig(raw.pop("model_type"), **raw)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def causal_bias(L, dtype, device):
    return torch.zeros(L, L, dtype=dtype, device=device).masked_fill_(
        torch.ones(L, L, dtype=torch.bool, device=device).triu(1), torch.finfo(dtype).min)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        bias = c.model_type == "qwen2" or c.attention_bias
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size,
                                bias=c.model_type == "llama" and c.attention_bias)
        self.is_causal = True

    def forward(self, x, cos, sin, mask):
        c = self.c
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, -1, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, -1, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, -1, c.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        s = torch.matmul(q, k.transpose(2, 3)) * c.head_dim ** -0.5
        if c._attn_implementation == "eager":
            # The model made the causal mask when none was given; any mask is added, a bool one as 0/1.
            s = s + (mask if mask is not None else causal_bias(L, s.dtype, s.device))
        elif mask is None:  # sdpa: is_causal = q_length > 1 and no mask and module.is_causal
            if self.is_causal and L > 1:
                s = s + causal_bias(L, s.dtype, s.device)
        elif mask.dtype == torch.bool:  # scaled_dot_product_attention: True attends
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask.to(s.dtype)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, L, -1)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        if c.hidden_act != "silu":
            raise ValueError(f"stand-in transformers: hidden_act {c.hidden_act!r} not implemented")
        bias = c.model_type == "llama" and c.mlp_bias
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Output:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        d = c.head_dim
        theta = c.rope_parameters["rope_theta"]
        self.register_buffer("inv_freq", 1.0 / (theta ** (torch.arange(0, d, 2).float() / d)), persistent=False)

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, **_):
        B, L = input_ids.shape
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ValueError("stand-in transformers: only 4-D attention masks (B, 1, L, L) are implemented")
        if attention_mask is not None and tuple(attention_mask.shape[-2:]) != (L, L):
            raise ValueError(f"stand-in transformers: mask {tuple(attention_mask.shape)} for {L} positions")
        x = self.embed_tokens(input_ids)
        pos = torch.arange(L, device=input_ids.device).float()
        f = pos[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos()[None, None].to(x.dtype), emb.sin()[None, None].to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attention_mask)
        return Output(last_hidden_state=self.norm(x))


class CausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.model = Model(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, **kw):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kw).last_hidden_state
        return Output(logits=self.lm_head(h), last_hidden_state=h)


class LlamaForCausalLM(CausalLM):
    pass


class Qwen2ForCausalLM(CausalLM):
    pass


CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    """The tensors of one .safetensors file: an 8-byte little-endian header
    length, a JSON header of {name: {dtype, shape, data_offsets}}, then the
    raw little-endian data (torch 1.13 has no loader of its own)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in DTYPES:
            raise ValueError(f"stand-in transformers: {path}: {name} has dtype {t['dtype']}")
        a, b = t["data_offsets"]
        dt = DTYPES[t["dtype"]]
        v = torch.frombuffer(data, dtype=dt, count=(b - a) // torch.empty(0, dtype=dt).element_size(), offset=a)
        out[name] = v.reshape(t["shape"]).clone()
    return out


def _dtype(kw, config):
    d = kw.pop("dtype", None)
    td = kw.pop("torch_dtype", None)
    d = d if d is not None else td
    if d is None or d == "auto":  # from_pretrained's "auto" and from_config's default: the config's dtype
        d = getattr(config, "dtype", None) or "float32"
    if isinstance(d, str):
        d = getattr(torch, d, None)
    if not isinstance(d, torch.dtype):
        raise TypeError(f"stand-in transformers: dtype {d!r} is not a torch.dtype")
    return d


def _build(config, attn_implementation):
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"stand-in transformers: attn_implementation {attn_implementation!r} (eager, sdpa)")
    if config.rope_parameters.get("rope_type") != "default":
        raise ValueError(f"stand-in transformers: rope_type {config.rope_parameters.get('rope_type')!r} not implemented")
    config._attn_implementation = attn_implementation
    return CLASSES[config.model_type](config)


class AutoModelForCausalLM:
    @classmethod
    def from_config(cls, config, attn_implementation="sdpa", **kw):
        dt = _dtype(kw, config)
        if kw:
            raise TypeError(f"stand-in transformers: from_config got {sorted(kw)}")
        return _build(config, attn_implementation).to(dt)

    @classmethod
    def from_pretrained(cls, path, attn_implementation="sdpa", trust_remote_code=None, **kw):
        config = AutoConfig.from_pretrained(path)
        dt = _dtype(kw, config)
        if kw:
            raise TypeError(f"stand-in transformers: from_pretrained got {sorted(kw)}")
        if "auto_map" in config.__dict__ and not trust_remote_code:
            raise ValueError("stand-in transformers: the config asks for remote code")
        index = os.path.join(path, "model.safetensors.index.json")
        files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
        state = {}
        for f in files:
            state.update(read_safetensors(os.path.join(path, f)))
        embed, head = "model.embed_tokens.weight", "lm_head.weight"
        if config.tie_word_embeddings and embed in state and head in state and not torch.equal(state[embed], state[head]):
            # modeling_utils.tie_weights: both present with different values -> a warning, not tied
            print("stand-in transformers: tie_word_embeddings but the checkpoint holds two different embeddings: not tied",
                  file=sys.stderr)
            config.tie_word_embeddings = False
        model = _build(config, attn_implementation)
        if config.tie_word_embeddings:  # tied to whichever of the two the checkpoint holds
            if head not in state and embed in state:
                state[head] = state[embed]
            elif embed not in state and head in state:
                state[embed] = state[head]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"stand-in transformers: {path}: missing {missing}, unexpected {unexpected}")
        return model.to(dt).eval()
