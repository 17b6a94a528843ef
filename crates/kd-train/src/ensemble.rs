//! Multi-teacher distillation: several teachers, online or stored, combined into one target per
//! position with fixed weights or routed per example.
//!
//! ```text
//! logit level:        z̄ = Σ_i w_i z_i                       (the loss sees z̄)
//! probability level:  p̄ = Σ_i w_i softmax(z_i),  z̄ = log p̄   (the loss sees log p̄)
//! routing:            w_i = 1 for the teacher a block is tagged with, 0 for the others
//! ```
//!
//! The logit level is a product of experts (`softmax(z̄) ∝ Π_i p_i^(w_i)`): it keeps only what
//! the teachers agree on and sharpens where they do. The probability level is a mixture: every
//! token any teacher finds likely keeps mass. With a loss temperature `T` the loss applies it to
//! the combined logits (`softmax(z̄ / T)`), so at the probability level the mixture is formed at
//! `T = 1` and then tempered. Identical teachers give exactly the single teacher at either level.
//!
//! Stored teachers ([`crate::offline`]) hold log-probabilities of their top-k only, so they
//! combine at the probability level: a token outside a teacher's top-k counts as 0 for it (its
//! mass stays in that teacher's tail), the `k` most likely tokens of the mixture are kept, and
//! everything else forms the tail: `tail = 1 − Σ_kept p̄`.

use burn::tensor::{Tensor, TensorData, activation};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::offline::SparseBlock;

/// How teachers are combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Averaging {
    /// Weighted mean of the logits (a product of experts).
    #[default]
    Logits,
    /// Weighted mean of the probabilities (a mixture).
    Probs,
}

/// The teachers' weights and how they combine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeacherEnsemble {
    /// One weight per teacher (the trainer's teacher first), `≥ 0`, not all zero; normalised
    /// to sum to 1. Empty: equal weights.
    pub weights: Vec<f64>,
    /// The combination.
    pub averaging: Averaging,
    /// Per-example routing: the teacher of each training block (`routes[i]` for block `i`),
    /// replacing the weights.
    pub routes: Option<Vec<usize>>,
}

impl TeacherEnsemble {
    /// Checks the settings against `teachers` teachers and `blocks` training blocks.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the bad key.
    pub fn validate(&self, teachers: usize, blocks: usize) -> Result<()> {
        if !self.weights.is_empty() {
            if self.weights.len() != teachers {
                return Err(TrainError::InvalidConfig {
                    name: "ensemble.weights",
                    expected: "one weight per teacher",
                    got: format!("{} weights for {teachers} teachers", self.weights.len()),
                });
            }
            let bad = self.weights.iter().any(|w| !w.is_finite() || *w < 0.0);
            if bad || self.weights.iter().sum::<f64>() <= 0.0 {
                return Err(TrainError::config(
                    "ensemble.weights",
                    "finite weights ≥ 0, not all zero",
                    format!("{:?}", self.weights),
                ));
            }
        }
        if let Some(routes) = &self.routes {
            if routes.len() < blocks {
                return Err(TrainError::InvalidConfig {
                    name: "ensemble.routes",
                    expected: "a teacher for every training block",
                    got: format!("{} routes for {blocks} blocks", routes.len()),
                });
            }
            if let Some((i, r)) = routes.iter().enumerate().find(|(_, r)| **r >= teachers) {
                return Err(TrainError::InvalidConfig {
                    name: "ensemble.routes",
                    expected: "teacher indices below the number of teachers",
                    got: format!("block {i} routed to teacher {r} of {teachers}"),
                });
            }
        }
        Ok(())
    }

    /// The weights of each teacher for each of `blocks` (`[teacher][row]`), summing to 1 per row.
    pub fn row_weights(&self, teachers: usize, blocks: &[usize]) -> Vec<Vec<f32>> {
        match &self.routes {
            Some(routes) => (0..teachers)
                .map(|t| blocks.iter().map(|&b| f32::from(u8::from(routes[b] == t))).collect())
                .collect(),
            None => {
                let w: Vec<f64> = if self.weights.is_empty() {
                    vec![1.0; teachers]
                } else {
                    self.weights.clone()
                };
                let sum: f64 = w.iter().sum();
                w.iter().map(|&wi| vec![(wi / sum) as f32; blocks.len()]).collect()
            }
        }
    }
}

