//! Checkpoints: a directory with the student's weights (`model.safetensors`, keyed by module
//! path), the optimizer moments (`optimizer.safetensors`), everything else needed to resume
//! bit-for-bit (`state.json`: step, data cursor, seed, sampling RNG, the method's state, history)
//! and the size and SHA-256 of those files (`checksums.json`). A method that trains parameters
//! of its own ([`crate::methods::MethodParams`]) adds `method_params.safetensors` and their
//! moments `method_optimizer.safetensors`, both in `checksums.json` too.
//!
//! # Crash safety
//! A checkpoint is written into `<dir>.tmp`: each file is written and fsynced, `checksums.json`
//! last, then the directory itself is fsynced, renamed to `<dir>` and the parent directory
//! fsynced. A crash (or SIGKILL, or power loss) at any point leaves either no `<dir>` or a
//! complete one. On load every file is checked against `checksums.json` before it is parsed, so
//! a checkpoint truncated or damaged later gives [`TrainError::CorruptCheckpoint`] naming the
//! file, and [`crate::latest_checkpoint`] falls back to the previous good one. Checkpoints
//! without `checksums.json` (written before it existed) load unverified, with a warning.
//!
//! Loading never trusts sizes from a file: a safetensors header is checked against the file's
//! length before any tensor is read, the optimizer moments must match the weights they belong
//! to, and a `state.json` with missing fields or wrong types is a [`TrainError::Json`].
//!
//! # Test hook
//! `KD_TEST_CHECKPOINT_PAUSE_MS=<ms>` makes [`Checkpoint::save`] sleep that long after each file
//! and before each rename, so a crash test can kill the process inside a checkpoint write (see
//! `crates/kd-cli/tests/kill_resume.rs`). It changes timing only, never what is written.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::DataCursor;
use crate::error::{Result, TrainError};
use crate::metrics::{EvalRecord, StepRecord};

/// File of the student's weights inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of the loop state.
pub const STATE_FILE: &str = "state.json";
/// File of the method's own trainable parameters (only when it has some).
pub const METHOD_PARAMS_FILE: &str = "method_params.safetensors";
/// File of their optimizer moments (only with [`METHOD_PARAMS_FILE`]).
pub const METHOD_OPTIMIZER_FILE: &str = "method_optimizer.safetensors";
/// File of the size and SHA-256 of the others, written last.
pub const CHECKSUMS_FILE: &str = "checksums.json";
/// The files [`CHECKSUMS_FILE`] always covers, in the order they are written.
const CHECKED_FILES: [&str; 3] = [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE];
/// The files it covers when the method has parameters of its own.
const METHOD_FILES: [&str; 2] = [METHOD_PARAMS_FILE, METHOD_OPTIMIZER_FILE];
/// Environment variable of the test hook that slows [`Checkpoint::save`] down (milliseconds).
pub const PAUSE_ENV: &str = "KD_TEST_CHECKPOINT_PAUSE_MS";

/// Everything but tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// AdamW's update count (equal to `step` unless a run changed optimizers).
    pub optimizer_steps: u64,
    /// Next batch of the data order.
    pub cursor: DataCursor,
    /// Seed of the data order.
    pub seed: u64,
    /// State of the sampling RNG (on-policy methods draw from it).
    pub rng: u64,
    /// The method's own state ([`crate::methods::Method::state`]; `null` when stateless).
    #[serde(default)]
    pub method: serde_json::Value,
    /// Steps skipped because their loss or gradients were not finite (`on_non_finite = skip`).
    #[serde(default)]
    pub non_finite_steps: u64,
    /// Dynamic loss scaling (f16 training only).
    #[serde(default)]
    pub loss_scaler: Option<crate::precision::LossScaler>,
    /// Tokens consumed (counted positions).
    pub tokens_seen: u64,
    /// The learning-rate schedule the run was started with (`None` in checkpoints written before
    /// it was stored); a resume under another schedule is refused unless
    /// [`TrainConfig::allow_schedule_change`](crate::TrainConfig::allow_schedule_change).
    #[serde(default)]
    pub schedule: Option<crate::schedule::LrSchedule>,
    /// Training history up to `step`.
    pub history: Vec<StepRecord>,
    /// Evaluations up to `step`.
    pub evals: Vec<EvalRecord>,
}

