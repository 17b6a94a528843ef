//! The one error type of kd-losses.

use std::fmt;

/// Result alias used throughout kd-losses.
pub type Result<T> = std::result::Result<T, KdError>;

/// Everything that can go wrong when building or calling a loss.
///
/// Hyperparameters are checked once, when a config is turned into a loss (`init`); inputs are
/// checked on every call. Each variant names what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KdError {
    /// A hyperparameter is outside its valid range. Fix the config value named by `name`.
    #[error("invalid hyperparameter `{name}` of {loss}: expected {expected}, got {got}")]
    InvalidHyperparameter {
        /// Loss the config belongs to.
        loss: &'static str,
        /// Config key, as written in the golden files and TOML configs.
        name: &'static str,
        /// The valid range, in words.
        expected: &'static str,
        /// The value that was passed.
        got: f64,
    },
    /// A string-valued option (such as `divergence` or `convention`) names no known choice.
    #[error("unknown {name} `{got}` for {loss}: expected one of {expected}")]
    UnknownOption {
        /// Loss the option belongs to.
        loss: &'static str,
        /// Option name.
        name: &'static str,
        /// The accepted values, comma separated.
        expected: &'static str,
        /// The value that was passed.
        got: String,
    },
    /// A loss name that kd-losses does not know (where a dense loss is needed: one of
    /// [`crate::LOSS_NAMES`] built by [`crate::LossConfig`]). Use one of `expected`.
    #[error("unknown loss `{got}`: expected one of {}", .expected.join(", "))]
    UnknownLoss {
        /// The ids that would have been accepted.
        expected: &'static [&'static str],
        /// The name that was passed.
        got: String,
    },
    /// Two tensors that must agree in shape do not. Both shapes are given.
    #[error("shape mismatch for {what}: expected {}, got {}", Dims(expected), Dims(got))]
    ShapeMismatch {
        /// What was compared, e.g. `teacher_logits vs student_logits`.
        what: String,
        /// Shape implied by the reference tensor.
        expected: Vec<usize>,
        /// Shape that came.
        got: Vec<usize>,
    },
    /// Student and teacher vocabularies differ and the loss needs them equal. Slice the padded
    /// vocabulary to the shared ids first, or use a cross-vocabulary loss such as `uld`.
    #[error(
        "vocabulary mismatch in {loss}: student has {student} entries, teacher has {teacher}; \
         slice both to the shared vocabulary or use the cross-vocabulary loss `uld`"
    )]
    VocabMismatch {
        /// Loss that was called.
        loss: &'static str,
        /// Student vocabulary size.
        student: usize,
        /// Teacher vocabulary size.
        teacher: usize,
    },
    /// An input the loss needs was not given (e.g. `labels` for DKD or a hard-label mix).
    #[error("{loss} needs `{name}`, which was not given")]
    MissingInput {
        /// Loss that was called.
        loss: &'static str,
        /// Name of the missing input.
        name: &'static str,
    },
    /// A sequence of the batch has no valid (`mask = true`) position, so its per-sequence mean
    /// is `0/0`. Drop the sequence from the batch or mark at least one of its positions valid.
    #[error(
        "{loss}: sequence {sequence} of the batch has no valid position (its mask is false \
         everywhere); drop it or mark at least one position valid"
    )]
    EmptySequence {
        /// Loss that was called.
        loss: &'static str,
        /// Index of the sequence in the batch.
        sequence: usize,
    },
    /// An input holds a value outside its valid range (a token id not below the vocabulary
    /// size, a NaN or `+inf` logit, an exponential draw that is not positive, a uniform outside
    /// `[0, 1)`, an empty ensemble, a method that needs another number of inputs). Fix the input
    /// named by `name`; `got` says which entry and what it held.
    #[error("invalid input `{name}` of {loss}: expected {expected}, got {got}")]
    InvalidInput {
        /// Loss or teacher construction that was called.
        loss: &'static str,
        /// Input name, as in the golden files.
        name: &'static str,
        /// What is accepted, in words.
        expected: String,
        /// What came (the offending value and where).
        got: String,
    },
    /// Statistics fitted from data cannot be formed or do not define the requested transform
    /// (fewer than two rows for a covariance, a non-finite feature, all-zero variance for
    /// PHI-S, a zero-variance channel or a near-singular covariance for a whitening). Fit on
    /// more (or more varied) finite rows, or pick a transform that is defined for the data.
    #[error("{what} is undefined: {reason}")]
    InvalidStatistics {
        /// What was being fitted or computed.
        what: &'static str,
        /// Why it is undefined, with the offending numbers.
        reason: String,
    },
}

struct Dims<'a>(&'a [usize]);

impl fmt::Display for Dims<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Checks `lo <= x <= hi` (either bound may be infinite) and names the hyperparameter otherwise.
pub(crate) fn check_range(
    loss: &'static str,
    name: &'static str,
    x: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<()> {
    if x.is_finite() && x >= lo && x <= hi {
        Ok(())
    } else {
        Err(KdError::InvalidHyperparameter { loss, name, expected, got: x })
    }
}

/// Checks a temperature: finite and strictly positive.
pub(crate) fn check_temperature(loss: &'static str, name: &'static str, t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(KdError::InvalidHyperparameter { loss, name, expected: "a finite value > 0", got: t })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_both_sides() {
        let e = KdError::ShapeMismatch {
            what: "teacher_logits vs student_logits".into(),
            expected: vec![4, 10],
            got: vec![3, 10],
        };
        assert_eq!(
            e.to_string(),
            "shape mismatch for teacher_logits vs student_logits: expected [4, 10], got [3, 10]"
        );
        let e = check_temperature("forward_kl", "temperature", 0.0).unwrap_err();
        assert!(e.to_string().contains("got 0"), "{e}");
        assert!(check_range("x", "beta", 1.5, 0.0, 1.0, "in [0, 1]").is_err());
        assert!(check_range("x", "beta", f64::NAN, 0.0, 1.0, "in [0, 1]").is_err());
        assert!(check_range("x", "beta", 1.0, 0.0, 1.0, "in [0, 1]").is_ok());
    }
}
