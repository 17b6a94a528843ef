//! KL against a sparse teacher given only by its top-k token ids and log-probabilities
//! (offline distillation from stored teacher outputs).

use crate::config::loss_config;
use crate::divergence::{Extra, KdOutput, Reduction, finish, valid_rows};
use crate::error::{KdError, Result, check_temperature};
use crate::fused;
use crate::logspace::{f32_on, logsumexp, scaled_logits, sum_rows, to_f32};
pub use crate::types::TopKConvention;
use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorData};

loss_config! {
    /// Config of [`TopKKl`].
    pub struct TopKKlConfig {
        /// Convention for the missing mass (default `tail_bucket`).
        convention: TopKConvention = TopKConvention::TailBucket,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
        /// Multiply by `T²` (default `false`).
        scale_by_t2: bool = false,
    }
}

impl TopKKlConfig {
    /// A config with the given convention, `T = 1`.
    pub fn new(convention: TopKConvention) -> Self {
        Self { convention, ..Self::default() }
    }

    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `T ≤ 0`.
    pub fn init(&self) -> Result<TopKKl> {
        check_temperature(TopKKl::ID, "temperature", self.temperature)?;
        Ok(TopKKl { config: self.clone() })
    }
}

/// A batch for [`TopKKl`]: dense student logits and a sparse teacher. The logits and
/// log-probabilities may be of any float dtype (cast to `f32` on entry).
#[derive(Debug, Clone)]
pub struct SparseKdBatch {
    /// Student logits. Shape: `[rows, vocab]`.
    pub student_logits: Tensor<2>,
    /// Teacher's top-k token ids, each in `[0, vocab)`. Shape: `[rows, k]`.
    pub teacher_topk_ids: Tensor<2, Int>,
    /// Teacher's full-vocabulary log-probabilities (at `T = 1`) of those ids. Shape: `[rows, k]`.
    pub teacher_topk_logprobs: Tensor<2>,
    /// Optional target ids, `-100` = ignored row (only used for masking). Shape: `[rows]`.
    pub labels: Option<Tensor<1, Int>>,
    /// Optional row mask, `true` = counted. Shape: `[rows]`.
    pub mask: Option<Tensor<1, Bool>>,
}

