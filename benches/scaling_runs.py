#!/usr/bin/env python3
"""A real table of runs for the distillation scaling law, on the shipped TinyStories slice.

Students of four sizes (LLaMA-style, 1 x 16 to 2 x 48, hidden x 3 MLP) are trained for 100, 200
and 400 steps (batch 16 x 64 tokens) either alone (`kd train`, supervised) or distilled (`kd
distill`, forward KL) from two shipped TinyStories teachers of different quality
(crates/kd-cli/assets/delta/student-base, 2 x 64, and teacher-base, 4 x 128). Every loss is the
held-out cross-entropy (nats per token) on the same split (the last 10 % of
crates/kd-cli/assets/tinystories.txt); a teacher's loss is the one `kd distill` reports for it
on that split. N counts non-embedding parameters (the paper's convention): the model's
parameters less its (tied) embedding table. D counts the tokens the student trained on.

Writes docs/scaling_law_runs.csv (n_student,d_student,teacher_loss,student_loss: the format of
`kd scaling-law --runs`), then fits it with `kd scaling-law` into runs/scaling_fit/.

Usage: cargo build --release -p kd-cli && python3 benches/scaling_runs.py
(KD_BIN names another kd binary.) About 15 minutes on 2 cores.
"""
import csv
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.environ.get("KD_BIN", os.path.join(ROOT, "target", "release", "kd"))
CONFIG = "crates/kd-cli/configs/train_tinystories.toml"
TEACHERS = ["crates/kd-cli/assets/delta/student-base", "crates/kd-cli/assets/delta/teacher-base"]
SIZES = [(1, 16), (1, 32), (2, 32), (2, 48)]  # (layers, hidden)
STEPS = [100, 200, 400]
BATCH, SEQ, VOCAB = 16, 64, 512
OUT = os.path.join(ROOT, "runs", "scaling")


def run(args, log):
    with open(log, "w") as f:
        p = subprocess.run([KD] + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    text = open(log).read()
    if p.returncode != 0:
        sys.exit(f"kd failed, see {log}")
    return text


def student(layers, hidden, steps, out):
    return ["--config", CONFIG, "--steps", str(steps), "--out", out,
            "--set", f"student.init.hidden_size={hidden}",
            "--set", f"student.init.intermediate_size={3 * hidden}",
            "--set", f"student.init.num_hidden_layers={layers}",
            "--set", "student.init.num_attention_heads=2",
            "--set", "student.init.num_key_value_heads=2",
            "--set", f"train.batch_size={BATCH}", "--set", f"data.seq_len={SEQ}",
            "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0",
            "--set", "train.log_every=0", "--seed", "0"]


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = []
    for layers, hidden in SIZES:
        for steps in STEPS:
            for teacher in [None] + TEACHERS:
                name = f"{layers}x{hidden}-{steps}-{os.path.basename(teacher) if teacher else 'sup'}"
                out = os.path.join(OUT, name)
                if teacher:
                    args = ["distill", "--teacher", teacher] + student(layers, hidden, steps, out)
                else:
                    args = ["train"] + student(layers, hidden, steps, out)
                text = run(args, out + ".log")
                params = int(re.search(r"model to train: (\d+) parameters", text).group(1))
                loss = float(re.findall(r"held-out loss ([0-9.]+)", text)[-1])
                t = re.search(r"teacher held-out: loss ([0-9.]+)", text)
                row = {"n_student": params - VOCAB * hidden, "d_student": steps * BATCH * SEQ,
                       "teacher_loss": float(t.group(1)) if t else "", "student_loss": loss}
                rows.append(row)
                print(name, row, flush=True)
    path = os.path.join(ROOT, "docs", "scaling_law_runs.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["n_student", "d_student", "teacher_loss", "student_loss"])
        w.writeheader()
        w.writerows(rows)
    print(run(["scaling-law", "--runs", path, "--out", os.path.join(ROOT, "runs", "scaling_fit")],
              os.path.join(OUT, "fit.log")))


if __name__ == "__main__":
    main()
