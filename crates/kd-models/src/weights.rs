//! Reading and writing safetensors weights: memory-mapped files, sharded checkpoints and their
//! index, stored-dtype conversion, and the HF storage layout of linear and norm layers. Nothing
//! here knows an architecture: each one asks `Weights` for the tensors it needs by key.
//!
//! Safetensors files are memory-mapped and read one tensor at a time, straight into a parameter
//! of the dtype asked for in [`LoadOptions::dtype`] (by default the device's default float
//! dtype, `f32` unless changed through burn's device settings). The pages of the map are handed
//! back to the OS as they are read, so the peak resident memory of a load is about the size of
//! the model in that dtype, not the size of the files plus the model.
//!
//! Weights may be stored as `F32`, `F16`, `BF16` or `F64`. Each tensor is converted element by
//! element from its stored type into the requested one; a tensor already stored in the requested
//! type is copied bit for bit (a `bf16` checkpoint loaded as `bf16` never passes through `f32`).
//! The transpose of `nn.Linear` weights (`[out, in]` → burn's `[in, out]`) happens in the same
//! pass.
//!
//! A checkpoint file must not be truncated or rewritten by another process while it loads: as
//! with every memory-mapped loader, the process would then be killed by `SIGBUS`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{
    DType, Device, Element, FloatDType, Tensor, TensorCreationOptions, TensorData, bf16, f16,
};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::{SafeTensorError, SafeTensors, View};

use crate::checks::{self, Entries};
use crate::error::{ModelError, Result};
use crate::layers::{LayerNorm, RmsNorm};

/// File name of the weights in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// How to load a checkpoint ([`crate::load::load_pretrained_with`], [`crate::load::load_from_bytes_with`]).
///
/// The default loads every parameter in the device's default float dtype (`f32` unless changed),
/// which is what [`crate::load::load_pretrained`] does.
///
/// # Example: parameters in bf16, whatever the checkpoint stores
///
/// ```
/// use burn::tensor::FloatDType;
/// use kd_models::load::LoadOptions;
///
/// let options = LoadOptions::default().with_dtype(FloatDType::BF16);
/// assert_eq!(options.dtype, Some(FloatDType::BF16));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The dtype of the loaded parameters. Stored tensors are converted to it one at a time; a
    /// tensor stored in it is copied bit for bit. `None`: the device's default float dtype —
    /// `f32` unless changed through burn's device settings — which is how loading worked before
    /// this option existed.
    pub dtype: Option<FloatDType>,
}

impl LoadOptions {
    /// These options with the parameter dtype set to `dtype`.
    pub fn with_dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = Some(dtype);
        self
    }
}

/// The tensors of every safetensors file of the model directory `dir`: `model.safetensors`, else
/// the shards listed in `model.safetensors.index.json`, memory-mapped.
///
/// `key_prefix` (`transformer.`, `model.`) is added to stored keys that lack it (hub layouts).
///
/// # Errors
/// [`ModelError::Io`] when no weights file exists or one cannot be mapped, [`ModelError::Json`] /
/// [`ModelError::InvalidFile`] for a broken shard index (a shard outside the directory, a tensor
/// it lists that its shard lacks, ...), [`ModelError::Safetensors`] for a corrupt header or a
/// tensor stored twice, [`ModelError::InvalidArgument`] when `device` cannot hold the requested
/// dtype.
pub(crate) fn read_dir(
    dir: &Path,
    key_prefix: &'static str,
    options: &LoadOptions,
    device: &Device,
) -> Result<Weights> {
    let checkpoint = checkpoint_files(dir)?;
    let mut weights = Weights::new(key_prefix, options, device)?;
    for path in &checkpoint.files {
        let map = map_file(path)?;
        weights.add_file(path.clone(), Buffer::Mapped(map))?;
    }
    if let Some(index) = &checkpoint.index {
        let stored =
            weights.entries.values().map(|e| (&weights.files[e.file].path, &*e.stored_name));
        index.check_shards(stored)?;
    }
    Ok(weights)
}

