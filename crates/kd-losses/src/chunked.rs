//! Chunked LM head + loss: any divergence computed from hidden states and an output head, a
//! block of rows at a time, without ever holding the full `[rows, vocab]` student logits (nor
//! the teacher's, when the teacher is given as hidden states and a head).
//!
//! The idea is Liger-Kernel's fused linear distillation
//! (`src/liger_kernel/chunked_loss/fused_linear_distillation.py`), written with burn ops only so
//! that it runs on every backend: each chunk's logits are formed outside the caller's graph, the
//! divergence is differentiated on the chunk alone, and the chunk's logit gradient is folded into
//! the gradients of the hidden states and the head before the chunk is freed.

use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};

use crate::divergence::{Divergence, KdBatch, Reduction, valid_rows};
use crate::error::{KdError, Result};
use crate::logspace::{LOSS_DTYPE, f32_on, to_f32};

/// The teacher side of a [`ChunkedHeadBatch`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // moved once per call; a box would only add noise
pub enum ChunkedTeacher {
    /// Dense teacher logits, sliced chunk by chunk. Shape: `[rows, vocab_t]`.
    Logits(Tensor<2>),
    /// Teacher hidden states and output head; the teacher logits `hidden · weightᵀ (+ bias)` are
    /// formed one chunk at a time and never differentiated.
    Hidden {
        /// Final hidden states of the teacher. Shape: `[rows, hidden_t]`.
        hidden: Tensor<2>,
        /// Output head (or tied embedding table). Shape: `[vocab_t, hidden_t]`.
        weight: Tensor<2>,
        /// Optional output bias. Shape: `[vocab_t]`.
        bias: Option<Tensor<1>>,
    },
}

/// Inputs of [`ChunkedHeadLoss::forward`]: student hidden states and head, the teacher, and
/// the optional labels and row mask of [`KdBatch`]. Float tensors may be of any float dtype
/// (see "Precision" in [`ChunkedHeadLoss`]).
#[derive(Debug, Clone)]
pub struct ChunkedHeadBatch {
    /// Final hidden states of the student, flattened to rows. Shape: `[rows, hidden]`.
    pub student_hidden: Tensor<2>,
    /// Student output head (or tied embedding table). Shape: `[vocab, hidden]`.
    pub student_weight: Tensor<2>,
    /// Optional student output bias. Shape: `[vocab]`.
    pub student_bias: Option<Tensor<1>>,
    /// The teacher, as logits or as hidden states and a head.
    pub teacher: ChunkedTeacher,
    /// Target ids, `-100` = ignored row (see [`KdBatch::labels`]). Shape: `[rows]`.
    pub labels: Option<Tensor<1, Int>>,
    /// `true` = row counts. Shape: `[rows]`.
    pub mask: Option<Tensor<1, Bool>>,
}

impl ChunkedHeadBatch {
    /// Student hidden states `[rows, hidden]` and head `[vocab, hidden]`, every row counted.
    pub fn new(
        student_hidden: Tensor<2>,
        student_weight: Tensor<2>,
        teacher: ChunkedTeacher,
    ) -> Self {
        Self {
            student_hidden,
            student_weight,
            student_bias: None,
            teacher,
            labels: None,
            mask: None,
        }
    }

    /// Adds a student output bias. Shape: `[vocab]`.
    pub fn with_bias(mut self, bias: Tensor<1>) -> Self {
        self.student_bias = Some(bias);
        self
    }

