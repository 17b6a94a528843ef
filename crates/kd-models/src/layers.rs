//! Building blocks shared by the architectures: norms with Hugging Face parameter names, HF-style
//! initialisation, the causal/padding attention mask, scaled dot-product attention and position
//! ids for left-padded batches.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};

use crate::config::Activation;

/// Layer normalisation with HF parameter names (`weight`, `bias`).
///
/// ```text
/// y = (x − mean(x)) / √(var(x) + eps) · weight + bias     (biased variance, last axis)
/// ```
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale, `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Shift, `[d]`.
    pub bias: Param<Tensor<1>>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// A layer norm with `weight = 1`, `bias = 0` (the HF initialisation).
    pub fn init(d: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([d], device),
            bias: Initializer::Zeros.init([d], device),
            eps,
        }
    }

    /// Normalises over the last axis. // [..., d] -> [..., d]
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (var, mean) = x.clone().var_mean_bias(D - 1); // [..., 1] each
        let normed = x.sub(mean).div(var.add_scalar(self.eps).sqrt());
        normed.mul(self.weight.val().unsqueeze()).add(self.bias.val().unsqueeze())
    }
}

/// Root-mean-square normalisation with the HF parameter name (`weight`).
///
/// ```text
/// y = x / √(mean(x²) + eps) · weight      (last axis)
/// ```
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale, `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// An RMSNorm with `weight = 1` (the HF initialisation).
    pub fn init(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Initializer::Ones.init([d], device), eps }
    }

    /// Normalises over the last axis. // [..., d] -> [..., d]
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean_square = x.clone().square().mean_dim(D - 1); // [..., 1]
        let normed = x.div(mean_square.add_scalar(self.eps).sqrt());
        normed.mul(self.weight.val().unsqueeze())
    }
}

/// Applies a feed-forward activation.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Relu => activation::relu(x),
        Activation::Silu => activation::silu(x),
    }
}

/// A linear layer initialised as `transformers` does: weight `N(0, std)`, bias zero.
///
/// The burn weight is stored `[d_in, d_out]` (`y = x W + b`).
pub fn init_linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    Linear {
        weight: Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device),
        bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
    }
}

/// An embedding table initialised `N(0, std)`, `[n, d]`.
pub fn init_embedding(n: usize, d: usize, std: f64, device: &Device) -> Embedding {
    Embedding { weight: Initializer::Normal { mean: 0.0, std }.init([n, d], device) }
}

/// Position ids for a batch: `max(cumsum(mask) − 1, 0)` when a mask is given (so a left-padded
/// row gets the positions it would have unpadded), else `past .. past + seq` for every row.
///
/// With a mask covering `past + seq` keys, the last `seq` columns are returned.
/// // -> [batch, seq]
pub fn default_position_ids(
    attention_mask: Option<&Tensor<2, Int>>,
    batch: usize,
    seq: usize,
    past: usize,
    device: &Device,
) -> Tensor<2, Int> {
    match attention_mask {
        Some(mask) => {
            let [b, total] = mask.dims();
            let pos = mask.clone().cumsum(1).sub_scalar(1).clamp_min(0); // [batch, total]
            pos.slice([0..b, total - seq..total])
        }
        None => Tensor::<1, Int>::arange(past as i64..(past + seq) as i64, device)
            .reshape([1, seq])
            .expand([batch, seq]),
    }
}

/// The boolean attention mask `[batch, 1, seq, past + seq]`, `true` = masked out.
///
/// Query `i` sits at cache index `q = past + i` and may attend to key `j` only when `j ≤ q`
/// (causality, by cache index so padding does not shift it), `attention_mask[b, j] = 1`, and,
/// with a sliding `window`, `j > q − window` (the query and the `window − 1` keys before it, as
/// `transformers`' `sliding_window_overlay`). Returns `None` when nothing is masked (a single
/// new token, no padding mask, and no window or all keys inside it).
///
/// # Panics
/// When `attention_mask` is not `[batch, past + seq]`.
pub fn attention_mask_4d(
    attention_mask: Option<&Tensor<2, Int>>,
    batch: usize,
    seq: usize,
    past: usize,
    window: Option<usize>,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let total = past + seq;
    if let Some(mask) = attention_mask {
        assert_eq!(
            mask.dims(),
            [batch, total],
            "attention_mask must be [batch, past + seq] = [{batch}, {total}], got {:?}",
            mask.dims()
        );
    }
    let window = window.filter(|&w| w < total); // a window covering every key changes nothing
    if attention_mask.is_none() && seq == 1 && window.is_none() {
        return None;
    }
    let query = Tensor::<1, Int>::arange(past as i64..total as i64, device)
        .reshape([seq, 1])
        .expand([seq, total]);
    let key =
        Tensor::<1, Int>::arange(0..total as i64, device).reshape([1, total]).expand([seq, total]);
    let mut masked = key.clone().greater(query.clone()); // [seq, total]: future keys
    if let Some(w) = window {
        // keys at j ≤ q − w have slid out of the window
        masked = masked.bool_or(key.add_scalar(w as i64).lower_equal(query));
    }
    let masked = masked.reshape([1, 1, seq, total]).expand([batch, 1, seq, total]);
    Some(match attention_mask {
        Some(mask) => {
            let padding = mask.clone().equal_elem(0).reshape([batch, 1, 1, total]);
            masked.bool_or(padding.expand([batch, 1, seq, total]))
        }
        None => masked,
    })
}

/// Scaled dot-product attention with an optional mask (`true` = masked out).
///
/// Masked scores are set to the most negative `f32` (as `transformers` does), so a fully masked
/// query row (a padding position) attends uniformly instead of producing NaN.
/// // q [b, h, s, d], k/v [b, h, t, d], mask [b, 1, s, t] -> [b, h, s, d]
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, s, _] = q.dims();
    let t = k.dims()[2];
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [b, h, s, t]
    if let Some(mask) = mask {
        scores = scores.mask_fill(mask.clone().expand([b, h, s, t]), f32::MIN);
    }
    activation::softmax(scores, 3).matmul(v)
}

/// Repeats each key/value head `n_rep` times so grouped-query attention becomes plain
/// multi-head attention: query head `h` uses kv head `h / n_rep`.
/// // [b, kv_heads, t, d] -> [b, kv_heads * n_rep, t, d]
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, n_rep, t, d]).reshape([b, kv * n_rep, t, d])
}

/// Logits of an output head tied to an embedding table `[vocab, hidden]`: `h · Eᵀ`.
///
/// Computed as `(E · hᵀ)ᵀ`, which keeps the large table in its stored layout (multiplying by a
/// transposed view of it is an order of magnitude slower on CPU backends).
/// // h [b, s, hidden], embedding [vocab, hidden] -> [b, s, vocab]
pub fn tied_logits(h: Tensor<3>, embedding: Tensor<2>) -> Tensor<3> {
    let [b, s, hidden] = h.dims();
    let vocab = embedding.dims()[0];
    embedding
        .matmul(h.reshape([b * s, hidden]).transpose()) // [vocab, b * s]
        .transpose()
        .reshape([b, s, vocab])
}

/// Builds an `f32` tensor from a flat vector and a shape.
pub(crate) fn tensor_from_vec<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn norms_match_hand_computation() {
        let d = Device::flex();
        let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 6.0]], &d);
        let ln = LayerNorm::init(4, 1e-5, &d).forward(x.clone());
        // mean 3, biased var (4 + 1 + 0 + 9) / 4 = 3.5
        let s = (3.5f32 + 1e-5).sqrt();
        for (got, want) in vec2(ln).iter().zip([-2.0 / s, -1.0 / s, 0.0, 3.0 / s]) {
            assert!((got - want).abs() < 1e-5);
        }
        let rms = RmsNorm::init(4, 1e-5, &d).forward(x);
        let r = ((1.0f32 + 4.0 + 9.0 + 36.0) / 4.0 + 1e-5).sqrt();
        for (got, want) in vec2(rms).iter().zip([1.0 / r, 2.0 / r, 3.0 / r, 6.0 / r]) {
            assert!((got - want).abs() < 1e-5);
        }
    }

    #[test]
    fn mask_is_causal_and_hides_padding() {
        let d = Device::flex();
        let pad = Tensor::<2, Int>::from_ints([[1, 1, 1], [0, 1, 1]], &d);
        let m = attention_mask_4d(Some(&pad), 2, 3, 0, None, &d).unwrap();
        let got: Vec<bool> = m.into_data().try_into_vec_as::<bool>().unwrap();
        #[rustfmt::skip]
        let want = [
            false, true, true,  false, false, true,  false, false, false,
            true, true, true,   true, false, true,   true, false, false,
        ];
        assert_eq!(got, want);
        let pos = default_position_ids(Some(&pad), 2, 3, 0, &d);
        assert_eq!(pos.into_data().try_into_vec_as::<i64>().unwrap(), vec![0, 1, 2, 0, 0, 1]);
        // One new token after two cached ones: sees all three keys.
        let m = attention_mask_4d(None, 1, 1, 2, None, &d);
        assert!(m.is_none());
    }

    fn mask_rows(m: Tensor<4, Bool>) -> Vec<String> {
        let [b, _, s, t] = m.dims();
        let v = m.into_data().try_into_vec_as::<bool>().unwrap();
        (0..b * s)
            .map(|r| v[r * t..(r + 1) * t].iter().map(|&x| if x { '.' } else { 'x' }).collect())
            .collect()
    }

    #[test]
    fn sliding_window_keeps_the_query_and_the_window_minus_one_keys_before_it() {
        let d = Device::flex();
        // Window 2 over 5 tokens: each query sees itself and its predecessor.
        let m = attention_mask_4d(None, 1, 5, 0, Some(2), &d).unwrap();
        assert_eq!(mask_rows(m), ["x....", "xx...", ".xx..", "..xx.", "...xx"]);
        // Decoding: 2 new tokens after 3 cached, window 3; rows are cache indices 3 and 4.
        let m = attention_mask_4d(None, 1, 2, 3, Some(3), &d).unwrap();
        assert_eq!(mask_rows(m), [".xxx.", "..xxx"]);
        // One new token after 4 cached, window 2: a mask is needed even without padding.
        let m = attention_mask_4d(None, 1, 1, 4, Some(2), &d).unwrap();
        assert_eq!(mask_rows(m), ["...xx"]);
        // A window at least as long as the keys is plain causal masking.
        let m = attention_mask_4d(None, 1, 1, 3, Some(4), &d);
        assert!(m.is_none());
        let wide = attention_mask_4d(None, 1, 4, 0, Some(4), &d).unwrap();
        assert_eq!(mask_rows(wide), ["x...", "xx..", "xxx.", "xxxx"]);
        // Window and left padding together, by cache index (padding occupies window slots).
        let pad = Tensor::<2, Int>::from_ints([[0, 1, 1, 1]], &d);
        let m = attention_mask_4d(Some(&pad), 1, 4, 0, Some(2), &d).unwrap();
        assert_eq!(mask_rows(m), ["....", ".x..", ".xx.", "..xx"]);
    }

    #[test]
    fn repeat_kv_maps_query_head_to_kv_head_over_n_rep() {
        let d = Device::flex();
        let x = Tensor::<1, Int>::arange(0..2, &d).float().reshape([1, 2, 1, 1]);
        let r = repeat_kv(x, 2).reshape([4]);
        assert_eq!(r.into_data().try_into_vec_as::<f32>().unwrap(), vec![0.0, 0.0, 1.0, 1.0]);
    }
}
