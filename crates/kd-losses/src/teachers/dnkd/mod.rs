//! DNKD: a teacher built from a kNN datastore of hidden states, distilled with decoupled KD.
//!
//! The teacher needs no teacher model: a [`Datastore`] holds `(hidden state, next token)` pairs
//! collected over a corpus; for each training position the student's (or a frozen model's)
//! hidden state queries its `k` nearest keys through a [`NeighbourIndex`] ([`ExactIndex`], or
//! the approximate [`IvfIndex`] for large stores), their tokens weighted by a softmax of the
//! negative distances give the kNN distribution ([`KnnDistribution`]), optionally mixed with
//! a model's softmax, and the student learns from it with decoupled KD plus cross-entropy
//! ([`Dnkd`]).
//!
//! Paper: Zhang et al., *Decouple Non-parametric Knowledge Distillation for End-to-end Speech
//! Translation* (ICASSP 2023), <https://arxiv.org/abs/2304.10295>; no official code. The kNN
//! teacher follows kNN-KD (<https://github.com/FadedCosine/kNN-KD>), the decoupling DKD
//! (<https://github.com/megvii-research/mdistiller>). `docs/teachers/dnkd.md` in the
//! repository derives it and lists the conventions.

mod datastore;
mod ivf;
mod knn;
mod search;

pub use datastore::Datastore;
pub use ivf::{IvfConfig, IvfIndex};
pub use knn::KnnDistribution;
pub use search::{ExactIndex, NeighbourIndex, Neighbours, squared_l2};

use burn::tensor::{Bool, Int, Tensor};

use crate::config::loss_config;
use crate::divergence::{Extra, KdOutput, Reduction, check_label_range, finish, valid_rows};
use crate::error::{KdError, Result, check_range, check_temperature};
use crate::logspace::{
    gather_rows, log_softmax, logsumexp, one_hot_rows, scaled_logits, sum_rows, to_f32,
};

/// Offset subtracted from the target logit to renormalise the student over the non-target
/// classes, as in DKD's code (`logits/T − 1000·onehot(y)`).
const TARGET_OFFSET: f64 = 1000.0;

/// Stand-in for `log 0` inside a log-sum-exp: `exp` of it is exactly 0 next to any finite
/// log-probability, and differences with it stay finite.
const LOG_ZERO: f64 = -1.0e30;

loss_config! {
    /// Config of [`Dnkd`]. Keys as in the golden file `dnkd.json`.
    pub struct DnkdConfig, new: "Defaults: `k = 8`, `knn_temperature = 10` (kNN-MT), pure kNN teacher (`lambda_knn = 1`), DKD's `alpha = 1`, `beta = 8`, `temperature = 1`, `ce_weight = 1`, no label smoothing." {
        /// Neighbours per query, `k ≥ 1` (default `8`); at most the datastore size (checked
        /// per call).
        k: usize = 8 => with_k,
        /// Temperature `T_knn > 0` of the neighbour softmax `softmax(−d/T_knn)` (default `10`).
        knn_temperature: f64 = 10.0 => with_knn_temperature,
        /// Weight `λ ∈ [0, 1]` of the kNN distribution in the teacher
        /// `λ·knn + (1 − λ)·softmax(model_logits)` (default `1`: pure kNN; `< 1` needs
        /// `model_logits`).
        lambda_knn: f64 = 1.0 => with_lambda_knn,
        /// Weight `α ≥ 0` of TCKD (default `1`).
        alpha: f64 = 1.0 => with_alpha,
        /// Weight `β ≥ 0` of NCKD (default `8`).
        beta: f64 = 8.0 => with_beta,
        /// Distillation temperature `τ > 0` (default `1`); both KD terms are scaled by `τ²`.
        temperature: f64 = 1.0 => with_temperature,
        /// Weight `≥ 0` of the (label-smoothed) cross-entropy (default `1`).
        ce_weight: f64 = 1.0 => with_ce_weight,
        /// Label smoothing `ε ∈ [0, 1]` of the cross-entropy (default `0`).
        label_smoothing: f64 = 0.0 => with_label_smoothing,
    }
}

