//! GPT-2 (`GPT2LMHeadModel`), a port of the `transformers` implementation.
//!
//! ```text
//! h₀ = wte[ids] + wpe[positions]                          learned absolute positions
//! for each block:  h = h + c_proj(attn(ln_1(h)))          causal multi-head attention
//!                  h = h + mlp.c_proj(act(c_fc(ln_2(h))))  act = gelu_new (tanh approximation)
//! logits = ln_f(h) · wteᵀ                                  output head tied to the embedding
//! ```
//!
//! The HF `Conv1D` weights are stored `[in, out]`, which is already burn's `Linear` layout, so
//! they load without a transpose. Field names are the HF keys (`transformer.` prefix dropped).

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};

use crate::config::{Activation, Gpt2Config};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{
    LayerNorm, activate, attention_mask_4d, default_position_ids, embed, float_dtype,
    fused_attention, init_embedding, init_linear, linear, tied_logits,
};
use crate::load::{HfLinear, NamedTensor, Weights, export_linear};
use crate::model::ModelOutput;

/// Causal self-attention with a fused query/key/value projection (`attn`).
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Fused projection `[n_embd, 3 * n_embd]`, output split into q, k, v.
    pub c_attn: Linear,
    /// Output projection `[n_embd, n_embd]`.
    pub c_proj: Linear,
    /// Number of heads.
    pub n_head: usize,
    /// Multiplier of the attention scores (`1/√head_dim`, optionally `/(layer + 1)`).
    pub scale: f64,
}

impl Gpt2Attention {
    /// Attends over the cached and new positions. // [b, s, e] -> [b, s, e]
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let [b, s, e] = x.dims();
        let hd = e / self.n_head;
        let heads = |t: Tensor<3>| t.reshape([b, s, self.n_head, hd]).swap_dims(1, 2);
        let mut qkv = linear(&self.c_attn, x).chunk(3, 2); // 3 × [b, s, e]
        let v = heads(qkv.pop().expect("3 chunks")); // [b, h, s, hd]
        let k = heads(qkv.pop().expect("3 chunks"));
        let q = heads(qkv.pop().expect("3 chunks"));
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v), // [b, h, past + s, hd]
            None => (k, v),
        };
        let out = fused_attention(q, k, v, mask, self.scale); // [b, h, s, hd]
        linear(&self.c_proj, out.swap_dims(1, 2).reshape([b, s, e]))
    }
}

/// The feed-forward network (`mlp`): `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// Up projection `[n_embd, inner]`.
    pub c_fc: Linear,
    /// Down projection `[inner, n_embd]`.
    pub c_proj: Linear,
    /// The activation (`activation_function`).
    #[module(skip)]
    pub act: Activation,
}

impl Gpt2Mlp {
    /// // [b, s, e] -> [b, s, e]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(&self.c_proj, activate(self.act, linear(&self.c_fc, x)))
    }
}

/// One pre-norm transformer block (`h.{i}`).
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Self-attention.
    pub attn: Gpt2Attention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// Feed-forward network.
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    /// // [b, s, e] -> [b, s, e]
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), mask, cache, layer);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// GPT-2 with its language-model head.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `[vocab, n_embd]` (also the output head when tied).
    pub wte: Embedding,
    /// Learned position embedding `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// Final layer norm.
    pub ln_f: LayerNorm,
    /// Untied output head `[n_embd, vocab]`; `None` when tied to `wte` (every released GPT-2).
    pub lm_head: Option<Linear>,
    /// The config the model was built from.
    #[module(skip)]
    pub config: Gpt2Config,
    /// The dtype activations are computed in; `None`: the embedding table's dtype.
    #[module(skip)]
    pub compute_dtype: Option<FloatDType>,
}

