//! `dnkd`: Decouple Non-parametric Knowledge Distillation. The teacher is a kNN datastore: the
//! teacher model's hidden states over the training corpus (keys) with the tokens that follow
//! them (values). At every counted position the teacher's hidden state queries its `k` nearest
//! keys, their tokens weighted by `softmax(−d/T_knn)` form the kNN distribution (optionally
//! interpolated with the teacher's own softmax), and the student learns from it with decoupled
//! KD (target / non-target parts, DKD) plus cross-entropy.
//!
//! ```text
//! store   = { (h_L^T(x_{<l+1}), x_{l+1}) : every counted position l of every training block }
//! t       = λ·knn(h_L^T(x_{<l+1})) + (1 − λ)·softmax(z^T)        (λ = loss.lambda_knn)
//! loss    = mean over counted positions of
//!           ce_weight·CE + α·τ²·TCKD(t ‖ q) + β·τ²·NCKD(t ‖ q)
//! ```
//!
//! The datastore is built once per [`Trainer::fit`](crate::Trainer::fit) in
//! [`Method::prepare_data`](super::Method::prepare_data) (deterministically: a resumed run
//! rebuilds the same store and checks it against the checkpoint's fingerprint), or loaded from a
//! file written by `save_datastore` (kd-losses' binary `KDNNDS01` format). The loss is
//! [`kd_losses::teachers::dnkd::Dnkd`] (formulas and conventions in its docs and in
//! `docs/teachers/dnkd.md`).
//!
//! Paper: Zhang et al., *Decouple Non-parametric Knowledge Distillation for End-to-end Speech
//! Translation* (ICASSP 2023), <https://arxiv.org/abs/2304.10295> (no official code); the kNN
//! teacher follows kNN-KD <https://github.com/FadedCosine/kNN-KD> and kNN-MT, the decoupling DKD
//! <https://github.com/megvii-research/mdistiller>.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_losses::Reduction;
use kd_losses::teachers::dnkd::{
    Datastore, Dnkd, DnkdBatch, DnkdConfig, DnkdOutput, ExactIndex, IvfConfig, IvfIndex,
    NeighbourIndex,
};
use serde::{Deserialize, Serialize};

use crate::data::{IGNORE_INDEX, TokenDataset};
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, SpecialTokens, StepContext, TeacherUse};
use crate::model::{HiddenStates, LanguageModel, align_vocab, hidden_states_across};

/// The nearest-neighbour search over the datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// Exact brute-force search ([`ExactIndex`], the default).
    #[default]
    Exact,
    /// An inverted-file index ([`IvfIndex`]) built with the `ivf` keys.
    Ivf,
}

/// Config of [`DnkdMethod`]: the `[method]` section with `name = "dnkd"`.
///
/// The loss keys are the nested table `loss` (`[method.loss]`, a
/// [`DnkdConfig`]: `k`, `knn_temperature`, `lambda_knn`, `alpha`, `beta`, `temperature`,
/// `ce_weight`, `label_smoothing`), the IVF keys the nested table `ivf` (`[method.ivf]`, an
/// [`IvfConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnkdMethodConfig {
    /// The DNKD loss (default [`DnkdConfig::default`]: `k = 8`, `knn_temperature = 10`,
    /// `lambda_knn = 1`, `alpha = 1`, `beta = 8`, `temperature = 1`, `ce_weight = 1`,
    /// `label_smoothing = 0`).
    pub loss: DnkdConfig,
    /// The teacher's hidden state that is the key and the query ([`crate::model::HiddenStates`]
    /// indices: `0` = embeddings, `num_layers` = the final normed state, the input of the output
    /// head). Unset (the default): the last one, as kNN-MT and kNN-KD.
    pub layer: Option<usize>,
    /// A datastore written before (`save_datastore` of an earlier run, or
    /// [`Datastore::save`]); unset (the default): built from the training set by the teacher.
    pub datastore: Option<PathBuf>,
    /// Where to write the datastore once built or loaded (default: nowhere).
    pub save_datastore: Option<PathBuf>,
    /// The search: `"exact"` (the default) or `"ivf"`.
    pub index: IndexKind,
    /// The IVF index's settings, used when `index = "ivf"` (default [`IvfConfig::default`]:
    /// 64 lists, 8 probed, 25 k-means iterations, seed 0, at most 65 536 training keys).
    pub ivf: IvfConfig,
    /// Training blocks per teacher forward while building the datastore, `≥ 1` (default `16`).
    pub build_batch: usize,
}

