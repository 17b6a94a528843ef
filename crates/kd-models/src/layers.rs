//! Building blocks shared by the architectures: norms with Hugging Face parameter names, HF-style
//! initialisation, the causal/padding attention mask, scaled dot-product attention and position
//! ids for left-padded batches.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor, TensorData, activation};

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::fused_norm::Norm;

/// Feed-forward activation (`activation_function` / `hidden_act`), read from `config.json` by
/// its `transformers` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `gelu`: the exact erf form `0.5 x (1 + erf(x/√2))`.
    #[serde(rename = "gelu")]
    Gelu,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
    /// `silu` / `swish`: `x · sigmoid(x)`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    /// Parses a `transformers` activation name.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedConfig`] naming `key` and the value.
    pub fn from_hf_name(key: &str, name: &str) -> Result<Self> {
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name);
        Self::deserialize(de)
            .map_err(|_| ModelError::UnsupportedConfig { key: key.into(), value: name.into() })
    }

    /// The canonical `transformers` name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::GeluTanh => "gelu_new",
            Self::Gelu => "gelu",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }
}

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

    /// Normalises over the last axis, in `f32` whatever the input's dtype (the result comes back
    /// in the input's dtype). // [..., d] -> [..., d]
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let (w, b) = (self.weight.val(), self.bias.val());
        // f32 flex: one fused pass each way (`fused_norm`).
        if let Some(y) = crate::fused_norm::try_fused(Norm::Layer, &x, &w, Some(&b), self.eps) {
            return y.cast(dtype);
        }
        let (var, mean) = x.clone().var_mean_bias(D - 1); // [..., 1] each
        let normed = x.sub(mean).div(var.add_scalar(self.eps).sqrt());
        let weight = self.weight.val().cast(FloatDType::F32).unsqueeze();
        let bias = self.bias.val().cast(FloatDType::F32).unsqueeze();
        normed.mul(weight).add(bias).cast(dtype)
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

    /// Normalises over the last axis, in `f32` whatever the input's dtype (as `transformers`
    /// does; the result comes back in the input's dtype). // [..., d] -> [..., d]
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let w = self.weight.val();
        // f32 flex: one fused pass each way (`fused_norm`).
        if let Some(y) = crate::fused_norm::try_fused(Norm::Rms, &x, &w, None, self.eps) {
            return y.cast(dtype);
        }
        let mean_square = x.clone().square().mean_dim(D - 1); // [..., 1]
        let normed = x.div(mean_square.add_scalar(self.eps).sqrt());
        normed.mul(self.weight.val().cast(FloatDType::F32).unsqueeze()).cast(dtype)
    }
}

/// Applies a feed-forward activation.
///
/// The tanh GELU and SiLU of `f32` flex tensors run as one fused pass forward and backward
/// (`fused_act`); everything else runs burn's activations.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    let fused = match act {
        Activation::GeluTanh => Some(crate::fused_act::Act::GeluTanh),
        Activation::Silu => Some(crate::fused_act::Act::Silu),
        Activation::Gelu | Activation::Relu => None,
    };
    if let Some(y) = fused.and_then(|f| crate::fused_act::try_fused(f, &x)) {
        return y;
    }
    match act {
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Relu => activation::relu(x),
        Activation::Silu => activation::silu(x),
    }
}

/// `x W + b` in the dtype of `x`: the parameters are cast to it when they are stored in another
/// one (f32 master weights under half-precision compute; the cast is differentiable, so their
/// gradients come back in `f32`). // [..., d_in] -> [..., d_out]
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dtype = float_dtype(&x);
    let weight = layer.weight.val().cast(dtype);
    let bias = layer.bias.as_ref().map(|b| b.val().cast(dtype));
    burn::tensor::module::linear(x, weight, bias)
}

/// The embedding rows of `ids`, cast to `dtype` (`None`: the table's own dtype).
/// // ids [b, s] -> [b, s, d]
pub fn embed(table: &Embedding, ids: Tensor<2, Int>, dtype: Option<FloatDType>) -> Tensor<3> {
    let rows = table.forward(ids);
    match dtype {
        Some(dtype) => rows.cast(dtype),
        None => rows,
    }
}

