//! Progress of long work (a snapshot, a rebuild): a bar on a terminal, log lines elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the log lines come when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    kind: &'static str,
    subject: String,
    estimate: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    done_at_start: u64,
    last_log: Option<Instant>,
}

impl Progress {
    /// Starts reporting work of `kind` (e.g. "snapshot") on `subject` (e.g. a table), `done` rows
    /// of about `estimate` (0 when unknown) already done.
    pub fn start(kind: &'static str, subject: impl Into<String>, estimate: u64, done: u64) -> Self {
        let subject = subject.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = if estimate > 0 {
                "{msg} {wide_bar} {human_pos}/~{human_len} rows, {per_sec}, eta {eta}"
            } else {
                "{msg} {spinner} {human_pos} rows, {per_sec}"
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::new(estimate.max(done))
                .with_style(style)
                .with_message(format!("{kind} {subject}"));
            bar.set_position(done);
            bar
        });
        Self {
            kind,
            subject,
            estimate,
            bar,
            started: Instant::now(),
            done_at_start: done,
            last_log: None,
        }
    }

    /// `done` rows so far.
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            // Estimates (the planner's) can fall short; the bar grows instead of overflowing.
            if done > bar.length().unwrap_or(0) {
                bar.set_length(done);
            }
            bar.set_position(done);
            return;
        }
        if self.last_log.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        self.last_log = Some(Instant::now());
        let rate = done.saturating_sub(self.done_at_start) as f64
            / self.started.elapsed().as_secs_f64().max(1e-3);
        let percent = if self.estimate > 0 {
            (done as f64 * 100.0 / self.estimate as f64).min(100.0) as u64
        } else {
            0
        };
        let eta_s = if rate > 0.0 && self.estimate > done {
            ((self.estimate - done) as f64 / rate) as u64
        } else {
            0
        };
        tracing::info!(
            of = %self.subject,
            rows = done,
            estimate = self.estimate,
            percent,
            rows_per_second = rate as u64,
            eta_s,
            "{} progress",
            self.kind
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
