//! Teacher constructions: targets built from one or more models (or a datastore) rather than
//! read off a single teacher's logits, each with the loss the student is trained with.
//!
//! | module | what it builds | paper |
//! |---|---|---|
//! | [`hot_pate`] | private aggregation of `T` teachers' next-token distributions: coordinated (shared-exponential) votes, a noisy release rule, the privacy accountant | Cohen et al. 2023, arXiv 2312.02132 |
//!
//! Each construction is checked against float64 golden files (`tests/golden_teachers/`, run by
//! `cargo test -p kd-losses --test golden_teachers`).

pub mod hot_pate;
