//! # kd-train
//!
//! The teacher→student training loop of kd-rs. **Not implemented yet**: this crate is an empty
//! placeholder in the workspace so that its name and features are reserved. It will hold one generic
//! distillation loop over any burn device (online or offline teacher, on-policy sampling,
//! schedules, checkpoint/resume), built on [`kd_losses`].
#![warn(missing_docs)]

pub use kd_losses;
