//! Runs a pipeline's stages: once in order (`--triggered`), or continuously until a signal.
//!
//! Every stage reads durable input and records its progress only with (or after) its durable
//! output, so stopping between any two steps, or killing the process, loses nothing.

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::lakehouse::{self, LayerReport, Layers};
use crate::landing::{self, LandingReport};
use crate::source::{self, CaptureReport};
use crate::wasm::{self, WasmHost};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("capture: {0}")]
    Source(#[from] source::SourceError),
    #[error("landing: {0}")]
    Landing(#[from] landing::LandingError),
    #[error("{0}")]
    Lakehouse(#[from] lakehouse::LakehouseError),
    #[error("{0}")]
    Wasm(#[from] wasm::WasmError),
    #[error("{stage} task ended abnormally: {message}")]
    Task {
        stage: &'static str,
        message: String,
    },
    #[error("{0}")]
    Metrics(std::io::Error),
}

impl PipelineError {
    /// The stage the error stopped, as `weir status` names stages.
    pub fn stage(&self) -> String {
        match self {
            Self::Source(_) => "capture".to_owned(),
            Self::Landing(_) => "landing".to_owned(),
            Self::Lakehouse(e) => e.stage(),
            Self::Wasm(e) => e.stage().unwrap_or("layers").to_owned(),
            Self::Task { stage, .. } => (*stage).to_owned(),
            Self::Metrics(_) => "metrics".to_owned(),
        }
    }
}

/// Records a run's error where `weir status` and `/health` report it, and hands it on.
async fn reported<T>(pipeline: &Pipeline, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        crate::observe::stage_failed(pipeline, &e.stage(), &e.to_string()).await;
    }
    result
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// The parts of a pipeline a process runs. One process runs them all by default; several can
/// share the work, e.g. one capturing and landing, others running the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Logical replication into Kafka.
    Capture,
    /// Kafka into landing files.
    Landing,
    /// Bronze, silver and gold.
    Layers,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Capture, Stage::Landing, Stage::Layers];
}

/// What a run did, stage by stage.
#[derive(Debug, Default)]
pub struct RunReport {
    pub capture: CaptureReport,
    pub landing: LandingReport,
    pub layers: Vec<(String, LayerReport)>,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "capture: {} snapshot rows, {} changes in {} transactions, slot confirmed at {}",
            self.capture.snapshot_rows,
            self.capture.changes,
            self.capture.transactions,
            pg_walstream::format_lsn(self.capture.confirmed_lsn)
        )?;
        writeln!(
            f,
            "landing: {} events into {} files ({} tombstones skipped)",
            self.landing.events, self.landing.files, self.landing.tombstones
        )?;
        for (name, r) in &self.layers {
            writeln!(f, "{name}: {r}")?;
        }
        Ok(())
    }
}

/// Checks what `weir validate` promises: the file (already parsed) and every component's exports.
pub fn validate(pipeline: &Pipeline) -> Result<()> {
    let host = WasmHost::new(pipeline.wasm)?;
    Layers::load(&host, pipeline)?;
    Ok(())
}

/// [`validate`], then runs the Debezium events in `sample` (a JSON array, or one event per line)
/// through every layer, checking that each output fits the next stage. Returns each layer's rows.
pub async fn validate_with_sample(
    pipeline: &Pipeline,
    sample: &std::path::Path,
) -> Result<Vec<(String, usize)>> {
    let landing = landing::sample_batch(sample)?;
    let host = WasmHost::new(pipeline.wasm)?;
    let mut layers = Layers::load(&host, pipeline)?;
    let outputs = layers.run_sample(pipeline, &landing).await?;
    Ok(outputs
        .into_iter()
        .map(|(layer, batch)| (layer, batch.num_rows()))
        .collect())
}

/// Recomputes `layer` (`gold` or `gold.<name>`) from silver as it stands.
pub async fn rebuild(pipeline: &Pipeline, layer: &str) -> Result<Vec<(String, LayerReport)>> {
    let host = WasmHost::new(pipeline.wasm)?;
    let mut layers = Layers::load(&host, pipeline)?;
    Ok(layers.rebuild(pipeline, layer).await?)
}

/// Processes everything committed so far through every stage, then returns.
pub async fn run_triggered(pipeline: &Pipeline) -> Result<RunReport> {
    run_stages_triggered(pipeline, &Stage::ALL).await
}

/// Processes everything committed so far through `stages`, in pipeline order, then returns.
pub async fn run_stages_triggered(pipeline: &Pipeline, stages: &[Stage]) -> Result<RunReport> {
    reported(pipeline, triggered(pipeline, stages).await).await
}

