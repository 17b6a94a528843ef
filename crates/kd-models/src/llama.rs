//! LLaMA (`LlamaForCausalLM`), also serving Mistral and Qwen2 checkpoints; a port of the
//! `transformers` implementation.
//!
//! ```text
//! h₀ = embed_tokens[ids]                                        no absolute positions
//! for each layer:  h = h + o_proj(attn(rope(q), rope(k), v))     on input_layernorm(h)
//!                  h = h + down_proj(silu(gate_proj(x)) ⊙ up_proj(x)),  x = post_attention_layernorm(h)
//! logits = lm_head(norm(h))                                      lm_head tied to embed_tokens or not
//!
//! rope(x) = x · cos(p·ω) + rotate_half(x) · sin(p·ω),  rotate_half([x₁, x₂]) = [−x₂, x₁]
//! ω_i = θ^(−2i/d) for i < d/2, each used for dims i and i + d/2, optionally llama3/linear-scaled
//! ```
//!
//! Grouped-query attention: `num_key_value_heads` key/value heads, query head `h` reads kv head
//! `h / (num_attention_heads / num_key_value_heads)`. Qwen2 adds biases to q/k/v. Mistral and
//! Qwen2 may use sliding-window attention (`sliding_window`; Qwen2 on layers
//! `≥ max_window_layers`): a query at cache index `i` sees keys `j` with `i − window < j ≤ i`.
//! The KV cache keeps every key; the mask hides the ones outside the window.

use std::f64::consts::PI;

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};

use crate::config::{Activation, LlamaConfig, RopeScaling};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{
    RmsNorm, activate, attention_mask_4d, default_position_ids, embed, float_dtype,
    fused_attention, init_embedding, init_linear, linear, repeat_kv, tensor_from_vec, tied_logits,
};
use crate::load::{HfLinear, NamedTensor, Weights, export_linear};
use crate::model::ModelOutput;

/// Rotary position embedding: the inverse frequencies `ω` of one head.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    /// `ω_i`, `i < head_dim / 2`, after any scaling.
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// Frequencies for `config` (`rope_theta`, `head_dim`, `rope_scaling`).
    pub fn new(config: &LlamaConfig) -> Self {
        Self { inv_freq: inverse_frequencies(config) }
    }

    /// `cos(p·ω)` and `sin(p·ω)` with the half-split layout, ready to broadcast over heads.
    /// // positions [b, s] -> ([b, 1, s, head_dim], [b, 1, s, head_dim])
    pub fn cos_sin(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let half = self.inv_freq.len();
        let device = positions.device();
        let inv_freq = tensor_from_vec(self.inv_freq.clone(), [1, 1, half], &device);
        let freqs = positions.float().unsqueeze_dim::<3>(2).mul(inv_freq); // [b, s, d/2]
        let angles = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1); // [b, 1, s, d]
        (angles.clone().cos(), angles.sin())
    }
}

/// `x · cos + rotate_half(x) · sin`. // [b, h, s, d] -> [b, h, s, d]
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let dtype = float_dtype(&x);
    let (cos, sin) = (cos.clone().cast(dtype), sin.clone().cast(dtype));
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x.mul(cos).add(rotated.mul(sin))
}

/// The inverse RoPE frequencies `ω_i = θ^(−2i/d)`, with `rope_scaling` applied.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    let scaled: Vec<f64> = match config.rope_scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|w| w / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&w| {
                    let wavelen = 2.0 * PI / w;
                    if wavelen < high_freq_wavelen {
                        w // high frequency: kept
                    } else if wavelen > low_freq_wavelen {
                        w / factor // low frequency: interpolated
                    } else {
                        // in between: blend of the two
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * w / factor + smooth * w
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|w| w as f32).collect()
}

/// Grouped-query self-attention with RoPE (`self_attn`).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[hidden, heads * head_dim]`.
    pub q_proj: Linear,
    /// `[hidden, kv_heads * head_dim]`.
    pub k_proj: Linear,
    /// `[hidden, kv_heads * head_dim]`.
    pub v_proj: Linear,
    /// `[heads * head_dim, hidden]`.
    pub o_proj: Linear,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl LlamaAttention {
    /// // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let hd = self.head_dim;
        let q = linear(&self.q_proj, x.clone()).reshape([b, s, self.num_heads, hd]).swap_dims(1, 2);
        let k =
            linear(&self.k_proj, x.clone()).reshape([b, s, self.num_kv_heads, hd]).swap_dims(1, 2);
        let v = linear(&self.v_proj, x).reshape([b, s, self.num_kv_heads, hd]).swap_dims(1, 2);
        let (cos, sin) = rope;
        let q = apply_rope(q, cos, sin); // [b, heads, s, hd]
        let k = apply_rope(k, cos, sin); // [b, kv_heads, s, hd]
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v), // [b, kv_heads, past + s, hd]
            None => (k, v),
        };
        let n_rep = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(k, n_rep), repeat_kv(v, n_rep)); // [b, heads, past + s, hd]
        let scale = 1.0 / (hd as f64).sqrt();
        let out = fused_attention(q, k, v, mask, scale); // [b, heads, s, hd]
        linear(&self.o_proj, out.swap_dims(1, 2).reshape([b, s, self.num_heads * hd]))
    }
}

