//! One distillation step of the training loop, end to end, on flex f32: tokens/s and peak memory.
//!
//! ```text
//! cargo bench -p kd-train --bench step                          # the system allocator
//! cargo bench -p kd-train --bench step --features mimalloc      # mimalloc, as the `kd` binary
//! KD_BENCH_JSON=bench.jsonl cargo bench -p kd-train --bench step   # also append a JSON line
//! KD_BENCH_QUICK=1 cargo bench -p kd-train --bench step        # small shapes, for a smoke run
//! ```
//!
//! The step (`distill_step_b8_s128_v50257`): a GPT-2-shaped teacher (6 layers, 384 wide, 6
//! heads) runs without a graph, a GPT-2-shaped student (2 layers, 192 wide, 3 heads) learns from
//! it by forward KL (T = 1) over the 50257-token vocabulary, AdamW (constant lr 1e-4, decay
//! groups) and global-norm clipping; a batch of 8 × 128 tokens, all counted. It is
//! [`Trainer::fit`]'s own step, timed by the trainer ([`kd_train::StepRecord::tokens_per_s`]).
//! Reported: the median and best of the timed steps after warm-up steps, and two peaks over all
//! steps of the run: the live heap's growth (a counting allocator around the one in use) and the
//! process's resident set high-water mark (`VmHWM`, reset after the models are built when the
//! kernel allows it).
//!
//! `benches/torch_step.py` runs the same step in PyTorch eager and prints the same JSON line.

use std::alloc::{GlobalAlloc, Layout};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use kd_models::sampling::Rng;
use kd_models::{CausalLm, Gpt2Config, ModelConfig};
use kd_train::MethodConfig;
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::methods::kd::KdConfig;
use kd_train::{DecayKind, TrainConfig, Trainer};

#[cfg(feature = "mimalloc")]
type Inner = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
type Inner = std::alloc::System;
#[cfg(feature = "mimalloc")]
const ALLOCATOR: &str = "mimalloc";
#[cfg(not(feature = "mimalloc"))]
const ALLOCATOR: &str = "system";

/// The allocator in use, counting live and peak bytes.
struct Counting(Inner);

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: Counting = Counting(mimalloc::MiMalloc);
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOC: Counting = Counting(std::alloc::System);

/// Shapes of one run.
struct Shape {
    name: &'static str,
    vocab: usize,
    batch: usize,
    seq: usize,
    /// layers, width, heads
    teacher: (usize, usize, usize),
    student: (usize, usize, usize),
    warmup: usize,
    timed: usize,
}

const FULL: Shape = Shape {
    name: "distill_step_b8_s128_v50257",
    vocab: 50257,
    batch: 8,
    seq: 128,
    teacher: (6, 384, 6),
    student: (2, 192, 3),
    warmup: 2,
    timed: 7,
};

const QUICK: Shape = Shape {
    name: "distill_step_quick_b2_s32_v4096",
    vocab: 4096,
    batch: 2,
    seq: 32,
    teacher: (2, 64, 2),
    student: (1, 32, 2),
    warmup: 1,
    timed: 3,
};

fn gpt2(vocab: usize, (n_layer, n_embd, n_head): (usize, usize, usize)) -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config {
        vocab_size: vocab,
        n_positions: 1024,
        n_embd,
        n_layer,
        n_head,
        ..Default::default()
    })
}

/// `VmHWM` / `VmRSS` of this process in MiB.
fn proc_status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0); false where that is not allowed.
fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn main() {
    #[cfg(feature = "mimalloc")]
    kd_train::keep_freed_memory();
    let quick = std::env::var_os("KD_BENCH_QUICK").is_some();
    let s = if quick { QUICK } else { FULL };
    let threads = rayon::current_num_threads();
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    device.seed(0);
    let teacher = CausalLm::init(&gpt2(s.vocab, s.teacher), &plain).expect("teacher");
    let student = CausalLm::init(&gpt2(s.vocab, s.student), &device).expect("student");
    // Random tokens, exactly one batch of full blocks: every step sees all of them.
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let tokens: Vec<u32> =
        (0..s.batch * s.seq + 1).map(|_| rng.below(s.vocab as u64) as u32).collect();
    let data = TokenDataset::new("bench", pack_tokens(&tokens, s.seq)).expect("data");
    let config = TrainConfig {
        steps: (s.warmup + s.timed) as u64,
        batch_size: s.batch,
        lr: 1e-4,
        warmup_steps: 0,
        decay: DecayKind::Constant,
        log_every: 0,
        method: MethodConfig::Kd(KdConfig::with_loss("forward_kl").expect("forward_kl")),
        ..Default::default()
    };
    let mut trainer = Trainer::new(config, student, &device)
        .expect("trainer")
        .with_teacher(teacher)
        .expect("teacher");

    let rss_reset = reset_rss_peak();
    let rss_before = proc_status_mb("VmRSS:").unwrap_or(f64::NAN);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let report = trainer.fit(&data, None).expect("distillation steps");
    let peak_heap_mb = PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / (1 << 20) as f64;
    let peak_rss_mb = proc_status_mb("VmHWM:").unwrap_or(f64::NAN);

    let timed = &report.history[s.warmup..];
    assert!(timed.iter().all(|r| r.loss.is_finite()), "non-finite loss");
    let tokens_per_step = timed[0].tokens as f64;
    assert_eq!(tokens_per_step as usize, s.batch * s.seq, "every token counts");
    let step_ms: Vec<f64> = timed.iter().map(|r| r.tokens as f64 / r.tokens_per_s * 1e3).collect();
    let best_ms = step_ms.iter().cloned().fold(f64::INFINITY, f64::min);
    let median_ms = median(step_ms.clone());
    let tokens_per_s = tokens_per_step / (median_ms / 1e3);

    println!(
        "{}: flex f32, {threads} rayon threads, allocator {ALLOCATOR}; teacher {}L/{}d, student \
         {}L/{}d, vocab {}, batch {} × {}",
        s.name, s.teacher.0, s.teacher.1, s.student.0, s.student.1, s.vocab, s.batch, s.seq
    );
    println!(
        "  step ms: median {median_ms:.0}, best {best_ms:.0} ({} timed after {} warm-up; all: \
         {})",
        s.timed,
        s.warmup,
        step_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" ")
    );
    println!("  tokens/s (median step): {tokens_per_s:.0}");
    println!(
        "  peak heap growth {peak_heap_mb:.0} MB; peak RSS {peak_rss_mb:.0} MB ({}; RSS before \
         the steps {rss_before:.0} MB)",
        if rss_reset { "reset after building the models" } else { "process lifetime" }
    );
    println!("  loss {:.4} → {:.4}", report.history[0].loss, report.history.last().unwrap().loss);
    if let Some(p) = std::env::var_os("KD_BENCH_JSON") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("KD_BENCH_JSON file");
        writeln!(
            f,
            r#"{{"bench":"{}","path":"kd_flex_{ALLOCATOR}","threads":{threads},"tokens_per_step":{tokens_per_step},"tokens_per_s":{tokens_per_s:.1},"median_ms":{median_ms:.1},"min_ms":{best_ms:.1},"peak_heap_mb":{peak_heap_mb:.1},"peak_rss_mb":{peak_rss_mb:.1}}}"#,
            s.name
        )
        .expect("write KD_BENCH_JSON");
    }
}
