#!/usr/bin/env python3
"""Runs the online-vs-offline rows of docs/offline.md ("Training from stored logits") and prints them.

Same student, data and budget in every row: the 2 x 64 LLaMA student of
crates/kd-cli/configs/distill_tinystories.toml from a fresh initialisation, `--steps` steps of
16 x 64 tokens on the shipped TinyStories slice; the teacher is the 4 x 128 teacher of the README's
demo, trained here by crates/kd-cli/configs/train_tinystories.toml (400 steps) into
runs/offline/teacher unless it is there already. Rows:

- online dense:   `kd distill` with forward KL over the full vocabulary (the teacher runs every step);
- online top-k:   the teacher runs every step, cut to its top k (`method.teacher_top_k.k = k`,
                  tail_bucket convention);
- offline top-k:  `kd precompute-teacher --top-k k` once, then `kd distill --teacher-logits DIR`
                  (no teacher loaded).

Reported: median seconds per step (over all steps), held-out perplexity at the end (the last 10 %
of the slice), and for offline rows the one-time precompute seconds and the file's bytes/token.

    cargo build --release -p kd-cli
    python3 benches/offline_table.py --steps 300 --seeds 0 1 2   # KD_BIN=path/to/kd for another build
"""

import argparse
import json
import os
import statistics
import sys

from kdrun import ROOT, records, run

CONFIG = "crates/kd-cli/configs/distill_tinystories.toml"
TEACHER_CONFIG = "crates/kd-cli/configs/train_tinystories.toml"
COMMON = ["--set", "train.eval_every=0", "--set", "train.checkpoint_every=0",
          "--set", "train.log_every=50", "--quiet"]


def summary(out):
    steps, evals = records(out)
    secs = [s["tokens"] / s["tokens_per_s"] for s in steps if s.get("tokens_per_s")]
    return statistics.median(secs), evals[-1]["perplexity"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--out", default="runs/offline")
    a = ap.parse_args()
    os.makedirs(os.path.join(ROOT, a.out), exist_ok=True)
    TEACHER = os.path.join(a.out, "teacher", "model")
    if not os.path.exists(os.path.join(ROOT, TEACHER, "config.json")):
        run(["train", "--config", TEACHER_CONFIG, "--out", os.path.join(a.out, "teacher"), "--quiet"])
    teacher = ["--teacher", TEACHER]
    pre = {}
    for k in a.ks:
        d = os.path.join(a.out, f"logits-k{k}")
        said = run(["precompute-teacher", "--config", CONFIG, "--teacher", TEACHER, "--top-k", str(k),
                    "--out", d, "--quiet"])
        size = sum(os.path.getsize(os.path.join(ROOT, d, f)) for f in os.listdir(os.path.join(ROOT, d)))
        positions = int(said.split(" positions")[0].split()[-1])
        rate = float(said.split(" tokens/s")[0].split()[-1])
        pre[k] = {"bytes_per_token": size / positions, "seconds": positions / rate, "said": said.strip()}
        print(said.strip(), file=sys.stderr)
    rows = [("online dense (forward KL)", None, teacher + ["--loss", "forward_kl"])]
    for k in a.ks:
        rows.append((f"online top-{k}", k, teacher + ["--loss", "forward_kl",
                                                     "--set", f"method.teacher_top_k={{k = {k}}}"]))
        rows.append((f"offline top-{k}", k, ["--teacher-logits", os.path.join(a.out, f"logits-k{k}"),
                                            "--loss", "forward_kl"]))
    results = []
    for name, k, extra in rows:
        per_seed = []
        for seed in a.seeds:
            out = os.path.join(a.out, name.replace(" ", "-").replace("(", "").replace(")", "") + f"-s{seed}")
            run(["distill", "--config", CONFIG, "--steps", str(a.steps), "--seed", str(seed),
                 "--out", out] + COMMON + extra)
            per_seed.append(summary(out))
            print(name, seed, per_seed[-1], file=sys.stderr)
        results.append({"row": name, "k": k, "offline": name.startswith("offline"),
                        "s_per_step": [s for s, _ in per_seed], "ppl": [p for _, p in per_seed]})
    with open(os.path.join(ROOT, a.out, "results.json"), "w") as f:
        json.dump({"steps": a.steps, "seeds": a.seeds, "precompute": pre, "rows": results}, f, indent=1)
    print(f"| row | s/step (median) | held-out ppl after {a.steps} steps | precompute (once) | bytes/token |")
    print("|---|---|---|---|---|")
    for r in results:
        ppl = r["ppl"]
        p = f"{statistics.mean(ppl):.2f}" + (f" ± {statistics.stdev(ppl):.2f}" if len(ppl) > 1 else "")
        s = statistics.median(r["s_per_step"])
        extra = "| — | — |"
        if r["offline"]:
            q = pre[r["k"]]
            extra = f"| {q['seconds']:.1f} s | {q['bytes_per_token']:.1f} |"
        print(f"| {r['row']} | {s * 1000:.1f} ms | {p} {extra}")


if __name__ == "__main__":
    main()
