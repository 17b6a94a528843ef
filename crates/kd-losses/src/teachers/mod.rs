//! Teacher constructions: targets built from one or more models (or a datastore) rather than
//! read off a single teacher's logits, each with the loss the student is trained with.
//!
//! | module | what it builds | paper |
//! |---|---|---|
//! | [`phi_s`] | PHI-S: teacher features standardised by `φ⁻¹ H Uᵀ (t − μ)` (PCA + Hadamard, one scale), regressed with [`feature_distance`] | Ranzinger et al. 2024 |
//! | [`feature_distance`] | row-wise feature distances (MSE, smooth L1, cosine, hybrids) shared by feature methods | AM-RADIO / PHI-S |
//!
//! Each construction is checked against float64 golden files (`tests/golden_teachers/`, run by
//! `cargo test -p kd-losses --test golden_teachers`).

pub mod feature_distance;
pub mod phi_s;
