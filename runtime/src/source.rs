//! Capture: PostgreSQL logical replication (pgoutput) → Debezium-style change events in Kafka.
//!
//! Guarantees: the slot's confirmed LSN moves only past transactions whose every event Kafka has
//! acknowledged, so a crash re-sends (never loses) changes; consumers deduplicate by LSN. The
//! initial snapshot is read inside the snapshot exported by the slot's creation, so snapshot rows
//! and streamed changes meet at the slot's consistent point with no gap and no overlap.
//!
//! Replication rides on `pg_walstream` (its own wire client: no libpq, TLS through rustls), which
//! decodes pgoutput into typed events and takes care of keepalives and standby status updates;
//! snapshot reads and catalog queries use `tokio-postgres`.

mod debezium;
mod snapshot;
mod tls;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pg_walstream::{
    CancellationToken, EventType, LogicalReplicationStream, ReplicationError,
    ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig, SharedLsnFeedback, StreamingMode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

// Column, Op and TxContext too, so code outside the crate (runtime/fuzz) can drive `EventBuilder`.
pub use debezium::{Column, EventBuilder, Op, TableSchema, TxContext};

use crate::config::{Pipeline, PublicationAutocreateMode, SnapshotMode};
use crate::storage::{self, StorageError};
use crate::transport::{self, ChangeProducer, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("postgres {context}: {message}")]
    Postgres { context: String, message: String },
    #[error("replication slot {slot}: {message}")]
    Replication { slot: String, message: String },
    #[error("postgres: {0}")]
    Precondition(String),
    #[error("replication slot {slot}: another process is capturing from it")]
    SlotTaken { slot: String },
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;

fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    let context = context.into();
    move |e| SourceError::Postgres {
        context,
        message: describe_pg_error(&e),
    }
}

/// The server's own words (message, detail, hint), which `tokio_postgres::Error`'s Display omits.
fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = db.message().to_owned();
            if let Some(detail) = db.detail() {
                out.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                out.push_str(&format!(" hint: {hint}"));
            }
            out
        }
        None => {
            // The cause (a TLS handshake's certificate error, a refused connection) is the useful part.
            let mut out = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                out.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            out
        }
    }
}

/// What one capture pass did.
#[derive(Debug, Default, Clone)]
pub struct CaptureReport {
    pub snapshot_rows: u64,
    pub changes: u64,
    pub transactions: u64,
    /// The LSN the slot was confirmed up to when the pass ended.
    pub confirmed_lsn: u64,
}

/// Progress weir keeps about a slot, beside the slot itself.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SlotState {
    snapshot_completed: bool,
    /// Set while a snapshot is under way, so a crash resumes it instead of starting over.
    #[serde(default)]
    snapshot: Option<snapshot::SnapshotProgress>,
}

fn slot_state_location(
    pipeline: &Pipeline,
) -> Result<(Arc<dyn object_store::ObjectStore>, object_store::path::Path)> {
    let (store, root) = storage::open(&pipeline.state_location)?;
    let path = root
        .join("source")
        .join(format!("{}.json", pipeline.source.slot_name));
    Ok((store, path))
}

async fn read_slot_state(
    pipeline: &Pipeline,
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
) -> Result<SlotState> {
    match storage::get(store, path).await? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SourceError::Replication {
            slot: pipeline.source.slot_name.clone(),
            message: format!(
                "weir's progress record {path} is unreadable ({e}); delete it to snapshot again"
            ),
        }),
        None => Ok(SlotState::default()),
    }
}

/// Where the pipeline's replication slot stands against the server's WAL, for `weir status`.
#[derive(Debug, Clone, Serialize)]
pub struct SlotPosition {
    pub slot: String,
    pub exists: bool,
    /// Whether a process (weir, or another client) streams from it now, and its walsender.
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_lsn: Option<String>,
    pub current_lsn: String,
    /// WAL between the server's current position and what the slot has confirmed.
    pub lag_bytes: Option<i64>,
    /// WAL the server keeps for the slot (from its restart position): what a stopped pipeline costs.
    pub retained_wal_bytes: Option<i64>,
    pub snapshot_completed: bool,
}

