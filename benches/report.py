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
    paths = ["fused", "composed", "torch_eager", "torch_compile", "floor"]
    print(f"CPU: {cpu_model()}")
    print(f"{'loss':<5} {'N×V':>12} " + " ".join(f"{p:>14}" for p in paths) + "   composed/fused  compile/fused  fused/floor")
    for (loss, n, v), row in sorted(table.items()):
        cells = [f"{row[p]['median_ms']:>14.1f}" if p in row else f"{'-':>14}" for p in paths]
        fused = row.get("fused", {}).get("median_ms")
        def ratio(p, inverse=False):
            if fused is None or p not in row:
                return "-"
            x = row[p]["median_ms"]
            return f"{(fused / x if inverse else x / fused):.1f}×"
        print(f"{loss:<5} {f'{n}×{v}':>12} " + " ".join(cells)
              + f"   {ratio('composed'):>14} {ratio('torch_compile'):>14} {ratio('floor', True):>12}")


if __name__ == "__main__":
    main()
