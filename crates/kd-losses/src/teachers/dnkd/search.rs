//! Nearest-neighbour search over a [`Datastore`]: the [`NeighbourIndex`] trait and the exact
//! brute-force [`ExactIndex`].

use std::cmp::Ordering;
use std::fmt;

use rayon::prelude::*;

use crate::error::{KdError, Result};

use super::{Datastore, Dnkd};

/// The `k` nearest datastore entries of each of `n` queries, ascending by distance.
///
/// ```text
/// indices   [n][k]   datastore rows, nearest first; equal distances -> lower row first
/// distances [n][k]   d_ij = Σ_h (q_ih − key_jh)²   (squared L2, accumulated in f64)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    indices: Vec<usize>,
    distances: Vec<f64>,
}

impl Neighbours {
    /// Packs row-major `[n·k]` indices and distances.
    ///
    /// # Panics
    /// When the two lengths differ or are not a multiple of `k ≥ 1`.
    pub fn new(k: usize, indices: Vec<usize>, distances: Vec<f64>) -> Self {
        assert!(
            k > 0 && indices.len() == distances.len() && indices.len().is_multiple_of(k),
            "neighbours: {} indices and {} distances for k = {k}",
            indices.len(),
            distances.len()
        );
        Self { k, indices, distances }
    }

    /// Neighbours per query.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of queries `n`.
    pub fn len(&self) -> usize {
        self.indices.len() / self.k
    }

    /// `true` when there is no query.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// All indices, row-major. Shape: `[n·k]`.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// All squared distances, row-major. Shape: `[n·k]`.
    pub fn distances(&self) -> &[f64] {
        &self.distances
    }

    /// Indices and distances of query `i`. Shape: `[k], [k]`.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn row(&self, i: usize) -> (&[usize], &[f64]) {
        let r = i * self.k..(i + 1) * self.k;
        (&self.indices[r.clone()], &self.distances[r])
    }
}

/// A k-nearest-neighbour search over the keys of a [`Datastore`] under squared L2.
///
/// Contract of [`search`](NeighbourIndex::search): for each of the `n = queries.len() / H`
/// queries, exactly `k` distinct datastore rows, ascending by `(distance, row)` — equal
/// distances put the lower row first — with distances computed by [`squared_l2`]. An exact
/// index returns the true `k` nearest; an approximate one the `k` nearest among the rows it
/// examines.
///
/// Implementations: [`ExactIndex`] (brute force) and [`super::IvfIndex`] (inverted lists).
pub trait NeighbourIndex: fmt::Debug + Send + Sync {
    /// The `k` nearest entries of each query. `queries` is row-major `[n·H]`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `queries.len()` is not a multiple of the store's `H`;
    /// [`KdError::InvalidHyperparameter`] for `k = 0`, `k` above the store size, or a
    /// non-finite query entry; index-specific errors (e.g. an index built over another store).
    fn search(&self, store: &Datastore, queries: &[f32], k: usize) -> Result<Neighbours>;
}