/// One tensor of a checkpoint as its file stores it ([`list_checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    /// The key in the file (`transformer.h.0.ln_1.weight`, `h.0.ln_1.weight`, ...).
    pub name: String,
    /// The stored dtype as safetensors names it (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// The stored shape.
    pub shape: Vec<usize>,
    /// The file holding it.
    pub file: PathBuf,
}

/// The weight files of a model directory and the tensors they store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointListing {
    /// `model.safetensors.index.json`, when the checkpoint is sharded.
    pub index: Option<PathBuf>,
    /// The safetensors files, in load order.
    pub files: Vec<PathBuf>,
    /// Every stored tensor, sorted by name.
    pub tensors: Vec<StoredTensor>,
}

/// The weight files of the model directory `dir` and their tensors, with every check that
/// loading makes on them (headers, shard index, no tensor stored twice) but without reading any
/// tensor data.
///
/// # Errors
/// As [`crate::load::load_pretrained_with`] for the weight files.
///
/// # Example
///
/// ```no_run
/// let listing = kd_models::weights::list_checkpoint("path/to/hf-model".as_ref())?;
/// println!("{} tensors in {} files", listing.tensors.len(), listing.files.len());
/// # Ok::<(), kd_models::ModelError>(())
/// ```
pub fn list_checkpoint(dir: &Path) -> Result<CheckpointListing> {
    let checkpoint = checkpoint_files(dir)?;
    let mut tensors: Vec<StoredTensor> = Vec::new();
    for path in &checkpoint.files {
        let map = map_file(path)?;
        let (_, metadata) = read_header(path, &map)?;
        for (name, info) in metadata.tensors() {
            tensors.push(StoredTensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                file: path.clone(),
            });
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tensors.windows(2).find(|p| p[0].name == p[1].name) {
        return Err(stored_twice(&pair[0].name, &pair[0].file, &pair[1].file));
    }
    if let Some(index) = &checkpoint.index {
        index.check_shards(tensors.iter().map(|t| (&t.file, t.name.as_str())))?;
    }
    Ok(CheckpointListing {
        index: checkpoint.index.map(|i| i.path),
        files: checkpoint.files,
        tensors,
    })
}

/// [`ModelError::Safetensors`] for a tensor found in two files (or twice in one).
fn stored_twice(name: &str, a: &Path, b: &Path) -> ModelError {
    let reason = if a == b {
        format!("tensor `{name}` is stored twice (with and without its key prefix)")
    } else {
        format!("tensor `{name}` is also stored in {}", a.display())
    };
    ModelError::Safetensors { path: b.to_path_buf(), reason }
}

/// The checked header of the safetensors file `bytes`: its JSON length and its tensors.
fn read_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    checks::check_safetensors(path, bytes)?;
    // The crate's own checks, a second line behind ours.
    SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })
}

/// The tensors of one safetensors file held in memory; as [`read_dir`].
///
/// # Errors
/// As [`read_dir`].
pub(crate) fn read_bytes(
    safetensors: Vec<u8>,
    key_prefix: &'static str,
    options: &LoadOptions,
    device: &Device,
) -> Result<Weights> {
    let mut weights = Weights::new(key_prefix, options, device)?;
    weights.add_file(PathBuf::from("<memory>"), Buffer::Owned(safetensors))?;
    Ok(weights)
}

