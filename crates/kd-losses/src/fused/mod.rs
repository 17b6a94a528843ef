//! Fused CPU path: one forward+backward kernel per loss family, registered as a burn autodiff op.
//!
//! The driver tries the fused path first; the op-composed path runs instead unless
//! the loss has a fused kernel ([`crate::Divergence::fused_kind`]), both tensors are on the flex
//! backend (with or without autodiff), the vocabularies match, and the calling thread has
//! not forced the composed path with [`with_path`]. The kernels read `f32` rows: the callers cast
//! inputs of any other float dtype to `f32` before routing (one autodiff cast, whose backward
//! turns the kernel's `f32` gradient back into the input's dtype), so `bf16`, `f16` and `f64`
//! logits take the fused path too. Results are the same as the composed path
//! (both are checked against the golden files and each other).
//!
//! When the student is tracked, the gradient is computed in the forward pass, already multiplied
//! by the upstream gradient the driver's reduction will send (`1/n_valid` for a mean, times the
//! soft weight of a hard-label mix), and kept as the op's state; the backward hands it over as is
//! when the upstream matches, and rescales rows in place otherwise. A step thus allocates one
//! `rows × vocab` buffer, taken from a small pool (`release_buffers` empties it) so that it is already
//! mapped: the buffer returns to the pool when burn drops the gradient. An untracked student
//! (teacher-only or evaluation) runs a loss-only kernel without any gradient buffer.
//!
//! Fused kinds: forward KL (also Hinton KD and f-DISTILL `kl`), reverse KL (f-DISTILL `rkl`),
//! generalized JSD (also `js` and f-DISTILL `js`), skew forward/reverse KL, TVD (also f-DISTILL
//! `tvd`) and TAID at a given `t`, each with or without the hard-label cross-entropy mix
//! ([`crate::HardLabelMix`], Hinton's `α`). [`crate::TopKKl`] (sparse top-k teacher, all three
//! conventions) routes the same way to its own kernel ([`topk`]), through the same autodiff op
//! and buffer pool. The kernels use AVX-512 or AVX2+FMA when the CPU has them (detected at run
//! time; `KD_FUSED_ISA` or [`simd::set_isa`] can ask for a narrower one) and a portable build
//! otherwise; every variant the machine has is tested on it.
//!
//! Layout: [`simd`] (vector lanes, `exp`/`ln`), `passes` (the streaming passes over a row that
//! every kernel is made of), `dispatch` (the one row dispatch: rayon over rows, instruction set
//! per call), [`kernels`] (the dense kernels, one file per loss family plus the hard-label mix),
//! [`topk`] (the sparse top-k kernel) and `pool` (the gradient buffers).

mod dispatch;
pub mod kernels;
mod passes;
#[cfg(feature = "flex")]
mod pool;
pub mod simd;
pub mod topk;

#[cfg(feature = "flex")]
pub use pool::{MAX_BUFFERS, pooled_bytes, release_buffers};

use std::cell::Cell;

pub use kernels::FusedKind;

/// Which implementation a loss call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    /// The fused kernel when one applies, else the op-composed path (the default).
    #[default]
    Auto,
    /// Always the op-composed reference path (tests and benchmarks compare the two).
    Composed,
}

