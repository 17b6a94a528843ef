//! [`LanguageModel`], what the loop needs of a student or a teacher, and vocabulary alignment.

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Int, Tensor};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rollout::{
    CacheDecoder, IncrementalDecoder, RecomputeDecoder, SamplingConfig, SpecialTokens, decode,
};

/// A causal language model the loop can train or distil from.
///
/// Implemented for [`kd_models::CausalLm`] (GPT-2, LLaMA, Mistral, Qwen2); implement it for your
/// own burn [`Module`] to train it with kd-train. The student lives on an autodiff device
/// (`Device::flex().autodiff()`), the teacher on a plain one (`Device::flex()`): the same type
/// serves both.
///
/// # Example: your own model
/// ```
/// use burn::module::Module;
/// use burn::nn::{Embedding, EmbeddingConfig};
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_train::LanguageModel;
///
/// /// A bigram model: the logits of the next token are a row of a table.
/// #[derive(Module, Debug)]
/// struct Bigram {
///     table: Embedding,
/// }
///
/// impl LanguageModel for Bigram {
///     fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
///         self.table.forward(input_ids) // [batch, seq, vocab]
///     }
///     fn vocab_size(&self) -> usize {
///         self.table.weight.dims()[0]
///     }
/// }
///
/// let device = Device::flex();
/// let model = Bigram { table: EmbeddingConfig::new(10, 10).init(&device) };
/// let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
/// assert_eq!(model.logits(ids).dims(), [1, 3, 10]);
/// ```
pub trait LanguageModel: Module {
    /// Next-token logits at every position. Shape: `[batch, seq]` → `[batch, seq, vocab]`.
    fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3>;

    /// Size of the output vocabulary (last dimension of [`logits`](Self::logits)).
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model can take (its position table or RoPE range), when it has
    /// a limit; [`Trainer::fit`](crate::Trainer::fit) refuses longer blocks with
    /// [`TrainError::SequenceTooLong`]. Default: no limit.
    fn max_positions(&self) -> Option<usize> {
        None
    }

    /// Greedy continuation of every prompt: at most `max_new_tokens` tokens each, a row stopping
    /// after it emits one of `eos_ids` (kept in its output). Used by the ROUGE-L evaluation.
    ///
    /// The default is [`greedy_by_recompute`]: one prompt at a time, the logits of the whole
    /// sequence at every step. [`kd_models::CausalLm`] overrides it with its batched KV-cache
    /// decoder.
    ///
    /// # Errors
    /// When the model rejects a prompt (empty, an id out of the vocabulary, too long).
    fn generate_greedy(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        eos_ids: &[u32],
        device: &Device,
    ) -> Result<Vec<Vec<u32>>> {
        greedy_by_recompute(self, prompts, max_new_tokens, eos_ids, device)
    }

    /// The final hidden states and the output head, for losses that apply the head chunk by
    /// chunk ([`kd_losses::ChunkedHeadLoss`]): `(hidden [batch, seq, hidden], weight
    /// [vocab, hidden], bias [vocab])` with `logits = hidden · weightᵀ (+ bias)`. `None` (the
    /// default) when the model does not expose them.
    fn hidden_and_head(&self, _input_ids: Tensor<2, Int>) -> Option<HiddenAndHead> {
        None
    }

    /// Every layer's hidden states and the logits from ONE forward, for feature (hidden-state)
    /// distillation ([`crate::methods::feature`]). `None` (the default) when the model does not
    /// expose them. See [`HiddenStates`] for which index is which.
    fn hidden_states(&self, _input_ids: Tensor<2, Int>) -> Option<HiddenStates> {
        None
    }

    /// The model computing its activations in `dtype` over parameters kept in their own dtype
    /// (`f32` master weights under bf16/f16 compute), or `None` (the default) when the model
    /// cannot. [`kd_models::CausalLm`] implements it; the trainer asks for it when
    /// `TrainConfig::dtype` is bf16 or f16 and errors when it gets `None`.
    fn computing_in(self, _dtype: FloatDType) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// An incremental decoder for sampling rollouts ([`crate::rollout::sample`]).
    ///
    /// The default is [`RecomputeDecoder`]: each row's whole sequence at every step.
    /// [`kd_models::CausalLm`] overrides it with its KV cache ([`CacheDecoder`]).
    fn decoder(&self) -> Box<dyn IncrementalDecoder + '_>
    where
        Self: Sized,
    {
        Box::new(RecomputeDecoder::new(self))
    }
}

