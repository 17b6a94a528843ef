//! Reading Hugging Face `config.json` objects into `serde`-derived structs, with errors that
//! name the offending key.
//!
//! Each architecture declares the keys it reads as a `#[derive(Deserialize)]` struct (HF names,
//! `#[serde(alias = ..)]` for HF's alternative names, `#[serde(default = ..)]` for the defaults
//! of the reference `transformers` config class) and parses it with [`from_object`]. Rules shared
//! by every architecture:
//!
//! - keys a struct does not declare are ignored;
//! - a top-level `null` means "not set" (the default applies), except for the keys the caller
//!   lists, where `null` has its own meaning (Mistral's `sliding_window: null`: no window);
//! - a value of the wrong type is a [`ModelError::Config`] naming the key path
//!   (`rope_scaling.factor`) and what was expected;
//! - a string that is not one of an enum's accepted names (an activation, a RoPE type) is a
//!   [`ModelError::UnsupportedConfig`] naming the key path and the value.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};

/// Deserializes `T` from a `config.json` object.
///
/// Top-level `null` values are dropped (so the key takes its default) unless the key is in
/// `keep_null`.
///
/// # Errors
/// [`ModelError::Config`] naming the key path for a value of the wrong type,
/// [`ModelError::UnsupportedConfig`] for a name outside an enum's accepted ones.
pub(crate) fn from_object<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    keep_null: &[&str],
) -> Result<T> {
    let set: Map<String, Value> = obj
        .iter()
        .filter(|(k, v)| !v.is_null() || keep_null.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_path_to_error::deserialize(Value::Object(set)).map_err(|err| {
        let key = err.path().to_string();
        let reason = err.into_inner().to_string();
        match unknown_variant(&reason) {
            Some(value) => ModelError::UnsupportedConfig { key, value },
            None => ModelError::Config { key, reason },
        }
    })
}

/// The value of serde's "unknown variant `value`, expected one of ..." message.
fn unknown_variant(reason: &str) -> Option<String> {
    let rest = reason.strip_prefix("unknown variant `")?;
    rest.find("`, expected").map(|end| rest[..end].to_string())
}

/// `#[serde(default = "int::<N>")]`: an integer default.
pub(crate) fn int<const N: usize>() -> usize {
    N
}

/// `#[serde(deserialize_with = "token_ids")]`: a token id or a list of them (LLaMA 3 has several
/// `eos_token_id`s), read as a list.
pub(crate) fn token_ids<'de, D: Deserializer<'de>>(
    de: D,
) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    let value = Value::deserialize(de)?;
    match OneOrMany::deserialize(&value) {
        Ok(OneOrMany::One(id)) => Ok(vec![id]),
        Ok(OneOrMany::Many(ids)) => Ok(ids),
        Err(_) => Err(serde::de::Error::custom(format!(
            "expected a token id or a list of token ids, got {value}"
        ))),
    }
}

/// A list of token ids as `config.json` writes it: `null`, one id, or a list.
pub(crate) fn tokens_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// [`ModelError::Config`] for `key` unless `v > 0`.
pub(crate) fn positive(key: &str, v: usize) -> Result<()> {
    if v == 0 { Err(ModelError::config(key, "must be > 0")) } else { Ok(()) }
}

/// [`ModelError::Config`] for `key` unless `v > 0` (NaN is not).
pub(crate) fn positive_f64(key: &str, v: f64) -> Result<()> {
    if v.is_nan() || v <= 0.0 { Err(ModelError::config(key, "must be > 0")) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Keys {
        #[serde(default = "int::<7>")]
        n: usize,
        #[serde(default)]
        maybe: Option<usize>,
        #[serde(default, deserialize_with = "token_ids")]
        ids: Vec<u32>,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Nested {
        kind: Kind,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Plain,
    }

    fn parse(v: Value, keep_null: &[&str]) -> Result<Keys> {
        from_object(v.as_object().unwrap(), keep_null)
    }

    #[test]
    fn null_is_unset_unless_kept() {
        let keys = parse(json!({"n": null, "maybe": null, "other": "ignored"}), &[]).unwrap();
        assert_eq!(keys, Keys { n: 7, maybe: None, ids: vec![], nested: None });
        let err = parse(json!({"n": null}), &["n"]).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "n"), "{err}");
    }

    #[test]
    fn token_ids_are_one_or_many() {
        assert_eq!(parse(json!({"ids": 3}), &[]).unwrap().ids, vec![3]);
        assert_eq!(parse(json!({"ids": [3, 4]}), &[]).unwrap().ids, vec![3, 4]);
        let err = parse(json!({"ids": "x"}), &[]).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "ids"), "{err}");
        assert!(err.to_string().contains("token id"), "{err}");
    }

    #[test]
    fn errors_name_the_key_path() {
        let err = parse(json!({"n": "x"}), &[]).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "n"), "{err}");
        assert!(err.to_string().contains("expected usize"), "{err}");
        let err = parse(json!({"n": -1}), &[]).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "n"), "{err}");
        let err = parse(json!({"nested": {"kind": "fancy"}}), &[]).unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedConfig { key, value }
                if key == "nested.kind" && value == "fancy"),
            "{err}"
        );
        let err = parse(json!({"nested": 3}), &[]).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "nested"), "{err}");
    }
}
