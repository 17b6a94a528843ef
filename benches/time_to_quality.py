#!/usr/bin/env python3
"""Time-to-quality: kd-rs (the `kd` binary) against PyTorch eager on the demo's TinyStories recipe.

The question: how many seconds of training does the forward-KL student need to reach the held-out
perplexity that the no-teacher student reaches at the end of its run? Each side trains both
students and answers it for itself:

  target          = the no-teacher (SFT, next-token cross-entropy) student's final held-out ppl
  time-to-quality = training seconds of the forward-KL student up to the first evaluation where
                    its held-out ppl <= target, linearly interpolated (ppl against seconds)
                    between that evaluation and the one before; "not reached" when none does.

Recipe (the `kd demo` students, crates/kd-cli/src/demo.rs, with the CLI's config files):
  - data: crates/kd-cli/assets/tinystories.txt and tokenizer.json; documents split at blank
    lines, each tokenised as BOS doc EOS, joined, packed into blocks of 64 inputs + next-token
    labels (short tail dropped); the last round(10 %) of the blocks held out
    (kd_train::data, kd_cli::run::load_data).
  - student: the 2 x 64 LLaMA of distill_tinystories.toml (2 heads, MLP 192, vocabulary 512,
    tied embeddings, RMSNorm eps 1e-6, RoPE theta 1e4), the demo's student shape.
  - teacher: the 4 x 128 LLaMA of train_tinystories.toml (400 steps), the demo's teacher shape;
    by default runs/offline/teacher/model (benches/offline_table.py trains it there).
  - training: 300 steps of 16 blocks, AdamW (beta 0.9/0.999, eps 1e-8, weight decay 0.01 on
    the 2-D weights outside the embedding, none on the (tied) embedding and the RMSNorm gains),
    peak lr 3e-3, linear warmup over steps/20 = 15 steps (lr(s) = peak (s+1)/15 for 0-based
    s < 15), then cosine to 0.1 x peak at the last step (kd_train::schedule), global grad-norm
    clipping to 1 (factor 1/(norm + 1e-6) when above), data order seed 0.
  - losses: no teacher = mean next-token cross-entropy over all tokens of the batch; forward KL
    at T = 1 = KL(teacher || student) summed over the vocabulary and averaged over all tokens
    (kd: method kd, divergence forward_kl, Reduction::Mean over the counted positions, which are
    all positions of packed text; PyTorch: F.kl_div(log_softmax(s), log_softmax(t),
    log_target=True, reduction="batchmean") on [tokens, vocab], the teacher under no_grad).
  - evaluation: before the first step, every --eval-every steps (default 10; the demo uses 50,
    which cannot resolve the crossing) and after the last one: summed cross-entropy over all
    156 held-out blocks (batches of 16, in order) / their token count, ppl = exp(that).

How each side runs:
  - kd: `kd distill --config crates/kd-cli/configs/distill_tinystories.toml` with `--method sft`
    (no teacher) or `--loss forward_kl --teacher DIR`, and --set for the values above, writing
    runs/ttq/kd-ce and runs/ttq/kd-fkl (runs/ttq/quick-* under --quick). RAYON_NUM_THREADS is
    set to --threads.
  - PyTorch: transformers' LlamaForCausalLM in eager mode (no torch.compile; attention is
    transformers' default, sdpa), torch.set_num_threads(--threads), torch.optim.AdamW with two
    groups, the learning rate written into the groups before every step from kd's formula,
    torch.nn.utils.clip_grad_norm_(max_norm=1). Tokenisation through the `tokenizers` package
    on the same tokenizer.json.
  Both start from the same weights: `kd train --steps 0` writes kd's initial student
  (train.seed 0) as a Hugging Face directory (runs/ttq/init), which both kd runs reproduce (the
  script checks their step-0 evaluations against it) and PyTorch loads. Both draw the same
  batches in the same order: the script re-implements kd's seeded Fisher-Yates permutation per
  epoch (splitmix64 generator, kd_models::sampling::Rng; kd_train::data::BatchOrder).
  The script prints a consistency check: step-0 held-out loss, step-1 training loss and
  gradient norm of each run on both sides (same weights, same batch: they agree to float
  rounding when data, model, loss and reduction are the same; later steps drift apart by
  rounding only).

Timing (both sides the same definition): seconds of training steps only, summed up to the
evaluation in question. A step is: build the batch, forward (teacher and student), loss,
backward, global norm and clipping, AdamW update, reading the loss back. kd: per step
tokens / tokens_per_s of metrics.jsonl, which the trainer measures around exactly that
(kd_train::Trainer::train_step). PyTorch: time.perf_counter() around the same work. Excluded
on both sides: process start, imports, tokenisation, loading the models, evaluation, metrics
and checkpoint writing (and kd's progress observer, model export). Each run's own first-step
costs are included on both sides; PyTorch's once-per-process initialisation (lazy imports and
kernel set-up on the first forward/backward/optimizer step, seconds) is paid before the timed
runs on throwaway copies, as process start-up (each kd run is a fresh process whose start-up is
likewise outside its step times). The table gives the mean and the median ms/step of each run;
the JSON also has each side's full wall time for reference (kd: the whole process, loading and
evaluations included; PyTorch: the training loop with its evaluations, loading excluded).

Known differences between the two sides:
  - Kernels and rounding: burn's flex backend (kd's own matmul/attention/softmax/RMSNorm/loss
    kernels, a fused AdamW pass) against PyTorch's CPU kernels (sdpa attention, the
    single-tensor AdamW loop PyTorch uses on CPU by default). Same formulas, different
    summation orders: curves agree at step 1 and drift by rounding after it, so the two
    targets differ slightly; each side is measured against its own target.
  - Interpreter: the PyTorch side pays Python and autograd dispatch per op (that is what eager
    PyTorch is); kd is a compiled binary.
  - Versus the demo itself: the demo trains its own teacher (seeded 1) and seeds the student's
    initialisation with 2; here the teacher is the train_tinystories.toml one and the student
    is kd's initialisation under train.seed 0 (same shapes, recipe and data order). The demo's
    eval_every is 50; evaluation does not change training, it is only finer here.
  - A teacher that is missing is trained with `kd train --config train_tinystories.toml` into
    runs/ttq/teacher (400 steps, about two minutes on 2 cores); under --quick into
    runs/ttq/teacher-quick with 20 steps (a stand-in for the smoke run only).

Output: a table (side, no-teacher final ppl, FKL final ppl, time to reach the target, total
train time, ms/step), one JSON line per side appended to the file named by KD_BENCH_JSON
(default: bench.jsonl):
  {"bench": "time_to_quality", "side": "kd" | "torch_eager", "threads", "quick", "steps",
   "eval_every", "batch_size", "seq_len", "target_ppl", "ce_final_ppl", "fkl_final_ppl",
   "ttq_s", "ttq_step", "reached", "ttq_median_s", "ce_train_s", "fkl_train_s", "ce_ms_per_step",
   "fkl_ms_per_step", "ce_median_ms", "fkl_median_ms", "ce_wall_s", "fkl_wall_s",
   "curves": {"ce": [[step, train_s, ppl], ...], "fkl": [...]}}
and a plot of held-out ppl against training seconds (4 curves, each side's target as a
horizontal line) at --plot (default runs/time_to_quality.png; matplotlib, installed into the
venv when pip can; skipped with a note otherwise).

Run it on an otherwise idle machine. Beside a compiler, under `nice`, PyTorch's steps went
from about 50-160 ms to over a second (its OpenMP threads wait for a descheduled peer at every
parallel region), and a sum of step times, which time-to-quality is, takes every such stall in.
The table's median ms/step and the JSON's ttq_median_s (crossing step x median FKL step time)
show how much a run was disturbed.

Run (from the repository root; --kd defaults to target/release/kd under the repository root,
or $KD_BIN):
  python3 benches/time_to_quality.py --kd /path/to/kd [--threads 2] [--eval-every 10]
      [--steps 300] [--teacher DIR] [--plot runs/time_to_quality.png] [--quick]
--quick: 20 steps, evaluation every 5 (a smoke run of well under a minute once the venv is
set up). It creates benches/.venv (torch, transformers, tokenizers, matplotlib) on first use;
nothing in the Rust build or tests needs it.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import kdrun  # benches/ is on sys.path when the script runs
from torch_venv import ensure_venv

CONFIG = "crates/kd-cli/configs/distill_tinystories.toml"
TEACHER_CONFIG = "crates/kd-cli/configs/train_tinystories.toml"
ASSETS = "crates/kd-cli/assets"
SEQ_LEN = 64
BATCH = 16
LR = 3e-3
MIN_LR_RATIO = 0.1
EVAL_FRACTION = 0.1
SEED = 0
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
MASK64 = (1 << 64) - 1


def bootstrap():
    """Runs this script inside benches/.venv (see torch_venv.py); without matplotlib when pip
    cannot install it (the plot is then skipped)."""
    try:
        ensure_venv(__file__, "torch, transformers, tokenizers, matplotlib",
                    ["torch", "transformers", "tokenizers", "matplotlib"])
    except subprocess.CalledProcessError:
        print("(matplotlib could not be installed: no plot)", file=sys.stderr)
        ensure_venv(__file__, "torch, transformers, tokenizers",
                    ["torch", "transformers", "tokenizers"])


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kd", default=os.environ.get("KD_BIN", "target/release/kd"),
                    help="the kd binary (relative paths: from the repository root)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="default 300 (--quick: 20)")
    ap.add_argument("--eval-every", type=int, default=None, help="default 10 (--quick: 5)")
    ap.add_argument("--teacher", default=None, help="teacher directory (Hugging Face layout)")
    ap.add_argument("--plot", default="runs/time_to_quality.png")
    ap.add_argument("--out", default="runs/ttq", help="where the kd runs write")
    a = ap.parse_args()
    if a.steps is None:
        a.steps = 20 if a.quick else 300
    if a.eval_every is None:
        a.eval_every = 5 if a.quick else 10
    a.warmup = max(1, a.steps // 20)  # the demo's warmup_steps
    return a


def in_root(p):
    return p if os.path.isabs(p) else os.path.join(kdrun.ROOT, p)


def lr_at(step, steps, warmup):
    """kd_train::schedule::LrSchedule::lr, cosine decay: the learning rate of 0-based `step`."""
    if step < warmup:
        return LR * (step + 1) / warmup
    floor = LR * MIN_LR_RATIO
    span = max(1, steps - warmup)
    p = min(max((step - warmup) / span, 0.0), 1.0)
    return floor + (LR - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


# --- kd's data order: kd_models::sampling::Rng (splitmix64) and kd_train::data::BatchOrder ---

class Rng:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        zone = MASK64 - MASK64 % n
        while True:
            x = self.next_u64()
            if x < zone:
                return x % n


def epoch_permutation(n, seed, epoch):
    rng = Rng(seed ^ ((epoch * 0xD1B54A32D192ED03) & MASK64))
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def batch_order(n, batch, steps, seed=SEED):
    """The block indices of each step's batch, as kd's BatchOrder draws them."""
    b = max(1, min(batch, n))
    epoch, pos, order, out = 0, 0, epoch_permutation(n, seed, 0), []
    for _ in range(steps):
        if pos + b > n:
            epoch, pos = epoch + 1, 0
            order = epoch_permutation(n, seed, epoch)
        out.append(order[pos:pos + b])
        pos += b
    return out


def load_blocks(torch):
    """Train and held-out (inputs, labels) as kd's load_data makes them: [blocks, SEQ_LEN] each."""
    from tokenizers import Tokenizer
    assets = in_root(ASSETS)
    tok = Tokenizer.from_file(os.path.join(assets, "tokenizer.json"))
    cfg = json.load(open(os.path.join(assets, "tokenizer_config.json")))
    bos, eos = tok.token_to_id(cfg["bos_token"]), tok.token_to_id(cfg["eos_token"])
    text = open(os.path.join(assets, "tinystories.txt"), encoding="utf-8").read()
    docs = [d.strip() for d in text.split("\n\n")]
    docs = [d for d in docs if d]
    stream = []
    for enc, doc in zip(tok.encode_batch(docs, add_special_tokens=False), docs):
        stream += [bos] + enc.ids + [eos]
    n = (len(stream) - 1) // SEQ_LEN
    s = torch.tensor(stream, dtype=torch.long)
    idx = torch.arange(n)[:, None] * SEQ_LEN + torch.arange(SEQ_LEN + 1)[None, :]
    win = s[idx]  # [n, SEQ_LEN + 1]
    inputs, labels = win[:, :-1].contiguous(), win[:, 1:].contiguous()
    held = min(max(int(math.floor(n * EVAL_FRACTION + 0.5)), min(n, 1)), n)  # Rust's round()
    return (inputs[:n - held], labels[:n - held]), (inputs[n - held:], labels[n - held:])