/// Writes `tensors` (converted to `dtype` when given) as one safetensors file at `path`, with
/// the `format: pt` metadata `transformers` expects. Each tensor is read back and encoded only
/// when the writer reaches it, so writing needs memory for one tensor.
///
/// Returns the `torch_dtype` name of the dtype holding most values (what `config.json` names).
///
/// # Errors
/// [`ModelError::Io`] when the file cannot be written.
pub(crate) fn write_file(
    mut tensors: Vec<NamedTensor>,
    dtype: Option<FloatDType>,
    path: &Path,
) -> Result<&'static str> {
    if let Some(dtype) = dtype {
        for tensor in &mut tensors {
            tensor.dtype = safetensors_dtype(dtype.into());
        }
    }
    let name = torch_dtype_name(majority_dtype(&tensors));
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let named = tensors.iter().map(|t| (t.name.as_str(), t));
    safetensors::serialize_to_file(named, Some(metadata), path).map_err(|e| match e {
        SafeTensorError::IoError(source) => ModelError::Io { path: path.to_path_buf(), source },
        other => ModelError::Safetensors { path: path.to_path_buf(), reason: other.to_string() },
    })?;
    Ok(name)
}

/// The safetensors files of a model directory and, when sharded, its index.
struct Checkpoint {
    files: Vec<PathBuf>,
    index: Option<ShardIndex>,
}

/// `model.safetensors.index.json`: which shard holds which tensor.
struct ShardIndex {
    path: PathBuf,
    /// Shard path → the tensors the index says it holds.
    shards: BTreeMap<PathBuf, BTreeSet<String>>,
}

impl ShardIndex {
    /// Reads and checks the index at `path` of the model directory `dir`.
    fn read(dir: &Path, path: PathBuf) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Raw {
            weight_map: Option<Entries<serde_json::Value>>,
        }
        let text = checks::read_text(&path, checks::MAX_JSON_BYTES)?;
        let raw: Raw = serde_json::from_str(&text)
            .map_err(|source| ModelError::Json { path: path.clone(), source })?;
        let map = raw.weight_map.ok_or_else(|| checks::invalid(&path, "no `weight_map` object"))?;
        if let Some(name) = map.duplicate() {
            return Err(checks::invalid(
                &path,
                format!("tensor `{name}` is listed twice in weight_map"),
            ));
        }
        if map.0.is_empty() {
            return Err(checks::invalid(&path, "weight_map lists no tensors"));
        }
        let mut shards: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for (tensor, shard) in map.0 {
            let serde_json::Value::String(shard) = shard else {
                return Err(checks::invalid(
                    &path,
                    format!("weight_map `{tensor}`: expected a shard file name, got {shard}"),
                ));
            };
            let shard = checks::shard_path(dir, &path, &shard)?;
            shards.entry(shard).or_default().insert(tensor);
        }
        for shard in shards.keys() {
            if !shard.is_file() {
                return Err(checks::invalid(
                    &path,
                    format!("shard {} is missing (or not a regular file)", shard.display()),
                ));
            }
        }
        Ok(Self { path, shards })
    }

    /// Checks that the `(shard, name)` pairs stored in the shards are exactly the index's.
    fn check_shards<'a>(&self, stored: impl Iterator<Item = (&'a PathBuf, &'a str)>) -> Result<()> {
        let mut found: BTreeMap<&Path, BTreeSet<&str>> = BTreeMap::new();
        for (shard, name) in stored {
            found.entry(shard.as_path()).or_default().insert(name);
        }
        for (shard, listed) in &self.shards {
            let held = found.get(shard.as_path());
            if let Some(name) =
                listed.iter().find(|n| !held.is_some_and(|h| h.contains(n.as_str())))
            {
                return Err(checks::invalid(
                    &self.path,
                    format!(
                        "weight_map puts `{name}` in {}, which does not hold it",
                        shard.display()
                    ),
                ));
            }
            if let Some(name) = held.and_then(|h| h.iter().find(|n| !listed.contains(**n))) {
                return Err(checks::invalid(
                    &self.path,
                    format!(
                        "{} holds `{name}`, which weight_map does not list there",
                        shard.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The safetensors files of a model directory: `model.safetensors`, else the shards listed in
/// `model.safetensors.index.json`.
fn checkpoint_files(dir: &Path) -> Result<Checkpoint> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(Checkpoint { files: vec![single], index: None });
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if !index_path.exists() {
        return Err(ModelError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found"),
            ),
        });
    }
    let index = ShardIndex::read(dir, index_path)?;
    Ok(Checkpoint { files: index.shards.keys().cloned().collect(), index: Some(index) })
}

/// Maps a weights file read-only.
fn map_file(path: &Path) -> Result<Mmap> {
    checks::regular_file_len(path)?;
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and only read through `Buffer::bytes`. Its contents stay valid
    // as long as no other process truncates or rewrites the file while the model loads, which
    // the module docs require (the same contract as every memory-mapped checkpoint loader).
    unsafe { Mmap::map(&file) }.map_err(io)
}

/// The bytes of one safetensors file: mapped from disk or owned.
#[derive(Debug)]
enum Buffer {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }

    /// Hands the resident pages of `range` (tensor data already read) back to the OS. A later
    /// read of the range faults the pages in again from the file.
    #[cfg(unix)]
    fn release(&self, range: Range<usize>) {
        if let Self::Mapped(map) = self {
            // SAFETY: `MADV_DONTNEED` on a read-only shared file mapping only drops page-table
            // entries; the next access reads the same bytes from the file, so every slice of the
            // map keeps its contents. The range lies inside the map (checked by the caller).
            let released = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
            if let Err(e) = released {
                log::debug!("madvise(DONTNEED) failed: {e}");
            }
        }
    }

    #[cfg(not(unix))]
    fn release(&self, _range: Range<usize>) {}
}

/// One loaded safetensors file.
#[derive(Debug)]
struct WeightFile {
    path: PathBuf,
    buffer: Buffer,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
}

/// How a Hugging Face checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HfLinear {
    /// `torch.nn.Linear`: `[out, in]`, transposed for burn.
    Linear,
    /// GPT-2 `Conv1D`: `[in, out]`, burn's layout already.
    Conv1D,
}

