//! [`LanguageModel`], what the loop needs of a student or a teacher, and vocabulary alignment.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

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
}

impl LanguageModel for kd_models::CausalLm {
    fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward(input_ids, None, None)
    }

    fn vocab_size(&self) -> usize {
        kd_models::CausalLm::vocab_size(self)
    }
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