impl DnkdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `k = 0`, a temperature `≤ 0`, `λ` or `ε` outside
    /// `[0, 1]`, or a negative weight.
    pub fn init(&self) -> Result<Dnkd> {
        let inf = f64::INFINITY;
        check_range(Dnkd::ID, "k", self.k as f64, 1.0, inf, "a value ≥ 1")?;
        check_temperature(Dnkd::ID, "knn_temperature", self.knn_temperature)?;
        check_range(Dnkd::ID, "lambda_knn", self.lambda_knn, 0.0, 1.0, "a value in [0, 1]")?;
        check_range(Dnkd::ID, "alpha", self.alpha, 0.0, inf, "a value ≥ 0")?;
        check_range(Dnkd::ID, "beta", self.beta, 0.0, inf, "a value ≥ 0")?;
        check_temperature(Dnkd::ID, "temperature", self.temperature)?;
        check_range(Dnkd::ID, "ce_weight", self.ce_weight, 0.0, inf, "a value ≥ 0")?;
        let eps = self.label_smoothing;
        check_range(Dnkd::ID, "label_smoothing", eps, 0.0, 1.0, "a value in [0, 1]")?;
        Ok(Dnkd { config: self.clone() })
    }
}

/// One batch of DNKD rows (`batch·seq` positions flattened).
#[derive(Debug, Clone)]
pub struct DnkdBatch {
    /// Hidden states that query the datastore (same space as its keys). Shape: `[rows, H]`.
    pub query_hidden: Tensor<2>,
    /// Student logits. Shape: `[rows, vocab]`.
    pub student_logits: Tensor<2>,
    /// Target ids, `-100` = ignored row. Shape: `[rows]`.
    pub labels: Tensor<1, Int>,
    /// `true` = row counts. Shape: `[rows]`.
    pub mask: Option<Tensor<1, Bool>>,
    /// Logits of the model mixed into the teacher when `lambda_knn < 1`. Shape: `[rows, vocab]`.
    pub model_logits: Option<Tensor<2>>,
}

impl DnkdBatch {
    /// A batch with every row counted and no model logits.
    pub fn new(query_hidden: Tensor<2>, student_logits: Tensor<2>, labels: Tensor<1, Int>) -> Self {
        Self { query_hidden, student_logits, labels, mask: None, model_logits: None }
    }

    /// Adds a row mask (`true` = counted). Shape: `[rows]`.
    pub fn with_mask(mut self, mask: Tensor<1, Bool>) -> Self {
        self.mask = Some(mask);
        self
    }

    /// Adds the model logits of the interpolated teacher. Shape: `[rows, vocab]`.
    pub fn with_model_logits(mut self, model_logits: Tensor<2>) -> Self {
        self.model_logits = Some(model_logits);
        self
    }
}

/// What [`Dnkd::forward`] returns: the loss and the teacher it was built from.
#[derive(Debug, Clone)]
pub struct DnkdOutput {
    /// The reduced loss: `[1]` for [`Reduction::Mean`] / [`Reduction::Sum`], `[rows]` for
    /// [`Reduction::None`]. Differentiable w.r.t. the student logits.
    pub loss: Tensor<1>,
    /// Loss of each row, `0` on ignored rows; differentiable. Shape: `[rows]`.
    pub per_row: Tensor<1>,
    /// Number of valid rows (as a float). Shape: `[1]`.
    pub n_valid: Tensor<1>,
    /// `tckd`, `nckd`, `ce` per row (unscaled, detached, `0` on ignored rows).
    pub extras: Vec<Extra>,
    /// Neighbours, their tokens and weights (every row, ignored ones included).
    pub knn: KnnDistribution,
    /// The kNN distribution. Shape: `[rows, vocab]`.
    pub knn_probs: Tensor<2>,
    /// The teacher `λ·knn + (1 − λ)·softmax(model_logits)`. Shape: `[rows, vocab]`.
    pub teacher_probs: Tensor<2>,
}

impl DnkdOutput {
    /// The diagnostic called `name` (`tckd`, `nckd` or `ce`).
    pub fn extra(&self, name: &str) -> Option<&Tensor<1>> {
        self.extras.iter().find(|e| e.name == name).map(|e| &e.value)
    }
}

