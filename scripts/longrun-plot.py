#!/usr/bin/python3
"""Held-out NELBO against tokens seen for two conversion runs (pretrained and random init).

Usage: scripts/longrun-plot.py RUNS_DIR OUT.png [--ar-ce X] [--budget-steps 2000]

RUNS_DIR holds pretrained/ and random/, each a `dllm convert --out` folder with metrics.jsonl
(eval records every --eval-every steps) and run_config.json. Writes one PNG (both curves, the
1x/2x/5x budgets marked, the source's AR cross-entropy on the same held-out rows as a line when
--ar-ce is given) and prints a markdown table: NELBO at 1x, 2x and 5x the budget, and how many
tokens the random start needs to reach the pretrained start's NELBO at 1x and 2x (the
data-saving factor of AR initialisation). The eval is 32 rows x 8 MC passes, so single points
are noisy: crossings are read off a centred 3-point moving average, by linear interpolation.
Needs python3-matplotlib (Debian).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run):
    cfg = json.load(open(os.path.join(run, "run_config.json")))
    per_step = cfg["batch-size"] * cfg["seq-len"] * cfg.get("grad-accum", 1)
    pts = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if r.get("type") == "eval":
            pts[r["step"]] = r["eval"]["nelbo"]  # a resumed run may repeat a step: keep the last
    steps = sorted(pts)
    return [s * per_step for s in steps], [pts[s] for s in steps], steps, per_step


def smooth(y):
    out = []
    for i in range(len(y)):
        w = y[max(0, i - 1) : i + 2]
        out.append(sum(w) / len(w))
    return out


def value_at(xs, ys, x):
    """Linear interpolation; None outside the measured range."""
    for i in range(1, len(xs)):
        if xs[i - 1] <= x <= xs[i]:
            f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + f * (ys[i] - ys[i - 1])
    if xs and x == xs[0]:
        return ys[0]
    return None


def first_below(xs, ys, level):
    """First x where the curve reaches level (interpolated), None if never."""
    for i in range(len(xs)):
        if ys[i] <= level:
            if i == 0:
                return xs[0]
            f = (ys[i - 1] - level) / (ys[i - 1] - ys[i])
            return xs[i - 1] + f * (xs[i] - xs[i - 1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("png")
    ap.add_argument("--ar-ce", type=float, default=None, help="the AR source's cross-entropy on the same held-out rows")
    ap.add_argument("--budget-steps", type=int, default=2000, help="steps of the 1x budget")
    a = ap.parse_args()
    runs = {}
    for name in ("pretrained", "random"):
        runs[name] = load(os.path.join(a.runs, name))
    per_step = runs["pretrained"][3]
    budget = a.budget_steps * per_step

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, color in (("pretrained", "tab:blue"), ("random", "tab:orange")):
        x, y, _, _ = runs[name]
        ax.plot([v / 1e6 for v in x], y, color=color, alpha=0.35, lw=1)
        ax.plot([v / 1e6 for v in x], smooth(y), color=color, lw=2, label=name + " init (3-point mean)")
    for k in (1, 2, 5):
        ax.axvline(k * budget / 1e6, color="gray", ls=":", lw=1)
        ax.text(k * budget / 1e6, 0.02, " %dx budget" % k, va="bottom", color="gray", transform=ax.get_xaxis_transform())
    if a.ar_ce is not None:
        ax.axhline(a.ar_ce, color="black", ls="--", lw=1, label="AR source cross-entropy %.3f" % a.ar_ce)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("held-out NELBO (nats/token, upper bound on NLL)")
    ax.set_title("stories260K masked-diffusion conversion: held-out NELBO")
    lo = min(min(smooth(runs[n][1])) for n in runs)
    if a.ar_ce is not None:
        lo = min(lo, a.ar_ce)  # keep the AR line in view
    ax.set_ylim(max(0, lo - 0.3), min(max(max(runs[n][1]) for n in runs), lo + 4))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)

    print("| budget | tokens | pretrained NELBO | random NELBO | random tokens to reach pretrained | factor |")
    print("| --- | --- | --- | --- | --- | --- |")
    px, py, _, _ = runs["pretrained"]
    rx, ry, _, _ = runs["random"]
    sp, sr = smooth(py), smooth(ry)
    for k in (1, 2, 5):
        x = k * budget
        p, r = value_at(px, sp, x), value_at(rx, sr, x)
        reach, factor = "", ""
        if k in (1, 2) and p is not None:
            t = first_below(rx, sr, p)
            if t is None:
                reach = "not reached by %.2fM" % (rx[-1] / 1e6)
                factor = "> %.1f" % (rx[-1] / x)
            else:
                reach, factor = "%.2fM" % (t / 1e6), "%.1f" % (t / x)
        fmt = lambda v: "%.4f" % v if v is not None else "(not yet)"
        print("| %dx | %.2fM | %s | %s | %s | %s |" % (k, x / 1e6, fmt(p), fmt(r), reach, factor))
    last = {n: (runs[n][2][-1], runs[n][1][-1]) for n in runs}
    print()
    print("last eval: " + ", ".join("%s step %d NELBO %.4f" % (n, s, v) for n, (s, v) in last.items()))
    if a.ar_ce is not None:
        b = value_at(px, sp, px[-1])
        print("AR source cross-entropy %.4f; pretrained bound at its last eval %.4f (3-point mean; gap %.4f nats/token)" % (a.ar_ce, b, b - a.ar_ce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
