#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench -p kd-losses --bench divergences`.

Times forward + backward w.r.t. the student logits of forward KL, reverse KL and generalized
JSD (beta = 0.5) at the same shapes, in PyTorch eager and torch.compile, on CPU with the same
number of threads, after checking each against a float64 reference. Appends one JSON object per
line to the file named by KD_BENCH_JSON (default: bench.jsonl):
  {"bench", "loss", "n", "v", "path": "torch_eager" | "torch_compile", "median_ms", "min_ms", "peak_mb"}

Run:  python3 benches/torch_baseline.py [--threads 2] [--quick]
It creates benches/.venv and installs torch there on first use; nothing in the Rust build or
tests needs it.
"""
import json
import os
import sys
import time

from torch_venv import ensure_venv  # benches/ is on sys.path when the script runs


def bootstrap():
    """Runs this script inside benches/.venv (see torch_venv.py)."""
    ensure_venv(__file__, "torch, psutil", ["torch", "psutil"])


def main():
    bootstrap()
    import psutil
    import torch
    import torch.nn.functional as F

    args = sys.argv[1:]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    quick = "--quick" in args
    torch.set_num_threads(threads)
    shapes = [(256, 4000), (64, 50257)] if quick else [(2048, 32000), (512, 50257), (4096, 8192)]
    runs = 5 if quick else 10
    out = open(os.environ.get("KD_BENCH_JSON", "bench.jsonl"), "a")

    def fkl(s, t):
        lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        return (lp.exp() * (lp - lq)).sum(-1).mean()

    def rkl(s, t):
        lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        return (lq.exp() * (lq - lp)).sum(-1).mean()

    def jsd(s, t, beta=0.5):
        lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        lm = torch.logsumexp(torch.stack([lp + torch.log(torch.tensor(beta)),
                                          lq + torch.log(torch.tensor(1 - beta))]), 0)
        return (beta * (lp.exp() * (lp - lm)).sum(-1) + (1 - beta) * (lq.exp() * (lq - lm)).sum(-1)).mean()

    losses = {"fkl": fkl, "rkl": rkl, "jsd": jsd}
    proc = psutil.Process()
    for n, v in shapes:
        g = torch.Generator().manual_seed(0)
        s0 = torch.randn(n, v, generator=g) * 3
        t0 = torch.randn(n, v, generator=g) * 3
        for name, fn in losses.items():
            # Correctness against float64 first.
            s64 = s0[:8].double().requires_grad_()
            fn(s64, t0[:8].double()).backward()
            s32 = s0[:8].clone().requires_grad_()
            fn(s32, t0[:8]).backward()
            err = (s32.grad.double() - s64.grad).abs().max().item()
            assert err < 1e-5, f"{name}: gradient error {err}"
            for path, f in (("torch_eager", fn), ("torch_compile", torch.compile(fn))):
                def step():
                    s = s0.clone().requires_grad_()
                    f(s, t0).backward()
                    return s.grad
                step(); step()  # warm-up (and compilation)
                rss0 = proc.memory_info().rss
                peak = 0
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    step()
                    times.append((time.perf_counter() - t) * 1e3)
                    peak = max(peak, proc.memory_info().rss - rss0)
                times.sort()
                row = {"bench": "divergences", "loss": name, "n": n, "v": v, "path": path,
                       "median_ms": round(times[len(times) // 2], 3), "min_ms": round(times[0], 3),
                       "peak_mb": round(peak / 2**20, 1)}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(row)


if __name__ == "__main__":
    main()