    /// Adds target ids (`-100` = ignored). Shape: `[rows]`.
    pub fn with_labels(mut self, labels: Tensor<1, Int>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Adds a row mask (`true` = counted). Shape: `[rows]`.
    pub fn with_mask(mut self, mask: Tensor<1, Bool>) -> Self {
        self.mask = Some(mask);
        self
    }
}

/// The output of [`ChunkedHeadLoss::forward`].
#[derive(Debug, Clone)]
pub struct ChunkedHeadOutput {
    /// The reduced loss, differentiable w.r.t. the student hidden states, head weight and bias
    /// (whichever are tracked). Shape: `[1]`.
    pub loss: Tensor<1>,
    /// Loss of each row, `0` on ignored rows; detached (a diagnostic). Shape: `[rows]`.
    pub per_row: Tensor<1>,
    /// Number of counted rows.
    pub n_valid: usize,
}

/// Any row-wise [`Divergence`] on the logits of a linear head, computed `chunk_rows` rows at a
/// time, with exact gradients w.r.t. the hidden states, the head weight and its bias.
///
/// ```text
/// logits_c = h_c · Wᵀ (+ b)                      rows c of one chunk, outside the caller's graph
/// loss     = (1/n) Σ_c Σ_{i∈c} ℓ_i   (mean, n = counted rows of the whole batch)   or  Σ_c Σ_{i∈c} ℓ_i  (sum)
/// G_c      = ∂loss/∂logits_c                     backward of the divergence on chunk c alone
/// ∂loss/∂h_c = G_c · W,   ∂loss/∂W = Σ_c G_cᵀ · h_c,   ∂loss/∂b = Σ_c Σ_{i∈c} G_c[i]
/// returned loss = value + Σ h⊙G_h + Σ W⊙G_W + Σ b⊙G_b − (the same three sums, detached)
/// ```
///
/// The returned loss has the exact value and, through the caller's graph, the exact gradients
/// `G_h`, `G_W`, `G_b` (only those of tracked tensors are computed). Peak memory is that of one
/// chunk's logits and loss (`O(chunk_rows · vocab)`) plus `O(rows · hidden + vocab · hidden)`,
/// instead of several `rows × vocab` buffers. The teacher side is either dense logits or hidden
/// states with a head, applied chunk by chunk without a gradient. An untracked student computes
/// the value only.
///
/// Temperature, `T²` scaling, masking and the hard-label mix are those of the divergence; the
/// chunk values are reduced with [`Reduction::Sum`] and scaled by `1/n` for a mean, so the sum
/// over chunks is the batch's loss. Needs the `autodiff` (or `flex`) feature.
///
/// # Precision
/// Hidden states, heads, biases and teacher logits may be `f32`, `f64`, `bf16` or `f16`. The
/// head matmuls (`h_c · Wᵀ` and, for the gradients, `G_c · W` and `G_cᵀ · h_c`) run in the
/// common dtype of the side's hidden states, head and bias (`f32` when they differ): with `bf16`
/// inputs that is what saves the memory and time of a GPU. Each chunk's logits are then cast to
/// `f32`, so the log-softmax and the divergence (the driver of [`Divergence::forward`]) and
/// `G_c` are `f32`; the head-weight and bias gradients are accumulated across chunks in `f32`
/// (one `f32` `[vocab, hidden]` buffer), and every gradient reaches the caller's graph in `f32`
/// (through a transient `f32` copy of its tensor) and leaves it in its tensor's dtype (the
/// `f32` value, rounded). The loss is `f32`; on `f32` inputs every cast is a no-op. So with
/// half-precision inputs the result differs from the `f32` computation on the same (rounded)
/// inputs by the rounding of the chunk logits and of the gradient matmuls to that dtype.
///
/// # Shapes
/// `student_hidden` `[rows, hidden]`, `student_weight` `[vocab, hidden]`, `student_bias`
/// `[vocab]`; teacher logits `[rows, vocab_t]` or teacher hidden `[rows, hidden_t]` with head
/// `[vocab_t, hidden_t]` and bias `[vocab_t]`; `labels`, `mask` `[rows]`. `vocab_t = vocab`
/// unless the divergence is cross-vocabulary.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] (`chunk_rows`) from [`ChunkedHeadLoss::new`] when
/// `chunk_rows == 0`. From [`forward`](ChunkedHeadLoss::forward): [`KdError::ShapeMismatch`]
/// when any shape above disagrees, [`KdError::VocabMismatch`] for different vocabularies of a
/// same-vocabulary loss, [`KdError::UnknownOption`] for [`Reduction::None`] (per-row losses
/// have no chunk-wise gradient without knowing their upstream) and for losses whose rows are
/// coupled ([`Divergence::couples_rows`]: `atkd`), and every error of [`Divergence::forward`].
///
/// Reference: Hsu et al., *Liger Kernel: Efficient Triton Kernels for LLM Training* (2024),
/// <https://arxiv.org/abs/2410.10989>, <https://github.com/linkedin/Liger-Kernel>.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::{ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, ForwardKlConfig, Reduction};
///
/// let device = Device::flex().autodiff();
/// let hidden = Tensor::<2>::from_floats([[0.5, -1.0], [1.0, 0.2], [0.0, 0.3]], &device).require_grad();
/// let head = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 0.2]], &device)
///     .require_grad(); // [vocab = 4, hidden = 2]
/// let teacher = Tensor::<2>::from_floats(
///     [[0.1, 2.0, -1.0, 0.3], [1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 3.0, 0.0]],
///     &device,
/// );
/// let fkl = ForwardKlConfig::new().init()?;
/// let batch = ChunkedHeadBatch::new(hidden.clone(), head.clone(), ChunkedTeacher::Logits(teacher.clone()));
/// let out = ChunkedHeadLoss::new(2)?.forward(&fkl, batch, Reduction::Mean)?;
///
/// // Same value as the dense path: logits = h · Wᵀ, then the loss.
/// use kd_losses::{Divergence, KdBatch};
/// let dense = fkl.forward(KdBatch::new(hidden.clone().matmul(head.clone().transpose()), teacher), Reduction::Mean)?;
/// let (a, b) = (out.loss.clone().into_scalar::<f32>(), dense.loss.into_scalar::<f32>());
/// assert!((a - b).abs() < 1e-6);
/// let grads = out.loss.backward();
/// assert_eq!(hidden.grad(&grads).unwrap().dims(), [3, 2]);
/// assert_eq!(head.grad(&grads).unwrap().dims(), [4, 2]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedHeadLoss {
    chunk_rows: usize,
}

