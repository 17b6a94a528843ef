#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench -p kd-losses --bench divergences`.

Times forward + backward w.r.t. the student logits of forward KL, reverse KL and generalized
JSD (beta = 0.5) at the same shapes, in PyTorch eager and torch.compile, on CPU with the same
number of threads, after checking each against a float64 reference. The losses are written the
way TRL and Liger users write them: `F.kl_div(..., log_target=True)` on `log_softmax` outputs,
and JSD through the mixture's `logsumexp` as TRL's `generalized_jsd_loss` does.

What is timed is what a training step pays: the student is one persistent leaf tensor, its
`.grad` is set to `None` between calls (as `optimizer.zero_grad()` does), and nothing is copied
in the timed region. Allocation is treated as on the Rust side, where the fused path reuses a
pooled gradient buffer: the script re-executes itself with glibc told to keep freed memory
(`MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` high, `MALLOC_TOP_PAD_`), so PyTorch's
large temporaries are reused instead of page-faulted in again on every call. `--fresh-memory`
keeps glibc's defaults (each large buffer mapped afresh, the Rust bench's `fused_fresh` row).

Appends one JSON object per line to the file named by KD_BENCH_JSON (default: bench.jsonl):
  {"bench", "loss", "n", "v", "path", "median_ms", "min_ms", "peak_mb"}
(`peak_mb` is null: sampling the RSS between calls misses the transient peak) with path "torch_eager" or "torch_compile" ("torch_eager_fresh", "torch_compile_fresh" under
--fresh-memory).

Run:  python3 benches/torch_baseline.py [--threads 2] [--quick] [--fresh-memory]
It creates benches/.venv and installs torch there on first use; nothing in the Rust build or
tests needs it.
"""
import json
import math
import os
import sys
import time

from torch_venv import ensure_venv  # benches/ is on sys.path when the script runs


def bootstrap():
    """Runs this script inside benches/.venv (see torch_venv.py)."""
    if "--fresh-memory" not in sys.argv and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Keep freed memory in the process (read by glibc at start-up, so set before the exec).
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(2**62)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(2**62)
        os.environ["MALLOC_TOP_PAD_"] = str(1 << 30)
        if os.environ.get("KD_TORCH_VENV") == "1":
            os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], os.environ)
    ensure_venv(__file__, "torch", ["torch"])


def main():
    bootstrap()
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
        # KL(p || q) as TRL/Liger users write it: input = student log-probs, target = teacher's.
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
                        log_target=True)

    def rkl(s, t):
        # KL(q || p): the roles swapped.
        return F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), reduction="batchmean",
                        log_target=True)

    def jsd(s, t, beta=0.5):
        # TRL's generalized_jsd_loss: log m by logsumexp, then beta KL(p || m) + (1 - beta) KL(q || m).
        lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        lm = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), 0)
        kl_p = F.kl_div(lm, lp, reduction="batchmean", log_target=True)
        kl_q = F.kl_div(lm, lq, reduction="batchmean", log_target=True)
        return beta * kl_p + (1 - beta) * kl_q

    losses = {"fkl": fkl, "rkl": rkl, "jsd": jsd}
    for n, v in shapes:
        g = torch.Generator().manual_seed(0)
        s0 = torch.randn(n, v, generator=g) * 3
        t0 = torch.randn(n, v, generator=g) * 3
        for name, fn in losses.items():
            # Correctness against float64 first.
            s64 = s0[:8].detach().double().requires_grad_()
            fn(s64, t0[:8].double()).backward()
            s32 = s0[:8].detach().clone().requires_grad_()
            fn(s32, t0[:8]).backward()
            err = (s32.grad.double() - s64.grad).abs().max().item()
            assert err < 1e-5, f"{name}: gradient error {err}"
            suffix = "_fresh" if "--fresh-memory" in args else ""
            student = s0.detach().requires_grad_()
            for path, f in (("torch_eager", fn), ("torch_compile", torch.compile(fn))):
                path += suffix

                def step():
                    student.grad = None
                    f(student, t0).backward()
                    return student.grad
                step(); step()  # warm-up (and compilation)
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    step()
                    times.append((time.perf_counter() - t) * 1e3)
                times.sort()
                row = {"bench": "divergences", "loss": name, "n": n, "v": v, "path": path,
                       "median_ms": round(times[len(times) // 2], 3), "min_ms": round(times[0], 3),
                       # Not measured: sampling RSS after each call misses the transient peak.
                       "peak_mb": None}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(row)


if __name__ == "__main__":
    main()
