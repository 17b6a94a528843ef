//! The parity harness shared by the integration tests (see `parity.rs` for what it checks).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::CausalLm;
use kd_models::sampling::{GenerationConfig, generate};
use kd_models::tokenizer::Tokenizer;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// A tensor from `expected.safetensors`.
#[derive(Debug, Clone)]
enum Expected {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl Expected {
    fn shape(&self) -> &[usize] {
        match self {
            Self::F32(s, _) | Self::I64(s, _) => s,
        }
    }
    fn floats(&self) -> &[f32] {
        match self {
            Self::F32(_, v) => v,
            Self::I64(..) => panic!("expected a float tensor"),
        }
    }
    fn ints(&self) -> &[i64] {
        match self {
            Self::I64(_, v) => v,
            Self::F32(..) => panic!("expected an int tensor"),
        }
    }
    fn int_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let s = self.shape();
        Tensor::from_data(TensorData::new(self.ints().to_vec(), [s[0], s[1]]), device)
    }
}

fn read_expected(path: &Path) -> HashMap<String, Expected> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let t = match view.dtype() {
                Dtype::F32 => Expected::F32(
                    shape,
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I64 => Expected::I64(
                    shape,
                    view.data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I32 => Expected::I64(
                    shape,
                    view.data()
                        .chunks_exact(4)
                        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                        .collect(),
                ),
                Dtype::F64 => Expected::F32(
                    shape,
                    view.data()
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                        .collect(),
                ),
                Dtype::F16 | Dtype::BF16 => {
                    let f16 = view.dtype() == Dtype::F16;
                    let values = view
                        .data()
                        .chunks_exact(2)
                        .map(|b| {
                            let bits = u16::from_le_bytes([b[0], b[1]]);
                            if f16 {
                                half::f16::from_bits(bits).to_f32()
                            } else {
                                half::bf16::from_bits(bits).to_f32()
                            }
                        })
                        .collect();
                    Expected::F32(shape, values)
                }
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, t)
        })
        .collect()
}

fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// Collects failures of one model.
pub struct Report {
    pub model: String,
    pub failures: Vec<String>,
    pub checks: usize,
}

impl Report {
    fn check(&mut self, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(format!("{} / {case}: {}", self.model, detail()));
        }
    }

    /// Max |got − want| over positions where `keep(row, pos)`; values are `[batch, seq, width]`.
    fn close(
        &mut self,
        case: &str,
        got: &[f32],
        want: &Expected,
        tol: f64,
        keep: impl Fn(usize, usize) -> bool,
    ) {
        let shape = want.shape().to_vec();
        let want = want.floats();
        if got.len() != want.len() {
            self.check(case, false, || {
                format!("got {} values, expected shape {shape:?}", got.len())
            });
            return;
        }
        let (seq, width) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let mut worst = (0.0f64, 0usize);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (row, pos) = (i / (seq * width), (i / width) % seq);
            let diff = (*g as f64 - *w as f64).abs();
            let diff = if diff.is_nan() { f64::INFINITY } else { diff }; // NaN fails
            if keep(row, pos) && diff > worst.0 {
                worst = (diff, i);
            }
        }
        self.check(case, worst.0 <= tol, || {
            format!(
                "max |diff| {:.3e} > {tol:.0e} at flat index {} (shape {shape:?})",
                worst.0, worst.1
            )
        });
    }
}

pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("KD_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// Model directories (with a `config.json`) at or below `root`, at most three levels deep.
pub fn model_dirs(root: &Path) -> Vec<PathBuf> {
    assert!(root.is_dir(), "fixtures dir {} does not exist", root.display());
    let mut dirs = Vec::new();
    collect_model_dirs(root, 0, &mut dirs);
    dirs.sort();
    dirs
}

fn collect_model_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join("config.json").is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth >= 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            collect_model_dirs(&path, depth + 1, out);
        }
    }
}

