#!/usr/bin/env python3
"""Runs the distilling step-by-step grid of docs/methods.md on the arithmetic word problems.

Variants (all `kd distill --config crates/kd-cli/configs/step_by_step.toml`, the label task
scored on the 300 held-out problems, greedy, exact match of the number):

- sft:     labels from the data, no rationale task (λ = 0): standard fine-tuning;
- distill: labels from the teacher, no rationale task (λ = 0): standard distillation;
- sbs:     labels and rationales from the teacher, λ = 1: distilling step-by-step.

Each at 12.5 / 25 / 50 / 100 % of the training set (`method.train_fraction`: the first
ceil(f · 4000) rows of train.jsonl) with the 2 × 64 student, plus the two-size check at 100 %:
a 2 × 32 student with rationales (sbs) and without (distill). The same step budget, seed and
batch size everywhere; the teacher's rationales are generated once (k = 0 shots) into
runs/step_by_step_grid/rationales.jsonl and reused by every run.

    cargo build --release -p kd-cli
    python3 benches/step_by_step_grid.py --steps 600 --seed 0

Writes runs/step_by_step_grid/<variant>-<size>-<pct>/ and results.json there, the points to
docs/step_by_step_data_efficiency.csv and the curve to docs/step_by_step_data_efficiency.png
(`kd plot --csv`); prints the markdown table. The kd binary: $KD, else target/release/kd.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from kdrun import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.environ.get("KD", os.path.join(ROOT, "target", "release", "kd"))
CONFIG = "crates/kd-cli/configs/step_by_step.toml"
VARIANTS = {
    "sft": ["--set", "method.labels=\"data\"", "--set", "method.rationales=\"data\"",
            "--set", "method.rationale_weight=0.0"],
    "distill": ["--set", "method.labels=\"teacher\"", "--set", "method.rationales=\"teacher\"",
                "--set", "method.rationale_weight=0.0"],
    "sbs": ["--set", "method.labels=\"teacher\"", "--set", "method.rationales=\"teacher\"",
            "--set", "method.rationale_weight=1.0"],
    # the paper's setting with human labels: the data's labels, the teacher's rationales
    "sbs-gt": ["--set", "method.labels=\"data\"", "--set", "method.rationales=\"teacher\"",
               "--set", "method.rationale_weight=1.0"],
}
SIZES = {
    "2x64": [],
    "2x32": ["--set", "student.init.hidden_size=32", "--set", "student.init.intermediate_size=96"],
}
FRACTIONS = [1.0, 0.5, 0.25, 0.125]


def final_eval(out):
    return records(out)[1][-1]


def params(out):
    with open(os.path.join(out, "student_config.json")) as f:
        c = json.load(f)
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    # tied embeddings; per layer: q, k, v, o (h × h each), gate/up/down (h × i each), 2 norms;
    # the final norm
    return v * h + n * (4 * h * h + 3 * h * i + 2 * h) + h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "step_by_step_grid"))
    ap.add_argument("--table-only", action="store_true", help="print the table of results.json")
    ap.add_argument("--runs", nargs="+", metavar="VARIANT:SIZE:PCT",
                    help="only these runs (e.g. sbs-gt:2x64:100), at --seed, added to results.json")
    a = ap.parse_args()
    path = os.path.join(a.out, "results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    runs = [(v, "2x64", f) for f in FRACTIONS for v in ["sft", "distill", "sbs"]]
    runs[3:3] = [("sbs", "2x32", 1.0), ("distill", "2x32", 1.0)]  # right after the 100 % runs
    if a.runs:
        runs = [(v, size, float(p) / 100) for v, size, p in (r.split(":") for r in a.runs)]
    suffix = f"-s{a.seed}" if a.seed else ""
    rationales = os.path.join(a.out, "rationales.jsonl")
    for variant, size, frac in runs:
        name = f"{variant}-{size}-{frac * 100:g}{suffix}"
        if a.table_only or name in results:
            continue
        out = os.path.join(a.out, name)
        args = [KD, "distill", "--config", CONFIG, "--out", out, "--quiet",
                "--steps", str(a.steps), "--seed", str(a.seed),
                "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0",
                "--set", f"method.train_fraction={frac}",
                "--set", f"method.rationale_file=\"{rationales}\""]
        args += VARIANTS[variant] + SIZES[size]
        start = time.time()
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        secs = time.time() - start
        if p.returncode != 0:
            sys.exit(f"{name} failed:\n{p.stderr}")
        e = final_eval(out)
        results[name] = {"variant": variant, "size": size, "fraction": frac, "seed": a.seed,
                         "params": params(out), "exact_match": e["exact_match"],
                         "loss": e["loss"], "secs": round(secs, 1)}
        print(f"{name}: exact match {e['exact_match']:.3f}, held-out label loss "
              f"{e['loss']:.4f} ({secs:.0f}s)", flush=True)
        os.makedirs(a.out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n| variant | student | " + " | ".join(f"{f * 100:g} %" for f in FRACTIONS[::-1]) + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    rows = [(v, "2x64") for v in ["sft", "distill", "sbs"]] + [("sbs", "2x32"), ("distill", "2x32")]
    csv = ["series,x,y"]
    for v, size in rows:
        cells = []
        for f in FRACTIONS[::-1]:
            r = results.get(f"{v}-{size}-{f * 100:g}")
            cells.append(f"{100 * r['exact_match']:.1f}" if r else "—")
            if r and size == "2x64":
                csv.append(f"{v} (2x64),{f * 100:g},{100 * r['exact_match']:.2f}")
        p = next((r["params"] for k, r in results.items() if r["size"] == size), 0)
        print(f"| {v} | {size} ({p:,}) | " + " | ".join(cells) + " |")
    print("\nEvery run:")
    for k, r in sorted(results.items()):
        print(f"- {k}: exact match {100 * r['exact_match']:.1f} %, label loss {r['loss']:.4f}, "
              f"{r['secs']:.0f} s")
    if a.table_only or a.runs:
        return
    docs = os.path.join(ROOT, "docs")
    with open(os.path.join(docs, "step_by_step_data_efficiency.csv"), "w") as f:
        f.write("\n".join(csv) + "\n")
    subprocess.run([KD, "plot", "--quiet", "--csv",
                    os.path.join(docs, "step_by_step_data_efficiency.csv"),
                    "--x-label", "% of the training set (4,000 problems)",
                    "--y-label", "held-out exact match (%)",
                    "--title", f"distilling step-by-step, 2x64 student, {a.steps} steps",
                    "--out", os.path.join(docs, "step_by_step_data_efficiency.png")],
                   cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