/// One stored tensor, located in one of the loaded files.
#[derive(Debug)]
struct Entry {
    file: usize,
    stored_name: String,
    info: TensorInfo,
}

/// The tensors of a checkpoint, looked up by canonical (`save_pretrained`) key and turned into
/// parameters of one dtype on demand.
#[derive(Debug)]
pub(crate) struct Weights {
    files: Vec<WeightFile>,
    entries: HashMap<String, Entry>,
    used: HashSet<String>,
    prefix: &'static str,
    device: Device,
    /// The dtype of every parameter built.
    dtype: FloatDType,
    /// Bytes of tensor data in all files.
    data_bytes: u64,
}

impl Weights {
    fn new(prefix: &'static str, options: &LoadOptions, device: &Device) -> Result<Self> {
        let dtype = options.dtype.unwrap_or_else(|| device.settings().float_dtype);
        if !device.supports_dtype(dtype) {
            return Err(ModelError::invalid(
                "dtype",
                format!("{dtype:?} is not supported by the device {device:?}"),
            ));
        }
        Ok(Self {
            files: Vec::new(),
            entries: HashMap::new(),
            used: HashSet::new(),
            prefix,
            device: device.clone(),
            dtype,
            data_bytes: 0,
        })
    }

    /// Parses the header of one safetensors file and indexes its tensors.
    fn add_file(&mut self, path: PathBuf, buffer: Buffer) -> Result<()> {
        let (header_len, metadata) = read_header(&path, buffer.bytes())?;
        let file = self.files.len();
        for (name, info) in metadata.tensors() {
            // Hub GPT-2 files (and base-model saves) lack the `transformer.` / `model.` prefix.
            let canonical = if name.starts_with(self.prefix) || name.starts_with("lm_head.") {
                name.clone()
            } else {
                format!("{}{name}", self.prefix)
            };
            if let Some(other) = self.entries.get(&canonical) {
                let first = self.files.get(other.file).map_or(&path, |f| &f.path);
                return Err(stored_twice(&canonical, first, &path));
            }
            self.entries.insert(canonical, Entry { file, stored_name: name, info: info.clone() });
        }
        self.data_bytes += (buffer.bytes().len() - 8 - header_len) as u64;
        self.files.push(WeightFile { path, buffer, data_start: 8 + header_len });
        Ok(())
    }

