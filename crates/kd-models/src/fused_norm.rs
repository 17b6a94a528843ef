//! Fused layer normalisation and RMSNorm on flex, forward and backward, one pass over a row
//! each way (plus the row's statistics).
//!
//! ```text
//! LayerNorm: x̂ = (x − μ) r,  r = 1/√(σ² + ε)  (biased variance),  y = x̂ w + b
//!   dx = r (g − mean(g) − x̂ mean(g x̂)),  g = dy w;  dw = Σ_rows dy x̂;  db = Σ_rows dy
//! RMSNorm:   x̂ = x r,        r = 1/√(mean(x²) + ε),                y = x̂ w
//!   dx = r (g − x̂ mean(g x̂));  dw = Σ_rows dy x̂
//! ```
//!
//! burn composes each from about six tensor ops forward (mean, variance, subtraction, square
//! root, division, scale, shift), each a pass over memory with a fresh buffer, and as many
//! again backward. Here the statistics are summed in `f64` per row (more exact than the
//! composed `f32` sums), the forward writes `y` in one more pass, and the backward is one pass
//! per row plus the column sums of `dw`, `db`, kept per thread and added at the end. Rows run in
//! parallel (rayon). An autodiff input becomes one burn autodiff op (as `fused_act` does);
//! anything but `f32` flex tensors takes the op-composed path.

// Without flex only the dispatch's fallback (`None`) is compiled in use.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

/// Which normalisation a fused pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    /// Subtract the mean, divide by the standard deviation (biased), scale and shift.
    Layer,
    /// Divide by the root mean square, scale.
    Rms,
}

/// Per-row statistics of a forward pass: the mean (0 for RMSNorm) and `r`.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

/// `y = x̂ w (+ b)` over rows of `d`, returning the per-row statistics.
pub(crate) fn forward_rows(
    norm: Norm,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f64,
    y: &mut [f32],
) -> Stats {
    let d = w.len();
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .map(|(y, x)| {
            let n = d as f64;
            let (mean, var) = match norm {
                Norm::Layer => {
                    let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
                    let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
                    (mean, var)
                }
                Norm::Rms => (0.0, x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n),
            };
            let r = (1.0 / (var + eps).sqrt()) as f32;
            let m = mean as f32;
            match b {
                Some(b) => {
                    for (((y, x), w), b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = ((x - m) * r).mul_add(*w, *b);
                    }
                }
                None => {
                    for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                        *y = (x - m) * r * w;
                    }
                }
            }
            (m, r)
        })
        .collect();
    let (mean, rstd) = stats.into_iter().unzip();
    Stats { mean, rstd }
}

