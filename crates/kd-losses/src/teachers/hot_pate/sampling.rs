//! Teacher distributions and the two ensemble samplers: coordinated (shared exponentials,
//! Algorithm 1) and independent (one exponential race per teacher).

use super::ID;
use crate::error::{KdError, Result, check_temperature};
use crate::teachers::rng::NoiseRng;

/// Which ensemble sampler turns the teachers' distributions into votes (serde:
/// `"coordinated"`, `"independent"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Hot PATE's coordinated ensemble (Algorithm 1; official `CoordinatedSampler`): every
    /// teacher's race uses the same exponentials `u_j`, so teachers whose distributions overlap
    /// tend to vote alike while each vote is still distributed as its teacher's `P[i]`.
    #[default]
    Coordinated,
    /// Cold PATE's independent sampling (official `IndependentSampler`, `torch.multinomial`),
    /// here an exponential race with exponentials `U[i, j]` drawn per teacher.
    Independent,
}

/// The teachers' next-token distributions `P [T, V]` (row-major), the input of both samplers.
///
/// ```text
/// P[i] = softmax(teacher_logits[i] / temperature)          (official default temperature 0.6)
/// expected_counts[j]     = Σ_i P[i, j]                     = E[c_j] under either sampler
/// weighted_jaccard[i, k] = Σ_j min(P[i,j], P[k,j]) / Σ_j max(P[i,j], P[k,j])
/// agreement[i, k]        = Pr[y_i = y_k] under coordination
///                        = Σ_j 1 / Σ_l max(P[i,l]/P[i,j], P[k,l]/P[k,j])   (0-terms where P[i,j]·P[k,j] = 0)
/// ```
///
/// The agreement probability of the coordinated sampler is the *probability Jaccard index*
/// `J_P` of the two rows (Moulton & Jiang, *Maximally Consistent Sampling and the Jaccard Index of
/// Probability Distributions*, ICDM 2018), which satisfies
/// `weighted_jaccard ≤ J_P ≤ Σ_j min(P[i,j], P[k,j]) = 1 − TV`. Under independent sampling the
/// agreement is `Σ_j P[i,j]·P[k,j]`.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for a temperature that is not finite and `> 0`;
/// [`KdError::InvalidInput`] for an empty ensemble or vocabulary, a NaN or `+∞` logit, or a row
/// whose logits are all `−∞` (`−∞` entries are allowed: they get probability 0);
/// [`KdError::ShapeMismatch`] when the slice length is not `teachers · vocab`.
///
/// Paper: Cohen et al., *Hot PATE: Private Aggregation of Distributions for Diverse Tasks*,
/// <https://arxiv.org/abs/2312.02132>; code <https://github.com/bencw99/hot-pate>
/// (`utils.logits_to_probs`).
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::TeacherDistributions;
///
/// // Two teachers over three tokens, at temperature 1.
/// let logits = [0.0, 0.0, f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY, 0.0];
/// let p = TeacherDistributions::from_logits(&logits, 2, 3, 1.0)?;
/// assert_eq!(p.row(0), &[0.5, 0.5, 0.0]);
/// assert_eq!(p.expected_counts(), vec![1.0, 0.5, 0.5]);
/// // Σ min = 0.5, Σ max = 1.5.
/// assert!((p.weighted_jaccard()[1] - 1.0 / 3.0).abs() < 1e-15);
/// // Shared exponentials u: each teacher votes argmax_j P[i, j] / u_j.
/// assert_eq!(p.coordinated_votes(&[1.0, 0.5, 2.0])?, vec![1, 0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherDistributions {
    probs: Vec<f64>,
    teachers: usize,
    vocab: usize,
}