impl Gpt2 {
    /// A freshly initialised model, as `transformers` initialises GPT-2: every weight
    /// `N(0, initializer_range)`, the residual output projections (`c_proj`) with the std divided by
    /// `√(2 · n_layer)`, biases zero, norms one.
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        config.validate()?;
        let (e, inner, std) = (config.n_embd, config.inner_dim(), config.initializer_range);
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        let h = (0..config.n_layer)
            .map(|layer| Gpt2Block {
                ln_1: LayerNorm::init(e, config.layer_norm_epsilon, device),
                attn: Gpt2Attention {
                    c_attn: init_linear(e, 3 * e, true, std, device),
                    c_proj: init_linear(e, e, true, proj_std, device),
                    n_head: config.n_head,
                    scale: attention_scale(config, layer),
                },
                ln_2: LayerNorm::init(e, config.layer_norm_epsilon, device),
                mlp: Gpt2Mlp {
                    c_fc: init_linear(e, inner, true, std, device),
                    c_proj: init_linear(inner, e, true, proj_std, device),
                    act: config.activation_function,
                },
            })
            .collect();
        Ok(Self {
            wte: init_embedding(config.vocab_size, e, std, device),
            wpe: init_embedding(config.n_positions, e, std, device),
            h,
            ln_f: LayerNorm::init(e, config.layer_norm_epsilon, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| init_linear(e, config.vocab_size, false, std, device)),
            config: config.clone(),
            compute_dtype: None,
        })
    }

    /// Builds the model from checkpoint tensors (keys in the `save_pretrained` layout; the loader
    /// maps the hub layout onto it).
    pub(crate) fn from_weights(config: &Gpt2Config, w: &mut Weights) -> Result<Self> {
        config.validate()?;
        let (e, inner) = (config.n_embd, config.inner_dim());
        let eps = config.layer_norm_epsilon;
        let mut h = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let p = format!("transformer.h.{layer}");
            h.push(Gpt2Block {
                ln_1: w.layer_norm(&format!("{p}.ln_1"), e, eps)?,
                attn: Gpt2Attention {
                    c_attn: w.linear(
                        &format!("{p}.attn.c_attn"),
                        e,
                        3 * e,
                        true,
                        HfLinear::Conv1D,
                    )?,
                    c_proj: w.linear(&format!("{p}.attn.c_proj"), e, e, true, HfLinear::Conv1D)?,
                    n_head: config.n_head,
                    scale: attention_scale(config, layer),
                },
                ln_2: w.layer_norm(&format!("{p}.ln_2"), e, eps)?,
                mlp: Gpt2Mlp {
                    c_fc: w.linear(&format!("{p}.mlp.c_fc"), e, inner, true, HfLinear::Conv1D)?,
                    c_proj: w.linear(
                        &format!("{p}.mlp.c_proj"),
                        inner,
                        e,
                        true,
                        HfLinear::Conv1D,
                    )?,
                    act: config.activation_function,
                },
            });
        }
        let lm_head = if config.tie_word_embeddings {
            w.skip("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", e, config.vocab_size, false, HfLinear::Linear)?)
        };
        Ok(Self {
            wte: w.embedding("transformer.wte", config.vocab_size, e)?,
            wpe: w.embedding("transformer.wpe", config.n_positions, e)?,
            h,
            ln_f: w.layer_norm("transformer.ln_f", e, eps)?,
            lm_head,
            config: config.clone(),
            compute_dtype: None,
        })
    }

    /// Every parameter under its `save_pretrained` key, in the HF storage layout.
    pub(crate) fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![
            NamedTensor::from_tensor("transformer.wte.weight", self.wte.weight.val()),
            NamedTensor::from_tensor("transformer.wpe.weight", self.wpe.weight.val()),
        ];
        for (i, block) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            out.extend(block.ln_1.named_tensors(&format!("{p}.ln_1")));
            out.extend(export_linear(
                &format!("{p}.attn.c_attn"),
                &block.attn.c_attn,
                HfLinear::Conv1D,
            ));
            out.extend(export_linear(
                &format!("{p}.attn.c_proj"),
                &block.attn.c_proj,
                HfLinear::Conv1D,
            ));
            out.extend(block.ln_2.named_tensors(&format!("{p}.ln_2")));
            out.extend(export_linear(&format!("{p}.mlp.c_fc"), &block.mlp.c_fc, HfLinear::Conv1D));
            out.extend(export_linear(
                &format!("{p}.mlp.c_proj"),
                &block.mlp.c_proj,
                HfLinear::Conv1D,
            ));
        }
        out.extend(self.ln_f.named_tensors("transformer.ln_f"));
        if let Some(head) = &self.lm_head {
            out.extend(export_linear("lm_head", head, HfLinear::Linear));
        }
        out
    }

    /// Logits (and optionally every hidden state) for a batch.
    ///
    /// - `input_ids` `[batch, seq]`: the new tokens (the whole sequence without a cache).
    /// - `attention_mask` `[batch, past + seq]`, `1` = real token, `0` = padding; `None` = no
    ///   padding.
    /// - `position_ids` `[batch, seq]`; `None` = `max(cumsum(mask) − 1, 0)` with a mask (so
    ///   left-padded rows match their unpadded logits), else `past .. past + seq`.
    /// - `cache`: appended to; `past` is its length before the call.
    ///
    /// Hidden states follow `transformers`: index 0 is `wte + wpe`, index `i` the output of
    /// block `i`, the last one after `ln_f`.
    ///
    /// # Panics
    /// When the mask or position shapes disagree with `input_ids`, or a position is
    /// `≥ n_positions`.
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
            None => tied_logits(h, self.wte.weight.val()),
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

        let mut h = embed(&self.wte, input_ids, self.compute_dtype); // [b, s, e]
        let h_dtype = float_dtype(&h);
        h = h + self.wpe.forward(positions).cast(h_dtype);
        let mut hidden = Vec::new();
        for (layer, block) in self.h.iter().enumerate() {
            if output_hidden_states {
                hidden.push(h.clone());
            }
            h = block.forward(h, mask.as_ref(), cache.as_deref_mut(), layer);
        }
        let h = self.ln_f.forward(h); // [b, s, e]
        if output_hidden_states {
            hidden.push(h.clone());
        }
        (h, hidden)
    }
}

fn attention_scale(config: &Gpt2Config, layer: usize) -> f64 {
    let mut scale = 1.0;
    if config.scale_attn_weights {
        scale /= (config.head_dim() as f64).sqrt();
    }
    if config.scale_attn_by_inverse_layer_idx {
        scale /= (layer + 1) as f64;
    }
    scale
}