    /// Bytes of tensor data in all files.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The files the tensors come from.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Marks a key as intentionally unused (tied heads, buffers).
    pub(crate) fn skip(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    /// Stored keys that no module consumed (legacy buffers excluded).
    pub(crate) fn unused(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, _)| !self.used.contains(*k))
            .filter(|(k, _)| {
                !(k.ends_with(".attn.bias")
                    || k.ends_with(".attn.masked_bias")
                    || k.ends_with("rotary_emb.inv_freq"))
            })
            .map(|(_, e)| e.stored_name.clone())
            .collect();
        out.sort();
        out
    }

    /// The tensor `key`, checked against the stored shape `expected`, as data of the load
    /// dtype; a `[rows, cols]` tensor comes out as `[cols, rows]` when `transpose`.
    fn take(&mut self, key: &str, expected: &[usize], transpose: bool) -> Result<TensorData> {
        let entry = self.entries.get(key).ok_or_else(|| ModelError::MissingTensor {
            key: key.into(),
            expected: expected.to_vec(),
        })?;
        if entry.info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                key: key.into(),
                expected: expected.to_vec(),
                got: entry.info.shape.clone(),
            });
        }
        let file = &self.files[entry.file];
        let (lo, hi) = entry.info.data_offsets;
        let range = (file.data_start + lo)..(file.data_start + hi);
        let raw =
            file.buffer.bytes().get(range.clone()).ok_or_else(|| ModelError::Safetensors {
                path: file.path.clone(),
                reason: format!("data of `{}` lies outside the file", entry.stored_name),
            })?;
        let stored = entry.info.dtype;
        let size = float_size(stored).ok_or_else(|| ModelError::UnsupportedDtype {
            key: key.into(),
            dtype: format!("{stored:?}"),
        })?;
        let needed = expected.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        if needed != Some(raw.len()) {
            return Err(ModelError::Safetensors {
                path: file.path.clone(),
                reason: format!(
                    "`{}` holds {} bytes, its shape {expected:?} of {stored:?} needs {}",
                    entry.stored_name,
                    raw.len(),
                    needed.map_or("more than memory can hold".into(), |n| n.to_string())
                ),
            });
        }
        let (shape, transpose) = match (transpose, expected) {
            (true, &[rows, cols]) => (vec![cols, rows], Some((rows, cols))),
            _ => (expected.to_vec(), None),
        };
        let release =
            |r: Range<usize>| file.buffer.release(range.start + r.start..range.start + r.end);
        let data = match self.dtype {
            FloatDType::F64 => {
                TensorData::new(decode_as::<f64>(raw, stored, transpose, &release), shape)
            }
            FloatDType::F32 | FloatDType::Flex32 => {
                TensorData::new(decode_as::<f32>(raw, stored, transpose, &release), shape)
            }
            FloatDType::F16 => {
                TensorData::new(decode_as::<f16>(raw, stored, transpose, &release), shape)
            }
            FloatDType::BF16 => {
                TensorData::new(decode_as::<bf16>(raw, stored, transpose, &release), shape)
            }
        };
        self.used.insert(key.to_string());
        Ok(data)
    }

    /// A parameter of the load dtype on the load device.
    fn to_param<const D: usize>(&self, data: TensorData) -> Param<Tensor<D>> {
        let options = TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype.into());
        // What `Param::from_data` does, without its conversion to the device's default dtype.
        let tensor = self
            .device
            .memory_persistent_allocations(data, |data| Tensor::from_data(data, options.clone()));
        Param::from_tensor(tensor)
    }

    fn param<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        let data = self.take(key, &shape, false)?;
        Ok(self.to_param(data))
    }

    /// A linear layer `{prefix}.weight` (+ `{prefix}.bias`) as burn `[d_in, d_out]`.
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        layout: HfLinear,
    ) -> Result<Linear> {
        let key = format!("{prefix}.weight");
        let weight = match layout {
            HfLinear::Conv1D => self.param(&key, [d_in, d_out])?,
            HfLinear::Linear => {
                let data = self.take(&key, &[d_out, d_in], true)?; // [d_in, d_out]
                self.to_param(data)
            }
        };
        let bias = if bias { Some(self.param(&format!("{prefix}.bias"), [d_out])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// An embedding table `{prefix}.weight`, `[n, d]`.
    pub(crate) fn embedding(&mut self, prefix: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding { weight: self.param(&format!("{prefix}.weight"), [n, d])? })
    }

    /// A layer norm `{prefix}.weight`, `{prefix}.bias`.
    pub(crate) fn layer_norm(&mut self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.param(&format!("{prefix}.weight"), [d])?,
            bias: self.param(&format!("{prefix}.bias"), [d])?,
            eps,
        })
    }

    /// An RMSNorm `{prefix}.weight`.
    pub(crate) fn rms_norm(&mut self, prefix: &str, d: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.param(&format!("{prefix}.weight"), [d])?, eps })
    }
}

