//! Property-based mutation of valid model directories: byte flips, truncations, splices, header
//! lengths and JSON values changed in `config.json`, `tokenizer.json`, the shard index and the
//! safetensors headers. Every mutated directory must load to `Ok` or to a [`ModelError`]: never a
//! panic, never an absurd allocation.
//!
//! 2000 cases by default (a few seconds); `KD_FUZZ_CASES=100000` for a long run, `KD_FUZZ_SEED`
//! to change the seed. Run with `--nocapture` to see the counts of each outcome.

#[path = "hostile/alloc.rs"]
mod alloc;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::load::{LoadOptions, load_pretrained_with};
use kd_models::sampling::Rng;
use kd_models::weights::list_checkpoint;
use kd_models::{ModelConfig, ModelError, Tokenizer};
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

type Files = BTreeMap<String, Vec<u8>>;

fn base(name: &str) -> Files {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile").join(name);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Loads `dir` as `kd inspect` does.
fn load(dir: &Path) -> Result<(), ModelError> {
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    list_checkpoint(dir)?;
    load_pretrained_with(dir, &LoadOptions::default(), &Device::flex())?;
    if dir.join("tokenizer.json").exists() {
        Tokenizer::from_dir(dir)?.check_vocab_size(config.vocab_size())?;
    }
    Ok(())
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// A value a hostile file might hold instead of the right one.
fn hostile_value(rng: &mut Rng) -> Value {
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let choices = [
        json!(0),
        json!(-1),
        json!(1),
        json!(3),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(0.5),
        json!("x"),
        json!("../../etc/passwd"),
        json!(""),
        Value::Null,
        json!(true),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!([-1, 4294967296u64]),
        deep,
    ];
    choices[below(rng, choices.len())].clone()
}

/// Replaces (or removes) a random node of `v`.
fn mutate_json(v: &mut Value, rng: &mut Rng) {
    let mut node = v;
    loop {
        let children = match node {
            Value::Object(o) => o.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        // Descend with probability 3/4 while there are children.
        if children == 0 || below(rng, 4) == 0 {
            break;
        }
        let i = below(rng, children);
        let remove = below(rng, 8) == 0;
        match node {
            Value::Object(o) => {
                let key = o.keys().nth(i).unwrap().clone();
                if remove {
                    o.remove(&key);
                    return;
                }
                node = o.get_mut(&key).unwrap();
            }
            Value::Array(a) => {
                if remove {
                    a.remove(i);
                    return;
                }
                node = &mut a[i];
            }
            _ => unreachable!(),
        }
    }
    *node = hostile_value(rng);
}

/// Mutates one file of `files`; returns what was done.
fn mutate(files: &mut Files, rng: &mut Rng) -> String {
    let names: Vec<String> = files.keys().cloned().collect();
    let name = names[below(rng, names.len())].clone();
    let other = files[&names[below(rng, names.len())]].clone();
    let bytes = files.get_mut(&name).unwrap();
    let kind = below(rng, 6);
    let what = match kind {
        0 => {
            let n = 1 + below(rng, 8);
            for _ in 0..n {
                if !bytes.is_empty() {
                    let i = below(rng, bytes.len());
                    bytes[i] = rng.next_u64() as u8;
                }
            }
            format!("flip {n} bytes")
        }
        1 => {
            let at = below(rng, bytes.len());
            bytes.truncate(at);
            format!("truncate at {at}")
        }
        2 => {
            let start = below(rng, other.len());
            let len = below(rng, (other.len() - start).min(256) + 1);
            let at = below(rng, bytes.len() + 1);
            let chunk = &other[start..start + len];
            if below(rng, 2) == 0 {
                bytes.splice(at..at, chunk.iter().copied());
                format!("insert {len} bytes at {at}")
            } else {
                let end = (at + len).min(bytes.len());
                bytes.splice(at..end, chunk.iter().copied());
                format!("overwrite {len} bytes at {at}")
            }
        }
        3 if bytes.len() >= 8 && name.ends_with(".safetensors") => {
            let choices = [0u64, 1, 2, 7, u64::MAX, 1 << 63, 100_000_001, bytes.len() as u64];
            let n = if below(rng, 2) == 0 {
                choices[below(rng, choices.len())]
            } else {
                u64::from_le_bytes(bytes[..8].try_into().unwrap())
                    .wrapping_add(below(rng, 17) as u64)
                    .wrapping_sub(8)
            };
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            format!("header length {n}")
        }
        _ if name.ends_with(".safetensors") => {
            // A JSON value of the header changed, the data kept.
            let n =
                bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
            let parsed = bytes
                .get(8..8usize.saturating_add(n))
                .and_then(|h| serde_json::from_slice::<Value>(h).ok());
            let Some(mut header) = parsed else {
                return format!("{name}: no-op (header already broken)");
            };
            mutate_json(&mut header, rng);
            let text = header.to_string();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text.as_bytes());
            out.extend(&bytes[8 + n..]);
            *bytes = out;
            format!("header value: {}", text.chars().take(120).collect::<String>())
        }
        _ => match serde_json::from_slice::<Value>(bytes) {
            Ok(mut v) => {
                mutate_json(&mut v, rng);
                *bytes = serde_json::to_vec(&v).unwrap();
                "JSON value".to_string()
            }
            Err(_) => "no-op (already not JSON)".to_string(),
        },
    };
    format!("{name}: {what}")
}

/// The variant name of an error (`Safetensors`, `Config`, ...).
fn kind(e: &ModelError) -> String {
    format!("{e:?}").split([' ', '{', '(']).next().unwrap_or_default().to_string()
}

#[test]
fn mutated_directories_never_panic() {
    let cases: usize =
        std::env::var("KD_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seed: u64 = std::env::var("KD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(13);
    let bases = [base("ok-gpt2"), base("ok-llama-sharded")];
    for b in &bases {
        let dir = scratch(0);
        write(&dir, b);
        load(&dir).expect("the bases load");
    }
    let mut rng = Rng::new(seed);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut panics = Vec::new();
    let dir = scratch(1);
    let started = std::time::Instant::now();
    for case in 0..cases {
        let mut files = bases[case % bases.len()].clone();
        let mut what = Vec::new();
        for _ in 0..1 + below(&mut rng, 3) {
            what.push(mutate(&mut files, &mut rng));
        }
        write(&dir, &files);
        match catch_unwind(AssertUnwindSafe(|| load(&dir))) {
            Ok(Ok(())) => *outcomes.entry("Ok".into()).or_default() += 1,
            Ok(Err(e)) => *outcomes.entry(kind(&e)).or_default() += 1,
            Err(_) => panics.push(format!("case {case} (seed {seed}): {}", what.join("; "))),
        }
    }
    let largest = alloc::largest();
    eprintln!(
        "{cases} mutated directories in {:.1}s, seed {seed}: {outcomes:?}, {} panics, largest allocation {largest} bytes",
        started.elapsed().as_secs_f64(),
        panics.len()
    );
    let _ = std::fs::remove_dir_all(scratch(0));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(panics.is_empty(), "{} panics:\n{}", panics.len(), panics.join("\n"));
    assert!(largest < 64 << 20, "largest single allocation {largest} bytes");
}

fn scratch(i: usize) -> PathBuf {
    std::env::temp_dir().join(format!("kd-mutation-{}-{i}", std::process::id()))
}

fn write(dir: &Path, files: &Files) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
