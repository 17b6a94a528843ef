//! Offline teachers: the top-k file's round trip (codec property test, the stored
//! distribution's KL error, mmap and streaming readers), corruption and mismatches refused with
//! errors that name the file and the problem, shards merged by position (missing, duplicated
//! and foreign shards refused), and training from the file: the same loss as the online top-k
//! teacher, and an exact resume.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::CausalLm;
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::methods::kd::{KdConfig, TopKTeacher};
use kd_train::offline::codec::{Quantizer, decode_block, encode_block};
use kd_train::offline::{
    PrecomputeConfig, RunIdentity, Shard, SparseBlock, TeacherIdentity, TeacherLogits,
    TeacherLogitsFile, TeacherLogitsStream, precompute_teacher,
};
use kd_train::params::param_values;
use kd_train::{LanguageModel, MethodConfig, TrainConfig, TrainError, Trainer};
use proptest::prelude::*;

mod common;
use common::{SEQ, VOCAB, det, seeded};

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("offline-{name}"))
}

/// 40 blocks of pseudo-random tokens.
fn data(seed: u32) -> TokenDataset {
    let tokens: Vec<u32> = (0..40 * SEQ as u32 + 1)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) % VOCAB as u32)
        .collect();
    TokenDataset::new("random", pack_tokens(&tokens, SEQ)).unwrap()
}

fn identity() -> RunIdentity {
    RunIdentity {
        teacher: TeacherIdentity { name: "tiny".into(), fingerprint: "sha256:00".into() },
        tokenizer: "sha256:11".into(),
    }
}

fn precompute(
    teacher: &CausalLm,
    data: &TokenDataset,
    k: usize,
    shard: Shard,
    dir: &Path,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(shard.file_name());
    let config = PrecomputeConfig { k, shard, batch_size: 3, ..Default::default() };
    let dev = Device::flex();
    let report =
        precompute_teacher(teacher, &dev, data, &identity(), &config, &path, |_, _| {}).unwrap();
    assert_eq!(report.blocks, shard.range(data.len()).len());
    assert_eq!(report.positions, (report.blocks * SEQ) as u64);
    assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
    path
}

