//! Peak memory of one distillation step at Qwen2's vocabulary (151936) and 1024-token blocks,
//! configuration by configuration, each in a fresh process: where the memory of a kd step goes,
//! and what the chunked head, a top-k teacher and bf16 take off it.
//!
//! ```text
//! nice cargo bench -p kd-train --bench step_memory                        # every configuration
//! KD_STEP_MEMORY_BATCH=2 nice cargo bench -p kd-train --bench step_memory # 2 × 1024 tokens
//! KD_STEP_MEMORY_ONLY=dense,chunked_256 nice cargo bench -p kd-train --bench step_memory
//! KD_STEP_MEMORY_QUICK=1 cargo bench -p kd-train --bench step_memory      # small shapes, smoke
//! KD_BENCH_JSON=bench.jsonl nice cargo bench -p kd-train --bench step_memory # + a JSON line each
//! ```
//!
//! The step: a Qwen2-0.5B-wide student (896 wide, MLP 4864, 14 heads over 2 KV heads of 64,
//! tied embeddings, qkv bias) cut to 2 layers, learning by forward KL (T = 1) from a
//! Qwen2-1.5B-wide teacher (1536 wide, MLP 8960, 12 heads over 2 KV heads of 128, tied) cut to
//! 2 layers, on flex; AdamW and global-norm clipping, one batch of `B × 1024` random tokens. Few
//! layers on purpose: at this vocabulary the output head (`[tokens, 151936]` logits, 622 MB per
//! model per `f32` copy at 1024 tokens) is what the configurations differ in.
//!
//! The parent runs each configuration by re-executing this binary with
//! `KD_STEP_MEMORY_CONFIG=<name>`. The child builds its models and trainer, reads its resident
//! set (`VmRSS`), resets the high-water mark (`/proc/self/clear_refs`) and runs [`Trainer::fit`]
//! for 2 steps: a warm-up step, which also allocates AdamW's moments, then the timed one. A
//! logger catches the trainer's end-of-step line (`log_every = 1`) to read `VmRSS`/`VmHWM` and
//! reset the mark between the two steps, so the child reports the process peak over both steps,
//! its delta over the RSS before them (weights and teacher), and the steady-state step alone:
//! its peak and its delta over the RSS after the warm-up step (weights, teacher, moments). The
//! live heap's peak growth over the same spans comes from a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kd_models::sampling::Rng;
use kd_models::{CausalLm, LlamaConfig, ModelConfig};
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::methods::kd::{KdConfig, TopKTeacher};
use kd_train::params::param_values;
use kd_train::{DecayKind, MethodConfig, Precision, TrainConfig, Trainer};

/// The system allocator, counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CONFIG_VAR: &str = "KD_STEP_MEMORY_CONFIG";

/// Memory at the end of the warm-up step, read by [`StepBoundary`]: RSS, `VmHWM` (then reset)
/// and the live heap's bytes and peak (the peak then restarts from the live bytes).
static MID: std::sync::Mutex<Option<Mid>> = std::sync::Mutex::new(None);

#[derive(Debug, Clone, Copy)]
struct Mid {
    at: Instant,
    rss_mb: f64,
    hwm_mb: f64,
    live: usize,
    heap_peak: usize,
}

/// A logger that only watches for the trainer's `step 1/…` progress line.
struct StepBoundary;

impl log::Log for StepBoundary {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if !record.args().to_string().starts_with("step 1/") {
            return;
        }
        let at = Instant::now();
        let (hwm_mb, heap_peak) = (proc_status_mb("VmHWM:"), PEAK.load(Ordering::Relaxed));
        let rss_mb = proc_status_mb("VmRSS:");
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        *MID.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Mid { at, rss_mb, hwm_mb, live, heap_peak });
    }
    fn flush(&self) {}
}

/// Shapes of the run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    vocab: usize,
    seq: usize,
    /// layers, hidden, intermediate, heads, kv heads, head dim
    student: (usize, usize, usize, usize, usize, usize),
    teacher: (usize, usize, usize, usize, usize, usize),
}

const FULL: Shape = Shape {
    vocab: 151_936,
    seq: 1024,
    student: (2, 896, 4864, 14, 2, 64),
    teacher: (2, 1536, 8960, 12, 2, 128),
};

const QUICK: Shape = Shape {
    vocab: 4096,
    seq: 64,
    student: (1, 64, 128, 2, 1, 32),
    teacher: (1, 96, 192, 2, 1, 48),
};

fn shape() -> Shape {
    if std::env::var_os("KD_STEP_MEMORY_QUICK").is_some() { QUICK } else { FULL }
}

