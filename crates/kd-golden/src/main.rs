//! `kd-golden`: check the golden loss files against the float64 reference, or generate new ones.
//!
//! ```text
//! cargo run -p kd-golden --release -- check crates/kd-losses/tests/golden [--tolerance 1e-9]
//! cargo run -p kd-golden --release -- generate OUT_DIR [--seed 0]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use kd_golden::{DEFAULT_TOLERANCE, GoldenError, check_dir, generate_dir};

const USAGE: &str = "usage:
  kd-golden check DIR [--tolerance REL]     recompute every case of every *.json in DIR and
                                            report the largest error per file (default 1e-9)
  kd-golden generate OUT_DIR [--seed S]     write a fresh set of golden files (default seed 0)";

enum Command {
    Check { dir: PathBuf, tolerance: f64 },
    Generate { dir: PathBuf, seed: u64 },
}

fn parse(args: &[String]) -> Result<Command, GoldenError> {
    let usage = |msg: &str| GoldenError::Usage(format!("{msg}\n{USAGE}"));
    let (cmd, rest) = args.split_first().ok_or_else(|| usage("missing command"))?;
    let (dir, opts) = rest.split_first().ok_or_else(|| usage("missing directory"))?;
    let opt = |name: &str| -> Result<Option<&String>, GoldenError> {
        match opts {
            [] => Ok(None),
            [k, v] if k == name => Ok(Some(v)),
            _ => Err(usage(&format!("unexpected arguments {opts:?}"))),
        }
    };
    match cmd.as_str() {
        "check" => {
            let tolerance = match opt("--tolerance")? {
                Some(v) => v.parse().map_err(|_| usage(&format!("bad tolerance `{v}`")))?,
                None => DEFAULT_TOLERANCE,
            };
            Ok(Command::Check { dir: dir.into(), tolerance })
        }
        "generate" => {
            let seed = match opt("--seed")? {
                Some(v) => v.parse().map_err(|_| usage(&format!("bad seed `{v}`")))?,
                None => 0,
            };
            Ok(Command::Generate { dir: dir.into(), seed })
        }
        other => Err(usage(&format!("unknown command `{other}`"))),
    }
}

fn run(args: &[String]) -> Result<bool, GoldenError> {
    match parse(args)? {
        Command::Check { dir, tolerance } => {
            let reports = check_dir(&dir)?;
            let mut ok = !reports.is_empty();
            println!(
                "{:<22} {:>5} {:>9} {:>10} {:>10}  worst",
                "file", "cases", "numbers", "max_abs", "max_rel"
            );
            for r in &reports {
                let c = &r.comparison;
                let pass = c.passes(tolerance);
                ok &= pass;
                println!(
                    "{:<22} {:>5} {:>9} {:>10.2e} {:>10.2e}  {}{}",
                    r.file,
                    r.cases,
                    c.numbers,
                    c.max_abs,
                    c.max_rel,
                    c.worst,
                    if pass { "" } else { "  FAIL" }
                );
                for m in c.mismatches.iter().take(10) {
                    println!("    mismatch: {m}");
                }
            }
            println!(
                "{} files, tolerance {tolerance:e}: {}",
                reports.len(),
                if ok { "ok" } else { "FAILED" }
            );
            Ok(ok)
        }
        Command::Generate { dir, seed } => {
            let files = generate_dir(&dir, seed)?;
            println!("wrote {} files to {} (seed {seed})", files.len(), dir.display());
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kd-golden: {e}");
            ExitCode::from(2)
        }
    }
}