/// KL from a top-k teacher, in the three conventions used by offline distillation pipelines.
///
/// ```text
/// log q_i = s_i/T − logsumexp(s/T)    at the teacher ids only (one full-vocabulary pass: the lse)
/// teacher at T:  lp'_i = lp_i/T − log Z
/// renorm_teacher: Z = Σ_k exp(lp_i/T);  Σ_k p'_i (lp'_i − log q_i)
/// renorm_both:    as above with log q̃_i = log q_i − log Σ_k q_j;  KL(p'‖q̃)
/// tail_bucket:    Z = Σ_k exp(lp_i/T) + (1 − P)^(1/T),  P = Σ_k exp(lp_i)
///                 Σ_k p'_i (lp'_i − log q_i) + P'_tail (log P'_tail − log Q_tail),
///                 P'_tail = (1 − P)^(1/T)/Z,  Q_tail = 1 − Σ_k q_i
/// gradient (renorm_teacher):  ∂/∂s_v = (q_v·Σ_k p'_i − p'_v) / T   (p'_v = 0 off the ids)
/// ```
///
/// Apart from the student's log-normaliser (a log-sum-exp over the full vocabulary, which any
/// student distribution needs), time and memory are `O(rows · k)`: nothing of size
/// `rows × vocab` is formed for the teacher, the ids or the tail. `Q_tail = 1 − Σ_k q_i` is
/// computed from the `k` gathered probabilities; in `f32` its absolute error is about `1e-7`,
/// so rows whose student tail falls below [`TopKKl::EXACT_TAIL_BELOW`] take instead an exact
/// log-sum-exp over their non-top-k entries (an `O(vocab)` pass for those rows only), which
/// keeps `log Q_tail` and its gradient accurate down to tails far below `f32` resolution.
/// Times `T²` when `scale_by_t2`. Diagnostics (`tail_bucket`): `teacher_tail_mass`,
/// `student_tail_mass`.
///
/// The student logits and teacher log-probabilities may be `f32`, `f64`, `bf16` or `f16` (mixed
/// too): they are cast to `f32` on entry, everything runs and accumulates in `f32`, the loss is
/// `f32`, and the student's gradient comes back in its own dtype.
///
/// On flex tensors (with or without autodiff, any float dtype once cast) the call runs one fused
/// kernel instead ([`crate::fused::topk`], same results): value and gradient in one call, and a
/// single `rows × vocab` allocation, the student gradient, taken from the fused path's buffer
/// pool (none when the student is untracked); [`crate::fused::with_path`] forces the composed
/// path.
///
/// # Shapes
/// `student_logits` `[rows, vocab]`; `teacher_topk_ids`, `teacher_topk_logprobs` `[rows, k]`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when ids, log-probs, labels or mask disagree with the student rows,
/// [`KdError::InvalidHyperparameter`] (`teacher_topk_ids`) when an id leaves `[0, vocab)` or a
/// counted row repeats an id (the ids of a top-k list are distinct; ignored rows, e.g. padding
/// filled with id 0, are not checked for repeats).
///
/// References: sparse logit sampling / top-k KD, e.g. Anshumann et al., *Sparse Logit Sampling:
/// Accelerating Knowledge Distillation in LLMs* (ACL 2025), <https://arxiv.org/abs/2503.16870>;
/// DistillKit's offline top-k distillation, <https://github.com/arcee-ai/DistillKit>.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::{Reduction, SparseKdBatch, TopKConvention, TopKKlConfig};
///
/// let device = Device::flex().autodiff();
/// let student = Tensor::<2>::from_floats([[2.0, 0.5, -1.0, 0.0, 0.3]], &device).require_grad();
/// // The teacher's two most likely ids and their full-vocabulary log-probabilities.
/// let ids = Tensor::<2, Int>::from_ints([[0, 4]], &device);
/// let logprobs = Tensor::<2>::from_floats([[-0.4, -1.6]], &device);
/// let batch = SparseKdBatch {
///     student_logits: student.clone(),
///     teacher_topk_ids: ids,
///     teacher_topk_logprobs: logprobs,
///     labels: None,
///     mask: None,
/// };
/// let loss = TopKKlConfig::new(TopKConvention::TailBucket).init()?;
/// let out = loss.forward(batch, Reduction::Mean)?;
/// let grads = out.loss.backward();
/// assert_eq!(student.grad(&grads).unwrap().dims(), [1, 5]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TopKKl {
    config: TopKKlConfig,
}

impl TopKKl {
    /// Student tail masses `Q_tail` below this value are recomputed exactly (see the type docs).
    ///
    /// Above it, the `f32` error of `1 − Σ_k q_i` (about `1e-7`) is at most `1e-4` relative.
    pub const EXACT_TAIL_BELOW: f64 = crate::types::EXACT_TAIL_BELOW;

