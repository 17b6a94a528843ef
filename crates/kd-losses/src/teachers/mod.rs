//! Teacher constructions: targets built from one or more models (or a datastore) rather than
//! read off a single teacher's logits, each with the loss the student is trained with.
//!
//! | module | what it builds | paper |
//! |---|---|---|
//! | [`dnkd`] | kNN-datastore distribution (optionally mixed with a model) + decoupled KD | DNKD, Zhang et al. 2023 |
//!
//! Each construction is checked against float64 golden files (`tests/golden_teachers/`, run by
//! `cargo test -p kd-losses --test golden_teachers`).

pub mod dnkd;