/// DNKD: decoupled KD from a kNN-datastore teacher, plus label-smoothed cross-entropy.
///
/// ```text
/// d_ij    = Σ_h (q_ih − key_jh)²,  the k nearest keys j (ties -> lower row)
/// w_ij    = softmax_j(−d_ij / T_knn);   knn[i, v] = Σ_{j: value_j = v} w_ij
/// t       = λ·knn + (1 − λ)·softmax(model_logits)
/// p       = t^(1/τ) / Σ t^(1/τ)    (zeros stay zero),   q = softmax(s/τ)
/// TCKD    = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])                          0·log 0 = 0
/// NCKD    = KL(p̂ ‖ q̂),  p̂ = p over v ≠ y renormalised,  q̂ = softmax(s/τ − 1000·onehot(y))
///           NCKD = 0 when p has no non-target mass
/// CE      = (1 − ε)·(−log softmax(s)_y) + (ε/V)·Σ_v (−log softmax(s)_v)
/// per row = ce_weight·CE + α·τ²·TCKD + β·τ²·NCKD
/// gradient: by autodiff (the teacher is a constant)
/// ```
///
/// Rows with label `-100` or a false mask give `0`; `Mean` divides the sum by the number of
/// valid rows. The kNN part (search, weights) is exact host math; the loss is burn tensor ops
/// in `f32` on the student's device. A teacher with exact zeros (tokens no neighbour carries)
/// never takes `log 0`: those entries are selected away, so values and gradients stay finite.
///
/// # Shapes
/// `query_hidden`: `[rows, H]` (`H` = the datastore's key dimension); `student_logits`,
/// `model_logits`: `[rows, vocab]`; `labels`, `mask`: `[rows]`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] for disagreeing rows / vocabularies / `H`;
/// [`KdError::MissingInput`] without `model_logits` when `lambda_knn < 1`;
/// [`KdError::InvalidHyperparameter`] for `k` above the store size, a label outside
/// `[0, vocab)` on a valid row, a stored token id `≥ vocab`, a non-finite query, or (in
/// [`Dnkd::loss`]) a negative or non-finite teacher probability.
///
/// Paper: Zhang et al., *Decouple Non-parametric Knowledge Distillation for End-to-end Speech
/// Translation* (ICASSP 2023), <https://arxiv.org/abs/2304.10295> (no official code); kNN
/// teacher as kNN-KD <https://github.com/FadedCosine/kNN-KD>, decoupling as DKD
/// <https://github.com/megvii-research/mdistiller>.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::Reduction;
/// use kd_losses::teachers::dnkd::{Datastore, DnkdBatch, DnkdConfig, ExactIndex};
///
/// let device = Device::flex().autodiff();
/// // Four stored positions (H = 2) and the tokens that followed them (vocabulary of 5).
/// let keys = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 5.0, 5.0];
/// let store = Datastore::from_rows(2, keys, vec![1, 2, 1, 4])?;
/// let dnkd = DnkdConfig::new().with_k(3).init()?;
///
/// let query = Tensor::<2>::from_floats([[0.1, 0.2], [4.0, 4.5]], &device);
/// let student =
///     Tensor::<2>::from_floats([[0.2, 1.0, 0.1, -0.3, 0.0], [0.0; 5]], &device).require_grad();
/// let labels = Tensor::<1, Int>::from_ints([1, 4], &device);
/// let batch = DnkdBatch::new(query, student.clone(), labels);
/// let out = dnkd.forward(&store, &ExactIndex, batch, Reduction::Mean)?;
/// assert_eq!(out.knn.neighbours().row(0).0, &[0, 2, 1]);
/// let grads = out.loss.backward();
/// let g = student.grad(&grads).unwrap(); // [2, 5]
/// assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Dnkd {
    config: DnkdConfig,
}

/// Row validity and safe labels of a checked call.
struct Rows {
    valid: Tensor<1, Bool>,
    safe_labels: Tensor<1, Int>,
}

impl Dnkd {
    /// The id of this construction (golden file `dnkd.json`).
    pub const ID: &'static str = "dnkd";

    /// The validated config.
    pub fn config(&self) -> &DnkdConfig {
        &self.config
    }

    /// Searches the `k` nearest entries of each query (host side; any float dtype, any
    /// device) and forms their distribution over `vocab` tokens.
    ///
    /// # Errors
    /// As [`NeighbourIndex::search`] and [`KnnDistribution::new`].
    pub fn knn(
        &self,
        store: &Datastore,
        index: &dyn NeighbourIndex,
        query_hidden: Tensor<2>,
        vocab: usize,
    ) -> Result<KnnDistribution> {
        let [_, dim] = query_hidden.dims();
        if dim != store.dim() {
            return Err(KdError::ShapeMismatch {
                what: "query_hidden vs datastore key dimension".into(),
                expected: vec![query_hidden.dims()[0], store.dim()],
                got: query_hidden.dims().to_vec(),
            });
        }
        let queries = datastore::host_f32(query_hidden);
        let neighbours = index.search(store, &queries, self.config.k)?;
        KnnDistribution::new(store, neighbours, self.config.knn_temperature, vocab)
    }

