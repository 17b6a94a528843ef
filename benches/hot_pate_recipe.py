#!/usr/bin/env python3
"""Hot PATE's recipe end to end on the arithmetic word problems, measured.

The 4,000 training problems (crates/kd-cli/assets/arithmetic/train.jsonl) are split: the first
3,000 are the private data, the last 1,000 the public prompts (their answers are never used,
except by the non-private reference student below).

1. `kd partition` splits the private problems into T = 4 disjoint parts (seeded).
2. One teacher per part: the TinyStories model crates/kd-cli/assets/delta/teacher-base (4 x 128)
   fine-tuned on its part alone (`kd train`, 400 steps).
3. `kd hot-pate-label`: the 4 teachers answer the public prompts token by token through Hot
   PATE's coordinated aggregation (homogeneous rule, Gaussian noise sigma 1, margin 0 and 1.5;
   the privacy spent is reported), and, as a reference without privacy, through the argmax of their votes.
4. A 2 x 64 student is trained from scratch on the released answers (`kd train`, 1,000 steps).

Reported: each teacher's and each student's exact match on the 300 held-out problems
(eval.jsonl, greedy, `kd eval --exact-match`), the tokens released, and epsilon at delta. The
reference student is trained on the public prompts' true answers (no privacy).

Usage: cargo build --release -p kd-cli && python3 benches/hot_pate_recipe.py
(KD_BIN names another kd binary.) Writes runs/hot_pate/. About 45 minutes on 2 cores (each
labelling pass, 1,000 prompts and some 39,000 queries of 4 teachers, takes about 10).
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.environ.get("KD_BIN", os.path.join(ROOT, "target", "release", "kd"))
A = "crates/kd-cli/assets"
OUT = os.path.join(ROOT, "runs", "hot_pate")
T = 4
SETTINGS = {  # name: hot-pate-label arguments
    "argmax of the votes (no privacy)": ["--rule", "argmax"],
    "homogeneous, sigma 1": ["--rule", "homogeneous", "--noise-scale", "1"],
    "homogeneous, sigma 1, margin 1.5": ["--rule", "homogeneous", "--noise-scale", "1",
                                          "--margin", "1.5"],
}


def kd(args, log):
    with open(log, "w") as f:
        p = subprocess.run([KD] + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    text = open(log).read()
    if p.returncode != 0:
        sys.exit(f"kd {args[0]} failed: see {log}")
    return text


def exact_match(model, log):
    text = kd(["eval", "--model", model, "--data", f"{A}/arithmetic/eval.jsonl", "--tokenizer", A,
               "--rouge", "300", "--max-new-tokens", "48", "--exact-match", "--template", "plain"],
              log)
    return float(re.findall(r"exact-match accuracy of the final number: ([0-9.]+)", text)[-1])


def train(data, out, student_args, steps):
    if not os.path.exists(os.path.join(out, "model", "config.json")):
        kd(["train", "--config", "crates/kd-cli/configs/sft.toml", "--data", data, "--steps",
            str(steps), "--out", out, "--set", "train.eval_every=0",
            "--set", "train.checkpoint_every=0", "--set", "train.eval_rouge_prompts=0",
            "--seed", "0"] + student_args, out + ".log")
    return os.path.join(out, "model")


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(ROOT, A, "arithmetic", "train.jsonl")) as f:
        rows = [line for line in f if line.strip()]
    private, public = os.path.join(OUT, "private.jsonl"), os.path.join(OUT, "public.jsonl")
    with open(private, "w") as f:
        f.writelines(rows[:3000])
    with open(public, "w") as f:
        f.writelines(rows[3000:])
    kd(["partition", "--data", private, "--parts", str(T), "--out", os.path.join(OUT, "parts")],
       os.path.join(OUT, "partition.log"))
    teachers = []
    results = {}
    for i in range(T):
        m = train(os.path.join(OUT, "parts", f"part-{i}.jsonl"), os.path.join(OUT, f"teacher-{i}"),
                  ["--student", f"{A}/delta/teacher-base", "--lr", "1e-3"], 400)
        teachers.append(m)
        results[f"teacher {i}"] = {"exact_match": exact_match(m, os.path.join(OUT, f"teacher-{i}-eval.log"))}
        print(f"teacher {i}", results[f"teacher {i}"], flush=True)
    ref = train(public, os.path.join(OUT, "student-true-answers"), [], 1000)
    results["student on the true answers (no privacy)"] = {
        "exact_match": exact_match(ref, os.path.join(OUT, "student-true-eval.log"))}
    print(results, flush=True)
    for name, extra in SETTINGS.items():
        tag = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        labelled = os.path.join(OUT, f"labelled-{tag}.jsonl")
        if not os.path.exists(labelled.replace(".jsonl", ".provenance.json")):
            kd(["hot-pate-label", "--teachers", ",".join(teachers), "--prompts", public,
                "--out", labelled, "--tokenizer", A, "--max-new-tokens", "48",
                "--delta", "1e-6", "--template", "plain"] + extra,
               os.path.join(OUT, f"label-{tag}.log"))
        with open(labelled.replace(".jsonl", ".provenance.json")) as f:
            prov = json.load(f)
        m = train(labelled, os.path.join(OUT, f"student-{tag}"), [], 1000)
        results[f"student on Hot PATE answers, {name}"] = {
            "exact_match": exact_match(m, os.path.join(OUT, f"student-{tag}-eval.log")),
            "provenance": {k: v for k, v in prov.items() if k != "teachers"}}
        print(name, results[f"student on Hot PATE answers, {name}"], flush=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
