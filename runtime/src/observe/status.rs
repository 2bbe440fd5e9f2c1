//! `weir status`: every stage's position and lag, read from where each stage keeps its progress
//! (the replication slot, the Kafka consumer group, the Delta tables), so it works whether the
//! pipeline runs or not; plus the last error each stage recorded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::{lakehouse, landing, source, storage};

/// The whole pipeline, stage by stage in pipeline order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub collected_at: String,
    pub stages: Vec<StageStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStatus {
    /// `capture`, `landing`, `bronze`, `silver` or `gold.<name>`.
    pub stage: String,
    pub reads: String,
    pub writes: String,
    /// The layer's Wasm component, for the layers.
    pub component: Option<String>,
    /// Where the stage stands, for people.
    pub position: String,
    /// Work waiting for the stage, in `lag_unit`; None when it could not be read.
    pub lag: Option<i64>,
    pub lag_unit: String,
    /// The Delta table's version, for the layers.
    pub version: Option<u64>,
    pub last_commit: Option<String>,
    /// `caught up`, `lagging`, `unavailable`, or, from a running process's `/status`, `behind`
    /// (input waiting without progress for `metrics.stalled_after_s`) or `failing`.
    pub state: String,
    /// Why the position could not be read (service down, table missing).
    pub unavailable: Option<String>,
    pub last_error: Option<ErrorRecord>,
    /// The stage's own figures (slot, partitions, offsets), as read.
    pub details: serde_json::Value,
    /// What this process counted since it started; only in a running process's `/status`.
    pub counters: Option<StageCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorRecord {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageCounters {
    pub rows_in: u64,
    pub rows_out: u64,
    pub errors: u64,
    pub dropped_by_expectations: u64,
}

/// Reads every stage's position. A stage whose service cannot be reached is reported as
/// unavailable, with the reason; the others are still read.
pub async fn collect(pipeline: &Pipeline) -> PipelineStatus {
    let topic = pipeline.topic_for(&pipeline.bronze.source_table);
    let mut stages = Vec::new();

    let mut capture = StageStatus::new(
        "capture",
        format!(
            "PostgreSQL {} (slot {})",
            pipeline.bronze.source_table, pipeline.source.slot_name
        ),
        format!("Kafka topic {topic}"),
    );
    capture.lag_unit = "WAL bytes".into();
    match source::slot_position(pipeline).await {
        Ok(slot) => {
            capture.position = match &slot.confirmed_lsn {
                Some(lsn) => format!("slot confirmed {lsn} of WAL {}", slot.current_lsn),
                None => format!("no slot yet (WAL at {})", slot.current_lsn),
            };
            capture.lag = slot.lag_bytes.or((!slot.exists).then_some(0));
            capture.details = serde_json::to_value(&slot).unwrap_or_default();
        }
        Err(e) => capture.unavailable = Some(e.to_string()),
    }
    stages.push(capture);

    let mut landing_stage = StageStatus::new(
        "landing",
        format!("Kafka topic {topic}"),
        format!("Parquet files in {}", pipeline.landing.location),
    );
    landing_stage.lag_unit = "records".into();
    let reading = pipeline.clone();
    match tokio::task::spawn_blocking(move || landing::consumer_positions(&reading)).await {
        Ok(Ok(partitions)) => {
            landing_stage.position = partitions
                .iter()
                .map(|p| match p.committed {
                    Some(c) => format!("partition {} at {c} of {}", p.partition, p.high_watermark),
                    None => format!(
                        "partition {} not started ({} records)",
                        p.partition, p.high_watermark
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ");
            landing_stage.lag = Some(partitions.iter().map(|p| p.lag).sum());
            landing_stage.details = serde_json::json!({ "partitions": partitions });
        }
        Ok(Err(e)) => landing_stage.unavailable = Some(e.to_string()),
        Err(e) => landing_stage.unavailable = Some(e.to_string()),
    }
    stages.push(landing_stage);

    for (stage, position) in lakehouse::positions(pipeline).await {
        let layer = pipeline
            .layers()
            .into_iter()
            .find(|(name, _)| *name == stage);
        let (reads, table) = match stage.as_str() {
            "bronze" => (
                format!("landing files of {}", pipeline.bronze.source_table),
                pipeline.bronze.layer.table.clone(),
            ),
            "silver" => (
                "bronze's change feed".to_owned(),
                pipeline.silver.layer.table.clone(),
            ),
            _ => (
                "silver's change feed".to_owned(),
                layer
                    .as_ref()
                    .map(|(_, l)| l.table.clone())
                    .unwrap_or_default(),
            ),
        };
        let mut status = StageStatus::new(&stage, reads, format!("Delta table {table}"));
        status.component = layer.map(|(_, l)| l.component.display().to_string());
        match position {
            Ok(p) => {
                status.version = p.version;
                status.last_commit = p
                    .last_commit_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                status.position = match p.version {
                    Some(v) => format!("version {v}"),
                    None => "no table yet".to_owned(),
                };
                status.lag = Some(p.pending as i64);
                status.lag_unit = p.pending_unit.to_owned();
                status.details = serde_json::json!({ "consumed": p.consumed });
            }
            Err(e) => status.unavailable = Some(e.to_string()),
        }
        stages.push(status);
    }

    let errors = last_errors(pipeline).await;
    for stage in &mut stages {
        stage.last_error = errors
            .iter()
            .find(|(name, _)| *name == stage.stage)
            .map(|(_, e)| e.clone());
        stage.state = if stage.unavailable.is_some() {
            "unavailable"
        } else if stage.lag.unwrap_or(0) > 0 {
            "lagging"
        } else {
            "caught up"
        }
        .to_owned();
    }
    PipelineStatus {
        pipeline: pipeline.name.clone(),
        collected_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stages,
    }
}

impl StageStatus {
    fn new(stage: &str, reads: String, writes: String) -> Self {
        Self {
            stage: stage.to_owned(),
            reads,
            writes,
            component: None,
            position: String::new(),
            lag: None,
            lag_unit: String::new(),
            version: None,
            last_commit: None,
            state: String::new(),
            unavailable: None,
            last_error: None,
            details: serde_json::Value::Null,
            counters: None,
        }
    }
}

fn errors_folder(
    pipeline: &Pipeline,
) -> storage::Result<(
    std::sync::Arc<dyn object_store::ObjectStore>,
    object_store::path::Path,
)> {
    let (store, root) = storage::open(&pipeline.state_location)?;
    Ok((store, root.join("status").join("errors")))
}

/// Records the error that stopped `stage`, where `weir status` finds it after the process exits.
pub(super) async fn record_error(
    pipeline: &Pipeline,
    stage: &str,
    record: &ErrorRecord,
) -> storage::Result<()> {
    let (store, folder) = errors_folder(pipeline)?;
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    storage::put(&*store, &folder.join(format!("{stage}.json")), bytes).await
}

/// The last error recorded per stage; unreadable records are skipped (they only inform).
async fn last_errors(pipeline: &Pipeline) -> Vec<(String, ErrorRecord)> {
    let Ok((store, folder)) = errors_folder(pipeline) else {
        return Vec::new();
    };
    let Ok(paths) = storage::list(&*store, &folder).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in paths {
        let Some(stage) = path.filename().and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        if let Ok(Some(bytes)) = storage::get(&*store, &path).await
            && let Ok(record) = serde_json::from_slice::<ErrorRecord>(&bytes)
        {
            out.push((stage.to_owned(), record));
        }
    }
    out
}

impl fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        table.set_header([
            "stage",
            "state",
            "position",
            "lag",
            "last commit",
            "last error",
        ]);
        for s in &self.stages {
            let lag = match s.lag {
                Some(n) => format!("{n} {}", s.lag_unit),
                None => "?".to_owned(),
            };
            let position = s.unavailable.as_deref().unwrap_or(&s.position);
            let error = s
                .last_error
                .as_ref()
                .map(|e| format!("{}: {}", e.at, e.message))
                .unwrap_or_default();
            table.add_row([
                s.stage.as_str(),
                s.state.as_str(),
                position,
                lag.as_str(),
                s.last_commit.as_deref().unwrap_or(""),
                error.as_str(),
            ]);
        }
        writeln!(f, "pipeline {} at {}", self.pipeline, self.collected_at)?;
        write!(f, "{table}")
    }
}