pub fn check_model(dir: &Path, device: &Device, backend: &str) -> Report {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = format!("{name} [{backend}]");
    let mut r = Report { model: name, failures: Vec::new(), checks: 0 };
    let device = device.clone();
    let model = match CausalLm::from_pretrained(dir, &device) {
        Ok(m) => m,
        Err(e) => {
            r.check("load", false, || e.to_string());
            return r;
        }
    };
    let json: Value = std::fs::read_to_string(dir.join("expected.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let tol_of = |key: &str| json["tolerance"][key].as_f64().unwrap_or(1e-4);
    let (logits_tol, hidden_tol) = (tol_of("logits_abs"), tol_of("hidden_abs"));

    let expected_path = dir.join("expected.safetensors");
    if expected_path.is_file() {
        let e = read_expected(&expected_path);
        check_plain(&mut r, &model, &e, logits_tol, hidden_tol, &device);
        check_padded(&mut r, &model, &e, logits_tol, hidden_tol, &device);
        check_generate(&mut r, &model, &e, logits_tol, &device);
    } else if let Some(ids) = json["generate"]["output_ids"].as_array() {
        // No tensors: still check the greedy tokens from the JSON.
        let prompt = ints(&json["generate"]["prompt_ids"]);
        let want: Vec<u32> = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let n = want.len() - prompt.len();
        let got = greedy(&model, prompt, n, &device);
        r.check("generate.output_ids", got == want, || format!("got {got:?}, expected {want:?}"));
    }
    if let Some(want) = json.get("greedy_ids_from_bos").and_then(Value::as_array) {
        let want: Vec<u32> = want.iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = greedy(&model, vec![want[0]], want.len() - 1, &device);
        r.check("greedy_ids_from_bos", got == want, || format!("got {got:?}, expected {want:?}"));
    }
    check_tokenizer(&mut r, dir, &json);
    r
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).map(|u| u as u32).collect())
        .unwrap_or_default()
}

fn greedy(model: &CausalLm, prompt: Vec<u32>, n: usize, device: &Device) -> Vec<u32> {
    let config = GenerationConfig { max_new_tokens: n, ..Default::default() };
    generate(model, &[prompt], &config, device, |_, _| {}).unwrap().sequences.remove(0)
}

fn check_plain(
    r: &mut Report,
    model: &CausalLm,
    e: &HashMap<String, Expected>,
    logits_tol: f64,
    hidden_tol: f64,
    device: &Device,
) {
    let Some(ids) = e.get("plain.input_ids") else {
        return;
    };
    let out = model.forward_with(ids.int_tensor(device), None, None, None, true);
    if let Some(want) = e.get("plain.logits") {
        r.close("plain.logits", &to_f32(out.logits), want, logits_tol, |_, _| true);
    }
    let hidden = out.hidden_states.expect("hidden states requested");
    let mut i = 0;
    while let Some(want) = e.get(&format!("plain.hidden_states.{i}")) {
        match hidden.get(i) {
            Some(h) => r.close(
                &format!("plain.hidden_states.{i}"),
                &to_f32(h.clone()),
                want,
                hidden_tol,
                |_, _| true,
            ),
            None => r.check(&format!("plain.hidden_states.{i}"), false, || {
                format!("only {} hidden states", hidden.len())
            }),
        }
        i += 1;
    }
    if i > 0 {
        r.check("plain.hidden_states.len", hidden.len() == i, || {
            format!("{} hidden states, expected {i}", hidden.len())
        });
    }
    if let Some(want) = e.get("plain.last_hidden_state") {
        let last = hidden.last().expect("at least one hidden state").clone();
        r.close("plain.last_hidden_state", &to_f32(last), want, hidden_tol, |_, _| true);
    }
}

