//! AdamW with weight-decay groups, keyed by parameter path so that its state checkpoints and
//! resumes exactly.
//!
//! burn 0.22's `ModuleOptimizer` keys its state by per-process parameter ids (which a model
//! reloaded from disk does not keep) and clips each tensor's norm separately; training language
//! models wants the global norm and Hugging Face's decay groups, so kd-train carries its own
//! (small) AdamW.
//!
//! **Fused update.** On flex, for `f32` parameters, the whole update of one parameter is one
//! pass over its four arrays (parameter, gradient, both moments) in place, in parallel chunks
//! (the private `fused` module); the op-composed version is about a dozen tensor ops per
//! parameter, each a pass over memory with a fresh buffer. Both compute the same formula in
//! `f32` in the same order and agree to rounding (tested).
//! `kd_losses::fused::with_path(Path::Composed, ..)` forces the op-composed update, as it does
//! for the losses.

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
pub(crate) struct Moments {
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
        let in_embedding = self.containers.iter().any(|k| k.contains("Embedding"));
        let decays = D >= 2 && (c.decay_embeddings || !in_embedding);
        let decay = if decays { c.weight_decay } else { 0.0 };
        #[cfg(feature = "flex")]
        let tensor = {
            let t = self.optim.steps as i32;
            let hyper = fused::Hyper {
                beta1: c.beta1,
                beta2: c.beta2,
                epsilon: c.epsilon,
                bc1: 1.0 - c.beta1.powi(t),
                bc2: 1.0 - c.beta2.powi(t),
                lr: self.lr,
                decay,
                grad_scale: self.grad_scale,
            };
            let moments = self.optim.moments.remove(&path);
            match fused::update(tensor.inner(), grad, moments, &hyper) {
                Ok((theta, moments)) => {
                    self.optim.moments.insert(path, moments);
                    let mut theta = Tensor::<D>::from_inner(theta);
                    if require_grad {
                        theta = theta.require_grad();
                    }
                    return Param::from_mapped_value(id, theta, mapper);
                }
                Err((theta, moments)) => {
                    if let Some(moments) = moments {
                        self.optim.moments.insert(path.clone(), moments);
                    }
                    Tensor::<D>::from_inner(theta)
                }
            }
        };
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
        let theta = tensor.inner().reshape([n]);
        let theta = if decay > 0.0 { theta.mul_scalar(1.0 - self.lr * decay) } else { theta };
        let theta = theta.sub(update.mul_scalar(self.lr)).reshape(shape);
        self.optim.moments.insert(path, moments);
        let mut theta = Tensor::<D>::from_inner(theta);
        if require_grad {
            theta = theta.require_grad();
        }
        Param::from_mapped_value(id, theta, mapper)
    }
}

