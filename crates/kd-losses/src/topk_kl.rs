//! KL against a sparse teacher given only by its top-k token ids and log-probabilities
//! (offline distillation from stored teacher outputs).

use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::divergence::{Extra, KdOutput, Reduction, finish, valid_rows};
use crate::error::{KdError, Result, check_temperature};
use crate::logspace::{log_softmax, logsumexp, scaled_logits, sum_rows};

/// How the missing teacher mass outside the top-k is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopKConvention {
    /// Renormalise the teacher over its k ids; student not renormalised.
    RenormTeacher,
    /// Renormalise both teacher and student over the teacher's k ids.
    RenormBoth,
    /// Keep the teacher's leftover mass as one extra "tail" bucket on both sides.
    TailBucket,
}

/// Config of [`TopKKl`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopKKlConfig {
    /// Convention for the missing mass (default `tail_bucket`).
    pub convention: TopKConvention,
    /// Temperature `T > 0` (default `1`).
    pub temperature: f64,
    /// Multiply by `T²` (default `false`).
    pub scale_by_t2: bool,
}

impl Default for TopKKlConfig {
    fn default() -> Self {
        Self { convention: TopKConvention::TailBucket, temperature: 1.0, scale_by_t2: false }
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
        check_temperature("topk_kl", "temperature", self.temperature)?;
        Ok(TopKKl { config: self.clone() })
    }
}

/// A batch for [`TopKKl`]: dense student logits and a sparse teacher.
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
/// log q = log_softmax(s/T) over the full vocabulary; q_i gathered at the teacher ids
/// teacher at T:  lp'_i = lp_i/T − log Z
/// renorm_teacher: Z = Σ_k exp(lp_i/T);  Σ_k p'_i (lp'_i − log q_i)
/// renorm_both:    as above with log q̃_i = log q_i − log Σ_k q_j;  KL(p'‖q̃)
/// tail_bucket:    Z = Σ_k exp(lp_i/T) + (1 − P)^(1/T),  P = Σ_k exp(lp_i)
///                 Σ_k p'_i (lp'_i − log q_i) + P'_tail (log P'_tail − log Q_tail),
///                 P'_tail = (1 − P)^(1/T)/Z,  Q_tail = 1 − Σ_k q_i
/// gradient (renorm_teacher):  ∂/∂s_v = (q_v·Σ_k p'_i − p'_v) / T   (p'_v = 0 off the ids)
/// ```
///
/// `log Q_tail` is a log-sum-exp over the non-top-k student entries, not `log(1 − Σ q)`, so it
/// stays accurate when the tail is tiny. Times `T²` when `scale_by_t2`. Diagnostics
/// (`tail_bucket`): `teacher_tail_mass`, `student_tail_mass`.
///
/// # Shapes
/// `student_logits` `[rows, vocab]`; `teacher_topk_ids`, `teacher_topk_logprobs` `[rows, k]`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when ids, log-probs, labels or mask disagree with the student rows,
/// [`KdError::InvalidHyperparameter`] (`teacher_topk_ids`) when an id leaves `[0, vocab)`.
///
/// References: sparse logit sampling / top-k KD, e.g. Anshumann et al., *Sparse Logit Sampling:
/// Accelerating Knowledge Distillation in LLMs* (ACL 2025), <https://arxiv.org/abs/2503.16870>;
/// DistillKit's offline top-k distillation, <https://github.com/arcee-ai/DistillKit>.
#[derive(Debug, Clone)]
pub struct TopKKl {
    config: TopKKlConfig,
}

impl TopKKl {
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
        check_ids(&ids, vocab)?;

        let t = self.config.temperature;
        let log_q = log_softmax(scaled_logits(student_logits, t)); // [rows, vocab]
        let log_q_k = log_q.clone().gather(1, ids.clone()); // [rows, k]
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
                // Student tail: log-sum-exp over the entries outside the teacher's ids.
                let in_topk = Tensor::<2>::zeros([rows, vocab], &device)
                    .scatter(
                        1,
                        ids.clone(),
                        Tensor::ones(ids.dims(), &device),
                        IndexingUpdateOp::Add,
                    )
                    .greater_elem(0.5);
                let log_q_tail = logsumexp(log_q.mask_fill(in_topk, -1e30)).squeeze_dim::<1>(1);
                let head = sum_rows(log_p.clone().exp().mul(log_p.sub(log_q_k)));
                let p_tail = log_p_tail.clone().exp();
                extras.push(Extra::row("teacher_tail_mass", p_tail.clone()));
                extras.push(Extra::row("student_tail_mass", log_q_tail.clone().exp()));
                head.add(p_tail.mul(log_p_tail.sub(log_q_tail)))
            }
        };
        let value = if self.config.scale_by_t2 { value.mul_scalar(t * t) } else { value };
        Ok(finish(value, &valid, extras, reduction))
    }
}

/// Checks that every teacher id lies in `[0, vocab)`; reads the ids to the host.
fn check_ids(ids: &Tensor<2, Int>, vocab: usize) -> Result<()> {
    let data = ids.to_data().convert::<i64>();
    if let Some(bad) =
        data.as_slice::<i64>().unwrap_or(&[]).iter().find(|&&i| i < 0 || i as usize >= vocab)
    {
        return Err(KdError::InvalidHyperparameter {
            loss: "topk_kl",
            name: "teacher_topk_ids",
            expected: "ids in [0, vocab)",
            got: *bad as f64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
