//! The teacher-logits file ([`kd_train::offline`]): bytes per token, the stored distribution's
//! error, and write and read throughput, at k = 8, 32, 128.
//!
//! ```text
//! cargo bench -p kd-train --bench offline
//! KD_OFFLINE_TEACHER=DIR cargo bench -p kd-train --bench offline   # another real teacher
//! ```
//!
//! Two sources of distributions:
//!
//! - **real**: a trained teacher over the shipped TinyStories slice, 64 blocks of 64 tokens: the
//!   Hugging Face directory `KD_OFFLINE_TEACHER` (default `runs/offline/teacher/model`, the
//!   README demo's 4 × 128 teacher that `benches/offline_table.py` trains; vocabulary 512), with
//!   its `tokenizer.json` or the shipped 512-token tokenizer; skipped when absent;
//! - **zipf-32000** / **zipf-50257**: rows of a Zipf law `p_r ∝ r^(−s)` with `s` drawn in
//!   `[0.7, 2.0]` per position and the top-k ids spread uniformly over a LLaMA-2 / GPT-2-sized
//!   vocabulary (the costliest case for the id coding: real top-k ids crowd the frequent,
//!   low ids), 4096 positions.
//!
//! Reported per source and k: bytes per token (header, checksums and index included), the KL
//! divergence `KL(p ‖ p̂)` between the exact top-k distribution and the stored one (both
//! renormalised over the top-k; mean and worst position), the largest error of the stored
//! top-k mass, and throughput: encode + write (file synced), open + check every checksum +
//! decode every block, in token positions per second. The teacher's own forward pass is
//! timed apart (real source).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, activation};
use kd_models::{CausalLm, Tokenizer};
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::offline::{
    DatasetPosition, Header, Shard, SparseBlock, TeacherIdentity, TeacherLogits,
    TeacherLogitsWriter,
};

const SEQ: usize = 64;

/// Exact top-k rows: ids and f32 log-probabilities `[positions, k]`, tails.
struct Rows {
    vocab: usize,
    k: usize,
    ids: Vec<u32>,
    lps: Vec<f32>,
    tails: Vec<f32>,
}

fn zipf(vocab: usize, k: usize, positions: usize) -> Rows {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ids, mut lps, mut tails) = (vec![], vec![], vec![]);
    for _ in 0..positions {
        let s = 0.7 + 1.3 * (next() % 10_000) as f64 / 10_000.0;
        let z: f64 = (1..=vocab).map(|r| (r as f64).powf(-s)).sum();
        let mut row: Vec<u32> = Vec::with_capacity(k);
        while row.len() < k {
            let id = (next() % vocab as u64) as u32;
            if !row.contains(&id) {
                row.push(id);
            }
        }
        ids.extend(row);
        let mut mass = 0.0;
        for r in 1..=k {
            let p = (r as f64).powf(-s) / z;
            mass += p;
            lps.push(p.ln() as f32);
        }
        tails.push((1.0 - mass) as f32);
    }
    Rows { vocab, k, ids, lps, tails }
}

