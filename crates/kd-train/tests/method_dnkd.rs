//! The `dnkd` method: the first step's loss against a datastore built here from the teacher's
//! hidden states and `Dnkd::forward` called directly, the k = 1 teacher as the one-hot of each
//! position's next token (or of the first identical prefix's), the IVF index, the datastore's
//! save / load round trip, an exact resume (with the datastore's fingerprint checked) and clean
//! config errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use kd_losses::Reduction;
use kd_losses::teachers::dnkd::{Datastore, DnkdBatch, DnkdConfig, ExactIndex, IvfConfig};
use kd_models::CausalLm;
use kd_train::data::{BatchOrder, DataCursor, IGNORE_INDEX, TokenDataset, instruction_block};
use kd_train::methods::dnkd::{DnkdMethodConfig, IndexKind, diagnostics, fingerprint};
use kd_train::params::param_values;
use kd_train::{LanguageModel, MethodConfig, StepRecord, TrainConfig, TrainError, Trainer};

use common::{SEQ, det, seeded};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("dnkd-{name}"))
}

/// Teacher depth (its last hidden state is index 2) and width.
const TEACHER_LAYERS: usize = 2;
const TEACHER_WIDTH: usize = 16;

/// "Add" prompts `[1, a, b, 3]` with responses `[a + b (mod 20) + 4, 2]`, then two blocks with
/// the prompt of block 1 (`[1, 5, 7, 3]`, answer 16) and other answers (20, 21): three stored
/// positions with one prefix, hence one key, and three different next tokens.
fn data() -> TokenDataset {
    let mut blocks: Vec<_> = (0..40)
        .map(|i| {
            let (a, b) = (4 + i % 7, 4 + (i * 3) % 9);
            let response = [((a + b) % 20 + 4) as u32, 2];
            instruction_block(&[1, a as u32, b as u32, 3], &response, SEQ, 0)
        })
        .collect();
    assert_eq!(blocks[1].input_ids[..5], [1, 5, 7, 3, 16]);
    for answer in [20, 21] {
        blocks.push(instruction_block(&[1, 5, 7, 3], &[answer, 2], SEQ, 0));
    }
    TokenDataset::new("add", blocks).unwrap()
}

fn config(method: DnkdMethodConfig, steps: u64, out: Option<&Path>) -> TrainConfig {
    TrainConfig { steps, ..common::config(MethodConfig::Dnkd(method), out) }
}

fn teacher() -> CausalLm {
    seeded(99, TEACHER_WIDTH, TEACHER_LAYERS, &Device::flex())
}

/// A 1 × 8 student (seeded by `seed`) and the 2 × 16 teacher.
fn trainer(
    method: DnkdMethodConfig,
    steps: u64,
    out: Option<&Path>,
    seed: u64,
) -> Trainer<CausalLm> {
    let device = Device::flex().autodiff();
    let student = seeded(seed, 8, 1, &device);
    Trainer::new(config(method, steps, out), student, &device)
        .unwrap()
        .with_teacher(teacher())
        .unwrap()
}

fn method(loss: DnkdConfig) -> DnkdMethodConfig {
    DnkdMethodConfig { loss, build_batch: 8, ..DnkdMethodConfig::default() }
}

/// The datastore built here: the teacher's last hidden state at every counted position, blocks
/// in order, `batch` blocks per forward (the method's `build_batch`).
fn hand_built_store(data: &TokenDataset, batch: usize) -> Datastore {
    let device = Device::flex();
    let teacher = teacher();
    let mut store = Datastore::new(TEACHER_WIDTH);
    let all: Vec<usize> = (0..data.len()).collect();
    for idx in all.chunks(batch) {
        let b = data.batch(idx, &device);
        let [n, s] = b.input_ids.dims();
        let h = teacher.hidden_states(b.input_ids).unwrap().hidden[TEACHER_LAYERS].clone();
        store.push_tensor(h.reshape([n * s, TEACHER_WIDTH]), b.labels.reshape([n * s])).unwrap();
    }
    store
}

/// The first-identical-prefix rule: for every counted position of every block, the next token
/// of the first stored position (blocks in order, then positions) with the same input prefix.
/// A causal model gives identical prefixes identical keys, and (generically) different ones
/// different keys, so this is the k = 1 teacher's token: the query's own entry, or an earlier
/// entry at distance 0 (ties go to the lower row).
fn first_prefix_tokens(data: &TokenDataset) -> Vec<Vec<Option<u32>>> {
    let mut first: HashMap<Vec<u32>, u32> = HashMap::new();
    for b in &data.blocks {
        for (l, &y) in b.labels.iter().enumerate() {
            if y != IGNORE_INDEX {
                first.entry(b.input_ids[..=l].to_vec()).or_insert(y as u32);
            }
        }
    }
    data.blocks
        .iter()
        .map(|b| {
            (0..b.labels.len())
                .map(|l| (b.labels[l] != IGNORE_INDEX).then(|| first[&b.input_ids[..=l].to_vec()]))
                .collect()
        })
        .collect()
}

