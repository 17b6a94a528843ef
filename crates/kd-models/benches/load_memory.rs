//! Peak resident memory of loading a 1.6 GB `f32` checkpoint: the old whole-file read against
//! the memory-mapped loader, in `f32` and in `bf16`.
//!
//! ```text
//! cargo bench -p kd-models --bench load_memory
//! ```
//!
//! The checkpoint: a TinyLlama-shaped LLaMA (hidden 2048, intermediate 5632, 32 heads, 4 KV
//! heads, vocabulary 32000, untied head) cut to 6 layers, 395M parameters, randomly initialised
//! and written with `save_pretrained` (`f32`, 1.58 GB) into a directory under the system temp
//! dir, removed at the end. Each mode loads it in a fresh child process (this binary run again
//! with `KD_LOAD_MEMORY_MODE` set) on flex, which reports its `VmHWM` (peak resident set, from
//! `/proc/self/status`) before and after the load; the table shows the difference. Modes:
//!
//! - `read + load_from_bytes`: the loader before memory mapping, `std::fs::read` of the whole
//!   file then `load_from_bytes` (the file and the model are resident together);
//! - `mmap f32` / `mmap bf16`: `load_pretrained` / `load_pretrained_with` a bf16
//!   [`LoadOptions`].
//!
//! Linux only (it reads `/proc`). Takes about a minute, most of it generating the checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, FloatDType, Tensor};
use kd_models::load::{
    LoadOptions, WEIGHTS_FILE, load_from_bytes, load_pretrained, load_pretrained_with,
    save_pretrained,
};
use kd_models::{CausalLm, LlamaConfig, ModelConfig};

const MODE_VAR: &str = "KD_LOAD_MEMORY_MODE";
const DIR_VAR: &str = "KD_LOAD_MEMORY_DIR";
/// Prefix of the one line a child prints for the parent.
const MARK: &str = "kd-load-memory:";
const MODES: [(&str, &str); 3] = [
    ("read", "read + load_from_bytes (old path)"),
    ("mmap-f32", "mmap, f32"),
    ("mmap-bf16", "mmap, bf16"),
];

fn config() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 32000,
        hidden_size: 2048,
        intermediate_size: 5632,
        num_hidden_layers: 6,
        num_attention_heads: 32,
        num_key_value_heads: 4,
        head_dim: 64,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        ..Default::default()
    })
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Loads the checkpoint in `dir` one way and prints `MARK hwm_before hwm_after seconds`.
fn child(mode: &str, dir: &Path) {
    let device = Device::flex();
    // One-time backend set-up before the baseline.
    drop(Tensor::<1>::zeros([16], &device).into_data());
    let before = proc_status_bytes("VmHWM:");
    let start = Instant::now();
    let model = match mode {
        "read" => {
            let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
            let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
            load_from_bytes(&config, bytes, &device).unwrap()
        }
        "mmap-f32" => load_pretrained(dir, &device).unwrap(),
        "mmap-bf16" => {
            let options = LoadOptions::default().with_dtype(FloatDType::BF16);
            load_pretrained_with(dir, &options, &device).unwrap()
        }
        other => panic!("unknown mode {other}"),
    };
    let seconds = start.elapsed().as_secs_f64();
    let after = proc_status_bytes("VmHWM:");
    assert_eq!(model.vocab_size(), 32000);
    println!("{MARK} {before} {after} {seconds}");
}

/// Removes the checkpoint directory, also when the bench panics.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn main() {
    if let Ok(mode) = std::env::var(MODE_VAR) {
        let dir = PathBuf::from(std::env::var(DIR_VAR).expect("checkpoint dir"));
        child(&mode, &dir);
        return;
    }

    let dir = TempDir(std::env::temp_dir().join(format!("kd-load-memory-{}", std::process::id())));
    let start = Instant::now();
    {
        let model = CausalLm::init(&config(), &Device::flex()).unwrap();
        save_pretrained(&model, &dir.0).unwrap();
    }
    let file_size = std::fs::metadata(dir.0.join(WEIGHTS_FILE)).unwrap().len();
    eprintln!(
        "wrote {:.2} GB in {:.1} s to {}",
        gb(file_size),
        start.elapsed().as_secs_f64(),
        dir.0.display()
    );

    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for (mode, label) in MODES {
        let out = Command::new(&exe).env(MODE_VAR, mode).env(DIR_VAR, &dir.0).output().unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.strip_prefix(MARK)).expect("child result");
        let fields: Vec<f64> = line.split_whitespace().map(|f| f.parse().unwrap()).collect();
        let (before, after, seconds) = (fields[0] as u64, fields[1] as u64, fields[2]);
        rows.push((label, after - before, before, seconds));
    }

    println!();
    println!("| mode | file size | peak RSS of the load | ratio to file size | load time |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, peak, _, seconds) in &rows {
        println!(
            "| {label} | {:.2} GB | {:.2} GB | {:.2} | {seconds:.1} s |",
            gb(file_size),
            gb(*peak),
            *peak as f64 / file_size as f64
        );
    }
    println!();
    println!(
        "peak RSS of the load = child VmHWM after loading − VmHWM before (baseline {:.0} MB)",
        rows[0].2 as f64 / 1e6
    );
}