fn batch() -> usize {
    std::env::var("KD_STEP_MEMORY_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(1)
}

fn qwen2(vocab: usize, seq: usize, (layers, hidden, inter, heads, kv, hd): Shape6) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        model_type: "qwen2".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hd,
        max_position_embeddings: seq,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        qkv_bias: true,
        ..Default::default()
    })
}

type Shape6 = (usize, usize, usize, usize, usize, usize);

/// One configuration of the step.
struct Case {
    name: &'static str,
    what: &'static str,
    teacher: bool,
    config: fn(TrainConfig) -> TrainConfig,
}

fn kd(k: Option<usize>) -> MethodConfig {
    MethodConfig::Kd(KdConfig {
        teacher_top_k: k.map(|k| TopKTeacher { k, loss: Default::default() }),
        ..KdConfig::with_loss("forward_kl").expect("forward_kl")
    })
}

const CASES: &[Case] = &[
    Case {
        name: "dense",
        what: "kd, forward KL, f32, full logits of both models",
        teacher: true,
        config: |c| TrainConfig { method: kd(None), ..c },
    },
    Case {
        name: "chunked_256",
        what: "dense + chunked_head_rows = 256",
        teacher: true,
        config: |c| TrainConfig { method: kd(None), chunked_head_rows: Some(256), ..c },
    },
    Case {
        name: "chunked_1024",
        what: "dense + chunked_head_rows = 1024",
        teacher: true,
        config: |c| TrainConfig { method: kd(None), chunked_head_rows: Some(1024), ..c },
    },
    Case {
        name: "topk_64",
        what: "kd, teacher_top_k k = 64 (tail_bucket), f32",
        teacher: true,
        config: |c| TrainConfig { method: kd(Some(64)), ..c },
    },
    Case {
        name: "bf16_dense",
        what: "dense in bf16 (student compute and teacher)",
        teacher: true,
        config: |c| TrainConfig { method: kd(None), dtype: Precision::Bf16, ..c },
    },
    Case {
        name: "bf16_chunked_256",
        what: "bf16 + chunked_head_rows = 256",
        teacher: true,
        config: |c| TrainConfig {
            method: kd(None),
            dtype: Precision::Bf16,
            chunked_head_rows: Some(256),
            ..c
        },
    },
    Case {
        name: "sft",
        what: "no teacher: the student's cross-entropy, f32",
        teacher: false,
        config: |c| TrainConfig { method: MethodConfig::default(), ..c },
    },
];

/// `VmHWM` / `VmRSS` of this process in MB.
fn proc_status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kb.map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// Random token ids in `[0, vocab)`: exactly `batch` blocks of `seq`.
fn data(s: Shape, batch: usize) -> TokenDataset {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let tokens: Vec<u32> =
        (0..batch * s.seq + 1).map(|_| rng.below(s.vocab as u64) as u32).collect();
    TokenDataset::new("bench", pack_tokens(&tokens, s.seq)).expect("data")
}

