//! Crash safety of `kd train` / `kd distill` end to end: the real binary is SIGKILLed at seeded
//! random points (during start-up, mid-step, inside a checkpoint write, between writing a
//! checkpoint and renaming it into place), resumed with `--resume` each time until it finishes,
//! and the final weights, optimizer moments and metrics must equal an uninterrupted run's bit for
//! bit. Damaged checkpoints (a truncated file, a flipped byte) must be detected and the previous
//! good one used, again ending bit-identical; with none left, `kd` must refuse to start over.
//!
//! `KD_TEST_CHECKPOINT_PAUSE_MS` (kd-train's test hook, see `kd_train::checkpoint`) makes every
//! checkpoint write pause after each file, so a kill lands inside the write reliably. It changes
//! timing only. Every kill plan comes from a fixed seed: a failure replays.
//!
//! Each test prints one `kill_resume:` summary line (kills, damaged checkpoints detected,
//! seconds); `cargo test -p kd-cli --test kill_resume -- --nocapture` shows them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{assets, metrics, tiny_model, without_timing};
use kd_models::sampling::Rng;

mod common;

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("kill-{name}"))
}

/// Uniform in `lo..=hi`.
fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

/// Optimizer steps of every run here (a checkpoint after each).
const STEPS: u64 = 12;
/// Steps of the on-policy (GKD) runs, which sample and so cost more per step.
const GKD_STEPS: u64 = 6;
/// The test hook's pause after each checkpoint file (milliseconds).
const PAUSE_MS: &str = "30";

/// Language modelling on TinyStories, a checkpoint after every step.
fn write_lm_config(dir: &Path) -> PathBuf {
    let a = assets();
    let text = format!(
        r#"
{student}
[data]
tokenizer = "{tok}"
train = "{train}"
seq_len = 32
eval_fraction = 0.05

[train]
steps = {STEPS}
batch_size = 2
eval_every = 3
eval_batches = 2
checkpoint_every = 1
log_every = 1
"#,
        student = tiny_model("student", 64),
        tok = a.display(),
        train = a.join("tinystories.txt").display(),
    );
    let p = dir.join("lm.toml");
    fs::write(&p, text).unwrap();
    p
}

/// On-policy GKD (λ = 1: every micro-batch samples from the student) on a few arithmetic
/// problems, with a randomly initialised teacher.
fn write_gkd_config(dir: &Path) -> PathBuf {
    let a = assets();
    let text = fs::read_to_string(a.join("arithmetic").join("train.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().take(12).collect();
    let train = dir.join("arith.jsonl");
    fs::write(&train, lines.join("\n") + "\n").unwrap();
    let text = format!(
        r#"
{student}
{teacher}
[data]
tokenizer = "{tok}"
train = "{train}"
eval_fraction = 0.25
seq_len = 96
template = "plain"

[method]
name = "gkd"
lmbda = 1.0
sampling = {{ max_new_tokens = 4 }}

[train]
steps = {GKD_STEPS}
batch_size = 2
eval_batches = 1
checkpoint_every = 1
log_every = 1
"#,
        student = tiny_model("student", 128),
        teacher = tiny_model("teacher", 128),
        tok = a.display(),
        train = train.display(),
    );
    let p = dir.join("gkd.toml");
    fs::write(&p, text).unwrap();
    p
}

/// `kd <command> --config <cfg> --out <out> [--resume]`, its log (stderr) to `log`.
fn spawn(command: &str, cfg: &Path, out: &Path, resume: bool, log: &Path) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kd"));
    c.args([command, "--config"]).arg(cfg).arg("--out").arg(out);
    if resume {
        c.arg("--resume");
    }
    c.env("KD_TEST_CHECKPOINT_PAUSE_MS", PAUSE_MS)
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("the kd binary runs")
}

/// Runs `kd` to completion and checks it succeeded.
fn run_to_end(command: &str, cfg: &Path, out: &Path, resume: bool) -> String {
    let log = out.with_extension("final.log");
    let status = spawn(command, cfg, out, resume, &log).wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "kd {command} {} failed ({status}):\n{stderr}", out.display());
    stderr
}

/// When to kill.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// This long after the start (start-up, loading, or wherever the run got to).
    AfterMs(u64),
    /// This long after `metrics.jsonl` holds step `n` (mid-step, evaluation, or the export).
    AfterStep(u64, u64),
    /// Inside the write of the checkpoint of a step ≥ `n`, once its `.tmp` directory holds
    /// this many of its four files (4: complete, not yet renamed into place).
    InCheckpointWrite(u64, usize),
    /// As soon as the checkpoint of step `n` is in place (before the next one is written).
    CheckpointDone(u64),
}

/// Modified at or after `since`.
fn fresh(path: &Path, since: SystemTime) -> bool {
    fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t >= since)
}