pub async fn slot_position(pipeline: &Pipeline) -> Result<SlotPosition> {
    let slot = &pipeline.source.slot_name;
    let (store, path) = slot_state_location(pipeline)?;
    let state = read_slot_state(pipeline, &*store, &path).await?;
    let client = connect(&pipeline.source.connection).await?;
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(pg("reading the current WAL position"))?
        .get(0);
    let row = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(pg(format!("reading the state of slot {slot}")))?;
    let mut position = SlotPosition {
        slot: slot.clone(),
        exists: row.is_some(),
        active: false,
        active_pid: None,
        confirmed_lsn: None,
        current_lsn: current,
        lag_bytes: None,
        retained_wal_bytes: None,
        snapshot_completed: state.snapshot_completed,
    };
    if let Some(row) = row {
        position.active = row.get(0);
        position.active_pid = row.get(1);
        position.confirmed_lsn = row.get(2);
        position.lag_bytes = row.get(3);
        position.retained_wal_bytes = row.get(4);
    }
    Ok(position)
}

/// Runs capture. With `until_current`, stops once everything committed before the call has been
/// sent and acknowledged (a triggered run); otherwise streams until `stop` is cancelled.
pub async fn run(
    pipeline: &Pipeline,
    until_current: bool,
    stop: &CancellationToken,
) -> Result<CaptureReport> {
    // One process streams from a slot at a time (PostgreSQL enforces it); a continuous run that
    // finds the slot in use waits, and takes over when the holder stops or dies.
    loop {
        if !until_current {
            wait_for_slot(pipeline, stop).await?;
            if stop.is_cancelled() {
                return Ok(CaptureReport::default());
            }
        }
        match capture(pipeline, until_current, stop).await {
            // Stopping while the holder hands over is a clean stop, not a failure.
            Err(e) if !until_current && e.is_slot_in_use() && stop.is_cancelled() => {
                return Ok(CaptureReport::default());
            }
            Err(e) if !until_current && e.is_slot_in_use() => {
                tracing::info!(slot = %pipeline.source.slot_name, "another process took the slot first; waiting again");
                // The slot can be free while its capturer reads a snapshot: look again shortly.
                tokio::select! {
                    () = stop.cancelled() => return Ok(CaptureReport::default()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            other => return other,
        }
    }
}

impl SourceError {
    /// Whether the replication slot is streaming to another process (weir or Debezium).
    pub fn is_slot_in_use(&self) -> bool {
        match self {
            Self::Replication { message, .. } | Self::Postgres { message, .. } => {
                message.contains("is active for PID")
            }
            Self::SlotTaken { .. } => true,
            _ => false,
        }
    }
}

/// Returns once no process streams from the pipeline's slot (or at `stop`).
async fn wait_for_slot(pipeline: &Pipeline, stop: &CancellationToken) -> Result<()> {
    let slot = &pipeline.source.slot_name;
    let client = connect(&pipeline.source.connection).await?;
    let mut announced = false;
    loop {
        let holder = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[slot],
            )
            .await
            .map_err(pg(format!("reading the state of slot {slot}")))?;
        let Some(holder) = holder else {
            return Ok(());
        };
        if !announced {
            let pid: Option<i32> = holder.get(0);
            tracing::info!(%slot, walsender_pid = ?pid, "the slot is in use by another process; waiting to take over");
            announced = true;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One capture session on the slot: snapshot if needed, then streaming.
async fn capture(
    pipeline: &Pipeline,
    until_current: bool,
    stop: &CancellationToken,
) -> Result<CaptureReport> {
    let src = &pipeline.source;
    // First, so that the producer gets its id from the broker while PostgreSQL is being set up.
    let producer = ChangeProducer::new(&pipeline.kafka)?;
    let client = connect(&src.connection).await?;
    check_preconditions(&client, pipeline).await?;
    take_capture_lock(&client, &src.slot_name).await?;
    let tables = resolve_tables(&client, src).await?;
    let schemas = load_schemas(&client, &tables).await?;
    ensure_publication(&client, pipeline, &tables).await?;

    let topics: Vec<String> = tables.iter().map(|t| pipeline.topic_for(t)).collect();
    transport::ensure_topics(&pipeline.kafka, &topics).await?;
    producer.connect(&topics).await?;

    let (state_store, state_path) = slot_state_location(pipeline)?;
    let state = read_slot_state(pipeline, &*state_store, &state_path).await?;
    let slot_exists = slot_exists(&client, &src.slot_name).await?;
    let mut report = CaptureReport::default();
    if src.snapshot_mode == SnapshotMode::InitialOnly && state.snapshot_completed {
        tracing::info!(slot = %src.slot_name, "snapshot_mode = initial_only and the snapshot is done: nothing to capture");
        return Ok(report);
    }
    let initial = matches!(
        src.snapshot_mode,
        SnapshotMode::Initial | SnapshotMode::InitialOnly
    );
    // A snapshot cut short resumes on its slot, which has not moved since the consistent point.
    let resume = initial && slot_exists && !state.snapshot_completed && state.snapshot.is_some();
    // A missing slot means changes since the last run are gone from the WAL's view: snapshot again.
    let fresh_snapshot = !resume
        && match src.snapshot_mode {
            SnapshotMode::Initial | SnapshotMode::InitialOnly => {
                !state.snapshot_completed || !slot_exists
            }
            SnapshotMode::Always => true,
            SnapshotMode::Never => false,
        };
    if slot_exists && fresh_snapshot {
        // A snapshot needs the slot's exported snapshot, which only its creation gives: recreate it.
        // The new snapshot covers whatever the old slot had not delivered.
        tracing::warn!(slot = %src.slot_name, mode = ?src.snapshot_mode, "recreating the slot for a new snapshot");
        drop_slot(&client, &src.slot_name).await?;
    }

    // A triggered run ends at the WAL position of its start. Read before the slot may be created:
    // the snapshot then covers everything below it and streaming stops at the first keepalive.
    // The insert position, not the write position: with `synchronous_commit = off` the latter can
    // trail commits that are already visible, and the run would stop short of them.
    let stop_at = if until_current {
        let target: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(pg("reading the current WAL position"))?
            .get(0);
        Some(pg_walstream::parse_lsn(&target).map_err(|e| replication_err(&src.slot_name, e))?)
    } else {
        None
    };

    let events = Arc::new(EventBuilder::new(pipeline, &tables, schemas));
    let mut stream = open_stream(pipeline, fresh_snapshot, stop_at).await?;
    stream
        .ensure_replication_slot()
        .await
        .map_err(|e| replication_err(&src.slot_name, e))?;
    let save = |state: SlotState| {
        let (store, path) = (state_store.clone(), state_path.clone());
        async move {
            let bytes = serde_json::to_vec(&state).unwrap_or_default();
            storage::put(&*store, &path, bytes)
                .await
                .map_err(SourceError::from)
        }
    };
    if fresh_snapshot || resume {
        let exported = if fresh_snapshot {
            Some(
                stream
                    .exported_snapshot_name()
                    .map(str::to_owned)
                    // Only the slot's creator gets its snapshot: a process starting at the same
                    // moment found the slot made by another, which now streams from it.
                    .ok_or_else(|| SourceError::SlotTaken {
                        slot: src.slot_name.clone(),
                    })?,
            )
        } else {
            None
        };
        let progress = if resume {
            state.snapshot.unwrap_or_default()
        } else {
            Default::default()
        };
        // Recorded before the first row, so a crash from here on resumes rather than restarts.
        save(SlotState {
            snapshot_completed: false,
            snapshot: Some(progress.clone()),
        })
        .await?;
        let consistent_lsn = slot_confirmed_lsn(&client, &src.slot_name).await?;
        let plan = snapshot::Snapshot {
            connection: &src.connection,
            exported,
            lsn: consistent_lsn,
            events: events.clone(),
            producer: &producer,
            chunk_rows: src.snapshot_fetch_size,
            threads: src.snapshot_max_threads,
        };
        report.snapshot_rows = snapshot::run(plan, progress, |progress| {
            save(SlotState {
                snapshot_completed: false,
                snapshot: Some(progress),
            })
        })
        .await?;
        save(SlotState {
            snapshot_completed: true,
            snapshot: None,
        })
        .await?;
        tracing::info!(rows = report.snapshot_rows, lsn = %pg_walstream::format_lsn(consistent_lsn), "initial snapshot complete");
        if src.snapshot_mode == SnapshotMode::InitialOnly {
            // No streaming follows, so a slot left behind would only hold WAL back.
            drop(stream);
            drop_slot_when_released(&client, &src.slot_name).await?;
            return Ok(report);
        }
    } else if !state.snapshot_completed {
        // snapshot_mode = never: remember that no snapshot is owed for this slot.
        save(SlotState {
            snapshot_completed: true,
            snapshot: None,
        })
        .await?;
    }

    stream
        .start(None)
        .await
        .map_err(|e| replication_err(&src.slot_name, e))?;

    let feedback = stream.shared_lsn_feedback.clone();
    let (ack_tx, ack_rx) = mpsc::channel::<PendingCommit>(1024);
    let acker = tokio::spawn(confirm_in_order(ack_rx, feedback.clone()));
    let heartbeat = (!until_current && src.heartbeat_interval_ms > 0)
        .then(|| tokio::spawn(heartbeats(pipeline.source.clone())));
    let mut events = events;
    let streamed = stream_changes(
        &mut stream,
        &mut events,
        &client,
        &producer,
        &ack_tx,
        stop,
        &mut report,
    )
    .await;
    if let Some(task) = heartbeat {
        task.abort();
    }
    drop(ack_tx);
    let acked = acker.await.unwrap_or(Err(SourceError::Precondition(
        "the acknowledgement task panicked".into(),
    )));
    let stopped_at = streamed?;
    let confirmed = acked?.max(stopped_at.unwrap_or(0));
    report.confirmed_lsn = confirmed;
    // The stream's own status updates run only while it receives; record the final position
    // directly so a triggered run leaves the slot exactly where its acknowledged output ends.
    drop(stream);
    if confirmed > 0 {
        advance_slot(&client, &src.slot_name, confirmed).await?;
    }
    Ok(report)
}

type Delivery = futures::future::BoxFuture<'static, transport::Result<()>>;

/// Events of one transaction still awaiting Kafka, and the position to confirm once all are in.
struct PendingCommit {
    end_lsn: u64,
    deliveries: FuturesUnordered<Delivery>,
}

/// Confirms commit positions strictly in order, each only after all its events are acknowledged.
async fn confirm_in_order(
    mut rx: mpsc::Receiver<PendingCommit>,
    feedback: Arc<SharedLsnFeedback>,
) -> Result<u64> {
    let mut confirmed = 0;
    while let Some(mut commit) = rx.recv().await {
        while let Some(delivery) = commit.deliveries.next().await {
            delivery?;
        }
        feedback.update_flushed_lsn(commit.end_lsn);
        feedback.update_applied_lsn(commit.end_lsn);
        confirmed = commit.end_lsn;
    }
    Ok(confirmed)
}

/// The prefix of the logical messages weir's heartbeats write (`pg_logical_emit_message`).
const HEARTBEAT_PREFIX: &str = "weir_heartbeat";

/// Deliveries held per transaction before completed ones are collected: the transaction itself is
/// never buffered, and memory stays bounded however large it is.
const COLLECT_DELIVERIES_EVERY: usize = 10_000;

/// Streams changes into Kafka. Returns the keepalive position a bounded stream stopped at, if any.
async fn stream_changes(
    stream: &mut LogicalReplicationStream,
    events: &mut Arc<EventBuilder>,
    client: &tokio_postgres::Client,
    producer: &ChangeProducer,
    acks: &mpsc::Sender<PendingCommit>,
    stop: &CancellationToken,
    report: &mut CaptureReport,
) -> Result<Option<u64>> {
    let slot = events.slot_name().to_owned();
    let mut tx = debezium::TxContext::default();
    let mut deliveries = FuturesUnordered::new();
    loop {
        let event = match stream.next_event(stop).await {
            Ok(e) => e,
            Err(ReplicationError::StreamStopped(lsn)) => return Ok(Some(lsn.value())),
            Err(ReplicationError::Cancelled(_)) => return Ok(None),
            Err(e) => return Err(replication_err(&slot, e)),
        };
        let lsn = event.lsn.value();
        let records = match event.event_type {
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => {
                tx = debezium::TxContext {
                    tx_id: i64::from(transaction_id),
                    commit_lsn: final_lsn.value(),
                    commit_ts_ms: commit_timestamp.timestamp_millis(),
                };
                continue;
            }
            EventType::Commit { end_lsn, .. } => {
                report.transactions += 1;
                let m = crate::observe::metrics();
                m.batches.with_label_values(&["capture"]).inc();
                let behind_ms = chrono::Utc::now().timestamp_millis() - tx.commit_ts_ms;
                m.capture_behind_source_seconds
                    .with_label_values(&[&slot])
                    .set(behind_ms.max(0) as f64 / 1000.0);
                if !confirm_after(acks, end_lsn.value(), &mut deliveries).await {
                    return Ok(None);
                }
                continue;
            }
            // A heartbeat outside any transaction: everything before it is either acknowledged
            // or queued ahead of it, so the slot may move past WAL of tables weir does not capture.
            EventType::Message {
                prefix,
                message_lsn,
                ..
            } if &*prefix == HEARTBEAT_PREFIX => {
                if !confirm_after(acks, message_lsn.value(), &mut deliveries).await {
                    return Ok(None);
                }
                continue;
            }
            // Sent before a table's first change in a session and after every change of its
            // columns: the events that follow are in these columns, whatever the catalog says now.
            EventType::Relation {
                namespace,
                relation_name,
                columns,
                ..
            } => {
                if let Some(cached) = events.columns_of(&namespace, &relation_name)
                    && !same_columns(cached, &columns)
                {
                    let table =
                        relation_schema(client, &namespace, &relation_name, &columns).await?;
                    let names: Vec<&str> = table.columns().iter().map(|c| &*c.name).collect();
                    tracing::info!(table = %table.qualified(), columns = ?names, "the table's columns changed; events follow them");
                    Arc::make_mut(events).replace_table(table);
                }
                continue;
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } => events.change(
                &schema,
                &table,
                debezium::Op::Create,
                None,
                Some(&data),
                lsn,
                &tx,
            )?,
            EventType::Update {
                schema,
                table,
                old_data,
                new_data,
                ..
            } => events.change(
                &schema,
                &table,
                debezium::Op::Update,
                old_data.as_ref(),
                Some(&new_data),
                lsn,
                &tx,
            )?,
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => events.change(
                &schema,
                &table,
                debezium::Op::Delete,
                Some(&old_data),
                None,
                lsn,
                &tx,
            )?,
            EventType::Truncate { tables, .. } => {
                let mut records = Vec::new();
                for qualified in tables {
                    records.extend(events.truncate(&qualified, lsn, &tx)?);
                }
                records
            }
            _ => continue,
        };
        let changes = records.iter().filter(|r| r.value.is_some()).count() as u64;
        report.changes += changes;
        let m = crate::observe::metrics();
        m.rows_in.with_label_values(&["capture"]).inc_by(changes);
        m.rows_out
            .with_label_values(&["capture"])
            .inc_by(records.len() as u64);
        deliveries.extend(send_all(producer, records));
        if deliveries.len() >= COLLECT_DELIVERIES_EVERY {
            while let Some(Some(delivery)) = deliveries.next().now_or_never() {
                delivery?;
            }
        }
    }
}

/// Hands the acknowledgement task a position to confirm once `deliveries` (taken) are all in.
/// `false` when that task has gone, which ends streaming.
async fn confirm_after(
    acks: &mpsc::Sender<PendingCommit>,
    end_lsn: u64,
    deliveries: &mut FuturesUnordered<Delivery>,
) -> bool {
    let pending = PendingCommit {
        end_lsn,
        deliveries: std::mem::take(deliveries),
    };
    acks.send(pending).await.is_ok()
}

fn send_all(
    producer: &ChangeProducer,
    records: impl IntoIterator<Item = debezium::Record>,
) -> impl Iterator<Item = Delivery> {
    records.into_iter().map(|r| {
        let fut = producer.send(&r.topic, r.key.as_deref(), r.value.as_deref());
        Box::pin(fut) as Delivery
    })
}

/// Keeps the slot moving while captured tables are idle but the database is not: each heartbeat
/// writes a logical message (or runs `heartbeat_action_query`), whose position the stream then
/// confirms. Also reports how much WAL the slot holds back.
async fn heartbeats(source: crate::config::SourceConfig) {
    let interval = Duration::from_millis(source.heartbeat_interval_ms);
    let client = match connect(&source.connection).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeats disabled: cannot connect");
            return;
        }
    };
    let emit = match &source.heartbeat_action_query {
        Some(query) => query.clone(),
        None => format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', '')"),
    };
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = client.batch_execute(&emit).await {
            tracing::warn!(error = %e, query = %emit, "heartbeat failed");
        }
        match client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&source.slot_name],
            )
            .await
        {
            Ok(Some(row)) => {
                let lag: Option<i64> = row.get(0);
                tracing::info!(slot = %source.slot_name, lag_bytes = lag.unwrap_or(0), "replication slot lag");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the slot's lag failed"),
        }
    }
}

fn replication_err(slot: &str, e: ReplicationError) -> SourceError {
    let message = e.to_string();
    let hint = if message.contains("is active for PID") {
        " (another weir process, or a Debezium connector, is using this slot)"
    } else if message.contains("permission denied")
        || message.contains("must be superuser or replication role")
    {
        " (the user needs the REPLICATION attribute)"
    } else {
        ""
    };
    SourceError::Replication {
        slot: slot.to_owned(),
        message: format!("{message}{hint}"),
    }
}

async fn connect(connection: &str) -> Result<tokio_postgres::Client> {
    let (config, tls) = tls::connector(connection)?;
    let (client, conn) = config.connect(tls).await.map_err(pg("connecting"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

fn replication_url(connection: &str) -> String {
    let sep = if connection.contains('?') { '&' } else { '?' };
    format!("{connection}{sep}replication=database")
}

async fn open_stream(
    pipeline: &Pipeline,
    export_snapshot: bool,
    stop_at: Option<u64>,
) -> Result<LogicalReplicationStream> {
    let src = &pipeline.source;
    let mut config = ReplicationStreamConfig::new(
        src.slot_name.clone(),
        src.publication_name.clone(),
        1,
        StreamingMode::Off,
        // How often the stream tells the server what Kafka has acknowledged.
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(60),
        RetryConfig::default(),
    );
    let snapshot = if export_snapshot { "export" } else { "nothing" };
    config = config.with_slot_options(ReplicationSlotOptions {
        snapshot: Some(snapshot.into()),
        ..Default::default()
    });
    if let Some(lsn) = stop_at {
        config = config.with_stop_at_lsn(lsn);
    }
    // Logical messages carry weir's heartbeats.
    config = config.with_messages(true);
    LogicalReplicationStream::new(&replication_url(&src.connection), config)
        .await
        .map_err(|e| replication_err(&src.slot_name, e))
}

/// Makes this session the slot's only capturer until it ends, crash included: PostgreSQL's
/// advisory lock, keyed by the slot's name. The slot alone cannot say it: it is free while a
/// snapshot is being read or resumed, before streaming starts, so two processes starting together
/// would both snapshot.
async fn take_capture_lock(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    let taken: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended('weir capture ' || $1, 0))",
            &[&slot],
        )
        .await
        .map_err(pg(format!("locking capture on slot {slot}")))?
        .get(0);
    if taken {
        Ok(())
    } else {
        Err(SourceError::SlotTaken {
            slot: slot.to_owned(),
        })
    }
}

async fn check_preconditions(client: &tokio_postgres::Client, pipeline: &Pipeline) -> Result<()> {
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(pg("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SourceError::Precondition(format!(
            "wal_level is `{wal_level}`; logical replication needs `wal_level = logical` in postgresql.conf (and a restart)"
        )));
    }
    let can_replicate: bool = client
        .query_one(
            // Amazon RDS grants replication through membership in its `rds_replication` role
            // rather than the attribute.
            "SELECT rolreplication OR rolsuper
                    OR coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 'MEMBER'), false)
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(pg("reading the user's attributes"))?
        .get(0);
    if !can_replicate {
        return Err(SourceError::Precondition(
            "the connecting user lacks the REPLICATION attribute (ALTER ROLE … WITH REPLICATION; on Amazon RDS, GRANT rds_replication TO the user)"
                .into(),
        ));
    }
    if let Some(row) = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&pipeline.source.slot_name],
        )
        .await
        .map_err(pg("looking up the replication slot"))?
    {
        let pid: Option<i32> = row.get(0);
        return Err(SourceError::Replication {
            slot: pipeline.source.slot_name.clone(),
            message: format!(
                "is in use by server process {} (another weir process or connector holds it)",
                pid.unwrap_or(0)
            ),
        });
    }
    Ok(())
}