thread_local! {
    static PATH: Cell<Path> = const { Cell::new(Path::Auto) };
    static FUSED_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// How many loss calls on the current thread have run a fused kernel (to check the routing).
pub fn fused_calls() -> u64 {
    FUSED_CALLS.with(Cell::get)
}

/// Runs `f` with the loss path of the current thread set to `path`, restoring it afterwards.
///
/// # Example
/// ```
/// use kd_losses::fused::{Path, with_path};
/// let composed = with_path(Path::Composed, || 1 + 1);
/// assert_eq!(composed, 2);
/// ```
pub fn with_path<R>(path: Path, f: impl FnOnce() -> R) -> R {
    let old = PATH.with(|p| p.replace(path));
    struct Restore(Path);
    impl Drop for Restore {
        fn drop(&mut self) {
            PATH.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(old);
    f()
}

/// The path the current thread uses.
pub fn current_path() -> Path {
    PATH.with(Cell::get)
}

/// Per-row soft terms from a fused kernel, already scaled (see the module docs).
#[derive(Debug)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) struct FusedTerms {
    /// Per-row loss, 0 on ignored rows; differentiable. Shape `[rows]`. Includes the
    /// hard-label term when the call asked for one (then `extras` has `soft_term` and
    /// `hard_term`).
    pub values: burn::tensor::Tensor<1>,
    /// Diagnostics, as the composed path names them.
    pub extras: Vec<crate::types::Extra>,
}

/// Arguments of one fused call.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) struct FusedCall<'a> {
    pub kind: FusedKind,
    pub temperature: f64,
    pub scale: f64,
    pub student: &'a burn::tensor::Tensor<2>,
    pub teacher: &'a burn::tensor::Tensor<2>,
    pub valid: &'a burn::tensor::Tensor<1, burn::tensor::Bool>,
    /// Labels (ignored rows already replaced by a valid id), when the loss has them.
    pub labels: Option<&'a burn::tensor::Tensor<1, burn::tensor::Int>>,
    /// Weight of the hard-label cross-entropy mixed in, if any.
    pub hard_weight: Option<f64>,
    /// Upstream gradient each valid row will receive from the driver's reduction.
    pub expected_upstream: ExpectedUpstream,
}

/// How the driver will reduce the per-row values, to predict their upstream gradient.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) struct ExpectedUpstream {
    /// `true` for a mean over valid rows.
    pub mean: bool,
}

/// Arguments of one fused [`crate::TopKKl`] call (ids already checked on the host).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) struct TopKCall<'a> {
    pub spec: topk::TopKSpec,
    pub student: &'a burn::tensor::Tensor<2>,
    /// Teacher ids, `rows × k`, in `[0, vocab)`, distinct on valid rows.
    pub ids: &'a [usize],
    pub logprobs: &'a burn::tensor::Tensor<2>,
    pub valid: &'a [bool],
    pub expected_upstream: ExpectedUpstream,
}

/// The fused soft terms, or `None` when the composed path must run.
#[cfg(not(feature = "flex"))]
pub(crate) fn soft_terms(_call: FusedCall<'_>) -> Option<FusedTerms> {
    None
}

/// The fused top-k values, or `None` when the composed path must run.
#[cfg(not(feature = "flex"))]
pub(crate) fn topk_terms(_call: TopKCall<'_>) -> Option<FusedTerms> {
    None
}

