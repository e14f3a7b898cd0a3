"""Writes a small synthetic instruction set from TinyStories text: the first
sentences of a story, then questions answered from them (who the story is
about, how it starts, how it ends), some with a system message, some
multi-turn.

    /usr/bin/python3 testdata/chat/make_sft.py    # from the repository root

Input: ../shared/data/tinystories/TinyStories-train-head.txt (CDLA-Sharing-1.0).
Output: testdata/chat/stories_sft_{train,eval}.jsonl (`messages` rows, disjoint
stories) and stories_sft_{train,eval}_text.jsonl: the same conversations rendered
with chatml.jinja as plain `text` rows, for a pre-training-style run on the
same data. Needs python3-jinja2 (rendering as transformers does).
Deterministic: no randomness beyond a fixed-seed generator.
"""
import json
import random
import re

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SRC = "../shared/data/tinystories/TinyStories-train-head.txt"
SYSTEM = "You answer questions about the story."
N_TRAIN, N_EVAL, SENTENCES = 250, 32, 4

text = open(SRC, encoding="utf-8").read()
stories = [s.strip() for s in re.split(r"(?<!\n)\n(?!\n)", text) if s.strip()]
rng = random.Random(14)
items = []
for s in stories:
    sents = [x.strip() for x in re.split(r"(?<=[.!?])\s+", s.replace("\n", " ")) if x.strip()]
    if len(sents) < SENTENCES:
        continue
    excerpt = sents[:SENTENCES]
    joined = " ".join(excerpt)
    m = re.search(r"\bnamed ([A-Z][a-z]+)", joined)
    if not m or len(joined) > 480 or any(len(x) > 160 for x in excerpt):
        continue
    name = m.group(1)
    qa = [
        ("Who is the story about?", f"The story is about {name}."),
        ("How does the story start?", excerpt[0]),
        ("How does the story end?", excerpt[-1]),
    ]
    rng.shuffle(qa)
    k = rng.choice([1, 1, 2])
    msgs = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": SYSTEM})
    for i, (q, a) in enumerate(qa[:k]):
        msgs.append({"role": "user", "content": f"{joined}\n\n{q}" if i == 0 else q})
        msgs.append({"role": "assistant", "content": a})
    items.append({"messages": msgs})

assert len(items) >= N_TRAIN + N_EVAL, len(items)
train, held = items[:N_TRAIN], items[N_TRAIN:N_TRAIN + N_EVAL]

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(jinja2.exceptions.TemplateError(m))
tmpl = env.from_string(open("testdata/chat/chatml.jinja", encoding="utf-8").read())


def dump(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


dump("testdata/chat/stories_sft_train.jsonl", train)
dump("testdata/chat/stories_sft_eval.jsonl", held)
# BOS comes from the corpus reader, EOS too: render without bos_token and
# drop the final EOS the template writes after the last turn.
def as_text(rows):
    return [{"text": tmpl.render(messages=r["messages"], bos_token="", eos_token="</s>", add_generation_prompt=False).rstrip("\n").removesuffix("</s>")} for r in rows]


dump("testdata/chat/stories_sft_train_text.jsonl", as_text(train))
dump("testdata/chat/stories_sft_eval_text.jsonl", as_text(held))
turns = sum(1 for r in train for m in r["messages"] if m["role"] == "assistant")
print(f"{len(items)} candidate stories; wrote {len(train)} train ({turns} assistant turns), {len(held)} eval conversations")
