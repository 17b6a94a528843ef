//! The causal-intervention teacher of *Revisiting Who's Harry Potter* and that paper's
//! re-implementation of the WHP teacher, built on the host in `f64` from counterfactual logits.

use burn::tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::inputs::{MajorityMove, NameFirstTokens, RevisitInputs, RevisitTargets};
use crate::config::loss_config;
use crate::error::{KdError, Result, check_range};
use crate::logspace::LOGIT_FLOOR;

/// Which teacher of the revisit paper is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisitMethod {
    /// The causal-intervention teacher: mean over K counterfactual names, with the name moves.
    Intervention,
    /// The paper's WHP baseline (K = 1): replacement-name logits lowered, then one-hot argmax.
    WhpBaseline,
}

loss_config! {
    /// Config of [`RevisitTeacher`].
    pub struct RevisitTeacherConfig, new: "Official values: intervention, threshold `0.1`, floor `1e-8`, change the name back, suppress by `5`." {
        /// `intervention` (default) or `whp_baseline`.
        method: RevisitMethod = RevisitMethod::Intervention => with_method,
        /// Probability in `[0, 1]` above which a counterfactual votes for its name (default `0.1`).
        move_threshold: f64 = 0.1 => with_move_threshold,
        /// Probability in `[0, 1)` left on a moved replacement-name token (default `1e-8`).
        floor: f64 = 1e-8 => with_floor,
        /// Move replacement-name probability to the original name (steps 1 and 2; default
        /// `true`). `false` skips both moves, as the official code does.
        change_name_back: bool = true => with_change_name_back,
        /// Amount `≥ 0` subtracted from the replacement-name logits on suppressed rows
        /// (`whp_baseline` only; default `5`).
        suppress_value: f64 = 5.0 => with_suppress_value,
    }
}

impl RevisitTeacherConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `move_threshold ∉ [0, 1]`, `floor ∉ [0, 1)` or a
    /// negative (or non-finite) `suppress_value`.
    pub fn init(&self) -> Result<RevisitTeacher> {
        let id = RevisitTeacher::ID;
        check_range(id, "move_threshold", self.move_threshold, 0.0, 1.0, "a value in [0, 1]")?;
        if !(self.floor >= 0.0 && self.floor < 1.0) {
            return Err(KdError::InvalidHyperparameter {
                loss: id,
                name: "floor",
                expected: "a value in [0, 1)",
                got: self.floor,
            });
        }
        check_range(id, "suppress_value", self.suppress_value, 0.0, f64::INFINITY, "a value ≥ 0")?;
        Ok(RevisitTeacher { config: self.clone() })
    }
}