async fn load_schemas(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<HashMap<String, TableSchema>> {
    let mut out = HashMap::new();
    for qualified in tables {
        let (schema, table) = qualified.split_once('.').unwrap_or(("public", qualified));
        let rows = client
            .query(
                // Domains are described by their base type, arrays also by their element type.
                "SELECT a.attname, coalesce(a.attnum = ANY(i.indkey), false), c.relreplident::text,
                        a.attnotnull,
                        bt.oid::int8, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
                        format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
                        bt.typcategory::text, et.oid::int8, format_type(et.oid, NULL), et.typcategory::text
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 JOIN pg_type t ON t.oid = a.atttypid
                 JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
                 LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 WHERE n.nspname = $1 AND c.relname = $2
                 ORDER BY a.attnum",
                &[&schema, &table],
            )
            .await
            .map_err(pg(format!("reading the columns of {qualified}")))?;
        if rows.is_empty() {
            return Err(SourceError::Table {
                table: qualified.clone(),
                message: "does not exist".into(),
            });
        }
        let columns: Vec<debezium::Column> = rows.iter().map(column_from_row).collect();
        let identity: String = rows[0].get(2);
        if !columns.iter().any(|c| c.is_key) && identity == "d" {
            return Err(SourceError::Table {
                table: qualified.clone(),
                message: "has no primary key and REPLICA IDENTITY DEFAULT, so its updates and deletes cannot be keyed; \
                          add a primary key or ALTER TABLE … REPLICA IDENTITY FULL"
                    .into(),
            });
        }
        out.insert(qualified.clone(), TableSchema::new(schema, table, columns));
    }
    Ok(out)
}

/// A column from a row of `load_schemas`'s or `relation_schema`'s query: name, key, (replica
/// identity), not null, then the type: base type oid, modifier, formatted name, category, and an
/// array's element oid, name and category.
fn column_from_row(r: &tokio_postgres::Row) -> debezium::Column {
    let category = |i: usize| r.get::<_, String>(i).chars().next().unwrap_or('U');
    let oid = |i: usize| u32::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    let element = r.get::<_, Option<i64>>(8).map(|_| {
        Box::new(types::ColumnType {
            oid: oid(8),
            typmod: -1,
            name: r.get(9),
            category: category(10),
            element: None,
        })
    });
    debezium::Column::new(
        r.get(0),
        types::ColumnType {
            oid: oid(4),
            typmod: r.get(5),
            name: r.get(6),
            category: category(7),
            element,
        },
        r.get(1),
        r.get(3),
    )
}

/// Whether a relation message lists the columns weir already has: the same names in the same
/// order, keys and type modifiers (a domain's type oid is its own, where weir keeps its base
/// type's, so a differing oid counts only for built-in types).
fn same_columns(cached: &[debezium::Column], relation: &[pg_walstream::RelationColumn]) -> bool {
    const FIRST_USER_OID: u32 = 16_384;
    cached.len() == relation.len()
        && cached.iter().zip(relation).all(|(c, r)| {
            c.name == *r.name
                && c.is_key == r.is_key
                && c.ty.typmod == r.type_modifier
                && (c.ty.oid == r.type_id || r.type_id >= FIRST_USER_OID)
        })
}

/// A table's columns as a relation message lists them, typed through `pg_type` (types outlive
/// the columns that use them); `not null` where the column still exists with that type.
async fn relation_schema(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
    columns: &[pg_walstream::RelationColumn],
) -> Result<TableSchema> {
    let names: Vec<&str> = columns.iter().map(|c| &*c.name).collect();
    let oids: Vec<i64> = columns.iter().map(|c| i64::from(c.type_id)).collect();
    let typmods: Vec<i32> = columns.iter().map(|c| c.type_modifier).collect();
    let keys: Vec<bool> = columns.iter().map(|c| c.is_key).collect();
    let rows = client
        .query(
            "SELECT rc.name, rc.is_key, '', coalesce(a.attnotnull AND a.atttypid = t.oid, false),
                    bt.oid::int8, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE rc.typmod END,
                    format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE rc.typmod END),
                    bt.typcategory::text, et.oid::int8, format_type(et.oid, NULL), et.typcategory::text
             FROM unnest($3::text[], $4::int8[], $5::int4[], $6::bool[]) WITH ORDINALITY
                  AS rc(name, type_oid, typmod, is_key, ord)
             JOIN pg_type t ON t.oid = rc.type_oid::oid
             JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
             LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
             LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))
                  AND a.attname = rc.name AND NOT a.attisdropped
             ORDER BY rc.ord",
            &[&schema, &table, &names, &oids, &typmods, &keys],
        )
        .await
        .map_err(pg(format!("reading the types of {schema}.{table}'s columns")))?;
    if rows.len() != columns.len() {
        return Err(SourceError::Table {
            table: format!("{schema}.{table}"),
            message: "a column's type is gone from pg_type".into(),
        });
    }
    Ok(TableSchema::new(
        schema,
        table,
        rows.iter().map(column_from_row).collect(),
    ))
}