impl TeacherDistributions {
    /// `softmax(teacher_logits / temperature)` row by row; `teacher_logits` is `[teachers, vocab]`
    /// row-major.
    ///
    /// # Errors
    /// See the type docs.
    pub fn from_logits(
        teacher_logits: &[f64],
        teachers: usize,
        vocab: usize,
        temperature: f64,
    ) -> Result<Self> {
        check_temperature(ID, "temperature", temperature)?;
        check_shape("teacher_logits", teacher_logits.len(), teachers, vocab)?;
        if let Some(k) = teacher_logits.iter().position(|x| x.is_nan() || *x == f64::INFINITY) {
            return Err(invalid(
                "teacher_logits",
                "finite logits or −∞",
                format!("{} at [{}, {}]", teacher_logits[k], k / vocab, k % vocab),
            ));
        }
        let mut probs = Vec::with_capacity(teacher_logits.len());
        for (i, row) in teacher_logits.chunks_exact(vocab).enumerate() {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            if max == f64::NEG_INFINITY {
                return Err(invalid(
                    "teacher_logits",
                    "at least one finite logit per teacher",
                    format!("row {i} is all −∞"),
                ));
            }
            // Stable softmax at the temperature: exp((z − max)/τ) / Σ.
            let start = probs.len();
            probs.extend(row.iter().map(|&z| ((z - max) / temperature).exp()));
            let sum: f64 = probs[start..].iter().sum();
            probs[start..].iter_mut().for_each(|p| *p /= sum);
        }
        Ok(Self { probs, teachers, vocab })
    }

    /// Rows of non-negative weights `[teachers, vocab]` row-major, each normalised to sum to 1
    /// (use this when the teachers' probabilities are already at hand).
    ///
    /// # Errors
    /// [`KdError::InvalidInput`] for an empty ensemble or vocabulary, a negative or non-finite
    /// weight, or a row summing to 0; [`KdError::ShapeMismatch`] for a wrong length.
    pub fn from_probs(mut probs: Vec<f64>, teachers: usize, vocab: usize) -> Result<Self> {
        check_shape("teacher_probs", probs.len(), teachers, vocab)?;
        if let Some(k) = probs.iter().position(|p| !(p.is_finite() && *p >= 0.0)) {
            return Err(invalid(
                "teacher_probs",
                "finite weights ≥ 0",
                format!("{} at [{}, {}]", probs[k], k / vocab, k % vocab),
            ));
        }
        for (i, row) in probs.chunks_exact_mut(vocab).enumerate() {
            let sum: f64 = row.iter().sum();
            if !(sum > 0.0 && sum.is_finite()) {
                return Err(invalid(
                    "teacher_probs",
                    "rows with a positive finite sum",
                    format!("row {i} sums to {sum}"),
                ));
            }
            row.iter_mut().for_each(|p| *p /= sum);
        }
        Ok(Self { probs, teachers, vocab })
    }

    /// Number of teachers `T`.
    pub fn teachers(&self) -> usize {
        self.teachers
    }

    /// Vocabulary size `V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// All probabilities, `[T, V]` row-major.
    pub fn probs(&self) -> &[f64] {
        &self.probs
    }

