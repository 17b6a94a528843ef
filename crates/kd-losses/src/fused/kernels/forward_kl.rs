//! Forward KL `KL(p‖q)` and TAID's `−Σ p_t log q`: one kernel, two readings of the same sums
//! (their gradients are equal: `(q − p)/T`, with TAID's `p_t` as the teacher side).

use super::super::passes::{give_row, pass2, pass2_read_r, take_row};
use super::super::simd::{Lanes, exp};
use super::{Row, Soft};

/// `KL(p‖q)`; extra: the cross-entropy form `−Σ p log q`, times `scale`.
#[inline(always)]
pub(super) fn forward_kl<V: Lanes>(row: &Row<'_>, grad: Option<&mut [f32]>) -> Soft {
    let (kl, ce, lzs) = kl_and_cross_entropy::<V>(row, grad);
    Soft { value: kl, extras: [row.scale * ce, 0.0, 0.0, 0.0, 0.0], lzs }
}

/// TAID at the interpolation in `row.shift.mix`: `−Σ p_t log q`; extra: `KL(p_t‖q)`.
#[inline(always)]
pub(super) fn taid<V: Lanes>(row: &Row<'_>, grad: Option<&mut [f32]>) -> Soft {
    let (kl, ce, lzs) = kl_and_cross_entropy::<V>(row, grad);
    Soft { value: ce, extras: [kl, 0.0, 0.0, 0.0, 0.0], lzs }
}

/// `KL(p‖q)`, `−Σ p log q` and `ln Z_s` of one row; writes the shared gradient
/// `gscale (q − p)` when tracked.
#[inline(always)]
fn kl_and_cross_entropy<V: Lanes>(row: &Row<'_>, mut grad: Option<&mut [f32]>) -> (f64, f64, f64) {
    let (s, t, shift) = (row.s, row.t, &row.shift);
    let tracked = grad.is_some();
    // Z_s, Z_t, Σ e_t (b − a), Σ e_t a; scratch g ← e_s, r ← e_t (tracked only).
    let mut scratch = if tracked { take_row(s.len()) } else { Vec::new() };
    let r = if tracked { Some(&mut scratch[..]) } else { None };
    let [zs, zt, acc_a, acc_b] = pass2::<V, 4>(
        s,
        t,
        shift,
        grad.as_deref_mut(),
        r,
        #[inline(always)]
        |a, b, _, _| {
            let (es, et) = (exp(a), exp(b));
            ([es, et, et.mul(b.sub(a)), et.mul(a)], es, et)
        },
    );
    let (lzs, lzt) = (zs.ln(), zt.ln());
    // KL(p‖q) = Σ p (b − a) − ln Z_t + ln Z_s;  CE = −Σ p a + ln Z_s.
    let kl = acc_a / zt - lzt + lzs;
    let ce = -(acc_b / zt) + lzs;
    if tracked {
        // ∂KL(p‖q)/∂s_v = ∂CE/∂s_v = (q_v − p_v)/T,  q_v = e_s/Z_s,  p_v = e_t/Z_t.
        let gscale = row.gscale;
        let (qs, ps) = (V::splat(gscale / zs as f32), V::splat(gscale / zt as f32));
        pass2_read_r::<V, 0>(
            s,
            t,
            shift,
            grad,
            Some(&mut scratch[..]),
            #[inline(always)]
            |_, _, es, et| ([], es.mul(qs).sub(et.mul(ps)), et),
        );
        give_row(scratch);
    }
    (kl, ce, lzs)
}