#[cfg(feature = "flex")]
pub(crate) mod fused {
    //! The fused AdamW update on flex: one parallel pass over parameter, gradient and moments.
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, Tensor};
    use kd_losses::fused::{Path, current_path};
    use rayon::prelude::*;

    use super::Moments;

    thread_local! {
        /// Fused parameter updates run on this thread (tests check the routing).
        pub(crate) static FUSED_UPDATES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// The numbers of one update (bias corrections already raised to the step count).
    pub(crate) struct Hyper {
        pub(crate) beta1: f64,
        pub(crate) beta2: f64,
        pub(crate) epsilon: f64,
        /// `1 − β₁ᵗ`.
        pub(crate) bc1: f64,
        /// `1 − β₂ᵗ`.
        pub(crate) bc2: f64,
        pub(crate) lr: f64,
        /// Weight decay of this parameter (0 when it does not decay).
        pub(crate) decay: f64,
        pub(crate) grad_scale: f64,
    }

    /// Elements per parallel chunk (large enough to amortise rayon, small enough for 2+ cores).
    const CHUNK: usize = 1 << 15;

    /// A flex `f32` tensor's own contiguous storage, or the tensor back when it has none.
    // The error hands the (moved) input back; boxing it would allocate on every parameter.
    #[allow(clippy::result_large_err)]
    fn owned_f32(t: Tensor<1>) -> Result<FlexTensor, Tensor<1>> {
        if t.dtype() != DType::F32 {
            return Err(t);
        }
        // The conversion consumes its tensor: try it on a handle (same storage), and drop the
        // original on success, so that the storage is uniquely owned again.
        let Ok(prim) = t.clone().try_into_primitive::<Flex>() else {
            return Err(t);
        };
        drop(t);
        let n = prim.layout().num_elements();
        let whole = prim.storage::<f32>().len() == n;
        if whole && prim.as_slice::<f32>().is_some_and(|s| s.len() == n) {
            Ok(prim)
        } else {
            Err(Tensor::<1>::from_primitive::<Flex>(prim))
        }
    }

    /// Updates `theta` and its moments in one pass (see the module docs of `optim`). Returns
    /// the new parameter and moments, or, when the fused path does not apply (not flex, not
    /// `f32`, not contiguous, or the composed path forced), the inputs untouched.
    // The error hands the (moved) inputs back for the composed path.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub(crate) fn update<const D: usize>(
        theta: Tensor<D>,
        grad: &Tensor<1>,
        moments: Option<Moments>,
        h: &Hyper,
    ) -> Result<(Tensor<D>, Moments), (Tensor<D>, Option<Moments>)> {
        let shape = theta.shape();
        let n = shape.num_elements();
        let usable = current_path() == Path::Auto
            && theta.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && grad.shape().num_elements() == n;
        if !usable {
            return Err((theta, moments));
        }
        let flat = theta.reshape([n]);
        let mut p = match owned_f32(flat) {
            Ok(p) => p,
            Err(flat) => return Err((flat.reshape(shape), moments)),
        };
        let g_prim = match owned_f32(grad.clone()) {
            Ok(g) => g,
            Err(_) => return Err((Tensor::<1>::from_primitive::<Flex>(p).reshape(shape), moments)),
        };
        let fresh = moments.is_none();
        let (mut m, mut v) = match moments {
            Some(Moments { m, v }) => match (owned_f32(m), owned_f32(v)) {
                (Ok(m), Ok(v)) => (m, v),
                (m, v) => {
                    // Not flex f32 moments (cannot happen for a flex f32 parameter): give
                    // everything back for the composed path.
                    let to_tensor = |x: Result<FlexTensor, Tensor<1>>| match x {
                        Ok(f) => Tensor::<1>::from_primitive::<Flex>(f),
                        Err(t) => t,
                    };
                    let moments = Moments { m: to_tensor(m), v: to_tensor(v) };
                    let theta = Tensor::<1>::from_primitive::<Flex>(p).reshape(shape);
                    return Err((theta, Some(moments)));
                }
            },
            None => {
                let zeros = || FlexTensor::zeros(burn::tensor::Shape::new([n]), DType::F32);
                (zeros(), zeros())
            }
        };
        let g = g_prim.as_slice::<f32>().expect("contiguous");
        let theta_s = p.storage_mut::<f32>();
        let (m_s, v_s) = (m.storage_mut::<f32>(), v.storage_mut::<f32>());
        let c = Constants::new(h, fresh);
        theta_s
            .par_chunks_mut(CHUNK)
            .zip(m_s.par_chunks_mut(CHUNK))
            .zip(v_s.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((th, m), v), g)| c.apply(th, m, v, g));
        FUSED_UPDATES.with(|c| c.set(c.get() + 1));
        let theta = Tensor::<1>::from_primitive::<Flex>(p).reshape(shape);
        let moments = Moments {
            m: Tensor::<1>::from_primitive::<Flex>(m),
            v: Tensor::<1>::from_primitive::<Flex>(v),
        };
        Ok((theta, moments))
    }

    /// The update's constants in `f32`, as the op-composed path rounds its scalars.
    struct Constants {
        scale: f32,
        b1: f32,
        one_b1: f32,
        b2: f32,
        one_b2: f32,
        bc1: f32,
        bc2: f32,
        eps: f32,
        lr: f32,
        keep: Option<f32>,
    }

    impl Constants {
        fn new(h: &Hyper, fresh: bool) -> Self {
            // A fresh moment is `(1 − β) g`, i.e. the recurrence from zero with β's term dropped.
            let (b1, b2) = if fresh { (0.0, 0.0) } else { (h.beta1 as f32, h.beta2 as f32) };
            Self {
                scale: h.grad_scale as f32,
                b1,
                one_b1: (1.0 - h.beta1) as f32,
                b2,
                one_b2: (1.0 - h.beta2) as f32,
                bc1: h.bc1 as f32,
                bc2: h.bc2 as f32,
                eps: h.epsilon as f32,
                lr: h.lr as f32,
                keep: (h.decay > 0.0).then_some((1.0 - h.lr * h.decay) as f32),
            }
        }

        /// One chunk, in the op-composed path's order of operations.
        #[inline]
        fn apply(&self, th: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
            for (((th, m), v), g) in th.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = g * self.scale;
                *m = *m * self.b1 + g * self.one_b1;
                *v = *v * self.b2 + (g * g) * self.one_b2;
                let update = (*m / self.bc1) / ((*v / self.bc2).sqrt() + self.eps);
                let t = match self.keep {
                    Some(k) => *th * k,
                    None => *th,
                };
                *th = t - update * self.lr;
            }
        }
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
    use super::fused::FUSED_UPDATES;
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

    /// Five steps of a small MLP's AdamW (decayed matrices, an undecayed embedding and biases,
    /// clipping), fused and op-composed from the same start: parameters and moments agree.
    #[test]
    fn fused_update_matches_the_op_composed_one() {
        use burn::nn::{Embedding, EmbeddingConfig};
        use kd_losses::fused::{Path, with_path};

        #[derive(Module, Debug)]
        struct Net {
            embed: Embedding,
            fc: Linear,
        }
        let device = Device::flex().autodiff();
        device.seed(7);
        let net = Net {
            embed: EmbeddingConfig::new(11, 6).init(&device),
            fc: LinearConfig::new(6, 5).init(&device),
        };
        let run = |path: Path, net: Net| {
            with_path(path, || {
                let mut opt =
                    AdamW::new(AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
                let mut net = net;
                for step in 0..5 {
                    let ids = Tensor::<2, burn::tensor::Int>::from_ints(
                        [[step % 11, (3 * step + 1) % 11, 4]],
                        &device,
                    );
                    let y = net.fc.forward(net.embed.forward(ids));
                    let loss = y.clone().mul(y).sum().add_scalar(step as f64);
                    let mut acc = GradAccumulator::new();
                    acc.add(&net, &loss.backward());
                    net = opt.step(net, &acc, 0.05, 0.7);
                }
                (net, opt)
            })
        };
        let calls = FUSED_UPDATES.with(std::cell::Cell::get);
        let (fused, fused_opt) = run(Path::Auto, net.clone());
        assert!(FUSED_UPDATES.with(std::cell::Cell::get) >= calls + 15, "fused path ran");
        let (composed, composed_opt) = run(Path::Composed, net);
        let flat = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let pairs = [
            (
                fused.embed.weight.val().inner().flatten(0, 1),
                composed.embed.weight.val().inner().flatten(0, 1),
            ),
            (
                fused.fc.weight.val().inner().flatten(0, 1),
                composed.fc.weight.val().inner().flatten(0, 1),
            ),
            (fused.fc.bias.unwrap().val().inner(), composed.fc.bias.unwrap().val().inner()),
        ];
        for (a, b) in pairs {
            for (x, y) in flat(a).iter().zip(flat(b)) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
        let (sa, na) = fused_opt.state();
        let (sb, nb) = composed_opt.state();
        assert_eq!((na, sa.len()), (nb, sb.len()));
        for (name, a) in &sa {
            let (a, b) = (a.try_to_vec::<f32>().unwrap(), sb[name].try_to_vec::<f32>().unwrap());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{name}: {x} vs {y}");
            }
        }
    }
}
