#!/usr/bin/env python3
"""Multi-step arithmetic word problems with worked rationales, for comparing distillation methods.

Each problem: a person starts with some objects, then 2 or 3 events add or remove some; the
question asks how many are left. The response works it out step by step and ends with
"The answer is N." Names, objects, verbs and phrasings vary; numbers stay small (every
intermediate count in 0..MAX_COUNT) so that a tiny model can learn the arithmetic.

    python3 crates/kd-cli/assets/arithmetic/make_arithmetic.py            # writes train/eval
    python3 make_arithmetic.py --train 4000 --eval 300 --seed 1 --out DIR

Fields of each JSONL line: instruction (the question), response (rationale + answer),
rationale (the worked steps), label (the final number, as text). Train and held-out splits use
different seeds, and no held-out question appears in the training set.
"""

import argparse
import json
import os
import random

NAMES = [("Tom", "he"), ("Lily", "she"), ("Ben", "he"), ("Sue", "she"), ("Max", "he"),
         ("Mia", "she"), ("Sam", "he"), ("Anna", "she"), ("Tim", "he"), ("Lucy", "she"),
         ("Jack", "he"), ("Emma", "she")]
OBJECTS = ["apples", "balls", "cookies", "toys", "flowers", "cars", "books", "cakes",
           "rocks", "stars", "hats", "birds"]
GAIN = ["found {n} more", "got {n} more", "picked {n} more", "made {n} more", "bought {n} more"]
LOSS = ["gave {n} to {friend}", "lost {n}", "ate {n}", "gave away {n}", "sold {n}"]
START = ["{name} had {n} {obj}.", "{name} has {n} {obj}.", "There were {n} {obj} with {name}."]
QUESTION = ["How many {obj} does {name} have now?", "How many {obj} are left?",
            "How many {obj} does {name} have?"]
MAX_COUNT = 20


def problem(rng):
    name, pron = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    obj = rng.choice(OBJECTS)
    count = rng.randint(2, 9)
    sentences = [rng.choice(START).format(name=name, n=count, obj=obj)]
    steps = []
    for k in range(rng.choice([2, 2, 3])):
        subject = pron.capitalize() if k == 0 else rng.choice([pron.capitalize(), "Then " + pron])
        gain = count < 3 or (count < MAX_COUNT - 1 and rng.random() < 0.5)
        if gain:
            n = rng.randint(1, min(9, MAX_COUNT - count))
            verb = rng.choice(GAIN).format(n=n)
            steps.append(f"{count} + {n} = {count + n}.")
            count += n
        else:
            n = rng.randint(1, min(9, count))
            verb = rng.choice(LOSS).format(n=n, friend=friend)
            steps.append(f"{count} - {n} = {count - n}.")
            count -= n
        sentences.append(f"{subject} {verb}.")
    sentences.append(rng.choice(QUESTION).format(obj=obj, name=name))
    rationale = " ".join(steps)
    return {
        "instruction": " ".join(sentences),
        "response": f"{rationale} The answer is {count}.",
        "rationale": rationale,
        "label": str(count),
    }


def generate(n, seed, exclude=frozenset()):
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        p = problem(rng)
        if p["instruction"] in seen:
            continue
        seen.add(p["instruction"])
        rows.append(p)
    return rows


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1, help="train seed; held-out uses seed + 1000")
    ap.add_argument("--out", default=here)
    a = ap.parse_args()
    held_out = generate(a.eval, a.seed + 1000)
    train = generate(a.train, a.seed, exclude={r["instruction"] for r in held_out})
    write(os.path.join(a.out, "train.jsonl"), train)
    write(os.path.join(a.out, "eval.jsonl"), held_out)
    print(f"{len(train)} train, {len(held_out)} held-out problems in {a.out}")


if __name__ == "__main__":
    main()
