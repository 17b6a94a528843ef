//! Teacher constructions: targets built from one or more models (or a datastore) rather than
//! read off a single teacher's logits, each with the loss the student is trained with.
//!
//! | module | what it builds | paper |
//! |---|---|---|
//! | [`hot_pate`] | private aggregation of `T` teachers' next-token distributions: coordinated (shared-exponential) votes, a noisy release rule, the privacy accountant | Cohen et al. 2023, arXiv 2312.02132 |
//! | [`whp`] | WHP generic prediction `base − α·ReLU(reinforced − base)` and the causal-intervention teacher (K counterfactual names), with their KL student loss | Eldan & Russinovich 2023 (arXiv 2310.02238); Liu et al. 2024 (arXiv 2407.16997) |
//! | [`phi_s`] | PHI-S: teacher features standardised by `φ⁻¹ H Uᵀ (t − μ)` (PCA + Hadamard, one scale), regressed with [`feature_distance`] | Ranzinger et al. 2024 |
//! | [`feature_distance`] | row-wise feature distances (MSE, smooth L1, cosine, hybrids) shared by feature methods | AM-RADIO / PHI-S |
//! | [`dnkd`] | kNN-datastore distribution (optionally mixed with a model) + decoupled KD | DNKD, Zhang et al. 2023 |
//!
//! Each construction is checked against float64 golden files (`tests/golden_teachers/`, run by
//! `cargo test -p kd-losses --test golden_teachers`).

pub mod dnkd;
pub mod feature_distance;
pub mod hot_pate;
pub mod phi_s;
pub mod rng;
pub mod whp;