/// The `schema.table` names of ordinary and partitioned tables matching the include list and not
/// the exclude list (regular expressions over whole names, as Debezium matches them).
async fn resolve_tables(
    client: &tokio_postgres::Client,
    src: &crate::config::SourceConfig,
) -> Result<Vec<String>> {
    let compile = |patterns: &[String]| -> Result<Vec<regex::Regex>> {
        patterns
            .iter()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| SourceError::Precondition(format!("table pattern `{p}`: {e}")))
            })
            .collect()
    };
    let (include, exclude) = (
        compile(&src.table_include_list)?,
        compile(&src.table_exclude_list)?,
    );
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(pg("listing tables"))?;
    let tables: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|t| include.iter().any(|p| p.is_match(t)) && !exclude.iter().any(|p| p.is_match(t)))
        .collect();
    if tables.is_empty() {
        return Err(SourceError::Precondition(format!(
            "no table matches source.table_include_list {:?} (minus source.table_exclude_list {:?})",
            src.table_include_list, src.table_exclude_list
        )));
    }
    Ok(tables)
}

/// Creates or updates the publication as `publication_autocreate_mode` says.
async fn ensure_publication(
    client: &tokio_postgres::Client,
    pipeline: &Pipeline,
    tables: &[String],
) -> Result<()> {
    let src = &pipeline.source;
    let name = &src.publication_name;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(pg("looking up the publication"))?
        .is_some();
    let table_list = tables
        .iter()
        .map(|t| quote_qualified(t))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = match (src.publication_autocreate_mode, exists) {
        (PublicationAutocreateMode::Disabled, true)
        | (PublicationAutocreateMode::AllTables, true) => return Ok(()),
        (PublicationAutocreateMode::Disabled, false) => {
            return Err(SourceError::Precondition(format!(
                "publication {name} does not exist and source.publication_autocreate_mode is `disabled`: \
                 create it (CREATE PUBLICATION {name} FOR TABLE …) or choose `filtered`"
            )));
        }
        (PublicationAutocreateMode::AllTables, false) => {
            format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name))
        }
        (PublicationAutocreateMode::Filtered, false) => {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {table_list}",
                quote_ident(name)
            )
        }
        (PublicationAutocreateMode::Filtered, true) => {
            format!(
                "ALTER PUBLICATION {} SET TABLE {table_list}",
                quote_ident(name)
            )
        }
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(pg(format!("running `{sql}`")))?;
    tracing::info!(publication = %name, mode = ?src.publication_autocreate_mode, ?tables, "publication ready");
    Ok(())
}

