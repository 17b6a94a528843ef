//! Shared log-space math over rows of logits `[rows, vocab]`.
//!
//! Every loss composes these few functions, so numerical care lives in one place: softmaxes are
//! computed as log-softmax (max-shifted log-sum-exp), mixtures of distributions as a log-sum-exp of
//! log-probabilities, and probabilities are only formed as `exp(log p)` when they multiply a finite
//! log-ratio.
//!
//! Precision lives here too: every loss entry point passes its float inputs through [`to_f32`]
//! once, so all of this math runs and accumulates in `f32` whatever the inputs' dtype, and the
//! few tensors a loss creates itself (`f32_on`, `mask_f32`) are `f32` whatever the device's
//! default float dtype.

use burn::tensor::{
    Bool, DType, Device, FloatDType, Int, Tensor, TensorCreationOptions, activation,
};

/// The float dtype every loss computes, accumulates and returns in.
pub const LOSS_DTYPE: FloatDType = FloatDType::F32;

/// Casts a float tensor (`f32`, `f64`, `bf16` or `f16`) to [`LOSS_DTYPE`]; the identity on `f32`.
///
/// The one cast point of each loss route. Under autodiff the cast is differentiable and its
/// backward casts the gradient back, so the gradient w.r.t. a `bf16` input is the `f32` gradient
/// rounded to `bf16`.
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(LOSS_DTYPE)
}

/// Creation options for an `f32` tensor on `device` (not the device's default float dtype).
pub(crate) fn f32_on(device: &Device) -> TensorCreationOptions {
    (device, DType::F32).into()
}

/// A boolean mask as `f32` `1.0` / `0.0`.
pub(crate) fn mask_f32<const D: usize>(mask: Tensor<D, Bool>) -> Tensor<D> {
    mask.cast(LOSS_DTYPE)
}

/// Logits below this value are raised to it before any softmax.
///
/// A teacher logit of `-inf` (a padded vocabulary entry, or a `masked_fill` with the most negative
/// float) would otherwise turn `p · log p` into `0 · (-inf) = NaN`. At `-1e4` the probability is
/// still exactly `0` in `f32` and `f64` (relative to any realistic logit), but every log-probability
/// stays finite, so all divergences and gradients stay finite.
pub const LOGIT_FLOOR: f64 = -1.0e4;

/// Raises logits to [`LOGIT_FLOOR`] (see there) and divides by the temperature.
pub fn scaled_logits<const D: usize>(logits: Tensor<D>, temperature: f64) -> Tensor<D> {
    let floored = logits.clamp_min(LOGIT_FLOOR);
    if temperature == 1.0 { floored } else { floored.div_scalar(temperature) }
}

/// Row-wise `log softmax(x)`. Shape: `[rows, vocab] -> [rows, vocab]`.
pub fn log_softmax(x: Tensor<2>) -> Tensor<2> {
    activation::log_softmax(x, 1)
}

/// Row-wise `log Σ_v exp(x_v)` with the max shift. Shape: `[rows, vocab] -> [rows, 1]`.
pub fn logsumexp(x: Tensor<2>) -> Tensor<2> {
    let max = x.clone().detach().max_dim(1); // [rows, 1]
    let sum = x.sub(max.clone()).exp().sum_dim(1);
    sum.log().add(max)
}

/// Element-wise `log(w_a·exp(a) + w_b·exp(b))` for weights in `[0, 1]`.
///
/// A zero weight drops its term exactly. The shift by the element-wise maximum is detached: the
/// expression does not depend on it, so its gradient is exactly zero anyway.
pub fn log_mix(log_a: Tensor<2>, w_a: f64, log_b: Tensor<2>, w_b: f64) -> Tensor<2> {
    if w_a == 0.0 {
        return log_b.add_scalar(w_b.ln());
    }
    if w_b == 0.0 {
        return log_a.add_scalar(w_a.ln());
    }
    let a = log_a.add_scalar(w_a.ln());
    let b = log_b.add_scalar(w_b.ln());
    let max = a.clone().detach().max_pair(b.clone().detach());
    let sum = a.sub(max.clone()).exp().add(b.sub(max.clone()).exp());
    sum.log().add(max)
}

/// Row-wise `KL(a‖b) = Σ_v a_v (log a_v − log b_v)` from log-probabilities, shape `[rows]`.
pub fn kl_rows(log_a: Tensor<2>, log_b: Tensor<2>) -> Tensor<1> {
    let a = log_a.clone().exp();
    sum_rows(a.mul(log_a.sub(log_b)))
}

/// Row-wise cross-entropy `−Σ_v a_v log b_v` from log-probabilities, shape `[rows]`.
pub fn cross_entropy_rows(log_a: Tensor<2>, log_b: Tensor<2>) -> Tensor<1> {
    sum_rows(log_a.exp().mul(log_b)).neg()
}

/// Row sums as a rank-1 tensor. Shape: `[rows, vocab] -> [rows]`.
pub fn sum_rows(x: Tensor<2>) -> Tensor<1> {
    x.sum_dim(1).squeeze_dim(1)
}

/// Picks `x[i, index[i]]` in every row. Shape: `[rows, vocab], [rows] -> [rows]`.
pub fn gather_rows(x: Tensor<2>, index: Tensor<1, Int>) -> Tensor<1> {
    x.gather(1, index.unsqueeze_dim(1)).squeeze_dim(1)
}

/// One-hot rows as floats: `1` at `index[i]`, `0` elsewhere. // -> [rows, vocab]
pub fn one_hot_rows(index: Tensor<1, Int>, vocab: usize) -> Tensor<2> {
    index.one_hot::<2>(vocab).cast(LOSS_DTYPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol, "{x} vs {y}");
        }
    }

    #[test]
    fn logsumexp_is_stable_and_exact() {
        let d = Device::flex();
        let x = Tensor::<2>::from_floats([[1000.0, 1000.0], [-1000.0, -1000.0 + 2f32.ln()]], &d);
        let got = logsumexp(x).into_data().try_to_vec::<f32>().unwrap();
        close(&got, &[1000.0 + 2f64.ln(), -1000.0 + 3f64.ln()], 1e-3);
    }

    #[test]
    fn log_mix_matches_direct_formula_and_drops_zero_weights() {
        let d = Device::flex();
        let la = log_softmax(Tensor::<2>::from_floats([[0.1, 2.0, -1.0]], &d));
        let lb = log_softmax(Tensor::<2>::from_floats([[1.5, -0.5, 0.3]], &d));
        let a = la.clone().exp().into_data().try_to_vec::<f32>().unwrap();
        let b = lb.clone().exp().into_data().try_to_vec::<f32>().unwrap();
        let want: Vec<f64> =
            a.iter().zip(&b).map(|(x, y)| (0.3 * *x as f64 + 0.7 * *y as f64).ln()).collect();
        let got =
            log_mix(la.clone(), 0.3, lb.clone(), 0.7).into_data().try_to_vec::<f32>().unwrap();
        close(&got, &want, 1e-6);
        let only_b = log_mix(la, 0.0, lb.clone(), 1.0).into_data().try_to_vec::<f32>().unwrap();
        close(&only_b, &b.iter().map(|x| (*x as f64).ln()).collect::<Vec<_>>(), 1e-6);
    }

    #[test]
    fn floor_keeps_minus_infinity_finite() {
        let d = Device::flex();
        let t = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0, 1.0]], &d);
        let lp = log_softmax(scaled_logits(t, 0.5));
        let v = lp.clone().into_data().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
        let kl = kl_rows(lp.clone(), lp).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(kl, vec![0.0]);
    }
}
