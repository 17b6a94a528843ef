//! The mixture family: generalized JSD, skew forward and reverse KL, and TVD. Their gradients
//! all have the form `q ⊙ (h − Σ q h)/T` with an element factor `h = ∂value/∂q`, so one kernel
//! computes them, with the kind's element terms ([`mixture_terms`]) plugged in.

use super::super::passes::{give_row, pass, pass2, pass2_read_r, take_row};
use super::super::simd::{Lanes, exp, ln};
use super::{FusedKind, Row, Soft};

/// One of the mixture kinds (`Jsd`, `SkewForwardKl`, `SkewReverseKl`, `Tvd`). Extras: `KL(p‖m)`
/// and `KL(q‖m)` for JSD, the cross-entropy form `−Σ p log m` for skew forward KL.
#[inline(always)]
pub(super) fn mixture<V: Lanes>(
    row: &Row<'_>,
    kind: FusedKind,
    mut grad: Option<&mut [f32]>,
) -> Soft {
    let (s, t, shift, gscale) = (row.s, row.t, &row.shift, row.gscale);
    let tracked = grad.is_some();
    // Z_s, Z_t; scratch g ← e_s, r ← e_t (tracked only).
    let mut scratch = if tracked { take_row(s.len()) } else { Vec::new() };
    let [zs, zt] = pass2::<V, 2>(
        s,
        t,
        shift,
        grad.as_deref_mut(),
        if tracked { Some(&mut scratch[..]) } else { None },
        #[inline(always)]
        |a, b, _, _| {
            let (es, et) = (exp(a), exp(b));
            ([es, et], es, et)
        },
    );
    let (lzs, lzt) = (zs.ln(), zt.ln());
    let (inv_zs, inv_zt) = (V::splat(1.0 / zs as f32), V::splat(1.0 / zt as f32));
    // Mixture weights (teacher, student) of m.
    let (wp, wq) = match kind {
        FusedKind::Jsd { beta } => (beta, 1.0 - beta),
        FusedKind::SkewForwardKl { alpha } => (alpha, 1.0 - alpha),
        FusedKind::SkewReverseKl { alpha } => (1.0 - alpha, alpha),
        _ => (0.5, 0.5),
    };
    let (wp, wq) = (wp as f32, wq as f32);
    let c = Consts {
        lzs: V::splat(lzs as f32),
        lzt: V::splat(lzt as f32),
        wp: V::splat(wp),
        wq: V::splat(wq),
        lwp: V::splat(wp.ln()),
        lwq: V::splat(wq.ln()),
    };
    // Σ term0, Σ term1, Σ q h; scratch g: e_s → h, r: e_t → q.
    let [v0, v1, qh] = if tracked {
        pass2::<V, 3>(
            s,
            t,
            shift,
            grad.as_deref_mut(),
            Some(&mut scratch[..]),
            #[inline(always)]
            |a, b, es, et| {
                let (q, p) = (es.mul(inv_zs), et.mul(inv_zt));
                let ([x, y], h) = mixture_terms(kind, &c, a, b, q, p);
                ([x, y, q.mul(h)], h, q)
            },
        )
    } else {
        let [x, y] = pass::<V, 2>(
            s,
            t,
            shift,
            None,
            #[inline(always)]
            |a, b, _| {
                let (q, p) = (exp(a.sub(c.lzs)), exp(b.sub(c.lzt)));
                (mixture_terms(kind, &c, a, b, q, p).0, q)
            },
        );
        [x, y, 0.0]
    };
    if tracked {
        // ∂/∂s_v = q_v (h_v − Σ_u q_u h_u)/T.
        let k = V::splat(qh as f32);
        let gs = V::splat(gscale);
        pass2_read_r::<V, 0>(
            s,
            t,
            shift,
            grad,
            Some(&mut scratch[..]),
            #[inline(always)]
            |_, _, h, q| ([], gs.mul(q).mul(h.sub(k)), q),
        );
        give_row(scratch);
    }
    match kind {
        FusedKind::Jsd { beta } => {
            Soft { value: beta * v0 + (1.0 - beta) * v1, extras: [v0, v1, 0.0, 0.0, 0.0], lzs }
        }
        FusedKind::SkewForwardKl { .. } => {
            Soft { value: v0, extras: [-v1, 0.0, 0.0, 0.0, 0.0], lzs }
        }
        _ => Soft { value: v0, extras: [0.0; 5], lzs },
    }
}

/// Per-row constants of the element terms of the mixture family.
struct Consts<V> {
    /// `ln Z_s`, `ln Z_t`.
    lzs: V,
    lzt: V,
    /// Mixture weights of teacher and student and their logs (JSD, skew KLs).
    wp: V,
    wq: V,
    lwp: V,
    lwq: V,
}

/// `log m = log(wp p + wq q)`, clamped below by `max(log wp + log p, log wq + log q)`.
#[inline(always)]
fn log_mix<V: Lanes>(c: &Consts<V>, p: V, q: V, lp: V, lq: V) -> V {
    ln(c.wp.mul_add(p, c.wq.mul(q))).max(c.lwp.add(lp).max(c.lwq.add(lq)))
}

/// Element terms of the kinds whose gradient is `q ⊙ (h − Σ q h)/T`: two summed value terms
/// and `h = ∂value/∂q` up to a constant. `log m` is clamped below by its exact bound
/// `max(log wp + log p, log wq + log q)`, so underflow cannot give −inf.
#[inline(always)]
fn mixture_terms<V: Lanes>(kind: FusedKind, c: &Consts<V>, a: V, b: V, q: V, p: V) -> ([V; 2], V) {
    let (lq, lp) = (a.sub(c.lzs), b.sub(c.lzt));
    match kind {
        FusedKind::Jsd { .. } => {
            // β KL(p‖m) + (1 − β) KL(q‖m);  h = (1 − β)(log q − log m).
            let lm = log_mix(c, p, q, lp, lq);
            let rq = lq.sub(lm);
            ([p.mul(lp.sub(lm)), q.mul(rq)], c.wq.mul(rq))
        }
        FusedKind::SkewForwardKl { .. } => {
            // KL(p‖m);  h = −(1 − α) p/m.
            let lm = log_mix(c, p, q, lp, lq);
            ([p.mul(lp.sub(lm)), p.mul(lm)], c.wq.mul(exp(lp.sub(lm))).mul(V::splat(-1.0)))
        }
        FusedKind::SkewReverseKl { .. } => {
            // KL(q‖m);  h = log q − log m − α q/m  (the +1 cancels against Σ q h).
            let lm = log_mix(c, p, q, lp, lq);
            let r = lq.sub(lm);
            ([q.mul(r), V::splat(0.0)], r.sub(c.wq.mul(exp(r))))
        }
        FusedKind::Tvd => {
            // ½ Σ |p − q|;  h = ½ sign(q − p), taken as 0 when q and p agree to rounding (the
            // subgradient the composed path takes at equal distributions).
            let d = q.sub(p);
            let (half, zero) = (V::splat(0.5), V::splat(0.0));
            let abs = d.max(zero.sub(d));
            let sign = d.select_lt(zero, V::splat(-0.5), half);
            let h = V::splat(1e-6).mul(p.add(q)).select_lt(abs, sign, zero);
            ([abs.mul(half), zero], h)
        }
        FusedKind::ForwardKl
        | FusedKind::ReverseKl
        | FusedKind::Taid { .. }
        | FusedKind::Akl { .. } => unreachable!("not a mixture-family kind"),
    }
}