/// Bytes per value of the stored float dtypes this loader reads; `None` for any other dtype.
fn float_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F64 => Some(8),
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// A float type a checkpoint stores and a parameter holds.
trait Float: Element {
    /// The value encoded little-endian in `bytes` (exactly `size_of::<Self>()` of them).
    fn from_le(bytes: &[u8]) -> Self;
}

impl Float for f64 {
    fn from_le(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

impl Float for f32 {
    fn from_le(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl Float for f16 {
    fn from_le(bytes: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes(bytes.try_into().expect("2 bytes")))
    }
}

impl Float for bf16 {
    fn from_le(bytes: &[u8]) -> Self {
        bf16::from_bits(u16::from_le_bytes(bytes.try_into().expect("2 bytes")))
    }
}

/// Stored data read before its pages are released: small next to a weight matrix, large
/// enough to make the `madvise` calls cheap.
const CHUNK_BYTES: usize = 8 << 20;

/// Columns per tile of the transpose: the strided writes of a tile stay in a few cache lines.
const TILE: usize = 32;

/// The stored values `raw` (of float dtype `stored`, length already checked) as `T`.
fn decode_as<T: Float>(
    raw: &[u8],
    stored: Dtype,
    transpose: Option<(usize, usize)>,
    release: &dyn Fn(Range<usize>),
) -> Vec<T> {
    match stored {
        Dtype::F64 => decode::<f64, T>(raw, transpose, release),
        Dtype::F32 => decode::<f32, T>(raw, transpose, release),
        Dtype::F16 => decode::<f16, T>(raw, transpose, release),
        Dtype::BF16 => decode::<bf16, T>(raw, transpose, release),
        other => unreachable!("{other:?} is rejected by float_size"),
    }
}

/// Converts little-endian `S` values to `T` (identity when `S = T`), reading `raw` front to
/// back and calling `release` with each byte range it is done with.
///
/// With `transpose = Some((rows, cols))`, `raw` is a row-major `[rows, cols]` matrix and the
/// result its `[cols, rows]` transpose, built in `T` (2-byte moves for half types).
fn decode<S: Float, T: Float>(
    raw: &[u8],
    transpose: Option<(usize, usize)>,
    release: &dyn Fn(Range<usize>),
) -> Vec<T> {
    let size = size_of::<S>();
    let n = raw.len() / size;
    match transpose {
        None => {
            let step = CHUNK_BYTES / size * size;
            let mut out = Vec::with_capacity(n);
            for (i, chunk) in raw.chunks(step).enumerate() {
                out.extend(chunk.chunks_exact(size).map(|b| T::from_elem(S::from_le(b))));
                release(i * step..i * step + chunk.len());
            }
            out
        }
        Some((rows, cols)) => {
            let row_bytes = cols * size;
            let rows_per_chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1);
            let mut out = vec![T::default(); n];
            for r0 in (0..rows).step_by(rows_per_chunk) {
                let r1 = (r0 + rows_per_chunk).min(rows);
                // out[c, r] = raw[r, c], tile by tile of columns.
                for c0 in (0..cols).step_by(TILE) {
                    let c1 = (c0 + TILE).min(cols);
                    for r in r0..r1 {
                        let row = &raw[r * row_bytes + c0 * size..r * row_bytes + c1 * size];
                        for (c, b) in (c0..c1).zip(row.chunks_exact(size)) {
                            out[c * rows + r] = T::from_elem(S::from_le(b));
                        }
                    }
                }
                release(r0 * row_bytes..r1 * row_bytes);
            }
            out
        }
    }
}

/// The safetensors dtype a parameter of `dtype` is written as.
fn safetensors_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        _ => Dtype::F32,
    }
}