/// The blocks of the first `steps` micro-batches (batch 4, seed 5 as in `common::config`).
fn batches(data: &TokenDataset, steps: usize) -> Vec<Vec<usize>> {
    let mut order = BatchOrder::new(data.len(), 5, DataCursor::default());
    (0..steps).map(|_| order.next_batch(4)).collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: {got} vs {want}");
}

/// Step 1's loss and metrics, recomputed without the trainer: a datastore built here from the
/// teacher's hidden states, the same batch, `Dnkd::forward` with the same config (λ < 1, so
/// the teacher's logits are mixed in, label smoothing and τ ≠ 1 too).
#[test]
fn first_step_matches_a_hand_built_datastore_and_dnkd_forward() {
    let loss = DnkdConfig::new()
        .with_k(4)
        .with_knn_temperature(2.0)
        .with_lambda_knn(0.7)
        .with_temperature(2.0)
        .with_label_smoothing(0.1);
    let data = data();
    let dir = tmp("reference");
    let saved = dir.join("store.kdnn");
    let m = DnkdMethodConfig { save_datastore: Some(saved.clone()), ..method(loss.clone()) };
    let mut t = trainer(m, 1, None, 1);
    let rec = t.fit(&data, None).unwrap().history[0].clone();

    let store = hand_built_store(&data, 8);
    let counted: usize = data.blocks.iter().map(|b| b.counted()).sum();
    assert_eq!(store.len(), counted, "one entry per counted position");
    assert_eq!(Datastore::load(&saved).unwrap(), store, "the method's store is the hand-built one");

    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let idx = &batches(&data, 1)[0];
    let batch = data.batch(idx, &device);
    let [b, n] = batch.input_ids.dims();
    let rows = b * n;
    let s = student.logits(batch.input_ids.clone()).reshape([rows, common::VOCAB]);
    let th = teacher().hidden_states(batch.input_ids.clone().inner()).unwrap();
    let query = th.hidden[TEACHER_LAYERS].clone().reshape([rows, TEACHER_WIDTH]);
    let model = Tensor::from_inner(th.logits.reshape([rows, common::VOCAB]));
    let labels = batch.labels.clone().reshape([rows]);
    let dnkd = loss.init().unwrap();
    let out = dnkd
        .forward(
            &store,
            &ExactIndex,
            DnkdBatch::new(query, s, labels.clone()).with_model_logits(model),
            Reduction::Mean,
        )
        .unwrap();
    let want = f64::from(out.loss.clone().inner().into_scalar::<f32>());
    close(rec.loss, want, "step-1 loss");
    assert_eq!(rec.tokens, batch.counted as u64);
    let host: Vec<i64> = labels.into_data().try_into_vec_as::<i64>().unwrap();
    for (name, value) in diagnostics(&out, &host).unwrap() {
        close(rec.extra[name], value, name);
    }
    // The loss is ce_weight·CE + α·τ²·TCKD + β·τ²·NCKD of those means.
    let e = &rec.extra;
    close(rec.loss, e["ce"] + 4.0 * e["tckd"] + 8.0 * 4.0 * e["nckd"], "loss from its terms");
    assert!(e["tckd"] > 0.0 && e["nckd"] > 0.0 && e["ce"] > 0.0, "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With k = 1 the kNN teacher of every training position is a one-hot: on its own next token,
/// or on the next token of the first stored position with the same prefix (at distance 0).
#[test]
fn one_neighbour_gives_the_one_hot_of_the_next_token() {
    let data = data();
    let want = first_prefix_tokens(&data);
    // The designed conflict: blocks 40 and 41 share block 1's prompt, so at their first
    // response position the teacher is block 1's answer, not theirs.
    assert_eq!(want[40][3], Some(16));
    assert_eq!(want[41][3], Some(16));
    assert_eq!(data.blocks[41].labels[3], 21);

    // Queries of every block, one block per forward (not the store's batches of 8).
    let store = hand_built_store(&data, 8);
    let dnkd = DnkdConfig::new().with_k(1).with_knn_temperature(0.5).init().unwrap();
    let device = Device::flex();
    let teacher = teacher();
    for (i, block) in data.blocks.iter().enumerate() {
        let b = data.batch(&[i], &device);
        let q = teacher.hidden_states(b.input_ids).unwrap().hidden[TEACHER_LAYERS].clone();
        let q = q.reshape([SEQ, TEACHER_WIDTH]);
        let knn = dnkd.knn(&store, &ExactIndex, q, common::VOCAB).unwrap();
        let probs: Vec<f32> = knn.probs(&device).into_data().try_into_vec_as::<f32>().unwrap();
        for (l, token) in want[i].iter().enumerate() {
            let Some(token) = token else { continue };
            let (rows, dist) = knn.neighbours().row(l);
            assert_eq!(dist[0], 0.0, "block {i} position {l}: the query is stored");
            assert_eq!(store.values()[rows[0]], *token, "block {i} position {l}");
            let row = &probs[l * common::VOCAB..(l + 1) * common::VOCAB];
            for (v, p) in row.iter().enumerate() {
                assert_eq!(*p, if v == *token as usize { 1.0 } else { 0.0 }, "block {i} {l}");
            }
            if i < 40 {
                assert_eq!(i64::from(*token), block.labels[l], "no conflict in the add blocks");
            }
        }
    }

    // Through the trainer: the fraction of rows whose kNN top is the label, step by step.
    let steps = 12; // 42 blocks in batches of 4: every block, some twice
    let m = DnkdMethodConfig { loss: DnkdConfig::new().with_k(1), ..DnkdMethodConfig::default() };
    let r = trainer(m, steps, None, 1).fit(&data, None).unwrap();
    let mut seen_conflict = false;
    for (rec, idx) in r.history.iter().zip(batches(&data, steps as usize)) {
        let (mut hits, mut counted) = (0, 0);
        for &i in &idx {
            for (l, token) in want[i].iter().enumerate() {
                if let Some(token) = token {
                    counted += 1;
                    hits += usize::from(i64::from(*token) == data.blocks[i].labels[l]);
                }
            }
            seen_conflict |= i >= 40;
        }
        let frac = hits as f64 / counted as f64;
        close(rec.extra["knn_label_top1"], frac, "knn_label_top1");
        assert!(rec.loss.is_finite());
    }
    assert!(seen_conflict, "the conflicting blocks were drawn");
    assert!(r.history.iter().any(|r| r.extra["knn_label_top1"] < 1.0));
}

/// A step record as bits, without its throughputs ([`det`]).
type Bits = (u64, u64, u64, u64, Vec<(String, u64)>);

fn records(r: &[StepRecord]) -> Vec<Bits> {
    r.iter().map(det).collect()
}

/// The IVF index with every list probed finds the exact neighbours (identical runs); with one
/// list probed it runs and stays finite.
#[test]
fn the_ivf_index_runs_and_full_probing_is_exact() {
    let data = data();
    let loss = DnkdConfig::new().with_k(4);
    let exact = trainer(method(loss.clone()), 3, None, 1).fit(&data, None).unwrap();
    let ivf = |nprobe| DnkdMethodConfig {
        index: IndexKind::Ivf,
        ivf: IvfConfig::new().with_nlist(6).with_nprobe(nprobe).with_seed(3),
        ..method(loss.clone())
    };
    let full = trainer(ivf(6), 3, None, 1).fit(&data, None).unwrap();
    assert_eq!(records(&exact.history), records(&full.history));
    let one = trainer(ivf(1), 3, None, 1).fit(&data, None).unwrap();
    assert!(one.history.iter().all(|r| r.loss.is_finite() && r.extra["ce"] > 0.0));
    // More lists than entries: a clean error before the first step.
    let too_many = DnkdMethodConfig {
        index: IndexKind::Ivf,
        ivf: IvfConfig::new().with_nlist(1000).with_nprobe(1),
        ..method(loss)
    };
    let err = trainer(too_many, 1, None, 1).fit(&data, None).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "ivf.nlist", .. }), "{err}");
}