/// Whether `trigger` has fired for the run in `out` started at `since`.
fn fired(trigger: Trigger, out: &Path, started: Instant, since: SystemTime) -> bool {
    match trigger {
        Trigger::AfterMs(ms) => started.elapsed() >= Duration::from_millis(ms),
        // Checked by `wait_for` with its extra delay.
        Trigger::AfterStep(n, _) => {
            let metrics = out.join("metrics.jsonl");
            fresh(&metrics, since)
                && fs::read_to_string(&metrics).is_ok_and(|t| {
                    t.lines().filter(|l| l.contains("\"kind\":\"train\"")).count() as u64 >= n
                })
        }
        Trigger::InCheckpointWrite(n, files) => {
            let Ok(entries) = fs::read_dir(out) else { return false };
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(step) = name
                    .strip_prefix("checkpoint-")
                    .and_then(|s| s.strip_suffix(".tmp"))
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    return false;
                };
                // Files of this run's write (a killed run may have left an older `.tmp`).
                let written = fs::read_dir(e.path())
                    .map_or(0, |d| d.flatten().filter(|f| fresh(&f.path(), since)).count());
                step >= n && fresh(&e.path(), since) && written >= files
            })
        }
        Trigger::CheckpointDone(n) => fresh(&out.join(format!("checkpoint-{n:06}")), since),
    }
}

