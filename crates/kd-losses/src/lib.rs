//! kd-losses (bootstrapping)
#![warn(missing_docs)]
pub mod divergence;
pub mod error;
pub mod logspace;
pub use divergence::*;
pub use error::{KdError, Result};
/// Names of all losses.
pub const LOSS_NAMES: &[&str] = &["forward_kl"];