/// `(dx, dw, db)` of the forward with `stats`, for upstream `dy` (see the module docs).
pub(crate) fn backward_rows(
    norm: Norm,
    x: &[f32],
    w: &[f32],
    stats: &Stats,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    // Per-chunk partial column sums of dy·x̂ and dy, in f64, added at the end (fixed order).
    let rows_per_chunk = (1 << 14) / d.max(1) + 1;
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(d * rows_per_chunk)
        .enumerate()
        .map(|(c, dxc)| {
            let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
            for (k, dxr) in dxc.chunks_mut(d).enumerate() {
                let row = c * rows_per_chunk + k;
                let (xr, dyr) = (&x[row * d..(row + 1) * d], &dy[row * d..(row + 1) * d]);
                let (m, r) = (stats.mean[row], stats.rstd[row]);
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                // x̂ is computed once: kept in the dx row until dx overwrites it.
                for i in 0..d {
                    let xh = (xr[i] - m) * r;
                    dxr[i] = xh;
                    let g = dyr[i] * w[i];
                    sum_g += g as f64;
                    sum_gx += (g * xh) as f64;
                    dw[i] += (dyr[i] * xh) as f64;
                    db[i] += dyr[i] as f64;
                }
                let mean_g = match norm {
                    Norm::Layer => (sum_g / d as f64) as f32,
                    Norm::Rms => 0.0,
                };
                let mean_gx = (sum_gx / d as f64) as f32;
                for i in 0..d {
                    let xh = dxr[i];
                    dxr[i] = r * (dyr[i] * w[i] - mean_g - xh * mean_gx);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, f(dw), f(db))
}

/// The normalisation through the fused pass when `x`, `w` (and `b`) are `f32` flex tensors of
/// one kind (all autodiff or none), else `None` (the caller composes it).
pub(crate) fn try_fused<const D: usize>(
    norm: Norm,
    x: &Tensor<D>,
    w: &Tensor<1>,
    b: Option<&Tensor<1>>,
    eps: f64,
) -> Option<Tensor<D>> {
    let f32s = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && b.is_none_or(|b| b.dtype() == DType::F32);
    if !f32s || x.dims()[D - 1] != w.dims()[0] {
        return None;
    }
    #[cfg(feature = "flex")]
    {
        flex::apply(norm, x, w, b, eps)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (norm, b, eps);
        None
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::Tensor;

    use super::{Norm, Stats, forward_rows};
    use crate::flex_view::{tensor, values};

    /// The forward on flex primitives.
    pub(super) fn forward(
        norm: Norm,
        x: &FlexTensor,
        w: &FlexTensor,
        b: Option<&FlexTensor>,
        eps: f64,
    ) -> (FlexTensor, Stats) {
        let (xs, ws) = (values(x), values(w));
        let bs = b.map(values);
        let mut y = vec![0f32; xs.len()];
        let stats = forward_rows(norm, &xs, &ws, bs.as_deref(), eps, &mut y);
        (tensor(y, x.layout().shape().clone()), stats)
    }

    pub(super) fn apply<const D: usize>(
        norm: Norm,
        x: &Tensor<D>,
        w: &Tensor<1>,
        b: Option<&Tensor<1>>,
        eps: f64,
    ) -> Option<Tensor<D>> {
        if x.is_autodiff() {
            #[cfg(feature = "autodiff")]
            {
                use burn::backend::autodiff::checkpoint::strategy::{
                    BalancedCheckpointing, NoCheckpointing,
                };
                return autodiff::apply::<NoCheckpointing, D>(norm, x, w, b, eps)
                    .or_else(|| autodiff::apply::<BalancedCheckpointing, D>(norm, x, w, b, eps));
            }
            #[cfg(not(feature = "autodiff"))]
            return None;
        }
        let prim = |t: &Tensor<1>| t.clone().try_into_primitive::<Flex>().ok();
        let xp = x.clone().try_into_primitive::<Flex>().ok()?;
        let wp = prim(w)?;
        let bp = match b {
            Some(b) => Some(prim(b)?),
            None => None,
        };
        let (y, _) = forward(norm, &xp, &wp, bp.as_ref(), eps);
        Some(Tensor::from_primitive::<Flex>(y))
    }

    #[cfg(feature = "autodiff")]
    mod autodiff {
        use burn::backend::autodiff::Autodiff;
        use burn::backend::autodiff::checkpoint::base::Checkpointer;
        use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
        use burn::backend::autodiff::grads::Gradients;
        use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
        use burn::backend::flex::FlexTensor;
        use burn::backend::{DispatchKindConversion, Flex};
        use burn::tensor::{DispatchTensor, Shape, Tensor};

        use super::super::{Norm, Stats, backward_rows};
        use super::forward;
        use crate::flex_view::{tensor, values};

        /// What the backward needs: the input, the scale and the row statistics.
        #[derive(Debug, Clone)]
        struct State {
            x: FlexTensor,
            w: FlexTensor,
            stats: Stats,
        }

        /// The backward of a fused normalisation; `N` = 3 parents (x, w, b) or 2 (x, w).
        #[derive(Debug)]
        struct NormBackward(Norm);

        /// `[dx, dw, db]` for the upstream gradient `dy`.
        fn gradients(norm: Norm, state: &State, dy: FlexTensor) -> [FlexTensor; 3] {
            let (xs, ws, dys) = (values(&state.x), values(&state.w), values(&dy));
            let (dx, dw, db) = backward_rows(norm, &xs, &ws, &state.stats, &dys);
            let d = ws.len();
            [
                tensor(dx, state.x.layout().shape().clone()),
                tensor(dw, Shape::new([d])),
                tensor(db, Shape::new([d])),
            ]
        }

        impl Backward<Flex, 3> for NormBackward {
            type State = State;

            fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let dy = grads.consume::<Flex>(&ops.node);
                let all = gradients(self.0, &ops.state, dy);
                for (parent, grad) in ops.parents.into_iter().zip(all) {
                    if let Some(parent) = parent {
                        grads.register::<Flex>(parent.id, grad);
                    }
                }
            }
        }

        impl Backward<Flex, 2> for NormBackward {
            type State = State;

            fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let dy = grads.consume::<Flex>(&ops.node);
                let [dx, dw, _] = gradients(self.0, &ops.state, dy);
                for (parent, grad) in ops.parents.into_iter().zip([dx, dw]) {
                    if let Some(parent) = parent {
                        grads.register::<Flex>(parent.id, grad);
                    }
                }
            }
        }

        /// The fused op on autodiff flex tensors with checkpointing strategy `C`.
        pub(in super::super) fn apply<C: CheckpointStrategy, const D: usize>(
            norm: Norm,
            x: &Tensor<D>,
            w: &Tensor<1>,
            b: Option<&Tensor<1>>,
            eps: f64,
        ) -> Option<Tensor<D>>
        where
            DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
        {
            let ad = |t: &Tensor<1>| t.clone().try_into_primitive::<Autodiff<Flex, C>>().ok();
            let xa = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
            let wa = ad(w)?;
            let ba = match b {
                Some(b) => Some(ad(b)?),
                None => None,
            };
            let (xp, wp) = (xa.primitive().clone(), wa.primitive().clone());
            let bp = ba.as_ref().map(|b| b.primitive().clone());
            let (y, stats) = forward(norm, &xp, &wp, bp.as_ref(), eps);
            let state = State { x: xp, w: wp, stats };
            let result = match ba {
                Some(ba) => {
                    match NormBackward(norm)
                        .prepare::<C>([xa.node(), wa.node(), ba.node()])
                        .compute_bound()
                        .stateful()
                    {
                        OpsKind::Tracked(prep) => prep.finish(state, y),
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    }
                }
                None => {
                    match NormBackward(norm)
                        .prepare::<C>([xa.node(), wa.node()])
                        .compute_bound()
                        .stateful()
                    {
                        OpsKind::Tracked(prep) => prep.finish(state, y),
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    }
                }
            };
            Some(Tensor::from_primitive::<Autodiff<Flex, C>>(result))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// f64 reference of the forward and of the gradients of `Σ c ⊙ y`.
    fn reference(
        norm: Norm,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        c: &[f32],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = w.len();
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> (f64, Vec<f64>) {
            let mut y = Vec::new();
            for row in x.chunks(d) {
                let n = d as f64;
                let mean = if norm == Norm::Layer { row.iter().sum::<f64>() / n } else { 0.0 };
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let r = 1.0 / (var + eps).sqrt();
                for i in 0..d {
                    let bias = if norm == Norm::Layer { b[i] } else { 0.0 };
                    y.push((row[i] - mean) * r * w[i] + bias);
                }
            }
            (y.iter().zip(c).map(|(y, c)| y * *c as f64).sum(), y)
        };
        let (xd, wd, bd): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            x.iter().map(|v| *v as f64).collect(),
            w.iter().map(|v| *v as f64).collect(),
            b.iter().map(|v| *v as f64).collect(),
        );
        let (_, y) = loss(&xd, &wd, &bd);
        let h = 1e-6;
        let grad = |which: usize, len: usize| -> Vec<f64> {
            (0..len)
                .map(|k| {
                    let (mut a, mut bb, mut cc) = (xd.clone(), wd.clone(), bd.clone());
                    let (mut a2, mut bb2, mut cc2) = (xd.clone(), wd.clone(), bd.clone());
                    match which {
                        0 => {
                            a[k] += h;
                            a2[k] -= h
                        }
                        1 => {
                            bb[k] += h;
                            bb2[k] -= h
                        }
                        _ => {
                            cc[k] += h;
                            cc2[k] -= h
                        }
                    }
                    (loss(&a, &bb, &cc).0 - loss(&a2, &bb2, &cc2).0) / (2.0 * h)
                })
                .collect()
        };
        (y, grad(0, x.len()), grad(1, d), grad(2, d))
    }

    #[test]
    fn fused_norms_match_f64_values_and_gradients_on_tensors() {
        let device = Device::flex().autodiff();
        let (rows, d) = (5usize, 37usize);
        let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 5) as f32 * 0.3).collect();
        let b: Vec<f32> = (0..d).map(|i| (i % 3) as f32 * 0.2 - 0.2).collect();
        let c: Vec<f32> = (0..rows * d).map(|i| ((i * 31) % 9) as f32 / 4.0 - 1.0).collect();
        let eps = 1e-5;
        for norm in [Norm::Layer, Norm::Rms] {
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, d]), &device)
                .require_grad();
            let wt =
                Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), &device).require_grad();
            let bt =
                Tensor::<1>::from_data(TensorData::new(b.clone(), [d]), &device).require_grad();
            let ct = Tensor::<2>::from_data(TensorData::new(c.clone(), [rows, d]), &device);
            let bias = (norm == Norm::Layer).then_some(&bt);
            let y = try_fused(norm, &xt, &wt, bias, eps).expect("flex f32 takes the fused path");
            let grads = y.clone().mul(ct).sum().backward();
            let (wy, wdx, wdw, wdb) = reference(norm, &x, &w, &b, &c, eps);
            let v = |d: TensorData| d.convert::<f32>().try_to_vec::<f32>().unwrap();
            let check = |got: Vec<f32>, want: &[f64], what: &str| {
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (*g as f64 - w).abs() < 2e-4 * (1.0 + w.abs()),
                        "{norm:?} {what}: {g} vs {w}"
                    );
                }
            };
            check(v(y.inner().into_data()), &wy, "y");
            check(v(xt.grad(&grads).unwrap().into_data()), &wdx, "dx");
            check(v(wt.grad(&grads).unwrap().into_data()), &wdw, "dw");
            if norm == Norm::Layer {
                check(v(bt.grad(&grads).unwrap().into_data()), &wdb, "db");
            }
            // Without autodiff (a teacher's forward): the same values.
            let plain =
                Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, d]), &Device::flex());
            let wp = Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), &Device::flex());
            let bp = Tensor::<1>::from_data(TensorData::new(b.clone(), [d]), &Device::flex());
            let bias = (norm == Norm::Layer).then_some(&bp);
            let y2 = try_fused(norm, &plain, &wp, bias, eps).expect("flex f32");
            check(v(y2.into_data()), &wy, "inference y");
        }
    }
}