/// The float dtype of a tensor.
///
/// # Panics
/// When the tensor is not a float tensor (cannot happen for `Tensor<D>`).
pub fn float_dtype<const D: usize>(x: &Tensor<D>) -> FloatDType {
    match x.dtype() {
        DType::F64 => FloatDType::F64,
        DType::F32 => FloatDType::F32,
        DType::Flex32 => FloatDType::Flex32,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        other => panic!("a float tensor has a float dtype, got {other:?}"),
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

/// Scaled dot-product attention through burn's attention op: backends with a fused kernel (flex's
/// tiled online-softmax kernel for long sequences, cubecl's flash attention on GPUs) never form
/// the `[b, h, s, t]` scores; under autodiff burn runs its op-composed fallback.
///
/// A query row whose keys are all masked (a left-padding position) gets zeros there, where
/// [`scaled_dot_product_attention`] gives the uniform average; no real token reads such a row,
/// so logits at real tokens are the same.
/// // q [b, h, s, d], k/v [b, h, t, d], mask [b, 1, s, t] -> [b, h, s, d]
pub fn fused_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, s, _] = q.dims();
    let t = k.dims()[2];
    let mask = mask.map(|m| m.clone().expand([b, h, s, t]));
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
    attention(q, k, v, mask, None, options)
}

/// Scaled dot-product attention with an optional mask (`true` = masked out), op by op.
///
/// Masked scores are set to the most negative finite value of the scores' dtype (as
/// `transformers` does), so a fully masked query row (a padding position) attends uniformly
/// instead of producing NaN. The reference for [`fused_attention`].
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
        let most_negative = scores.dtype().finfo().map_or(f64::from(f32::MIN), |f| f.min);
        scores = scores.mask_fill(mask.clone().expand([b, h, s, t]), most_negative);
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

/// Rows from which [`tied_logits`] multiplies `h · Eᵀ` directly (see there).
pub const TIED_DIRECT_MIN_ROWS: usize = 64;

