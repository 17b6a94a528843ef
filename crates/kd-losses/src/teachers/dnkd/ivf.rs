//! An approximate [`NeighbourIndex`] for large datastores: an inverted-file (IVF) index.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result, check_range};
use crate::teachers::rng::NoiseRng;

use super::search::{by_distance_then_row, check_search, pack, smallest_k, squared_l2};
use super::{Datastore, Dnkd, NeighbourIndex, Neighbours};

loss_config! {
    /// Config of [`IvfIndex`].
    pub struct IvfConfig, new: "Defaults: 64 lists, 8 probed, 25 k-means iterations, seed 0, at most 65 536 training keys." {
        /// Number of inverted lists (k-means centroids), `1 ≤ nlist ≤ M` (default `64`).
        /// A common choice is about `√M`.
        nlist: usize = 64 => with_nlist,
        /// Lists searched per query, `1 ≤ nprobe ≤ nlist` (default `8`); `nprobe = nlist` is
        /// exact search.
        nprobe: usize = 8 => with_nprobe,
        /// Lloyd iterations of k-means, `≥ 1` (default `25`; stops early when no key moves).
        iterations: usize = 25 => with_iterations,
        /// Seed of the k-means++ initialisation and of the training sample (default `0`).
        seed: u64 = 0 => with_seed,
        /// At most this many keys (a seeded sample) train the centroids, `≥ nlist`
        /// (default `65 536`); every key is then assigned to its list.
        train_size: usize = 65_536 => with_train_size,
    }
}

/// Inverted-file index: keys are partitioned by their nearest k-means centroid, and a query
/// searches only the `nprobe` lists whose centroids are nearest to it, exactly.
///
/// ```text
/// build:   centroids c_1..c_L = k-means(keys)  (seeded k-means++ init, Lloyd iterations)
///          list_l = { j : argmin_l' ‖key_j − c_l'‖² = l }   (ties -> lower l)
/// search:  probe the lists of the nprobe nearest centroids (more, in centroid order, until
///          at least k keys are seen); exact squared L2 on those keys; k smallest by (d, row)
/// ```
///
/// With `nprobe = nlist` every key is examined and the result equals [`super::ExactIndex`]'s
/// bit for bit. Building is deterministic for a given seed (the same store gives the same
/// index on every run and thread count). Search is parallel over queries (rayon).
///
/// The index remembers how many store rows it covers: after pushing more rows to the store,
/// call [`IvfIndex::update`] (new keys join their nearest list; centroids stay) or rebuild.
/// It cannot detect a different store of the same size: search the store it was built on.
///
/// # Errors
/// [`IvfIndex::build`]: [`KdError::InvalidHyperparameter`] for a config outside its ranges.
/// Search: see [`NeighbourIndex::search`]; also [`KdError::ShapeMismatch`] when the store's
/// size or key dimension differs from what the index covers.
///
/// Reference: Jégou, Douze & Schmid, *Product quantization for nearest neighbor search*
/// (TPAMI 2011), the IVF scheme of FAISS `IndexIVFFlat` (what kNN-MT and kNN-KD use for large
/// datastores, <https://github.com/facebookresearch/faiss>).
///
/// # Example
/// ```
/// use kd_losses::teachers::dnkd::{Datastore, ExactIndex, IvfConfig, IvfIndex, NeighbourIndex};
///
/// // 200 keys on a line, 8 lists.
/// let keys: Vec<f32> = (0..200).map(|i| i as f32 * 0.5).collect();
/// let store = Datastore::from_rows(1, keys, (0..200).map(|i| i % 7).collect())?;
/// let ivf = IvfIndex::build(&store, &IvfConfig::new().with_nlist(8).with_nprobe(2))?;
/// let approx = ivf.search(&store, &[10.2, 77.7], 4)?;
/// let exact = ExactIndex.search(&store, &[10.2, 77.7], 4)?;
/// assert_eq!(approx, exact);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IvfIndex {
    dim: usize,
    nprobe: usize,
    /// Row-major `[nlist·dim]`.
    centroids: Vec<f32>,
    /// Store rows of each list, ascending.
    lists: Vec<Vec<usize>>,
    /// Store rows covered (`0..indexed`).
    indexed: usize,
}

