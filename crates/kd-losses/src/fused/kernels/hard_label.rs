//! The hard-label mix: `(1 − w)·soft + w·CE(label)`, the cross-entropy at `T = 1` on the floored
//! student logits (Hinton's `α`, [`crate::HardLabelMix`]), added to any kind's row.

use super::super::passes::pass;
use super::super::simd::{Lanes, exp};
use super::{Row, RowOut, Soft};
use crate::logspace::LOGIT_FLOOR;

/// The hard-label term of one row: its label and the weight `w`.
#[derive(Clone, Copy)]
pub(super) struct Hard {
    pub(super) label: usize,
    pub(super) weight: f32,
}

/// The row's result from the divergence's `soft` terms (not yet times `scale`), mixed with the
/// hard-label term when there is one; adds `row.weight · w · ∂CE/∂s` to the gradient (which
/// already holds the divergence's share) when tracked.
#[inline(always)]
pub(super) fn finish<V: Lanes>(
    row: &Row<'_>,
    soft: Soft,
    hard: Option<Hard>,
    grad: Option<&mut [f32]>,
) -> RowOut {
    let Soft { value, extras, lzs } = soft;
    let soft = row.scale * value;
    let Some(hard) = hard else {
        return RowOut { value: soft, soft, hard: 0.0, extras };
    };
    let ce = cross_entropy::<V>(row, lzs, hard, grad);
    let w = hard.weight as f64;
    RowOut { value: (1.0 - w) * soft + w * ce, soft, hard: ce, extras }
}

/// `−log softmax(s_f)[label]` at `T = 1` on the floored logits; adds
/// `row.weight · w · (softmax(s_f) − onehot(label))` to the gradient when given.
#[inline(always)]
fn cross_entropy<V: Lanes>(row: &Row<'_>, lzs: f64, hard: Hard, grad: Option<&mut [f32]>) -> f64 {
    let (s, t, shift) = (row.s, row.t, &row.shift);
    let temp = row.temperature as f32;
    // Hard-label CE at T = 1 on the floored logits s_f = T (a + max s'):
    // CE = ln Σ e^(T a) − T a_y;  ∂CE/∂s_v = softmax(s_f)_v − [v = y].
    let tv = V::splat(temp);
    let lz1 = if temp == 1.0 {
        lzs
    } else {
        let [z1] = pass::<V, 1>(
            s,
            t,
            shift,
            None,
            #[inline(always)]
            |a, _, _| ([exp(a.mul(tv))], a),
        )
        .map(f64::ln);
        z1
    };
    let a_y = ((s[hard.label] as f64).max(LOGIT_FLOOR) * shift.inv_t as f64 - shift.ms as f64)
        * temp as f64;
    let ce = lz1 - a_y;
    if let Some(g) = grad {
        let hw = V::splat(row.weight * hard.weight);
        let l1 = V::splat(lz1 as f32);
        pass::<V, 0>(
            s,
            t,
            shift,
            Some(&mut *g),
            #[inline(always)]
            |a, _, old| ([], hw.mul_add(exp(a.mul(tv).sub(l1)), old)),
        );
        g[hard.label] -= row.weight * hard.weight;
    }
    ce
}
