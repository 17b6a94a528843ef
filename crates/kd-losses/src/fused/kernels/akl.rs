//! AKL: `w_head KL(p‖q) + w_tail KL(q‖p)`, the head being the teacher's most likely tokens up
//! to cumulative mass `μ` and the weights the stop-gradient gaps `|p − q|` on head and tail.

use super::super::passes::pass;
use super::super::simd::{Lanes, exp};
use super::{Row, Soft};
use crate::logspace::LOGIT_FLOOR;

/// AKL at head mass `mu`; extras: head weight, tail weight, forward KL, reverse KL, head size.
#[inline(always)]
pub(super) fn akl<V: Lanes>(row: &Row<'_>, mu: f64, mut grad: Option<&mut [f32]>) -> Soft {
    let (s, t, shift, gscale) = (row.s, row.t, &row.shift, row.gscale);
    let (inv_t, ms) = (shift.inv_t, shift.ms);
    // Z_s, Z_t, Σ e_t (b − a), Σ e_s (a − b), and the total gap Σ |p − q| needs Z first.
    let [zs, zt, acc_f, acc_r] = pass::<V, 4>(
        s,
        t,
        shift,
        grad.as_deref_mut(),
        #[inline(always)]
        |a, b, _| {
            let (es, et) = (exp(a), exp(b));
            ([es, et, et.mul(b.sub(a)), es.mul(a.sub(b))], es)
        },
    );
    let (lzs, lzt) = (zs.ln(), zt.ln());
    let fkl = acc_f / zt - lzt + lzs;
    let rkl = acc_r / zs - lzs + lzt;
    let (lzs_v, lzt_v) = (V::splat(lzs as f32), V::splat(lzt as f32));
    // The teacher's probabilities, for the head split; Σ |p − q| on the way.
    // (Taken out of the thread-local so that no SIMD code runs inside a closure:
    // closures do not inherit the kernel's target features.)
    let mut pbuf = P_SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    pbuf.clear();
    pbuf.resize(s.len(), 0.0);
    let [total_gap] = pass::<V, 1>(
        s,
        t,
        shift,
        Some(&mut pbuf[..]),
        #[inline(always)]
        |a, b, _| {
            let (q, p) = (exp(a.sub(lzs_v)), exp(b.sub(lzt_v)));
            let d = p.sub(q);
            ([d.max(V::splat(0.0).sub(d))], p)
        },
    );
    let (head_gap, head_size) = head_gap(&pbuf, mu, |v| {
        let a = (s[v] as f64).max(LOGIT_FLOOR) * inv_t as f64 - ms as f64;
        (a - lzs).exp()
    });
    P_SCRATCH.with(|cell| *cell.borrow_mut() = pbuf);
    // The head's gap (f64) and the total (f32 lanes) round differently: take the tail
    // as the non-negative remainder so the weights stay in [0, 1].
    let tail_gap = (total_gap - head_gap).max(0.0);
    let w_head = head_gap / (head_gap + tail_gap).max(1e-30);
    let w_tail = 1.0 - w_head;
    if grad.is_some() {
        // w_head (q − p)/T + w_tail q ((a − b) − (ln Z_s − ln Z_t + KL(q‖p)))/T.
        let qs = V::splat(gscale / zs as f32);
        let (wh, wt) = (V::splat(w_head as f32), V::splat(w_tail as f32));
        let c = V::splat((lzs - lzt + rkl) as f32);
        pass::<V, 0>(
            s,
            t,
            shift,
            grad,
            #[inline(always)]
            |a, b, es| {
                let q = es.mul(qs);
                let p = V::splat(gscale).mul(exp(b.sub(lzt_v)));
                ([], wh.mul(q.sub(p)).add(wt.mul(q).mul(a.sub(b).sub(c))))
            },
        );
    }
    let value = w_head * fkl + w_tail * rkl;
    Soft { value, extras: [w_head, w_tail, fkl, rkl, head_size as f64], lzs }
}

thread_local! {
    /// Per-thread row of teacher probabilities for AKL's head split.
    static P_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// AKL's head: the teacher's tokens in descending probability (ties by index) while the
/// running sum stays `≤ μ`, and always the top-1. Returns `Σ_head |p − q|` (with `q(v)` giving
/// the student's probability) and the head size.
///
/// A radix select on the bit patterns of `p` (non-negative floats order like their bits):
/// 2048 buckets by the top bits; whole buckets above the boundary are head, and only the
/// boundary bucket is sorted. O(V) per row plus the boundary bucket's sort.
pub(super) fn head_gap(p: &[f32], mu: f64, q: impl Fn(usize) -> f64) -> (f64, usize) {
    const SHIFT: u32 = 20;
    const BUCKETS: usize = 1 << (32 - SHIFT - 1); // sign bit is 0
    let mut mass = vec![0f64; BUCKETS];
    for &x in p {
        mass[(x.to_bits() >> SHIFT) as usize] += x as f64;
    }
    let mut cum = 0f64;
    let mut boundary = None;
    for b in (0..BUCKETS).rev() {
        if mass[b] == 0.0 {
            // Empty, or only zeros: they never change the running sum.
            continue;
        }
        if cum + mass[b] <= mu {
            cum += mass[b];
        } else {
            boundary = Some(b);
            break;
        }
    }
    // Head: every token above the boundary bucket, plus a prefix of the boundary bucket.
    let boundary_bucket = boundary.unwrap_or(0);
    let mut inside: Vec<(f32, usize)> = Vec::new();
    let mut gap = 0f64;
    let mut size = 0usize;
    for (v, &x) in p.iter().enumerate() {
        let b = (x.to_bits() >> SHIFT) as usize;
        if boundary.is_some() && b == boundary_bucket {
            inside.push((x, v));
        } else if boundary.is_none() || b > boundary_bucket {
            // Above the boundary, or every token when the whole mass fits in μ.
            gap += (x as f64 - q(v)).abs();
            size += 1;
        }
    }
    if boundary.is_some() {
        inside.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (i, &(x, v)) in inside.iter().enumerate() {
            // The top-1 overall is head even when it alone exceeds μ.
            let first_overall = size == 0 && i == 0;
            if cum + x as f64 <= mu || first_overall {
                cum += x as f64;
                gap += (x as f64 - q(v)).abs();
                size += 1;
            } else {
                break;
            }
        }
    }
    (gap, size)
}
