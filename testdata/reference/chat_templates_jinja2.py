"""Adds Python Jinja2's renderings (the engine transformers uses) to the
fixture chat_templates.mjs wrote, configured as transformers'
_compile_jinja_template does: ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and loopcontrols, tojson as json.dumps with
ensure_ascii=False, raise_exception and strftime_now as globals.

    apt-get install python3-jinja2
    /usr/bin/python3 testdata/reference/chat_templates_jinja2.py
"""
import json
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXTURE = "testdata/reference/fixtures/chat_templates.json"
TEMPLATES = {
    "qwen3": ("../shared/tokenizers/qwen3/tokenizer_config.json", None),
    "llama3": ("../shared/tokenizers/llama3/tokenizer_config.json", None),
    "stories260K-chatml": ("../shared/models/stories260K/tokenizer_config.json", "testdata/chat/chatml.jinja"),
    "features": ("testdata/chat/features/tokenizer_config.json", None),
}


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now


def token_string(v):
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def special_tokens(cfg):
    out = {}
    for k in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]:
        s = token_string(cfg.get(k))
        if s is not None:
            out[k] = s
    if isinstance(cfg.get("additional_special_tokens"), list):
        out["additional_special_tokens"] = [token_string(x) for x in cfg["additional_special_tokens"]]
    return out


def source(cfg, path):
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    t = cfg["chat_template"]
    if isinstance(t, str):
        return t
    return next(x["template"] for x in t if x["name"] == "default")


compiled = {}
for name, (cfg_path, override) in TEMPLATES.items():
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    compiled[name] = (env.from_string(source(cfg, override)), special_tokens(cfg))

with open(FIXTURE, encoding="utf-8") as f:
    fx = json.load(f)
fx["python"] = "jinja2 " + jinja2.__version__
differ = 0
for c in fx["cases"]:
    tmpl, kw = compiled[c["template"]]
    try:
        c["jinja2_text"] = tmpl.render(messages=c["messages"], tools=None, documents=None,
                                       add_generation_prompt=c["add_generation_prompt"], **kw)
    except jinja2.exceptions.TemplateError as e:
        c["jinja2_error"] = str(e)
    if c.get("jinja2_text") != c.get("text"):
        differ += 1
        print("differs from @huggingface/jinja:", c["template"], c["conversation"], c["add_generation_prompt"])
with open(FIXTURE, "w", encoding="utf-8") as f:
    json.dump(fx, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"{len(fx['cases'])} renderings with jinja2 {jinja2.__version__}, {differ} differ from @huggingface/jinja")
