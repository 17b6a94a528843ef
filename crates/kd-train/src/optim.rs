//! AdamW with weight-decay groups, keyed by parameter path so that its state checkpoints and
//! resumes exactly.
//!
//! burn 0.22's `ModuleOptimizer` keys its state by per-process parameter ids (which a model
//! reloaded from disk does not keep) and clips each tensor's norm separately; training language
//! models wants the global norm and Hugging Face's decay groups, so kd-train carries its own
//! (small) AdamW.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::params::GradAccumulator;

/// AdamW hyperparameters (the learning rate comes from the schedule each step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay (default `0.9`).
    pub beta1: f64,
    /// Second-moment decay (default `0.999`).
    pub beta2: f64,
    /// Denominator epsilon (default `1e-8`).
    pub epsilon: f64,
    /// Decoupled weight decay on matrices (default `0.01`); biases and norm gains never decay.
    pub weight_decay: f64,
    /// Also decay embedding matrices (default `false`).
    pub decay_embeddings: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            decay_embeddings: false,
        }
    }
}

impl AdamWConfig {
    /// Checks the hyperparameters.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when a beta leaves `[0, 1)`, `epsilon ≤ 0` or
    /// `weight_decay < 0`.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::config(name, "a value in [0, 1)", v));
            }
        }
        if self.epsilon.is_nan() || self.epsilon <= 0.0 {
            return Err(TrainError::config("epsilon", "a value > 0", self.epsilon));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(TrainError::config("weight_decay", "a value ≥ 0", self.weight_decay));
        }
        Ok(())
    }
}

/// Moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW (Loshchilov & Hutter 2019) over a whole module.
///
/// ```text
/// m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²;   t ← t + 1
/// θ ← θ · (1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
/// `λ = weight_decay` on matrices outside embeddings (see
/// [`ParamInfo::decays`](crate::params::ParamInfo::decays)), `0` elsewhere.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    moments: BTreeMap<String, Moments>,
    steps: u64,
}

struct AdamWMapper<'a> {
    path: Vec<String>,
    containers: Vec<String>,
    optim: &'a mut AdamW,
    grads: &'a GradAccumulator,
    lr: f64,
    grad_scale: f64,
}

impl ModuleMapper for AdamWMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some(grad) = self.grads.get(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let require_grad = tensor.is_require_grad();
        let n = shape.num_elements();
        let c = &self.optim.config;
        let g = grad.clone().mul_scalar(self.grad_scale); // [n]
        let moments = match self.optim.moments.remove(&path) {
            Some(Moments { m, v }) => Moments {
                m: m.mul_scalar(c.beta1).add(g.clone().mul_scalar(1.0 - c.beta1)),
                v: v.mul_scalar(c.beta2).add(g.square().mul_scalar(1.0 - c.beta2)),
            },
            None => Moments {
                m: g.clone().mul_scalar(1.0 - c.beta1),
                v: g.square().mul_scalar(1.0 - c.beta2),
            },
        };
        // Bias-corrected step; `steps` was already advanced for this update.
        let t = self.optim.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let update = moments
            .m
            .clone()
            .div_scalar(bc1)
            .div(moments.v.clone().div_scalar(bc2).sqrt().add_scalar(c.epsilon));
        let in_embedding = self.containers.iter().any(|k| k.contains("Embedding"));
        let decays = D >= 2 && (c.decay_embeddings || !in_embedding);
        let theta = tensor.inner().reshape([n]);
        let theta = if decays && c.weight_decay > 0.0 {
            theta.mul_scalar(1.0 - self.lr * c.weight_decay)
        } else {
            theta
        };
        let theta = theta.sub(update.mul_scalar(self.lr)).reshape(shape);
        self.optim.moments.insert(path, moments);
        let mut theta = Tensor::<D>::from_inner(theta);
        if require_grad {
            theta = theta.require_grad();
        }
        Param::from_mapped_value(id, theta, mapper)
    }
}

impl AdamW {
    /// A fresh optimizer.
    ///
    /// # Errors
    /// See [`AdamWConfig::validate`].
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, moments: BTreeMap::new(), steps: 0 })
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update to every parameter of `module` that has a gradient in `grads`, with the
    /// gradients multiplied by `grad_scale` (the clipping factor) first.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &GradAccumulator,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.steps += 1;
        let mut mapper = AdamWMapper {
            path: Vec::new(),
            containers: Vec::new(),
            optim: self,
            grads,
            lr,
            grad_scale,
        };
        module.map(&mut mapper)
    }

    /// The state as named `f32` tensors (`m.<path>`, `v.<path>`) plus the step count.
    pub fn state(&self) -> (BTreeMap<String, TensorData>, u64) {
        let mut out = BTreeMap::new();
        for (path, Moments { m, v }) in &self.moments {
            out.insert(format!("m.{path}"), m.clone().into_data().convert::<f32>());
            out.insert(format!("v.{path}"), v.clone().into_data().convert::<f32>());
        }
        (out, self.steps)
    }

    /// Restores a state written by [`state`](Self::state), on `device`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when a moment lacks its partner.
    pub fn restore(
        &mut self,
        tensors: &BTreeMap<String, TensorData>,
        steps: u64,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        let device = device.clone().inner();
        let mut moments = BTreeMap::new();
        for (name, data) in tensors {
            let Some(path) = name.strip_prefix("m.") else {
                continue;
            };
            let v = tensors.get(&format!("v.{path}")).ok_or_else(|| {
                TrainError::checkpoint("optimizer", format!("`m.{path}` without `v.{path}`"))
            })?;
            moments.insert(
                path.to_string(),
                Moments {
                    m: Tensor::from_data(data.clone(), &device),
                    v: Tensor::from_data(v.clone(), &device),
                },
            );
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}

/// The factor that brings the global gradient norm to at most `max_norm`
/// (`min(1, max_norm / (norm + 1e-6))`, as PyTorch's `clip_grad_norm_`); `1` without clipping.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm.is_finite() => (max / (norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    #[test]
    fn clip_factor_matches_torch() {
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        assert!((clip_factor(4.0, Some(1.0)) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
        assert_eq!(clip_factor(4.0, None), 1.0);
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // With bias correction the first Adam step is lr · g/|g| (up to ε).
        let device = Device::flex().autodiff();
        let layer: Linear = LinearConfig::new(2, 1).init(&device);
        let before = layer.weight.val().inner().into_data().try_to_vec::<f32>().unwrap();
        let x = Tensor::<2>::from_floats([[1.0, -2.0]], &device);
        let loss = layer.forward(x).sum();
        let mut acc = GradAccumulator::new();
        acc.add(&layer, &loss.backward());
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.5, ..Default::default() }).unwrap();
        let layer = opt.step(layer, &acc, 0.1, 1.0);
        let after = layer.weight.val().inner().into_data().try_to_vec::<f32>().unwrap();
        // d loss / d w = x = [1, -2]; decayed by (1 − 0.1·0.5) first.
        let expect = [before[0] * 0.95 - 0.1, before[1] * 0.95 + 0.1];
        for (a, e) in after.iter().zip(expect) {
            assert!((a - e).abs() < 1e-5, "{after:?} vs {expect:?}");
        }
        assert!(layer.weight.val().is_require_grad());
        // The bias (rank 1) is not decayed: it moves by exactly −lr·sign(1).
        let (state, steps) = opt.state();
        assert_eq!(steps, 1);
        assert_eq!(state.len(), 4);
    }
}