impl IvfIndex {
    /// Trains the centroids on (a sample of) the store's keys and fills the lists.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `nlist` is 0 or above the store size, `nprobe`
    /// leaves `[1, nlist]`, `iterations = 0` or `train_size < nlist`.
    pub fn build(store: &Datastore, config: &IvfConfig) -> Result<Self> {
        let m = store.len() as f64;
        let nlist = config.nlist;
        check_range(Dnkd::ID, "nlist", nlist as f64, 1.0, m, "1 ≤ nlist ≤ datastore entries")?;
        check_nprobe(config.nprobe, nlist)?;
        let inf = f64::INFINITY;
        check_range(Dnkd::ID, "iterations", config.iterations as f64, 1.0, inf, "a value ≥ 1")?;
        check_range(
            Dnkd::ID,
            "train_size",
            config.train_size as f64,
            nlist as f64,
            inf,
            "≥ nlist",
        )?;

        let dim = store.dim();
        let mut rng = NoiseRng::new(config.seed);
        let sample = training_sample(store, config.train_size, &mut rng);
        let centroids = kmeans(&sample, dim, nlist, config.iterations, &mut rng);
        let mut index = Self {
            dim,
            nprobe: config.nprobe,
            centroids,
            lists: vec![Vec::new(); nlist],
            indexed: 0,
        };
        index.update(store)?;
        Ok(index)
    }

    /// Assigns the store rows pushed since the index was built (or last updated) to their
    /// nearest lists; returns how many were added. Centroids are not retrained.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the store's key dimension differs or it has fewer rows
    /// than the index covers.
    pub fn update(&mut self, store: &Datastore) -> Result<usize> {
        if store.dim() != self.dim || store.len() < self.indexed {
            return Err(KdError::ShapeMismatch {
                what: "datastore [entries, dim] vs the rows an IVF index covers".into(),
                expected: vec![self.indexed, self.dim],
                got: vec![store.len(), store.dim()],
            });
        }
        let (from, to) = (self.indexed, store.len());
        let assigned: Vec<usize> = (from..to)
            .into_par_iter()
            .map(|j| nearest(store.key(j), &self.centroids, self.dim))
            .collect();
        for (j, c) in (from..to).zip(assigned) {
            self.lists[c].push(j);
        }
        self.indexed = to;
        Ok(to - from)
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    /// Lists probed per query.
    pub fn nprobe(&self) -> usize {
        self.nprobe
    }

    /// Changes the number of lists probed per query.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `nprobe` leaves `[1, nlist]`.
    pub fn set_nprobe(&mut self, nprobe: usize) -> Result<()> {
        check_nprobe(nprobe, self.nlist())?;
        self.nprobe = nprobe;
        Ok(())
    }

    /// The centroids, row-major. Shape: `[nlist·H]`.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// Store rows in list `l`, ascending.
    ///
    /// # Panics
    /// When `l >= nlist()`.
    pub fn list(&self, l: usize) -> &[usize] {
        &self.lists[l]
    }

    /// Number of store rows the index covers.
    pub fn indexed(&self) -> usize {
        self.indexed
    }
}

impl NeighbourIndex for IvfIndex {
    fn search(&self, store: &Datastore, queries: &[f32], k: usize) -> Result<Neighbours> {
        if store.dim() != self.dim || store.len() != self.indexed {
            return Err(KdError::ShapeMismatch {
                what: "datastore [entries, dim] vs the rows the IVF index covers \
                       (call IvfIndex::update after pushing)"
                    .into(),
                expected: vec![self.indexed, self.dim],
                got: vec![store.len(), store.dim()],
            });
        }
        let n = check_search(store, queries, k)?;
        let dim = self.dim;
        let rows = (0..n)
            .into_par_iter()
            .map(|i| {
                let q = &queries[i * dim..(i + 1) * dim];
                let mut order: Vec<(f64, usize)> = (0..self.nlist())
                    .map(|l| (squared_l2(q, &self.centroids[l * dim..(l + 1) * dim]), l))
                    .collect();
                order.sort_unstable_by(by_distance_then_row);
                let mut cand = Vec::new();
                for (probed, &(_, l)) in order.iter().enumerate() {
                    if probed >= self.nprobe && cand.len() >= k {
                        break;
                    }
                    cand.extend(self.lists[l].iter().map(|&j| (squared_l2(q, store.key(j)), j)));
                }
                smallest_k(cand, k)
            })
            .collect();
        Ok(pack(k, rows))
    }
}

fn check_nprobe(nprobe: usize, nlist: usize) -> Result<()> {
    check_range(Dnkd::ID, "nprobe", nprobe as f64, 1.0, nlist as f64, "1 ≤ nprobe ≤ nlist")
}

/// Keys used to train the centroids: all of them, or a seeded sample of `train_size` rows
/// (partial Fisher–Yates), kept in store order. Row-major.
fn training_sample(store: &Datastore, train_size: usize, rng: &mut NoiseRng) -> Vec<f32> {
    if store.len() <= train_size {
        return store.keys().to_vec();
    }
    let mut rows: Vec<usize> = (0..store.len()).collect();
    for i in 0..train_size {
        let j = i + rng.below(rows.len() - i);
        rows.swap(i, j);
    }
    rows.truncate(train_size);
    rows.sort_unstable();
    rows.iter().flat_map(|&j| store.key(j).iter().copied()).collect()
}

/// The nearest centroid of `x` (lowest index on ties).
fn nearest(x: &[f32], centroids: &[f32], dim: usize) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (l, c) in centroids.chunks_exact(dim).enumerate() {
        let d = squared_l2(x, c);
        if d < best.0 {
            best = (d, l);
        }
    }
    best.1
}

