//! What an operator sees: Prometheus metrics, `weir status`, the HTTP port that serves both with
//! a health check and the pipeline page, progress of long work, and the errors that stopped a stage.

mod metrics;
mod progress;
mod server;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

pub use metrics::{Metrics, metrics};
pub use progress::Progress;
pub use server::serve;
pub use status::{ErrorRecord, PipelineStatus, StageStatus, collect as status};

use crate::config::Pipeline;

/// Errors that stopped a stage in this process, for `/health` and `/status`.
static FAILURES: LazyLock<Mutex<BTreeMap<String, ErrorRecord>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Records that `stage` stopped on `error`: counted, reported by `/health`, and written where
/// `weir status` finds it after the process has gone.
pub async fn stage_failed(pipeline: &Pipeline, stage: &str, error: &str) {
    metrics().errors.with_label_values(&[stage]).inc();
    let record = ErrorRecord {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        message: error.to_owned(),
    };
    if let Ok(mut failures) = FAILURES.lock() {
        failures.insert(stage.to_owned(), record.clone());
    }
    if let Err(e) = status::record_error(pipeline, stage, &record).await {
        tracing::warn!(stage, error = %e, "cannot record the stage's error for `weir status`");
    }
}

fn failure_of(stage: &str) -> Option<ErrorRecord> {
    FAILURES.lock().ok()?.get(stage).cloned()
}