    /// The teacher `λ·knn_probs + (1 − λ)·softmax(model_logits)` (just `knn_probs` at `λ = 1`,
    /// where `model_logits` is ignored). Shape: `[rows, vocab]`.
    ///
    /// # Errors
    /// [`KdError::MissingInput`] without `model_logits` when `λ < 1`;
    /// [`KdError::ShapeMismatch`] when the two shapes differ.
    pub fn teacher_probs(
        &self,
        knn_probs: Tensor<2>,
        model_logits: Option<Tensor<2>>,
    ) -> Result<Tensor<2>> {
        let lambda = self.config.lambda_knn;
        if lambda == 1.0 {
            return Ok(knn_probs);
        }
        let model =
            model_logits.ok_or(KdError::MissingInput { loss: Self::ID, name: "model_logits" })?;
        let model = to_f32(model).detach();
        if model.dims() != knn_probs.dims() {
            return Err(KdError::ShapeMismatch {
                what: "model_logits vs student_logits".into(),
                expected: knn_probs.dims().to_vec(),
                got: model.dims().to_vec(),
            });
        }
        let model_probs = log_softmax(scaled_logits(model, 1.0)).exp();
        if lambda == 0.0 {
            return Ok(model_probs);
        }
        Ok(knn_probs.mul_scalar(lambda).add(model_probs.mul_scalar(1.0 - lambda)))
    }

    /// The DNKD loss of the student against given teacher probabilities (e.g. kNN targets
    /// precomputed offline). The teacher is renormalised per row and not differentiated.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] for disagreeing shapes; [`KdError::InvalidHyperparameter`] for
    /// a label outside `[0, vocab)` on a valid row or a negative / non-finite teacher entry.
    pub fn loss(
        &self,
        teacher_probs: Tensor<2>,
        student_logits: Tensor<2>,
        labels: Tensor<1, Int>,
        mask: Option<Tensor<1, Bool>>,
        reduction: Reduction,
    ) -> Result<KdOutput> {
        let student = to_f32(student_logits);
        let teacher = to_f32(teacher_probs).detach();
        if teacher.dims() != student.dims() {
            return Err(KdError::ShapeMismatch {
                what: "teacher_probs vs student_logits".into(),
                expected: student.dims().to_vec(),
                got: teacher.dims().to_vec(),
            });
        }
        let bad = teacher.clone().lower_elem(0.0).bool_or(teacher.clone().is_finite().bool_not());
        if bad.any().into_scalar::<bool>() {
            return Err(KdError::InvalidHyperparameter {
                loss: Self::ID,
                name: "teacher_probs",
                expected: "finite probabilities ≥ 0",
                got: f64::NAN,
            });
        }
        let rows = self.rows(&student, &labels, mask.as_ref())?;
        Ok(self.terms(student, teacher, rows, reduction))
    }

    /// Searches the datastore, builds the teacher and computes the loss (see [`Dnkd`]).
    ///
    /// # Errors
    /// See [`Dnkd`].
    pub fn forward(
        &self,
        store: &Datastore,
        index: &dyn NeighbourIndex,
        batch: DnkdBatch,
        reduction: Reduction,
    ) -> Result<DnkdOutput> {
        let DnkdBatch { query_hidden, student_logits, labels, mask, model_logits } = batch;
        let student = to_f32(student_logits);
        let [rows, vocab] = student.dims();
        if query_hidden.dims()[0] != rows {
            return Err(KdError::ShapeMismatch {
                what: "query_hidden vs student_logits rows".into(),
                expected: vec![rows, store.dim()],
                got: query_hidden.dims().to_vec(),
            });
        }
        let checked = self.rows(&student, &labels, mask.as_ref())?;
        let knn = self.knn(store, index, query_hidden, vocab)?;
        let knn_probs = knn.probs(&student.device());
        let teacher = self.teacher_probs(knn_probs.clone(), model_logits)?;
        let out = self.terms(student, teacher.clone(), checked, reduction);
        Ok(DnkdOutput {
            loss: out.loss,
            per_row: out.per_row,
            n_valid: out.n_valid,
            extras: out.extras,
            knn,
            knn_probs,
            teacher_probs: teacher,
        })
    }

