//! The kNN teacher distribution: softmax of negative distances, scattered on token values.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{KdError, Result};
use crate::logspace::f32_on;

use super::{Datastore, Dnkd, Neighbours};

/// The kNN distribution of each query over the vocabulary (kNN-MT's `p_kNN`).
///
/// ```text
/// w_ij            = softmax_j(−d_ij / T_knn)          over the k neighbours j of query i
/// knn_probs[i, v] = Σ_{neighbours j with value v} w_ij     (added in neighbour order)
/// ```
///
/// Weights and per-token sums are computed on the host in `f64`; [`KnnDistribution::probs`]
/// writes them to a dense `f32` tensor `[n, vocab]` on any device.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnDistribution {
    neighbours: Neighbours,
    values: Vec<u32>,
    weights: Vec<f64>,
    vocab: usize,
}

impl KnnDistribution {
    /// The distribution from found neighbours of `store` at temperature `knn_temperature`.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `knn_temperature ≤ 0` (or not finite), a
    /// neighbour row outside the store, or a stored token id `≥ vocab` (named
    /// `datastore_values`).
    pub fn new(
        store: &Datastore,
        neighbours: Neighbours,
        knn_temperature: f64,
        vocab: usize,
    ) -> Result<Self> {
        crate::error::check_temperature(Dnkd::ID, "knn_temperature", knn_temperature)?;
        let mut values = Vec::with_capacity(neighbours.indices().len());
        for &j in neighbours.indices() {
            let v = *store.values().get(j).ok_or(KdError::InvalidHyperparameter {
                loss: Dnkd::ID,
                name: "neighbour index",
                expected: "a row of the datastore",
                got: j as f64,
            })?;
            if v as usize >= vocab {
                return Err(KdError::InvalidHyperparameter {
                    loss: Dnkd::ID,
                    name: "datastore_values",
                    expected: "token ids below the student's vocabulary size",
                    got: f64::from(v),
                });
            }
            values.push(v);
        }
        let mut weights = Vec::with_capacity(values.len());
        for i in 0..neighbours.len() {
            let (_, d) = neighbours.row(i);
            // Softmax of −d/T, shifted by the smallest distance (its term is exactly 1).
            let d_min = d.iter().copied().fold(f64::INFINITY, f64::min);
            let e: Vec<f64> = d.iter().map(|x| (-(x - d_min) / knn_temperature).exp()).collect();
            let z: f64 = e.iter().sum();
            weights.extend(e.iter().map(|x| x / z));
        }
        Ok(Self { neighbours, values, weights, vocab })
    }

    /// The neighbours (rows and squared distances).
    pub fn neighbours(&self) -> &Neighbours {
        &self.neighbours
    }

    /// Token id of every neighbour, row-major. Shape: `[n·k]`.
    pub fn values(&self) -> &[u32] {
        &self.values
    }

    /// Softmax weight of every neighbour, row-major; each row sums to 1. Shape: `[n·k]`.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Vocabulary size `V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Number of queries `n`.
    pub fn len(&self) -> usize {
        self.neighbours.len()
    }

    /// `true` when there is no query.
    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }

    /// The non-zero entries of row `i`: `(token, probability)` in order of first appearance
    /// among the neighbours, each probability the sum of its neighbours' weights in neighbour
    /// order.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn row_probs(&self, i: usize) -> Vec<(u32, f64)> {
        let k = self.neighbours.k();
        let mut out: Vec<(u32, f64)> = Vec::with_capacity(k);
        for j in i * k..(i + 1) * k {
            let (v, w) = (self.values[j], self.weights[j]);
            match out.iter_mut().find(|(u, _)| *u == v) {
                Some((_, p)) => *p += w,
                None => out.push((v, w)),
            }
        }
        out
    }

    /// The dense distribution as an `f32` tensor on `device`. Shape: `[n, vocab]`.
    pub fn probs(&self, device: &Device) -> Tensor<2> {
        let (n, k) = (self.len(), self.neighbours.k());
        // One scatter of the (token, probability) pairs of every row; rows with fewer than k
        // distinct tokens are padded by adding 0 to their first token (exact).
        let mut ids = Vec::with_capacity(n * k);
        let mut probs = Vec::with_capacity(n * k);
        for i in 0..n {
            let row = self.row_probs(i);
            let pad = row[0].0;
            for slot in 0..k {
                let (v, p) = row.get(slot).copied().unwrap_or((pad, 0.0));
                ids.push(i64::from(v));
                probs.push(p as f32);
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, k]), device);
        let probs = Tensor::<2>::from_data(TensorData::new(probs, [n, k]), f32_on(device));
        Tensor::<2>::zeros([n, self.vocab], f32_on(device)).scatter(
            1,
            ids,
            probs,
            IndexingUpdateOp::Add,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_a_softmax_and_tokens_are_summed() {
        let store = Datastore::from_rows(1, vec![0.0, 1.0, 2.0, 3.0], vec![3, 1, 3, 0]).unwrap();
        let nn = Neighbours::new(3, vec![0, 1, 2], vec![0.0, 1.0, 4.0]);
        let knn = KnnDistribution::new(&store, nn, 2.0, 5).unwrap();
        let e = [1.0, (-0.5f64).exp(), (-2.0f64).exp()];
        let z: f64 = e.iter().sum();
        for (w, x) in knn.weights().iter().zip(e) {
            assert!((w - x / z).abs() < 1e-15);
        }
        assert_eq!(knn.values(), &[3, 1, 3]);
        let row = knn.row_probs(0);
        assert_eq!(row.len(), 2);
        assert_eq!(row[0], (3, (e[0] / z) + (e[2] / z)));
        let dense = knn.probs(&Device::flex()).into_data().try_to_vec::<f32>().unwrap();
        let want = [0.0, e[1] / z, 0.0, (e[0] + e[2]) / z, 0.0];
        for (g, w) in dense.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-7, "{dense:?}");
        }
    }

    #[test]
    fn one_neighbour_is_a_one_hot() {
        let store = Datastore::from_rows(1, vec![0.0, 1.0], vec![2, 1]).unwrap();
        let nn = Neighbours::new(1, vec![1, 0], vec![3.0, 0.5]);
        let knn = KnnDistribution::new(&store, nn, 0.01, 3).unwrap();
        assert_eq!(knn.weights(), &[1.0, 1.0]);
        let dense = knn.probs(&Device::flex()).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(dense, vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn rejects_values_outside_the_vocabulary_and_bad_temperature() {
        let store = Datastore::from_rows(1, vec![0.0, 1.0], vec![2, 7]).unwrap();
        let nn = Neighbours::new(2, vec![0, 1], vec![0.0, 1.0]);
        let e = KnnDistribution::new(&store, nn.clone(), 1.0, 5).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "datastore_values", .. }));
        let e = KnnDistribution::new(&store, nn, 0.0, 10).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "knn_temperature", .. }));
    }
}
