#!/usr/bin/env python3
"""Runs the feature-distillation rows of docs/methods.md ("Feature distillation") and prints them.

Same protocol as benches/methods_table.py's from-scratch rows: the 2 x 64 student from a fresh
initialisation, `--steps` steps, the shipped 4 x 128 teacher, the example configs as they are,
greedy answers to all 300 held-out problems at the end. Rows:

- kd:             crates/kd-cli/configs/kd.toml (forward KL alone);
- feature-mse:    crates/kd-cli/configs/feature.toml (forward KL + MSE on standardised teacher
                  hidden states at TinyBERT's uniform layer pairs, learned 64 -> 128 projections);
- feature-cosine: the same with `method.loss = "cosine"`.

    cargo build --release -p kd-cli
    python3 benches/feature_table.py --steps 1000 --seeds 0 1 2

Writes runs/feature/<row>-s<seed>/ and runs/feature/results.json; prints the markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from kdrun import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = ["--set", "train.eval_rouge_prompts=300", "--set", "train.eval_every=0",
        "--set", "train.checkpoint_every=0"]
ROWS = {
    "kd": ["--config", "crates/kd-cli/configs/kd.toml"],
    "feature-mse": ["--config", "crates/kd-cli/configs/feature.toml"],
    "feature-cosine": ["--config", "crates/kd-cli/configs/feature.toml",
                       "--set", "method.loss=\"cosine\""],
}


def final_eval(out):
    return records(out)[1][-1]


def last_train(out):
    last = None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                last = rec
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--kd", default=os.path.join(ROOT, "target", "release", "kd"),
                    help="the kd binary")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "feature"))
    ap.add_argument("--table-only", action="store_true", help="print the table of results.json")
    a = ap.parse_args()
    path = os.path.join(a.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    for row in [] if a.table_only else a.rows:
        for seed in a.seeds:
            key = f"{row}-s{seed}"
            if key in results:
                continue
            out = os.path.join(a.out, key)
            args = ["distill"] + ROWS[row] + ["--steps", str(a.steps), "--seed", str(seed)] + EVAL
            start = time.time()
            p = subprocess.run([a.kd] + args + ["--out", out, "--quiet"], cwd=ROOT,
                               capture_output=True, text=True)
            secs = time.time() - start
            if p.returncode != 0:
                sys.exit(f"kd {' '.join(args)} failed:\n{p.stderr}")
            e, t = final_eval(out), last_train(out)
            results[key] = {"row": row, "seed": seed, "exact_match": e["exact_match"],
                            "rouge_l": e["rouge_l"], "loss": e["loss"], "seconds": secs,
                            "feature_loss": t.get("extra", {}).get("feature_loss")}
            print(f"{key}: exact match {e['exact_match']:.4f}  ROUGE-L {e['rouge_l']:.4f}  "
                  f"CE {e['loss']:.4f}  {secs:.0f}s", flush=True)
            os.makedirs(a.out, exist_ok=True)
            json.dump(results, open(path, "w"), indent=1)
    print("\n| row | exact match (mean ± sd) | ROUGE-L (mean ± sd) | held-out CE | "
          "final feature loss | wall time per run |")
    print("|---|---|---|---|---|---|")
    sd = lambda x: statistics.stdev(x) if len(x) > 1 else 0.0
    for row in a.rows:
        rows = [r for r in results.values() if r["row"] == row]
        if not rows:
            continue
        em = [r["exact_match"] for r in rows]
        rl = [r["rouge_l"] for r in rows]
        ce = [r["loss"] for r in rows]
        fl = [r["feature_loss"] for r in rows if r["feature_loss"] is not None]
        feat = f"{statistics.mean(fl):.3f}" if fl else "—"
        secs = statistics.mean(r["seconds"] for r in rows)
        seeds = ", ".join(str(r["seed"]) for r in rows)
        print(f"| {row} (seeds {seeds}) | {statistics.mean(em):.3f} ± {sd(em):.3f} | "
              f"{statistics.mean(rl):.3f} ± {sd(rl):.3f} | {statistics.mean(ce):.4f} ± "
              f"{sd(ce):.4f} | {feat} | {secs:.0f} s |")


if __name__ == "__main__":
    main()
