//! MiniLLM's policy-gradient pieces: per-token teacher rewards, discounted and length-normalised
//! returns, whitening, importance weights for teacher-mixed sampling, the clipped PPO term and
//! the single-step reverse-KL regulariser.

use burn::tensor::{Bool, Int, Tensor, TensorData, activation};
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result, check_range, check_temperature};
use crate::logspace::{f32_on, mask_f32, scaled_logits, to_f32};

/// Which variance whitening divides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhiteningVariance {
    /// Divide by the number of entries.
    Population,
    /// Divide by the number of entries minus one.
    Unbiased,
}

loss_config! {
    /// Config of [`MiniLlm`].
    pub struct MiniLlmConfig {
        /// Temperature `τ` of the student policy and the regulariser (default `1`).
        temperature: f64 = 1.0,
        /// Discount `γ ∈ [0, 1]` of the returns (default `0.95`).
        gamma: f64 = 0.95,
        /// PPO clip range `ε > 0` of the ratio (default `0.2`).
        cliprange: f64 = 0.2,
        /// Rewards are divided by this (`None` = no scaling; default `None`).
        reward_scaling: Option<f64> = None,
        /// Rewards are clipped to `±` this (`None` or `0` = no clipping; default `Some(1)`).
        cliprange_reward: Option<f64> = Some(1.0),
        /// Teacher-mix probability `α` of the sampling policy (`None` = pure student sampling).
        teacher_mixed_alpha: Option<f64> = None,
        /// Add the single-step reverse-KL regulariser to the loss (default `true`).
        single_step_reg: bool = true,
        /// Variance used by whitening (default `unbiased`).
        whitening_variance: WhiteningVariance = WhiteningVariance::Unbiased,
    }
}

impl MiniLlmConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `τ ≤ 0`, `γ ∉ [0, 1]`, `ε ≤ 0`, a reward scaling
    /// `≤ 0`, a negative reward clip, or `α ∉ [0, 1]`.
    pub fn init(&self) -> Result<MiniLlm> {
        let inf = f64::INFINITY;
        check_temperature(MiniLlm::ID, "temperature", self.temperature)?;
        check_range(MiniLlm::ID, "gamma", self.gamma, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(MiniLlm::ID, "cliprange", self.cliprange)?;
        if let Some(s) = self.reward_scaling {
            check_temperature(MiniLlm::ID, "reward_scaling", s)?;
        }
        if let Some(c) = self.cliprange_reward {
            check_range(MiniLlm::ID, "cliprange_reward", c, 0.0, inf, "a value ≥ 0")?;
        }
        if let Some(a) = self.teacher_mixed_alpha {
            check_range(MiniLlm::ID, "teacher_mixed_alpha", a, 0.0, 1.0, "a value in [0, 1]")?;
        }
        Ok(MiniLlm { config: self.clone() })
    }
}

/// Sampled responses with student and teacher logits at every position. The logits and
/// log-probabilities may be of any float dtype (cast to `f32` on entry).
#[derive(Debug, Clone)]
pub struct MiniLlmBatch {
    /// Current (trainable) student logits; position `t` predicts `tokens[t]`. Shape: `[batch, len, vocab]`.
    pub student_logits: Tensor<3>,
    /// Teacher logits. Shape: `[batch, len, vocab]`.
    pub teacher_logits: Tensor<3>,
    /// Sampled response tokens. Shape: `[batch, len]`.
    pub tokens: Tensor<2, Int>,
    /// `true` = valid response token. Shape: `[batch, len]`.
    pub mask: Tensor<2, Bool>,
    /// Logits of the policy that sampled (`None` = the current student, as a constant).
    /// Shape: `[batch, len, vocab]`.
    pub old_student_logits: Option<Tensor<3>>,
    /// The same policy given by its per-token log-probabilities `log softmax(old/τ)[y_t]` only
    /// (what a stored rollout keeps; everything the objective uses of the old policy). At most
    /// one of `old_student_logits` and `old_logprobs`. Shape: `[batch, len]`.
    pub old_logprobs: Option<Tensor<2>>,
}

