//! A small reverse-mode automatic differentiation tape over `f64` scalars.
//!
//! Every operation appends one node holding its value's partial derivatives with respect to
//! its operands; [`Tape::backward`] walks the nodes once in reverse and accumulates adjoints.
//! Gradients are therefore exact up to floating-point rounding (no finite differences), which
//! is what lets the generator reproduce the original float64 autograd results to ~1e-12.
//!
//! Only what the losses need is here: the four arithmetic operators (with `f64` on either
//! side), `exp`, `ln`, `abs`, `powf`, `sum`, `logsumexp`, `clamp`, `max` and `detach`
//! (stop-gradient). Subgradients follow PyTorch: `abs'(0) = 0`, `clamp` passes the gradient on
//! the closed interval, `max` splits it evenly on ties.

use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A recording of scalar operations, differentiated by [`Tape::backward`].
///
/// Create one per loss evaluation, make leaves with [`Tape::var`], compute with [`Var`]
/// operators and methods, then call [`Tape::backward`] on the scalar result.
#[derive(Debug, Default)]
pub struct Tape {
    inner: RefCell<Nodes>,
}

/// Node `i` has the parent edges `edges[spans[i].0..spans[i].1]`, each `(parent, ∂node/∂parent)`.
#[derive(Debug, Default)]
struct Nodes {
    spans: Vec<(usize, usize)>,
    edges: Vec<(usize, f64)>,
}

/// A scalar recorded on a [`Tape`]: its value and its node index.
#[derive(Debug, Clone, Copy)]
pub struct Var<'t> {
    tape: &'t Tape,
    idx: usize,
    val: f64,
}

/// Adjoints of every node of a tape with respect to one output, from [`Tape::backward`].
#[derive(Debug, Clone)]
pub struct Grads {
    adjoint: Vec<f64>,
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new leaf (an input or a constant) with value `val`.
    pub fn var(&self, val: f64) -> Var<'_> {
        self.push(val, &[])
    }

    /// Leaves for a row of values.
    pub fn vars(&self, vals: &[f64]) -> Vec<Var<'_>> {
        vals.iter().map(|&v| self.var(v)).collect()
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.inner.borrow().spans.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, val: f64, parents: &[(usize, f64)]) -> Var<'_> {
        let mut n = self.inner.borrow_mut();
        let start = n.edges.len();
        n.edges.extend_from_slice(parents);
        let end = n.edges.len();
        n.spans.push((start, end));
        Var { tape: self, idx: n.spans.len() - 1, val }
    }

    /// Adjoints `∂out/∂node` of every node recorded up to `out`.
    ///
    /// # Panics
    /// If `out` belongs to another tape.
    pub fn backward(&self, out: Var<'_>) -> Grads {
        assert!(std::ptr::eq(self, out.tape), "backward: output belongs to another tape");
        let n = self.inner.borrow();
        let mut adjoint = vec![0.0; out.idx + 1];
        adjoint[out.idx] = 1.0;
        for i in (0..=out.idx).rev() {
            let a = adjoint[i];
            if a == 0.0 {
                continue;
            }
            let (s, e) = n.spans[i];
            for &(p, d) in &n.edges[s..e] {
                adjoint[p] += a * d;
            }
        }
        Grads { adjoint }
    }

    /// `Σ xs` as one node.
    pub fn sum(&self, xs: &[Var<'_>]) -> Var<'_> {
        let mut val = 0.0;
        let mut edges = Vec::with_capacity(xs.len());
        for x in xs {
            val += x.val;
            edges.push((x.idx, 1.0));
        }
        self.push(val, &edges)
    }

    /// `log Σ exp(xs)`, computed around the maximum; `∂/∂x_i = softmax(xs)_i`.
    ///
    /// # Panics
    /// If `xs` is empty.
    pub fn logsumexp(&self, xs: &[Var<'_>]) -> Var<'_> {
        assert!(!xs.is_empty(), "logsumexp of an empty row");
        let m = xs.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.val));
        let e: Vec<f64> = xs.iter().map(|x| (x.val - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let edges: Vec<(usize, f64)> = xs.iter().zip(&e).map(|(x, ei)| (x.idx, ei / s)).collect();
        self.push(m + s.ln(), &edges)
    }
}

impl Grads {
    /// `∂out/∂x`; zero for nodes recorded after the output.
    pub fn wrt(&self, x: Var<'_>) -> f64 {
        self.adjoint.get(x.idx).copied().unwrap_or(0.0)
    }
}

impl<'t> Var<'t> {
    /// The value.
    pub fn val(self) -> f64 {
        self.val
    }

    fn unary(self, val: f64, d: f64) -> Var<'t> {
        self.tape.push(val, &[(self.idx, d)])
    }

    /// `e^x`.
    pub fn exp(self) -> Var<'t> {
        let e = self.val.exp();
        self.unary(e, e)
    }

    /// `ln x`.
    pub fn ln(self) -> Var<'t> {
        self.unary(self.val.ln(), 1.0 / self.val)
    }

    /// `|x|`, with subgradient 0 at 0.
    pub fn abs(self) -> Var<'t> {
        let s = if self.val > 0.0 {
            1.0
        } else if self.val < 0.0 {
            -1.0
        } else {
            0.0
        };
        self.unary(self.val.abs(), s)
    }

    /// `x^c` for a constant exponent.
    pub fn powf(self, c: f64) -> Var<'t> {
        self.unary(self.val.powf(c), c * self.val.powf(c - 1.0))
    }

    /// `min(max(x, lo), hi)`; the gradient passes on `lo ≤ x ≤ hi`.
    pub fn clamp(self, lo: f64, hi: f64) -> Var<'t> {
        let inside = self.val >= lo && self.val <= hi;
        self.unary(self.val.clamp(lo, hi), if inside { 1.0 } else { 0.0 })
    }

    /// `max(x, y)`; on a tie the gradient is split evenly.
    pub fn max(self, y: Var<'t>) -> Var<'t> {
        let (dx, dy) = if self.val > y.val {
            (1.0, 0.0)
        } else if self.val < y.val {
            (0.0, 1.0)
        } else {
            (0.5, 0.5)
        };
        self.tape.push(self.val.max(y.val), &[(self.idx, dx), (y.idx, dy)])
    }

    /// The same value as a new leaf: gradients stop here.
    pub fn detach(self) -> Var<'t> {
        self.tape.var(self.val)
    }
}