impl Default for DnkdMethodConfig {
    fn default() -> Self {
        Self {
            loss: DnkdConfig::default(),
            layer: None,
            datastore: None,
            save_datastore: None,
            index: IndexKind::Exact,
            ivf: IvfConfig::default(),
            build_batch: 16,
        }
    }
}

impl DnkdMethodConfig {
    /// Checks every setting that does not depend on the models or the data (the layer against
    /// the teacher's depth when the trainer gets its teacher; `k` and `nlist` against the
    /// datastore's size once it exists).
    ///
    /// # Errors
    /// [`TrainError::Loss`] for a bad loss key (`k = 0`, a temperature `≤ 0`, …);
    /// [`TrainError::InvalidConfig`] naming a bad `build_batch` or `ivf` key.
    pub fn validate(&self) -> Result<()> {
        self.loss.init()?;
        if self.build_batch == 0 {
            return Err(TrainError::config("build_batch", "≥ 1", 0));
        }
        if self.index == IndexKind::Ivf {
            let c = &self.ivf;
            if c.nlist == 0 {
                return Err(TrainError::config("ivf.nlist", "≥ 1", 0));
            }
            if c.nprobe == 0 || c.nprobe > c.nlist {
                return Err(TrainError::config(
                    "ivf.nprobe",
                    "a value in 1..=ivf.nlist",
                    format!("{} (nlist {})", c.nprobe, c.nlist),
                ));
            }
            if c.iterations == 0 {
                return Err(TrainError::config("ivf.iterations", "≥ 1", 0));
            }
            if c.train_size < c.nlist {
                return Err(TrainError::config(
                    "ivf.train_size",
                    "≥ ivf.nlist",
                    format!("{} (nlist {})", c.train_size, c.nlist),
                ));
            }
        }
        Ok(())
    }

    /// The method (`steps` is unused).
    ///
    /// # Errors
    /// See [`DnkdMethodConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<DnkdMethod> {
        self.validate()?;
        Ok(DnkdMethod {
            dnkd: self.loss.init()?,
            config: self.clone(),
            layer: None,
            teacher_width: None,
            store: None,
            index: None,
            expected: None,
        })
    }
}

/// The search structure over the datastore.
#[derive(Debug)]
enum Index {
    Exact(ExactIndex),
    Ivf(Box<IvfIndex>),
}

impl Index {
    fn as_dyn(&self) -> &dyn NeighbourIndex {
        match self {
            Self::Exact(i) => i,
            Self::Ivf(i) => i.as_ref(),
        }
    }
}

/// What a checkpoint records about the datastore, so a resume can check it rebuilt (or loaded)
/// the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFingerprint {
    /// Entries `M`.
    pub entries: usize,
    /// Key dimension `H`.
    pub dim: usize,
    /// [`fingerprint`] of the keys and values, as 16 hex digits.
    pub hash: String,
}

impl StoreFingerprint {
    /// The fingerprint of `store`.
    pub fn of(store: &Datastore) -> Self {
        Self {
            entries: store.len(),
            dim: store.dim(),
            hash: format!("{:016x}", fingerprint(store)),
        }
    }
}

/// FNV-1a (64 bit) over `H`, `M`, the bits of every key entry and every value, little-endian:
/// equal for two stores exactly when (up to hash collisions) they hold the same entries in the
/// same order.
pub fn fingerprint(store: &Datastore) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(&(store.dim() as u64).to_le_bytes());
    eat(&(store.len() as u64).to_le_bytes());
    store.keys().iter().for_each(|x| eat(&x.to_bits().to_le_bytes()));
    store.values().iter().for_each(|v| eat(&v.to_le_bytes()));
    h
}

/// The teacher's hidden states of `input_ids` (no graph, on the teacher's device), or the error
/// for a teacher that does not expose them.
fn states_of<T: LanguageModel>(teacher: &T, input_ids: Tensor<2, Int>) -> Result<HiddenStates> {
    hidden_states_across(teacher, input_ids).ok_or_else(|| {
        TrainError::config(
            "method",
            "a teacher that exposes its hidden states (LanguageModel::hidden_states)",
            "a teacher without them",
        )
    })
}