/// The teachers of *Revisiting Who's Harry Potter* (Liu et al.): the causal-intervention teacher,
/// which averages the model's predictions on K copies of the text with the target's name
/// replaced by other names, after moving the replacement names' probability back to the original
/// name; and the paper's re-implementation of the WHP teacher.
///
/// ```text
/// intervention:
///   p_k = softmax(z_k)                                               every row, every k
///   (1) rows with anchor_targets = g ≥ 0, every k, t ∈ all_k ascending, t ≠ g:
///         if p_k[t] > floor:  p_k[g] += p_k[t] − floor;  p_k[t] = floor      "change name back"
///   (2) n_w  = #{k : max_{t ∈ w_prefix_k}  p_k[t] > move_threshold},  n_wo likewise
///       g = original.w_prefix if n_w > K/2, elif original.wo_prefix if n_wo > K/2, else none
///       if g and majority_allowed: the move of (1) with g for every k
///   (3) teacher = mean_k p_k                                          (p_0 when K = 1)
///   (change_name_back = false: neither (1) nor (2))
/// whp_baseline (K = 1):
///   z'[t] = z_0[t] − suppress_value   for t ∈ all_0 on rows with suppress_rows
///   soft_teacher = softmax(z'),  label = argmax soft_teacher (lowest index on ties)
///   teacher = one_hot(label)
/// ```
/// `all_k` = union of the `w_prefix` and `wo_prefix` ids of name k.
///
/// This is discrete host-side logic: the logits are read to the host and everything is computed
/// in `f64` (softmaxes in parallel over rows); the result is a plain constant target, turned into
/// an `f32` tensor by [`RevisitTargets::teacher_tensor`]. Memory: `8·K·batch·len·vocab` bytes for
/// `counterfactual_probs` plus the logits' copy; rows are independent, so build a large batch in
/// slices of sequences (e.g. one sequence at a time) to bound it. Logits below `-1e4` (`-inf`
/// padding) are raised to `-1e4`.
///
/// # Shapes
/// `counterfactual_logits`: `[K, batch, len, vocab]` (the same model on the K counterfactual
/// texts, aligned to the original text's positions); row vectors of [`RevisitInputs`]:
/// `[batch·len]`; `replacement_first_tokens`: K entries.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the logits' length does not match `dims`, `K` or `vocab` is 0,
/// `replacement_first_tokens` has not K entries, or a row vector the method uses has not
/// `batch·len` entries; [`KdError::InvalidInput`] for a token id `≥ vocab` (or an anchor target
/// `< −1`), a NaN or `+inf` logit, or `whp_baseline` with `K ≠ 1`.
///
/// Paper: Liu et al., *Revisiting Who's Harry Potter: Towards Targeted Unlearning from a Causal
/// Intervention Perspective*, <https://arxiv.org/abs/2407.16997>; code
/// <https://github.com/UCSB-NLP-Chang/causal_unlearn> (`teacher.py`). WHP: Eldan & Russinovich,
/// <https://arxiv.org/abs/2310.02238>.
///
/// # Example: change name back
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::teachers::whp::{
///     NameFirstTokens, OriginalFirstToken, RevisitInputs, RevisitTeacherConfig,
/// };
///
/// // K = 1 counterfactual, one row, vocabulary of 4; the replacement name starts with token 3,
/// // the original name with token 1, which follows this row in the original text.
/// let logits = Tensor::<4>::from_floats([[[[0.0, 0.0, 0.0, 2.0]]]], &Device::flex());
/// let mut inputs = RevisitInputs::new(
///     vec![NameFirstTokens::new(vec![3], vec![])],
///     OriginalFirstToken { w_prefix: 1, wo_prefix: 2 },
///     1,
/// );
/// inputs.anchor_targets = vec![1];
/// let teacher = RevisitTeacherConfig::new().init()?;
/// let out = teacher.build(logits, &inputs)?;
/// let e2 = 2f64.exp();
/// let z = 3.0 + e2;
/// assert!((out.teacher_probs[1] - (1.0 + e2 - 1e-8 * z) / z).abs() < 1e-6);
/// assert!(out.anchor_moved[0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RevisitTeacher {
    config: RevisitTeacherConfig,
}

impl RevisitTeacher {
    /// Identifier used in error messages.
    pub const ID: &'static str = "revisit_teacher";

    /// The validated config.
    pub fn config(&self) -> &RevisitTeacherConfig {
        &self.config
    }

    /// Builds the teacher from counterfactual logits `[K, batch, len, vocab]` of any float dtype
    /// (read to the host as `f64`).
    ///
    /// # Errors
    /// See [`RevisitTeacher`].
    pub fn build(
        &self,
        counterfactual_logits: Tensor<4>,
        inputs: &RevisitInputs,
    ) -> Result<RevisitTargets> {
        let dims = counterfactual_logits.dims();
        let logits = counterfactual_logits
            .detach()
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .map_err(|e| KdError::InvalidInput {
                loss: Self::ID,
                name: "counterfactual_logits",
                expected: "a float tensor readable as f64".into(),
                got: format!("{e:?}"),
            })?;
        self.build_host(&logits, dims, inputs)
    }