impl<'t> Add for Var<'t> {
    type Output = Var<'t>;
    fn add(self, y: Var<'t>) -> Var<'t> {
        self.tape.push(self.val + y.val, &[(self.idx, 1.0), (y.idx, 1.0)])
    }
}

impl<'t> Sub for Var<'t> {
    type Output = Var<'t>;
    fn sub(self, y: Var<'t>) -> Var<'t> {
        self.tape.push(self.val - y.val, &[(self.idx, 1.0), (y.idx, -1.0)])
    }
}

impl<'t> Mul for Var<'t> {
    type Output = Var<'t>;
    fn mul(self, y: Var<'t>) -> Var<'t> {
        self.tape.push(self.val * y.val, &[(self.idx, y.val), (y.idx, self.val)])
    }
}

impl<'t> Div for Var<'t> {
    type Output = Var<'t>;
    fn div(self, y: Var<'t>) -> Var<'t> {
        let q = self.val / y.val;
        self.tape.push(q, &[(self.idx, 1.0 / y.val), (y.idx, -q / y.val)])
    }
}

impl<'t> Neg for Var<'t> {
    type Output = Var<'t>;
    fn neg(self) -> Var<'t> {
        self.unary(-self.val, -1.0)
    }
}

impl<'t> Add<f64> for Var<'t> {
    type Output = Var<'t>;
    fn add(self, c: f64) -> Var<'t> {
        self.unary(self.val + c, 1.0)
    }
}

impl<'t> Sub<f64> for Var<'t> {
    type Output = Var<'t>;
    fn sub(self, c: f64) -> Var<'t> {
        self.unary(self.val - c, 1.0)
    }
}

impl<'t> Mul<f64> for Var<'t> {
    type Output = Var<'t>;
    fn mul(self, c: f64) -> Var<'t> {
        self.unary(self.val * c, c)
    }
}

impl<'t> Div<f64> for Var<'t> {
    type Output = Var<'t>;
    fn div(self, c: f64) -> Var<'t> {
        self.unary(self.val / c, 1.0 / c)
    }
}

impl<'t> Add<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn add(self, x: Var<'t>) -> Var<'t> {
        x + self
    }
}

impl<'t> Sub<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn sub(self, x: Var<'t>) -> Var<'t> {
        x.unary(self - x.val, -1.0)
    }
}

impl<'t> Mul<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn mul(self, x: Var<'t>) -> Var<'t> {
        x * self
    }
}

impl<'t> Div<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn div(self, x: Var<'t>) -> Var<'t> {
        let q = self / x.val;
        x.unary(q, -q / x.val)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_rule_and_chain_rule() {
        let t = Tape::new();
        let x = t.var(1.5);
        let y = t.var(-0.25);
        // f = x·y + exp(x)/y − ln(x)
        let f = x * y + x.exp() / y - x.ln();
        let g = t.backward(f);
        let (xv, yv) = (1.5f64, -0.25f64);
        assert!((g.wrt(x) - (yv + xv.exp() / yv - 1.0 / xv)).abs() < 1e-14);
        assert!((g.wrt(y) - (xv - xv.exp() / (yv * yv))).abs() < 1e-12);
    }

    #[test]
    fn logsumexp_gradient_is_softmax() {
        let t = Tape::new();
        let xs = t.vars(&[0.5, -1.0, 2.0]);
        let g = t.backward(t.logsumexp(&xs));
        let z: f64 = [0.5f64, -1.0, 2.0].iter().map(|v| v.exp()).sum();
        for (x, v) in xs.iter().zip([0.5f64, -1.0, 2.0]) {
            assert!((g.wrt(*x) - v.exp() / z).abs() < 1e-15);
        }
    }

    #[test]
    fn detach_stops_gradient_and_max_splits_ties() {
        let t = Tape::new();
        let x = t.var(2.0);
        let f = x * x.detach() + x.max(t.var(2.0));
        let g = t.backward(f);
        assert_eq!(g.wrt(x), 2.0 + 0.5);
    }
}