async fn slot_exists(client: &tokio_postgres::Client, slot: &str) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("looking up the replication slot"))?
        .is_some())
}

/// Drops a slot once the walsender that used it has let go of it.
async fn drop_slot_when_released(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    for _ in 0..100 {
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(pg("looking up the replication slot"))?
            .map(|r| r.get(0));
        match active {
            None => return Ok(()),
            Some(false) => return drop_slot(client, slot).await,
            Some(true) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    drop_slot(client, slot).await
}

async fn slot_confirmed_lsn(client: &tokio_postgres::Client, slot: &str) -> Result<u64> {
    let lsn: Option<String> = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading the slot's consistent point"))?
        .get(0);
    let lsn = lsn.unwrap_or_default();
    pg_walstream::parse_lsn(&lsn).map_err(|e| replication_err(slot, e))
}

async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(pg(format!("dropping replication slot {slot}")))?;
    Ok(())
}

/// Moves the slot's confirmed position to `lsn` once the walsender has let go of the slot.
async fn advance_slot(client: &tokio_postgres::Client, slot: &str, lsn: u64) -> Result<()> {
    let target = pg_walstream::format_lsn(lsn);
    let mut last_err = None;
    for _ in 0..100 {
        match client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)
                 WHERE (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1) < $2::text::pg_lsn",
                &[&slot, &target],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if describe_pg_error(&e).contains("is active for PID") => {
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(pg(format!("confirming slot {slot} at {target}"))(e)),
        }
    }
    match last_err {
        Some(e) => Err(pg(format!("confirming slot {slot} at {target}"))(e)),
        None => Ok(()),
    }
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_qualified(qualified: &str) -> String {
    match qualified.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
        None => quote_ident(qualified),
    }
}

pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