    /// Computes the loss of a sparse batch.
    ///
    /// # Errors
    /// See the type docs.
    pub fn forward(&self, batch: SparseKdBatch, reduction: Reduction) -> Result<KdOutput> {
        let SparseKdBatch {
            student_logits,
            teacher_topk_ids: ids,
            teacher_topk_logprobs: lp,
            labels,
            mask,
        } = batch;
        // The one cast point of this loss: f32 from here on (the fused kernel included).
        let (student_logits, lp) = (to_f32(student_logits), to_f32(lp));
        let [rows, vocab] = student_logits.dims();
        for (what, d) in [("teacher_topk_ids", ids.dims()), ("teacher_topk_logprobs", lp.dims())] {
            if d[0] != rows || d != ids.dims() {
                return Err(KdError::ShapeMismatch {
                    what: format!("{what} vs student rows / top-k ids"),
                    expected: vec![rows, ids.dims()[1]],
                    got: d.to_vec(),
                });
            }
        }
        let device = student_logits.device();
        let valid = valid_rows(rows, labels.as_ref(), mask.as_ref(), &device)?;
        let valid_host: Vec<bool> =
            valid.to_data().convert::<bool>().try_into_vec().unwrap_or_default();
        let ids_host = check_ids(&ids, vocab, &valid_host)?;

        let t = self.config.temperature;
        let scale = if self.config.scale_by_t2 { t * t } else { 1.0 };
        // On flex: one fused kernel, one `rows × vocab` buffer (the student gradient).
        let fused = fused::topk_terms(fused::TopKCall {
            spec: fused::topk::TopKSpec {
                convention: self.config.convention,
                temperature: t,
                scale,
            },
            student: &student_logits,
            ids: &ids_host,
            logprobs: &lp,
            valid: &valid_host,
            expected_upstream: fused::ExpectedUpstream { mean: reduction == Reduction::Mean },
        });
        if let Some(f) = fused {
            return Ok(finish(f.values, &valid, f.extras, reduction));
        }
        let s = scaled_logits(student_logits, t); // [rows, vocab]
        let log_norm = logsumexp(s.clone()); // [rows, 1], the one full-vocabulary pass
        let log_q_k = s.clone().gather(1, ids.clone()).sub(log_norm.clone()); // [rows, k]
        let lp_t = lp.clone().detach().div_scalar(t); // [rows, k]

        let mut extras = Vec::new();
        let value = match self.config.convention {
            TopKConvention::RenormTeacher | TopKConvention::RenormBoth => {
                let log_p = lp_t.clone().sub(logsumexp(lp_t)); // [rows, k]
                let log_student = if self.config.convention == TopKConvention::RenormBoth {
                    log_q_k.clone().sub(logsumexp(log_q_k))
                } else {
                    log_q_k
                };
                sum_rows(log_p.clone().exp().mul(log_p.sub(log_student)))
            }
            TopKConvention::TailBucket => {
                // Teacher tail (1 − P)^(1/T) in log space, with P = Σ_k exp(lp).
                let mass = sum_rows(lp.detach().exp()); // [rows]
                let log_tail = mass.neg().add_scalar(1.0).clamp_min(1e-30).log().div_scalar(t);
                let log_tail = log_tail.unsqueeze_dim::<2>(1); // [rows, 1]
                let log_z = logsumexp(Tensor::cat(vec![lp_t.clone(), log_tail.clone()], 1));
                let log_p = lp_t.sub(log_z.clone()); // [rows, k]
                let log_p_tail = log_tail.sub(log_z).squeeze_dim::<1>(1); // [rows]
                let log_q_tail = student_log_tail(&s, &log_norm, &log_q_k, &ids, &valid_host);
                let head = sum_rows(log_p.clone().exp().mul(log_p.sub(log_q_k)));
                let p_tail = log_p_tail.clone().exp();
                let [teacher_name, student_name] = TopKConvention::TAIL_EXTRAS;
                extras.push(Extra::row(teacher_name, p_tail.clone()));
                extras.push(Extra::row(student_name, log_q_tail.clone().exp()));
                head.add(p_tail.mul(log_p_tail.sub(log_q_tail)))
            }
        };
        let value = if self.config.scale_by_t2 { value.mul_scalar(scale) } else { value };
        Ok(finish(value, &valid, extras, reduction))
    }
}

/// `log Q_tail = log(1 − Σ_k q_i)` per row, differentiable. Shape: `[rows]`.
///
/// From the gathered `log q` (`O(rows · k)`); counted rows whose tail is below
/// [`TopKKl::EXACT_TAIL_BELOW`] are recomputed as a log-sum-exp over their entries outside the
/// ids, minus the log-normaliser, so that neither the value nor the gradient suffers the
/// cancellation in `1 − Σ_k q_i`.
fn student_log_tail(
    s: &Tensor<2>,        // [rows, vocab], scaled logits
    log_norm: &Tensor<2>, // [rows, 1]
    log_q_k: &Tensor<2>,  // [rows, k]
    ids: &Tensor<2, Int>, // [rows, k]
    valid: &[bool],       // [rows]
) -> Tensor<1> {
    let [rows, vocab] = s.dims();
    let device = s.device();
    let head_mass = sum_rows(log_q_k.clone().exp()); // [rows], Σ_k q_i
    // Ignored rows may hold anything: keep their value finite, their gradient is zero anyway.
    let fast = head_mass.clone().neg().add_scalar(1.0).clamp_min(1e-30).log(); // [rows]
    let mass_host: Vec<f32> =
        head_mass.detach().into_data().convert::<f32>().try_into_vec().unwrap_or_default();
    let exact_rows: Vec<i64> = (0..rows)
        .filter(|&i| valid[i] && 1.0 - f64::from(mass_host[i]) < TopKKl::EXACT_TAIL_BELOW)
        .map(|i| i as i64)
        .collect();
    if exact_rows.is_empty() {
        return fast;
    }
    let m = exact_rows.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(exact_rows, [m]), &device);
    let s_sel = s.clone().select(0, index.clone()); // [m, vocab]
    let ids_sel = ids.clone().select(0, index.clone()); // [m, k]
    let in_topk = Tensor::<2>::zeros([m, vocab], f32_on(&device))
        .scatter(
            1,
            ids_sel.clone(),
            Tensor::ones(ids_sel.dims(), f32_on(&device)),
            IndexingUpdateOp::Add,
        )
        .greater_elem(0.5); // [m, vocab]
    // log Σ_{v ∉ ids} exp(s_v) − log Σ_v exp(s_v)
    let exact = logsumexp(s_sel.mask_fill(in_topk, -1e30))
        .sub(log_norm.clone().select(0, index.clone()))
        .squeeze_dim::<1>(1); // [m]
    let is_exact = Tensor::<1>::zeros([rows], f32_on(&device))
        .select_assign(0, index.clone(), Tensor::ones([m], f32_on(&device)), IndexingUpdateOp::Add)
        .greater_elem(0.5); // [rows]
    let exact_full = Tensor::<1>::zeros([rows], f32_on(&device)).select_assign(
        0,
        index,
        exact,
        IndexingUpdateOp::Add,
    ); // [rows]
    fast.mask_where(is_exact, exact_full)
}