    /// [`RevisitTeacher::build`] on host logits, row-major `[K, batch, len, vocab]`.
    ///
    /// # Errors
    /// See [`RevisitTeacher`].
    pub fn build_host(
        &self,
        counterfactual_logits: &[f64],
        dims: [usize; 4],
        inputs: &RevisitInputs,
    ) -> Result<RevisitTargets> {
        let c = &self.config;
        let [k_n, batch, len, vocab] = dims;
        let rows = batch * len;
        self.validate(counterfactual_logits, dims, inputs)?;
        let alls: Vec<Vec<usize>> =
            inputs.replacement_first_tokens.iter().map(NameFirstTokens::all).collect();
        let baseline = c.method == RevisitMethod::WhpBaseline;

        // p_k = softmax(z_k) per row, in parallel; whp_baseline lowers the name's logits first.
        let mut probs = counterfactual_logits.to_vec(); // [K, batch, len, vocab]
        probs.par_chunks_mut(vocab).enumerate().for_each(|(i, row)| {
            if baseline && inputs.suppress_rows[i % rows] {
                for &t in &alls[0] {
                    row[t] -= c.suppress_value;
                }
            }
            softmax_in_place(row);
        });

        let mut anchor_moved = vec![false; rows];
        let mut majority_moved = vec![MajorityMove::None; rows];
        if !baseline && c.change_name_back {
            let orig = inputs.original_first_token;
            for r in 0..rows {
                let row = |k: usize| (k * rows + r) * vocab..(k * rows + r + 1) * vocab;
                // (1) change name back at anchor rows.
                let g = inputs.anchor_targets[r];
                if g >= 0 {
                    anchor_moved[r] = true;
                    for k in 0..k_n {
                        move_to(&mut probs[row(k)], g as usize, &alls[k], c.floor);
                    }
                }
                // (2) majority vote over the K counterfactuals (on the probabilities after (1)).
                let votes = |pick: fn(&NameFirstTokens) -> &Vec<usize>| {
                    (0..k_n)
                        .filter(|&k| {
                            let p = &probs[row(k)];
                            let ids = pick(&inputs.replacement_first_tokens[k]);
                            ids.iter().any(|&t| p[t] > c.move_threshold)
                        })
                        .count()
                };
                let n_w = votes(|n| &n.w_prefix);
                let n_wo = votes(|n| &n.wo_prefix);
                let (kind, g) = if 2 * n_w > k_n {
                    (MajorityMove::WithPrefix, orig.w_prefix)
                } else if 2 * n_wo > k_n {
                    (MajorityMove::WithoutPrefix, orig.wo_prefix)
                } else {
                    continue;
                };
                if inputs.majority_allowed[r] {
                    majority_moved[r] = kind;
                    for k in 0..k_n {
                        move_to(&mut probs[row(k)], g, &alls[k], c.floor);
                    }
                }
            }
        }

        // (3) mean over the K counterfactuals.
        let mut mean = probs[..rows * vocab].to_vec(); // [batch, len, vocab]
        if k_n > 1 {
            mean.par_chunks_mut(vocab).enumerate().for_each(|(r, out)| {
                for k in 1..k_n {
                    let p = &probs[(k * rows + r) * vocab..(k * rows + r + 1) * vocab];
                    out.iter_mut().zip(p).for_each(|(o, x)| *o += x);
                }
                out.iter_mut().for_each(|o| *o /= k_n as f64);
            });
        }

        let (labels, soft_teacher_probs, teacher_probs) = if baseline {
            // One-hot of the argmax (lowest index on exact ties).
            let labels: Vec<usize> = mean.chunks(vocab).map(argmax_lowest).collect();
            let mut onehot = vec![0.0; rows * vocab];
            for (r, &y) in labels.iter().enumerate() {
                onehot[r * vocab + y] = 1.0;
            }
            (Some(labels), Some(mean), onehot)
        } else {
            (None, None, mean)
        };
        Ok(RevisitTargets {
            dims,
            counterfactual_probs: probs,
            anchor_moved,
            majority_moved,
            labels,
            soft_teacher_probs,
            teacher_probs,
        })
    }

