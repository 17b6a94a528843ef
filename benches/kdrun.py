"""Shared helpers of the bench scripts that drive the `kd` binary: where it is, running it, and
reading a run's metrics.jsonl."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.environ.get("KD_BIN", os.path.join(ROOT, "target", "release", "kd"))


def run(args):
    """Runs `kd args` from the repository root; exits with its stderr when it fails."""
    import subprocess
    r = subprocess.run([KD] + args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"kd {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def records(out):
    """A run's step records and evaluation records (`out` relative to the repository root)."""
    steps, evals = [], []
    with open(os.path.join(ROOT, out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                evals.append(rec)
            elif "grad_norm" in rec:
                steps.append(rec)
    return steps, evals