fn check_padded(
    r: &mut Report,
    model: &CausalLm,
    e: &HashMap<String, Expected>,
    logits_tol: f64,
    hidden_tol: f64,
    device: &Device,
) {
    let (Some(ids), Some(mask)) = (e.get("padded.input_ids"), e.get("padded.attention_mask"))
    else {
        return;
    };
    let [batch, seq] = [ids.shape()[0], ids.shape()[1]];
    let mask_values = mask.ints().to_vec();
    let real = |row: usize, pos: usize| mask_values[row * seq + pos] == 1;
    let explicit = e.get("padded.position_ids").map(|p| p.int_tensor(device));
    for (label, positions) in [("explicit positions", explicit), ("default positions", None)] {
        let out = model.forward_with(
            ids.int_tensor(device),
            Some(mask.int_tensor(device)),
            positions,
            None,
            true,
        );
        if let Some(want) = e.get("padded.logits") {
            r.close(
                &format!("padded.logits ({label})"),
                &to_f32(out.logits),
                want,
                logits_tol,
                real,
            );
        }
        let mut hidden = out.hidden_states.unwrap();
        for (i, h) in hidden.iter().enumerate() {
            if let Some(want) = e.get(&format!("padded.hidden_states.{i}")) {
                let case = format!("padded.hidden_states.{i} ({label})");
                r.close(&case, &to_f32(h.clone()), want, hidden_tol, real);
            }
        }
        if let Some(want) = e.get("padded.last_hidden_state") {
            let last = hidden.pop().unwrap();
            r.close(
                &format!("padded.last_hidden_state ({label})"),
                &to_f32(last),
                want,
                hidden_tol,
                real,
            );
        }
    }
    // Each row alone, without its padding, gives the same logits at its real positions.
    let Some(want) = e.get("padded.logits") else {
        return;
    };
    let vocab = want.shape()[2];
    for row in 0..batch {
        let start = (0..seq).find(|&p| real(row, p)).unwrap_or(seq);
        if start == 0 || start == seq {
            continue;
        }
        let row_ids: Vec<i64> = ids.ints()[row * seq + start..(row + 1) * seq].to_vec();
        let n = row_ids.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(row_ids, [1, n]), device);
        let got = to_f32(model.forward(input, None, None));
        let want_row = Expected::F32(
            vec![1, n, vocab],
            want.floats()[(row * seq + start) * vocab..(row + 1) * seq * vocab].to_vec(),
        );
        r.close(
            &format!("padded row {row} alone vs expected"),
            &got,
            &want_row,
            logits_tol,
            |_, _| true,
        );
    }
}

fn check_generate(
    r: &mut Report,
    model: &CausalLm,
    e: &HashMap<String, Expected>,
    tol: f64,
    device: &Device,
) {
    let (Some(prompt), Some(output)) = (e.get("generate.prompt_ids"), e.get("generate.output_ids"))
    else {
        return;
    };
    let prompt: Vec<u32> = prompt.ints().iter().map(|&t| t as u32).collect();
    let want: Vec<u32> = output.ints().iter().map(|&t| t as u32).collect();
    let config = GenerationConfig {
        max_new_tokens: want.len() - prompt.len(),
        output_step_logits: true,
        ..Default::default()
    };
    let out = generate(model, &[prompt], &config, device, |_, _| {}).unwrap();
    let got = &out.sequences[0];
    r.check("generate.output_ids", *got == want, || format!("got {got:?}, expected {want:?}"));
    if let (Some(want), Some(logits)) = (e.get("generate.step_logits"), out.step_logits) {
        let [steps, vocab] = [want.shape()[0], want.shape()[1]];
        let want = Expected::F32(vec![1, steps, vocab], want.floats().to_vec());
        r.close("generate.step_logits", &to_f32(logits), &want, tol, |_, _| true);
    }
}

