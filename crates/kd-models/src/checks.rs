//! Checks of untrusted model files, run before anything is allocated from what they say.
//!
//! - Files are read only when they are regular files (a FIFO named `config.json` would block a
//!   read forever) and no larger than a bound per kind of file.
//! - A safetensors header is validated here, byte for byte, before the `safetensors` crate sees
//!   it: its length against the file, each tensor's dtype, shape (with checked products: a shape
//!   bomb is an error, not an overflow) and offsets against the data section, no two tensors
//!   overlapping, no byte belonging to no tensor, and no name listed twice. JSON objects parsed
//!   into maps silently keep the last of two equal keys; [`Entries`] keeps them all so that a
//!   duplicate is an error.
//! - Shard names of `model.safetensors.index.json` must stay inside the model directory: plain
//!   relative paths, no `..`, no root.
//!
//! JSON nesting is bounded by `serde_json`'s recursion limit (128 levels): deeper input is a
//! parse error, never a stack overflow.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Component, Path, PathBuf};

use safetensors::tensor::Dtype;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Largest `config.json`, shard index or `tokenizer_config.json` read (real ones are a few KiB;
/// the index of a 1000-shard model is well under 1 MiB).
pub(crate) const MAX_JSON_BYTES: u64 = 64 << 20;

/// Largest `tokenizer.json` read (real ones are at most a few tens of MiB).
pub(crate) const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// Largest safetensors header, the bound of the `safetensors` crate and of the Python library.
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// [`ModelError::InvalidFile`] for `path`.
pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidFile { path: path.to_path_buf(), reason: reason.into() }
}

/// The size of `path`, an error unless it is a regular file (symbolic links followed).
pub(crate) fn regular_file_len(path: &Path) -> Result<u64> {
    let meta =
        std::fs::metadata(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    if !meta.is_file() {
        return Err(invalid(path, "is not a regular file"));
    }
    Ok(meta.len())
}

/// The text of the regular file `path`, refused when it is larger than `limit` bytes or not
/// UTF-8.
pub(crate) fn read_text(path: &Path, limit: u64) -> Result<String> {
    let len = regular_file_len(path)?;
    if len > limit {
        return Err(invalid(path, format!("is {len} bytes, more than the {limit} allowed")));
    }
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // Read at most one byte past the limit: the file may have grown since `metadata`.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(path, format!("is more than the {limit} bytes allowed")));
    }
    String::from_utf8(bytes).map_err(|e| invalid(path, format!("is not UTF-8: {e}")))
}

/// A JSON file (`config.json`, an index) as a value: bounded size, bounded nesting.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path, MAX_JSON_BYTES)?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.into(), source })
}

/// The entries of a JSON object in file order, equal keys kept (a map keeps only the last).
#[derive(Debug)]
pub(crate) struct Entries<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        de.deserialize_map(EntriesVisitor(PhantomData))
    }
}

impl<V> Entries<V> {
    /// The first key that occurs twice.
    pub(crate) fn duplicate(&self) -> Option<&str> {
        let mut seen = HashSet::with_capacity(self.0.len());
        self.0.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
    }
}