/// Logits of an output head tied to an embedding table `[vocab, hidden]`: `h · Eᵀ`.
///
/// For fewer than [`TIED_DIRECT_MIN_ROWS`] rows (decoding) it is computed as `(E · hᵀ)ᵀ`, which
/// keeps the large table in its stored layout (multiplying one row by a transposed view of it
/// was an order of magnitude slower on flex). For more rows (training, evaluation, prefill) it
/// is `h · Eᵀ` with the table read through a transposed view: the result comes out in its
/// `[rows, vocab]` layout, where `(E · hᵀ)ᵀ` would need a transposing copy of the whole logits
/// (`rows × vocab`, 206 MB at 1024 × 50257) to reshape it, and another in the backward pass
/// (measured in `docs/performance.md`, "Distillation step").
/// // h [b, s, hidden], embedding [vocab, hidden] -> [b, s, vocab]
pub fn tied_logits(h: Tensor<3>, embedding: Tensor<2>) -> Tensor<3> {
    let [b, s, hidden] = h.dims();
    let embedding = embedding.cast(float_dtype(&h));
    let vocab = embedding.dims()[0];
    let h = h.reshape([b * s, hidden]);
    if b * s >= TIED_DIRECT_MIN_ROWS {
        return h.matmul(embedding.transpose()).reshape([b, s, vocab]);
    }
    embedding
        .matmul(h.transpose()) // [vocab, b * s]
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

    /// Both orientations of the tied head (below and above `TIED_DIRECT_MIN_ROWS` rows) give
    /// `h · Eᵀ`: values and both gradients of `Σ w ⊙ logits` against plain loops.
    #[test]
    fn tied_logits_match_h_times_e_transposed_in_both_orientations() {
        let device = Device::flex().autodiff();
        let (vocab, hidden) = (29usize, 6usize);
        let e: Vec<f32> = (0..vocab * hidden).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
        for (b, s) in [(1usize, 3usize), (2, TIED_DIRECT_MIN_ROWS / 2 + 1)] {
            let rows = b * s;
            let h: Vec<f32> =
                (0..rows * hidden).map(|i| ((i * 13) % 11) as f32 / 5.0 - 1.0).collect();
            let w: Vec<f32> = (0..rows * vocab).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            let et = Tensor::<2>::from_data(TensorData::new(e.clone(), [vocab, hidden]), &device)
                .require_grad();
            let ht = Tensor::<3>::from_data(TensorData::new(h.clone(), [b, s, hidden]), &device)
                .require_grad();
            let wt = Tensor::<3>::from_data(TensorData::new(w.clone(), [b, s, vocab]), &device);
            let logits = tied_logits(ht.clone(), et.clone());
            let grads = logits.clone().mul(wt).sum().backward();
            let flat = |d: TensorData| d.convert::<f32>().try_to_vec::<f32>().unwrap();
            let (got, gh, ge) = (
                flat(logits.inner().into_data()),
                flat(ht.grad(&grads).unwrap().into_data()),
                flat(et.grad(&grads).unwrap().into_data()),
            );
            let close = |a: f32, b: f64| {
                assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}")
            };
            for r in 0..rows {
                for v in 0..vocab {
                    let dot: f64 =
                        (0..hidden).map(|k| (h[r * hidden + k] * e[v * hidden + k]) as f64).sum();
                    close(got[r * vocab + v], dot);
                }
                for k in 0..hidden {
                    let want: f64 =
                        (0..vocab).map(|v| (w[r * vocab + v] * e[v * hidden + k]) as f64).sum();
                    close(gh[r * hidden + k], want);
                }
            }
            for v in 0..vocab {
                for k in 0..hidden {
                    let want: f64 =
                        (0..rows).map(|r| (w[r * vocab + v] * h[r * hidden + k]) as f64).sum();
                    close(ge[v * hidden + k], want);
                }
            }
        }
    }

    #[test]
    fn activation_names_round_trip() {
        for act in [Activation::GeluTanh, Activation::Gelu, Activation::Relu, Activation::Silu] {
            assert_eq!(Activation::from_hf_name("k", act.hf_name()).unwrap(), act);
        }
        assert_eq!(Activation::from_hf_name("k", "swish").unwrap(), Activation::Silu);
        assert_eq!(Activation::from_hf_name("k", "gelu_fast").unwrap(), Activation::GeluTanh);
        let err = Activation::from_hf_name("hidden_act", "mish").unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedConfig { key, value }
                if key == "hidden_act" && value == "mish"),
            "{err}"
        );
    }

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

    /// `fused_attention` against the op-composed reference at every query row that sees a key,
    /// on the short (score matrix) and the long (flash, > 256K scores per head) flex paths, with
    /// causal + left-padding masks and with a KV-cache offset.
    #[test]
    fn fused_attention_matches_the_op_composed_reference() {
        use burn::tensor::Distribution;
        let d = Device::flex();
        for (b, h, s, past, hd) in [(2, 3, 7, 0, 8), (1, 2, 3, 4, 16), (1, 2, 600, 0, 32)] {
            let t = past + s;
            let q = Tensor::<4>::random([b, h, s, hd], Distribution::Normal(0.0, 1.0), &d);
            let k = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &d);
            let v = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &d);
            // Row 0 is left-padded by two tokens; the others are full.
            let mut pad = vec![1i64; b * t];
            pad[0] = 0;
            pad[1] = 0;
            let pad = Tensor::<2, Int>::from_data(TensorData::new(pad, [b, t]), &d);
            let mask = attention_mask_4d(Some(&pad), b, s, past, None, &d).unwrap();
            let scale = 1.0 / (hd as f64).sqrt();
            let fused = fused_attention(q.clone(), k.clone(), v.clone(), Some(&mask), scale);
            let reference = scaled_dot_product_attention(q, k, v, Some(&mask), scale);
            let fused = fused.into_data().try_into_vec_as::<f32>().unwrap();
            let reference = reference.into_data().try_into_vec_as::<f32>().unwrap();
            for bi in 0..b {
                for hi in 0..h {
                    for i in 0..s {
                        if bi == 0 && past + i < 2 {
                            continue; // a padding query: every key it may see is padding
                        }
                        let at = ((bi * h + hi) * s + i) * hd;
                        for j in at..at + hd {
                            let (x, y) = (fused[j], reference[j]);
                            assert!(
                                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                                "b{b} h{h} s{s} past{past}: row ({bi},{hi},{i}): {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// In bf16 the op-composed path masks with bf16's most negative value (f32::MIN rounds to
    /// −∞ there), so fully masked rows stay finite.
    #[test]
    fn masked_attention_stays_finite_in_half_precision() {
        let d = Device::flex();
        let pad = Tensor::<2, Int>::from_ints([[0, 0, 1, 1]], &d);
        let mask = attention_mask_4d(Some(&pad), 1, 4, 0, None, &d).unwrap();
        for dtype in [FloatDType::BF16, FloatDType::F16] {
            let x = Tensor::<4>::ones([1, 1, 4, 2], &d).cast(dtype);
            let out = scaled_dot_product_attention(x.clone(), x.clone(), x, Some(&mask), 0.5);
            let v = out.cast(FloatDType::F32).into_data().try_into_vec_as::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{dtype:?}: {v:?}");
        }
    }

    #[test]
    fn repeat_kv_maps_query_head_to_kv_head_over_n_rep() {
        let d = Device::flex();
        let x = Tensor::<1, Int>::arange(0..2, &d).float().reshape([1, 2, 1, 1]);
        let r = repeat_kv(x, 2).reshape([4]);
        assert_eq!(r.into_data().try_into_vec_as::<f32>().unwrap(), vec![0.0, 0.0, 1.0, 1.0]);
    }
}