# --- kd side ---

def kd(args, threads):
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    kdrun.run(args)
    return time.perf_counter() - t


def recipe(a, out):
    s = lambda k, v: ["--set", f"{k}={v}"]
    return (["--config", CONFIG, "--out", out, "--steps", str(a.steps), "--seed", str(SEED),
             "--quiet"]
            + s("data.seq_len", SEQ_LEN) + s("data.eval_fraction", EVAL_FRACTION)
            + s("train.batch_size", BATCH) + s("train.lr", LR)
            + s("train.warmup_steps", a.warmup) + s("train.min_lr_ratio", MIN_LR_RATIO)
            + s("train.decay", '"cosine"') + s("train.max_grad_norm", MAX_GRAD_NORM)
            + s("train.optimizer.weight_decay", WEIGHT_DECAY)
            + s("train.eval_every", a.eval_every) + s("train.log_every", max(1, a.steps // 10))
            + s("train.checkpoint_every", 0) + s("train.keep_checkpoints", 1))


def fresh(out):
    path = in_root(out)
    if os.path.isdir(path):
        shutil.rmtree(path)
    return out


def locate_teacher(a):
    """The teacher directory: --teacher, else an existing train_tinystories.toml teacher, else
    one trained now with kd train."""
    if a.teacher:
        return a.teacher
    for d in ["runs/offline/teacher/model", "runs/teacher/model",
              os.path.join(a.out, "teacher-quick" if a.quick else "teacher", "model")]:
        if os.path.isfile(os.path.join(in_root(d), "config.json")):
            return d
    out = fresh(os.path.join(a.out, "teacher-quick" if a.quick else "teacher"))
    extra = ["--steps", "20", "--set", "train.warmup_steps=1"] if a.quick else []
    print(f"training the teacher with kd train ({TEACHER_CONFIG}) into {out}", flush=True)
    kd(["train", "--config", TEACHER_CONFIG, "--out", out, "--quiet", "--set",
        "train.checkpoint_every=0", "--set", "train.eval_every=0"] + extra, a.threads)
    return os.path.join(out, "model")


def kd_curve(out, wall):
    steps, evals = kdrun.records(out)
    secs = {0: 0.0}
    total = 0.0
    for r in steps:
        total += r["tokens"] / r["tokens_per_s"]
        secs[r["step"]] = total
    per_step = [r["tokens"] / r["tokens_per_s"] for r in steps]
    seen, curve = set(), []
    for e in evals:  # the last step is evaluated once (kd writes it once per run)
        if e["step"] not in seen:
            seen.add(e["step"])
            curve.append((e["step"], secs[e["step"]], e["perplexity"], e["loss"]))
    return {"curve": curve, "train_s": total, "per_step": per_step, "wall_s": wall,
            "step1_loss": steps[0]["loss"], "step1_grad_norm": steps[0]["grad_norm"]}


def run_kd(a, teacher, prefix):
    init = fresh(os.path.join(a.out, prefix + "init"))
    kd(["train", "--config", CONFIG, "--method", "sft", "--out", init, "--steps", "0", "--quiet",
        "--set", "train.eval_every=1", "--set", "train.warmup_steps=1",
        "--set", f"data.seq_len={SEQ_LEN}", "--set", f"data.eval_fraction={EVAL_FRACTION}"],
       a.threads)
    init_loss = kdrun.records(init)[1][0]["loss"]
    ce_out = fresh(os.path.join(a.out, prefix + "kd-ce"))
    print(f"kd: no-teacher student, {a.steps} steps", flush=True)
    ce = kd_curve(ce_out, kd(["distill", "--method", "sft"] + recipe(a, ce_out), a.threads))
    fkl_out = fresh(os.path.join(a.out, prefix + "kd-fkl"))
    print(f"kd: forward-KL student, {a.steps} steps (teacher {teacher})", flush=True)
    fkl = kd_curve(fkl_out, kd(["distill", "--loss", "forward_kl", "--temperature", "1",
                                "--teacher", teacher] + recipe(a, fkl_out), a.threads))
    for name, r in (("no teacher", ce), ("forward KL", fkl)):
        if abs(r["curve"][0][3] - init_loss) > 1e-9:
            sys.exit(f"kd {name}: step-0 held-out loss {r['curve'][0][3]} is not the initial "
                     f"student's {init_loss}: the runs did not start from {init}/model")
    return os.path.join(init, "model"), ce, fkl


# --- PyTorch side ---

def warm_up_torch(torch, init_dir, teacher_dir, train):
    """PyTorch's one-time initialisation in this process (lazy imports and kernel set-up on the
    first forward, backward and optimizer step: seconds), on throwaway copies, untimed: it is
    process start-up, which neither side's timing counts."""
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM
    student = LlamaForCausalLM.from_pretrained(in_root(init_dir), dtype=torch.float32).train()
    teacher = LlamaForCausalLM.from_pretrained(in_root(teacher_dir), dtype=torch.float32).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-9)
    ids, lab = train[0][:BATCH], train[1][:BATCH]
    for _ in range(2):
        logits = student(input_ids=ids).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        v = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, v), lab.reshape(-1)) + F.kl_div(
            F.log_softmax(logits.reshape(-1, v), -1), F.log_softmax(t_logits.reshape(-1, v), -1),
            log_target=True, reduction="batchmean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    with torch.no_grad():
        student.eval()
        student(input_ids=ids)

def run_torch(a, torch, init_dir, teacher_dir, train, held, fkl):
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    student = LlamaForCausalLM.from_pretrained(in_root(init_dir), dtype=torch.float32)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr(), \
        "the student's head is not tied to its embedding"
    student.train()
    teacher = None
    if fkl:
        teacher = LlamaForCausalLM.from_pretrained(in_root(teacher_dir), dtype=torch.float32).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    # kd-train's groups: decay 2-D weights outside the embedding (tied head included there).
    decay, no_decay = [], []
    for n, p in student.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in n else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.999), eps=1e-8,
    )
    params = decay + no_decay
    (tr_in, tr_lab), (ev_in, ev_lab) = train, held
    vocab = student.config.vocab_size

    def evaluate():
        student.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, ev_in.shape[0], BATCH):
                logits = student(input_ids=ev_in[i:i + BATCH]).logits
                lab = ev_lab[i:i + BATCH]
                total += F.cross_entropy(logits.reshape(-1, vocab).float(), lab.reshape(-1),
                                         reduction="sum").item()
                tokens += lab.numel()
        student.train()
        return total / tokens

    order = [torch.tensor(b) for b in batch_order(tr_in.shape[0], BATCH, a.steps)]
    wall0 = time.perf_counter()
    loss0 = evaluate()
    curve = [(0, 0.0, math.exp(loss0), loss0)]
    per_step, total = [], 0.0
    step1 = None
    for s in range(a.steps):
        t0 = time.perf_counter()
        idx = order[s]
        ids, lab = tr_in.index_select(0, idx), tr_lab.index_select(0, idx)
        logits = student(input_ids=ids).logits  # [batch, seq, vocab]
        if fkl:
            with torch.no_grad():
                t_logits = teacher(input_ids=ids).logits
            loss = F.kl_div(F.log_softmax(logits.reshape(-1, vocab), -1),
                            F.log_softmax(t_logits.reshape(-1, vocab), -1),
                            log_target=True, reduction="batchmean")  # sum / tokens
        else:
            loss = F.cross_entropy(logits.reshape(-1, vocab), lab.reshape(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = lr_at(s, a.steps, a.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        dt = time.perf_counter() - t0
        per_step.append(dt)
        total += dt
        if s == 0:
            step1 = (value, norm.item())
        step = s + 1
        if step == a.steps or step % a.eval_every == 0:
            l = evaluate()
            curve.append((step, total, math.exp(l), l))
    return {"curve": curve, "train_s": total, "per_step": per_step,
            "wall_s": time.perf_counter() - wall0, "step1_loss": step1[0],
            "step1_grad_norm": step1[1]}


# --- results ---

def crossing(curve, target):
    """(seconds, step) at which `curve` first reaches ppl <= target, linear in between."""
    prev = None
    for step, secs, ppl, _ in curve:
        if ppl <= target:
            if prev is None or prev[2] == ppl:
                return secs, float(step)
            f = (prev[2] - target) / (prev[2] - ppl)
            return prev[1] + f * (secs - prev[1]), prev[0] + f * (step - prev[0])
        prev = (step, secs, ppl)
    return None, None


def summarise(side, ce, fkl, a):
    target = ce["curve"][-1][2]
    ttq, ttq_step = crossing(fkl["curve"], target)
    ms = lambda r: 1e3 * r["train_s"] / max(1, len(r["per_step"]))
    med = lambda r: 1e3 * statistics.median(r["per_step"]) if r["per_step"] else None
    rnd = lambda x, n=4: None if x is None else round(x, n)
    return {
        "bench": "time_to_quality", "side": side, "threads": a.threads, "quick": a.quick,
        "steps": a.steps, "eval_every": a.eval_every, "batch_size": BATCH, "seq_len": SEQ_LEN,
        "target_ppl": rnd(target), "ce_final_ppl": rnd(target),
        "fkl_final_ppl": rnd(fkl["curve"][-1][2]), "ttq_s": rnd(ttq, 3),
        "ttq_step": rnd(ttq_step, 2), "reached": ttq is not None,
        # Robust to stalls (another process on a core): the crossing step x the median step.
        "ttq_median_s": rnd(None if ttq is None else ttq_step * med(fkl) / 1e3, 3),
        "ce_train_s": rnd(ce["train_s"], 3), "fkl_train_s": rnd(fkl["train_s"], 3),
        "ce_ms_per_step": rnd(ms(ce), 2), "fkl_ms_per_step": rnd(ms(fkl), 2),
        "ce_median_ms": rnd(med(ce), 2), "fkl_median_ms": rnd(med(fkl), 2),
        "ce_wall_s": rnd(ce["wall_s"], 2), "fkl_wall_s": rnd(fkl["wall_s"], 2),
        "curves": {k: [[s, round(t, 4), round(p, 4)] for s, t, p, _ in r["curve"]]
                   for k, r in (("ce", ce), ("fkl", fkl))},
    }


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: plot skipped)")
        return
    fig, ax = plt.subplots(figsize=(9, 5.6))
    colors = {"kd": "tab:blue", "torch_eager": "tab:orange"}
    for row in rows:
        c = colors.get(row["side"], None)
        for key, style, label in (("ce", "--", "no teacher"), ("fkl", "-", "forward KL")):
            pts = row["curves"][key]
            ax.plot([p[1] for p in pts], [p[2] for p in pts], style, color=c, marker=".",
                    label=f"{row['side']}, {label}")
        ax.axhline(row["target_ppl"], color=c, linestyle=":", linewidth=1,
                   label=f"{row['side']} target {row['target_ppl']:.2f}")
        if row["ttq_s"] is not None:
            ax.plot([row["ttq_s"]], [row["target_ppl"]], "o", color=c, markersize=8,
                    markerfacecolor="none")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"time to quality: forward-KL student vs the no-teacher student's final ppl "
                 f"({rows[0]['threads']} threads)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = in_root(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot {path}")


def main():
    bootstrap()
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    a = parse_args()
    kdrun.KD = in_root(a.kd)
    if not os.path.isfile(kdrun.KD):
        sys.exit(f"no kd binary at {kdrun.KD}: build it (cargo build --release -p kd-cli) "
                 "or pass --kd PATH")
    torch.set_num_threads(a.threads)
    prefix = "quick-" if a.quick else ""
    os.makedirs(in_root(a.out), exist_ok=True)

    teacher = locate_teacher(a)
    init_dir, kd_ce, kd_fkl = run_kd(a, teacher, prefix)

    train, held = load_blocks(torch)
    print(f"torch {torch.__version__} eager, transformers {transformers.__version__}, "
          f"{a.threads} threads; {train[0].shape[0]} train / {held[0].shape[0]} held-out blocks "
          f"of {SEQ_LEN}", flush=True)
    warm_up_torch(torch, init_dir, teacher, train)
    print(f"torch: no-teacher student, {a.steps} steps", flush=True)
    t_ce = run_torch(a, torch, init_dir, teacher, train, held, fkl=False)
    print(f"torch: forward-KL student, {a.steps} steps", flush=True)
    t_fkl = run_torch(a, torch, init_dir, teacher, train, held, fkl=True)

    print()
    print("consistency (same initial weights and first batch on both sides):")
    print(f"  {'run':<24} {'step-0 eval loss':>17} {'step-1 loss':>12} {'step-1 |g|':>11}")
    for name, r in (("kd no teacher", kd_ce), ("torch no teacher", t_ce),
                    ("kd forward KL", kd_fkl), ("torch forward KL", t_fkl)):
        print(f"  {name:<24} {r['curve'][0][3]:>17.6f} {r['step1_loss']:>12.6f} "
              f"{r['step1_grad_norm']:>11.6f}")

    rows = [summarise("kd", kd_ce, kd_fkl, a), summarise("torch_eager", t_ce, t_fkl, a)]
    print()
    print(f"time to quality, {a.steps} steps of {BATCH} x {SEQ_LEN} tokens, evaluation every "
          f"{a.eval_every}, {a.threads} threads (training seconds; evaluation excluded):")
    head = (f"{'side':<12} {'no-teacher ppl':>14} {'FKL ppl':>9} {'time to target':>22} "
            f"{'train s (CE/FKL)':>17} {'ms/step (CE/FKL)':>17} {'median ms/step':>15}")
    print(head)
    for r in rows:
        ttq = (f"{r['ttq_s']:.1f}s (step {r['ttq_step']:.1f})" if r["reached"] else "not reached")
        print(f"{r['side']:<12} {r['ce_final_ppl']:>14.3f} {r['fkl_final_ppl']:>9.3f} {ttq:>22} "
              f"{r['ce_train_s']:>8.1f}/{r['fkl_train_s']:<8.1f} "
              f"{r['ce_ms_per_step']:>8.1f}/{r['fkl_ms_per_step']:<8.1f} "
              f"{r['ce_median_ms']:>7.1f}/{r['fkl_median_ms']:<7.1f}")
    if all(r["reached"] for r in rows):
        ratio = rows[0]["ttq_s"] / rows[1]["ttq_s"]  # kd time / PyTorch time
        faster, by = ("kd", 1 / ratio) if ratio < 1 else ("PyTorch eager", ratio)
        print(f"{faster} reaches its target {by:.2f}x sooner (kd {rows[0]['ttq_s']:.1f} s, "
              f"PyTorch eager {rows[1]['ttq_s']:.1f} s)")
    with open(os.environ.get("KD_BENCH_JSON", "bench.jsonl"), "a") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    plot(rows, a.plot)


if __name__ == "__main__":
    main()