fn to_bytes(data: &TensorData) -> Result<Vec<u8>> {
    if data.dtype() != DType::F32 {
        return Err(TrainError::checkpoint(
            "<memory>",
            format!("expected f32 tensors, got {:?}", data.dtype()),
        ));
    }
    Ok(data.as_bytes().to_vec())
}

/// Named `f32` tensors as the bytes of a safetensors file.
fn serialize_tensors(path: &Path, tensors: &BTreeMap<String, TensorData>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, d)| Ok((k.clone(), to_bytes(d)?, d.shape().to_vec())))
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.as_str(), v))
                .map_err(|e| TrainError::checkpoint(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| TrainError::checkpoint(path, e.to_string()))
}

/// Writes named `f32` tensors to a safetensors file and fsyncs it.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Checkpoint`].
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, TensorData>) -> Result<()> {
    write_synced(path, &serialize_tensors(path, tensors)?)
}

/// Reads named `f32` tensors from a safetensors file.
///
/// The header's sizes and offsets are checked against the file (safetensors' own validation:
/// header length within the file, offsets contiguous and in range, element counts without
/// overflow and equal to the bytes given) before any tensor is copied, so a corrupt or hostile
/// file is an error, never a panic or an allocation beyond the file's size.
///
/// # Errors
/// [`TrainError::Io`], or [`TrainError::Checkpoint`] for a corrupt file or another dtype.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let buf = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    parse_tensors(path, &buf)
}

