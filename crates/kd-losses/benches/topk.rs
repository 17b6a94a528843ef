//! Sparse top-k KL (`TopKKl`), fused kernel vs op-composed path, and the dense forward KL on the
//! same student; forward + backward w.r.t. the student logits, on flex f32.
//!
//! ```text
//! cargo bench -p kd-losses --bench topk
//! KD_BENCH_JSON=results.jsonl cargo bench -p kd-losses --bench topk
//! KD_BENCH_QUICK=1 cargo bench -p kd-losses --bench topk     # small shape, few runs
//! ```
//!
//! Shape N = 2048 rows, V = 32000, k = 64. Paths: `topk_<convention>` (the fused kernel, the
//! default on flex f32; its gradient buffer comes from the pool, already mapped),
//! `topk_tail_bucket_fresh` (the same with the pool emptied before every call: a fresh
//! `N × V` buffer, page faults included, so its peak shows the one buffer the call allocates),
//! `topk_<convention>_composed` (the op-composed `O(N·k)` path, the reference),
//! `topk_tail_bucket_mask` (an older implementation: an `N × V` membership mask and a masked
//! log-sum-exp for the student tail), `dense_fkl` (forward KL on dense teacher logits, fused
//! kernel) and `dense_fkl_composed` (the op-composed forward KL). Median and minimum of ≥ 5
//! timed runs after warm-up; peak heap growth during the timed calls (a counting allocator;
//! buffers already in the pool are not growth).

use std::io::Write;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use kd_losses::fused::{Path, release_buffers, with_path};
use kd_losses::logspace::{log_softmax, logsumexp, sum_rows};
use kd_losses::{
    Divergence, ForwardKlConfig, KdBatch, Reduction, SparseKdBatch, TopKConvention, TopKKlConfig,
};

mod common;

use common::rng::bell;
use common::{Counting, time_call};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The previous tail-bucket implementation at `T = 1`, every row counted (mean over rows): the
/// student tail as a log-sum-exp over an `N × V` mask of the entries outside the ids.
fn tail_bucket_mask(student: Tensor<2>, ids: Tensor<2, Int>, lp: Tensor<2>) -> Tensor<1> {
    let [rows, vocab] = student.dims();
    let device = student.device();
    let log_q = log_softmax(student); // [rows, vocab]
    let log_q_k = log_q.clone().gather(1, ids.clone()); // [rows, k]
    let mass = sum_rows(lp.clone().exp()); // [rows]
    let log_tail = mass.neg().add_scalar(1.0).clamp_min(1e-30).log().unsqueeze_dim::<2>(1);
    let log_z = logsumexp(Tensor::cat(vec![lp.clone(), log_tail.clone()], 1));
    let log_p = lp.sub(log_z.clone());
    let log_p_tail = log_tail.sub(log_z).squeeze_dim::<1>(1);
    let in_topk = Tensor::<2>::zeros([rows, vocab], &device)
        .scatter(1, ids.clone(), Tensor::ones(ids.dims(), &device), IndexingUpdateOp::Add)
        .greater_elem(0.5);
    let log_q_tail = logsumexp(log_q.mask_fill(in_topk, -1e30)).squeeze_dim::<1>(1);
    let head = sum_rows(log_p.clone().exp().mul(log_p.sub(log_q_k)));
    let p_tail = log_p_tail.clone().exp();
    head.add(p_tail.mul(log_p_tail.sub(log_q_tail))).mean()
}

/// The teacher's top-k ids and full-vocabulary log-probabilities, row by row on the host.
fn top_k(teacher: &[f32], n: usize, v: usize, k: usize) -> (Vec<i64>, Vec<f32>) {
    let (mut ids, mut lps) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    for row in teacher.chunks(v) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + row.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32;
        let mut order: Vec<usize> = (0..v).collect();
        order.select_nth_unstable_by(k - 1, |a, b| row[*b].partial_cmp(&row[*a]).unwrap());
        order.truncate(k);
        for i in order {
            ids.push(i as i64);
            lps.push(row[i] - lse);
        }
    }
    debug_assert_eq!(ids.len(), n * k);
    (ids, lps)
}

