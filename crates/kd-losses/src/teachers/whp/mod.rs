//! Unlearning teachers from *Who's Harry Potter?* (WHP) and *Revisiting Who's Harry Potter*:
//! targets that keep a model's generic knowledge while removing what it knows about one target
//! (a book, a person), and the loss a student is trained on them with.
//!
//! | item | what it builds | computed |
//! |---|---|---|
//! | [`WhpGeneric`] | WHP generic prediction `base − α·ReLU(reinforced − base)`, its labels, soft or one-hot targets | burn tensors, `f32` |
//! | [`RevisitTeacher`] | the causal-intervention teacher (mean over K counterfactual names with the name moves) or the revisit paper's WHP baseline | host, `f64` |
//! | [`WhpLoss`] | `KL(t ‖ softmax(student))` per trained position, mean per sequence (official) or per token | burn tensors, `f32`, autodiff |
//!
//! Row `(b, l)` of every `[batch, len, vocab]` input is the prediction of the token at `l + 1`,
//! and every teacher input is already aligned to the original text's positions (aligning the
//! anchor-translated or counterfactual text to the original is tokenizer work, done before).
//! `docs/teachers/whp.md` gives both papers, the conventions and the recipe.
//!
//! # Example: the WHP generic teacher and its student loss
//! ```
//! use burn::tensor::{Bool, Device, Tensor};
//! use kd_losses::teachers::whp::{WhpGenericConfig, WhpLossConfig, WhpTarget};
//!
//! let device = Device::flex().autodiff();
//! // The baseline model on the anchor-translated text, the reinforced model on the original.
//! let base = Tensor::<3>::from_floats([[[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]]], &device);
//! let reinforced = Tensor::<3>::from_floats([[[4.0, 1.0, 0.0], [0.0, 1.0, 0.5]]], &device);
//! let teacher = WhpGenericConfig::new().with_alpha(5.0).with_target(WhpTarget::Soft).init()?;
//! let targets = teacher.teacher(base, reinforced)?.teacher_probs;
//!
//! let student = Tensor::<3>::zeros([1, 2, 3], &device).require_grad();
//! let mask = Tensor::<2, Bool>::from_bool([[true, true]], &device);
//! let out = WhpLossConfig::new().init()?.forward(student.clone(), targets, mask)?;
//! let grads = out.loss.backward();
//! assert!(student.grad(&grads).is_some());
//! # Ok::<(), kd_losses::KdError>(())
//! ```

mod generic;
mod inputs;
mod loss;
mod revisit;

pub use generic::{GenericPrediction, WhpGeneric, WhpGenericConfig, WhpTarget};
pub use inputs::{
    MajorityMove, NameFirstTokens, OriginalFirstToken, RevisitInputs, RevisitTargets,
};
pub use loss::{WhpLoss, WhpLossConfig, WhpLossOutput, WhpReduction};
pub use revisit::{RevisitMethod, RevisitTeacher, RevisitTeacherConfig};
