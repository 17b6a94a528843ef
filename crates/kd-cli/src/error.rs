//! Exit codes: `2` when what the user gave is wrong, `1` when a run fails.
//!
//! clap reports command-line errors itself (exit 2). The commands mark the errors of their input
//! (config keys and values, missing or unreadable models, data, tokenizers, checkpoints, devices
//! that are not built) as [`InputError`]; every other error is a failure of the run (a
//! non-finite loss, writing outputs, generation) and exits with 1.

use std::fmt;

/// Exit status of a usage or input error.
pub const EXIT_INPUT: i32 = 2;
/// Exit status of a run that failed.
pub const EXIT_RUN: i32 = 1;

/// An error in the command line, the config or an input file.
#[derive(Debug)]
pub struct InputError(anyhow::Error);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for InputError {}

/// Marks the error of a result as an [`InputError`].
pub trait Input<T> {
    /// The result, its error marked as the user's input being wrong.
    fn input(self) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Input<T> for Result<T, E> {
    fn input(self) -> anyhow::Result<T> {
        self.map_err(|e| InputError(e.into()).into())
    }
}

/// The exit status for `error`: [`EXIT_INPUT`] for an [`InputError`], else [`EXIT_RUN`].
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.downcast_ref::<InputError>().is_some() { EXIT_INPUT } else { EXIT_RUN }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn input_errors_exit_2_and_keep_their_chain() {
        let e = Err::<(), _>(anyhow::anyhow!("no such file"))
            .context("reading config run.toml")
            .input()
            .unwrap_err();
        assert_eq!(exit_code(&e), EXIT_INPUT);
        assert_eq!(format!("{e:#}"), "reading config run.toml: no such file");
        assert_eq!(exit_code(&anyhow::anyhow!("step 3: loss NaN")), EXIT_RUN);
    }
}