fn main() {
    let quick = std::env::var_os("KD_BENCH_QUICK").is_some();
    let (n, v, k) = if quick { (256, 4000, 16) } else { (2048, 32000, 64) };
    let runs = if quick { 5 } else { 7 };
    let mut json = std::env::var_os("KD_BENCH_JSON").map(|p| {
        std::fs::OpenOptions::new().create(true).append(true).open(p).expect("KD_BENCH_JSON file")
    });
    println!("flex f32, {} rayon threads; N={n} V={v} k={k}", rayon::current_num_threads());

    let device = Device::flex().autodiff();
    let teacher_host = bell(n * v, 2, 3.0);
    // Student = 0.8·teacher + noise: correlated, as during distillation.
    let student_host: Vec<f32> =
        teacher_host.iter().zip(bell(n * v, 1, 1.5)).map(|(t, e)| 0.8 * t + e).collect();
    let (ids_host, lp_host) = top_k(&teacher_host, n, v, k);
    let student = Tensor::<2>::from_data(TensorData::new(student_host, [n, v]), &device);
    let teacher = Tensor::<2>::from_data(TensorData::new(teacher_host, [n, v]), &device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids_host, [n, k]), &device);
    let lp = Tensor::<2>::from_data(TensorData::new(lp_host, [n, k]), &device);

    let backward = |loss: Tensor<1>, s: &Tensor<2>| -> f32 {
        let mut grads = loss.backward();
        std::hint::black_box(s.grad_remove(&mut grads).expect("student gradient"));
        loss.into_scalar::<f32>()
    };
    let topk = |convention: TopKConvention| {
        let loss = TopKKlConfig::new(convention).init().unwrap();
        let (student, ids, lp) = (&student, &ids, &lp);
        move || {
            let s = student.clone().require_grad();
            let batch = SparseKdBatch {
                student_logits: s.clone(),
                teacher_topk_ids: ids.clone(),
                teacher_topk_logprobs: lp.clone(),
                labels: None,
                mask: None,
            };
            backward(loss.forward(batch, Reduction::Mean).unwrap().loss, &s)
        }
    };
    let fkl = ForwardKlConfig::new().init().unwrap();
    let dense = || {
        let s = student.clone().require_grad();
        let out = fkl.forward(KdBatch::new(s.clone(), teacher.clone()), Reduction::Mean).unwrap();
        backward(out.loss, &s)
    };
    let mask_reference = || {
        let s = student.clone().require_grad();
        backward(tail_bucket_mask(s.clone(), ids.clone(), lp.clone()), &s)
    };

    let fresh = {
        let call = topk(TopKConvention::TailBucket);
        move || {
            // Empty before (a fresh buffer) and after (so the pool is not part of the base).
            release_buffers();
            let loss = call();
            release_buffers();
            loss
        }
    };
    let composed = |convention| with_path(Path::Composed, || time_call(2, runs, topk(convention)));
    let results = [
        ("topk_tail_bucket", time_call(2, runs, topk(TopKConvention::TailBucket))),
        ("topk_tail_bucket_fresh", time_call(2, runs, fresh)),
        ("topk_tail_bucket_composed", composed(TopKConvention::TailBucket)),
        ("topk_renorm_teacher", time_call(2, runs, topk(TopKConvention::RenormTeacher))),
        ("topk_renorm_teacher_composed", composed(TopKConvention::RenormTeacher)),
        ("topk_renorm_both", time_call(2, runs, topk(TopKConvention::RenormBoth))),
        ("topk_renorm_both_composed", composed(TopKConvention::RenormBoth)),
        ("topk_tail_bucket_mask", time_call(2, runs, mask_reference)),
        ("dense_fkl", time_call(2, runs, dense)),
        ("dense_fkl_composed", with_path(Path::Composed, || time_call(2, runs, dense))),
    ];
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>12}",
        "path", "median ms", "min ms", "peak MB", "loss"
    );
    for (path, t) in &results {
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>10.1} {:>12.6}",
            path, t.median_ms, t.min_ms, t.peak_mb, t.loss
        );
        if let Some(f) = json.as_mut() {
            writeln!(
                f,
                r#"{{"bench":"topk","loss":"{loss}","n":{n},"v":{v},"k":{k},"path":"{path}","median_ms":{:.3},"min_ms":{:.3},"peak_mb":{:.1}}}"#,
                t.median_ms,
                t.min_ms,
                t.peak_mb,
                loss = if path.starts_with("dense") { "forward_kl" } else { "topk_kl" }
            )
            .unwrap();
        }
    }
    let loss = |name: &str| results.iter().find(|(p, _)| *p == name).expect("a path").1.loss;
    let rel = |a: f32, b: f32| (a - b).abs() / b.abs();
    for convention in ["tail_bucket", "renorm_teacher", "renorm_both"] {
        let fused = loss(&format!("topk_{convention}"));
        let composed = loss(&format!("topk_{convention}_composed"));
        println!(
            "{convention}: fused vs composed, relative difference {:.2e}",
            rel(fused, composed)
        );
    }
    println!(
        "tail_bucket: composed vs mask reference, relative difference {:.2e}",
        rel(loss("topk_tail_bucket_composed"), loss("topk_tail_bucket_mask"))
    );
}