/// The teacher's hidden state `layer` of `input_ids`, one row per position, computed without a
/// graph on the teacher's device and returned on the device of `input_ids` (in the teacher's
/// compute dtype), with the teacher's logits of the same forward.
/// Shapes: `[batch, seq]` → `[batch·seq, H]`, `[batch, seq, vocab]`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] naming `method` when the teacher does not expose its hidden
/// states, `layer` when it is beyond the teacher's depth.
pub fn teacher_hidden<T: LanguageModel>(
    teacher: &T,
    input_ids: Tensor<2, Int>,
    layer: usize,
) -> Result<(Tensor<2>, Tensor<3>)> {
    let [b, n] = input_ids.dims();
    let states = states_of(teacher, input_ids)?;
    let depth = states.hidden.len().saturating_sub(1);
    let Some(h) = states.hidden.get(layer) else {
        return Err(TrainError::config(
            "layer",
            "a teacher hidden-state index in 0..=num_layers (0 = embeddings)",
            format!("{layer} (the teacher has {depth} layers: 0..={depth})"),
        ));
    };
    let dim = h.dims()[2];
    Ok((h.clone().reshape([b * n, dim]), states.logits))
}

/// The datastore of `data` under `teacher`: for every block, in order, and every position `l`
/// whose label counts (`labels[l] ≠ -100`), the key is the teacher's hidden state `layer` at `l`
/// and the value is `labels[l]` (the token at `l + 1`). The teacher runs without a graph on
/// `batch` blocks at a time; the result depends only on the teacher, the data, `layer` and
/// `batch` (the same store on every run). Progress goes to `log::info!`.
///
/// # Errors
/// As [`teacher_hidden`]; [`TrainError::Loss`] for a non-finite hidden state.
pub fn build_datastore<T: LanguageModel>(
    teacher: &T,
    data: &TokenDataset,
    layer: usize,
    batch: usize,
    device: &Device,
) -> Result<Datastore> {
    let batch = batch.max(1);
    let blocks: Vec<usize> = (0..data.len()).collect();
    let chunks = blocks.chunks(batch).count();
    let report_every = chunks.div_ceil(10).max(1);
    let mut store: Option<Datastore> = None;
    log::info!(
        "dnkd: building the datastore from {} training blocks (teacher hidden state {layer}, {batch} blocks per forward)",
        data.len()
    );
    for (c, idx) in blocks.chunks(batch).enumerate() {
        let b = data.batch(idx, device);
        let (hidden, _) = teacher_hidden(teacher, b.input_ids, layer)?; // [rows, H]
        let labels = b.labels.flatten::<1>(0, 1); // [rows], -100 = not counted
        let s = store.get_or_insert_with(|| Datastore::new(hidden.dims()[1]));
        s.push_tensor(hidden, labels)?;
        if (c + 1) % report_every == 0 || c + 1 == chunks {
            log::info!(
                "dnkd: datastore {}/{} blocks, {} entries",
                (c * batch + idx.len()),
                data.len(),
                s.len()
            );
        }
    }
    store.ok_or_else(|| TrainError::EmptyDataset {
        what: "train".into(),
        reason: "no block to build the dnkd datastore from".into(),
    })
}

/// Decoupled non-parametric KD (see the module docs).
#[derive(Debug)]
pub struct DnkdMethod {
    config: DnkdMethodConfig,
    dnkd: Dnkd,
    /// The resolved hidden-state index (known once the teacher is).
    layer: Option<usize>,
    /// The teacher's width at `layer`.
    teacher_width: Option<usize>,
    store: Option<Datastore>,
    index: Option<Index>,
    /// The fingerprint a restored checkpoint recorded, checked against the next store.
    expected: Option<StoreFingerprint>,
}

impl DnkdMethod {
    /// The datastore, once [`Method::prepare_data`](super::Method::prepare_data) built or loaded
    /// it.
    pub fn datastore(&self) -> Option<&Datastore> {
        self.store.as_ref()
    }

    /// The loss.
    pub fn loss(&self) -> &Dnkd {
        &self.dnkd
    }

    /// Resolves `layer` against the teacher (one forward of one token) and records its width.
    fn resolve_layer<T: LanguageModel>(&mut self, teacher: &T, device: &Device) -> Result<usize> {
        if let Some(l) = self.layer {
            return Ok(l);
        }
        let ids = Tensor::<2, Int>::from_ints([[0]], device);
        let states = states_of(teacher, ids)?;
        let depth = states.hidden.len().saturating_sub(1);
        let layer = self.config.layer.unwrap_or(depth);
        let Some(h) = states.hidden.get(layer) else {
            return Err(TrainError::config(
                "layer",
                "a teacher hidden-state index in 0..=num_layers (0 = embeddings)",
                format!("{layer} (the teacher has {depth} layers: 0..={depth})"),
            ));
        };
        self.teacher_width = Some(h.dims()[2]);
        self.layer = Some(layer);
        Ok(layer)
    }