/// The burn dtype of a written safetensors dtype.
fn burn_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// The `torch_dtype` name of a written dtype.
fn torch_dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F64 => "float64",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The dtype holding most of the values (a mixed-precision model is named by its bulk).
fn majority_dtype(tensors: &[NamedTensor]) -> Dtype {
    let mut counts: Vec<(Dtype, usize)> = Vec::new();
    for t in tensors {
        let n: usize = t.shape.iter().product();
        match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, count)) => *count += n,
            None => counts.push((t.dtype, n)),
        }
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map_or(Dtype::F32, |(d, _)| d)
}

/// A parameter on its way to a safetensors file: HF key, HF shape, the dtype it is written in
/// and how to read its values (only when the writer reaches it).
pub(crate) struct NamedTensor {
    pub(crate) name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    read: Box<dyn Fn() -> TensorData>,
}

impl fmt::Debug for NamedTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedTensor")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl NamedTensor {
    /// `tensor` under `name`, written in its own dtype.
    pub(crate) fn from_tensor<const D: usize>(name: &str, tensor: Tensor<D>) -> Self {
        Self {
            name: name.to_string(),
            shape: tensor.dims().to_vec(),
            dtype: safetensors_dtype(tensor.dtype()),
            read: Box::new(move || tensor.clone().into_data()),
        }
    }

    fn num_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * float_size(self.dtype).expect("a float dtype")
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let data = (self.read)().convert_dtype(burn_dtype(self.dtype));
        let bytes = le_bytes(data);
        assert_eq!(
            bytes.len(),
            self.num_bytes(),
            "`{}` encodes to the size it announced",
            self.name
        );
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.num_bytes()
    }
}

/// The values of `data` (a float dtype) encoded little-endian, as safetensors stores them.
fn le_bytes(data: TensorData) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        // TensorData holds contiguous native-endian values: on little-endian targets its bytes
        // are the safetensors encoding already.
        return data.into_bytes().try_into_vec::<u8>().unwrap_or_else(|bytes| bytes.to_vec());
    }
    match data.dtype() {
        DType::F64 => data.iter::<f64>().flat_map(f64::to_le_bytes).collect(),
        DType::F16 => data.iter::<f16>().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        DType::BF16 => data.iter::<bf16>().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        _ => data.iter::<f32>().flat_map(f32::to_le_bytes).collect(),
    }
}

