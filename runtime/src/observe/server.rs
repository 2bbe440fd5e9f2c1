//! The HTTP port of a running pipeline (`[metrics] listen`): `/metrics` for Prometheus, `/health`
//! for load balancers and orchestrators, `/status` (what `weir status --json` prints, with this
//! process's counters) and `/`, the pipeline page.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::status::{self, PipelineStatus, StageCounters, StageStatus};
use super::{Metrics, failure_of, metrics};
use crate::config::Pipeline;

const PAGE: &str = include_str!("page.html");

/// How the port's state is kept between requests.
struct Monitor {
    pipeline: Pipeline,
    stalled_after: Duration,
    /// Per stage: its progress marker when last seen to move, and since when it has not.
    progress: Mutex<BTreeMap<String, (String, Instant)>>,
    /// The last poll, with this process's view applied.
    last: tokio::sync::Mutex<Option<PipelineStatus>>,
}

/// Opens the port named by `[metrics] listen`, if any, and serves it until `stop`. Returns the
/// address it listens on. A port that cannot be opened is an error: an operator who asked for
/// metrics must not run blind.
pub async fn serve(
    pipeline: &Pipeline,
    stop: CancellationToken,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(listen) = pipeline.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{}: [metrics] listen = \"{listen}\": cannot open the port: {e}",
                pipeline.path.display()
            ),
        )
    })?;
    let address = listener.local_addr()?;
    let monitor = Arc::new(Monitor {
        pipeline: pipeline.clone(),
        stalled_after: Duration::from_secs(pipeline.metrics.stalled_after_s),
        progress: Mutex::new(BTreeMap::new()),
        last: tokio::sync::Mutex::new(None),
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/status", get(status_json))
        .with_state(monitor.clone());
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics port stopped");
        }
    });
    tokio::spawn(poll(monitor, stop));
    tracing::info!(%address, "metrics on /metrics, health on /health, the pipeline page on /");
    Ok(Some(address))
}

/// How often positions are read for the gauges and `/health`.
fn poll_every(stalled_after: Duration) -> Duration {
    (stalled_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

async fn poll(monitor: Arc<Monitor>, stop: CancellationToken) {
    let every = poll_every(monitor.stalled_after);
    while !stop.is_cancelled() {
        let status = monitor.observe().await;
        *monitor.last.lock().await = Some(status);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Monitor {
    /// Reads every stage's position, updates the gauges, and applies what only this process
    /// knows: its counters, the errors that stopped its stages, and which stages have stalled.
    async fn observe(&self) -> PipelineStatus {
        let mut status = status::collect(&self.pipeline).await;
        let m = metrics();
        let now = Instant::now();
        let Ok(mut progress) = self.progress.lock() else {
            return status;
        };
        for stage in &mut status.stages {
            record_gauges(m, stage);
            stage.counters = Some(StageCounters {
                rows_in: Metrics::count(&m.rows_in, &[&stage.stage]),
                rows_out: Metrics::count(&m.rows_out, &[&stage.stage]),
                errors: Metrics::count(&m.errors, &[&stage.stage]),
                dropped_by_expectations: Metrics::count(&m.dropped_rows, &[&stage.stage]),
            });
            let marker = progress_marker(stage);
            let seen = progress
                .entry(stage.stage.clone())
                .or_insert_with(|| (marker.clone(), now));
            if seen.0 != marker || stage.lag.unwrap_or(0) == 0 {
                *seen = (marker, now);
            }
            if let Some(error) = failure_of(&stage.stage) {
                stage.state = "failing".into();
                stage.last_error = Some(error);
            } else if stage.unavailable.is_some() {
                stage.state = "failing".into();
            } else if now.duration_since(seen.1) >= self.stalled_after {
                stage.state = "behind".into();
            }
        }
        status
    }

    async fn latest(&self) -> PipelineStatus {
        if let Some(status) = self.last.lock().await.clone() {
            return status;
        }
        let status = self.observe().await;
        *self.last.lock().await = Some(status.clone());
        status
    }
}

/// What moves when a stage makes progress (not when more input arrives).
fn progress_marker(stage: &StageStatus) -> String {
    match stage.stage.as_str() {
        "capture" => stage.details["confirmed_lsn"].to_string(),
        "landing" => stage.details["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["committed"].to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => format!("{:?}", stage.version),
    }
}

fn record_gauges(m: &Metrics, stage: &StageStatus) {
    let Some(lag) = stage.lag else {
        return;
    };
    m.stage_lag
        .with_label_values(&[stage.stage.as_str(), stage.lag_unit.as_str()])
        .set(lag);
    match stage.stage.as_str() {
        "capture" => {
            if let Some(slot) = stage.details["slot"].as_str() {
                m.slot_lag_bytes.with_label_values(&[slot]).set(lag);
            }
        }
        "landing" => {
            for p in stage.details["partitions"].as_array().into_iter().flatten() {
                let (Some(topic), Some(partition), Some(lag)) = (
                    p["topic"].as_str(),
                    p["partition"].as_i64(),
                    p["lag"].as_i64(),
                ) else {
                    continue;
                };
                m.consumer_lag
                    .with_label_values(&[topic, &partition.to_string()])
                    .set(lag);
            }
        }
        _ => {
            if let Some(version) = stage.version {
                m.delta_version
                    .with_label_values(&[stage.stage.as_str()])
                    .set(version as i64);
            }
        }
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

async fn status_json(State(monitor): State<Arc<Monitor>>) -> Json<PipelineStatus> {
    let status = monitor.observe().await;
    *monitor.last.lock().await = Some(status.clone());
    Json(status)
}

/// 200 when every stage is caught up or progressing; 503 naming the stages behind or failing.
async fn health(State(monitor): State<Arc<Monitor>>) -> impl IntoResponse {
    let status = monitor.latest().await;
    let stages: Vec<serde_json::Value> = status
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "stage": s.stage,
                "state": s.state,
                "lag": s.lag,
                "lag_unit": s.lag_unit,
                "error": s.last_error.as_ref().map(|e| &e.message).or(s.unavailable.as_ref()),
            })
        })
        .collect();
    let unhealthy: Vec<&str> = status
        .stages
        .iter()
        .filter(|s| s.state == "behind" || s.state == "failing")
        .map(|s| s.stage.as_str())
        .collect();
    let code = if unhealthy.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "pipeline": status.pipeline,
        "healthy": unhealthy.is_empty(),
        "unhealthy_stages": unhealthy,
        "checked_at": status.collected_at,
        "stages": stages,
    });
    (code, Json(body))
}