    /// Loads the configured datastore file, checking it against the teacher's width.
    fn load_store(&self, path: &Path) -> Result<Datastore> {
        let store = Datastore::load(path).map_err(|e| TrainError::io(path, e))?;
        if let Some(width) = self.teacher_width
            && store.dim() != width
        {
            return Err(TrainError::config(
                "datastore",
                "keys of the teacher's hidden width at `layer`",
                format!("keys of dimension {} (the teacher's width is {width})", store.dim()),
            ));
        }
        log::info!("dnkd: loaded the datastore {} ({} entries)", path.display(), store.len());
        Ok(store)
    }

    /// The index over `store`, after checking `k` (and `nlist`) against its size.
    fn make_index(&self, store: &Datastore) -> Result<Index> {
        let k = self.config.loss.k;
        if store.len() < k {
            return Err(TrainError::config(
                "loss.k",
                "at most the number of datastore entries",
                format!("{k} (the datastore has {} entries)", store.len()),
            ));
        }
        Ok(match self.config.index {
            IndexKind::Exact => Index::Exact(ExactIndex),
            IndexKind::Ivf => {
                let c = &self.config.ivf;
                if c.nlist > store.len() {
                    return Err(TrainError::config(
                        "ivf.nlist",
                        "at most the number of datastore entries",
                        format!("{} (the datastore has {} entries)", c.nlist, store.len()),
                    ));
                }
                log::info!("dnkd: IVF index, {} lists, {} probed", c.nlist, c.nprobe);
                let index = IvfIndex::build(store, c)?;
                // A query scans its `nprobe` nearest lists: their sizes set the step's cost.
                let mut sizes: Vec<usize> =
                    (0..index.nlist()).map(|l| index.list(l).len()).collect();
                sizes.sort_unstable_by(|a, b| b.cmp(a));
                let top: usize = sizes.iter().take(c.nprobe).sum();
                log::info!(
                    "dnkd: IVF lists: largest {}, median {}, the {} largest hold {top} of {} entries",
                    sizes[0],
                    sizes[sizes.len() / 2],
                    c.nprobe,
                    store.len()
                );
                Index::Ivf(Box::new(index))
            }
        })
    }
}

