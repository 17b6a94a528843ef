//! The one error type of kd-golden.

use std::path::PathBuf;

/// Result alias used throughout kd-golden.
pub type Result<T> = std::result::Result<T, GoldenError>;

/// Everything that can go wrong while reading, recomputing or writing golden files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// A file or directory could not be read or written. Check the path and its permissions.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not valid JSON. Regenerate it or restore it from git.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file that failed to parse.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A field is missing or has the wrong JSON type or shape. The golden README names every
    /// field of every file; fix the file so that `field` matches it.
    #[error("case `{case}`: field `{field}`: expected {expected}")]
    Field {
        /// Case name (or `-` for file-level fields).
        case: String,
        /// Field path, e.g. `inputs.student_logits`.
        field: String,
        /// What the field should be, in words.
        expected: String,
    },
    /// The file's `loss` names no loss this generator knows. See [`crate::LOSS_NAMES`].
    #[error("unknown loss `{got}`: expected one of {}", crate::LOSS_NAMES.join(", "))]
    UnknownLoss {
        /// The name that was found.
        got: String,
    },
    /// A string-valued config option names no known choice. Use one of `expected`.
    #[error("case `{case}`: unknown {name} `{got}`: expected one of {expected}")]
    UnknownOption {
        /// Case name.
        case: String,
        /// Option name, e.g. `divergence`.
        name: &'static str,
        /// The value found.
        got: String,
        /// The accepted values, comma separated.
        expected: &'static str,
    },
    /// A command line that the `kd-golden` binary does not understand. Run it without
    /// arguments for its usage text.
    #[error("{0}")]
    Usage(String),
}