    fn validate(&self, logits: &[f64], dims: [usize; 4], inputs: &RevisitInputs) -> Result<()> {
        let [k_n, batch, len, vocab] = dims;
        let rows = batch * len;
        let id = Self::ID;
        if k_n == 0 || vocab == 0 || logits.len() != k_n * rows * vocab {
            return Err(KdError::ShapeMismatch {
                what: "counterfactual_logits (K ≥ 1, vocab ≥ 1, length = K·batch·len·vocab)".into(),
                expected: vec![k_n.max(1), batch, len, vocab.max(1)],
                got: vec![logits.len()],
            });
        }
        let names = &inputs.replacement_first_tokens;
        if names.len() != k_n {
            return Err(KdError::ShapeMismatch {
                what: "replacement_first_tokens (one per counterfactual) vs counterfactual_logits"
                    .into(),
                expected: vec![k_n],
                got: vec![names.len()],
            });
        }
        let baseline = self.config.method == RevisitMethod::WhpBaseline;
        if baseline && k_n != 1 {
            return Err(KdError::InvalidInput {
                loss: id,
                name: "counterfactual_logits",
                expected: "K = 1 for method whp_baseline".into(),
                got: format!("K = {k_n}"),
            });
        }
        let bad_id = |name: &'static str, t: usize| KdError::InvalidInput {
            loss: id,
            name,
            expected: format!("token ids below the vocabulary size {vocab}"),
            got: t.to_string(),
        };
        for n in names {
            if let Some(&t) = n.w_prefix.iter().chain(&n.wo_prefix).find(|&&t| t >= vocab) {
                return Err(bad_id("replacement_first_tokens", t));
            }
        }
        let rows_len = |name: &str, n: usize| {
            if n == rows {
                Ok(())
            } else {
                Err(KdError::ShapeMismatch {
                    what: format!("{name} vs counterfactual_logits rows (batch·len)"),
                    expected: vec![rows],
                    got: vec![n],
                })
            }
        };
        if baseline {
            rows_len("suppress_rows", inputs.suppress_rows.len())?;
        } else {
            let orig = inputs.original_first_token;
            for t in [orig.w_prefix, orig.wo_prefix] {
                if t >= vocab {
                    return Err(bad_id("original_first_token", t));
                }
            }
            rows_len("anchor_targets", inputs.anchor_targets.len())?;
            rows_len("majority_allowed", inputs.majority_allowed.len())?;
            if let Some(&g) = inputs.anchor_targets.iter().find(|&&g| g < -1 || g >= vocab as i64) {
                return Err(KdError::InvalidInput {
                    loss: id,
                    name: "anchor_targets",
                    expected: format!("-1 (none) or a token id below the vocabulary size {vocab}"),
                    got: g.to_string(),
                });
            }
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan() || *x == f64::INFINITY) {
            return Err(KdError::InvalidInput {
                loss: id,
                name: "counterfactual_logits",
                expected: "finite logits (or -inf)".into(),
                got: format!("{} at flat index {i}", logits[i]),
            });
        }
        Ok(())
    }
}

