#!/usr/bin/env python3
"""WHP on a shipped book to forget: the recipe end to end, and what each half of WHP does.

The book (crates/kd-cli/assets/whp_book/, synthetic: 400 TinyStories-style stories about the
invented wizard Hobbin, his friend Zuzu, his owl Blinkle, his village Glimmerwood, ...) is the
documents to forget. The steps, all with the release `kd` binary:

1. known:      the TinyStories model crates/kd-cli/assets/delta/teacher-base fine-tuned on the
               book (`kd train`): the model that knows the book, to unlearn (WHP's baseline).
2. reinforced: `known` fine-tuned further on the book (`kd train`): WHP's reinforced model.
3. Unlearning runs (`kd distill`, method whp, student = known, base teacher = known,
   teacher = reinforced, data = the book), from configs/whp_book.toml:
     reinforced only   alpha = 5, no anchors (WHP's reinforcement bootstrapping)
     anchors only      alpha = 0, anchored terms (the baseline reads the translated book)
     WHP               alpha = 5 with the anchored terms (both halves)
     revisit, K = 20   the causal-intervention teacher of "Revisiting Who's Harry Potter":
                       teacher = known reading the book with "Hobbin" replaced by each of the
                       20 names of names.txt (no baseline, no reinforced model)

Measured for the never-trained-on-the-book model (teacher-base), `known` and each run:
- familiarity: greedy continuations of the 40 probes (probes.jsonl; 27 phrasings from the book,
  13 paraphrases) that start with the book's answer ("Hobbin's best friend was" -> "Zuzu");
- the book's perplexity (kd eval over book.txt, blocks of 128);
- TinyStories perplexity: the last 60 kB of crates/kd-cli/assets/tinystories.txt (the model's
  general knowledge, which unlearning should keep).

Usage: cargo build --release -p kd-cli && python3 benches/whp_book.py [--steps 150] [--seeds 0]
(KD_BIN names another kd binary; the default is target/release/kd.)
Writes runs/whp_book/ (models, results.json, results.csv). About 10 minutes on 2 cores.
"""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.environ.get("KD_BIN", os.path.join(ROOT, "target", "release", "kd"))
BOOK = "crates/kd-cli/assets/whp_book"
TOK = "crates/kd-cli/assets"
BASE = "crates/kd-cli/assets/delta/teacher-base"
CONFIG = "crates/kd-cli/configs/whp_book.toml"
# arm: (alpha, anchors); the revisit's arm has its own settings
ARMS = {"reinforced only": (5.0, False), "anchors only": (0.0, True), "WHP": (5.0, True),
        "revisit, K = 20": (None, False)}
INTERVENTION = ('method.intervention={target="Hobbin", '
                'names_file="crates/kd-cli/assets/whp_book/names.txt"}')


