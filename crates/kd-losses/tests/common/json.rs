//! Golden JSON → tensors, shared by the golden harness and the dtype tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde_json::Value;

/// `tests/golden`, or the directory named by `KD_GOLDEN_DIR` when that variable is set.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("KD_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    }
}

/// The parsed golden file `<name>.json`.
pub fn golden_file(name: &str) -> Value {
    let path = golden_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A number (booleans as 0 / 1).
pub fn num(v: &Value) -> f64 {
    match v {
        Value::Bool(b) => f64::from(u8::from(*b)),
        _ => v.as_f64().unwrap_or_else(|| panic!("expected a number, got {v}")),
    }
}

/// Flattens nested arrays of numbers and returns the values and the shape.
pub fn flat(v: &Value) -> (Vec<f64>, Vec<usize>) {
    fn walk(v: &Value, depth: usize, out: &mut Vec<f64>, shape: &mut Vec<usize>) {
        match v {
            Value::Array(items) => {
                if shape.len() <= depth {
                    shape.push(items.len());
                }
                for item in items {
                    walk(item, depth + 1, out, shape);
                }
            }
            other => out.push(num(other)),
        }
    }
    let (mut out, mut shape) = (Vec::new(), Vec::new());
    walk(v, 0, &mut out, &mut shape);
    (out, shape)
}

/// An `f32` tensor of the (rounded) values.
pub fn floats<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let (data, shape) = flat(v);
    let data: Vec<f32> = data.into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// An `f64` tensor of the exact values.
pub fn floats_f64<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let (data, shape) = flat(v);
    Tensor::from_data(TensorData::new(data, shape), (device, burn::tensor::DType::F64))
}

/// An integer tensor.
pub fn ints<const D: usize>(v: &Value, device: &Device) -> Tensor<D, Int> {
    let (data, shape) = flat(v);
    let data: Vec<i64> = data.into_iter().map(|x| x as i64).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A boolean mask from 0 / 1 (or false / true).
pub fn mask<const D: usize>(v: &Value, device: &Device) -> Tensor<D, Bool> {
    ints::<D>(v, device).equal_elem(1)
}

/// The values of a float tensor of any dtype, as `f64`.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_into_vec::<f64>().unwrap()
}