/// A saved datastore loads back equal, and a run from it trains exactly as the run that built
/// it; a store of the wrong width and a missing file are clean errors.
#[test]
fn the_saved_datastore_round_trips() {
    let data = data();
    let dir = tmp("save-load");
    let path = dir.join("nested").join("store.kdnn");
    let loss = DnkdConfig::new().with_k(3);
    let built = DnkdMethodConfig { save_datastore: Some(path.clone()), ..method(loss.clone()) };
    let a = trainer(built, 3, None, 1).fit(&data, None).unwrap();
    let store = Datastore::load(&path).unwrap();
    assert_eq!(store, hand_built_store(&data, 8));

    let loaded = DnkdMethodConfig { datastore: Some(path.clone()), ..method(loss.clone()) };
    let b = trainer(loaded.clone(), 3, None, 1).fit(&data, None).unwrap();
    assert_eq!(records(&a.history), records(&b.history));

    // The embeddings (hidden state 0) are 16 wide too, but a store of 8-wide keys is not.
    let narrow = dir.join("narrow.kdnn");
    Datastore::from_rows(8, vec![0.5; 16], vec![4, 5]).unwrap().save(&narrow).unwrap();
    let m = DnkdMethodConfig { datastore: Some(narrow), ..loaded.clone() };
    let err = trainer(m, 1, None, 1).fit(&data, None).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "datastore", .. }), "{err}");
    assert!(err.to_string().contains("dimension 8") && err.to_string().contains("16"), "{err}");
    let m = DnkdMethodConfig { datastore: Some(dir.join("missing.kdnn")), ..loaded };
    let err = trainer(m, 1, None, 1).fit(&data, None).unwrap_err();
    assert!(matches!(err, TrainError::Io { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 6 steps straight vs 3 + resume + 3 from another initialisation: the same records and
/// weights (the datastore is rebuilt identically). A resume onto another datastore is refused.
#[test]
fn resume_is_exact_and_checks_the_datastore() {
    let data = data();
    let m = method(DnkdConfig::new().with_k(4).with_lambda_knn(0.5));
    let a_dir = tmp("resume-a");
    let mut a = trainer(m.clone(), 6, Some(&a_dir), 1);
    let ra = a.fit(&data, None).unwrap();
    assert_eq!(ra.history.len(), 6);
    assert!(ra.history.iter().all(|r| r.loss.is_finite() && r.tokens > 0));
    for key in ["tckd", "nckd", "ce", "knn_label_top1"] {
        assert!(ra.history.iter().all(|r| r.extra.contains_key(key)), "{key}");
    }
    let ck3 = a_dir.join("checkpoint-000003");
    let state = std::fs::read_to_string(ck3.join("state.json")).unwrap();
    let hash = format!("{:016x}", fingerprint(&hand_built_store(&data, 8)));
    assert!(state.contains(&hash), "the checkpoint records the datastore's fingerprint");

    let b_dir = tmp("resume-b");
    let mut b = trainer(m.clone(), 6, Some(&b_dir), 2);
    b.resume_from(&ck3).unwrap();
    let rb = b.fit(&data, None).unwrap();
    assert_eq!(records(&ra.history), records(&rb.history), "step records differ after resume");
    assert_eq!(param_values(a.student()), param_values(b.student()), "student weights differ");

    // Another datastore (the teacher's embeddings as keys) under the same checkpoint.
    let other = DnkdMethodConfig { layer: Some(0), ..m };
    let mut c = trainer(other, 6, Some(&tmp("resume-c")), 2);
    c.resume_from(&ck3).unwrap();
    let err = c.fit(&data, None).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("datastore"), "{err}");
    for d in [a_dir, b_dir, tmp("resume-c")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_settings_are_clean_errors() {
    let device = Device::flex().autodiff();
    let new =
        |m: DnkdMethodConfig| Trainer::new(config(m, 2, None), seeded(1, 8, 1, &device), &device);
    let err = new(method(DnkdConfig::new().with_k(0))).unwrap_err();
    assert!(err.to_string().contains("`k`"), "{err}");
    let err = new(method(DnkdConfig::new().with_temperature(0.0))).unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
    let err = new(method(DnkdConfig::new().with_knn_temperature(f64::NAN))).unwrap_err();
    assert!(err.to_string().contains("knn_temperature"), "{err}");
    let err = new(DnkdMethodConfig { build_batch: 0, ..Default::default() }).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "build_batch", .. }), "{err}");

    // Unknown keys, at the top and in the nested tables.
    for bad in [
        r#"{"name": "dnkd", "kk": 1}"#,
        r#"{"name": "dnkd", "k": 1}"#,
        r#"{"name": "dnkd", "loss": {"k": 1, "lambda": 0.5}}"#,
        r#"{"name": "dnkd", "index": "faiss"}"#,
    ] {
        assert!(serde_json::from_str::<MethodConfig>(bad).is_err(), "{bad}");
    }
    let ok: MethodConfig = serde_json::from_str(r#"{"name": "dnkd", "loss": {"k": 2}}"#).unwrap();
    assert!(matches!(&ok, MethodConfig::Dnkd(c) if c.loss.k == 2));

    // A layer beyond the teacher: refused when the trainer gets its teacher.
    let m = DnkdMethodConfig { layer: Some(3), ..Default::default() };
    let err = new(m).unwrap().with_teacher(teacher()).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "layer", .. }), "{err}");
    assert!(err.to_string().contains("the teacher has 2 layers: 0..=2"), "{err}");
    // k above the datastore size: refused before the first step.
    let m = method(DnkdConfig::new().with_k(10_000));
    let err = new(m).unwrap().with_teacher(teacher()).unwrap().fit(&data(), None).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "loss.k", .. }), "{err}");
    // No teacher.
    let err = new(DnkdMethodConfig::default()).unwrap().fit(&data(), None).unwrap_err();
    assert!(err.to_string().contains("teacher"), "{err}");
}