/// Seeded k-means: k-means++ initialisation, then Lloyd iterations with means accumulated in
/// `f64` in point order (deterministic whatever the thread count). An empty cluster keeps its
/// previous centroid. Returns the centroids, row-major `[nlist·dim]`.
fn kmeans(
    points: &[f32],
    dim: usize,
    nlist: usize,
    iterations: usize,
    rng: &mut NoiseRng,
) -> Vec<f32> {
    let n = points.len() / dim;
    let point = |i: usize| &points[i * dim..(i + 1) * dim];
    // k-means++: each next centroid drawn with probability ∝ squared distance to the nearest
    // centroid so far (uniformly when every point already coincides with a centroid).
    let mut centroids = point(rng.below(n)).to_vec();
    let mut d2: Vec<f64> =
        (0..n).into_par_iter().map(|i| squared_l2(point(i), &centroids)).collect();
    for _ in 1..nlist {
        let total: f64 = d2.iter().sum();
        let chosen = if total > 0.0 {
            let r = rng.unit() * total;
            let mut acc = 0.0;
            d2.iter()
                .position(|d| {
                    acc += d;
                    acc > r
                })
                // Rounding can leave r just above the last partial sum: take the last positive.
                .unwrap_or_else(|| d2.iter().rposition(|d| *d > 0.0).unwrap_or(n - 1))
        } else {
            rng.below(n)
        };
        let c = point(chosen).to_vec();
        d2.par_iter_mut().enumerate().for_each(|(i, d)| *d = d.min(squared_l2(point(i), &c)));
        centroids.extend_from_slice(&c);
    }
    // Lloyd iterations.
    let mut assign: Vec<usize> = Vec::new();
    for _ in 0..iterations {
        let next: Vec<usize> =
            (0..n).into_par_iter().map(|i| nearest(point(i), &centroids, dim)).collect();
        if next == assign {
            break;
        }
        assign = next;
        let mut sums = vec![0f64; nlist * dim];
        let mut counts = vec![0usize; nlist];
        for (i, &l) in assign.iter().enumerate() {
            counts[l] += 1;
            for (s, x) in sums[l * dim..(l + 1) * dim].iter_mut().zip(point(i)) {
                *s += f64::from(*x);
            }
        }
        for l in 0..nlist {
            if counts[l] > 0 {
                for h in 0..dim {
                    centroids[l * dim + h] = (sums[l * dim + h] / counts[l] as f64) as f32;
                }
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teachers::dnkd::ExactIndex;

    /// A standard normal draw (Box–Muller).
    fn normal(rng: &mut NoiseRng) -> f32 {
        let u = 1.0 - rng.unit();
        let v = rng.unit();
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    /// `n` points of a mixture of `clusters` Gaussians (std 1, centres std 4) in `dim` dims.
    fn mixture(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let mut rng = NoiseRng::new(seed);
        let centres: Vec<f32> = (0..clusters * dim).map(|_| 4.0 * normal(&mut rng)).collect();
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = rng.below(clusters);
            for h in 0..dim {
                out.push(centres[c * dim + h] + normal(&mut rng));
            }
        }
        out
    }

    fn uniform(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = NoiseRng::new(seed);
        (0..n * dim).map(|_| rng.unit() as f32).collect()
    }

    fn recall(approx: &Neighbours, exact: &Neighbours) -> f64 {
        let mut hit = 0;
        for i in 0..exact.len() {
            let truth = exact.row(i).0;
            hit += approx.row(i).0.iter().filter(|j| truth.contains(j)).count();
        }
        hit as f64 / exact.indices().len() as f64
    }

    #[test]
    fn full_probe_equals_exact_search() {
        // Integer keys with many exact ties and duplicates.
        let keys: Vec<f32> = uniform(300 * 4, 1, 3).iter().map(|x| (x * 5.0).floor()).collect();
        let store = Datastore::from_rows(4, keys, vec![0; 300]).unwrap();
        let queries: Vec<f32> = uniform(20 * 4, 1, 4).iter().map(|x| (x * 5.0).floor()).collect();
        let cfg = IvfConfig::new().with_nlist(12).with_nprobe(12);
        let ivf = IvfIndex::build(&store, &cfg).unwrap();
        for k in [1, 7, 300] {
            let exact = ExactIndex.search(&store, &queries, k).unwrap();
            assert_eq!(ivf.search(&store, &queries, k).unwrap(), exact, "k = {k}");
        }
    }

    #[test]
    fn recall_at_10_is_high_on_random_data() {
        let (dim, k) = (16, 10);
        let store = Datastore::from_rows(dim, mixture(4000, dim, 50, 1), vec![0; 4000]).unwrap();
        let queries = mixture(200, dim, 50, 1 + 7);
        let exact = ExactIndex.search(&store, &queries, k).unwrap();
        let mut ivf =
            IvfIndex::build(&store, &IvfConfig::new().with_nlist(64).with_nprobe(8)).unwrap();
        let r = recall(&ivf.search(&store, &queries, k).unwrap(), &exact);
        assert!(r >= 0.9, "clustered recall@10 at nprobe 8/64: {r}");
        ivf.set_nprobe(1).unwrap();
        let r1 = recall(&ivf.search(&store, &queries, k).unwrap(), &exact);
        assert!(r1 < r, "fewer probes, lower recall: {r1} vs {r}");

        // Uniform (unclustered) keys are the hard case: a quarter of the lists.
        let store = Datastore::from_rows(8, uniform(4000 * 8, 1, 5), vec![0; 4000]).unwrap();
        let queries = uniform(200 * 8, 1, 6);
        let exact = ExactIndex.search(&store, &queries, k).unwrap();
        let ivf = IvfIndex::build(&store, &IvfConfig::new().with_nlist(32).with_nprobe(8)).unwrap();
        let r = recall(&ivf.search(&store, &queries, k).unwrap(), &exact);
        assert!(r >= 0.9, "uniform recall@10 at nprobe 8/32: {r}");
    }

    #[test]
    fn build_is_deterministic_and_seeded() {
        let store = Datastore::from_rows(8, mixture(500, 8, 10, 2), vec![0; 500]).unwrap();
        let cfg = IvfConfig::new().with_nlist(10).with_train_size(300);
        let a = IvfIndex::build(&store, &cfg).unwrap();
        assert_eq!(a, IvfIndex::build(&store, &cfg).unwrap());
        assert_ne!(a, IvfIndex::build(&store, &cfg.clone().with_seed(9)).unwrap());
        let covered: usize = (0..a.nlist()).map(|l| a.list(l).len()).sum();
        assert_eq!(covered, 500);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<IvfIndex>(&json).unwrap(), a);
    }

    #[test]
    fn update_covers_new_rows_and_stale_index_is_refused() {
        let mut store = Datastore::from_rows(2, mixture(100, 2, 4, 3), vec![1; 100]).unwrap();
        let mut ivf =
            IvfIndex::build(&store, &IvfConfig::new().with_nlist(4).with_nprobe(4)).unwrap();
        store.push(&[100.0, 100.0], 2).unwrap();
        let e = ivf.search(&store, &[100.0, 100.0], 1).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        assert_eq!(ivf.update(&store).unwrap(), 1);
        assert_eq!(ivf.search(&store, &[100.0, 100.0], 1).unwrap().row(0).0, &[100]);
    }

    #[test]
    fn config_is_validated() {
        let store = Datastore::from_rows(1, vec![0.0, 1.0, 2.0], vec![0; 3]).unwrap();
        let bad = |cfg: IvfConfig, name: &str| {
            let e = IvfIndex::build(&store, &cfg).unwrap_err();
            assert!(
                matches!(e, KdError::InvalidHyperparameter { name: n, .. } if n == name),
                "{e}"
            );
        };
        bad(IvfConfig::new().with_nlist(0).with_nprobe(1), "nlist");
        bad(IvfConfig::new().with_nlist(4).with_nprobe(1), "nlist");
        bad(IvfConfig::new().with_nlist(2).with_nprobe(3), "nprobe");
        bad(IvfConfig::new().with_nlist(2).with_nprobe(1).with_iterations(0), "iterations");
        bad(IvfConfig::new().with_nlist(2).with_nprobe(1).with_train_size(1), "train_size");
        let mut ok =
            IvfIndex::build(&store, &IvfConfig::new().with_nlist(3).with_nprobe(1)).unwrap();
        assert!(ok.set_nprobe(4).is_err());
        // Even nprobe = 1 with tiny lists returns k neighbours (more lists are probed).
        assert_eq!(ok.search(&store, &[0.4], 3).unwrap().row(0).0, &[0, 1, 2]);
    }
}