/// The teacher's exact top-k rows over the first `blocks` blocks of the data, and the seconds
/// its forward passes took.
fn real(teacher: &CausalLm, data: &TokenDataset, k: usize, blocks: usize) -> (Rows, f64) {
    let dev = Device::flex();
    let vocab = teacher.config().vocab_size();
    let start = Instant::now();
    let (mut ids, mut lps) = (vec![], vec![]);
    for chunk in (0..blocks).collect::<Vec<_>>().chunks(8) {
        let input = data.batch(chunk, &dev).input_ids;
        let logits = teacher.forward(input, None, None);
        let [b, n, v] = logits.dims();
        let lp = activation::log_softmax(logits.reshape([b * n, v]), 1);
        let (values, top) = lp.topk_with_indices(k, 1);
        lps.extend(values.into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
        ids.extend(
            top.into_data().convert::<i64>().try_to_vec::<i64>().unwrap().iter().map(|&i| i as u32),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let tails = lps
        .chunks_exact(k)
        .map(|r| (1.0 - r.iter().map(|&v| f64::from(v).exp()).sum::<f64>()).max(0.0) as f32)
        .collect();
    (Rows { vocab, k, ids, lps, tails }, secs)
}

fn header(rows: &Rows, blocks: usize) -> Header {
    Header {
        format: "kd-teacher-logits".into(),
        version: kd_train::offline::file::FORMAT_VERSION,
        vocab_size: rows.vocab,
        k: rows.k,
        temperature: 1.0,
        logprob_step: kd_train::offline::Quantizer::default().step,
        logprob_bits: 8,
        tokenizer: "sha256:bench".into(),
        teacher: TeacherIdentity { name: "bench".into(), fingerprint: "sha256:bench".into() },
        dataset: DatasetPosition {
            blocks,
            seq_len: SEQ,
            fingerprint: "sha256:bench".into(),
            shard: Shard::WHOLE,
            first_block: 0,
            num_blocks: blocks,
        },
        created_by: "bench".into(),
    }
}

/// `KL(p ‖ p̂)` of two log-probability rows over the same ids, each renormalised.
fn kl(exact: &[f64], stored: &[f64]) -> f64 {
    let lse = |v: &[f64]| {
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let (a, b) = (lse(exact), lse(stored));
    exact.iter().zip(stored).map(|(&p, &q)| (p - a).exp() * ((p - a) - (q - b))).sum()
}

fn measure(name: &str, rows: &Rows, dir: &Path, teacher_tok_s: Option<f64>) {
    let (k, positions) = (rows.k, rows.tails.len());
    let blocks = positions / SEQ;
    let path = dir.join(format!("{name}-k{k}.kdtl"));
    let start = Instant::now();
    let mut w = TeacherLogitsWriter::create(&path, header(rows, blocks)).unwrap();
    let dummy = vec![0u32; SEQ];
    for b in 0..blocks {
        let (r, e) = (b * SEQ * k, (b + 1) * SEQ * k);
        w.write_block(
            &dummy,
            &rows.ids[r..e],
            &rows.lps[r..e],
            &rows.tails[b * SEQ..(b + 1) * SEQ],
        )
        .unwrap();
    }
    let (_, bytes) = w.finish().unwrap();
    let write_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let file = TeacherLogits::open(&path).unwrap();
    file.files().iter().for_each(|f| f.verify_records().unwrap());
    let mut out = vec![SparseBlock::default(); blocks];
    for (b, o) in out.iter_mut().enumerate() {
        file.read_block(b, o).unwrap();
    }
    let read_s = start.elapsed().as_secs_f64();

    let (mut sum, mut worst, mut mass_err) = (0.0f64, 0.0f64, 0.0f64);
    for p in 0..positions {
        let (b, q) = (p / SEQ, p % SEQ);
        let mut exact: Vec<(u32, f32)> = rows.ids[p * k..(p + 1) * k]
            .iter()
            .copied()
            .zip(rows.lps[p * k..(p + 1) * k].iter().copied())
            .collect();
        exact.sort_by_key(|e| e.0);
        let got = &out[b].logprobs[q * k..(q + 1) * k];
        assert_eq!(
            &out[b].ids[q * k..(q + 1) * k],
            exact.iter().map(|e| e.0).collect::<Vec<_>>().as_slice()
        );
        let e: Vec<f64> = exact.iter().map(|e| f64::from(e.1)).collect();
        let g: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
        let d = kl(&e, &g);
        sum += d;
        worst = worst.max(d);
        let (me, mg) =
            (e.iter().map(|v| v.exp()).sum::<f64>(), g.iter().map(|v| v.exp()).sum::<f64>());
        mass_err = mass_err.max((me - mg).abs());
    }
    let teacher = teacher_tok_s.map_or("—".to_string(), |t| format!("{t:.0}"));
    println!(
        "| {name} | {} | {k} | {:.1} | {:.1e} | {:.1e} | {:.0e} | {:.2e} | {:.2e} | {teacher} |",
        rows.vocab,
        bytes as f64 / positions as f64,
        sum / positions as f64,
        worst,
        mass_err,
        positions as f64 / write_s,
        positions as f64 / read_s,
    );
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("kd-offline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "| source | vocab | k | bytes/token | KL mean | KL worst | top-k mass error | write tok/s | read tok/s | teacher tok/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let teacher_dir = std::env::var_os("KD_OFFLINE_TEACHER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("runs/offline/teacher/model"));
    let dev = Device::flex();
    let real_data = CausalLm::from_pretrained(&teacher_dir, &dev).ok().map(|teacher| {
        let tok_dir = if teacher_dir.join("tokenizer.json").exists() {
            teacher_dir.clone()
        } else {
            root.join("crates/kd-cli/assets")
        };
        let tok = Tokenizer::from_dir(&tok_dir).unwrap();
        let text =
            std::fs::read_to_string(root.join("crates/kd-cli/assets/tinystories.txt")).unwrap();
        let ids = tok.encode(&text[..text.len().min(400_000)], false).unwrap();
        (teacher, TokenDataset::new("tinystories", pack_tokens(&ids, SEQ)).unwrap())
    });
    for k in [8, 32, 128] {
        if let Some((teacher, data)) = &real_data {
            let blocks = data.len().min(64);
            let (rows, secs) = real(teacher, data, k, blocks);
            let name = "trained teacher".to_string();
            measure(&name, &rows, &dir, Some((blocks * SEQ) as f64 / secs));
        }
        for vocab in [32_000, 50_257] {
            measure(&format!("zipf-{vocab}"), &zipf(vocab, k, 64 * SEQ), &dir, None);
        }
    }
    if real_data.is_none() {
        eprintln!("(no real teacher at {}: set KD_OFFLINE_TEACHER=DIR)", teacher_dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