/// Output of [`MiniLlm::forward`].
#[derive(Debug, Clone)]
pub struct MiniLlmOutput {
    /// `pg_loss + [single_step_reg]·reg_loss`; differentiable. Shape: `[1]`.
    pub loss: Tensor<1>,
    /// Mean clipped policy-gradient term over valid tokens. Shape: `[1]`.
    pub pg_loss: Tensor<1>,
    /// Mean single-step regulariser over valid tokens (reported even when not added). Shape: `[1]`.
    pub reg_loss: Tensor<1>,
    /// `pg_t + [reg] reg_t` per token, row-major, 0 on invalid tokens. Shape: `[batch·len]`.
    pub per_row: Tensor<1>,
    /// Number of valid tokens. Shape: `[1]`.
    pub n_valid: Tensor<1>,
    /// Detached per-token quantities by name (`reward`, `advantage`, `ratio`, …). Shape: `[batch, len]`.
    pub per_token: Vec<(&'static str, Tensor<2>)>,
}

impl MiniLlmOutput {
    /// The per-token quantity called `name`.
    pub fn token(&self, name: &str) -> Option<&Tensor<2>> {
        self.per_token.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }
}

/// MiniLLM's token-level policy-gradient objective for on-policy reverse-KL distillation.
///
/// ```text
/// logq_old = log softmax(old/τ)[y_t],  reward r_t = log p_teacher(y_t) − logq_old   (teacher at T=1)
///            ÷ reward_scaling, clipped to ±cliprange_reward
/// w_t      = q_old / ((1 − α) q_old + α p_teacher,τ)           (teacher-mixed sampling; else 1)
/// R_t      = Σ_{t'≥t} γ^(t'−t) r_t',   A_raw = R_t / L_t  (L_t = valid tokens at ≥ t, min 1)
/// A        = whiten(A_raw) over all batch·len entries (constant)
/// ratio    = exp((logq_new − logq_old)·mask) · w
/// pg_t     = max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))
/// reg_t    = KL(softmax(s/τ) ‖ softmax(t/τ))
/// loss     = Σ pg / n_valid + [single_step_reg] Σ reg / n_valid
/// ```
///
/// Per-token names: `logq_old`, `logp_teacher_reward`, `logp_teacher_tau`, `importance_weight`,
/// `reward`, `discounted_return`, `remaining_length`, `advantage_raw`, `advantage`, `ratio`,
/// `pg_term`, `reg_term`.
///
/// The logits and old log-probabilities may be `f32`, `f64`, `bf16` or `f16` (mixed too): they
/// are cast to `f32` on entry and every output is `f32`; the student's gradient comes back in
/// its own dtype.
///
/// # Shapes
/// Logits `[batch, len, vocab]`; `tokens`, `mask` `[batch, len]`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when shapes disagree; [`KdError::InvalidHyperparameter`] when a
/// token id leaves `[0, vocab)`.
///
/// Paper: Gu et al., *MiniLLM: Knowledge Distillation of Large Language Models* (ICLR 2024),
/// <https://arxiv.org/abs/2306.08543>; code <https://github.com/microsoft/LMOps/tree/main/minillm>.
#[derive(Debug, Clone)]
pub struct MiniLlm {
    config: MiniLlmConfig,
}

/// `log softmax(x)[token]` over the vocabulary axis. Shape: `[b, l, v], [b, l] -> [b, l]`.
fn token_log_prob(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<2> {
    activation::log_softmax(logits, 2).gather(2, tokens.unsqueeze_dim(2)).squeeze_dim(2)
}

/// `[len, len]` matrix with `G[s, t] = γ^(s − t)` for `s ≥ t`, else 0: `x·G` sums the future.
fn future_sum_matrix(len: usize, gamma: f64, device: &burn::tensor::Device) -> Tensor<2> {
    let mut g = vec![0f32; len * len];
    for s in 0..len {
        for t in 0..=s {
            g[s * len + t] = gamma.powi((s - t) as i32) as f32;
        }
    }
    Tensor::from_data(TensorData::new(g, [len, len]), f32_on(device))
}

impl MiniLlm {
    /// Computes the objective, its parts and every per-token quantity.
    ///
    /// # Errors
    /// See the type docs.
    pub fn forward(&self, batch: MiniLlmBatch) -> Result<MiniLlmOutput> {
        let c = &self.config;
        let MiniLlmBatch {
            student_logits,
            teacher_logits,
            tokens,
            mask,
            old_student_logits,
            old_logprobs,
        } = batch;
        // The one cast point of this loss: every float input to f32, all math in f32 after.
        let student_logits = to_f32(student_logits);
        let teacher_logits = to_f32(teacher_logits);
        let old_student_logits = old_student_logits.map(to_f32);
        let old_logprobs = old_logprobs.map(to_f32);
        let dims = student_logits.dims();
        let [b, len, vocab] = dims;
        let check = |what: &str, got: Vec<usize>, want: Vec<usize>| -> Result<()> {
            if got == want {
                Ok(())
            } else {
                Err(KdError::ShapeMismatch { what: what.into(), expected: want, got })
            }
        };
        check("teacher_logits vs student_logits", teacher_logits.dims().to_vec(), dims.to_vec())?;
        if let Some(old) = &old_student_logits {
            check("old_student_logits vs student_logits", old.dims().to_vec(), dims.to_vec())?;
        }
        if let Some(old) = &old_logprobs {
            check("old_logprobs vs student [batch, len]", old.dims().to_vec(), vec![b, len])?;
            if old_student_logits.is_some() {
                return Err(KdError::UnknownOption {
                    loss: MiniLlm::ID,
                    name: "old_logprobs",
                    expected: "either old_student_logits or old_logprobs, not both",
                    got: "both".into(),
                });
            }
        }
        check("tokens vs student [batch, len]", tokens.dims().to_vec(), vec![b, len])?;
        check("mask vs student [batch, len]", mask.dims().to_vec(), vec![b, len])?;
        let ids = tokens.to_data().convert::<i64>();
        if let Some(bad) =
            ids.as_slice::<i64>().unwrap_or(&[]).iter().find(|&&i| i < 0 || i as usize >= vocab)
        {
            return Err(KdError::InvalidHyperparameter {
                loss: MiniLlm::ID,
                name: "tokens",
                expected: "ids in [0, vocab)",
                got: *bad as f64,
            });
        }
        let device = student_logits.device();
        let tau = c.temperature;
        let m = mask_f32(mask.clone()); // [b, len]
        let invalid = mask.bool_not();

        let logq_old = match old_logprobs {
            Some(lp) => lp.detach().mul(m.clone()),
            None => {
                let old = old_student_logits.unwrap_or_else(|| student_logits.clone()).detach();
                token_log_prob(scaled_logits(old, tau), tokens.clone()).mul(m.clone())
            }
        };
        let teacher = teacher_logits.detach();
        let lp_reward =
            token_log_prob(scaled_logits(teacher.clone(), 1.0), tokens.clone()).mul(m.clone());
        let lp_tau =
            token_log_prob(scaled_logits(teacher.clone(), tau), tokens.clone()).mul(m.clone());

        // Importance weight of the student against the teacher-mixed sampling policy.
        let weight = match c.teacher_mixed_alpha {
            Some(a) => {
                let a_q = logq_old.clone().add_scalar((1.0 - a).ln());
                let a_p = lp_tau.clone().add_scalar(a.ln());
                let hi = a_q.clone().max_pair(a_p.clone());
                let log_mix =
                    a_q.sub(hi.clone()).exp().add(a_p.sub(hi.clone()).exp()).log().add(hi);
                logq_old.clone().sub(log_mix).exp().mask_fill(invalid.clone(), 1.0)
            }
            None => Tensor::<2>::ones([b, len], f32_on(&device)),
        };

        // Rewards, discounted returns, length normalisation, whitening.
        let mut reward = lp_reward.clone().sub(logq_old.clone());
        if let Some(s) = c.reward_scaling {
            reward = reward.div_scalar(s);
        }
        if let Some(clip) = c.cliprange_reward.filter(|&x| x > 0.0) {
            reward = reward.clamp(-clip, clip);
        }
        let reward = reward.mul(m.clone());
        let returns = reward.clone().matmul(future_sum_matrix(len, c.gamma, &device));
        let remaining = m.clone().matmul(future_sum_matrix(len, 1.0, &device)).clamp_min(1.0);
        let adv_raw = returns.clone().div(remaining.clone()).mul(m.clone());
        let count = (b * len) as f64;
        let mean = adv_raw.clone().sum().div_scalar(count);
        let centred = adv_raw.clone().sub(mean.unsqueeze_dim::<2>(1).expand([b, len]));
        let denom = match c.whitening_variance {
            WhiteningVariance::Population => count,
            WhiteningVariance::Unbiased => (count - 1.0).max(1.0),
        };
        let var = centred.clone().powi_scalar(2).sum().div_scalar(denom);
        let advantage = centred
            .div(var.add_scalar(1e-8).sqrt().unsqueeze_dim::<2>(1).expand([b, len]))
            .detach();

        // Clipped policy-gradient term on the current student.
        let logq_new = token_log_prob(scaled_logits(student_logits.clone(), tau), tokens);
        let ratio = logq_new.sub(logq_old.clone()).mul(m.clone()).exp().mul(weight.clone());
        let clipped = ratio.clone().clamp(1.0 - c.cliprange, 1.0 + c.cliprange);
        let neg_adv = advantage.clone().neg();
        let pg = neg_adv
            .clone()
            .mul(ratio.clone())
            .max_pair(neg_adv.mul(clipped))
            .mask_fill(invalid.clone(), 0.0);

        // Single-step regulariser KL(q_τ ‖ p_τ) at every token.
        let log_q = activation::log_softmax(scaled_logits(student_logits, tau), 2);
        let log_p = activation::log_softmax(scaled_logits(teacher, tau), 2);
        let reg = log_q
            .clone()
            .exp()
            .mul(log_q.sub(log_p))
            .sum_dim(2)
            .squeeze_dim::<2>(2)
            .mask_fill(invalid, 0.0);

        let n_valid = m.sum();
        let n = n_valid.clone().clamp_min(1.0);
        let pg_loss = pg.clone().sum().div(n.clone());
        let reg_loss = reg.clone().sum().div(n);
        let (loss, per_token_total) = if c.single_step_reg {
            (pg_loss.clone().add(reg_loss.clone()), pg.clone().add(reg.clone()))
        } else {
            (pg_loss.clone(), pg.clone())
        };
        let per_token = vec![
            ("logq_old", logq_old),
            ("logp_teacher_reward", lp_reward),
            ("logp_teacher_tau", lp_tau),
            ("importance_weight", weight),
            ("reward", reward),
            ("discounted_return", returns),
            ("remaining_length", remaining),
            ("advantage_raw", adv_raw),
            ("advantage", advantage),
            ("ratio", ratio.detach()),
            ("pg_term", pg.detach()),
            ("reg_term", reg.detach()),
        ];
        Ok(MiniLlmOutput {
            loss,
            pg_loss: pg_loss.detach(),
            reg_loss: reg_loss.detach(),
            per_row: per_token_total.flatten(0, 1),
            n_valid,
            per_token: per_token.into_iter().map(|(k, v)| (k, v.detach())).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn discounted_returns_sum_the_future() {
        let d = Device::flex();
        let r = Tensor::<2>::from_floats([[1.0, 2.0, 4.0]], &d);
        let got = r.matmul(future_sum_matrix(3, 0.5, &d)).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, vec![1.0 + 1.0 + 1.0, 2.0 + 2.0, 4.0]);
    }
}