/// One tensor of a safetensors header as the file states it, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Checks the header of the safetensors file `bytes` (named `path` in errors) against the file:
/// see the [module docs](self). Returns the length of the JSON header.
///
/// # Errors
/// [`ModelError::Safetensors`] naming the first problem (and the tensor, when it is one's).
pub(crate) fn check_safetensors(path: &Path, bytes: &[u8]) -> Result<usize> {
    let bad = |reason: String| ModelError::Safetensors { path: path.into(), reason };
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "the file is {file_len} bytes, shorter than the 8-byte header length"
        )));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {n} is larger than the {MAX_HEADER_BYTES} bytes safetensors allows"
        )));
    }
    if 8 + n > file_len {
        return Err(bad(format!(
            "header length {n} runs past the end of the {file_len}-byte file"
        )));
    }
    let header = std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let entries: Entries<Value> = serde_json::from_str(header)
        .map_err(|e| bad(format!("header is not a JSON object of tensors: {e}")))?;
    if let Some(name) = entries.duplicate() {
        return Err(bad(format!("tensor `{name}` is listed twice in the header")));
    }
    let data_len = file_len - 8 - n;
    // (start, end, name) of every tensor's bytes.
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(entries.0.len());
    for (name, value) in &entries.0 {
        if name == "__metadata__" {
            let strings = value.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                return Err(bad("`__metadata__` must map strings to strings".into()));
            }
            continue;
        }
        let info = RawInfo::deserialize(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let dtype: Dtype = serde_json::from_value(Value::String(info.dtype.clone()))
            .map_err(|_| bad(format!("tensor `{name}`: unknown dtype `{}`", info.dtype)))?;
        let bits = info
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|count| count.checked_mul(dtype.bitsize() as u64))
            .filter(|bits| *bits / 8 <= usize::MAX as u64)
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: shape {:?} of {dtype:?} has more bytes than memory can hold",
                    info.shape
                ))
            })?;
        if bits % 8 != 0 {
            return Err(bad(format!(
                "tensor `{name}`: shape {:?} of {dtype:?} is not a whole number of bytes",
                info.shape
            )));
        }
        let (start, end) = info.data_offsets;
        if start > end || end > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] lie outside the {data_len}-byte data section"
            )));
        }
        if end - start != bits / 8 {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] hold {} bytes, its shape {:?} of {dtype:?} needs {}",
                end - start,
                info.shape,
                bits / 8
            )));
        }
        spans.push((start, end, name));
    }
    spans.sort_unstable();
    let mut covered = 0u64;
    let mut previous = "";
    for &(start, end, name) in &spans {
        if start < covered {
            return Err(bad(format!(
                "tensors `{previous}` and `{name}` overlap (bytes {start}..{covered})"
            )));
        }
        if start > covered {
            return Err(bad(format!(
                "bytes {covered}..{start} of the data section belong to no tensor"
            )));
        }
        covered = end;
        previous = name;
    }
    if covered != data_len {
        return Err(bad(format!(
            "the last {} bytes of the file belong to no tensor",
            data_len - covered
        )));
    }
    Ok(n as usize)
}

/// The path of the shard `name` listed in the index `index` of the model directory `dir`.
///
/// # Errors
/// [`ModelError::InvalidFile`] naming the index when `name` is empty, absolute, or has a `..`
/// (or any component other than a plain name): a shard must lie inside the model directory.
pub(crate) fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
    if name.is_empty() || !plain || relative.is_absolute() {
        return Err(invalid(
            index,
            format!(
                "shard `{name}` is outside the model directory (only plain relative names are allowed)"
            ),
        ));
    }
    Ok(dir.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with `header` (JSON) and `data_len` zero bytes of data.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    fn reason(bytes: &[u8]) -> String {
        check_safetensors(Path::new("x.safetensors"), bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_header_passes() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}}"#;
        assert_eq!(check_safetensors(Path::new("x"), &file(h, 16)).unwrap(), h.len());
    }

    #[test]
    fn every_header_problem_is_named() {
        let t = |offsets: &str, shape: &str| {
            format!(r#"{{"a":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}}}"#)
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "shorter than the 8-byte"),
            (u64::MAX.to_le_bytes().to_vec(), "larger than"),
            (file("{}", 0)[..9].to_vec(), "runs past the end"),
            (file("[1]", 0), "not a JSON object"),
            (file(&t("[0, 8]", "[-2]"), 8), "invalid value"),
            (file(&t("[0, 8]", "[4294967296, 4294967296, 4294967296]"), 8), "more bytes than"),
            (file(&t("[0, 16]", "[2]"), 16), "hold 16 bytes"),
            (file(&t("[0, 99]", "[2]"), 8), "outside"),
            (file(&t("[8, 0]", "[2]"), 8), "outside"),
            (file(&t("[0, 8]", "[2]"), 12), "last 4 bytes"),
            (file(&t("[4, 12]", "[2]"), 12), "bytes 0..4"),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    4,
                ),
                "listed twice",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    8,
                ),
                "overlap",
            ),
            (file(r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, 1), "unknown dtype"),
            (file(r#"{"__metadata__":{"n":1}}"#, 0), "__metadata__"),
        ];
        for (bytes, want) in cases {
            let got = reason(&bytes);
            assert!(got.contains(want), "want `{want}` in `{got}`");
        }
    }

    #[test]
    fn deep_json_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = serde_json::from_str::<Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        let got = reason(&file(&format!("{{\"a\":{deep}}}"), 0));
        assert!(got.contains("recursion limit"), "{got}");
    }

    #[test]
    fn shards_stay_in_the_directory() {
        let (dir, index) = (Path::new("/m"), Path::new("/m/i.json"));
        assert_eq!(shard_path(dir, index, "a.safetensors").unwrap(), dir.join("a.safetensors"));
        assert_eq!(shard_path(dir, index, "sub/a").unwrap(), dir.join("sub/a"));
        for name in ["../a", "/etc/passwd", "", "sub/../../a", "./a", "a/.."] {
            let err = shard_path(dir, index, name).unwrap_err().to_string();
            assert!(err.contains("outside the model directory"), "{name}: {err}");
        }
    }
}