def kd(args, log):
    with open(log, "w") as f:
        p = subprocess.run([KD] + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        sys.exit(f"kd {' '.join(args[:2])} failed: see {log}")
    with open(log) as f:
        return f.read()


def train(student, out, steps, lr, seed, data=f"{BOOK}/book.txt"):
    if os.path.exists(os.path.join(out, "model", "config.json")):
        return
    kd(["train", "--student", student, "--data", data, "--tokenizer", TOK,
        "--steps", str(steps), "--lr", str(lr), "--seed", str(seed), "--out", out,
        "--set", "data.seq_len=128", "--set", "train.batch_size=16",
        "--set", "train.warmup_steps=20", "--set", "train.eval_every=0",
        "--set", "train.checkpoint_every=0"], out + ".log")


def perplexity(model, data, log):
    text = kd(["eval", "--model", model, "--data", data, "--tokenizer", TOK, "--seq-len", "128",
               "--format", "text"], log)
    return float(re.findall(r"perplexity ([0-9.]+)", text)[-1])


def familiarity(model, probes, log):
    hits = {True: [], False: []}
    with open(log, "w") as f:
        for p in probes:
            out = subprocess.run([KD, "generate", "--model", model, "--tokenizer", TOK, "--quiet",
                                  "--prompt", p["prompt"], "--max-new-tokens", "8"],
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout
            cont = out.strip()
            cont = cont[len(p["prompt"]):] if cont.startswith(p["prompt"]) else cont
            hit = cont.strip().startswith(p["answer"])
            hits[p["in_book"]].append(hit)
            f.write(json.dumps({"prompt": p["prompt"], "answer": p["answer"], "got": cont,
                                "hit": hit}) + "\n")
    return {k: sum(v) / len(v) for k, v in hits.items()}


def evaluate(name, model, out, probes, tail):
    fam = familiarity(model, probes, os.path.join(out, f"{name}-probes.jsonl"))
    return {"model": name, "familiar_in_book": fam[True], "familiar_paraphrase": fam[False],
            "book_ppl": perplexity(model, f"{BOOK}/book.txt", os.path.join(out, f"{name}-book.log")),
            "tinystories_ppl": perplexity(model, tail, os.path.join(out, f"{name}-ts.log"))}


def summary(rows):
    """Mean ± sd over the seeds of each arm (sd 0 with one seed)."""
    print("\n| arm | seeds | familiar (book phrasings) | familiar (paraphrases) | book ppl | "
          "TinyStories ppl |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        runs = [r for r in rows if r.get("arm") == arm]
        if not runs:
            continue

        def ms(key, scale=1.0, digits=1):
            v = [scale * r[key] for r in runs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            return f"{statistics.mean(v):.{digits}f} ± {sd:.{digits}f}"
        print(f"| {arm} | {len(runs)} | {ms('familiar_in_book', 100)} % | "
              f"{ms('familiar_paraphrase', 100)} % | {ms('book_ppl', 1, 2)} | "
              f"{ms('tinystories_ppl', 1, 2)} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150, help="unlearning steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/whp_book")
    ap.add_argument("--mix-kb", type=int, default=0,
                    help="kB of TinyStories (from the start of the file, never its last 60 kB) "
                         "mixed, story by story, into the book for the `known` model")
    ap.add_argument("--known-steps", type=int, default=300)
    a = ap.parse_args()
    out = os.path.join(ROOT, a.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(ROOT, BOOK, "probes.jsonl")) as f:
        probes = [json.loads(line) for line in f if line.strip()]
    tail = os.path.join(out, "tinystories_tail.txt")
    with open(os.path.join(ROOT, TOK, "tinystories.txt"), encoding="utf-8") as f:
        text = f.read()
    with open(tail, "w", encoding="utf-8") as f:
        f.write(text[-60000:].split("\n\n", 1)[1])

    known, reinforced = os.path.join(out, "known"), os.path.join(out, "reinforced")
    corpus = f"{BOOK}/book.txt"
    if a.mix_kb > 0:
        import random
        with open(os.path.join(ROOT, BOOK, "book.txt")) as f:
            docs = [d for d in f.read().split("\n\n") if d.strip()]
        stories = text[: len(text) - 60000][: a.mix_kb * 1000].split("\n\n")[:-1]
        docs += [d.strip() for d in stories if d.strip()]
        random.Random(0).shuffle(docs)
        corpus = os.path.join(out, "known_corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
    train(BASE, known, a.known_steps, 1e-3, 0, corpus)
    train(os.path.join(known, "model"), reinforced, 150, 1e-3, 0)
    rows = [evaluate("never saw the book (teacher-base)", BASE, out, probes, tail),
            evaluate("knows the book (known)", os.path.join(known, "model"), out, probes, tail),
            evaluate("reinforced", os.path.join(reinforced, "model"), out, probes, tail)]
    # The example config without its last section, [method.anchors].
    with open(os.path.join(ROOT, CONFIG)) as f:
        no_anchors = f.read().split("[method.anchors]")[0]
    plain_config = os.path.join(out, "whp_book_no_anchors.toml")
    with open(plain_config, "w") as f:
        f.write(no_anchors)
    # ... and without its baseline, for the intervention teacher.
    iv_config = os.path.join(out, "whp_book_intervention.toml")
    with open(iv_config, "w") as f:
        f.write(re.sub(r"\[base_teacher\][^\[]*", "", no_anchors))
    for arm, (alpha, anchors) in ARMS.items():
        for seed in a.seeds:
            run = os.path.join(out, f"{arm.replace(' ', '_')}-s{seed}")
            common = ["--student", os.path.join(known, "model"), "--steps", str(a.steps),
                      "--seed", str(seed), "--out", run]
            if alpha is None:
                args = ["distill", "--config", iv_config, "--teacher",
                        os.path.join(known, "model"), "--set", INTERVENTION] + common
            else:
                args = ["distill", "--config", CONFIG if anchors else plain_config,
                        "--teacher", os.path.join(reinforced, "model"),
                        "--base-teacher", os.path.join(known, "model"),
                        "--set", f"method.alpha={alpha}"] + common
            if not os.path.exists(os.path.join(run, "model", "config.json")):
                kd(args, run + ".log")
            r = evaluate(f"{arm} s{seed}", os.path.join(run, "model"), out, probes, tail)
            r["arm"], r["seed"] = arm, seed
            rows.append(r)
            print(json.dumps(r), flush=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    keys = ["model", "familiar_in_book", "familiar_paraphrase", "book_ppl", "tinystories_ppl"]
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary(rows)
    print("\n| model | familiar (book phrasings) | familiar (paraphrases) | book ppl | TinyStories ppl |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['familiar_in_book']:.0f} % | "
              f"{100 * r['familiar_paraphrase']:.0f} % | {r['book_ppl']:.2f} | "
              f"{r['tinystories_ppl']:.2f} |")


if __name__ == "__main__":
    main()