#[cfg(feature = "flex")]
pub(crate) use flex::{soft_terms, topk_terms};

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{DispatchKindConversion, Flex};
    use burn::tensor::DispatchTensor;
    use burn::tensor::{DType, Int, Tensor, TensorData};

    use super::kernels::{RowBatch, RowOut, RowSpec, run_rows};
    use super::topk::{TopKBatch, TopKRowOut, run_topk_rows};
    use super::{FusedCall, FusedTerms, Path, TopKCall, current_path};
    use crate::logspace::f32_on;
    use crate::types::{Extra, HARD_LABEL_EXTRAS};

    /// The gradient computed in the forward, and the upstream it assumed per row.
    #[derive(Debug, Clone)]
    struct GradState {
        grad: FlexTensor,
        assumed: Vec<f32>,
    }

    #[derive(Debug)]
    struct FusedBackward;

    impl Backward<Flex, 1> for FusedBackward {
        type State = GradState;

        fn backward(self, ops: Ops<GradState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let GradState { grad, assumed } = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |upstream: FlexTensor| {
                rescale(grad, &assumed, &upstream)
            });
        }
    }

    /// Hands the stored gradient over, rescaling rows whose upstream differs from the assumed one.
    fn rescale(mut grad: FlexTensor, assumed: &[f32], upstream: &FlexTensor) -> FlexTensor {
        let up = upstream.to_contiguous();
        let up = up.as_slice::<f32>().expect("f32 upstream gradient");
        let same =
            up.iter().zip(assumed).all(|(u, a)| *a == 0.0 || (u - a).abs() <= 1e-6 * a.abs());
        if same {
            return grad;
        }
        let vocab = grad.layout().shape().num_elements() / assumed.len().max(1);
        let factors: Vec<f32> =
            up.iter().zip(assumed).map(|(u, a)| if *a == 0.0 { 0.0 } else { u / a }).collect();
        if grad.try_storage_mut::<f32>().is_none() {
            grad = grad.to_contiguous();
        }
        let g = grad.storage_mut::<f32>();
        for (row, f) in g.chunks_mut(vocab.max(1)).zip(&factors) {
            row.iter_mut().for_each(|x| *x *= f);
        }
        grad
    }

    fn host_f32(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
        if t.dtype() != DType::F32 {
            return None;
        }
        match t.as_slice::<f32>() {
            Some(s) => Some(std::borrow::Cow::Borrowed(s)),
            None => Some(std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>()?.to_vec())),
        }
    }

    fn flex_vec(values: Vec<f32>, shape: [usize; 1]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    struct Prepared {
        spec: RowSpec,
        valid: Vec<bool>,
        weights: Vec<f32>,
        labels: Option<Vec<usize>>,
        vocab: usize,
    }

    impl Prepared {
        fn run(&self, student: &[f32], teacher: &[f32], grad: Option<&mut [f32]>) -> Vec<RowOut> {
            let batch = RowBatch {
                student,
                teacher,
                vocab: self.vocab,
                valid: &self.valid,
                weights: &self.weights,
                labels: self.labels.as_deref(),
            };
            run_rows(&self.spec, &batch, grad)
        }
    }

    fn host_labels(labels: &Tensor<1, Int>, vocab: usize) -> Option<Vec<usize>> {
        let ids: Vec<i64> = labels.to_data().convert::<i64>().try_into_vec().ok()?;
        // The driver has validated the labels of valid rows; anything else routes to composed.
        ids.into_iter().map(|y| usize::try_from(y).ok().filter(|y| *y < vocab)).collect()
    }

    /// The upstream gradient each row will receive: `1/n_valid` (mean) or 1 on valid rows, 0 on
    /// ignored ones.
    fn row_weights(valid: &[bool], e: super::ExpectedUpstream) -> Vec<f32> {
        let n_valid = valid.iter().filter(|v| **v).count();
        let reduce = if e.mean { 1.0 / (n_valid.max(1) as f32) } else { 1.0 };
        valid.iter().map(|v| if *v { reduce } else { 0.0 }).collect()
    }

    fn prepare(call: &FusedCall<'_>) -> Option<Prepared> {
        if current_path() == Path::Composed {
            return None;
        }
        if call.student.dtype() != DType::F32 || call.teacher.dtype() != DType::F32 {
            return None;
        }
        let [rows, vocab] = call.student.dims();
        if call.teacher.dims() != [rows, vocab] {
            return None;
        }
        let valid: Vec<bool> = call.valid.to_data().convert::<bool>().try_into_vec().ok()?;
        let weights = row_weights(&valid, call.expected_upstream);
        let labels = match (call.hard_weight, call.labels) {
            (None, _) => None,
            (Some(_), Some(l)) => Some(host_labels(l, vocab)?),
            (Some(_), None) => return None,
        };
        let spec = RowSpec {
            kind: call.kind,
            temperature: call.temperature,
            scale: call.scale,
            hard_weight: call.hard_weight,
        };
        Some(Prepared { spec, valid, weights, labels, vocab })
    }

    fn extras(spec: &RowSpec, rows: &[RowOut], device: &burn::tensor::Device) -> Vec<Extra> {
        let col = |f: fn(&RowOut) -> f64| -> Tensor<1> {
            let v: Vec<f32> = rows.iter().map(|r| f(r) as f32).collect();
            Tensor::from_data(TensorData::new(v, [rows.len()]), f32_on(device))
        };
        // Extra k of the kind is `RowOut::extras[k]`.
        let mut extras: Vec<Extra> = (spec.kind.extra_names().iter().copied().enumerate())
            .map(|(k, name)| {
                let v: Vec<f32> = rows.iter().map(|r| r.extras[k] as f32).collect();
                let v = Tensor::from_data(TensorData::new(v, [rows.len()]), f32_on(device));
                Extra::row(name, v)
            })
            .collect();
        if spec.hard_weight.is_some() {
            let [soft_name, hard_name] = HARD_LABEL_EXTRAS;
            extras.push(Extra::row(soft_name, col(|r| r.soft)));
            extras.push(Extra::row(hard_name, col(|r| r.hard)));
        }
        extras
    }

    fn values_of(rows: &[RowOut]) -> Vec<f32> {
        rows.iter().map(|r| r.value as f32).collect()
    }

    /// The per-row values of a kernel call and what else it returns.
    type KernelOut<R> = (Vec<f32>, R);

    /// Autodiff student: tracked → value + gradient state; untracked → value only.
    fn on_autodiff<C: CheckpointStrategy, R>(
        student: &Tensor<2>,
        weights: &[f32],
        kernel: &mut impl FnMut(&[f32], Option<&mut [f32]>) -> KernelOut<R>,
    ) -> Option<(Tensor<1>, R)>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let [rows, vocab] = student.dims();
        let ad = student.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
        let tracked = ad.is_tracked();
        let s = host_f32(ad.primitive())?;
        let mut grad = tracked.then(|| super::pool::take(rows * vocab));
        let (values, extra) = kernel(&s, grad.as_deref_mut());
        drop(s);
        let out = flex_vec(values, [rows]);
        let node = ad.node();
        let result = match FusedBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let grad = grad.unwrap_or_else(|| vec![0f32; rows * vocab]);
                let grad = super::pool::into_tensor(grad, &[rows, vocab]);
                prep.finish(GradState { grad, assumed: weights.to_vec() }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Some((Tensor::from_primitive::<Autodiff<Flex, C>>(result), extra))
    }

    /// The one fused op: runs `kernel` on the student's host rows (with a pooled gradient
    /// buffer, which the kernel fills with `weights[i] ×` row i's gradient, when the student is
    /// tracked) and returns its per-row values as a tensor whose backward hands that gradient
    /// over. `None` (nothing run) when the student is not an `f32` flex tensor (the callers have
    /// cast it to `f32` already, so in practice: not on flex).
    fn fused_op<R>(
        student: &Tensor<2>,
        weights: &[f32],
        mut kernel: impl FnMut(&[f32], Option<&mut [f32]>) -> KernelOut<R>,
    ) -> Option<(Tensor<1>, R)> {
        let out = if student.is_autodiff() {
            on_autodiff::<NoCheckpointing, R>(student, weights, &mut kernel).or_else(|| {
                on_autodiff::<BalancedCheckpointing, R>(student, weights, &mut kernel)
            })?
        } else {
            let flex = student.clone().try_into_primitive::<Flex>().ok()?;
            let s = host_f32(&flex)?;
            let (values, extra) = kernel(&s, None);
            let n = values.len();
            (Tensor::from_primitive::<Flex>(flex_vec(values, [n])), extra)
        };
        super::FUSED_CALLS.with(|c| c.set(c.get() + 1));
        Some(out)
    }

    /// The fused soft terms, or `None` when the composed path must run.
    pub(crate) fn soft_terms(call: FusedCall<'_>) -> Option<FusedTerms> {
        let p = prepare(&call)?;
        let teacher = call.teacher.clone().inner().try_into_primitive::<Flex>().ok()?;
        let teacher = host_f32(&teacher)?;
        let (values, rows) = fused_op(call.student, &p.weights, |s, grad| {
            let rows = p.run(s, &teacher, grad);
            (values_of(&rows), rows)
        })?;
        let extras = extras(&p.spec, &rows, &call.student.device());
        Some(FusedTerms { values, extras })
    }

    /// The fused top-k values, or `None` when the composed path must run.
    pub(crate) fn topk_terms(call: TopKCall<'_>) -> Option<FusedTerms> {
        if current_path() == Path::Composed || call.student.dtype() != DType::F32 {
            return None;
        }
        let [rows, vocab] = call.student.dims();
        let lp: Vec<f32> = call.logprobs.to_data().convert::<f32>().try_into_vec().ok()?;
        if call.valid.len() != rows || lp.len() != call.ids.len() {
            return None;
        }
        let weights = row_weights(call.valid, call.expected_upstream);
        let (values, rows_out) = fused_op(call.student, &weights, |s, grad| {
            let batch = TopKBatch {
                student: s,
                vocab,
                ids: call.ids,
                logprobs: &lp,
                valid: call.valid,
                weights: &weights,
            };
            let out = run_topk_rows(&call.spec, &batch, grad);
            (out.iter().map(|r| r.value as f32).collect(), out)
        })?;
        let device = call.student.device();
        let col = |f: fn(&TopKRowOut) -> f64| -> Tensor<1> {
            let v: Vec<f32> = rows_out.iter().map(|r| f(r) as f32).collect();
            Tensor::from_data(TensorData::new(v, [rows]), f32_on(&device))
        };
        let extras = match call.spec.convention.extra_names() {
            [teacher_name, student_name] => vec![
                Extra::row(teacher_name, col(|r| r.teacher_tail)),
                Extra::row(student_name, col(|r| r.student_tail)),
            ],
            _ => Vec::new(),
        };
        Some(FusedTerms { values, extras })
    }
}
