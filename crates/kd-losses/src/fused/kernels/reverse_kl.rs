//! Reverse KL `KL(q‖p)`.

use super::super::passes::pass;
use super::super::simd::{Lanes, exp};
use super::{Row, Soft};

/// `KL(q‖p)`; no extras.
#[inline(always)]
pub(super) fn reverse_kl<V: Lanes>(row: &Row<'_>, mut grad: Option<&mut [f32]>) -> Soft {
    let (s, t, shift) = (row.s, row.t, &row.shift);
    // Z_s, Z_t, Σ e_s (a − b); scratch ← e_s.
    let [zs, zt, acc_a] = pass::<V, 3>(
        s,
        t,
        shift,
        grad.as_deref_mut(),
        #[inline(always)]
        |a, b, _| {
            let (es, et) = (exp(a), exp(b));
            ([es, et, es.mul(a.sub(b))], es)
        },
    );
    let (lzs, lzt) = (zs.ln(), zt.ln());
    // KL(q‖p) = Σ q (a − b) − ln Z_s + ln Z_t.
    let kl = acc_a / zs - lzs + lzt;
    if grad.is_some() {
        // ∂KL(q‖p)/∂s_v = q_v ((a_v − b_v) − (ln Z_s − ln Z_t + KL))/T.
        let c = V::splat((lzs - lzt + kl) as f32);
        let qs = V::splat(row.gscale / zs as f32);
        pass::<V, 0>(
            s,
            t,
            shift,
            grad,
            #[inline(always)]
            |a, b, es| ([], es.mul(qs).mul(a.sub(b).sub(c))),
        );
    }
    Soft { value: kl, extras: [0.0; 5], lzs }
}