/// Per-micro-batch diagnostics of a [`DnkdOutput`]: the means of TCKD, NCKD and CE over the
/// counted rows, and the fraction of counted rows whose kNN distribution puts its largest mass
/// on the label (ties: the label is one of the largest). `labels`: `-100` = not counted.
///
/// # Errors
/// [`TrainError::Loss`] when a diagnostic is missing from `out`.
pub fn diagnostics(out: &DnkdOutput, labels: &[i64]) -> Result<[(&'static str, f64); 4]> {
    let counted = labels.iter().filter(|&&l| l != IGNORE_INDEX).count().max(1) as f64;
    let mut means = [0.0; 3];
    for (m, name) in means.iter_mut().zip(["tckd", "nckd", "ce"]) {
        let per_row = out
            .extra(name)
            .ok_or(kd_losses::KdError::MissingInput { loss: Dnkd::ID, name: "diagnostic" })?;
        let sum = per_row.clone().inner().sum().into_scalar::<f32>();
        *m = f64::from(sum) / counted;
    }
    let mut hits = 0usize;
    for (i, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        let row = out.knn.row_probs(i);
        let top = row.iter().map(|&(_, p)| p).fold(0.0, f64::max);
        if row.iter().any(|&(v, p)| i64::from(v) == l && p >= top) {
            hits += 1;
        }
    }
    Ok([
        ("tckd", means[0]),
        ("nckd", means[1]),
        ("ce", means[2]),
        ("knn_label_top1", hits as f64 / counted),
    ])
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for DnkdMethod {
    fn name(&self) -> &'static str {
        "dnkd"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    /// Checks `layer` against the teacher as soon as the trainer has it (no parameters).
    fn init_params(
        &mut self,
        _student: &S,
        teacher: Option<&T>,
        device: &Device,
        _seed: u64,
    ) -> Result<()> {
        if let Some(teacher) = teacher {
            self.resolve_layer(teacher, &device.clone().inner())?;
        }
        Ok(())
    }

    fn prepare_data(
        &mut self,
        teacher: Option<&T>,
        data: &TokenDataset,
        _tokens: &SpecialTokens,
        device: &Device,
    ) -> Result<Option<TokenDataset>> {
        let teacher = teacher.ok_or_else(|| {
            TrainError::config("teacher", "a teacher (Trainer::with_teacher)", "dnkd")
        })?;
        let layer = self.resolve_layer(teacher, device)?;
        let store = match &self.config.datastore {
            Some(path) => self.load_store(path)?,
            None => build_datastore(teacher, data, layer, self.config.build_batch, device)?,
        };
        let print = StoreFingerprint::of(&store);
        log::info!(
            "dnkd: datastore of {} entries of dimension {}, fingerprint {}",
            print.entries,
            print.dim,
            print.hash
        );
        if let Some(expected) = &self.expected
            && *expected != print
        {
            return Err(TrainError::checkpoint(
                "state.json",
                format!(
                    "dnkd: the checkpoint was trained with a datastore of {} entries (dim {}, \
                     fingerprint {}), this run has {} entries (dim {}, fingerprint {}): resume \
                     with the same teacher, data, layer and build_batch (or the same datastore file)",
                    expected.entries,
                    expected.dim,
                    expected.hash,
                    print.entries,
                    print.dim,
                    print.hash
                ),
            ));
        }
        if let Some(path) = &self.config.save_datastore {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
            }
            store.save(path).map_err(|e| TrainError::io(path, e))?;
            log::info!("dnkd: datastore written to {}", path.display());
        }
        self.index = Some(self.make_index(&store)?);
        self.store = Some(store);
        Ok(None)
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("dnkd")?;
        let (Some(store), Some(index), Some(layer)) = (&self.store, &self.index, self.layer) else {
            return Err(TrainError::config(
                "method",
                "a dnkd datastore (built by Method::prepare_data, which Trainer::fit calls)",
                "none",
            ));
        };
        let batch = cx.next_batch();
        let [b, n] = batch.input_ids.dims();
        let rows = b * n;
        // Only the counted rows query the datastore (the loss is a mean over them anyway).
        let all_labels: Vec<i64> =
            batch.labels.clone().into_data().try_into_vec_as::<i64>().expect("int labels");
        let kept: Vec<i64> =
            (0..rows as i64).filter(|&r| all_labels[r as usize] != IGNORE_INDEX).collect();
        let labels: Vec<i64> = kept.iter().map(|&r| all_labels[r as usize]).collect();
        let m = kept.len();
        let student = cx.student.logits(batch.input_ids.clone()); // [b, n, V], with a graph
        if m == 0 {
            // Nothing counts in this micro-batch: a zero that keeps the graph.
            let zero = student.sum().mul_scalar(0.0);
            return Ok(MicroBatchLoss { loss: zero, tokens: 0, metrics: Vec::new() });
        }
        let (query, teacher_logits) = teacher_hidden(teacher, batch.input_ids.inner(), layer)?;
        let (student, model) = if self.config.loss.lambda_knn < 1.0 {
            let (s, t) = align_vocab(student, teacher_logits.autodiff(), cx.vocab_alignment)?;
            (s, Some(t))
        } else {
            (student, None)
        };
        let vocab = student.dims()[2];
        let rows_on = |device: &Device| {
            Tensor::<1, Int>::from_data(TensorData::new(kept.clone(), [m]), device)
        };
        let query = query.clone().select(0, rows_on(&query.device())); // [m, H]
        let student = student.reshape([rows, vocab]).select(0, rows_on(cx.device)); // [m, V]
        let label_t = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [m]), cx.device);
        let mut dnkd_batch = DnkdBatch::new(query, student, label_t);
        if let Some(t) = model {
            dnkd_batch = dnkd_batch
                .with_model_logits(t.reshape([rows, vocab]).select(0, rows_on(cx.device)));
        }
        let out = self.dnkd.forward(store, index.as_dyn(), dnkd_batch, Reduction::Mean)?;
        let metrics = diagnostics(&out, &labels)?.to_vec();
        Ok(MicroBatchLoss { loss: out.loss, tokens: batch.counted as u64, metrics })
    }

    fn state(&self) -> Result<serde_json::Value> {
        let print = self.store.as_ref().map(StoreFingerprint::of).or_else(|| self.expected.clone());
        Ok(match print {
            Some(p) => serde_json::json!({ "datastore": p }),
            None => serde_json::Value::Null,
        })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if let Some(p) = state.get("datastore") {
            let p = serde_json::from_value(p.clone()).map_err(|e| {
                TrainError::checkpoint("state.json", format!("dnkd.datastore: {e}"))
            })?;
            self.expected = Some(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_settings_name_their_key() {
        DnkdMethodConfig::default().validate().unwrap();
        let loss_key = |loss: DnkdConfig| match (DnkdMethodConfig { loss, ..Default::default() })
            .validate()
        {
            Err(TrainError::Loss(kd_losses::KdError::InvalidHyperparameter { name, .. })) => name,
            other => panic!("expected a loss error, got {other:?}"),
        };
        assert_eq!(loss_key(DnkdConfig::new().with_k(0)), "k");
        assert_eq!(loss_key(DnkdConfig::new().with_knn_temperature(0.0)), "knn_temperature");
        assert_eq!(loss_key(DnkdConfig::new().with_temperature(-1.0)), "temperature");
        assert_eq!(loss_key(DnkdConfig::new().with_lambda_knn(1.5)), "lambda_knn");
        let key = |c: DnkdMethodConfig| match c.validate() {
            Err(TrainError::InvalidConfig { name, .. }) => name,
            other => panic!("expected an InvalidConfig, got {other:?}"),
        };
        assert_eq!(key(DnkdMethodConfig { build_batch: 0, ..Default::default() }), "build_batch");
        let ivf =
            |ivf: IvfConfig| DnkdMethodConfig { index: IndexKind::Ivf, ivf, ..Default::default() };
        assert_eq!(key(ivf(IvfConfig::new().with_nlist(0))), "ivf.nlist");
        assert_eq!(key(ivf(IvfConfig::new().with_nlist(4).with_nprobe(5))), "ivf.nprobe");
        assert_eq!(key(ivf(IvfConfig::new().with_iterations(0))), "ivf.iterations");
        assert_eq!(key(ivf(IvfConfig::new().with_train_size(3))), "ivf.train_size");
        // The IVF keys are only checked when the IVF index is used.
        let unused = IvfConfig::new().with_nlist(0);
        DnkdMethodConfig { ivf: unused, ..Default::default() }.validate().unwrap();
    }

    #[test]
    fn keys_parse_nested_and_unknown_keys_are_errors() {
        let c: DnkdMethodConfig = serde_json::from_str(
            r#"{"layer": 1, "datastore": "store.kdnn", "save_datastore": "out/store.kdnn",
                "index": "ivf", "build_batch": 4,
                "loss": {"k": 4, "knn_temperature": 5.0, "lambda_knn": 0.5},
                "ivf": {"nlist": 8, "nprobe": 2}}"#,
        )
        .unwrap();
        assert_eq!(c.layer, Some(1));
        assert_eq!(c.datastore, Some(PathBuf::from("store.kdnn")));
        assert_eq!(c.index, IndexKind::Ivf);
        assert_eq!((c.loss.k, c.loss.knn_temperature, c.loss.lambda_knn), (4, 5.0, 0.5));
        assert_eq!(c.loss.beta, 8.0, "unset loss keys keep their defaults");
        assert_eq!((c.ivf.nlist, c.ivf.nprobe, c.ivf.iterations), (8, 2, 25));
        for bad in [
            r#"{"k": 3}"#,
            r#"{"index": "hnsw"}"#,
            r#"{"loss": {"kk": 3}}"#,
            r#"{"ivf": {"lists": 3}}"#,
        ] {
            assert!(serde_json::from_str::<DnkdMethodConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_sees_every_key_bit_value_and_order() {
        let a = Datastore::from_rows(2, vec![0.0, 1.0, 2.0, 3.0], vec![5, 6]).unwrap();
        let f = fingerprint(&a);
        assert_eq!(f, fingerprint(&a.clone()));
        let b = Datastore::from_rows(2, vec![0.0, 1.0, 2.0, 3.0], vec![5, 7]).unwrap();
        let c = Datastore::from_rows(2, vec![-0.0, 1.0, 2.0, 3.0], vec![5, 6]).unwrap();
        let d = Datastore::from_rows(2, vec![2.0, 3.0, 0.0, 1.0], vec![6, 5]).unwrap();
        let e = Datastore::from_rows(1, vec![0.0, 1.0, 2.0, 3.0], vec![5, 6, 5, 6]).unwrap();
        for other in [b, c, d, e] {
            assert_ne!(f, fingerprint(&other), "{other:?}");
        }
        let p = StoreFingerprint::of(&a);
        assert_eq!((p.entries, p.dim, p.hash.len()), (2, 2, 16));
    }
}