    /// Teacher `i`'s distribution `P[i]` (`[V]`).
    ///
    /// # Panics
    /// When `i ≥ T`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.probs[i * self.vocab..(i + 1) * self.vocab]
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.probs.chunks_exact(self.vocab)
    }

    /// `Σ_i P[i]` (`[V]`): the expected vote histogram under either sampler.
    pub fn expected_counts(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.vocab];
        for row in self.rows() {
            out.iter_mut().zip(row).for_each(|(o, p)| *o += p);
        }
        out
    }

    /// Weighted Jaccard similarity of every pair of teachers, `[T, T]` row-major (diagonal 1).
    pub fn weighted_jaccard(&self) -> Vec<f64> {
        self.pairwise(|a, b| {
            let (mut lo, mut hi) = (0.0, 0.0);
            for (x, y) in a.iter().zip(b) {
                lo += x.min(*y);
                hi += x.max(*y);
            }
            lo / hi
        })
    }

    /// The exact `Pr[y_i = y_k]` under the coordinated sampler for every pair, `[T, T]`
    /// row-major (the probability Jaccard index; see the type docs). `O(T² · V log V)`.
    pub fn agreement_probability(&self) -> Vec<f64> {
        self.pairwise(probability_jaccard)
    }

    fn pairwise(&self, f: impl Fn(&[f64], &[f64]) -> f64) -> Vec<f64> {
        let t = self.teachers;
        let mut out = vec![0.0; t * t];
        for i in 0..t {
            for k in i..t {
                let v = f(self.row(i), self.row(k));
                out[i * t + k] = v;
                out[k * t + i] = v;
            }
        }
        out
    }

    /// Coordinated votes (Algorithm 1): `y_i = argmax_j P[i, j] / u_j`, the same
    /// `shared_exponentials u [V]` (i.i.d. `Exp(1)`) for every teacher; ties go to the lowest
    /// index.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `u` is not `[V]`; [`KdError::InvalidInput`] when an entry
    /// is not finite and `> 0`.
    pub fn coordinated_votes(&self, shared_exponentials: &[f64]) -> Result<Vec<usize>> {
        let u = shared_exponentials;
        if u.len() != self.vocab {
            return Err(KdError::ShapeMismatch {
                what: "shared_exponentials vs vocabulary".into(),
                expected: vec![self.vocab],
                got: vec![u.len()],
            });
        }
        check_positive("shared_exponentials", u, self.vocab)?;
        Ok(self.rows().map(|row| race(row, u)).collect())
    }

    /// Independent votes: `y_i = argmax_j P[i, j] / U[i, j]` with per-teacher exponentials
    /// `U [T, V]` row-major (an exponential race: `y_i ~ P[i]`, independently across teachers);
    /// ties go to the lowest index.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `U` is not `[T, V]`; [`KdError::InvalidInput`] when an
    /// entry is not finite and `> 0`.
    pub fn independent_votes(&self, independent_exponentials: &[f64]) -> Result<Vec<usize>> {
        let u = independent_exponentials;
        if u.len() != self.probs.len() {
            return Err(KdError::ShapeMismatch {
                what: "independent_exponentials vs [teachers, vocab]".into(),
                expected: vec![self.teachers, self.vocab],
                got: vec![u.len()],
            });
        }
        check_positive("independent_exponentials", u, self.vocab)?;
        Ok(self.rows().zip(u.chunks_exact(self.vocab)).map(|(row, ui)| race(row, ui)).collect())
    }

    /// Votes of the chosen sampler with exponentials drawn from `rng` (`V` shared draws for
    /// [`Sampler::Coordinated`], `T·V` for [`Sampler::Independent`]).
    pub fn sample_votes(&self, sampler: Sampler, rng: &mut NoiseRng) -> Vec<usize> {
        // The draws are positive and finite and the shapes are right by construction.
        match sampler {
            Sampler::Coordinated => {
                let u = rng.exponentials(self.vocab);
                self.rows().map(|row| race(row, &u)).collect()
            }
            Sampler::Independent => self
                .rows()
                .map(|row| {
                    let u = rng.exponentials(self.vocab);
                    race(row, &u)
                })
                .collect(),
        }
    }
}

/// `argmax_j p_j / u_j`, lowest index on exact ties.
fn race(p: &[f64], u: &[f64]) -> usize {
    let mut best = 0;
    let mut best_ratio = f64::NEG_INFINITY;
    for (j, (pj, uj)) in p.iter().zip(u).enumerate() {
        let r = pj / uj;
        if r > best_ratio {
            best = j;
            best_ratio = r;
        }
    }
    best
}

