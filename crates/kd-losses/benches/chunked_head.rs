//! Chunked LM head + loss vs the dense path (logits = h·Wᵀ, then the loss), forward + backward
//! w.r.t. the hidden states and the head weight, forward KL, on flex f32.
//!
//! ```text
//! cargo bench -p kd-losses --bench chunked_head
//! KD_BENCH_JSON=results.jsonl cargo bench -p kd-losses --bench chunked_head
//! KD_BENCH_QUICK=1 cargo bench -p kd-losses --bench chunked_head     # small shape, few runs
//! KD_BENCH_SHAPE=2048,768,50257 KD_CHUNK_ROWS=512 cargo bench -p kd-losses --bench chunked_head
//! ```
//!
//! Default shape: N = 8192 rows, H = 768, V = 50257 (GPT-2 head), chunks of 1024 rows. Paths:
//! `unchunked` (dense student logits `[N, V]`, then the loss), `chunked` (same dense teacher
//! logits, sliced per chunk) and `chunked_teacher_hidden` (teacher given as hidden states
//! `[N, H]` and a head `[V, H]`, so neither side's `[N, V]` logits ever exist). Each path
//! reports the median and minimum time of a few runs after one warm-up and the peak heap growth
//! during a call (a counting allocator; the inputs are allocated before and not counted).

use std::io::Write;

use burn::tensor::{Device, Tensor, TensorData};
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, Divergence, ForwardKlConfig, KdBatch,
    Reduction,
};

mod common;

use common::rng::bell;
use common::{Counting, time_call};

#[global_allocator]
static ALLOC: Counting = Counting;

fn env_usizes(name: &str) -> Option<Vec<usize>> {
    let v = std::env::var(name).ok()?;
    Some(
        v.split(',')
            .map(|x| x.trim().parse().expect("a comma-separated list of integers"))
            .collect(),
    )
}

fn main() {
    let quick = std::env::var_os("KD_BENCH_QUICK").is_some();
    let (n, h, v) = match env_usizes("KD_BENCH_SHAPE").as_deref() {
        Some([n, h, v]) => (*n, *h, *v),
        Some(_) => panic!("KD_BENCH_SHAPE=N,H,V"),
        None if quick => (512, 64, 8000),
        None => (8192, 768, 50257),
    };
    let chunk = env_usizes("KD_CHUNK_ROWS").map_or(if quick { 128 } else { 1024 }, |c| c[0]);
    let runs = if quick { 5 } else { 3 };
    let mut json = std::env::var_os("KD_BENCH_JSON").map(|p| {
        std::fs::OpenOptions::new().create(true).append(true).open(p).expect("KD_BENCH_JSON file")
    });
    let threads = rayon::current_num_threads();
    println!(
        "flex f32, {threads} rayon threads; N={n} H={h} V={v}, chunks of {chunk} rows, forward KL"
    );

    let device = Device::flex().autodiff();
    let tensor = |shape: [usize; 2], seed: u64, std: f32| {
        Tensor::<2>::from_data(
            TensorData::new(bell(shape[0] * shape[1], seed, std), shape),
            &device,
        )
    };
    // Logits of std ≈ 2: hidden ~ N(0, 1), head ~ N(0, 2/√H).
    let hidden = tensor([n, h], 1, 1.0);
    let weight = tensor([v, h], 2, 2.0 / (h as f32).sqrt());
    let t_hidden = tensor([n, h], 3, 1.0);
    let t_weight = tensor([v, h], 4, 2.0 / (h as f32).sqrt());
    let t_logits = t_hidden.clone().matmul(t_weight.clone().transpose()).inner().autodiff();
    let fkl = ForwardKlConfig::new().init().unwrap();
    let head = ChunkedHeadLoss::new(chunk).unwrap();

    let run_grads = |loss: Tensor<1>, hs: &Tensor<2>, ws: &Tensor<2>| -> f32 {
        let mut grads = loss.backward();
        std::hint::black_box(hs.grad_remove(&mut grads).expect("hidden gradient"));
        std::hint::black_box(ws.grad_remove(&mut grads).expect("weight gradient"));
        loss.into_scalar::<f32>()
    };
    let unchunked = || {
        let (hs, ws) = (hidden.clone().require_grad(), weight.clone().require_grad());
        let logits = hs.clone().matmul(ws.clone().transpose()); // [N, V]
        let out = fkl.forward(KdBatch::new(logits, t_logits.clone()), Reduction::Mean).unwrap();
        run_grads(out.loss, &hs, &ws)
    };
    let chunked = |teacher: &dyn Fn() -> ChunkedTeacher| {
        let (hs, ws) = (hidden.clone().require_grad(), weight.clone().require_grad());
        let batch = ChunkedHeadBatch::new(hs.clone(), ws.clone(), teacher());
        let out = head.forward(&fkl, batch, Reduction::Mean).unwrap();
        run_grads(out.loss, &hs, &ws)
    };
    let dense_teacher = || ChunkedTeacher::Logits(t_logits.clone());
    let hidden_teacher = || ChunkedTeacher::Hidden {
        hidden: t_hidden.clone(),
        weight: t_weight.clone(),
        bias: None,
    };

    let results = [
        ("unchunked", time_call(1, runs, unchunked)),
        ("chunked", time_call(1, runs, || chunked(&dense_teacher))),
        ("chunked_teacher_hidden", time_call(1, runs, || chunked(&hidden_teacher))),
    ];
    let base = &results[0].1;
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>9} {:>12}",
        "path", "median ms", "min ms", "peak MB", "peak %", "loss"
    );
    for (path, t) in &results {
        println!(
            "{:<24} {:>10.0} {:>10.0} {:>10.0} {:>8.1}% {:>12.6}",
            path,
            t.median_ms,
            t.min_ms,
            t.peak_mb,
            100.0 * t.peak_mb / base.peak_mb,
            t.loss
        );
        if let Some(f) = json.as_mut() {
            writeln!(
                f,
                r#"{{"bench":"chunked_head","loss":"fkl","n":{n},"h":{h},"v":{v},"chunk_rows":{chunk},"path":"{path}","median_ms":{:.3},"min_ms":{:.3},"peak_mb":{:.1}}}"#,
                t.median_ms, t.min_ms, t.peak_mb
            )
            .unwrap();
        }
    }
    let rel = (results[1].1.loss - base.loss).abs() / base.loss.abs().max(1e-12);
    println!("chunked vs unchunked loss: relative difference {rel:.2e}");
}
