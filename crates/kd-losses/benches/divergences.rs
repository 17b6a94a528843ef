//! Fused vs op-composed divergences, forward + backward w.r.t. the student logits, on flex f32.
//!
//! ```text
//! cargo bench -p kd-losses --bench divergences
//! KD_BENCH_JSON=results.jsonl cargo bench -p kd-losses --bench divergences
//! KD_BENCH_QUICK=1 cargo bench -p kd-losses --bench divergences    # small shapes, few runs
//! KD_BENCH_SKIP_COMPOSED=1 cargo bench -p kd-losses --bench divergences  # fused only
//! ```
//!
//! For each (N, V) and loss (FKL, RKL, JSD β = 0.5) it reports the median and minimum of ≥ 10
//! timed runs after warm-up (the fused path reusing its pooled gradient buffer, as a training
//! loop does), for the fused path and the op-composed reference path of the same call, the peak
//! heap growth during one call that starts with an empty buffer pool (a counting allocator), and
//! the machine's
//! memory-bandwidth floor for the shape: reading student and teacher and writing the gradient,
//! `3·N·V·4` bytes, at the copy speed measured in the same run.
//!
//! Besides `fused` (the widest instruction set of the machine, [`kd_losses::fused::simd`]) it
//! times `fused_fresh` (the pool emptied before every call, so the gradient buffer is mapped
//! and page-faulted afresh each time, as PyTorch's is under glibc's defaults) and, on a machine
//! with AVX-512, `fused_avx2` (the same kernels on their AVX2 path) in the same run.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use kd_losses::fused::simd::{self, Isa};
use kd_losses::fused::{Path, with_path};
use kd_losses::{
    Divergence, ForwardKlConfig, GeneralizedJsdConfig, KdBatch, Reduction, ReverseKlConfig,
};

mod common;

use common::rng::bell;
use common::{Counting, LIVE, PEAK, median};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Copy speed in bytes/s over a buffer large enough to leave the caches.
fn copy_speed() -> f64 {
    let n = 64 << 20; // 64 Mi floats = 256 MiB
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    dst.copy_from_slice(&src); // first touch
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    // A copy reads and writes n·4 bytes each.
    (2 * n * 4) as f64 / best
}

struct Timing {
    median_ms: f64,
    min_ms: f64,
    peak_mb: f64,
}

fn time_call(
    loss: &dyn Divergence,
    s: &Tensor<2>,
    t: &Tensor<2>,
    runs: usize,
    fresh: bool,
) -> Timing {
    let call = || {
        if fresh {
            kd_losses::fused::release_buffers();
        }
        let student = s.clone().require_grad();
        let out = loss.forward(KdBatch::new(student.clone(), t.clone()), Reduction::Mean).unwrap();
        let mut grads = out.loss.backward();
        let g = student.grad_remove(&mut grads).expect("gradient");
        std::hint::black_box(g);
    };
    call();
    call(); // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        call();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Peak memory of one call that starts with an empty gradient-buffer pool, so the fused
    // path's one N×V buffer is counted (the timed calls reuse it).
    kd_losses::fused::release_buffers();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    call();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / (1 << 20) as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Timing { median_ms: median(times), min_ms: min, peak_mb: peak }
}

fn main() {
    let quick = std::env::var_os("KD_BENCH_QUICK").is_some();
    let skip_composed = std::env::var_os("KD_BENCH_SKIP_COMPOSED").is_some();
    let shapes: &[(usize, usize)] = if quick {
        &[(256, 4000), (64, 50257)]
    } else {
        &[(2048, 32000), (512, 50257), (4096, 8192)]
    };
    let (runs_fused, runs_composed) = if quick { (5, 3) } else { (10, 10) };
    let mut json = std::env::var_os("KD_BENCH_JSON").map(|p| {
        std::fs::OpenOptions::new().create(true).append(true).open(p).expect("KD_BENCH_JSON file")
    });
    let threads = rayon::current_num_threads();
    let speed = copy_speed();
    println!(
        "flex f32, {threads} rayon threads, copy speed {:.1} GB/s, kernels on {}",
        speed / 1e9,
        simd::detect().name()
    );
    println!(
        "{:<6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "loss", "N×V", "fused ms", "min", "composed", "min", "speed-up", "floor ms"
    );
    let device = Device::flex().autodiff();
    for &(n, v) in shapes {
        let s = Tensor::<2>::from_data(TensorData::new(bell(n * v, 1, 3.0), [n, v]), &device);
        let t = Tensor::<2>::from_data(TensorData::new(bell(n * v, 2, 3.0), [n, v]), &device);
        let floor_ms = (3 * n * v * 4) as f64 / speed * 1e3;
        let losses: [(&str, Box<dyn Divergence>); 3] = [
            ("fkl", Box::new(ForwardKlConfig::new().init().unwrap())),
            ("rkl", Box::new(ReverseKlConfig::new().init().unwrap())),
            ("jsd", Box::new(GeneralizedJsdConfig::new().with_beta(0.5).init().unwrap())),
        ];
        for (name, loss) in &losses {
            let none = || Timing { median_ms: f64::NAN, min_ms: f64::NAN, peak_mb: f64::NAN };
            let fused = with_path(Path::Auto, || time_call(&**loss, &s, &t, runs_fused, false));
            let fresh = with_path(Path::Auto, || time_call(&**loss, &s, &t, runs_fused, true));
            let avx2 = if simd::detect() == Isa::Avx512 && simd::set_isa(Some(Isa::Avx2Fma)) {
                let tm = with_path(Path::Auto, || time_call(&**loss, &s, &t, runs_fused, false));
                simd::set_isa(None);
                tm
            } else {
                none()
            };
            let composed = if skip_composed {
                none()
            } else {
                with_path(Path::Composed, || time_call(&**loss, &s, &t, runs_composed, false))
            };
            println!(
                "{:<6} {:>12} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.1}× {:>10.1}   fresh {:.1}, avx2 {:.1}; peak MB fused {:.0} / composed {:.0}",
                name,
                format!("{n}×{v}"),
                fused.median_ms,
                fused.min_ms,
                composed.median_ms,
                composed.min_ms,
                composed.median_ms / fused.median_ms,
                floor_ms,
                fresh.median_ms,
                avx2.median_ms,
                fused.peak_mb,
                composed.peak_mb,
            );
            if let Some(f) = json.as_mut() {
                let paths = [
                    ("fused", &fused),
                    ("fused_fresh", &fresh),
                    ("fused_avx2", &avx2),
                    ("composed", &composed),
                ];
                for (path, tm) in paths {
                    if tm.median_ms.is_nan() {
                        continue;
                    }
                    writeln!(
                        f,
                        r#"{{"bench":"divergences","loss":"{name}","n":{n},"v":{v},"path":"{path}","median_ms":{:.3},"min_ms":{:.3},"peak_mb":{:.1}}}"#,
                        tm.median_ms, tm.min_ms, tm.peak_mb
                    )
                    .unwrap();
                }
                writeln!(
                    f,
                    r#"{{"bench":"divergences","loss":"{name}","n":{n},"v":{v},"path":"floor","median_ms":{floor_ms:.3},"min_ms":{floor_ms:.3},"peak_mb":0}}"#
                )
                .unwrap();
            }
        }
    }
}
