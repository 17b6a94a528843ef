#!/usr/bin/env python3
"""Side-by-side table of one bench run: `python3 benches/report.py bench.jsonl`.

Reads the JSON lines written by `cargo bench -p kd-losses --bench divergences` (KD_BENCH_JSON)
and `benches/torch_baseline.py`, and prints per (loss, N, V) the median ms of every path with the
ratios against the fused path, plus the CPU model of this machine.
"""
import json
import sys
from collections import defaultdict


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench.jsonl"
    table = defaultdict(dict)
    for line in open(path):
        r = json.loads(line)
        table[(r["loss"], r["n"], r["v"])][r["path"]] = r
    paths = ["fused", "fused_avx2", "fused_fresh", "composed", "torch_eager", "torch_compile",
             "torch_compile_fresh", "floor"]
    paths = [p for p in paths if any(p in row for row in table.values())]
    # (name, numerator path, denominator path): each ratio compares like with like.
    ratios = [("composed/fused", "composed", "fused"),
              ("compile/fused", "torch_compile", "fused"),
              ("compile_fresh/fused_fresh", "torch_compile_fresh", "fused_fresh"),
              ("avx2/avx512", "fused_avx2", "fused"),
              ("fused/floor", "fused", "floor")]
    ratios = [r for r in ratios if r[1] in paths and r[2] in paths]
    print(f"CPU: {cpu_model()}")
    print(f"{'loss':<5} {'N×V':>12} " + " ".join(f"{p:>14}" for p in paths) + "  "
          + " ".join(f"{r[0]:>14}" for r in ratios))
    for (loss, n, v), row in sorted(table.items()):
        cells = [f"{row[p]['median_ms']:>14.1f}" if p in row else f"{'-':>14}" for p in paths]

        def ratio(num, den):
            if num not in row or den not in row:
                return "-"
            return f"{row[num]['median_ms'] / row[den]['median_ms']:.1f}×"
        print(f"{loss:<5} {f'{n}×{v}':>12} " + " ".join(cells) + "  "
              + " ".join(f"{ratio(r[1], r[2]):>14}" for r in ratios))

if __name__ == "__main__":
    main()
