//! What a running [`Trainer`](crate::Trainer) reports: [`TrainEvent`]s, delivered to the
//! observer set with [`Trainer::on_event`](crate::Trainer::on_event).
//!
//! The library formats no progress bar and no ETA: it hands over the numbers (step, total, loss,
//! throughput, time since [`Trainer::fit`](crate::Trainer::fit) began) and the caller renders
//! them. Without an observer, [`log_event`] writes one plain line per event through the `log`
//! facade, so a program that only installs a logger still sees the run progress.
//!
//! # Example: a custom observer
//! ```
//! use kd_train::events::{TrainEvent, log_event};
//!
//! let mut losses = Vec::new();
//! let mut observer = move |e: &TrainEvent| {
//!     if let TrainEvent::Step { loss, .. } = e {
//!         losses.push(*loss);
//!     }
//!     log_event(e); // and the default plain line
//! };
//! observer(&TrainEvent::Started { first_step: 0, total_steps: 3 });
//! // `trainer.on_event(observer)` hands it to a trainer.
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::EvalRecord;

/// One thing that happened in a training run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TrainEvent {
    /// [`Trainer::fit`](crate::Trainer::fit) starts: steps run from `first_step` (0, or the step
    /// of a restored checkpoint) to `total_steps`.
    Started {
        /// Steps already done when this call began.
        first_step: u64,
        /// The step the run ends at (`TrainConfig::steps`).
        total_steps: u64,
    },
    /// An optimizer step finished (sent after every step; `periodic` marks the ones a plain log
    /// shows).
    Step {
        /// The step just done, 1-based.
        step: u64,
        /// The step the run ends at.
        total_steps: u64,
        /// Steps already done when this `fit` began (for rates and ETAs of this call).
        first_step: u64,
        /// Training loss of the step.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        /// Counted tokens in the step.
        tokens: u64,
        /// Counted tokens per second of the step.
        tokens_per_sec: f64,
        /// Wall-clock time since this `fit` began (evaluations and checkpoints included).
        elapsed: Duration,
        /// Whether this is a `log_every`-th step or the last one.
        periodic: bool,
    },
    /// A held-out evaluation finished (step 0 is the starting point of the curve).
    Eval {
        /// Its result.
        record: EvalRecord,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step it holds.
        step: u64,
        /// Its directory.
        path: PathBuf,
    },
    /// The trainer was restored from a checkpoint ([`Trainer::resume_from`](crate::Trainer::resume_from)).
    Resumed {
        /// The step it continues from.
        step: u64,
        /// The checkpoint directory.
        path: PathBuf,
    },
    /// A step had a non-finite loss or gradient and its update was skipped
    /// ([`NonFinitePolicy::Skip`](crate::NonFinitePolicy::Skip)).
    NonFinite {
        /// The skipped step.
        step: u64,
    },
    /// [`Trainer::fit`](crate::Trainer::fit) is done.
    Finished {
        /// Steps done in all (those before a resume included).
        steps: u64,
        /// Wall-clock time of this `fit`.
        elapsed: Duration,
    },
}

/// A caller's observer.
type Callback = Box<dyn FnMut(&TrainEvent) + Send>;

/// The observer a [`Trainer`](crate::Trainer) calls with every event.
pub(crate) struct Observer(Option<Callback>);

impl Observer {
    /// No observer: events go to [`log_event`].
    pub(crate) fn logging() -> Self {
        Self(None)
    }

    /// Calls `f` with every event instead.
    pub(crate) fn calling(f: impl FnMut(&TrainEvent) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    /// Delivers `event`.
    pub(crate) fn emit(&mut self, event: &TrainEvent) {
        match &mut self.0 {
            Some(f) => f(event),
            None => log_event(event),
        }
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Observer(callback)" } else { "Observer(log)" })
    }
}

/// The default observer: one plain line per event through `log` (`info`; `warn` for
/// [`TrainEvent::NonFinite`]), steps only when `periodic`.
///
/// ```text
/// step 20/100  loss 2.1234  lr 1.00e-3  |g| 0.412  5123 tok/s
/// eval step 20: loss 2.2000  ppl 9.025  (4096 tokens)
/// checkpoint runs/x/checkpoint-000020
/// ```
pub fn log_event(event: &TrainEvent) {
    match event {
        TrainEvent::Step { periodic: false, .. } | TrainEvent::Started { .. } => {}
        TrainEvent::Step { step, total_steps, loss, lr, grad_norm, tokens_per_sec, .. } => {
            log::info!(
                "step {step}/{total_steps}  loss {loss:.4}  lr {lr:.2e}  |g| {grad_norm:.3}  \
                 {tokens_per_sec:.0} tok/s"
            );
        }
        TrainEvent::Eval { record } => {
            log::info!(
                "eval step {}: {}  ({} tokens)",
                record.step,
                crate::trainer::eval_summary(record),
                record.tokens
            );
        }
        TrainEvent::Checkpoint { path, .. } => log::info!("checkpoint {}", path.display()),
        TrainEvent::Resumed { step, path } => {
            log::info!("resumed from {} at step {step}", path.display());
        }
        TrainEvent::NonFinite { step } => {
            log::warn!("step {step}: non-finite loss or gradients; the update is skipped");
        }
        TrainEvent::Finished { steps, elapsed } => {
            log::info!("done: {steps} steps ({:.1}s)", elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn an_observer_gets_every_event_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let mut o = Observer::calling(move |e| sink.lock().unwrap().push(e.clone()));
        let events = [
            TrainEvent::Started { first_step: 0, total_steps: 2 },
            TrainEvent::NonFinite { step: 1 },
            TrainEvent::Finished { steps: 2, elapsed: Duration::from_secs(1) },
        ];
        for e in &events {
            o.emit(e);
        }
        assert_eq!(*seen.lock().unwrap(), events);
        assert_eq!(format!("{o:?}"), "Observer(callback)");
        assert_eq!(format!("{:?}", Observer::logging()), "Observer(log)");
    }
}