/// Parses the bytes of a safetensors file of `f32` tensors (`path` names it in errors).
fn parse_tensors(path: &Path, buf: &[u8]) -> Result<BTreeMap<String, TensorData>> {
    let st = safetensors::SafeTensors::deserialize(buf)
        .map_err(|e| TrainError::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        // Validated above: the data is exactly 4 bytes per element of the shape.
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(out)
}

/// Writes `bytes` to `path` and fsyncs the file (not its directory).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

/// Fsyncs a directory, so the names created, renamed or removed in it are durable. A no-op
/// where directories cannot be opened (Windows).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = fs::File::open(dir).map_err(|e| TrainError::io(dir, e))?;
        d.sync_all().map_err(|e| TrainError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a JSON value to `path` through a temporary file, an fsync and a rename (the
/// directory is fsynced after it).
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Json`].
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| TrainError::Json { path: path.to_path_buf(), source })?;
    write_synced(&tmp, text.as_bytes())?;
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    sync_dir(parent_dir(path))
}

/// Size and SHA-256 of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChecksum {
    /// Length in bytes.
    bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    sha256: String,
}

impl FileChecksum {
    fn of(bytes: &[u8]) -> Self {
        Self { bytes: bytes.len() as u64, sha256: hex(&Sha256::digest(bytes)) }
    }
}

/// `checksums.json`: the checked files by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksums {
    files: BTreeMap<String, FileChecksum>,
}

impl Checksums {
    /// Reads `<dir>/checksums.json`; `None` when the checkpoint predates it.
    fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CHECKSUMS_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        let sums: Self =
            serde_json::from_slice(&text).map_err(|source| TrainError::Json { path, source })?;
        Ok(Some(sums))
    }

    /// The entry of `name`, or an error naming the manifest.
    fn entry(&self, dir: &Path, name: &str) -> Result<&FileChecksum> {
        self.files.get(name).ok_or_else(|| {
            TrainError::checkpoint(dir.join(CHECKSUMS_FILE), format!("no entry for `{name}`"))
        })
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a file's size (before reading it) with what the manifest says.
fn check_size(path: &Path, expected: &FileChecksum) -> Result<()> {
    let len = fs::metadata(path).map_err(|e| TrainError::io(path, e))?.len();
    if len != expected.bytes {
        return Err(TrainError::CorruptCheckpoint {
            path: path.to_path_buf(),
            expected: format!("{} bytes", expected.bytes),
            got: format!("{len} bytes"),
        });
    }
    Ok(())
}

fn check_digest(path: &Path, expected: &FileChecksum, got: String) -> Result<()> {
    if got != expected.sha256 {
        return Err(TrainError::CorruptCheckpoint {
            path: path.to_path_buf(),
            expected: format!("sha256 {}", expected.sha256),
            got: format!("sha256 {got}"),
        });
    }
    Ok(())
}

/// Reads `<dir>/<name>`, checked against `sums` when there are any: the size before reading
/// (no allocation beyond what the manifest promised), the SHA-256 after.
fn read_checked(dir: &Path, name: &str, sums: Option<&Checksums>) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let Some(sums) = sums else {
        return fs::read(&path).map_err(|e| TrainError::io(&path, e));
    };
    let expected = sums.entry(dir, name)?;
    check_size(&path, expected)?;
    let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    // The file may have changed since the size check: compare again.
    if bytes.len() as u64 != expected.bytes {
        return Err(TrainError::CorruptCheckpoint {
            path,
            expected: format!("{} bytes", expected.bytes),
            got: format!("{} bytes", bytes.len()),
        });
    }
    check_digest(&path, expected, hex(&Sha256::digest(&bytes)))?;
    Ok(bytes)
}

/// Checks `<dir>/<name>` against its manifest entry, streaming (no copy of the file in memory).
fn verify_file(dir: &Path, name: &str, sums: &Checksums) -> Result<()> {
    let path = dir.join(name);
    let expected = sums.entry(dir, name)?;
    check_size(&path, expected)?;
    let mut f = fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(&path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total != expected.bytes {
        return Err(TrainError::CorruptCheckpoint {
            path,
            expected: format!("{} bytes", expected.bytes),
            got: format!("{total} bytes"),
        });
    }
    check_digest(&path, expected, hex(&hasher.finalize()))
}

/// The test hook's pause ([`PAUSE_ENV`]), if set.
fn test_pause() -> Option<Duration> {
    let ms = std::env::var(PAUSE_ENV).ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}

fn pause(p: Option<Duration>) {
    if let Some(d) = p {
        std::thread::sleep(d);
    }
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Student weights by module path.
    pub model: BTreeMap<String, TensorData>,
    /// Optimizer moments (`m.<path>`, `v.<path>`).
    pub optimizer: BTreeMap<String, TensorData>,
    /// Loop state.
    pub state: TrainState,
    /// The method's own trainable parameters by module path (empty when it has none).
    pub method_params: BTreeMap<String, TensorData>,
    /// Their optimizer moments (`m.<path>`, `v.<path>`).
    pub method_optimizer: BTreeMap<String, TensorData>,
}

impl Checkpoint {
    /// Writes the checkpoint to `dir` atomically and durably: every file into `<dir>.tmp` with
    /// an fsync each (`checksums.json` last), the directory fsynced, renamed to `<dir>` (a
    /// previous checkpoint at `dir` is replaced) and the parent directory fsynced.
    ///
    /// # Errors
    /// [`TrainError::Io`], [`TrainError::Json`] or [`TrainError::Checkpoint`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        let hook = test_pause();
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let state_path = tmp.join(STATE_FILE);
        let state = serde_json::to_vec_pretty(&self.state)
            .map_err(|source| TrainError::Json { path: state_path, source })?;
        let mut contents = vec![
            (MODEL_FILE, serialize_tensors(&tmp.join(MODEL_FILE), &self.model)?),
            (OPTIMIZER_FILE, serialize_tensors(&tmp.join(OPTIMIZER_FILE), &self.optimizer)?),
            (STATE_FILE, state),
        ];
        if !self.method_params.is_empty() {
            let params = serialize_tensors(&tmp.join(METHOD_PARAMS_FILE), &self.method_params)?;
            let optim = &self.method_optimizer;
            let moments = serialize_tensors(&tmp.join(METHOD_OPTIMIZER_FILE), optim)?;
            contents.push((METHOD_PARAMS_FILE, params));
            contents.push((METHOD_OPTIMIZER_FILE, moments));
        }
        let mut sums = Checksums { files: BTreeMap::new() };
        for (name, bytes) in &contents {
            write_synced(&tmp.join(name), bytes)?;
            sums.files.insert(name.to_string(), FileChecksum::of(bytes));
            pause(hook);
        }
        let sums_path = tmp.join(CHECKSUMS_FILE);
        let text = serde_json::to_vec_pretty(&sums)
            .map_err(|source| TrainError::Json { path: sums_path.clone(), source })?;
        write_synced(&sums_path, &text)?;
        sync_dir(&tmp)?;
        pause(hook);
        // A directory cannot be renamed over a non-empty one: move an old `dir` aside first.
        let old = sibling(dir, "old");
        if dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
            }
            fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
            pause(hook);
        }
        fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
        sync_dir(parent_dir(dir))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }

    /// Reads a checkpoint directory, checking each file against `checksums.json` first and the
    /// optimizer moments against the weights.
    ///
    /// # Errors
    /// [`TrainError::Io`] when a file is missing, [`TrainError::CorruptCheckpoint`] when one
    /// differs from its checksum, [`TrainError::Json`] or [`TrainError::Checkpoint`] when one
    /// cannot be parsed or does not fit the others.
    pub fn load(dir: &Path) -> Result<Self> {
        let sums = Checksums::read(dir)?;
        if sums.is_none() {
            log::warn!("{}: no {CHECKSUMS_FILE}; loading it unverified", dir.display());
        }
        let state_path = dir.join(STATE_FILE);
        let text = read_checked(dir, STATE_FILE, sums.as_ref())?;
        let state = serde_json::from_slice(&text)
            .map_err(|source| TrainError::Json { path: state_path, source })?;
        let model_path = dir.join(MODEL_FILE);
        let model = parse_tensors(&model_path, &read_checked(dir, MODEL_FILE, sums.as_ref())?)?;
        let optim_path = dir.join(OPTIMIZER_FILE);
        let bytes = read_checked(dir, OPTIMIZER_FILE, sums.as_ref())?;
        let optimizer = parse_tensors(&optim_path, &bytes)?;
        // The method's files: listed in the manifest (or, unverified, present).
        let has_method = match &sums {
            Some(s) => METHOD_FILES.iter().any(|f| s.files.contains_key(*f)),
            None => dir.join(METHOD_PARAMS_FILE).exists(),
        };
        let (mut method_params, mut method_optimizer) = (BTreeMap::new(), BTreeMap::new());
        if has_method {
            let p = dir.join(METHOD_PARAMS_FILE);
            method_params =
                parse_tensors(&p, &read_checked(dir, METHOD_PARAMS_FILE, sums.as_ref())?)?;
            let p = dir.join(METHOD_OPTIMIZER_FILE);
            let bytes = read_checked(dir, METHOD_OPTIMIZER_FILE, sums.as_ref())?;
            method_optimizer = parse_tensors(&p, &bytes)?;
        }
        let ck = Self { model, optimizer, state, method_params, method_optimizer };
        check_moments(&ck.optimizer, &ck.model, MODEL_FILE)
            .map_err(|reason| TrainError::checkpoint(optim_path, reason))?;
        check_moments(&ck.method_optimizer, &ck.method_params, METHOD_PARAMS_FILE)
            .map_err(|reason| TrainError::checkpoint(dir.join(METHOD_OPTIMIZER_FILE), reason))?;
        Ok(ck)
    }

    /// Checks that `dir` holds a complete, undamaged checkpoint without keeping it in memory:
    /// each file's size and SHA-256 against `checksums.json` (streamed) and `state.json`
    /// parsed. A checkpoint without `checksums.json` is loaded in full instead.
    ///
    /// # Errors
    /// As [`Checkpoint::load`].
    pub fn verify(dir: &Path) -> Result<()> {
        let Some(sums) = Checksums::read(dir)? else {
            return Self::load(dir).map(|_| ());
        };
        let method = METHOD_FILES.iter().filter(|f| sums.files.contains_key(**f));
        for name in CHECKED_FILES.iter().chain(method) {
            verify_file(dir, name, &sums)?;
        }
        let state_path = dir.join(STATE_FILE);
        let text = fs::read(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        serde_json::from_slice::<TrainState>(&text)
            .map_err(|source| TrainError::Json { path: state_path, source })?;
        Ok(())
    }
}

/// Every optimizer tensor is `m.<param>` or `v.<param>` of a weight in `weights` (read from
/// `file`), flattened (`[numel]`, the layout [`crate::AdamW`] keeps), so restoring it cannot
/// panic later.
fn check_moments(
    optimizer: &BTreeMap<String, TensorData>,
    weights: &BTreeMap<String, TensorData>,
    file: &str,
) -> std::result::Result<(), String> {
    for (name, data) in optimizer {
        let param = name
            .strip_prefix("m.")
            .or_else(|| name.strip_prefix("v."))
            .ok_or_else(|| format!("tensor `{name}` is neither `m.<param>` nor `v.<param>`"))?;
        let weight =
            weights.get(param).ok_or_else(|| format!("`{name}` belongs to no weight of {file}"))?;
        let n = weight.num_elements();
        if data.shape().to_vec() != [n] {
            return Err(format!(
                "`{name}` has shape {:?}, expected [{n}] (`{param}` flattened)",
                data.shape().to_vec()
            ));
        }
    }
    Ok(())
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kd-train-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Checkpoint {
        let mut model = BTreeMap::new();
        model.insert("w".to_string(), TensorData::new(vec![1.5f32, -2.0, 0.25, 8.0], [2, 2]));
        model.insert("b".to_string(), TensorData::new(vec![0.5f32], [1]));
        let mut optimizer = BTreeMap::new();
        optimizer.insert("m.w".to_string(), TensorData::new(vec![0.1f32, 0.2, 0.3, 0.4], [4]));
        optimizer.insert("v.w".to_string(), TensorData::new(vec![1e-3f32, 2e-3, 3e-3, 4e-3], [4]));
        let state = TrainState {
            step: 3,
            optimizer_steps: 3,
            cursor: DataCursor { epoch: 1, position: 2 },
            seed: 7,
            rng: 0xDEAD_BEEF,
            method: serde_json::Value::Null,
            non_finite_steps: 0,
            loss_scaler: None,
            tokens_seen: 96,
            schedule: None,
            history: Vec::new(),
            evals: Vec::new(),
        };
        Checkpoint {
            model,
            optimizer,
            state,
            method_params: BTreeMap::new(),
            method_optimizer: BTreeMap::new(),
        }
    }

    fn assert_same(a: &Checkpoint, b: &Checkpoint) {
        assert_eq!(a.model, b.model);
        assert_eq!(a.optimizer, b.optimizer);
        assert_eq!(a.state, b.state);
    }

    #[test]
    fn tensors_round_trip_bit_exact() {
        let dir = scratch("tensors");
        let mut t = BTreeMap::new();
        t.insert(
            "a.weight".to_string(),
            TensorData::new(vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e-7], [2, 2]),
        );
        t.insert("b".to_string(), TensorData::new(vec![7.0f32], [1]));
        let p = dir.join("x.safetensors");
        write_tensors(&p, &t).unwrap();
        assert_eq!(read_tensors(&p).unwrap(), t);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_writes_checksums_and_loads_back() {
        let dir = scratch("save");
        let ck = sample();
        let path = dir.join("checkpoint-000003");
        ck.save(&path).unwrap();
        // Saved twice: the second replaces the first, and no temporary directory stays.
        ck.save(&path).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["checkpoint-000003"]);
        let sums = Checksums::read(&path).unwrap().unwrap();
        assert_eq!(sums.files.len(), 3);
        let model_bytes = fs::read(path.join(MODEL_FILE)).unwrap();
        assert_eq!(sums.files[MODEL_FILE], FileChecksum::of(&model_bytes));
        assert_eq!(sums.files[MODEL_FILE].sha256.len(), 64);
        Checkpoint::verify(&path).unwrap();
        assert_same(&Checkpoint::load(&path).unwrap(), &ck);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_of_a_known_string() {
        // FIPS 180-2 test vector.
        assert_eq!(
            FileChecksum::of(b"abc").sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn truncated_or_flipped_files_are_named() {
        let dir = scratch("corrupt");
        for name in CHECKED_FILES {
            for truncate in [true, false] {
                let path = dir.join("ck");
                sample().save(&path).unwrap();
                let file = path.join(name);
                let mut bytes = fs::read(&file).unwrap();
                if truncate {
                    bytes.truncate(bytes.len() / 2);
                } else {
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0x01;
                }
                fs::write(&file, &bytes).unwrap();
                for err in
                    [Checkpoint::load(&path).unwrap_err(), Checkpoint::verify(&path).unwrap_err()]
                {
                    match err {
                        TrainError::CorruptCheckpoint { path: p, expected, got } => {
                            assert_eq!(p, file);
                            let what = if truncate { "bytes" } else { "sha256" };
                            assert!(expected.contains(what), "{expected}");
                            assert!(got.contains(what), "{got}");
                            assert_ne!(expected, got);
                        }
                        other => panic!("{name} (truncate {truncate}): {other}"),
                    }
                }
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_bad_manifest_is_an_error() {
        let dir = scratch("manifest");
        let path = dir.join("ck");
        sample().save(&path).unwrap();
        let sums = path.join(CHECKSUMS_FILE);
        fs::write(&sums, br#"{"files": {"model.safetensors": {"bytes": "12"}}}"#).unwrap();
        assert!(
            matches!(Checkpoint::load(&path), Err(TrainError::Json { path: p, .. }) if p == sums)
        );
        fs::write(&sums, br#"{"files": {}}"#).unwrap();
        match Checkpoint::verify(&path).unwrap_err() {
            TrainError::Checkpoint { path: p, reason } => {
                assert_eq!(p, sums);
                assert!(reason.contains(MODEL_FILE), "{reason}");
            }
            other => panic!("{other}"),
        }
        // Without a manifest (a checkpoint from before checksums): loaded unverified.
        fs::remove_file(&sums).unwrap();
        assert_same(&Checkpoint::load(&path).unwrap(), &sample());
        Checkpoint::verify(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_with_wrong_types_is_a_json_error() {
        let dir = scratch("state");
        let path = dir.join("ck");
        sample().save(&path).unwrap();
        fs::remove_file(path.join(CHECKSUMS_FILE)).unwrap();
        let state = path.join(STATE_FILE);
        let text = fs::read_to_string(&state).unwrap();
        for bad in [
            text.replace("\"step\": 3", "\"step\": \"3\""),
            text.replace("\"step\": 3", "\"step\": -3"),
            text.replace("\"seed\": 7,", ""),
            "[]".to_string(),
            String::new(),
        ] {
            assert_ne!(bad, text);
            fs::write(&state, &bad).unwrap();
            match Checkpoint::load(&path) {
                Err(TrainError::Json { path: p, .. }) => assert_eq!(p, state),
                other => panic!("{bad}: {other:?}"),
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn optimizer_moments_must_fit_the_weights() {
        let dir = scratch("moments");
        let path = dir.join("ck");
        let cases: [(&str, TensorData); 3] = [
            ("m.w", TensorData::new(vec![0.0f32; 4], [2, 2])),
            ("m.w", TensorData::new(vec![0.0f32; 3], [3])),
            ("m.nope", TensorData::new(vec![0.0f32; 4], [4])),
        ];
        for (name, data) in cases {
            let mut ck = sample();
            ck.optimizer.insert(name.to_string(), data);
            ck.save(&path).unwrap();
            match Checkpoint::load(&path) {
                Err(TrainError::Checkpoint { path: p, reason }) => {
                    assert_eq!(p, path.join(OPTIMIZER_FILE));
                    assert!(reason.contains(name), "{reason}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A safetensors file from a header string and `data_len` bytes of data.
    fn raw_safetensors(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }

    #[test]
    fn hostile_safetensors_are_errors_not_panics() {
        let dir = scratch("hostile");
        let p = dir.join("x.safetensors");
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty file", Vec::new()),
            ("short length", vec![1, 2, 3]),
            ("huge header length", u64::MAX.to_le_bytes().to_vec()),
            ("header past the end", {
                let mut b = 1_000u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            }),
            ("not json", raw_safetensors("{not json", 0)),
            (
                "offsets past the data",
                raw_safetensors(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
            ),
            (
                "overlapping offsets",
                raw_safetensors(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    12,
                ),
            ),
            (
                "shape bomb",
                raw_safetensors(
                    r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
                    16,
                ),
            ),
            (
                "shape and bytes disagree",
                raw_safetensors(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, 16),
            ),
            (
                "negative size",
                raw_safetensors(r#"{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#, 16),
            ),
            (
                "wrong dtype",
                raw_safetensors(r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}"#, 8),
            ),
        ];
        // A valid file cut short.
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), TensorData::new(vec![1.0f32; 8], [8]));
        write_tensors(&p, &t).unwrap();
        let full = fs::read(&p).unwrap();
        cases.push(("truncated", full[..full.len() - 5].to_vec()));
        for (what, bytes) in cases {
            fs::write(&p, &bytes).unwrap();
            match read_tensors(&p) {
                Err(TrainError::Checkpoint { path, .. }) => assert_eq!(path, p, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latest_checkpoint_falls_back_past_damaged_ones() {
        use crate::trainer::{checkpoint_name, latest_checkpoint};
        let dir = scratch("latest");
        assert_eq!(latest_checkpoint(&dir).unwrap(), None);
        let paths: Vec<PathBuf> = [2u64, 4, 6]
            .iter()
            .map(|&step| {
                let mut ck = sample();
                ck.state.step = step;
                let p = dir.join(checkpoint_name(step));
                ck.save(&p).unwrap();
                p
            })
            .collect();
        // A checkpoint killed mid-write is only a `.tmp` directory: never a candidate.
        fs::create_dir_all(dir.join(format!("{}.tmp", checkpoint_name(8)))).unwrap();
        assert_eq!(latest_checkpoint(&dir).unwrap().as_ref(), Some(&paths[2]));
        // A flipped byte in the newest, then a truncated file in the next.
        let model = paths[2].join(MODEL_FILE);
        let mut bytes = fs::read(&model).unwrap();
        bytes[20] ^= 0x80;
        fs::write(&model, bytes).unwrap();
        assert_eq!(latest_checkpoint(&dir).unwrap().as_ref(), Some(&paths[1]));
        let state = paths[1].join(STATE_FILE);
        let text = fs::read(&state).unwrap();
        fs::write(&state, &text[..text.len() - 1]).unwrap();
        assert_eq!(latest_checkpoint(&dir).unwrap().as_ref(), Some(&paths[0]));
        assert_eq!(Checkpoint::load(&paths[0]).unwrap().state.step, 2);
        // None left: an error naming the directory and each damaged file, not a fresh start.
        fs::remove_file(paths[0].join(OPTIMIZER_FILE)).unwrap();
        match latest_checkpoint(&dir).unwrap_err() {
            TrainError::Checkpoint { path, reason } => {
                assert_eq!(path, dir);
                assert!(reason.contains(&model.display().to_string()), "{reason}");
                assert!(reason.contains(&state.display().to_string()), "{reason}");
                assert!(reason.contains(OPTIMIZER_FILE), "{reason}");
            }
            other => panic!("{other}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