fn check_tokenizer(r: &mut Report, dir: &Path, json: &Value) {
    let Some(cases) = json["tokenizer_cases"].as_array() else {
        return;
    };
    let tok = match Tokenizer::from_dir(dir) {
        Ok(t) => t,
        Err(e) => {
            r.check("tokenizer load", false, || e.to_string());
            return;
        }
    };
    for (i, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().unwrap_or_default();
        let add = case["add_special_tokens"].as_bool().unwrap_or(false);
        let label = format!("tokenizer case {i} {text:?}");
        let want_ids = ints(&case["ids"]);
        let got = tok.encode(text, add).unwrap();
        r.check(&format!("{label} ids"), got == want_ids, || {
            format!("got {got:?}, expected {want_ids:?}")
        });
        if let Some(want) = case["tokens"].as_array() {
            let want: Vec<&str> = want.iter().filter_map(Value::as_str).collect();
            let got = tok.tokens(text, add).unwrap();
            r.check(&format!("{label} tokens"), got == want, || {
                format!("got {got:?}, expected {want:?}")
            });
        }
        if let Some(want) = case["decoded_skip_special"].as_str() {
            let got = tok.decode(&want_ids, true).unwrap();
            r.check(&format!("{label} decode"), got == want, || {
                format!("got {got:?}, expected {want:?}")
            });
        }
    }
    if let (Some(prompt), Some(ids)) =
        (json["generate"]["prompt"].as_str(), json["generate"]["prompt_ids"].as_array())
    {
        let want: Vec<u32> = ids.iter().filter_map(Value::as_u64).map(|u| u as u32).collect();
        let got = tok.encode_prompt(prompt).unwrap();
        r.check("generate.prompt encode", got == want, || {
            format!("got {got:?}, expected {want:?}")
        });
        if let Some(want) = json["generate"]["decoded"].as_str() {
            let got = tok.decode(&ints(&json["generate"]["output_ids"]), false).unwrap();
            r.check("generate.decoded", got == want, || format!("got {got:?}, expected {want:?}"));
        }
    }
}

/// The devices the parity tests run on: flex always, the others with their cargo features.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut v = vec![("flex", Device::flex())];
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    v.push(("ndarray", Device::ndarray()));
    #[cfg(feature = "wgpu")]
    v.push(("wgpu", Device::wgpu(burn::tensor::DeviceKind::default())));
    #[cfg(feature = "vulkan")]
    v.push(("vulkan", Device::vulkan(burn::tensor::DeviceKind::default())));
    #[cfg(feature = "cuda")]
    v.push(("cuda", Device::cuda(0)));
    v
}

/// Runs [`check_model`] on every model directory under `root`, on every device of
/// [`devices`], and panics with all failures.
pub fn check_all(root: &Path) {
    let dirs = model_dirs(root);
    assert!(!dirs.is_empty(), "no model directories (with config.json) under {}", root.display());
    let mut failures = Vec::new();
    for (backend, device) in devices() {
        for dir in &dirs {
            let report = check_model(dir, &device, backend);
            eprintln!(
                "{}: {} checks, {} failed",
                report.model,
                report.checks,
                report.failures.len()
            );
            assert!(report.checks > 0, "{}: nothing was checked", report.model);
            failures.extend(report.failures);
        }
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
}

/// One stored tensor of a safetensors file, raw bytes included.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl RawTensor {
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { name: name.into(), dtype: Dtype::F32, shape, data }
    }
    pub fn values(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32, "{}", self.name);
        self.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

/// All tensors of a safetensors file, sorted by name.
pub fn read_raw(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| RawTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes tensors as a safetensors file.
pub fn write_raw(path: &Path, tensors: &[RawTensor]) {
    let bytes = safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A fresh, empty scratch directory under cargo's per-target temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kd-models").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the files (not subdirectories) of `src` into a fresh scratch directory `name`.
pub fn copy_fixture(src: &Path, name: &str) -> PathBuf {
    let dst = scratch_dir(name);
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
        }
    }
    dst
}

/// A checked-in fixture directory by name (`hf-tiny-gpt2`, `hf-tiny-llama`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes a JSON file.
pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Logits of the fixture's `plain.input_ids` as a flat vector.
pub fn plain_logits(model: &CausalLm, fixture_dir: &Path, device: &Device) -> Vec<f32> {
    let e = read_expected(&fixture_dir.join("expected.safetensors"));
    to_f32(model.forward(e["plain.input_ids"].int_tensor(device), None, None))
}

/// Fails the test when a model directory fails any parity check.
pub fn assert_parity(dir: &Path) {
    let report = check_model(dir, &Device::flex(), "flex");
    assert!(report.checks > 20, "{}: only {} checks ran", report.model, report.checks);
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
}