impl LanguageModel for kd_models::CausalLm {
    /// The logits in `f32` whatever the compute dtype (the cast is differentiable).
    fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward(input_ids, None, None).cast(FloatDType::F32)
    }

    fn computing_in(self, dtype: FloatDType) -> Option<Self> {
        Some(self.with_compute_dtype(Some(dtype)))
    }

    fn vocab_size(&self) -> usize {
        kd_models::CausalLm::vocab_size(self)
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config().max_position_embeddings())
    }

    fn generate_greedy(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        eos_ids: &[u32],
        device: &Device,
    ) -> Result<Vec<Vec<u32>>> {
        if prompts.is_empty() || max_new_tokens == 0 {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        let config = kd_models::GenerationConfig {
            max_new_tokens,
            sampling: kd_models::Sampling::Greedy,
            eos_token_ids: eos_ids.to_vec(),
            // Left padding is masked out, so any id in the vocabulary serves.
            pad_token_id: 0,
            seed: 0,
            output_step_logits: false,
        };
        Ok(kd_models::generate(self, prompts, &config, device, |_, _| {})?.new_tokens)
    }

    fn decoder(&self) -> Box<dyn IncrementalDecoder + '_> {
        Box::new(CacheDecoder::new(self))
    }

    /// The `num_hidden_layers + 1` states of `forward_with(.., output_hidden_states = true)`
    /// (Hugging Face's `hidden_states`): see [`HiddenStates`].
    fn hidden_states(&self, input_ids: Tensor<2, Int>) -> Option<HiddenStates> {
        let out = self.forward_with(input_ids, None, None, None, true);
        Some(HiddenStates {
            logits: out.logits.cast(FloatDType::F32),
            hidden: out.hidden_states.unwrap_or_default(),
        })
    }

    fn hidden_and_head(&self, input_ids: Tensor<2, Int>) -> Option<HiddenAndHead> {
        let hidden = self.last_hidden_state(input_ids, None, None);
        let dtype = kd_models::layers::float_dtype(&hidden);
        // The head in the compute dtype: chunk matmuls in half precision, f32 master weights.
        let (weight, bias) = self.output_head();
        let (weight, bias) = (weight.cast(dtype), bias.map(|b| b.cast(dtype)));
        Some(HiddenAndHead { hidden, weight, bias })
    }
}

/// The device `model`'s parameters live on (`None` for a model without parameters).
pub fn model_device<M: Module>(model: &M) -> Option<Device> {
    model.devices().into_iter().next()
}

/// `model`'s logits of `input_ids` computed on the model's own device and returned on the device
/// of `input_ids` (a teacher on another GPU, or on the CPU, than the student).
/// Shapes: `[batch, seq]` → `[batch, seq, vocab]`.
pub fn logits_across<M: LanguageModel>(model: &M, input_ids: Tensor<2, Int>) -> Tensor<3> {
    let here = input_ids.device();
    match model_device(model) {
        Some(there) if there != here => model.logits(input_ids.to_device(&there)).to_device(&here),
        _ => model.logits(input_ids),
    }
}

/// `model`'s [`LanguageModel::hidden_states`] computed on the model's own device and returned on
/// the device of `input_ids` (as [`logits_across`]).
pub fn hidden_states_across<M: LanguageModel>(
    model: &M,
    input_ids: Tensor<2, Int>,
) -> Option<HiddenStates> {
    let here = input_ids.device();
    match model_device(model) {
        Some(there) if there != here => {
            let out = model.hidden_states(input_ids.to_device(&there))?;
            Some(HiddenStates {
                logits: out.logits.to_device(&here),
                hidden: out.hidden.into_iter().map(|h| h.to_device(&here)).collect(),
            })
        }
        _ => model.hidden_states(input_ids),
    }
}

/// Every layer's hidden states and the logits of one forward ([`LanguageModel::hidden_states`]).
///
/// `hidden` holds `num_layers + 1` tensors `[batch, seq, hidden]`, Hugging Face's
/// `output_hidden_states` convention:
///
/// | index | what |
/// |---|---|
/// | `0` | the embedding output (token + position embeddings, before block 0) |
/// | `i` (`1 ≤ i < L`) | the residual stream after block `i − 1` (i.e. the input of block `i`) |
/// | `L` | the output of the last block **with the final norm applied** |
///
/// They are in the model's compute dtype; the logits in `f32`.
#[derive(Debug, Clone)]
pub struct HiddenStates {
    /// Next-token logits. Shape: `[batch, seq, vocab]`.
    pub logits: Tensor<3>,
    /// `num_layers + 1` hidden states, each `[batch, seq, hidden]` (see the type docs).
    pub hidden: Vec<Tensor<3>>,
}

