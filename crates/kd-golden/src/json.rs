//! Reading case fields out of golden JSON and writing computed values back.

use serde_json::{Map, Value};

use crate::error::{GoldenError, Result};

/// One case of a golden file, with its name for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// The case's `name` (or `-` where there is none).
    pub name: &'a str,
    /// The whole case object.
    pub value: &'a Value,
}

impl<'a> Case<'a> {
    /// Wraps a case object; its name is read from its `name` field.
    pub fn new(value: &'a Value) -> Self {
        let name = value.get("name").and_then(Value::as_str).unwrap_or("-");
        Self { name, value }
    }

    fn err(&self, path: &str, expected: &str) -> GoldenError {
        GoldenError::Field {
            case: self.name.to_string(),
            field: path.to_string(),
            expected: expected.to_string(),
        }
    }

    /// The value at a dotted path such as `inputs.student_logits`, if present.
    pub fn find(&self, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(self.value, |v, key| v.get(key))
    }

    /// Whether a dotted path is present (and not `null`).
    pub fn has(&self, path: &str) -> bool {
        self.find(path).is_some_and(|v| !v.is_null())
    }

    /// The value at a dotted path.
    pub fn get(&self, path: &str) -> Result<&'a Value> {
        self.find(path).ok_or_else(|| self.err(path, "present"))
    }

    /// A number.
    pub fn f64(&self, path: &str) -> Result<f64> {
        self.get(path)?.as_f64().ok_or_else(|| self.err(path, "a number"))
    }

    /// A number, or `None` when the field is absent or `null`.
    pub fn opt_f64(&self, path: &str) -> Result<Option<f64>> {
        match self.find(path) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(path, "a number or null")),
        }
    }

    /// A boolean.
    pub fn bool(&self, path: &str) -> Result<bool> {
        self.get(path)?.as_bool().ok_or_else(|| self.err(path, "a boolean"))
    }

    /// A string.
    pub fn str(&self, path: &str) -> Result<&'a str> {
        self.get(path)?.as_str().ok_or_else(|| self.err(path, "a string"))
    }

    /// A 1-d array of numbers.
    pub fn vec(&self, path: &str) -> Result<Vec<f64>> {
        floats(self.get(path)?).ok_or_else(|| self.err(path, "an array of numbers"))
    }

    /// A 2-d array of numbers with rows of equal length.
    pub fn mat(&self, path: &str) -> Result<Vec<Vec<f64>>> {
        let rows = self.get(path)?.as_array().ok_or_else(|| self.err(path, "a 2-d array"))?;
        let m: Option<Vec<Vec<f64>>> = rows.iter().map(floats).collect();
        let m = m.ok_or_else(|| self.err(path, "a 2-d array of numbers"))?;
        if m.windows(2).any(|w| w[0].len() != w[1].len()) {
            return Err(self.err(path, "rows of equal length"));
        }
        Ok(m)
    }

    /// A 3-d array of numbers `[B][L][V]`.
    pub fn tensor3(&self, path: &str) -> Result<Vec<Vec<Vec<f64>>>> {
        let outer = self.get(path)?.as_array().ok_or_else(|| self.err(path, "a 3-d array"))?;
        outer
            .iter()
            .map(|b| {
                let rows = b.as_array().ok_or_else(|| self.err(path, "a 3-d array"))?;
                rows.iter()
                    .map(|r| floats(r).ok_or_else(|| self.err(path, "a 3-d array of numbers")))
                    .collect()
            })
            .collect()
    }

    /// A 1-d array of integers.
    pub fn ints(&self, path: &str) -> Result<Vec<i64>> {
        ints(self.get(path)?).ok_or_else(|| self.err(path, "an array of integers"))
    }

    /// A 2-d array of integers.
    pub fn int_mat(&self, path: &str) -> Result<Vec<Vec<i64>>> {
        let rows = self.get(path)?.as_array().ok_or_else(|| self.err(path, "a 2-d array"))?;
        rows.iter()
            .map(|r| ints(r).ok_or_else(|| self.err(path, "a 2-d array of integers")))
            .collect()
    }

    /// An error naming this case, for a field whose content is inconsistent.
    pub fn invalid(&self, path: &str, expected: &str) -> GoldenError {
        self.err(path, expected)
    }
}

fn floats(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    v.as_array()?.iter().map(Value::as_i64).collect()
}

/// A JSON number (non-finite values become `null`, which the checker then reports).
pub fn num(x: f64) -> Value {
    Value::from(x)
}

/// A JSON array of numbers.
pub fn arr(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

/// A JSON array of integers.
pub fn int_arr(xs: &[i64]) -> Value {
    Value::Array(xs.iter().map(|&x| Value::from(x)).collect())
}

/// A JSON 2-d array of numbers.
pub fn mat(rows: &[Vec<f64>]) -> Value {
    Value::Array(rows.iter().map(|r| arr(r)).collect())
}

/// A JSON 2-d array of integers.
pub fn int_mat(rows: &[Vec<i64>]) -> Value {
    Value::Array(rows.iter().map(|r| int_arr(r)).collect())
}

/// A JSON object from `(key, value)` pairs.
pub fn object<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect::<Map<_, _>>())
}
