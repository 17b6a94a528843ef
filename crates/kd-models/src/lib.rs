//! # kd-models
//!
//! GPT-2 and LLaMA-family ports for burn. **Not implemented yet**: this crate is an empty
//! placeholder in the workspace so that its name and features are reserved.
#![warn(missing_docs)]