/// Final hidden states and output head of [`LanguageModel::hidden_and_head`].
#[derive(Debug, Clone)]
pub struct HiddenAndHead {
    /// Final (normed) hidden states. Shape: `[batch, seq, hidden]`.
    pub hidden: Tensor<3>,
    /// Output head (or tied embedding table), in the dtype of `hidden`. Shape: `[vocab, hidden]`.
    pub weight: Tensor<2>,
    /// Output bias, if any. Shape: `[vocab]`.
    pub bias: Option<Tensor<1>>,
}

/// Greedy decoding through [`LanguageModel::logits`] alone, for any model: each row's whole
/// sequence is recomputed at every step ([`RecomputeDecoder`]: no cache, no padding inside the
/// model), in the decoding loop of [`crate::rollout::sample`]; the same token choice as
/// [`kd_models::generate`] (the first maximum on ties).
///
/// # Errors
/// [`TrainError::InvalidConfig`] for an empty prompt or an id outside the vocabulary.
pub fn greedy_by_recompute<M: LanguageModel>(
    model: &M,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos_ids: &[u32],
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    // Greedy; `max_new_tokens = 0` becomes zero-length caps (the prompts are still checked).
    let config = SamplingConfig {
        temperature: 0.0,
        max_new_tokens: max_new_tokens.max(1),
        ..SamplingConfig::default()
    };
    let caps = vec![max_new_tokens; prompts.len()];
    let tokens = SpecialTokens { eos_ids: eos_ids.to_vec(), pad_id: 0 };
    let decoder = Box::new(RecomputeDecoder::new(model));
    let vocab = model.vocab_size();
    let mut rng = Rng::new(0); // unused by greedy choice
    let out = decode(decoder, None, vocab, prompts, &caps, &config, &tokens, &mut rng, device)?;
    Ok(out.responses)
}

/// What to do when student and teacher vocabularies differ in size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabAlignment {
    /// Sizes must be equal, else [`TrainError::VocabMismatch`].
    #[default]
    Strict,
    /// Both logits are cut to the first `min(student, teacher)` ids. Right when the larger
    /// vocabulary is the smaller one plus padding rows (e.g. Qwen2's 152064 vs 151936 tokenizer
    /// ids): the padded ids are never targets, and both distributions are renormalised over the
    /// shared ids.
    SliceToShared,
}

/// Brings student and teacher logits to one vocabulary according to `alignment`.
///
/// Shapes: `[batch, seq, vocab_s]`, `[batch, seq, vocab_t]` → both `[batch, seq, vocab]`.
///
/// # Errors
/// [`TrainError::VocabMismatch`] when the sizes differ under [`VocabAlignment::Strict`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_train::{VocabAlignment, align_vocab};
///
/// let device = Device::flex();
/// let student = Tensor::<3>::zeros([1, 2, 6], &device);
/// let teacher = Tensor::<3>::zeros([1, 2, 8], &device); // 2 padding ids
/// assert!(align_vocab(student.clone(), teacher.clone(), VocabAlignment::Strict).is_err());
/// let (s, t) = align_vocab(student, teacher, VocabAlignment::SliceToShared)?;
/// assert_eq!((s.dims(), t.dims()), ([1, 2, 6], [1, 2, 6]));
/// # Ok::<(), kd_train::TrainError>(())
/// ```
pub fn align_vocab(
    student: Tensor<3>,
    teacher: Tensor<3>,
    alignment: VocabAlignment,
) -> Result<(Tensor<3>, Tensor<3>)> {
    let [b, s, vs] = student.dims();
    let [_, _, vt] = teacher.dims();
    if vs == vt {
        return Ok((student, teacher));
    }
    match alignment {
        VocabAlignment::Strict => Err(TrainError::VocabMismatch { student: vs, teacher: vt }),
        VocabAlignment::SliceToShared => {
            let v = vs.min(vt);
            Ok((student.slice([0..b, 0..s, 0..v]), teacher.slice([0..b, 0..s, 0..v])))
        }
    }
}
