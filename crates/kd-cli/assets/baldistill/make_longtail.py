#!/usr/bin/env python3
"""A long-tailed, five-domain arithmetic word-problem set for BalDistill (kd baldistill).

Domains, from head to tail: `change` (the problems of ../arithmetic: a count changed by 2 or 3
events), `compare` (how many more), `total` (two counts together), `groups` (equal groups:
multiplication) and `share` (sharing equally: division). Every response ends with
"The answer is N."; numbers stay small so that a tiny model can learn them.

    python3 crates/kd-cli/assets/baldistill/make_longtail.py          # rewrites the files here
    python3 make_longtail.py --seed 7 --out DIR

Files:
  pool.jsonl           the long-tailed pool a student is distilled from: domain, instruction,
                       label (no rationale: the teacher writes those). Counts per domain: POOL.
  eval.jsonl           held-out, balanced: EVAL_PER_DOMAIN problems per domain, with responses.
  dev.jsonl            a small balanced validation set (DEV_PER_DOMAIN per domain), read only by
                       the adaptive policy, which gives weaker domains more of a stage's budget.
  teacher_train.jsonl  the teacher's balanced training set: per domain TEACHER_SOLVE problems
                       with worked responses and TEACHER_WRITE "write a problem" rows whose
                       response is a new problem of that domain (what lets the teacher
                       synthesise tail examples).
No question appears in two files.
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "arithmetic"))
from make_arithmetic import NAMES, OBJECTS, problem as change_problem, write  # noqa: E402

POOL = {"change": 2000, "compare": 500, "total": 120, "groups": 30, "share": 8}
EVAL_PER_DOMAIN = 60
DEV_PER_DOMAIN = 20
TEACHER_SOLVE = 800
TEACHER_WRITE = 300
# The instruction that asks the teacher for a new problem of a domain (also in baldistill.toml).
WRITE_PROMPT = {
    "change": "Write a word problem where a count goes up and down.",
    "compare": "Write a word problem that compares two counts.",
    "total": "Write a word problem that puts two counts together.",
    "groups": "Write a word problem about equal groups.",
    "share": "Write a word problem about sharing equally.",
}
CONTAINERS = ["bags", "boxes", "baskets", "jars", "bowls"]


def two_people(rng):
    (a, _), (b, _) = rng.sample(NAMES, 2)
    return a, b, rng.choice(OBJECTS)


def row(domain, instruction, steps, answer):
    rationale = " ".join(steps)
    return {"domain": domain, "instruction": instruction,
            "response": f"{rationale} The answer is {answer}.", "rationale": rationale,
            "label": str(answer)}


def compare(rng):
    a, b, obj = two_people(rng)
    x = rng.randint(3, 20)
    y = rng.randint(1, x - 1)
    q = rng.choice(["How many more {obj} does {a} have than {b}?",
                    "How many more {obj} does {a} have?"]).format(obj=obj, a=a, b=b)
    return row("compare", f"{a} has {x} {obj}. {b} has {y} {obj}. {q}", [f"{x} - {y} = {x - y}."], x - y)


def total(rng):
    a, b, obj = two_people(rng)
    x, y = rng.randint(1, 10), rng.randint(1, 10)
    q = rng.choice(["How many {obj} do they have together?",
                    "How many {obj} do they have in all?"]).format(obj=obj)
    return row("total", f"{a} has {x} {obj}. {b} has {y} {obj}. {q}", [f"{x} + {y} = {x + y}."], x + y)


def groups(rng):
    a, _, obj = two_people(rng)
    g, k = rng.randint(2, 5), rng.randint(2, 5)
    c = rng.choice(CONTAINERS)
    return row("groups", f"{a} has {g} {c}. Each of them has {k} {obj}. How many {obj} does {a} have?",
               [f"{g} * {k} = {g * k}."], g * k)


def share(rng):
    a, _, obj = two_people(rng)
    g, k = rng.randint(2, 5), rng.randint(2, 5)
    n = g * k
    return row("share", f"{a} shares {n} {obj} equally among {g} friends. How many {obj} does each friend get?",
               [f"{n} / {g} = {k}."], k)


def change(rng):
    r = change_problem(rng)
    return {"domain": "change", **r}


MAKERS = {"change": change, "compare": compare, "total": total, "groups": groups, "share": share}


def draw(domain, n, rng, seen):
    rows = []
    while len(rows) < n:
        r = MAKERS[domain](rng)
        if r["instruction"] in seen:
            continue
        seen.add(r["instruction"])
        rows.append(r)
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=here)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    seen = set()
    held_out = [r for d in MAKERS for r in draw(d, EVAL_PER_DOMAIN, rng, seen)]
    dev = [r for d in MAKERS for r in draw(d, DEV_PER_DOMAIN, rng, seen)]
    pool = [r for d in MAKERS for r in draw(d, POOL[d], rng, seen)]
    rng.shuffle(pool)
    pool = [{"domain": r["domain"], "instruction": r["instruction"], "label": r["label"]} for r in pool]
    teacher = []
    for d in MAKERS:
        teacher += draw(d, TEACHER_SOLVE, rng, seen)
        for r in draw(d, TEACHER_WRITE, rng, seen):
            teacher.append({"domain": d, "instruction": WRITE_PROMPT[d], "response": r["instruction"]})
    rng.shuffle(teacher)
    teacher = [{"domain": r["domain"], "instruction": r["instruction"], "response": r["response"]}
               for r in teacher]
    write(os.path.join(a.out, "pool.jsonl"), pool)
    write(os.path.join(a.out, "eval.jsonl"), held_out)
    write(os.path.join(a.out, "dev.jsonl"), dev)
    write(os.path.join(a.out, "teacher_train.jsonl"), teacher)
    print(f"{len(pool)} pool, {len(held_out)} held-out, {len(dev)} dev, {len(teacher)} teacher rows in {a.out}")


if __name__ == "__main__":
    main()