/// `KL(p ‖ p̂)` between two distributions given by log-probabilities over the same ids,
/// each renormalised over them.
fn kl_renormalised(exact: &[f64], stored: &[f64]) -> f64 {
    let lse = |v: &[f64]| {
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let (a, b) = (lse(exact), lse(stored));
    exact.iter().zip(stored).map(|(&p, &q)| (p - a).exp() * ((p - a) - (q - b))).sum()
}

/// A Zipf-like row over `vocab` ids: log-probabilities of the top `k` (ids spread over the
/// vocabulary) and the tail mass.
fn zipf_row(vocab: usize, k: usize, s: f64, salt: u64) -> (Vec<u32>, Vec<f32>, f32) {
    let z: f64 = (1..=vocab).map(|r| (r as f64).powf(-s)).sum();
    let mut ids: Vec<u32> = Vec::new();
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while ids.len() < k {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % vocab as u64) as u32;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let lps: Vec<f32> = (1..=k).map(|r| ((r as f64).powf(-s) / z).ln() as f32).collect();
    let mass: f64 = lps.iter().map(|&v| f64::from(v).exp()).sum();
    (ids, lps, (1.0 - mass) as f32)
}

#[test]
fn the_stored_distribution_is_within_1e_3_nats_of_the_exact_top_k() {
    // Sharp and flat rows at the vocabularies of the shipped tokenizers.
    for (vocab, k) in [(512, 128), (32_000, 128), (50_257, 32), (32_000, 8)] {
        for (salt, s) in [0.6, 1.0, 1.4, 2.5].into_iter().enumerate() {
            let (ids, lps, tail) = zipf_row(vocab, k, s, salt as u64);
            let q = Quantizer::default();
            let bytes = encode_block(&ids, &lps, &[tail], k, q);
            let mut out = SparseBlock::default();
            decode_block(&bytes, 1, k, vocab, q, &mut out).unwrap();
            let SparseBlock { ids: di, logprobs: dl, tails: dt } = out;
            assert_eq!(dt, [tail]);
            // Decoded ids are ascending; line the exact entries up with them.
            let mut exact: Vec<(u32, f32)> = ids.iter().copied().zip(lps.iter().copied()).collect();
            exact.sort_by_key(|e| e.0);
            assert_eq!(di, exact.iter().map(|e| e.0).collect::<Vec<_>>());
            let e: Vec<f64> = exact.iter().map(|e| f64::from(e.1)).collect();
            let d: Vec<f64> = dl.iter().map(|&v| f64::from(v)).collect();
            let kl = kl_renormalised(&e, &d);
            assert!(kl <= 1e-3, "V = {vocab}, k = {k}, s = {s}: KL {kl}");
            let mass: f64 = d.iter().map(|v| v.exp()).sum();
            assert!(
                (mass - (1.0 - f64::from(tail))).abs() < 1e-5,
                "top-k mass {mass} vs tail {tail}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any rows round-trip: the ids exactly (ascending), every log-probability within half a
    /// step of the exact one relative to its row's most likely entry (or at the floor), the
    /// tail mass bit for bit.
    #[test]
    fn blocks_round_trip(
        vocab in 2usize..5000,
        k_frac in 0.0f64..1.0,
        positions in 1usize..6,
        seed in any::<u64>(),
        step_exp in 2u32..6,
    ) {
        let k = 1 + ((vocab.min(300) - 1) as f64 * k_frac) as usize;
        let q = Quantizer { step: 1.0 / (1u32 << step_exp) as f32, bits: 8 };
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        let (mut ids, mut lps, mut tails) = (vec![], vec![], vec![]);
        for _ in 0..positions {
            let mut row: Vec<u32> = Vec::new();
            while row.len() < k {
                let id = (next() % vocab as u64) as u32;
                if !row.contains(&id) { row.push(id); }
            }
            ids.extend(&row);
            for _ in 0..k { lps.push(-((next() % 40_000) as f32) / 1000.0); }
            tails.push((next() % 1000) as f32 / 1001.0);
        }
        let bytes = encode_block(&ids, &lps, &tails, k, q);
        let mut out = SparseBlock::default();
        decode_block(&bytes, positions, k, vocab, q, &mut out).unwrap();
        let SparseBlock { ids: di, logprobs: dl, tails: dt } = out;
        prop_assert_eq!(&dt, &tails);
        for p in 0..positions {
            let mut exact: Vec<(u32, f32)> =
                ids[p * k..(p + 1) * k].iter().copied().zip(lps[p * k..(p + 1) * k].iter().copied()).collect();
            exact.sort_by_key(|e| e.0);
            let (got_ids, got_lp) = (&di[p * k..(p + 1) * k], &dl[p * k..(p + 1) * k]);
            prop_assert_eq!(got_ids.to_vec(), exact.iter().map(|e| e.0).collect::<Vec<_>>());
            let top_exact = exact.iter().map(|e| e.1).fold(f32::NEG_INFINITY, f32::max);
            let top_got = got_lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let floor = 255.0 * q.step;
            for (e, g) in exact.iter().zip(got_lp) {
                let (de, dg) = (top_exact - e.1, top_got - g);
                let ok = (de - dg).abs() <= q.step / 2.0 + 1e-3 || (de > floor && (dg - floor).abs() < 1e-3);
                prop_assert!(ok, "relative log-prob {} stored as {}", de, dg);
            }
            let mass: f64 = got_lp.iter().map(|&v| f64::from(v).exp()).sum();
            prop_assert!((mass - (1.0 - f64::from(tails[p]))).abs() < 1e-4);
        }
    }
}

#[test]
fn a_file_round_trips_through_the_mmap_and_the_streaming_reader() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let data = data(0);
    let dir = tmp("roundtrip");
    let path = precompute(&teacher, &data, 5, Shard::WHOLE, &dir);
    let file = TeacherLogitsFile::open(&path).unwrap();
    let h = file.header();
    assert_eq!((h.k, h.vocab_size, h.dataset.seq_len, h.dataset.blocks), (5, VOCAB, SEQ, 40));
    let mut stream = TeacherLogitsStream::new(&path, std::fs::File::open(&path).unwrap()).unwrap();
    let (mut a, mut b) = (SparseBlock::default(), SparseBlock::default());
    for i in 0..40 {
        file.read_block(i, &mut a).unwrap();
        assert_eq!(stream.next_block(&mut b).unwrap(), Some(i));
        assert_eq!(a, b);
    }
    assert_eq!(stream.next_block(&mut b).unwrap(), None);
    // Block 7 holds the teacher's top 5 of block 7, at every position.
    let logits = teacher.logits(data.batch(&[7], &dev).input_ids);
    let lp = burn::tensor::activation::log_softmax(logits.reshape([SEQ, VOCAB]), 1);
    let lp = lp.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    file.read_block(7, &mut a).unwrap();
    for p in 0..SEQ {
        let row = &lp[p * VOCAB..(p + 1) * VOCAB];
        let mut order: Vec<usize> = (0..VOCAB).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let mut top: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        top.sort();
        assert_eq!(&a.ids[p * 5..(p + 1) * 5], top.as_slice(), "position {p}");
        let tail = 1.0 - order[..5].iter().map(|&i| f64::from(row[i]).exp()).sum::<f64>();
        assert!((f64::from(a.tails[p]) - tail).abs() < 1e-6);
        for (j, &id) in a.ids[p * 5..(p + 1) * 5].iter().enumerate() {
            // Half a step of rounding, plus the renormalising shift (a mean of roundings).
            let err = (a.logprobs[p * 5 + j] - row[id as usize]).abs();
            assert!(err < 0.1 + 1e-4, "position {p} id {id}: error {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn reason(e: TrainError) -> String {
    match e {
        TrainError::TeacherLogits { path, reason } => format!("{}: {reason}", path.display()),
        other => panic!("expected a TeacherLogits error, got {other}"),
    }
}

#[test]
fn corrupt_truncated_and_unfinished_files_are_refused_by_name() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let data = data(0);
    let dir = tmp("corrupt");
    let path = precompute(&teacher, &data, 4, Shard::WHOLE, &dir);
    let good = std::fs::read(&path).unwrap();
    let name = path.display().to_string();

    // A flipped bit inside block 20's record: the file opens, the block is refused.
    let file = TeacherLogitsFile::open(&path).unwrap();
    let mut block = SparseBlock::default();
    file.read_block(21, &mut block).unwrap();
    drop(file);
    let header_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    let mut off = 20 + header_len;
    for _ in 0..20 {
        off += 8 + u32::from_le_bytes(bad[off..off + 4].try_into().unwrap()) as usize;
    }
    bad[off + 10] ^= 0x08;
    std::fs::write(&path, &bad).unwrap();
    let file = TeacherLogitsFile::open(&path).unwrap();
    let msg = reason(file.read_block(20, &mut block).unwrap_err());
    assert!(msg.contains(&name) && msg.contains("block 20") && msg.contains("checksum"), "{msg}");
    file.read_block(21, &mut block).unwrap();
    drop(file);

    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Damage, &str); 5] = [
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)), "truncated"),
        ("header", Box::new(|b: &mut Vec<u8>| b[30] ^= 1), "header"),
        ("magic", Box::new(|b: &mut Vec<u8>| b[0] = b'X'), "not a teacher-logits file"),
        (
            "index",
            Box::new(|b: &mut Vec<u8>| {
                let n = b.len();
                b[n - 40] ^= 1;
            }),
            "index",
        ),
        ("empty", Box::new(|b: &mut Vec<u8>| b.clear()), "not a teacher-logits file"),
    ];
    for (what, damage, needle) in cases {
        let mut bad = good.clone();
        damage(&mut bad);
        std::fs::write(&path, &bad).unwrap();
        let msg = reason(TeacherLogitsFile::open(&path).unwrap_err());
        assert!(msg.contains(&name) && msg.contains(needle), "{what}: {msg}");
    }
    // A writer that did not finish leaves only `.kdtl.partial`, which a directory ignores.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(path.with_extension("kdtl.partial"), &good[..good.len() / 3]).unwrap();
    let msg = reason(TeacherLogits::open(&dir).unwrap_err());
    assert!(msg.contains("no *.kdtl files"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shards_merge_by_position_and_missing_duplicated_or_foreign_shards_are_named() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let data = data(0);
    let whole_dir = tmp("whole");
    let whole = precompute(&teacher, &data, 6, Shard::WHOLE, &whole_dir);
    let dir = tmp("shards");
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| precompute(&teacher, &data, 6, Shard { index: i, count: 3 }, &dir))
        .collect();
    // Three shards read as the one file: block for block the same.
    let merged = TeacherLogits::open(&dir).unwrap();
    let one = TeacherLogitsFile::open(&whole).unwrap();
    assert_eq!(merged.total_blocks(), 40);
    let (mut a, mut b) = (SparseBlock::default(), SparseBlock::default());
    for i in 0..40 {
        merged.read_block(i, &mut a).unwrap();
        one.read_block(i, &mut b).unwrap();
        assert_eq!(a, b, "block {i}");
    }
    merged.check_matches(&data, VOCAB).unwrap();
    assert!(reason(merged.read_block(40, &mut a).unwrap_err()).contains("no block 40"));
    drop(merged);

    // Missing: named with the file it would be.
    let moved = dir.join("elsewhere.bin");
    std::fs::rename(&shards[1], &moved).unwrap();
    let msg = reason(TeacherLogits::open(&dir).unwrap_err());
    assert!(
        msg.contains("shard 1/3 is missing") && msg.contains("shard-00001-of-00003.kdtl"),
        "{msg}"
    );
    // Duplicated: both files named.
    std::fs::copy(&moved, &shards[1]).unwrap();
    std::fs::copy(&shards[2], dir.join("copy-of-2.kdtl")).unwrap();
    let msg = reason(TeacherLogits::open(&dir).unwrap_err());
    assert!(msg.contains("shard 2/3 is present twice") && msg.contains("copy-of-2.kdtl"), "{msg}");
    std::fs::remove_file(dir.join("copy-of-2.kdtl")).unwrap();
    // Foreign: a shard of another run (other k) in the directory.
    let other = tmp("other");
    let foreign = precompute(&teacher, &data, 3, Shard { index: 2, count: 3 }, &other);
    std::fs::copy(&foreign, &shards[2]).unwrap();
    let msg = reason(TeacherLogits::open(&dir).unwrap_err());
    assert!(msg.contains("another run"), "{msg}");
    for d in [whole_dir, dir, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn kd_top_k(k: usize) -> MethodConfig {
    MethodConfig::Kd(KdConfig {
        teacher_top_k: Some(TopKTeacher { k, loss: Default::default() }),
        hard_label_weight: 0.1,
        ..KdConfig::default()
    })
}

fn config(method: MethodConfig, out: Option<&Path>) -> TrainConfig {
    common::config(method, out)
}

#[test]
fn data_or_vocabulary_other_than_the_files_are_refused_before_any_step() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let dir = tmp("mismatch");
    precompute(&teacher, &data(0), 4, Shard::WHOLE, &dir);
    let student = || seeded(9, 8, 1, &dev);
    // Other tokens: the first differing block is named, nothing trains.
    let mut t =
        Trainer::<CausalLm>::new(config(kd_top_k(4), None), student(), &dev.clone().autodiff())
            .unwrap()
            .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
            .unwrap();
    let msg = reason(t.fit(&data(7), None).unwrap_err());
    assert!(msg.contains("block 0 was computed on other tokens"), "{msg}");
    assert_eq!(t.step(), 0);
    // A k beyond the file's, a method that reads no stored logits, another vocabulary.
    let e = Trainer::<CausalLm>::new(config(kd_top_k(5), None), student(), &dev.clone().autodiff())
        .unwrap()
        .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("teacher_top_k.k"), "{e}");
    let sft = MethodConfig::by_name("sft").unwrap();
    let e = Trainer::<CausalLm>::new(config(sft, None), student(), &dev.clone().autodiff())
        .unwrap()
        .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("teacher_logits"), "{e}");
    let wide = {
        let c = kd_models::ModelConfig::Llama(kd_models::LlamaConfig {
            vocab_size: VOCAB + 8,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: 32,
            ..Default::default()
        });
        CausalLm::init(&c, &dev).unwrap()
    };
    let e = Trainer::<CausalLm>::new(config(kd_top_k(4), None), wide, &dev.clone().autodiff())
        .unwrap()
        .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
        .unwrap_err();
    assert!(reason(e).contains("vocabulary of 24"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_from_the_file_matches_the_online_top_k_teacher_and_resumes_exactly() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let data = data(0);
    let dir = tmp("train-logits");
    precompute(&teacher, &data, 6, Shard { index: 0, count: 2 }, &dir);
    precompute(&teacher, &data, 6, Shard { index: 1, count: 2 }, &dir);
    let student = || seeded(9, 8, 1, &dev);

    // Online with the teacher cut to its top 4, and offline from the k = 6 file cut to 4: the
    // same losses up to the quantisation of the stored log-probabilities.
    let mut online =
        Trainer::<CausalLm>::new(config(kd_top_k(4), None), student(), &dev.clone().autodiff())
            .unwrap()
            .with_teacher(teacher.clone())
            .unwrap();
    let ron = online.fit(&data, None).unwrap();
    let out_a = tmp("offline-a");
    let mut a = Trainer::<CausalLm>::new(
        config(kd_top_k(4), Some(&out_a)),
        student(),
        &dev.clone().autodiff(),
    )
    .unwrap()
    .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
    .unwrap();
    let ra = a.fit(&data, None).unwrap();
    assert_eq!(ra.history.len(), 6);
    for (x, y) in ron.history.iter().zip(&ra.history) {
        let rel = (x.loss - y.loss).abs() / x.loss.abs();
        assert!(rel < 2e-3, "step {}: online {} offline {}", x.step, x.loss, y.loss);
        assert_eq!(x.tokens, y.tokens);
    }

    // Resume from step 3: the same records and weights as the uninterrupted run.
    let out_b = tmp("offline-b");
    let mut b = Trainer::<CausalLm>::new(
        config(kd_top_k(4), Some(&out_b)),
        student(),
        &dev.clone().autodiff(),
    )
    .unwrap()
    .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
    .unwrap();
    b.resume_from(&out_a.join("checkpoint-000003")).unwrap();
    let rb = b.fit(&data, None).unwrap();
    let da: Vec<_> = ra.history.iter().map(det).collect();
    let db: Vec<_> = rb.history.iter().map(det).collect();
    assert_eq!(da, db, "step records differ after resume");
    assert_eq!(param_values(a.student()), param_values(b.student()), "weights differ");
    for d in [dir, out_a, out_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_teacher_with_non_finite_outputs_writes_nothing() {
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let mut values = param_values(&teacher);
    for v in values.values_mut() {
        let n = v.num_elements();
        *v = burn::tensor::TensorData::new(vec![f32::NAN; n], v.shape().to_vec());
    }
    let teacher = kd_train::params::load_param_values(teacher, &values).unwrap();
    let dir = tmp("nan");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Shard::WHOLE.file_name());
    let config = PrecomputeConfig { k: 4, ..Default::default() };
    let e = precompute_teacher(&teacher, &dev, &data(0), &identity(), &config, &path, |_, _| {})
        .unwrap_err();
    assert!(reason(e).contains("not finite"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "a partial file stayed behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_top_k_convention_trains_from_the_file_through_the_fused_kernel() {
    use kd_train::kd_losses;
    use kd_train::kd_losses::{TopKConvention, TopKKlConfig};
    let dev = Device::flex();
    let teacher = seeded(3, 16, 2, &dev);
    let data = data(0);
    let dir = tmp("conventions");
    precompute(&teacher, &data, 6, Shard::WHOLE, &dir);
    for convention in
        [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
    {
        let method = |k| {
            MethodConfig::Kd(KdConfig {
                teacher_top_k: Some(TopKTeacher {
                    k,
                    loss: TopKKlConfig { convention, temperature: 2.0, ..Default::default() },
                }),
                ..KdConfig::default()
            })
        };
        let config = |k| TrainConfig { steps: 2, ..config(method(k), None) };
        let mut online =
            Trainer::<CausalLm>::new(config(6), seeded(9, 8, 1, &dev), &dev.clone().autodiff())
                .unwrap()
                .with_teacher(teacher.clone())
                .unwrap();
        let ron = online.fit(&data, None).unwrap();
        let before = kd_losses::fused::fused_calls();
        let mut stored =
            Trainer::<CausalLm>::new(config(6), seeded(9, 8, 1, &dev), &dev.clone().autodiff())
                .unwrap()
                .with_teacher_logits(TeacherLogits::open(&dir).unwrap())
                .unwrap();
        let roff = stored.fit(&data, None).unwrap();
        assert!(kd_losses::fused::fused_calls() > before, "{convention:?}: no fused call");
        // The stored distribution differs from the exact top-k by the rounding of its codes
        // (KL < 1e-3 nats), which bounds the loss difference in absolute terms too (renorm_both
        // losses are that small here).
        for (x, y) in ron.history.iter().zip(&roff.history) {
            let diff = (x.loss - y.loss).abs();
            assert!(
                diff < 2e-3 * x.loss.abs() + 5e-4,
                "{convention:?} step {}: online {} stored {}",
                x.step,
                x.loss,
                y.loss
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
