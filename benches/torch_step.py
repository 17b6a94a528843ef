#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench -p kd-train --bench step`: one distillation step.

The same step as the Rust bench, in PyTorch eager (no torch.compile) with transformers' GPT-2 on
the CPU: teacher GPT2LMHeadModel(6 layers, 384 wide, 6 heads) under torch.no_grad, student
GPT2LMHeadModel(2 layers, 192 wide, 3 heads), vocabulary 50257, 1024 positions, dropout 0, a
batch of 8 x 128 random tokens, forward KL at T = 1 (mean over tokens), global-norm clipping to
1, AdamW (lr 1e-4, weight decay 0.01 on matrices only, like kd-train's groups). Attention is
transformers' default implementation (sdpa). The loss is read back every step (`.item()`), as
the Rust trainer does.

Reports the median and best step time after warm-up and the resident-set high-water mark over
the steps (VmHWM, reset after the models are built when the kernel allows it). Appends one JSON
line to the file named by KD_BENCH_JSON (if set), in the Rust bench's format:
  {"bench", "path": "torch_eager", "threads", "tokens_per_step", "tokens_per_s", "median_ms",
   "min_ms", "peak_heap_mb": null, "peak_rss_mb"}

Run:  python3 benches/torch_step.py [--threads 2] [--quick]
It creates benches/.venv and installs torch and transformers there on first use; nothing in the
Rust build or tests needs it.
"""
import json
import os
import sys
import time

from torch_venv import ensure_venv  # benches/ is on sys.path when the script runs


def bootstrap():
    """Runs this script inside benches/.venv (see torch_venv.py)."""
    ensure_venv(__file__, "torch, transformers, psutil", ["torch", "transformers", "psutil"])


def status_mb(key):
    """A /proc/self/status field (VmHWM, VmRSS) in MiB, or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_rss_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    bootstrap()
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    args = sys.argv[1:]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    quick = "--quick" in args or bool(os.environ.get("KD_BENCH_QUICK"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if quick:
        name, vocab, batch, seq = "distill_step_quick_b2_s32_v4096", 4096, 2, 32
        teacher_shape, student_shape, warmup, timed = (2, 64, 2), (1, 32, 2), 1, 3
    else:
        name, vocab, batch, seq = "distill_step_b8_s128_v50257", 50257, 8, 128
        teacher_shape, student_shape, warmup, timed = (6, 384, 6), (2, 192, 3), 2, 7

    def gpt2(shape):
        n_layer, n_embd, n_head = shape
        config = GPT2Config(
            vocab_size=vocab, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=vocab - 1, eos_token_id=vocab - 1,
        )
        return GPT2LMHeadModel(config)

    teacher = gpt2(teacher_shape).eval()
    student = gpt2(student_shape).train()
    # kd-train's groups: decay matrices except embeddings; no decay on biases and norm gains.
    decay, no_decay = [], []
    for n, p in student.named_parameters():
        (decay if p.dim() >= 2 and "wte" not in n and "wpe" not in n else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
    )
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step():
        with torch.no_grad():
            t_logits = teacher(ids).logits  # [batch, seq, vocab]
        s_logits = student(ids).logits  # [batch, seq, vocab]
        log_p = F.log_softmax(t_logits, -1)
        log_q = F.log_softmax(s_logits, -1)
        # forward KL(p || q) per token, mean over tokens
        loss = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    rss_reset = reset_rss_peak()
    rss_before = status_mb("VmRSS:")
    times, losses = [], []
    for _ in range(warmup + timed):
        start = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - start) * 1e3)
    peak_rss = status_mb("VmHWM:")
    timed_ms = sorted(times[warmup:])
    median_ms = timed_ms[len(timed_ms) // 2]
    tokens = batch * seq
    tokens_per_s = tokens / (median_ms / 1e3)
    print(
        f"{name}: torch {torch.__version__} eager, transformers "
        f"{__import__('transformers').__version__}, {threads} threads, attention "
        f"{student.config._attn_implementation}"
    )
    print(
        f"  step ms: median {median_ms:.0f}, best {timed_ms[0]:.0f} ({timed} timed after "
        f"{warmup} warm-up; all: {' '.join(f'{t:.0f}' for t in times[warmup:])})"
    )
    print(f"  tokens/s (median step): {tokens_per_s:.0f}")
    print(
        f"  peak RSS {peak_rss:.0f} MB ({'reset after building the models' if rss_reset else 'process lifetime'}; "
        f"RSS before the steps {rss_before:.0f} MB)"
    )
    print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    path = os.environ.get("KD_BENCH_JSON")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({
                "bench": name, "path": "torch_eager", "threads": threads,
                "tokens_per_step": tokens, "tokens_per_s": round(tokens_per_s, 1),
                "median_ms": round(median_ms, 1), "min_ms": round(timed_ms[0], 1),
                "peak_heap_mb": None, "peak_rss_mb": round(peak_rss, 1) if peak_rss else None,
            }, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