    /// Checks labels and mask against the student rows.
    fn rows(
        &self,
        student: &Tensor<2>,
        labels: &Tensor<1, Int>,
        mask: Option<&Tensor<1, Bool>>,
    ) -> Result<Rows> {
        let [rows, vocab] = student.dims();
        let valid = valid_rows(rows, Some(labels), mask, &student.device())?;
        check_label_range(Self::ID, labels, &valid, vocab)?;
        let safe_labels = labels.clone().mask_fill(valid.clone().bool_not(), 0);
        Ok(Rows { valid, safe_labels })
    }

    /// TCKD, NCKD and CE per row, weighted, masked and reduced.
    fn terms(
        &self,
        student: Tensor<2>,
        teacher: Tensor<2>,
        rows: Rows,
        reduction: Reduction,
    ) -> KdOutput {
        let c = &self.config;
        let tau = c.temperature;
        let vocab = student.dims()[1];
        let labels = rows.safe_labels;
        let onehot = one_hot_rows(labels.clone(), vocab); // [rows, vocab]
        let is_target = onehot.clone().greater_elem(0.5);

        // Teacher at τ: log p = log t/τ − log Σ_{t_v > 0} t_v^(1/τ), taken only where t > 0;
        // entries with t = 0 get p = 0 and a placeholder log p = 0 (they only ever multiply p).
        let zero = teacher.clone().lower_equal_elem(0.0); // [rows, vocab]
        let scaled = teacher.mask_fill(zero.clone(), 1.0).log().div_scalar(tau);
        let norm = logsumexp(scaled.clone().mask_fill(zero.clone(), LOG_ZERO)); // [rows, 1]
        let log_p = scaled.sub(norm).mask_fill(zero.clone(), 0.0);
        let p = log_p.clone().exp().mask_fill(zero.clone(), 0.0);

        // Binary split [p_y, Σ_{v≠y} p_v]; the rest as a direct sum of non-target entries.
        let p_y = gather_rows(p.clone(), labels.clone());
        let lp_y = gather_rows(log_p.clone(), labels.clone()); // 0 where p_y = 0
        let p_rest = sum_rows(p.clone().mask_fill(is_target.clone(), 0.0)); // [rows]
        let no_rest = p_rest.clone().lower_equal_elem(0.0);
        let lp_rest = p_rest.clone().mask_fill(no_rest, 1.0).log(); // 0 where p_rest = 0

        // Student at τ, and its non-target mass as a log-sum-exp with the target pushed away.
        let s = scaled_logits(student.clone(), tau);
        let log_q = log_softmax(s.clone());
        let away = onehot.clone().mul_scalar(TARGET_OFFSET);
        let lq_y = gather_rows(log_q.clone(), labels.clone());
        let lq_rest = logsumexp(log_q.sub(away.clone())).squeeze_dim::<1>(1);
        let tckd = p_y.mul(lp_y.sub(lq_y)).add(p_rest.mul(lp_rest.clone().sub(lq_rest)));

        // NCKD over the non-target entries the teacher supports: p̂ = p / p_rest there.
        let drop = zero.bool_or(is_target); // p̂ = 0 there
        let log_p_hat = log_p.sub(lp_rest.unsqueeze_dim(1)).mask_fill(drop.clone(), 0.0);
        let p_hat = log_p_hat.clone().exp().mask_fill(drop, 0.0);
        let log_q_hat = log_softmax(s.sub(away));
        let nckd = sum_rows(p_hat.mul(log_p_hat.sub(log_q_hat)));

        // Label-smoothed cross-entropy at temperature 1 (kNN-KD / fairseq).
        let log_q1 = log_softmax(scaled_logits(student, 1.0));
        let nll = gather_rows(log_q1.clone(), labels).neg();
        let smooth = sum_rows(log_q1).neg().div_scalar(vocab as f64);
        let eps = c.label_smoothing;
        let ce = nll.mul_scalar(1.0 - eps).add(smooth.mul_scalar(eps));

        let t2 = tau * tau;
        let per_row = ce
            .clone()
            .mul_scalar(c.ce_weight)
            .add(tckd.clone().mul_scalar(c.alpha * t2))
            .add(nckd.clone().mul_scalar(c.beta * t2));
        let extras = vec![Extra::row("tckd", tckd), Extra::row("nckd", nckd), Extra::row("ce", ce)];
        finish(per_row, &rows.valid, extras, reduction)
    }
}

#[cfg(test)]
mod tests;