/// Combines teachers' logits (each `[batch, seq, vocab]`, on one device) with per-row weights
/// `weights[teacher][row]` ([`TeacherEnsemble::row_weights`]).
pub fn combine_logits(
    logits: Vec<Tensor<3>>,
    weights: &[Vec<f32>],
    averaging: Averaging,
) -> Tensor<3> {
    let [b, _, _] = logits[0].dims();
    let device = logits[0].device();
    let w =
        |i: usize| Tensor::<3>::from_data(TensorData::new(weights[i].clone(), [b, 1, 1]), &device);
    match averaging {
        Averaging::Logits => logits
            .into_iter()
            .enumerate()
            .map(|(i, z)| z.mul(w(i)))
            .reduce(|a, c| a.add(c))
            .expect("at least one teacher"),
        Averaging::Probs => {
            // log Σ_i w_i p_i = m + log Σ_i w_i exp(log p_i − m), m = max over teachers of weight > 0.
            let lps = logits.into_iter().map(|z| activation::log_softmax(z, 2));
            let masked: Vec<Tensor<3>> = lps
                .enumerate()
                .map(|(i, lp)| {
                    let dead: Vec<f32> = weights[i]
                        .iter()
                        .map(|&x| if x > 0.0 { 0.0 } else { f32::NEG_INFINITY })
                        .collect();
                    lp.add(Tensor::<3>::from_data(TensorData::new(dead, [b, 1, 1]), &device))
                })
                .collect();
            let m = masked.iter().skip(1).fold(masked[0].clone(), |a, c| a.max_pair(c.clone()));
            // The masked log-probabilities: a teacher of weight 0 adds exp(−∞) = 0, never ∞·0.
            let sum = masked
                .into_iter()
                .enumerate()
                .map(|(i, lp)| lp.sub(m.clone()).exp().mul(w(i)))
                .reduce(|a, c| a.add(c))
                .expect("at least one teacher");
            m.add(sum.log())
        }
    }
}

/// Averages stored top-k blocks of several teachers at the probability level with per-teacher
/// `weights` (summing to 1) and keeps the `k` most likely tokens per position (see the module
/// docs). All blocks have the same positions and `k`.
pub fn average_sparse(blocks: &[&SparseBlock], weights: &[f32], k: usize) -> SparseBlock {
    if let Some(i) = weights.iter().position(|&w| w == 1.0) {
        return blocks[i].clone();
    }
    let positions = blocks[0].tails.len();
    let mut out = SparseBlock::default();
    let mut mix: Vec<(u32, f64)> = Vec::new();
    for p in 0..positions {
        mix.clear();
        for (b, &w) in blocks.iter().zip(weights) {
            if w == 0.0 {
                continue;
            }
            for j in p * k..(p + 1) * k {
                mix.push((b.ids[j], f64::from(w) * f64::from(b.logprobs[j]).exp()));
            }
        }
        // Merge equal ids (each teacher's ids are ascending, so sort then sum runs).
        mix.sort_unstable_by_key(|e| e.0);
        let mut merged: Vec<(u32, f64)> = Vec::with_capacity(mix.len());
        for &(id, pr) in &mix {
            match merged.last_mut() {
                Some(last) if last.0 == id => last.1 += pr,
                _ => merged.push((id, pr)),
            }
        }
        merged.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        merged.truncate(k);
        merged.sort_unstable_by_key(|e| e.0);
        let kept: f64 = merged.iter().map(|e| e.1).sum();
        out.tails.push((1.0 - kept).clamp(0.0, 1.0 - f64::EPSILON) as f32);
        for (id, pr) in merged {
            out.ids.push(id);
            out.logprobs.push(pr.max(f64::MIN_POSITIVE).ln() as f32);
        }
    }
    out
}