/// `{prefix}.weight` (+ `.bias`) of a burn linear layer in the HF storage layout.
pub(crate) fn export_linear(prefix: &str, linear: &Linear, layout: HfLinear) -> Vec<NamedTensor> {
    let weight = linear.weight.val(); // [d_in, d_out]
    let weight = match layout {
        HfLinear::Conv1D => weight,
        HfLinear::Linear => weight.transpose(), // [d_out, d_in]
    };
    let mut out = vec![NamedTensor::from_tensor(&format!("{prefix}.weight"), weight)];
    if let Some(bias) = &linear.bias {
        out.push(NamedTensor::from_tensor(&format!("{prefix}.bias"), bias.val()));
    }
    out
}

impl LayerNorm {
    pub(crate) fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        vec![
            NamedTensor::from_tensor(&format!("{prefix}.weight"), self.weight.val()),
            NamedTensor::from_tensor(&format!("{prefix}.bias"), self.bias.val()),
        ]
    }
}

impl RmsNorm {
    pub(crate) fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        vec![NamedTensor::from_tensor(&format!("{prefix}.weight"), self.weight.val())]
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn no_release(_: Range<usize>) {}

    #[test]
    fn stored_dtypes_convert() {
        let one_f16 = f16::from_f32(1.5).to_bits().to_le_bytes();
        assert_eq!(decode_as::<f32>(&one_f16, Dtype::F16, None, &no_release), vec![1.5]);
        let bf = bf16::from_f32(-2.0).to_bits().to_le_bytes();
        assert_eq!(decode_as::<f32>(&bf, Dtype::BF16, None, &no_release), vec![-2.0]);
        let x = 0.1f64.to_le_bytes();
        assert_eq!(decode_as::<f32>(&x, Dtype::F64, None, &no_release), vec![0.1f32]);
        // f32 → bf16 rounds to nearest even, as `bf16::from_f32`.
        let y = 1.007_812_5f32 + 1e-4;
        let got = decode_as::<bf16>(&y.to_le_bytes(), Dtype::F32, None, &no_release);
        assert_eq!(got, vec![bf16::from_f32(y)]);
        assert_eq!(float_size(Dtype::I32), None);
    }

    #[test]
    fn same_dtype_is_bit_exact() {
        let values = [f16::from_f32(0.333), f16::NAN, f16::NEG_INFINITY, f16::from_bits(1)];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        let got = decode_as::<f16>(&raw, Dtype::F16, None, &no_release);
        let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&values));
    }

    #[test]
    fn transpose_is_row_major_in_every_type() {
        let m = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        let raw: Vec<u8> = m.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode_as::<f32>(&raw, Dtype::F32, Some((2, 3)), &no_release);
        assert_eq!(t, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let raw: Vec<u8> =
            m.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
        let t = decode_as::<bf16>(&raw, Dtype::BF16, Some((2, 3)), &no_release);
        assert_eq!(t, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0].map(bf16::from_f32).to_vec());
        // Wider than a tile and taller than a chunk.
        let (rows, cols) = (CHUNK_BYTES / (4 * 40) + 3, 40);
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let raw: Vec<u8> = m.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode_as::<f32>(&raw, Dtype::F32, Some((rows, cols)), &no_release);
        for (r, c) in [(0, 0), (1, 39), (rows - 1, 0), (rows - 1, 33), (rows / 2, 17)] {
            assert_eq!(t[c * rows + r], m[r * cols + c], "({r}, {c})");
        }
    }

    #[test]
    fn every_byte_is_released_once_in_order() {
        for transpose in [None, Some((CHUNK_BYTES / 8 + 5, 2))] {
            let n = CHUNK_BYTES / 4 + 10;
            let raw = vec![0u8; n * 4];
            let ranges = RefCell::new(Vec::new());
            let _ = decode::<f32, bf16>(&raw, transpose, &|r| ranges.borrow_mut().push(r));
            let ranges = ranges.into_inner();
            assert!(ranges.len() > 1, "{transpose:?}: released in chunks");
            let mut next = 0;
            for r in ranges {
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, raw.len());
        }
    }
}