impl ChunkedHeadLoss {
    /// Processes `chunk_rows` rows at a time (a value `≥ rows` means one chunk).
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `chunk_rows == 0`.
    pub fn new(chunk_rows: usize) -> Result<Self> {
        if chunk_rows == 0 {
            return Err(KdError::InvalidHyperparameter {
                loss: "chunked_head",
                name: "chunk_rows",
                expected: "at least 1 row per chunk",
                got: 0.0,
            });
        }
        Ok(Self { chunk_rows })
    }

    /// Rows per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// Computes the loss of `divergence` on `batch` chunk by chunk (see the type docs).
    ///
    /// # Errors
    /// See the type docs.
    pub fn forward(
        &self,
        divergence: &dyn Divergence,
        batch: ChunkedHeadBatch,
        reduction: Reduction,
    ) -> Result<ChunkedHeadOutput> {
        let name = divergence.name();
        // A loss whose per-row value depends on other rows (a batch median, per-group means)
        // would change under chunking.
        if divergence.couples_rows() {
            return Err(KdError::UnknownOption {
                loss: "chunked_head",
                name: "loss",
                expected: "a loss whose rows are independent (`Divergence::couples_rows` false)",
                got: name.to_string(),
            });
        }
        let scale_mean = match reduction {
            Reduction::Mean => true,
            Reduction::Sum => false,
            Reduction::None => {
                return Err(KdError::UnknownOption {
                    loss: "chunked_head",
                    name: "reduction",
                    expected: "mean, sum",
                    got: "none".to_string(),
                });
            }
        };
        let shapes = check_shapes(&batch, divergence)?;
        let ChunkedHeadBatch {
            student_hidden,
            student_weight,
            student_bias,
            teacher,
            labels,
            mask,
        } = batch;
        let device = student_hidden.device();
        let valid = valid_rows(shapes.rows, labels.as_ref(), mask.as_ref(), &device)?;
        let n_valid = valid.int().sum().into_scalar::<i64>() as usize;
        let scale = if scale_mean { 1.0 / n_valid.max(1) as f64 } else { 1.0 };

        // Which gradients the caller's graph needs.
        let want_h = student_hidden.is_tracked();
        let want_w = student_weight.is_tracked();
        let want_b = student_bias.as_ref().is_some_and(Tensor::is_tracked);
        let tracked = want_h || want_w || want_b;

        // Everything chunk-wise runs on the inner (non-autodiff) backend, the head matmuls in
        // the head's dtype (see "Precision" in the type docs).
        let dtype = head_dtype(&student_hidden, &student_weight, student_bias.as_ref());
        let h = student_hidden.clone().inner().cast(dtype); // [rows, hidden]
        let w = student_weight.clone().inner().cast(dtype); // [vocab, hidden]
        let b = student_bias.clone().map(|b| b.inner().cast(dtype)); // [vocab]
        let teacher = InnerTeacher::new(teacher);
        let f32_device = f32_on(&h.device());

        let mut value = Tensor::<1>::zeros([1], f32_device.clone()); // Σ chunk sums, f32
        let mut per_row = Vec::new();
        let mut grad_h = Vec::new(); // chunks of ∂/∂h, unscaled
        let mut grad_w: Option<Tensor<2>> = None; // Σ_c G_cᵀ h_c, unscaled
        let mut grad_b: Option<Tensor<1>> = None; // Σ_c Σ_i G_c[i], unscaled
        let mut start = 0;
        while start < shapes.rows {
            let end = (start + self.chunk_rows).min(shapes.rows);
            let h_c = h.clone().slice([start..end, 0..shapes.hidden]); // [c, hidden]
            // The chunk's logits in f32: the divergence and G_c are f32 whatever the head's dtype.
            let logits_c = to_f32(head(h_c.clone(), &w, b.as_ref())); // [c, vocab]
            let teacher_c = teacher.rows(start, end); // [c, vocab_t], cast by the driver
            let (lift, lift_teacher) = if tracked {
                (Tensor::from_inner(logits_c).require_grad(), Tensor::from_inner(teacher_c))
            } else {
                (logits_c, teacher_c)
            };
            let mut chunk = KdBatch::new(lift.clone(), lift_teacher);
            if let Some(l) = &labels {
                chunk = chunk.with_labels(l.clone().slice(start..end));
            }
            if let Some(m) = &mask {
                chunk = chunk.with_mask(m.clone().slice(start..end));
            }
            let out = divergence.forward(chunk, Reduction::Sum)?;
            per_row.push(out.per_row.clone().inner());
            if tracked {
                let mut grads = out.loss.backward();
                // G_c, the gradient of this chunk's (unscaled) sum, f32. // [c, vocab]
                let g = lift.grad_remove(&mut grads).expect("chunk logits are a tracked leaf");
                let g_head = g.clone().cast(dtype); // G_c for the matmuls, in the head's dtype
                if want_h {
                    grad_h.push(g_head.clone().matmul(w.clone())); // [c, hidden]
                }
                if want_w {
                    let gw = to_f32(g_head.transpose().matmul(h_c)); // [vocab, hidden]
                    grad_w = Some(match grad_w {
                        Some(acc) => acc.add(gw),
                        None => gw,
                    });
                }
                if want_b {
                    let gb = g.sum_dim(0).squeeze_dim::<1>(0); // [vocab], f32
                    grad_b = Some(match grad_b {
                        Some(acc) => acc.add(gb),
                        None => gb,
                    });
                }
            }
            value = value.add(out.loss.inner());
            start = end;
        }

        let value = value.mul_scalar(scale); // [1]
        let per_row = if per_row.is_empty() {
            Tensor::zeros([0], f32_device)
        } else {
            Tensor::cat(per_row, 0)
        };
        let loss = if tracked {
            // Σ x⊙G − (Σ x⊙G).detach() is exactly 0 and has gradient G w.r.t. x. Formed in
            // f32; the cast's backward hands G to x in x's dtype.
            let mut surrogate: Option<Tensor<1>> = None;
            let mut add = |t: Tensor<1>| {
                surrogate = Some(match surrogate.take() {
                    Some(s) => s.add(t),
                    None => t,
                });
            };
            if want_h && !grad_h.is_empty() {
                let g = to_f32(Tensor::cat(grad_h, 0)).mul_scalar(scale); // [rows, hidden]
                add(to_f32(student_hidden).mul(g).sum());
            }
            if let (true, Some(g)) = (want_w, grad_w) {
                add(to_f32(student_weight).mul(g.mul_scalar(scale)).sum());
            }
            if let (true, Some(g), Some(bias)) = (want_b, grad_b, student_bias) {
                add(to_f32(bias).mul(g.mul_scalar(scale)).sum());
            }
            match surrogate {
                Some(s) => s.clone().sub(s.detach()).add(value),
                None => Tensor::from_inner(value),
            }
        } else if device.is_autodiff() {
            Tensor::from_inner(value)
        } else {
            value
        };
        Ok(ChunkedHeadOutput { loss, per_row, n_valid })
    }
}