/// The SwiGLU feed-forward network (`mlp`).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[hidden, intermediate]`, through the activation.
    pub gate_proj: Linear,
    /// `[hidden, intermediate]`, linear branch.
    pub up_proj: Linear,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear,
    /// The activation of the gate (`hidden_act`, silu).
    #[module(skip)]
    pub act: Activation,
}

impl LlamaMlp {
    /// `down(act(gate(x)) ⊙ up(x))`. // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = activate(self.act, linear(&self.gate_proj, x.clone()));
        linear(&self.down_proj, gate.mul(linear(&self.up_proj, x)))
    }
}

/// One decoder layer (`model.layers.{i}`).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward network.
    pub mlp: LlamaMlp,
}

impl LlamaDecoderLayer {
    /// // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            rope,
            mask,
            cache,
            layer,
        );
        let x = x + attn;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// LLaMA / Mistral / Qwen2 with its language-model head.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab, hidden]` (`model.embed_tokens`).
    pub embed_tokens: Embedding,
    /// Decoder layers (`model.layers`).
    pub layers: Vec<LlamaDecoderLayer>,
    /// Final RMSNorm (`model.norm`).
    pub norm: RmsNorm,
    /// Output head `[hidden, vocab]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    /// RoPE frequencies.
    pub rotary_emb: RotaryEmbedding,
    /// The config the model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    /// The dtype activations are computed in; `None`: the embedding table's dtype.
    #[module(skip)]
    pub compute_dtype: Option<FloatDType>,
}