/// `Σ_h (a_h − b_h)²`, computed directly (no `|a|² + |b|² − 2ab`), accumulated in `f64` in a
/// fixed order (eight lanes `h mod 8`, then a fixed pairwise sum), so every index gives
/// bit-identical distances.
pub fn squared_l2(a: &[f32], b: &[f32]) -> f64 {
    // Eight independent f64 accumulators in a fixed order: deterministic, and the compiler
    // vectorises them (a single running sum is a chain of dependent adds, ~30× slower on the
    // DNKD example's 157k × 128 store).
    let mut acc = [0.0f64; LANES];
    let (xa, xb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (xa.remainder(), xb.remainder());
    for (x, y) in xa.zip(xb) {
        for i in 0..LANES {
            let d = f64::from(x[i]) - f64::from(y[i]);
            acc[i] += d * d;
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        let d = f64::from(*x) - f64::from(*y);
        tail += d * d;
    }
    let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// Accumulators of [`squared_l2`].
const LANES: usize = 8;

/// The neighbour order: distance ascending, then lower row first.
pub(crate) fn by_distance_then_row(a: &(f64, usize), b: &(f64, usize)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Keeps the `k` smallest candidates, sorted by [`by_distance_then_row`].
pub(crate) fn smallest_k(mut cand: Vec<(f64, usize)>, k: usize) -> Vec<(f64, usize)> {
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, by_distance_then_row);
        cand.truncate(k);
    }
    cand.sort_unstable_by(by_distance_then_row);
    cand
}

/// Checks a search request; returns the number of queries.
pub(crate) fn check_search(store: &Datastore, queries: &[f32], k: usize) -> Result<usize> {
    let dim = store.dim();
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(KdError::ShapeMismatch {
            what: "query_hidden [rows, dim] vs datastore dim".into(),
            expected: vec![queries.len() / dim.max(1), dim],
            got: vec![1, queries.len()],
        });
    }
    if k == 0 || k > store.len() {
        return Err(KdError::InvalidHyperparameter {
            loss: Dnkd::ID,
            name: "k",
            expected: "1 ≤ k ≤ the number of datastore entries",
            got: k as f64,
        });
    }
    if let Some(bad) = queries.iter().find(|x| !x.is_finite()) {
        return Err(KdError::InvalidHyperparameter {
            loss: Dnkd::ID,
            name: "query_hidden",
            expected: "finite values",
            got: f64::from(*bad),
        });
    }
    Ok(queries.len() / dim)
}

/// Flattens per-query neighbour lists into [`Neighbours`].
pub(crate) fn pack(k: usize, rows: Vec<Vec<(f64, usize)>>) -> Neighbours {
    let (mut indices, mut distances) = (Vec::new(), Vec::new());
    for row in rows {
        debug_assert_eq!(row.len(), k);
        for (d, j) in row {
            indices.push(j);
            distances.push(d);
        }
    }
    Neighbours::new(k, indices, distances)
}

/// Exact brute-force search: every key's distance to every query, then the `k` smallest.
///
/// ```text
/// d_ij = Σ_h (q_ih − key_jh)²   for all j;  keep the k smallest by (d_ij, j)
/// ```
///
/// Cost `O(n·M·H)`, parallel over queries (rayon). The reference every approximate index is
/// measured against.
///
/// # Errors
/// See [`NeighbourIndex::search`].
///
/// # Example
/// ```
/// use kd_losses::teachers::dnkd::{Datastore, ExactIndex, NeighbourIndex};
///
/// let store = Datastore::from_rows(1, vec![0.0, 3.0, 1.0, 1.0], vec![5, 6, 7, 8])?;
/// let nn = ExactIndex.search(&store, &[0.9], 3)?;
/// // Rows 2 and 3 tie at distance 0.01: the lower row comes first.
/// assert_eq!(nn.row(0).0, &[2, 3, 0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExactIndex;

impl NeighbourIndex for ExactIndex {
    fn search(&self, store: &Datastore, queries: &[f32], k: usize) -> Result<Neighbours> {
        let n = check_search(store, queries, k)?;
        let dim = store.dim();
        let rows = (0..n)
            .into_par_iter()
            .map(|i| {
                let q = &queries[i * dim..(i + 1) * dim];
                let cand = (0..store.len()).map(|j| (squared_l2(q, store.key(j)), j)).collect();
                smallest_k(cand, k)
            })
            .collect();
        Ok(pack(k, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_matches_a_full_sort_and_breaks_ties_by_row() {
        // Keys on a line, several at equal distance from the query 2.0.
        let keys = vec![4.0, 0.0, 2.0, 3.0, 1.0, 2.0, 0.0, 4.0];
        let store = Datastore::from_rows(1, keys.clone(), vec![0; 8]).unwrap();
        let nn = ExactIndex.search(&store, &[2.0, -1.0], 5).unwrap();
        assert_eq!(nn.len(), 2);
        let (idx, dist) = nn.row(0);
        assert_eq!(idx, &[2, 5, 3, 4, 0]);
        assert_eq!(dist, &[0.0, 0.0, 1.0, 1.0, 4.0]);
        let (idx, dist) = nn.row(1);
        assert_eq!(idx, &[1, 6, 4, 2, 5]);
        assert_eq!(dist, &[1.0, 1.0, 4.0, 9.0, 9.0]);
        // k = M returns every row.
        let all = ExactIndex.search(&store, &[2.0], 8).unwrap();
        assert_eq!(all.row(0).0, &[2, 5, 3, 4, 0, 1, 6, 7]);
    }

    #[test]
    fn distance_is_the_direct_sum_of_squares() {
        assert_eq!(squared_l2(&[1.0, -2.0, 0.5], &[0.0, 1.0, 0.5]), 10.0);
        // Large offsets: the direct form keeps the small difference exactly.
        assert_eq!(squared_l2(&[1.0e4 + 1.0], &[1.0e4]), 1.0);
    }

    #[test]
    fn rejects_bad_requests() {
        let store = Datastore::from_rows(2, vec![0.0; 6], vec![1, 2, 3]).unwrap();
        let e = ExactIndex.search(&store, &[0.0, 0.0], 0).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "k", .. }), "{e}");
        let e = ExactIndex.search(&store, &[0.0, 0.0], 4).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "k", .. }), "{e}");
        let e = ExactIndex.search(&store, &[0.0, 0.0, 0.0], 1).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let e = ExactIndex.search(&store, &[0.0, f32::INFINITY], 1).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "query_hidden", .. }));
    }
}
