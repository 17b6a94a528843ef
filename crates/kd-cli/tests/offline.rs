//! `kd precompute-teacher` → shards → `kd distill --teacher-logits DIR`, end to end on tiny
//! models: two shards written separately train a student with no teacher loaded, and a missing
//! shard, another tokenizer or a corrupt file are input errors (exit 2) that name the problem
//! before anything trains.

use std::path::Path;

use common::{
    assert_input_error, assets, kd_raw as kd, metrics, scratch, stderr, tiny_run_config,
    tinystories, train_model,
};

mod common;

#[test]
fn precomputed_shards_train_a_student_and_bad_files_are_refused() {
    let dir = scratch("offline");
    let cfg = tiny_run_config(&dir, 4, 2);
    // A teacher: the tiny model after 3 steps.
    let teacher = train_model(&dir, "teacher", &cfg, &["--steps", "3"]);
    let logits = dir.join("logits");
    for shard in ["1/2", "0/2"] {
        let r = kd(&[
            "precompute-teacher",
            "--config",
            &cfg,
            "--teacher",
            &teacher,
            "--top-k",
            "16",
            "--shard",
            shard,
            "--out",
            logits.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(r.status.success(), "{}", stderr(&r));
        let said = String::from_utf8_lossy(&r.stdout);
        assert!(said.contains("bytes per token") && said.contains("positions"), "{said}");
    }
    let out = dir.join("student");
    let distill = |extra: &[&str]| {
        let mut args = vec![
            "distill",
            "--config",
            &cfg,
            "--teacher-logits",
            logits.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        kd(&args)
    };
    let r = distill(&[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let steps: Vec<_> =
        metrics(&out).into_iter().filter(|m| m.get("grad_norm").is_some()).collect();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|s| s["loss"].as_f64().unwrap().is_finite()));
    let run = std::fs::read_to_string(out.join("run.toml")).unwrap();
    assert!(run.contains("teacher_logits"), "{run}");

    // Another tokenizer file (the same tokens, other bytes): refused by its fingerprint.
    let other_tok = dir.join("tok");
    std::fs::create_dir_all(&other_tok).unwrap();
    let mut json = std::fs::read(assets().join("tokenizer.json")).unwrap();
    json.push(b'\n');
    std::fs::write(other_tok.join("tokenizer.json"), json).unwrap();
    let r = distill(&["--tokenizer", other_tok.to_str().unwrap()]);
    assert_input_error(&r, &["another tokenizer", "data.tokenizer"]);
    // Other blocks (seq_len 16): the first block that differs is named.
    let r = distill(&["--set", "data.seq_len=16"]);
    assert_input_error(&r, &["blocks of 32 tokens", "data.seq_len"]);
    // A divergence other than the top-k loss's.
    let r = distill(&["--loss", "reverse_kl"]);
    assert_input_error(&r, &["teacher_top_k"]);
    // A corrupt record: named with its block before the first step.
    let shard0 = logits.join("shard-00000-of-00002.kdtl");
    let mut bad = std::fs::read(&shard0).unwrap();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    std::fs::write(&shard0, &bad).unwrap();
    let fresh = dir.join("fresh");
    let r = distill(&["--out", fresh.to_str().unwrap()]);
    assert_input_error(&r, &["shard-00000-of-00002.kdtl", "checksum mismatch", "block "]);
    assert!(!fresh.join("checkpoint-000002").exists(), "a corrupt file trained steps");
    // A missing shard: named, with the file it would be.
    std::fs::remove_file(&shard0).unwrap();
    let r = distill(&[]);
    assert_input_error(&r, &["shard 0/2 is missing", "shard-00000-of-00002.kdtl"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn several_teachers_online_stored_and_routed_by_a_data_key() {
    let dir = scratch("ensemble");
    let cfg = tiny_run_config(&dir, 4, 2);
    let (a, b) = (
        train_model(&dir, "a", &cfg, &["--steps", "2", "--seed", "1"]),
        train_model(&dir, "b", &cfg, &["--steps", "2", "--seed", "2"]),
    );
    let with_section = |name: &str, section: &str, data: Option<&Path>| {
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        if let Some(d) = data {
            text = text.replace(
                &format!("train = \"{}\"", tinystories().display()),
                &format!("train = \"{}\"", d.display()),
            );
        }
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, format!("{text}\n[ensemble]\n{section}\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let run = |cfg: &str, extra: &[&str]| {
        let out = dir.join("student");
        let mut args = vec!["distill", "--config", cfg, "--out", out.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        let r = kd(&args);
        (r, out)
    };
    // Online, probability level, fixed weights.
    let c = with_section(
        "online",
        &format!("teachers = [\"{b}\"]\nweights = [0.25, 0.75]\naverage = \"probs\""),
        None,
    );
    let (r, out) = run(&c, &["--teacher", &a]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(metrics(&out).iter().filter(|m| m.get("grad_norm").is_some()).count(), 4);
    // Weights that do not fit the teachers: refused.
    let c = with_section("bad-weights", &format!("teachers = [\"{b}\"]\nweights = [1.0]"), None);
    assert_input_error(
        &run(&c, &["--teacher", &a]).0,
        &["ensemble.weights", "1 weights for 2 teachers"],
    );

    // Stored: both teachers precomputed, combined at the probability level.
    for (t, d) in [(&a, "logits-a"), (&b, "logits-b")] {
        let r = kd(&[
            "precompute-teacher",
            "--config",
            &cfg,
            "--teacher",
            t,
            "--top-k",
            "8",
            "--out",
            dir.join(d).to_str().unwrap(),
            "--quiet",
        ]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    let c = with_section(
        "stored",
        &format!("teacher_logits = [\"{}\"]", dir.join("logits-b").display()),
        None,
    );
    let (r, _) = run(&c, &["--teacher-logits", dir.join("logits-a").to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));

    // Routed by the rows' `teacher` key (names), instruction data.
    let rows: String = (0..60)
        .map(|i| {
            let who = if i % 3 == 0 { "b" } else { "a" };
            format!("{{\"instruction\": \"Say {i}.\", \"response\": \"The number {i}.\", \"teacher\": \"{who}\"}}\n")
        })
        .collect();
    let jsonl = dir.join("rows.jsonl");
    std::fs::write(&jsonl, rows).unwrap();
    let section = format!("teachers = [\"{b}\"]\nroute_by = \"teacher\"\nnames = [\"a\", \"b\"]");
    let c = with_section("routed", &section, Some(&jsonl));
    let (r, _) = run(&c, &["--teacher", &a, "--set", "data.template=\"plain\""]);
    assert!(r.status.success(), "{}", stderr(&r));
    let bad = std::fs::read_to_string(&jsonl).unwrap().replacen(
        "\"teacher\": \"b\"",
        "\"teacher\": \"c\"",
        1,
    );
    std::fs::write(&jsonl, bad).unwrap();
    let (r, _) = run(&c, &["--teacher", &a, "--set", "data.template=\"plain\""]);
    assert_input_error(&r, &["rows.jsonl line 1", "names no teacher"]);
    let _ = std::fs::remove_dir_all(&dir);
}