/// `Σ_j 1 / Σ_l max(x_l/x_j, y_l/y_j)` over tokens with `x_j·y_j > 0`.
///
/// With `r_l = x_l / y_l`, `max(x_l/x_j, y_l/y_j) = x_l/x_j` when `r_l ≥ r_j` and `y_l/y_j`
/// otherwise, so after sorting by `r` the inner sum is
/// `(Σ_{r_l ≥ r_j} x_l)/x_j + (Σ_{r_l < r_j} y_l)/y_j` from prefix sums.
fn probability_jaccard(x: &[f64], y: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..x.len()).filter(|&l| x[l] > 0.0 || y[l] > 0.0).collect();
    let ratio = |l: usize| if y[l] > 0.0 { x[l] / y[l] } else { f64::INFINITY };
    idx.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
    let total_x: f64 = idx.iter().map(|&l| x[l]).sum();
    let (mut x_before, mut y_before, mut out) = (0.0, 0.0, 0.0);
    let mut g = 0;
    while g < idx.len() {
        // A group of equal ratios: for its members `r_l ≥ r_j` and `r_l < r_j` split alike.
        let r = ratio(idx[g]);
        let end = g + idx[g..].iter().take_while(|&&l| ratio(l) == r).count();
        for &j in &idx[g..end] {
            if x[j] > 0.0 && y[j] > 0.0 {
                out += 1.0 / ((total_x - x_before) / x[j] + y_before / y[j]);
            }
        }
        for &l in &idx[g..end] {
            x_before += x[l];
            y_before += y[l];
        }
        g = end;
    }
    out
}

/// The vote histogram `c_j = #{i : y_i = j}` (`[V]`).
///
/// # Errors
/// [`KdError::InvalidInput`] for a vote `≥ vocab`, or an empty ensemble or vocabulary.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::histogram;
///
/// assert_eq!(histogram(&[2, 0, 2], 4)?, vec![1, 0, 2, 0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
pub fn histogram(votes: &[usize], vocab: usize) -> Result<Vec<usize>> {
    if votes.is_empty() {
        return Err(invalid("votes", "at least one teacher", "0 votes".into()));
    }
    if vocab == 0 {
        return Err(invalid("vocab", "a vocabulary of at least one token", "0".into()));
    }
    let mut c = vec![0; vocab];
    for (i, &y) in votes.iter().enumerate() {
        if y >= vocab {
            return Err(invalid(
                "votes",
                "token ids < vocab",
                format!("{y} at [{i}] (vocab {vocab})"),
            ));
        }
        c[y] += 1;
    }
    Ok(c)
}

/// `InvalidInput` of hot PATE.
pub(super) fn invalid(name: &'static str, expected: &'static str, got: String) -> KdError {
    KdError::InvalidInput { loss: ID, name, expected: expected.to_string(), got }
}

/// `len == teachers · vocab`, both `≥ 1`.
fn check_shape(name: &'static str, len: usize, teachers: usize, vocab: usize) -> Result<()> {
    if teachers == 0 {
        return Err(invalid(name, "at least one teacher", "0 teachers".into()));
    }
    if vocab == 0 {
        return Err(invalid(name, "a vocabulary of at least one token", "0 tokens".into()));
    }
    if len != teachers * vocab {
        return Err(KdError::ShapeMismatch {
            what: format!("{name} vs [teachers, vocab]"),
            expected: vec![teachers, vocab],
            got: vec![len],
        });
    }
    Ok(())
}

