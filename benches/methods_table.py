#!/usr/bin/env python3
"""Runs the method comparison of docs/methods.md on the arithmetic word problems and prints it.

Every student row: the same 2 × 64 student, the same data order per seed, the same step budget,
the shipped teacher; `kd distill --config crates/kd-cli/configs/<method>.toml` with --steps,
--seed and --out set (and the overrides in EXTRA). Two protocols:

- scratch: `--steps` steps of the method from a fresh student (sft and kd);
- finetune: as GKD and MiniLLM do, every method starts from the SFT student of its seed
  trained for half the budget, and runs the other half (sft continues with sft).

Held-out: all 300 problems of eval.jsonl, greedy answers, exact match of the final number and
ROUGE-L.

    cargo build --release -p kd-cli
    python3 benches/methods_table.py --steps 1000 --seeds 0 1 2

Writes runs/methods/<method>-s<seed>/ and runs/methods/results.json; prints the markdown table.
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
KD = os.path.join(ROOT, "target", "release", "kd")
EVAL = ["--set", "train.eval_rouge_prompts=300", "--set", "train.eval_every=0",
        "--set", "train.checkpoint_every=0"]
# MiniLLM without the PT loss: on these 2 × 64 students the TinyStories LM loss of the example
# config dominates the update (see docs/methods.md).
EXTRA = {"minillm": ["--set", "method.pt_weight=0.0"]}


def final_eval(out):
    return records(out)[1][-1]


def rollout_speed(out):
    speeds = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train" and "rollout_tokens_per_s" in rec.get("extra", {}):
                speeds.append(rec["extra"]["rollout_tokens_per_s"])
    return statistics.median(speeds) if speeds else None


def run(args, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    start = time.time()
    p = subprocess.run([KD] + args + ["--out", out, "--quiet"], cwd=ROOT, capture_output=True,
                       text=True)
    secs = time.time() - start
    if p.returncode != 0:
        sys.exit(f"kd {' '.join(args)} failed:\n{p.stderr}")
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["scratch-sft", "scratch-kd", "sft", "kd",
                                                     "seqkd", "gkd", "minillm"])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "methods"))
    ap.add_argument("--table-only", action="store_true", help="print the table of results.json")
    a = ap.parse_args()
    results = {}
    path = os.path.join(a.out, "results.json")
    if os.path.exists(path):
        results = json.load(open(path))
    for method in [] if a.table_only else a.methods:
        for seed in a.seeds:
            key = f"{method}-s{seed}"
            if key in results:
                continue
            out = os.path.join(a.out, key)
            common = ["--seed", str(seed)] + EVAL + EXTRA.get(method.split("-")[-1], [])
            if method.startswith("scratch-"):
                name = method.split("-")[-1]
                secs = run(["distill", "--config", f"crates/kd-cli/configs/{name}.toml",
                            "--steps", str(a.steps)] + common, out)
            else:
                half = a.steps // 2
                sft_out = os.path.join(a.out, f"sft-half-s{seed}")
                if not os.path.exists(os.path.join(sft_out, "model")):
                    run(["distill", "--config", "crates/kd-cli/configs/sft.toml",
                         "--steps", str(half), "--seed", str(seed)] + EVAL, sft_out)
                secs = run(["distill", "--config", f"crates/kd-cli/configs/{method}.toml",
                            "--steps", str(a.steps - half), "--student",
                            os.path.join(sft_out, "model")] + common, out)
            e = final_eval(out)
            results[key] = {"method": method, "seed": seed, "exact_match": e["exact_match"],
                            "rouge_l": e["rouge_l"], "loss": e["loss"], "seconds": secs,
                            "rollout_tokens_per_s": rollout_speed(out)}
            print(f"{key}: exact match {e['exact_match']:.4f}  ROUGE-L {e['rouge_l']:.4f}  "
                  f"{secs:.0f}s", flush=True)
            os.makedirs(a.out, exist_ok=True)
            json.dump(results, open(path, "w"), indent=1)
    print("\n| method | exact match (mean ± sd) | ROUGE-L (mean ± sd) | held-out CE | "
          "wall time per run | rollout tokens/s |")
    print("|---|---|---|---|---|---|")
    for method in a.methods:
        rows = [r for r in results.values() if r["method"] == method]
        if not rows:
            continue
        em = [r["exact_match"] for r in rows]
        rl = [r["rouge_l"] for r in rows]
        sd = lambda x: statistics.stdev(x) if len(x) > 1 else 0.0
        secs = statistics.mean(r["seconds"] for r in rows)
        speeds = [r["rollout_tokens_per_s"] for r in rows if r["rollout_tokens_per_s"]]
        speed = f"{statistics.mean(speeds):,.0f}" if speeds else "—"
        ce = [r["loss"] for r in rows]
        print(f"| {method} (n={len(rows)}) | {statistics.mean(em):.3f} ± {sd(em):.3f} | "
              f"{statistics.mean(rl):.3f} ± {sd(rl):.3f} | {statistics.mean(ce):.4f} ± "
              f"{sd(ce):.4f} | {secs:.0f} s | {speed} |")


if __name__ == "__main__":
    main()
