//! The hostile corpus: tiny valid model directories (`ok-*`) and broken copies of them, each with
//! what is broken and the substring its error must contain.
//!
//! `tests/hostile.rs` checks that the files under `tests/hostile/` are exactly what [`corpus`]
//! generates and loads each case; `KD_WRITE_HOSTILE=1 cargo test -p kd-models --test hostile`
//! rewrites them (and `README.md`) after a change here.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One directory of the corpus.
pub struct Case {
    /// Directory name.
    pub name: &'static str,
    /// What is broken (empty for the valid bases).
    pub broken: &'static str,
    /// A substring of the error (empty: loads fine).
    pub expected: &'static str,
    /// File name → contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
struct T {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// An f32 tensor with small deterministic values.
fn f32s(name: &str, shape: &[u64]) -> T {
    let n: u64 = shape.iter().product();
    let data = (0..n).flat_map(|i| (((i % 7) as f32 - 3.0) * 0.05 + 1.0).to_le_bytes()).collect();
    T { name: name.into(), dtype: "F32", shape: shape.to_vec(), data }
}

/// A safetensors file: header entries in the given order, data in the same order.
fn safetensors(tensors: &[T]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{offset},{end}]}}",
            Value::String(t.name.clone()),
            t.dtype,
            t.shape
        ));
        offset = end;
    }
    let header = format!("{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}", entries.join(","));
    let data: Vec<u8> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
    raw_safetensors(&header, &data)
}

/// A safetensors file from a header text and data bytes, the length prefix computed.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn gpt2_tensors() -> Vec<T> {
    let (e, v, p, i) = (4, 8, 4, 16);
    let mut t =
        vec![f32s("transformer.wte.weight", &[v, e]), f32s("transformer.wpe.weight", &[p, e])];
    let h = "transformer.h.0";
    for (name, shape) in [
        ("ln_1.weight", vec![e]),
        ("ln_1.bias", vec![e]),
        ("attn.c_attn.weight", vec![e, 3 * e]),
        ("attn.c_attn.bias", vec![3 * e]),
        ("attn.c_proj.weight", vec![e, e]),
        ("attn.c_proj.bias", vec![e]),
        ("ln_2.weight", vec![e]),
        ("ln_2.bias", vec![e]),
        ("mlp.c_fc.weight", vec![e, i]),
        ("mlp.c_fc.bias", vec![i]),
        ("mlp.c_proj.weight", vec![i, e]),
        ("mlp.c_proj.bias", vec![e]),
    ] {
        t.push(f32s(&format!("{h}.{name}"), &shape));
    }
    t.push(f32s("transformer.ln_f.weight", &[e]));
    t.push(f32s("transformer.ln_f.bias", &[e]));
    t
}

fn gpt2_config() -> Value {
    json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 8,
        "n_positions": 4, "n_embd": 4, "n_layer": 1, "n_head": 2, "bos_token_id": 7,
        "eos_token_id": 7, "tie_word_embeddings": true})
}

fn llama_tensors() -> Vec<T> {
    let (h, v, i, kv) = (4, 8, 8, 2);
    let mut t = vec![f32s("model.embed_tokens.weight", &[v, h])];
    let p = "model.layers.0";
    for (name, shape) in [
        ("input_layernorm.weight", vec![h]),
        ("self_attn.q_proj.weight", vec![h, h]),
        ("self_attn.k_proj.weight", vec![kv, h]),
        ("self_attn.v_proj.weight", vec![kv, h]),
        ("self_attn.o_proj.weight", vec![h, h]),
        ("post_attention_layernorm.weight", vec![h]),
        ("mlp.gate_proj.weight", vec![i, h]),
        ("mlp.up_proj.weight", vec![i, h]),
        ("mlp.down_proj.weight", vec![h, i]),
    ] {
        t.push(f32s(&format!("{p}.{name}"), &shape));
    }
    t.push(f32s("model.norm.weight", &[h]));
    t.push(f32s("lm_head.weight", &[v, h]));
    t
}