/// Spawns a run and SIGKILLs it when `trigger` fires; `Ok(description)` when it was killed,
/// `Err(status)` when it exited first.
fn kill_at(
    command: &str,
    cfg: &Path,
    out: &Path,
    resume: bool,
    trigger: Trigger,
    log: &Path,
) -> Result<String, ExitStatus> {
    let since = SystemTime::now();
    let started = Instant::now();
    let mut child = spawn(command, cfg, out, resume, log);
    let mut fired_at = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status);
        }
        if fired_at.is_none() && fired(trigger, out, started, since) {
            fired_at = Some(Instant::now());
        }
        let delay = match trigger {
            Trigger::AfterStep(_, ms) => Duration::from_millis(ms),
            _ => Duration::ZERO,
        };
        if fired_at.is_some_and(|t| t.elapsed() >= delay) {
            // `Child::kill` is SIGKILL on unix: no destructor, no flush, no signal handler runs.
            child.kill().unwrap();
            child.wait().unwrap();
            return Ok(format!("{trigger:?} at {:.0?}", started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The newest complete checkpoint's step in `out` (0 when none).
fn latest_step(out: &Path) -> u64 {
    fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A seeded kill point after the newest checkpoint in `out`, of a kind chosen by `kind`.
fn plan(rng: &mut Rng, kind: u64, out: &Path, steps: u64) -> Trigger {
    // At most one step past the newest checkpoint, so that the run lasts for every kill.
    let next = (latest_step(out) + 1).min(steps);
    let step = range(rng, next, steps.min(next + 1));
    match kind % 4 {
        0 => Trigger::AfterMs(range(rng, 20, 300)),
        1 => Trigger::AfterStep(step, range(rng, 0, 40)),
        // Into the checkpoint's own files, or after the manifest before the rename.
        2 => Trigger::InCheckpointWrite(step, range(rng, 1, 3) as usize),
        _ => Trigger::InCheckpointWrite(step, 4),
    }
}

/// Kills a run `kills` times at seeded points and resumes it until it finishes; returns the
/// kill points that hit.
fn kill_and_resume(
    command: &str,
    cfg: &Path,
    out: &Path,
    seed: u64,
    kills: u64,
    steps: u64,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut hits = Vec::new();
    for i in 0..kills {
        let trigger = plan(&mut rng, i, out, steps);
        let log = out.with_extension(format!("log.{i}"));
        match kill_at(command, cfg, out, i > 0, trigger, &log) {
            Ok(hit) => hits.push(hit),
            Err(status) => {
                let stderr = fs::read_to_string(&log).unwrap_or_default();
                assert!(status.success(), "kill plan {i} ({trigger:?}): kd failed:\n{stderr}");
            }
        }
    }
    run_to_end(command, cfg, out, true);
    hits
}

/// A checkpoint's `state.json`, its history [`without_timing`].
fn state(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let history = v["history"].as_array_mut().unwrap();
    *history = history.drain(..).map(without_timing).collect();
    v
}

/// The final weights (exported and checkpointed), optimizer moments, loop state and metrics of
/// `run` equal `reference`'s bit for bit.
fn assert_identical(reference: &Path, run: &Path, steps: u64) {
    let read = |p: PathBuf| fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let last = format!("checkpoint-{steps:06}");
    for file in ["model/model.safetensors", "model/config.json"] {
        assert!(read(reference.join(file)) == read(run.join(file)), "{file} differs");
    }
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (reference.join(&last).join(file), run.join(&last).join(file));
        assert!(read(a) == read(b), "{last}/{file} differs");
    }
    assert_eq!(state(&reference.join(&last)), state(&run.join(&last)), "{last}/state.json");
    let (a, b) = (metrics(reference), metrics(run));
    assert_eq!(a.len() as u64, steps + a.iter().filter(|l| l["kind"] == "eval").count() as u64);
    assert_eq!(a, b, "metrics.jsonl differs");
}

/// An uninterrupted language-modelling run in `dir`, to compare with.
fn lm_reference(dir: &Path) -> PathBuf {
    let cfg = write_lm_config(dir);
    let out = dir.join("reference");
    run_to_end("train", &cfg, &out, false);
    out
}

#[test]
fn sigkill_at_random_points_then_resume_is_bit_identical() {
    let start = Instant::now();
    let dir = scratch("lm-killed");
    let reference = lm_reference(&dir);
    let cfg = write_lm_config(&dir);
    let out = dir.join("run");
    let hits = kill_and_resume("train", &cfg, &out, 0x5EED_0013, 24, STEPS);
    assert!(hits.len() >= 20, "only {} of 24 kills hit: {hits:#?}", hits.len());
    let in_write = hits.iter().filter(|h| h.contains("InCheckpointWrite")).count();
    assert!(in_write >= 10, "{hits:#?}");
    assert_identical(&reference, &out, STEPS);
    eprintln!(
        "kill_resume: lm: {} kills survived ({in_write} inside a checkpoint write), {:.1} s\n{}",
        hits.len(),
        start.elapsed().as_secs_f64(),
        hits.join("\n")
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Damages checkpoint `step` in `out`: truncates `file` to half or flips one byte in it.
fn damage(out: &Path, step: u64, file: &str, truncate: bool) -> PathBuf {
    let path = out.join(format!("checkpoint-{step:06}")).join(file);
    let mut bytes = fs::read(&path).unwrap();
    if truncate {
        bytes.truncate(bytes.len() / 2);
    } else {
        let at = bytes.len() * 2 / 3;
        bytes[at] ^= 0x10;
    }
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn damaged_checkpoints_fall_back_to_the_previous_one() {
    let start = Instant::now();
    let dir = scratch("lm-damaged");
    let reference = lm_reference(&dir);
    let cfg = write_lm_config(&dir);
    let out = dir.join("run");
    let mut detected = 0;
    // Killed once checkpoint 5 is in place, a byte of its weights flipped: the resume warns and
    // starts from 4. Killed again once checkpoint 7 is in place, its optimizer file cut in half:
    // the resume starts from 6 and runs to the end.
    let log = dir.join("first.log");
    let hit = kill_at("train", &cfg, &out, false, Trigger::CheckpointDone(5), &log);
    assert!(hit.is_ok(), "the run ended before checkpoint 5");
    let damaged = damage(&out, 5, "model.safetensors", false);
    let log = dir.join("second.log");
    let hit = kill_at("train", &cfg, &out, true, Trigger::CheckpointDone(7), &log);
    assert!(hit.is_ok(), "the resumed run ended before checkpoint 7");
    let warned = |stderr: &str, damaged: &Path, fallback: u64| {
        assert!(stderr.contains("skipping checkpoint"), "{stderr}");
        assert!(stderr.contains(&damaged.display().to_string()), "{stderr}");
        let resumed = format!("checkpoint-{fallback:06} at step {fallback}");
        assert!(stderr.contains(&resumed), "{stderr}");
    };
    warned(&fs::read_to_string(&log).unwrap(), &damaged, 4);
    detected += 1;
    let damaged = damage(&out, 7, "optimizer.safetensors", true);
    let stderr = run_to_end("train", &cfg, &out, true);
    warned(&stderr, &damaged, 6);
    detected += 1;
    assert_identical(&reference, &out, STEPS);

    // With every checkpoint damaged, `kd` refuses to start over (exit 2, names the damage).
    for step in [STEPS - 1, STEPS] {
        damage(&out, step, "state.json", step == STEPS);
        detected += 1;
    }
    let log = dir.join("all-damaged.log");
    let status = spawn("train", &cfg, &out, true, &log).wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no usable checkpoint"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!(
        "kill_resume: damaged: {detected} damaged checkpoints detected, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn on_policy_gkd_survives_sigkill_bit_identical() {
    let start = Instant::now();
    let dir = scratch("gkd");
    let cfg = write_gkd_config(&dir);
    let reference = dir.join("reference");
    run_to_end("distill", &cfg, &reference, false);
    let out = dir.join("run");
    let hits = kill_and_resume("distill", &cfg, &out, 0x0060_0D5E, 8, GKD_STEPS);
    assert!(hits.len() >= 6, "only {} of 8 kills hit: {hits:#?}", hits.len());
    assert_identical(&reference, &out, GKD_STEPS);
    // The run was on-policy: its steps sampled from the student.
    let m = metrics(&out);
    assert!(m.iter().any(|l| l["extra"]["on_policy"] == 1.0), "{m:#?}");
    eprintln!(
        "kill_resume: gkd: {} kills survived, {:.1} s\n{}",
        hits.len(),
        start.elapsed().as_secs_f64(),
        hits.join("\n")
    );
    fs::remove_dir_all(&dir).unwrap();
}