impl Llama {
    /// A freshly initialised model, as `transformers` initialises LLaMA: linear and embedding
    /// weights `N(0, initializer_range)`, biases zero, norms one.
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &LlamaConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let std = c.initializer_range;
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let layers = (0..c.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                input_layernorm: RmsNorm::init(hidden, c.rms_norm_eps, device),
                self_attn: LlamaAttention {
                    q_proj: init_linear(
                        hidden,
                        c.num_attention_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    k_proj: init_linear(
                        hidden,
                        c.num_key_value_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    v_proj: init_linear(
                        hidden,
                        c.num_key_value_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    o_proj: init_linear(c.num_attention_heads * hd, hidden, c.o_bias, std, device),
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::init(hidden, c.rms_norm_eps, device),
                mlp: LlamaMlp {
                    gate_proj: init_linear(hidden, c.intermediate_size, c.mlp_bias, std, device),
                    up_proj: init_linear(hidden, c.intermediate_size, c.mlp_bias, std, device),
                    down_proj: init_linear(c.intermediate_size, hidden, c.mlp_bias, std, device),
                    act: c.hidden_act,
                },
            })
            .collect();
        Ok(Self {
            embed_tokens: init_embedding(c.vocab_size, hidden, std, device),
            layers,
            norm: RmsNorm::init(hidden, c.rms_norm_eps, device),
            lm_head: (!c.tie_word_embeddings)
                .then(|| init_linear(hidden, c.vocab_size, false, std, device)),
            rotary_emb: RotaryEmbedding::new(c),
            config: c.clone(),
            compute_dtype: None,
        })
    }

    /// Builds the model from checkpoint tensors (`save_pretrained` layout).
    pub(crate) fn from_weights(config: &LlamaConfig, w: &mut Weights) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (hidden, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |w: &mut Weights, name: &str, d_in, d_out, bias| {
                w.linear(&format!("{p}.{name}"), d_in, d_out, bias, HfLinear::Linear)
            };
            w.skip(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            layers.push(LlamaDecoderLayer {
                input_layernorm: w.rms_norm(
                    &format!("{p}.input_layernorm"),
                    hidden,
                    c.rms_norm_eps,
                )?,
                self_attn: LlamaAttention {
                    q_proj: lin(w, "self_attn.q_proj", hidden, q_out, c.qkv_bias)?,
                    k_proj: lin(w, "self_attn.k_proj", hidden, kv_out, c.qkv_bias)?,
                    v_proj: lin(w, "self_attn.v_proj", hidden, kv_out, c.qkv_bias)?,
                    o_proj: lin(w, "self_attn.o_proj", q_out, hidden, c.o_bias)?,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: w.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    c.rms_norm_eps,
                )?,
                mlp: LlamaMlp {
                    gate_proj: lin(w, "mlp.gate_proj", hidden, inter, c.mlp_bias)?,
                    up_proj: lin(w, "mlp.up_proj", hidden, inter, c.mlp_bias)?,
                    down_proj: lin(w, "mlp.down_proj", inter, hidden, c.mlp_bias)?,
                    act: c.hidden_act,
                },
            });
        }
        let lm_head = if c.tie_word_embeddings {
            w.skip("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", hidden, c.vocab_size, false, HfLinear::Linear)?)
        };
        Ok(Self {
            embed_tokens: w.embedding("model.embed_tokens", c.vocab_size, hidden)?,
            layers,
            norm: w.rms_norm("model.norm", hidden, c.rms_norm_eps)?,
            lm_head,
            rotary_emb: RotaryEmbedding::new(c),
            config: c.clone(),
            compute_dtype: None,
        })
    }

    /// Every parameter under its `save_pretrained` key, in the HF storage layout.
    pub(crate) fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![NamedTensor::from_tensor(
            "model.embed_tokens.weight",
            self.embed_tokens.weight.val(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            out.extend(l.input_layernorm.named_tensors(&format!("{p}.input_layernorm")));
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                out.extend(export_linear(&format!("{p}.self_attn.{name}"), lin, HfLinear::Linear));
            }
            out.extend(
                l.post_attention_layernorm.named_tensors(&format!("{p}.post_attention_layernorm")),
            );
            for (name, lin) in [
                ("gate_proj", &l.mlp.gate_proj),
                ("up_proj", &l.mlp.up_proj),
                ("down_proj", &l.mlp.down_proj),
            ] {
                out.extend(export_linear(&format!("{p}.mlp.{name}"), lin, HfLinear::Linear));
            }
        }
        out.extend(self.norm.named_tensors("model.norm"));
        if let Some(head) = &self.lm_head {
            out.extend(export_linear("lm_head", head, HfLinear::Linear));
        }
        out
    }

    /// Logits (and optionally every hidden state) for a batch.
    ///
    /// Arguments as [`crate::Gpt2::forward_with`]: `input_ids` `[batch, seq]`, `attention_mask`
    /// `[batch, past + seq]` (`1` = token), `position_ids` `[batch, seq]` (default
    /// `max(cumsum(mask) − 1, 0)`, or `past..past + seq` without a mask), an optional cache.
    /// Hidden states: index 0 the embeddings, index `i` the output of layer `i`, the last one
    /// after `model.norm`.
    ///
    /// # Panics
    /// When the mask or position shapes disagree with `input_ids`.
    pub fn forward_with(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> ModelOutput {
        let (h, hidden) =
            self.trunk(input_ids, attention_mask, position_ids, cache, output_hidden_states);
        let logits = self.lm_head_forward(h); // [b, s, vocab]
        ModelOutput { logits, hidden_states: output_hidden_states.then_some(hidden) }
    }

    /// The output head: logits from final hidden states (after the final norm).
    /// // [b, s, hidden] -> [b, s, vocab]
    pub fn lm_head_forward(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => linear(head, h),
            None => tied_logits(h, self.embed_tokens.weight.val()),
        }
    }

    /// Runs the embedding and all blocks; returns the final (normed) hidden state and, when
    /// asked, every hidden state.
    pub(crate) fn trunk(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> (Tensor<3>, Vec<Tensor<3>>) {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let positions = position_ids
            .unwrap_or_else(|| default_position_ids(attention_mask.as_ref(), b, s, past, &device));
        assert_eq!(positions.dims(), [b, s], "position_ids must be [batch, seq] = [{b}, {s}]");
        let mask = attention_mask_4d(attention_mask.as_ref(), b, s, past, None, &device);
        let window = self.config.sliding_window;
        let windowed = (0..self.layers.len()).any(|i| self.config.layer_window(i).is_some());
        let window_mask = match windowed {
            true => attention_mask_4d(attention_mask.as_ref(), b, s, past, window, &device),
            false => None,
        };
        let (cos, sin) = self.rotary_emb.cos_sin(positions); // [b, 1, s, hd] each

        let mut h = embed(&self.embed_tokens, input_ids, self.compute_dtype); // [b, s, hidden]
        let mut hidden = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if output_hidden_states {
                hidden.push(h.clone());
            }
            let mask = match self.config.layer_window(i) {
                Some(_) => window_mask.as_ref(),
                None => mask.as_ref(),
            };
            h = layer.forward(h, (&cos, &sin), mask, cache.as_deref_mut(), i);
        }
        let h = self.norm.forward(h);
        if output_hidden_states {
            hidden.push(h.clone());
        }
        (h, hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let config = LlamaConfig {
            head_dim: 128,
            rope_theta: 500000.0,
            rope_scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
            ..LlamaConfig::default()
        };
        let scaled = inverse_frequencies(&config);
        let plain =
            inverse_frequencies(&LlamaConfig { rope_scaling: RopeScaling::Default, ..config });
        assert_eq!(scaled[0], plain[0]); // wavelength 2π < 2048: kept
        let last = plain.len() - 1; // wavelength ≫ 8192: divided by 8
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
        for (s, p) in scaled.iter().zip(&plain) {
            assert!(*s <= *p && *s >= p / 8.0 - 1e-12);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let d = Device::flex();
        let rope = RotaryEmbedding::new(&LlamaConfig { head_dim: 4, ..LlamaConfig::default() });
        let (cos, sin) = rope.cos_sin(Tensor::<2, Int>::zeros([1, 1], &d));
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &d).reshape([1, 1, 1, 4]);
        let y = apply_rope(x.clone(), &cos, &sin);
        assert_eq!(y.into_data().try_into_vec_as::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    fn ints(values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::<1, Int>::from_ints(values, device).reshape([1, values.len()])
    }

    fn logits(model: &Llama, ids: &[i64], positions: Option<&[i64]>, d: &Device) -> Vec<f32> {
        let positions = positions.map(|p| ints(p, d));
        let out = model.forward_with(ints(ids, d), None, positions, None, false);
        out.logits.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn windowed_config(layers: usize, window: Option<usize>) -> LlamaConfig {
        LlamaConfig {
            model_type: "mistral".into(),
            vocab_size: 24,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            sliding_window: window,
            initializer_range: 0.5,
            ..LlamaConfig::default()
        }
    }

    #[test]
    fn window_two_equals_running_each_pair_alone() {
        // One layer with window 2: position i sees tokens i − 1 and i only, so its logits equal
        // those of the two-token input [t(i−1), t(i)] at positions [i − 1, i].
        let d = Device::flex();
        let ids = [3, 17, 5, 9, 22, 1, 12];
        let model = Llama::init(&windowed_config(1, Some(2)), &d).unwrap();
        let vocab = 24;
        let full = logits(&model, &ids, None, &d);
        for i in 1..ids.len() {
            let pos = [i as i64 - 1, i as i64];
            let pair = logits(&model, &ids[i - 1..=i], Some(&pos), &d);
            let diff = max_diff(&full[i * vocab..(i + 1) * vocab], &pair[vocab..]);
            assert!(diff < 1e-5, "position {i}: {diff}");
        }
        // And the window matters: full attention gives different logits from position 2 on.
        let mut unwindowed = Llama::init(&windowed_config(1, None), &d).unwrap();
        unwindowed.layers = model.layers.clone();
        unwindowed.embed_tokens = model.embed_tokens.clone();
        unwindowed.lm_head = model.lm_head.clone();
        let plain = logits(&unwindowed, &ids, None, &d);
        assert!(max_diff(&full[..2 * vocab], &plain[..2 * vocab]) < 1e-6);
        assert!(max_diff(&full[2 * vocab..], &plain[2 * vocab..]) > 1e-2);
    }

    #[test]
    fn windowed_cache_decoding_matches_the_full_forward() {
        // Two layers, window 3, Qwen2-style (only layer 1 windowed): the prompt then one token
        // at a time through the KV cache gives the logits of the whole sequence at once.
        let d = Device::flex();
        let config = LlamaConfig {
            model_type: "qwen2".into(),
            max_window_layers: 1,
            qkv_bias: true,
            ..windowed_config(2, Some(3))
        };
        let model = Llama::init(&config, &d).unwrap();
        let ids = [3, 17, 5, 9, 22, 1, 12, 7];
        let vocab = 24;
        let full = logits(&model, &ids, None, &d);
        let mut cache = KvCache::new(2);
        let prompt = model.forward_with(ints(&ids[..2], &d), None, None, Some(&mut cache), false);
        let prompt = prompt.logits.into_data().try_into_vec_as::<f32>().unwrap();
        assert!(max_diff(&full[..2 * vocab], &prompt) < 1e-5);
        for i in 2..ids.len() {
            let step =
                model.forward_with(ints(&ids[i..=i], &d), None, None, Some(&mut cache), false);
            let step = step.logits.into_data().try_into_vec_as::<f32>().unwrap();
            let diff = max_diff(&full[i * vocab..(i + 1) * vocab], &step);
            assert!(diff < 1e-5, "step {i}: {diff}");
        }
        // Layer 0 attends fully: windowing every layer changes the logits.
        let mut all = Llama::init(&LlamaConfig { max_window_layers: 0, ..config }, &d).unwrap();
        all.layers = model.layers.clone();
        all.embed_tokens = model.embed_tokens.clone();
        all.lm_head = model.lm_head.clone();
        let windowed_everywhere = logits(&all, &ids, None, &d);
        assert!(max_diff(&full[4 * vocab..], &windowed_everywhere[4 * vocab..]) > 1e-2);
    }
}