fn llama_config() -> Value {
    json!({"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 16, "tie_word_embeddings": false, "bos_token_id": 7,
        "eos_token_id": 7})
}

fn tokenizer() -> Value {
    json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 7, "content": "<eos>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "cd": 5, "abcd": 6, "<eos>": 7},
            "merges": ["a b", "c d", "ab cd"]}})
}

fn text(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON");
    s.push('\n');
    s.into_bytes()
}

/// The valid GPT-2 directory.
fn gpt2() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("config.json".into(), text(&gpt2_config())),
        ("model.safetensors".into(), safetensors(&gpt2_tensors())),
        ("tokenizer.json".into(), text(&tokenizer())),
    ])
}

/// The valid sharded LLaMA directory (two shards and their index, no tokenizer).
fn llama_sharded() -> BTreeMap<String, Vec<u8>> {
    let tensors = llama_tensors();
    let (first, second) = tensors.split_at(6);
    let mut map = serde_json::Map::new();
    for (part, shard) in
        [(first, "model-00001-of-00002.safetensors"), (second, "model-00002-of-00002.safetensors")]
    {
        for t in part {
            map.insert(t.name.clone(), json!(shard));
        }
    }
    BTreeMap::from([
        ("config.json".into(), text(&llama_config())),
        ("model-00001-of-00002.safetensors".into(), safetensors(first)),
        ("model-00002-of-00002.safetensors".into(), safetensors(second)),
        (
            "model.safetensors.index.json".into(),
            text(&json!({"metadata": {"total_size": 880}, "weight_map": map})),
        ),
    ])
}

const INDEX: &str = "model.safetensors.index.json";
const SHARD1: &str = "model-00001-of-00002.safetensors";

/// `files` with `name` replaced.
fn with(
    mut files: BTreeMap<String, Vec<u8>>,
    name: &str,
    bytes: Vec<u8>,
) -> BTreeMap<String, Vec<u8>> {
    files.insert(name.into(), bytes);
    files
}

/// `files` with the JSON file `name` edited by `edit`.
fn with_json(
    files: BTreeMap<String, Vec<u8>>,
    name: &str,
    edit: impl FnOnce(&mut Value),
) -> BTreeMap<String, Vec<u8>> {
    let mut v: Value = serde_json::from_slice(&files[name]).expect("JSON");
    edit(&mut v);
    with(files, name, text(&v))
}

/// `files` with the text of `name` edited by a string replacement (for what JSON values cannot
/// hold: duplicate keys).
fn with_text(
    files: BTreeMap<String, Vec<u8>>,
    name: &str,
    from: &str,
    to: &str,
) -> BTreeMap<String, Vec<u8>> {
    let s = String::from_utf8(files[name].clone()).expect("UTF-8");
    assert!(s.contains(from), "{name} lacks {from}");
    with(files, name, s.replacen(from, to, 1).into_bytes())
}

/// The GPT-2 weights with `edit` applied to the tensor list.
fn gpt2_weights(edit: impl FnOnce(&mut Vec<T>)) -> BTreeMap<String, Vec<u8>> {
    let mut t = gpt2_tensors();
    edit(&mut t);
    with(gpt2(), "model.safetensors", safetensors(&t))
}

/// The GPT-2 weights with a hand-written header over `data_len` bytes of data.
fn gpt2_header(header: &str, data_len: usize) -> BTreeMap<String, Vec<u8>> {
    with(gpt2(), "model.safetensors", raw_safetensors(header, &vec![0; data_len]))
}

/// A header entry.
fn entry(name: &str, dtype: &str, shape: &str, offsets: &str) -> String {
    format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}")
}

/// Every case of the corpus. The weight and config cases have no `tokenizer.json` (one fewer
/// file to keep; a directory without one is valid).
pub fn corpus() -> Vec<Case> {
    let mut cases = cases();
    for c in &mut cases {
        if c.name.starts_with("st-") || c.name.starts_with("cfg-") {
            c.files.remove("tokenizer.json");
        }
    }
    cases
}

