#!/usr/bin/env python3
"""Synthetic automatic-scoring data: arithmetic word problems, simulated student answers, rubric scores.

Every row is SYNTHETIC: the problems come from ../arithmetic/make_arithmetic.py, the "student
answers" are that generator's worked solution with a simulated mistake (or none), and the score is
the rubric below applied to the mistake that was simulated. No real student wrote any of it.

    python3 crates/kd-cli/assets/scoring/make_scoring.py            # rewrites train/eval
    python3 make_scoring.py --train 2400 --eval 480 --seed 7 --noise 0.12 --out DIR

Rubric (score in 0..=3):
  3  every step and the final answer are right;
  2  the right operation at every step, but one arithmetic slip (a result off by 1-3; the later
     steps continue correctly from the wrong number, so the final answer is wrong);
  1  a wrong operation at one step (an addition where the story removes objects, or the
     reverse), computed correctly; the later steps continue from it;
  0  no working ("The answer is N." alone, N a guess) or an unrelated answer (the working of
     another problem).

Rater noise: on the TRAINING split only, a fraction --noise of the rows have their score moved
to an adjacent score (up or down with equal chance, staying in 0..=3), as a second human rater
would disagree by one point. The held-out split keeps the rubric's score. `noisy` says which
rows were moved; `kind` names the simulated answer (correct, slip, operation, no_work,
unrelated); neither is an input of the classifier.

Fields of each JSONL line: question, answer, score, kind, noisy.
"""

import argparse
import json
import os
import random
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the shipped assets
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "arithmetic"))
import make_arithmetic  # noqa: E402  (the problem generator of the arithmetic task)

MAX_COUNT = make_arithmetic.MAX_COUNT
# Share of each simulated answer (score 3, 2, 1, 0-no-work, 0-unrelated).
KINDS = [("correct", 3, 0.34), ("slip", 2, 0.24), ("operation", 1, 0.24),
         ("no_work", 0, 0.09), ("unrelated", 0, 0.09)]
SCORES = 4


def parse_steps(rationale):
    """[(a, op, b)] of a worked rationale "a + b = c. c - d = e."."""
    steps = []
    for sentence in rationale.rstrip(".").split(". "):
        lhs, _ = sentence.split(" = ")
        a, op, b = lhs.split(" ")
        steps.append((int(a), op, int(b)))
    return steps


def render(start, ops, slip_at=None, slip=0, flip_at=None):
    """Worked steps from `start` through `ops` [(op, b)], with a slip or a flipped operation.

    Returns (text, final) or None when a count leaves 0..MAX_COUNT."""
    count, parts = start, []
    for k, (op, b) in enumerate(ops):
        if k == flip_at:
            op = "-" if op == "+" else "+"
        result = count + b if op == "+" else count - b
        if k == slip_at:
            result += slip
        if not 0 <= result <= MAX_COUNT:
            return None
        parts.append(f"{count} {op} {b} = {result}.")
        count = result
    return " ".join(parts), count


def answer_for(kind, prob, other, rng):
    """The simulated student's answer of `kind` to `prob` (None: retry with another draw)."""
    steps = parse_steps(prob["rationale"])
    start, ops = steps[0][0], [(op, b) for _, op, b in steps]
    truth = int(prob["label"])
    if kind == "correct":
        return prob["response"]
    if kind == "slip":
        k = rng.randrange(len(ops))
        slip = rng.choice([-3, -2, -1, 1, 2, 3])
        out = render(start, ops, slip_at=k, slip=slip)
    elif kind == "operation":
        out = render(start, ops, flip_at=rng.randrange(len(ops)))
    elif kind == "no_work":
        guess = rng.randint(0, MAX_COUNT)
        return f"The answer is {guess}."
    else:  # unrelated: another problem's worked answer
        if other["rationale"].split(" ")[0] == str(start) or int(other["label"]) == truth:
            return None
        return other["response"]
    if out is None:
        return None
    text, final = out
    if final == truth:  # a mistake that cancels out is not the mistake the score names
        return None
    return f"{text} The answer is {final}."


def generate(n, seed, exclude, noise):
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    names = [k for k, _, _ in KINDS]
    weights = [w for _, _, w in KINDS]
    score_of = {k: s for k, s, _ in KINDS}
    while len(rows) < n:
        prob = make_arithmetic.problem(rng)
        if prob["instruction"] in seen:
            continue
        other = make_arithmetic.problem(rng)
        kind = rng.choices(names, weights)[0]
        answer = answer_for(kind, prob, other, rng)
        if answer is None:
            continue
        seen.add(prob["instruction"])
        score, noisy = score_of[kind], False
        if rng.random() < noise:
            score = min(SCORES - 1, max(0, score + rng.choice([-1, 1])))
            noisy = score != score_of[kind]
        rows.append({"question": prob["instruction"], "answer": answer, "score": score,
                     "kind": kind, "noisy": noisy})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--eval", type=int, default=480)
    ap.add_argument("--seed", type=int, default=7, help="train seed; held-out uses seed + 1000")
    ap.add_argument("--noise", type=float, default=0.12, help="rater noise on train scores")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    # Held-out questions are new to the scoring train split and to the arithmetic data the
    # shipped teacher LM was trained on.
    arithmetic = set()
    for split in ("train.jsonl", "eval.jsonl"):
        path = os.path.join(HERE, "..", "arithmetic", split)
        if os.path.exists(path):
            with open(path) as f:
                arithmetic.update(json.loads(line)["instruction"] for line in f)
    held_out = generate(a.eval, a.seed + 1000, arithmetic, 0.0)
    train = generate(a.train, a.seed, {r["question"] for r in held_out}, a.noise)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(os.path.join(a.out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    noisy = sum(r["noisy"] for r in train)
    print(f"{len(train)} train ({noisy} scores moved by rater noise), {len(held_out)} held-out "
          f"rows in {a.out}")


if __name__ == "__main__":
    main()