/// Every entry finite and `> 0` (exponential draws).
fn check_positive(name: &'static str, u: &[f64], vocab: usize) -> Result<()> {
    match u.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
        None => Ok(()),
        Some(k) => Err(invalid(
            name,
            "finite Exp(1) draws > 0",
            if u.len() == vocab {
                format!("{} at [{k}]", u[k])
            } else {
                format!("{} at [{}, {}]", u[k], k / vocab, k % vocab)
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dists(rows: &[&[f64]]) -> TeacherDistributions {
        let v = rows[0].len();
        TeacherDistributions::from_probs(rows.concat(), rows.len(), v).unwrap()
    }

    #[test]
    fn softmax_at_temperature_by_hand() {
        // logits (0, ln 3) at T = 1 → (1/4, 3/4); at T = 0.5 → (1/10, 9/10).
        let l = [0.0, 3f64.ln()];
        let p = TeacherDistributions::from_logits(&l, 1, 2, 1.0).unwrap();
        assert!((p.row(0)[0] - 0.25).abs() < 1e-15 && (p.row(0)[1] - 0.75).abs() < 1e-15);
        let p = TeacherDistributions::from_logits(&l, 1, 2, 0.5).unwrap();
        assert!((p.row(0)[0] - 0.1).abs() < 1e-15 && (p.row(0)[1] - 0.9).abs() < 1e-15);
        // Shift invariance and huge logits stay finite.
        let p = TeacherDistributions::from_logits(&[1e6, 1e6 + 3f64.ln()], 1, 2, 1.0).unwrap();
        assert!((p.row(0)[1] - 0.75).abs() < 1e-9);
    }

    #[test]
    fn race_picks_max_ratio_lowest_on_ties() {
        assert_eq!(race(&[0.2, 0.5, 0.3], &[1.0, 1.0, 1.0]), 1);
        assert_eq!(race(&[0.2, 0.5, 0.3], &[0.1, 1.0, 1.0]), 0);
        // 0.4/2 = 0.2/1 exactly: lowest index.
        assert_eq!(race(&[0.4, 0.2, 0.4], &[2.0, 1.0, 4.0]), 0);
        // A zero-probability token never wins against a positive one.
        assert_eq!(race(&[0.0, 1.0], &[1e-300, 1e300]), 1);
    }

    #[test]
    fn identical_teachers_vote_alike_under_coordination() {
        let row = [0.1, 0.2, 0.3, 0.25, 0.15];
        let d = dists(&[&row, &row, &row, &row]);
        let mut rng = NoiseRng::new(5);
        for _ in 0..200 {
            let v = d.sample_votes(Sampler::Coordinated, &mut rng);
            assert!(v.iter().all(|&y| y == v[0]), "{v:?}");
        }
        // ... and not under independent sampling (4 teachers over 5 tokens: all-equal is rare).
        let spread = (0..200)
            .filter(|_| {
                let v = d.sample_votes(Sampler::Independent, &mut rng);
                v.iter().any(|&y| y != v[0])
            })
            .count();
        assert!(spread > 150, "{spread}");
    }

    #[test]
    fn jaccard_and_agreement_closed_forms() {
        // x = (1, 0), y = (1/2, 1/2): weighted Jaccard 1/3; coordinated agreement 1/2
        // (teacher x always votes 0, teacher y votes argmin(u_0, u_1) = 0 half the time).
        let d = dists(&[&[1.0, 0.0], &[0.5, 0.5]]);
        assert!((d.weighted_jaccard()[1] - 1.0 / 3.0).abs() < 1e-15);
        assert!((d.agreement_probability()[1] - 0.5).abs() < 1e-15);
        // Binary rows (a, 1−a), (b, 1−b), a > b: agreement = b + 1 − a = 1 − TV.
        let d = dists(&[&[0.7, 0.3], &[0.4, 0.6]]);
        assert!((d.agreement_probability()[1] - 0.7).abs() < 1e-12);
        assert!((d.weighted_jaccard()[2] - 0.7 / 1.3).abs() < 1e-12);
        // Identical rows: 1; disjoint rows: 0; diagonal 1.
        let d = dists(&[&[0.2, 0.8, 0.0], &[0.2, 0.8, 0.0], &[0.0, 0.0, 1.0]]);
        let (j, a) = (d.weighted_jaccard(), d.agreement_probability());
        for k in [0, 1, 4, 8] {
            assert!((j[k] - 1.0).abs() < 1e-15 && (a[k] - 1.0).abs() < 1e-12, "{k}");
        }
        assert_eq!((j[2], a[2], j[7], a[7]), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn agreement_matches_the_direct_double_sum() {
        let mut rng = NoiseRng::new(11);
        for v in [1, 2, 3, 7, 20] {
            let x: Vec<f64> =
                (0..v).map(|j| if j % 5 == 3 { 0.0 } else { rng.exponential() }).collect();
            let y: Vec<f64> =
                (0..v).map(|j| if j % 4 == 1 { 0.0 } else { rng.exponential() }).collect();
            let d = TeacherDistributions::from_probs([x, y].concat(), 2, v);
            let Ok(d) = d else { continue };
            let (x, y) = (d.row(0), d.row(1));
            let mut direct = 0.0;
            for j in 0..v {
                if x[j] > 0.0 && y[j] > 0.0 {
                    let s: f64 = (0..v).map(|l| (x[l] / x[j]).max(y[l] / y[j])).sum();
                    direct += 1.0 / s;
                }
            }
            let got = d.agreement_probability()[1];
            assert!((got - direct).abs() < 1e-12, "V={v}: {got} vs {direct}");
            // J_W ≤ J_P ≤ 1 − TV.
            let min_sum: f64 = x.iter().zip(y).map(|(a, b)| a.min(*b)).sum();
            assert!(d.weighted_jaccard()[1] <= got + 1e-12 && got <= min_sum + 1e-12);
        }
    }

    /// Coordinated sampling: the empirical `Pr[y_i = y_k]` matches the exact agreement
    /// probability within 5 standard errors, and each teacher's vote frequencies match its
    /// `P[i]`; the weighted Jaccard is only a lower bound (here many standard errors below).
    #[test]
    fn coordinated_agreement_statistics() {
        let logits = [
            1.0, 0.5, 0.0, -0.5, 0.2, 0.0, //
            0.8, 0.9, -0.2, -1.0, 0.1, 0.3, //
            -1.0, 0.0, 1.2, 0.4, 0.0, -0.3, //
        ];
        let d = TeacherDistributions::from_logits(&logits, 3, 6, 0.6).unwrap();
        let n = 40_000;
        let mut rng = NoiseRng::new(2024);
        let mut agree = [0usize; 9];
        let mut freq = [0usize; 18];
        for _ in 0..n {
            let v = d.sample_votes(Sampler::Coordinated, &mut rng);
            for i in 0..3 {
                freq[i * 6 + v[i]] += 1;
                for k in 0..3 {
                    agree[i * 3 + k] += usize::from(v[i] == v[k]);
                }
            }
        }
        let (jp, jw) = (d.agreement_probability(), d.weighted_jaccard());
        let nf = n as f64;
        for (ik, &count) in agree.iter().enumerate() {
            let (emp, want) = (count as f64 / nf, jp[ik]);
            let se = (want * (1.0 - want) / nf).sqrt().max(1e-12);
            assert!((emp - want).abs() <= 5.0 * se, "pair {ik}: {emp} vs J_P {want}");
            if ik % 4 != 0 {
                assert!(jw[ik] < want - 10.0 * se, "pair {ik}: J_W {} vs J_P {want}", jw[ik]);
            }
        }
        for (k, &count) in freq.iter().enumerate() {
            let (emp, want) = (count as f64 / nf, d.probs()[k]);
            let se = (want * (1.0 - want) / nf).sqrt();
            assert!((emp - want).abs() <= 5.0 * se, "P entry {k}: {emp} vs {want}");
        }
    }

    /// Independent sampling: vote frequencies match `P[i]` and two teachers agree with
    /// probability `Σ_j P[i,j] P[k,j]`.
    #[test]
    fn independent_sampling_statistics() {
        let d = dists(&[&[0.5, 0.3, 0.15, 0.05], &[0.1, 0.2, 0.3, 0.4]]);
        let n = 40_000;
        let mut rng = NoiseRng::new(99);
        let mut freq = [0usize; 8];
        let mut agree = 0usize;
        for _ in 0..n {
            let v = d.sample_votes(Sampler::Independent, &mut rng);
            freq[v[0]] += 1;
            freq[4 + v[1]] += 1;
            agree += usize::from(v[0] == v[1]);
        }
        let nf = n as f64;
        for (k, &count) in freq.iter().enumerate() {
            let (emp, want) = (count as f64 / nf, d.probs()[k]);
            let se = (want * (1.0 - want) / nf).sqrt();
            assert!((emp - want).abs() <= 5.0 * se, "P entry {k}: {emp} vs {want}");
        }
        let want: f64 = d.row(0).iter().zip(d.row(1)).map(|(a, b)| a * b).sum();
        let emp = agree as f64 / nf;
        assert!((emp - want).abs() <= 5.0 * (want * (1.0 - want) / nf).sqrt(), "{emp} vs {want}");
    }

    #[test]
    fn votes_with_given_exponentials() {
        let d = dists(&[&[0.5, 0.5, 0.0], &[0.1, 0.3, 0.6]]);
        assert_eq!(d.coordinated_votes(&[1.0, 0.5, 2.0]).unwrap(), vec![1, 1]);
        assert_eq!(d.coordinated_votes(&[0.1, 1.0, 1.0]).unwrap(), vec![0, 0]);
        let u = [1.0, 2.0, 1.0, 0.01, 1.0, 1.0];
        assert_eq!(d.independent_votes(&u).unwrap(), vec![0, 0]);
        assert_eq!(histogram(&[1, 1, 0], 3).unwrap(), vec![1, 2, 0]);
    }

    #[test]
    fn expected_counts_sum_to_teachers() {
        let d = dists(&[&[0.5, 0.5, 0.0], &[0.1, 0.3, 0.6], &[1.0, 0.0, 0.0]]);
        let c = d.expected_counts();
        assert!((c.iter().sum::<f64>() - 3.0).abs() < 1e-15);
        assert!((c[0] - 1.6).abs() < 1e-15);
    }

    #[test]
    fn errors_name_what_went_wrong() {
        let l = [0.0; 6];
        assert!(matches!(
            TeacherDistributions::from_logits(&l, 2, 3, 0.0),
            Err(KdError::InvalidHyperparameter { name: "temperature", .. })
        ));
        assert!(TeacherDistributions::from_logits(&l, 2, 3, -1.0).is_err());
        assert!(TeacherDistributions::from_logits(&l, 2, 3, f64::NAN).is_err());
        assert!(matches!(
            TeacherDistributions::from_logits(&[], 0, 3, 1.0),
            Err(KdError::InvalidInput { .. })
        ));
        assert!(matches!(
            TeacherDistributions::from_logits(&l, 2, 4, 1.0),
            Err(KdError::ShapeMismatch { .. })
        ));
        let nan = [0.0, f64::NAN, 0.0];
        let e = TeacherDistributions::from_logits(&nan, 1, 3, 1.0).unwrap_err();
        assert!(e.to_string().contains("NaN at [0, 1]"), "{e}");
        let inf = [f64::NEG_INFINITY; 2];
        assert!(TeacherDistributions::from_logits(&inf, 1, 2, 1.0).is_err());
        assert!(TeacherDistributions::from_logits(&[0.0, f64::INFINITY], 1, 2, 1.0).is_err());
        assert!(TeacherDistributions::from_probs(vec![0.0, 0.0], 1, 2).is_err());
        assert!(TeacherDistributions::from_probs(vec![-0.1, 1.1], 1, 2).is_err());

        let d = dists(&[&[0.5, 0.5], &[0.2, 0.8]]);
        assert!(matches!(d.coordinated_votes(&[1.0]), Err(KdError::ShapeMismatch { .. })));
        assert!(matches!(d.coordinated_votes(&[1.0, 0.0]), Err(KdError::InvalidInput { .. })));
        assert!(d.coordinated_votes(&[1.0, f64::INFINITY]).is_err());
        assert!(matches!(d.independent_votes(&[1.0; 3]), Err(KdError::ShapeMismatch { .. })));
        let e = d.independent_votes(&[1.0, 1.0, -1.0, 1.0]).unwrap_err();
        assert!(e.to_string().contains("at [1, 0]"), "{e}");
        assert!(histogram(&[0, 2], 2).is_err());
        assert!(histogram(&[], 2).is_err());
    }
}