fn cases() -> Vec<Case> {
    let case = |name, broken, expected, files| Case { name, broken, expected, files };
    let ln = "transformer.h.0.ln_1.weight";
    let st = gpt2()["model.safetensors"].clone();
    let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    vec![
        case("ok-gpt2", "", "", gpt2()),
        case("ok-llama-sharded", "", "", llama_sharded()),
        case("ok-gpt2-no-tokenizer", "", "", {
            let mut f = gpt2();
            f.remove("tokenizer.json");
            f
        }),
        // safetensors
        case(
            "st-empty",
            "model.safetensors is empty",
            "shorter than the 8-byte header length",
            with(gpt2(), "model.safetensors", vec![]),
        ),
        case("st-header-past-end", "header length larger than the file", "runs past the end", {
            let mut b = st.clone();
            b[..8].copy_from_slice(&(st.len() as u64).to_le_bytes());
            with(gpt2(), "model.safetensors", b)
        }),
        case(
            "st-header-huge",
            "header length u64::MAX (a negative i64)",
            "larger than the 100000000 bytes",
            {
                let mut b = st.clone();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                with(gpt2(), "model.safetensors", b)
            },
        ),
        case(
            "st-truncated",
            "the last tensor's data cut short",
            "outside the",
            with(gpt2(), "model.safetensors", st[..st.len() - 10].to_vec()),
        ),
        case(
            "st-trailing-bytes",
            "bytes after the last tensor",
            "belong to no tensor",
            with(gpt2(), "model.safetensors", [st.clone(), vec![0; 16]].concat()),
        ),
        case(
            "st-header-not-json",
            "header is not JSON",
            "header is not a JSON object",
            gpt2_header("{\"a\": [1, 2", 0),
        ),
        case(
            "st-header-not-utf8",
            "header has invalid UTF-8",
            "not UTF-8",
            with(gpt2(), "model.safetensors", {
                let mut b = raw_safetensors("{\"\u{e9}\":1}", &[]);
                b[10] = 0xff;
                b
            }),
        ),
        case(
            "st-negative-shape",
            "a shape with a negative dimension",
            "invalid value: integer `-4`",
            gpt2_header(&format!("{{{}}}", entry(ln, "F32", "[-4]", "[0,16]")), 16),
        ),
        case(
            "st-shape-bomb",
            "a shape whose element count overflows 64 bits",
            "more bytes than memory can hold",
            gpt2_header(
                &format!(
                    "{{{}}}",
                    entry(ln, "F32", "[4294967296,4294967296,4294967296]", "[0,16]")
                ),
                16,
            ),
        ),
        case(
            "st-offsets-out-of-range",
            "data_offsets past the data section",
            "lie outside the 16-byte data section",
            gpt2_header(&format!("{{{}}}", entry(ln, "F32", "[4]", "[0,4096]")), 16),
        ),
        case(
            "st-offsets-reversed",
            "data_offsets end before they start",
            "lie outside",
            gpt2_header(&format!("{{{}}}", entry(ln, "F32", "[4]", "[16,0]")), 16),
        ),
        case(
            "st-overlap",
            "two tensors share bytes",
            "overlap",
            gpt2_header(
                &format!(
                    "{{{},{}}}",
                    entry(ln, "F32", "[4]", "[0,16]"),
                    entry("transformer.h.0.ln_1.bias", "F32", "[2]", "[8,16]")
                ),
                16,
            ),
        ),
        case(
            "st-size-mismatch",
            "data length differs from shape x dtype",
            "hold 16 bytes, its shape [8] of F32 needs 32",
            gpt2_header(&format!("{{{}}}", entry(ln, "F32", "[8]", "[0,16]")), 16),
        ),
        case(
            "st-gap",
            "bytes between two tensors",
            "belong to no tensor",
            gpt2_header(&format!("{{{}}}", entry(ln, "F32", "[4]", "[16,32]")), 32),
        ),
        case(
            "st-unknown-dtype",
            "dtype `Q4_K` unknown to safetensors",
            "unknown dtype `Q4_K`",
            gpt2_header(&format!("{{{}}}", entry(ln, "Q4_K", "[4]", "[0,16]")), 16),
        ),
        case(
            "st-int-dtype",
            "a weight stored as I32",
            "unsupported dtype I32",
            gpt2_weights(|t| t[2].dtype = "I32"),
        ),
        case(
            "st-duplicate-name",
            "one tensor name twice in the header",
            "is listed twice in the header",
            gpt2_header(
                &format!(
                    "{{{},{}}}",
                    entry(ln, "F32", "[4]", "[0,16]"),
                    entry(ln, "F32", "[4]", "[16,32]")
                ),
                32,
            ),
        ),
        case(
            "st-duplicate-prefix",
            "the same tensor with and without the `transformer.` prefix",
            "stored twice",
            gpt2_weights(|t| {
                let mut copy = f32s("h.0.ln_1.weight", &[4]);
                copy.data = t[2].data.clone();
                t.push(copy);
            }),
        ),
        case(
            "st-bad-metadata",
            "__metadata__ holds a number",
            "__metadata__",
            gpt2_header("{\"__metadata__\":{\"format\":1}}", 0),
        ),
        case(
            "st-missing-tensor",
            "a weight of the config is absent",
            "missing tensor `transformer.h.0.mlp.c_fc.weight`",
            gpt2_weights(|t| t.retain(|t| t.name != "transformer.h.0.mlp.c_fc.weight")),
        ),
        case(
            "st-wrong-shape",
            "a weight has the wrong shape for the config",
            "has shape [4, 8], expected [4, 12]",
            gpt2_weights(|t| {
                let i =
                    t.iter().position(|t| t.name == "transformer.h.0.attn.c_attn.weight").unwrap();
                t[i] = f32s("transformer.h.0.attn.c_attn.weight", &[4, 8]);
            }),
        ),
        case(
            "st-no-weights",
            "neither model.safetensors nor an index",
            "neither model.safetensors nor model.safetensors.index.json",
            {
                let mut f = gpt2();
                f.remove("model.safetensors");
                f
            },
        ),
        // config.json
        case(
            "cfg-not-json",
            "config.json is not JSON",
            "invalid JSON",
            with(gpt2(), "config.json", b"{\"model_type\": \"gpt2\",".to_vec()),
        ),
        case(
            "cfg-not-object",
            "config.json is a list",
            "config.json must be a JSON object",
            with(gpt2(), "config.json", b"[1, 2]\n".to_vec()),
        ),
        case(
            "cfg-deep-nesting",
            "1000 nested arrays",
            "recursion limit exceeded",
            with_text(
                gpt2(),
                "config.json",
                "\"architectures\"",
                &format!("\"x\": {deep}, \"architectures\""),
            ),
        ),
        case(
            "cfg-missing-model-type",
            "no model_type",
            "config key `model_type`: missing",
            with_json(gpt2(), "config.json", |v| {
                v.as_object_mut().unwrap().remove("model_type");
            }),
        ),
        case(
            "cfg-unknown-model-type",
            "model_type bert",
            "unsupported model_type `bert`",
            with_json(gpt2(), "config.json", |v| v["model_type"] = json!("bert")),
        ),
        case(
            "cfg-wrong-type",
            "n_embd is a string",
            "config key `n_embd`",
            with_json(gpt2(), "config.json", |v| v["n_embd"] = json!("four")),
        ),
        case(
            "cfg-negative",
            "vocab_size is negative",
            "config key `vocab_size`",
            with_json(gpt2(), "config.json", |v| v["vocab_size"] = json!(-8)),
        ),
        case(
            "cfg-float-size",
            "n_layer is 1e300",
            "config key `n_layer`",
            with_json(gpt2(), "config.json", |v| v["n_layer"] = json!(1e300)),
        ),
        case(
            "cfg-zero-layers",
            "n_layer is 0",
            "config key `n_layer`: must be > 0",
            with_json(gpt2(), "config.json", |v| v["n_layer"] = json!(0)),
        ),
        case(
            "cfg-heads-not-dividing",
            "n_head 3 does not divide n_embd 4",
            "is not a positive multiple of n_head = 3",
            with_json(gpt2(), "config.json", |v| v["n_head"] = json!(3)),
        ),
        case(
            "cfg-llama-heads-not-dividing",
            "num_attention_heads 3 does not divide hidden_size 4",
            "config key `hidden_size`: 4 is not a multiple of num_attention_heads = 3",
            with_json(llama_sharded(), "config.json", |v| v["num_attention_heads"] = json!(3)),
        ),
        case(
            "cfg-llama-kv-heads",
            "num_key_value_heads 3 does not divide num_attention_heads 2",
            "config key `num_key_value_heads`",
            with_json(llama_sharded(), "config.json", |v| v["num_key_value_heads"] = json!(3)),
        ),
        case(
            "cfg-llama-zero-intermediate",
            "intermediate_size 0",
            "config key `intermediate_size`: must be > 0",
            with_json(llama_sharded(), "config.json", |v| v["intermediate_size"] = json!(0)),
        ),
        case(
            "cfg-absurd-overflow",
            "sizes whose parameter count overflows 64 bits",
            "more than 2^64",
            with_json(gpt2(), "config.json", |v| {
                v["vocab_size"] = json!(1u64 << 40);
                v["n_embd"] = json!(1u64 << 30);
            }),
        ),
        case(
            "cfg-absurd-params",
            "a 2^50-parameter config",
            "more than the 1099511627776 (2^40)",
            with_json(gpt2(), "config.json", |v| v["n_layer"] = json!(1u64 << 45)),
        ),
        case(
            "cfg-more-than-files",
            "100000 layers over a 1-layer file",
            "hold 1200 bytes of tensors",
            with_json(gpt2(), "config.json", |v| v["n_layer"] = json!(100_000)),
        ),
        case(
            "cfg-missing-sizes",
            "no sizes: GPT-2 small's defaults over tiny weights",
            "config.json describes 124439808 parameters",
            with_json(gpt2(), "config.json", |v| {
                let o = v.as_object_mut().unwrap();
                for k in ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"] {
                    o.remove(k);
                }
            }),
        ),
        // shard index
        case("idx-missing-shard", "the index names a shard that does not exist", "is missing", {
            let mut f = llama_sharded();
            f.remove(SHARD1);
            f
        }),
        case(
            "idx-traversal",
            "a shard named ../ outside the directory",
            "shard `../model-00001-of-00002.safetensors` is outside the model directory",
            with_text(
                llama_sharded(),
                INDEX,
                &format!("\"{SHARD1}\""),
                &format!("\"../{SHARD1}\""),
            ),
        ),
        case(
            "idx-absolute",
            "a shard named by an absolute path",
            "shard `/etc/passwd` is outside the model directory",
            with_text(llama_sharded(), INDEX, &format!("\"{SHARD1}\""), "\"/etc/passwd\""),
        ),
        case(
            "idx-absent-tensor",
            "the index lists a tensor its shard does not hold",
            "weight_map puts `model.layers.0.extra.weight`",
            with_json(llama_sharded(), INDEX, |v| {
                v["weight_map"]["model.layers.0.extra.weight"] = json!(SHARD1)
            }),
        ),
        case(
            "idx-unlisted-tensor",
            "a shard holds a tensor the index does not list",
            "which weight_map does not list",
            with_json(llama_sharded(), INDEX, |v| {
                v["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
            }),
        ),
        case(
            "idx-duplicate-key",
            "one tensor listed twice in weight_map",
            "is listed twice in weight_map",
            with_text(
                llama_sharded(),
                INDEX,
                "\"weight_map\": {",
                &format!("\"weight_map\": {{\n    \"model.norm.weight\": \"{SHARD1}\","),
            ),
        ),
        case(
            "idx-tensor-in-two-shards",
            "the same tensor stored in both shards",
            "is also stored in",
            {
                let mut t = llama_tensors();
                let second = t.split_off(6);
                let mut first = t;
                let mut copy = f32s("model.norm.weight", &[4]);
                copy.data =
                    second.iter().find(|t| t.name == "model.norm.weight").unwrap().data.clone();
                first.push(copy);
                with(llama_sharded(), SHARD1, safetensors(&first))
            },
        ),
        case(
            "idx-no-weight-map",
            "the index has no weight_map",
            "no `weight_map` object",
            with(llama_sharded(), INDEX, b"{\"metadata\": {}}\n".to_vec()),
        ),
        case(
            "idx-not-a-string",
            "a weight_map value is a number",
            "expected a shard file name, got 1",
            with_json(llama_sharded(), INDEX, |v| v["weight_map"]["model.norm.weight"] = json!(1)),
        ),
        case(
            "idx-empty",
            "weight_map is empty",
            "weight_map lists no tensors",
            with(llama_sharded(), INDEX, b"{\"weight_map\": {}}\n".to_vec()),
        ),
        // tokenizer.json
        case(
            "tok-not-json",
            "tokenizer.json is cut short",
            "invalid JSON",
            with(gpt2(), "tokenizer.json", tokenizer_text()[..200].to_vec()),
        ),
        case(
            "tok-duplicate-id",
            "two tokens share id 6",
            "id 6 is given to both `abcd` and `zz`",
            with_text(gpt2(), "tokenizer.json", "\"abcd\": 6", "\"abcd\": 6,\n      \"zz\": 6"),
        ),
        case(
            "tok-duplicate-token",
            "token `ab` twice in the vocab",
            "token `ab` appears twice in model.vocab",
            with_text(gpt2(), "tokenizer.json", "\"abcd\": 6", "\"abcd\": 6,\n      \"ab\": 8"),
        ),
        case(
            "tok-merge-unknown",
            "a merge of a token not in the vocab",
            "`x` is not in model.vocab",
            with_text(gpt2(), "tokenizer.json", "\"c d\"", "\"c x\""),
        ),
        case(
            "tok-merge-result-unknown",
            "a merge whose result is not in the vocab",
            "the merged token `ac` is not in model.vocab",
            with_text(gpt2(), "tokenizer.json", "\"c d\"", "\"a c\""),
        ),
        case(
            "tok-merge-not-a-pair",
            "a merge with one token",
            "is not two tokens separated by a space",
            with_text(gpt2(), "tokenizer.json", "\"c d\"", "\"cd\""),
        ),
        case(
            "tok-merge-prefix",
            "a merge whose second part lacks the continuing-subword prefix",
            "does not start with continuing_subword_prefix",
            with_json(gpt2(), "tokenizer.json", |v| {
                v["model"]["continuing_subword_prefix"] = json!("##")
            }),
        ),
        case(
            "tok-added-conflict",
            "added token id 6 is `abcd` in the vocab",
            "id 6 is `<pad>` in added_tokens but `abcd` in model.vocab",
            with_json(gpt2(), "tokenizer.json", |v| {
                v["added_tokens"].as_array_mut().unwrap().push(json!({"id": 6, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }),
        ),
        case(
            "tok-beyond-model-vocab",
            "tokenizer ids reach 8, the model has 8 rows",
            "id 8 (`<pad>`) is beyond the model's vocab_size 8",
            with_json(gpt2(), "tokenizer.json", |v| {
                v["added_tokens"].as_array_mut().unwrap().push(json!({"id": 8, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }),
        ),
        case(
            "tok-deep-nesting",
            "1000 nested arrays",
            "recursion limit exceeded",
            with_text(
                gpt2(),
                "tokenizer.json",
                "\"version\"",
                &format!("\"x\": {deep}, \"version\""),
            ),
        ),
    ]
}

fn tokenizer_text() -> Vec<u8> {
    text(&tokenizer())
}