/// Checks that every teacher id lies in `[0, vocab)` and that no counted row repeats an id;
/// returns the ids, read to the host.
fn check_ids(ids: &Tensor<2, Int>, vocab: usize, valid: &[bool]) -> Result<Vec<usize>> {
    let k = ids.dims()[1];
    let data = ids.to_data().convert::<i64>();
    let flat = data.as_slice::<i64>().unwrap_or(&[]);
    let invalid = |got: i64, expected: &'static str| KdError::InvalidHyperparameter {
        loss: TopKKl::ID,
        name: "teacher_topk_ids",
        expected,
        got: got as f64,
    };
    if let Some(bad) = flat.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(invalid(*bad, "ids in [0, vocab)"));
    }
    let mut row = Vec::with_capacity(k);
    for (r, ids) in flat.chunks(k.max(1)).enumerate() {
        if !valid.get(r).copied().unwrap_or(true) {
            continue;
        }
        row.clear();
        row.extend_from_slice(ids);
        row.sort_unstable();
        if let Some(w) = row.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(w[0], "distinct ids in every counted row"));
        }
    }
    Ok(flat.iter().map(|&i| i as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logspace::log_softmax;
    use crate::test_util::rows;
    use burn::tensor::Device;

    #[test]
    fn full_vocabulary_top_k_equals_dense_forward_kl() {
        // With k = V every convention but the tail is exact; renorm_teacher = forward KL.
        let d = Device::flex();
        let s = rows(&[&[0.3, -1.0, 2.0]]);
        let t = rows(&[&[1.0, 0.5, -0.5]]);
        let lp = log_softmax(t.clone());
        let ids = Tensor::<2, Int>::from_ints([[0, 1, 2]], &d);
        let batch = SparseKdBatch {
            student_logits: s.clone(),
            teacher_topk_ids: ids,
            teacher_topk_logprobs: lp,
            labels: None,
            mask: None,
        };
        let out = TopKKlConfig::new(TopKConvention::RenormTeacher)
            .init()
            .unwrap()
            .forward(batch, Reduction::Mean)
            .unwrap();
        let fkl = crate::ForwardKlConfig::new().init().unwrap();
        let want =
            crate::Divergence::forward(&fkl, crate::KdBatch::new(s, t), Reduction::Mean).unwrap();
        let (a, b) = (out.loss.into_scalar::<f32>(), want.loss.into_scalar::<f32>());
        assert!((a - b).abs() < 1e-6, "{a} {b}");
    }

    #[test]
    fn out_of_range_ids_are_an_error() {
        let d = Device::flex();
        let batch = SparseKdBatch {
            student_logits: rows(&[&[0.0, 1.0]]),
            teacher_topk_ids: Tensor::<2, Int>::from_ints([[5]], &d),
            teacher_topk_logprobs: rows(&[&[-0.1]]),
            labels: None,
            mask: None,
        };
        let err =
            TopKKlConfig::default().init().unwrap().forward(batch, Reduction::Mean).unwrap_err();
        assert!(err.to_string().contains("teacher_topk_ids"), "{err}");
    }
}