/// The child: one configuration, one JSON line on stdout.
fn child(case: &Case) {
    let s = shape();
    let batch = batch();
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    device.seed(0);
    let started = std::time::Instant::now();
    let student = CausalLm::init(&qwen2(s.vocab, s.seq, s.student), &device).expect("student");
    let _ = param_values(&student); // materialise the lazily initialised parameters now
    let config = (case.config)(TrainConfig {
        steps: 2,
        batch_size: batch,
        lr: 1e-4,
        warmup_steps: 0,
        decay: DecayKind::Constant,
        eval_rouge_prompts: 0,
        log_every: 1, // the step boundary, for StepBoundary
        checkpoint_every: 0,
        output_dir: None,
        ..Default::default()
    });
    let mut trainer = Trainer::new(config, student, &device).expect("trainer");
    if case.teacher {
        let teacher = CausalLm::init(&qwen2(s.vocab, s.seq, s.teacher), &plain).expect("teacher");
        let _ = param_values(&teacher);
        trainer = trainer.with_teacher(teacher).expect("teacher");
    }
    let build_s = started.elapsed().as_secs_f64();
    let data = data(s, batch);

    log::set_logger(&StepBoundary).expect("the only logger");
    log::set_max_level(log::LevelFilter::Info);
    let build_hwm = proc_status_mb("VmHWM:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = proc_status_mb("VmRSS:");
    let hwm_before = proc_status_mb("VmHWM:");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    // The live heap every millisecond, to see where in the step its peak falls.
    let stop = AtomicBool::new(false);
    let (report, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::with_capacity(1 << 17);
            while !stop.load(Ordering::Relaxed) {
                samples.push((Instant::now(), LIVE.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        });
        let report = trainer.fit(&data, None).expect("steps");
        stop.store(true, Ordering::Relaxed);
        (report, sampler.join().expect("sampler"))
    });
    let end = Instant::now();
    let (step2_hwm, step2_heap) = (proc_status_mb("VmHWM:"), PEAK.load(Ordering::Relaxed));
    let mid = MID.lock().unwrap_or_else(std::sync::PoisonError::into_inner).expect("step 1 line");
    let mb = |bytes: usize| bytes as f64 / 1e6;
    let peak = mid.hwm_mb.max(step2_hwm);
    // Step 2's heap growth over the live bytes after step 1, largest per twentieth of the step.
    let span = (end - mid.at).as_secs_f64();
    let mut twentieths = [0usize; 20];
    for &(t, live) in samples.iter().filter(|(t, _)| *t >= mid.at) {
        let i = (((t - mid.at).as_secs_f64() / span * 20.0) as usize).min(19);
        twentieths[i] = twentieths[i].max(live.saturating_sub(mid.live));
    }

    let h = &report.history;
    assert!(h.iter().all(|r| r.loss.is_finite()), "non-finite loss: {h:?}");
    let secs = |r: &kd_train::StepRecord| r.tokens as f64 / r.tokens_per_s;
    let line = serde_json::json!({
        "config": case.name,
        "batch": batch,
        "seq": s.seq,
        "vocab": s.vocab,
        "build_s": build_s,
        "build_hwm_mb": build_hwm,
        "hwm_reset": reset,
        "rss_before_mb": before,
        "hwm_before_mb": hwm_before,
        "peak_rss_mb": peak,
        "delta_mb": peak - hwm_before,
        "peak_heap_growth_mb": mb(mid.heap_peak.max(step2_heap).saturating_sub(base)),
        "warmup_peak_rss_mb": mid.hwm_mb,
        "rss_after_warmup_mb": mid.rss_mb,
        "heap_after_warmup_mb": mb(mid.live.saturating_sub(base)),
        "step_peak_rss_mb": step2_hwm,
        "step_delta_mb": step2_hwm - mid.rss_mb,
        "step_heap_growth_mb": mb(step2_heap.saturating_sub(mid.live)),
        "step_heap_by_twentieth_mb": twentieths.map(|b| mb(b).round()),
        "warmup_step_s": secs(&h[0]),
        "step_s": secs(&h[1]),
        "tokens_per_s": h[1].tokens_per_s,
        "loss_first": h[0].loss,
    });
    println!("RESULT {line}");
}

fn main() {
    if let Ok(name) = std::env::var(CONFIG_VAR) {
        let case = CASES.iter().find(|c| c.name == name).expect("a known configuration");
        child(case);
        return;
    }
    let s = shape();
    let only = std::env::var("KD_STEP_MEMORY_ONLY").ok();
    let chosen = |c: &&Case| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == c.name));
    let exe = std::env::current_exe().expect("this binary");
    println!(
        "step_memory: flex, {} rayon threads; vocab {}, batch {} × {}; student {:?}, teacher \
         {:?} (layers, hidden, intermediate, heads, kv heads, head dim); memory in MB (10^6 B)",
        rayon::current_num_threads(),
        s.vocab,
        batch(),
        s.seq,
        s.student,
        s.teacher
    );
    println!();
    println!(
        "| configuration | peak RSS | RSS before | delta | RSS after warm-up | step 2 peak RSS | \
         step 2 delta | step 2 heap growth | step s | tokens/s | first loss |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut profiles = Vec::new();
    for case in CASES.iter().filter(chosen) {
        let out = Command::new(&exe)
            .env(CONFIG_VAR, case.name)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("re-run this binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            println!("| {} | failed ({}) | | | | | | | | | |", case.name, out.status);
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(line).expect("the child's JSON");
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} ({}) | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | \
             {:.4} |",
            case.name,
            case.what,
            f("peak_rss_mb"),
            f("rss_before_mb"),
            f("delta_mb"),
            f("rss_after_warmup_mb"),
            f("step_peak_rss_mb"),
            f("step_delta_mb"),
            f("step_heap_growth_mb"),
            f("step_s"),
            f("tokens_per_s"),
            f("loss_first"),
        );
        profiles.push(format!("{}: {}", case.name, r["step_heap_by_twentieth_mb"]));
        if let Some(p) = std::env::var_os("KD_BENCH_JSON") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("KD_BENCH_JSON file");
            writeln!(file, "{line}").expect("write KD_BENCH_JSON");
        }
        eprintln!("  {}: {line}", case.name);
    }
    println!();
    println!("step 2 heap growth (MB) over the step's twentieths (sampled every ms):");
    for p in profiles {
        println!("  {p}");
    }
}