/// The dtype of one side's head matmuls: the common dtype of its hidden states, head and bias,
/// or `f32` when they differ.
fn head_dtype(hidden: &Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> FloatDType {
    let dtype: DType = hidden.dtype();
    let same = weight.dtype() == dtype && bias.is_none_or(|b| b.dtype() == dtype);
    if same { dtype.into() } else { LOSS_DTYPE }
}

/// `x · Wᵀ (+ b)`. // [c, hidden], [vocab, hidden], [vocab] -> [c, vocab]
fn head(x: Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Tensor<2> {
    let logits = x.matmul(weight.clone().transpose());
    match bias {
        Some(b) => logits.add(b.clone().unsqueeze_dim::<2>(0)),
        None => logits,
    }
}

/// The teacher on the inner backend, able to produce the logits of any chunk of rows.
#[allow(clippy::large_enum_variant)] // built once per call
enum InnerTeacher {
    Logits(Tensor<2>),
    Hidden { hidden: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>> },
}

impl InnerTeacher {
    fn new(teacher: ChunkedTeacher) -> Self {
        match teacher {
            ChunkedTeacher::Logits(t) => Self::Logits(t.inner()),
            ChunkedTeacher::Hidden { hidden, weight, bias } => {
                let dtype = head_dtype(&hidden, &weight, bias.as_ref());
                Self::Hidden {
                    hidden: hidden.inner().cast(dtype),
                    weight: weight.inner().cast(dtype),
                    bias: bias.map(|b| b.inner().cast(dtype)),
                }
            }
        }
    }

    /// Teacher logits of rows `start..end`. // [end − start, vocab_t]
    fn rows(&self, start: usize, end: usize) -> Tensor<2> {
        match self {
            Self::Logits(t) => {
                let v = t.dims()[1];
                t.clone().slice([start..end, 0..v])
            }
            Self::Hidden { hidden, weight, bias } => {
                let ht = hidden.dims()[1];
                head(hidden.clone().slice([start..end, 0..ht]), weight, bias.as_ref())
            }
        }
    }
}

struct Shapes {
    rows: usize,
    hidden: usize,
}

fn mismatch(what: &str, expected: Vec<usize>, got: Vec<usize>) -> KdError {
    KdError::ShapeMismatch { what: what.into(), expected, got }
}

/// Checks every shape of the batch against the student hidden states and head.
fn check_shapes(batch: &ChunkedHeadBatch, divergence: &dyn Divergence) -> Result<Shapes> {
    let [rows, hidden] = batch.student_hidden.dims();
    let [vocab, w_hidden] = batch.student_weight.dims();
    if w_hidden != hidden {
        return Err(mismatch(
            "student_weight vs student_hidden",
            vec![vocab, hidden],
            vec![vocab, w_hidden],
        ));
    }
    if let Some(b) = &batch.student_bias
        && b.dims() != [vocab]
    {
        return Err(mismatch("student_bias vs student_weight", vec![vocab], b.dims().to_vec()));
    }
    let t_vocab = match &batch.teacher {
        ChunkedTeacher::Logits(t) => {
            let [t_rows, t_vocab] = t.dims();
            if t_rows != rows {
                return Err(mismatch(
                    "teacher_logits vs student_hidden rows",
                    vec![rows, t_vocab],
                    vec![t_rows, t_vocab],
                ));
            }
            t_vocab
        }
        ChunkedTeacher::Hidden { hidden: th, weight: tw, bias: tb } => {
            let [t_rows, t_hidden] = th.dims();
            if t_rows != rows {
                return Err(mismatch(
                    "teacher hidden vs student_hidden rows",
                    vec![rows, t_hidden],
                    vec![t_rows, t_hidden],
                ));
            }
            let [t_vocab, tw_hidden] = tw.dims();
            if tw_hidden != t_hidden {
                return Err(mismatch(
                    "teacher weight vs teacher hidden",
                    vec![t_vocab, t_hidden],
                    vec![t_vocab, tw_hidden],
                ));
            }
            if let Some(b) = tb
                && b.dims() != [t_vocab]
            {
                return Err(mismatch(
                    "teacher bias vs teacher weight",
                    vec![t_vocab],
                    b.dims().to_vec(),
                ));
            }
            t_vocab
        }
    };
    if t_vocab != vocab && !divergence.settings().cross_vocab {
        return Err(KdError::VocabMismatch {
            loss: divergence.name(),
            student: vocab,
            teacher: t_vocab,
        });
    }
    Ok(Shapes { rows, hidden })
}