async fn triggered(pipeline: &Pipeline, stages: &[Stage]) -> Result<RunReport> {
    let host = WasmHost::new(pipeline.wasm)?;
    let mut layers = stages
        .contains(&Stage::Layers)
        .then(|| Layers::load(&host, pipeline))
        .transpose()?;
    let never = CancellationToken::new();
    let mut report = RunReport::default();
    if stages.contains(&Stage::Capture) {
        report.capture = source::run(pipeline, true, &never).await?;
        tracing::info!(
            changes = report.capture.changes,
            snapshot_rows = report.capture.snapshot_rows,
            "capture caught up"
        );
    }
    if stages.contains(&Stage::Landing) {
        report.landing = landing::run(pipeline, true, &never).await?;
        tracing::info!(
            events = report.landing.events,
            files = report.landing.files,
            "landing caught up"
        );
    }
    if let Some(layers) = &mut layers {
        report.layers = layers.run_once(pipeline).await?;
    }
    Ok(report)
}

/// Runs `stages` until `stop` is cancelled, then drains the lakehouse stages and returns. Serves
/// the pipeline's metrics port, if it has one, meanwhile.
pub async fn run_continuous(
    pipeline: &Pipeline,
    stages: &[Stage],
    stop: CancellationToken,
) -> Result<RunReport> {
    let serving = CancellationToken::new();
    let _stop_serving = serving.clone().drop_guard();
    crate::observe::serve(pipeline, serving)
        .await
        .map_err(PipelineError::Metrics)?;
    reported(pipeline, continuous(pipeline, stages, stop).await).await
}

async fn continuous(
    pipeline: &Pipeline,
    stages: &[Stage],
    stop: CancellationToken,
) -> Result<RunReport> {
    let host = WasmHost::new(pipeline.wasm)?;
    let mut layers = stages
        .contains(&Stage::Layers)
        .then(|| Layers::load(&host, pipeline))
        .transpose()?;
    let capture = stages.contains(&Stage::Capture).then(|| {
        let (p, s) = (pipeline.clone(), stop.clone());
        tokio::spawn(async move { source::run(&p, false, &s).await })
    });
    let landing_task = stages.contains(&Stage::Landing).then(|| {
        let (p, s) = (pipeline.clone(), stop.clone());
        tokio::spawn(async move { landing::run(&p, false, &s).await })
    });
    let mut totals: Vec<(String, LayerReport)> = Vec::new();
    let maintenance_every = Duration::from_secs(pipeline.maintenance.interval_s);
    let mut maintained = std::time::Instant::now();
    let idle = Duration::from_millis(pipeline.trigger_interval_ms);
    loop {
        let stopping = stop.is_cancelled() || finished(&capture) || finished(&landing_task);
        // Passes follow each other while they find input (micro-batches back to back, as DLT's
        // continuous mode); an idle pass waits `trigger_interval_ms` before looking again.
        let mut found_input = false;
        if let Some(layers) = &mut layers {
            for (name, r) in layers.run_once(pipeline).await? {
                found_input |= r.rows_in > 0;
                match totals.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => total.add(&r),
                    None => totals.push((name, r)),
                }
            }
            // Between passes, so compaction never races this process's writers.
            if !stopping
                && !maintenance_every.is_zero()
                && maintained.elapsed() >= maintenance_every
            {
                lakehouse::maintain(pipeline, &pipeline.maintenance).await?;
                maintained = std::time::Instant::now();
            }
        }
        if stopping {
            break;
        }
        if found_input {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(idle) => {}
        }
    }
    stop.cancel();
    let join = |stage: &'static str| {
        move |e: tokio::task::JoinError| PipelineError::Task {
            stage,
            message: e.to_string(),
        }
    };
    let mut report = RunReport {
        layers: totals,
        ..RunReport::default()
    };
    if let Some(capture) = capture {
        report.capture = capture.await.map_err(join("capture"))??;
    }
    if let Some(landing_task) = landing_task {
        report.landing = landing_task.await.map_err(join("landing"))??;
    }
    Ok(report)
}

fn finished<T>(task: &Option<tokio::task::JoinHandle<T>>) -> bool {
    task.as_ref()
        .is_some_and(tokio::task::JoinHandle::is_finished)
}

/// A token cancelled by the first SIGINT or SIGTERM; a second signal exits at once.
pub fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::info!("stopping: finishing in-flight work (signal again to exit at once)");
                t.cancel();
            } else {
                // Nothing is lost: progress is only ever recorded after output is durable.
                std::process::exit(130);
            }
        }
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
