#!/usr/bin/env python3
"""Runs the multi-teacher rows of docs/offline.md ("Several teachers") and prints them.

Two teachers of the README demo's shape (4 x 128), trained by
crates/kd-cli/configs/train_tinystories.toml with seeds 0 and 1 into runs/offline/teacher and
runs/offline/teacher-b (reused when there); the same 2 x 64 student and budget as
benches/offline_table.py (`--steps` steps of 16 x 64 tokens, forward KL). Rows: each teacher
alone, both at equal weights averaged at the logit level and at the probability level (online),
and both stored at k = 32 (probability level). Reported: the held-out perplexity of each teacher
and of each student at the end.

    cargo build --release -p kd-cli
    python3 benches/ensemble_table.py --steps 300 --seeds 0 1 2   # KD_BIN=path/to/kd for another build
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
          "--set", "train.log_every=50", "--quiet", "--loss", "forward_kl"]


def final_ppl(out):
    return records(out)[1][-1]["perplexity"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/offline")
    a = ap.parse_args()
    teachers = {}
    for name, seed in [("teacher", 0), ("teacher-b", 1)]:
        d = os.path.join(a.out, name)
        if not os.path.exists(os.path.join(ROOT, d, "model", "config.json")):
            run(["train", "--config", TEACHER_CONFIG, "--out", d, "--seed", str(seed), "--quiet"])
        teachers[name] = (os.path.join(d, "model"), final_ppl(d))
    (ta, pa), (tb, pb) = teachers["teacher"], teachers["teacher-b"]
    for name, t in [("a", ta), ("b", tb)]:
        run(["precompute-teacher", "--config", CONFIG, "--teacher", t, "--top-k", "32",
             "--out", os.path.join(a.out, f"ens-logits-{name}"), "--quiet"])
    cfg = os.path.join(ROOT, a.out, "ensemble.toml")

    def ensemble_config(section):
        text = open(os.path.join(ROOT, CONFIG)).read()
        with open(cfg, "w") as f:
            f.write(text + "\n[ensemble]\n" + section + "\n")
        return cfg

    rows = [
        (f"teacher A alone (ppl {pa:.2f})", CONFIG, ["--teacher", ta]),
        (f"teacher B alone (ppl {pb:.2f})", CONFIG, ["--teacher", tb]),
        ("A + B, logit level", None, ["--teacher", ta], f'teachers = ["{tb}"]\naverage = "logits"'),
        ("A + B, probability level", None, ["--teacher", ta], f'teachers = ["{tb}"]\naverage = "probs"'),
        ("A + B stored (k = 32), probability level", None,
         ["--teacher-logits", os.path.join(a.out, "ens-logits-a")],
         f'teacher_logits = ["{os.path.join(a.out, "ens-logits-b")}"]'),
    ]
    results = []
    for row in rows:
        name, config, extra = row[0], row[1], row[2]
        ppls = []
        for seed in a.seeds:
            c = config if config else ensemble_config(row[3])
            out = os.path.join(a.out, "ens-" + str(len(results)) + f"-s{seed}")
            run(["distill", "--config", c, "--steps", str(a.steps), "--seed", str(seed), "--out", out]
                + COMMON + extra)
            ppls.append(final_ppl(out))
            print(name, seed, ppls[-1], file=sys.stderr)
        results.append({"row": name, "ppl": ppls})
    with open(os.path.join(ROOT, a.out, "ensemble.json"), "w") as f:
        json.dump({"steps": a.steps, "seeds": a.seeds, "teachers": teachers, "rows": results}, f, indent=1)
    print(f"| student taught by | held-out ppl after {a.steps} steps |")
    print("|---|---|")
    for r in results:
        p = r["ppl"]
        sd = f" ± {statistics.stdev(p):.2f}" if len(p) > 1 else ""
        print(f"| {r['row']} | {statistics.mean(p):.2f}{sd} |")


if __name__ == "__main__":
    main()
