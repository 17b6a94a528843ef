//! Logging and progress: `env_logger` behind the `log` facade, and progress bars (indicatif) for
//! training, generation and evaluation when stderr is a terminal.
//!
//! On a terminal each long loop draws a bar on stderr and log lines print above it. Anywhere
//! else (a pipe, a file, CI, the tests) there is no bar: the loops log a plain line now and then
//! instead (training every `train.log_every` steps; generation and evaluation loops at each
//! tenth of the way, at most every five seconds), each with its ETA.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kd_train::events::{TrainEvent, log_event};

/// Whether progress bars are drawn (stderr is a terminal and `--quiet` is off).
static BARS: AtomicBool = AtomicBool::new(false);

/// Every bar of the process, so that log lines can be printed above them.
fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// The crates whose `info` lines `kd` shows by default.
const OWN_CRATES: [&str; 4] = ["kd", "kd_train", "kd_models", "kd_losses"];

/// A logger that clears the progress bars while it writes a line.
struct BarAwareLogger(env_logger::Logger);

impl log::Log for BarAwareLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.0.matches(record) {
            multi().suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger, `[  12.3s] message` on stderr: `RUST_LOG` when set (env_logger's
/// syntax, e.g. `RUST_LOG=debug` or `RUST_LOG=kd_train=debug`), else `info` for kd's own crates
/// (`warn` with `quiet`) and `warn` for everything else. Progress bars are drawn when stderr is
/// a terminal and `quiet` is off.
pub fn init(quiet: bool) {
    let start = Instant::now();
    let own = if quiet { log::LevelFilter::Warn } else { log::LevelFilter::Info };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    for name in OWN_CRATES {
        builder.filter_module(name, own);
    }
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.format(move |buf, record| {
        let t = start.elapsed().as_secs_f64();
        match record.level() {
            log::Level::Info => writeln!(buf, "[{t:7.1}s] {}", record.args()),
            level => writeln!(buf, "[{t:7.1}s] {level}: {}", record.args()),
        }
    });
    let logger = builder.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(BarAwareLogger(logger))).is_ok() {
        log::set_max_level(max);
    }
    BARS.store(!quiet && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// `1h02m`, `3m05s`, `12s`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Seconds left when `done` of `done + left` units took `elapsed` seconds (at that rate).
fn eta(elapsed: f64, done: u64, left: u64) -> f64 {
    elapsed / done.max(1) as f64 * left as f64
}

/// A new bar of `len` units at `pos`, registered with the logger.
fn new_bar(len: u64, pos: u64, what: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{prefix} [{elapsed}] {bar:20.cyan/blue} {pos}/{len} {msg}")
            .expect("a valid progress template")
            .progress_chars("=> ");
    let bar = multi().add(ProgressBar::new(len).with_style(style));
    bar.set_prefix(what.to_string());
    bar.set_position(pos);
    bar
}

/// Least time between two plain progress lines of a [`Progress`].
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Progress of a counted loop (answers generated, blocks evaluated, tokens sampled): a bar on a
/// terminal, else a plain `info` line at a tenth of the way when [`PLAIN_INTERVAL`] has passed
/// since the last one (a loop shorter than that logs nothing), and a last line at the end after
/// earlier ones.
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: &'static str,
    total: u64,
    done: u64,
    every: u64,
    start: Instant,
    /// When the last plain line was logged, if one was.
    last_line: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A loop over `total` `unit`s, called `what` in its lines.
    pub fn new(what: &str, total: u64, unit: &'static str) -> Self {
        let bar = BARS.load(Ordering::Relaxed).then(|| new_bar(total, 0, what));
        if let Some(b) = &bar {
            b.set_message(unit);
        }
        Self {
            what: what.to_string(),
            unit,
            total,
            done: 0,
            every: (total / 10).max(1),
            start: Instant::now(),
            last_line: None,
            bar,
        }
    }

    /// `done` units are done (a count that only grows).
    pub fn set(&mut self, done: u64) {
        let before = self.done;
        self.done = done.min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        let since = self.last_line.unwrap_or(self.start).elapsed();
        let tenth = self.done / self.every > before / self.every;
        let last = self.done == self.total && self.done > before && self.last_line.is_some();
        if last || (tenth && since >= PLAIN_INTERVAL) {
            let secs = self.start.elapsed().as_secs_f64();
            log::info!(
                "{}: {}/{} {} ({}, eta {})",
                self.what,
                self.done,
                self.total,
                self.unit,
                format_duration(secs),
                format_duration(eta(secs, self.done, self.total - self.done))
            );
            self.last_line = Some(Instant::now());
        }
    }

    /// Removes the bar (no-op without one).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            multi().remove(&bar);
        }
    }
}

/// Renders a [`kd_train::Trainer`]'s events: a step bar with loss, learning rate, gradient norm,
/// throughput and ETA on a terminal, else the periodic step line with its ETA; evaluations,
/// checkpoints and resumes are logged either way ([`log_event`]).
pub fn train_observer() -> impl FnMut(&TrainEvent) + Send + 'static {
    let mut bar: Option<ProgressBar> = None;
    move |event| match event {
        TrainEvent::Started { first_step, total_steps } => {
            if BARS.load(Ordering::Relaxed) {
                bar = Some(new_bar(*total_steps, *first_step, "train"));
            }
        }
        TrainEvent::Step {
            step,
            total_steps,
            first_step,
            loss,
            lr,
            grad_norm,
            tokens_per_sec,
            elapsed,
            periodic,
            ..
        } => {
            let left =
                eta(elapsed.as_secs_f64(), step - first_step, total_steps.saturating_sub(*step));
            let line = format!(
                "loss {loss:.4}  lr {lr:.2e}  |g| {grad_norm:.3}  {tokens_per_sec:.0} tok/s  eta {}",
                format_duration(left)
            );
            match &bar {
                Some(b) => {
                    b.set_position(*step);
                    b.set_message(line);
                }
                None if *periodic => log::info!("step {step}/{total_steps}  {line}"),
                None => {}
            }
        }
        TrainEvent::Finished { .. } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
                multi().remove(&b);
            }
            log_event(event);
        }
        other => log_event(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(5.4), "5s");
        assert_eq!(format_duration(-1.0), "0s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }

    #[test]
    fn eta_at_the_rate_so_far() {
        assert_eq!(eta(10.0, 5, 15), 30.0);
        assert_eq!(eta(10.0, 0, 4), 40.0);
        assert_eq!(eta(10.0, 5, 0), 0.0);
    }
}