/// Row softmax in `f64`, logits raised to [`LOGIT_FLOOR`] first.
fn softmax_in_place(row: &mut [f64]) {
    let max = row.iter().fold(LOGIT_FLOOR, |m, &x| m.max(x));
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (x.max(LOGIT_FLOOR) - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

/// Moves the probability of every id `t ≠ g` of `ids` (ascending) above `floor` onto `g`,
/// leaving `floor` on `t` (the official `move_probability_to_original_name`).
fn move_to(p: &mut [f64], g: usize, ids: &[usize], floor: f64) {
    for &t in ids {
        if t != g && p[t] > floor {
            p[g] += p[t] - floor;
            p[t] = floor;
        }
    }
}

/// Index of the largest entry, the lowest one on exact ties.
fn argmax_lowest(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teachers::whp::OriginalFirstToken;

    fn teacher() -> RevisitTeacher {
        RevisitTeacherConfig::new().init().unwrap()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-14, "{a:?} vs {b:?}");
        }
    }

    /// Logits `ln p` give back `p` exactly enough for hand-written probabilities.
    fn logits_of(p: &[f64]) -> Vec<f64> {
        p.iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn move_rule_on_four_tokens() {
        // p = [0.1, 0.2, 0.3, 0.4], g = 1, ids {0, 2, 3}: every id above the floor is moved.
        let mut p = vec![0.1, 0.2, 0.3, 0.4];
        move_to(&mut p, 1, &[0, 2, 3], 1e-8);
        close(&p, &[1e-8, 0.2 + 0.1 + 0.3 + 0.4 - 3e-8, 1e-8, 1e-8]);
        // An id equal to g is skipped, one at or below the floor is left alone.
        let mut p = vec![0.5, 0.5 - 1e-9, 1e-9, 0.0];
        move_to(&mut p, 0, &[0, 2, 3], 1e-8);
        close(&p, &[0.5, 0.5 - 1e-9, 1e-9, 0.0]);
    }

    #[test]
    fn anchor_row_moves_every_counterfactual() {
        // K = 2, one row, V = 4. Name 0 starts with token 2, name 1 with token 3; target g = 1.
        let p0 = [0.1, 0.2, 0.3, 0.4];
        let p1 = [0.25, 0.25, 0.05, 0.45];
        let logits: Vec<f64> = [logits_of(&p0), logits_of(&p1)].concat();
        let mut inputs = RevisitInputs::new(
            vec![NameFirstTokens::new(vec![2], vec![]), NameFirstTokens::new(vec![], vec![3])],
            OriginalFirstToken { w_prefix: 0, wo_prefix: 0 },
            1,
        );
        inputs.anchor_targets = vec![1];
        inputs.majority_allowed = vec![false];
        let out = teacher().build_host(&logits, [2, 1, 1, 4], &inputs).unwrap();
        let q0 = [0.1, 0.5 - 1e-8, 1e-8, 0.4];
        let q1 = [0.25, 0.7 - 1e-8, 0.05, 1e-8];
        close(&out.counterfactual_probs, &[q0, q1].concat());
        let mean: Vec<f64> = q0.iter().zip(&q1).map(|(a, b)| (a + b) / 2.0).collect();
        close(&out.teacher_probs, &mean);
        assert_eq!(out.anchor_moved, vec![true]);
        assert_eq!(out.majority_moved, vec![MajorityMove::None]);
    }

    #[test]
    fn majority_of_two_out_of_three() {
        // K = 3, V = 5; names start with w_prefix tokens 2, 3, 4. Counterfactuals 0 and 1 put
        // more than 0.1 on their own name (2 > 3/2 votes), counterfactual 2 does not.
        let ps =
            [[0.4, 0.1, 0.3, 0.1, 0.1], [0.5, 0.1, 0.1, 0.2, 0.1], [0.6, 0.2, 0.1, 0.05, 0.05]];
        let logits: Vec<f64> = ps.iter().flat_map(|p| logits_of(p)).collect();
        let names = (2..5).map(|t| NameFirstTokens::new(vec![t], vec![])).collect();
        let inputs = RevisitInputs::new(names, OriginalFirstToken { w_prefix: 1, wo_prefix: 0 }, 1);
        let out = teacher().build_host(&logits, [3, 1, 1, 5], &inputs).unwrap();
        assert_eq!(out.majority_moved, vec![MajorityMove::WithPrefix]);
        assert_eq!(out.majority_moved[0].code(), 1);
        // Every k moves its own name's tokens to the original w_prefix token 1.
        let want = [
            [0.4, 0.4 - 1e-8, 1e-8, 0.1, 0.1],
            [0.5, 0.3 - 1e-8, 0.1, 1e-8, 0.1],
            [0.6, 0.25 - 1e-8, 0.1, 0.05, 1e-8],
        ];
        close(&out.counterfactual_probs, &want.concat());
        // Not allowed: the vote happens but nothing moves.
        let mut inputs = inputs;
        inputs.majority_allowed = vec![false];
        let out = teacher().build_host(&logits, [3, 1, 1, 5], &inputs).unwrap();
        assert_eq!(out.majority_moved, vec![MajorityMove::None]);
        close(&out.counterfactual_probs, &ps.concat());
        // One vote of three is no majority.
        let ps1 = [ps[0], ps[2], ps[2]];
        let logits: Vec<f64> = ps1.iter().flat_map(|p| logits_of(p)).collect();
        inputs.majority_allowed = vec![true];
        let out = teacher().build_host(&logits, [3, 1, 1, 5], &inputs).unwrap();
        assert_eq!(out.majority_moved, vec![MajorityMove::None]);
    }

    #[test]
    fn change_name_back_false_is_the_plain_mean() {
        let p = [0.1, 0.2, 0.3, 0.4];
        let mut inputs = RevisitInputs::new(
            vec![NameFirstTokens::new(vec![3], vec![2])],
            OriginalFirstToken { w_prefix: 1, wo_prefix: 1 },
            1,
        );
        inputs.anchor_targets = vec![1];
        let t = RevisitTeacherConfig::new().with_change_name_back(false).init().unwrap();
        let out = t.build_host(&logits_of(&p), [1, 1, 1, 4], &inputs).unwrap();
        close(&out.teacher_probs, &p);
        assert_eq!(out.anchor_moved, vec![false]);
    }

    #[test]
    fn whp_baseline_lowers_then_takes_the_argmax() {
        // Two rows; the name's ids {1, 3}; row 1 is suppressed by 5.
        let z = [0.0, 2.0, 1.0, 0.5, 0.0, 2.0, 1.0, 0.5];
        let mut inputs = RevisitInputs::new(
            vec![NameFirstTokens::new(vec![1], vec![3])],
            OriginalFirstToken::default(),
            2,
        );
        inputs.suppress_rows = vec![false, true];
        let t = RevisitTeacherConfig::new().with_method(RevisitMethod::WhpBaseline).init().unwrap();
        let out = t.build_host(&z, [1, 1, 2, 4], &inputs).unwrap();
        assert_eq!(out.labels, Some(vec![1, 2]));
        close(&out.teacher_probs, &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let mut lowered = [0.0, -3.0, 1.0, -4.5];
        softmax_in_place(&mut lowered);
        close(&out.soft_teacher_probs.unwrap()[4..], &lowered);
    }

    #[test]
    fn argmax_ties_go_low() {
        assert_eq!(argmax_lowest(&[0.1, 0.4, 0.4, 0.1]), 1);
        assert_eq!(argmax_lowest(&[0.25; 4]), 0);
    }

    #[test]
    fn errors() {
        for c in [
            RevisitTeacherConfig::new().with_move_threshold(1.5),
            RevisitTeacherConfig::new().with_floor(-1e-9),
            RevisitTeacherConfig::new().with_floor(1.0),
            RevisitTeacherConfig::new().with_suppress_value(f64::NAN),
        ] {
            assert!(matches!(c.init(), Err(KdError::InvalidHyperparameter { .. })), "{c:?}");
        }
        let names = vec![NameFirstTokens::new(vec![1], vec![2])];
        let orig = OriginalFirstToken { w_prefix: 0, wo_prefix: 0 };
        let z = [0.0; 8];
        let ok = RevisitInputs::new(names.clone(), orig, 2);
        assert!(teacher().build_host(&z, [1, 1, 2, 4], &ok).is_ok());
        let e = teacher().build_host(&z, [1, 1, 3, 4], &ok).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let e = teacher().build_host(&z, [2, 1, 1, 4], &ok).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let mut bad = ok.clone();
        bad.replacement_first_tokens[0].wo_prefix.push(4);
        let e = teacher().build_host(&z, [1, 1, 2, 4], &bad).unwrap_err();
        assert!(matches!(e, KdError::InvalidInput { name: "replacement_first_tokens", .. }));
        let mut bad = ok.clone();
        bad.anchor_targets = vec![-2, -1];
        let e = teacher().build_host(&z, [1, 1, 2, 4], &bad).unwrap_err();
        assert!(matches!(e, KdError::InvalidInput { name: "anchor_targets", .. }), "{e}");
        let mut bad = ok.clone();
        bad.majority_allowed.pop();
        assert!(teacher().build_host(&z, [1, 1, 2, 4], &bad).is_err());
        let mut nan = z;
        nan[3] = f64::NAN;
        let e = teacher().build_host(&nan, [1, 1, 2, 4], &ok).unwrap_err();
        assert!(matches!(e, KdError::InvalidInput { name: "counterfactual_logits", .. }));
        let base = RevisitTeacherConfig::new().with_method(RevisitMethod::WhpBaseline).init();
        let two = RevisitInputs::new([names.clone(), names].concat(), orig, 1);
        let e = base.unwrap().build_host(&z, [2, 1, 1, 4], &two).unwrap_err();
        assert!(matches!(e, KdError::InvalidInput { .. }), "{e}");
    }
}
