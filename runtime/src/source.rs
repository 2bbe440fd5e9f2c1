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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use pg_walstream::{
    CancellationToken, EventType, LogicalReplicationStream, ReplicationError,
    ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig, SharedLsnFeedback, StreamingMode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

pub use debezium::{EventBuilder, TableSchema};

use crate::config::{Pipeline, SnapshotMode};
use crate::storage::{self, StorageError};
use crate::transport::{self, ChangeProducer, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("postgres {context}: {source}")]
    Postgres {
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("replication slot {slot}: {message}")]
    Replication { slot: String, message: String },
    #[error("postgres: {0}")]
    Precondition(String),
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
    move |source| SourceError::Postgres { context, source }
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
}

/// Runs capture. With `until_current`, stops once everything committed before the call has been
/// sent and acknowledged (a triggered run); otherwise streams until `stop` is cancelled.
pub async fn run(
    pipeline: &Pipeline,
    until_current: bool,
    stop: &CancellationToken,
) -> Result<CaptureReport> {
    let src = &pipeline.source;
    let client = connect(&src.connection).await?;
    check_preconditions(&client, pipeline).await?;
    let schemas = load_schemas(&client, &src.tables).await?;
    ensure_publication(&client, pipeline).await?;

    let topics: Vec<String> = src.tables.iter().map(|t| pipeline.topic_for(t)).collect();
    transport::ensure_topics(&pipeline.kafka, &topics).await?;
    let producer = ChangeProducer::new(&pipeline.kafka)?;

    let (state_store, state_root) = storage::open(&pipeline.state_location)?;
    let state_path = state_root
        .clone()
        .join("source")
        .join(format!("{}.json", src.slot_name));
    let state: SlotState = match storage::get(&*state_store, &state_path).await? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => SlotState::default(),
    };

    let slot_exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&src.slot_name],
        )
        .await
        .map_err(pg("looking up the replication slot"))?
        .is_some();
    // A missing slot means changes since the last run are gone from the WAL's view: snapshot again.
    let needs_snapshot =
        src.snapshot_mode == SnapshotMode::Initial && (!state.snapshot_completed || !slot_exists);
    if slot_exists && needs_snapshot {
        // A snapshot cut short leaves a slot whose exported snapshot is gone: start over.
        tracing::warn!(slot = %src.slot_name, "previous initial snapshot did not complete; recreating the slot");
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

    let events = EventBuilder::new(pipeline, schemas);
    let mut report = CaptureReport::default();
    let mut stream = open_stream(pipeline, needs_snapshot, stop_at).await?;
    stream
        .ensure_replication_slot()
        .await
        .map_err(|e| replication_err(&src.slot_name, e))?;
    if needs_snapshot {
        let snapshot = stream
            .exported_snapshot_name()
            .map(str::to_owned)
            .ok_or_else(|| SourceError::Replication {
                slot: src.slot_name.clone(),
                message: "the slot was created without an exported snapshot".into(),
            })?;
        let consistent_lsn = slot_confirmed_lsn(&client, &src.slot_name).await?;
        report.snapshot_rows = snapshot_tables(
            &src.connection,
            &snapshot,
            consistent_lsn,
            &events,
            &producer,
        )
        .await?;
        let done = serde_json::to_vec(&SlotState {
            snapshot_completed: true,
        })
        .unwrap_or_default();
        storage::put(&*state_store, &state_path, done).await?;
        tracing::info!(rows = report.snapshot_rows, lsn = %pg_walstream::format_lsn(consistent_lsn), "initial snapshot complete");
    } else if !state.snapshot_completed {
        // snapshot_mode = never: remember that no snapshot is owed for this slot.
        let done = serde_json::to_vec(&SlotState {
            snapshot_completed: true,
        })
        .unwrap_or_default();
        storage::put(&*state_store, &state_path, done).await?;
    }

    stream
        .start(None)
        .await
        .map_err(|e| replication_err(&src.slot_name, e))?;

    let feedback = stream.shared_lsn_feedback.clone();
    let (ack_tx, ack_rx) = mpsc::channel::<PendingCommit>(1024);
    let acker = tokio::spawn(confirm_in_order(ack_rx, feedback.clone()));
    let streamed =
        stream_changes(&mut stream, &events, &producer, &ack_tx, stop, &mut report).await;
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

/// Events of one transaction, and the position to confirm once Kafka has them all.
struct PendingCommit {
    end_lsn: u64,
    deliveries: Vec<futures::future::BoxFuture<'static, transport::Result<()>>>,
}

/// Confirms commit positions strictly in order, each only after all its events are acknowledged.
async fn confirm_in_order(
    mut rx: mpsc::Receiver<PendingCommit>,
    feedback: Arc<SharedLsnFeedback>,
) -> Result<u64> {
    let mut confirmed = 0;
    while let Some(commit) = rx.recv().await {
        for delivery in join_all(commit.deliveries).await {
            delivery?;
        }
        feedback.update_flushed_lsn(commit.end_lsn);
        feedback.update_applied_lsn(commit.end_lsn);
        confirmed = commit.end_lsn;
    }
    Ok(confirmed)
}

/// Streams changes into Kafka. Returns the keepalive position a bounded stream stopped at, if any.
async fn stream_changes(
    stream: &mut LogicalReplicationStream,
    events: &EventBuilder,
    producer: &ChangeProducer,
    acks: &mpsc::Sender<PendingCommit>,
    stop: &CancellationToken,
    report: &mut CaptureReport,
) -> Result<Option<u64>> {
    let slot = events.slot_name().to_owned();
    let mut tx = debezium::TxContext::default();
    let mut deliveries = Vec::new();
    loop {
        let event = match stream.next_event(stop).await {
            Ok(e) => e,
            Err(ReplicationError::StreamStopped(lsn)) => return Ok(Some(lsn.value())),
            Err(ReplicationError::Cancelled(_)) => return Ok(None),
            Err(e) => return Err(replication_err(&slot, e)),
        };
        let lsn = event.lsn.value();
        match event.event_type {
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
            }
            EventType::Commit { end_lsn, .. } => {
                report.transactions += 1;
                let pending = PendingCommit {
                    end_lsn: end_lsn.value(),
                    deliveries: std::mem::take(&mut deliveries),
                };
                if acks.send(pending).await.is_err() {
                    return Ok(None);
                }
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } => {
                let change = events.change(
                    &schema,
                    &table,
                    debezium::Op::Create,
                    None,
                    Some(&data),
                    lsn,
                    &tx,
                )?;
                deliveries.extend(send_all(producer, change));
                report.changes += 1;
            }
            EventType::Update {
                schema,
                table,
                old_data,
                new_data,
                ..
            } => {
                let change = events.change(
                    &schema,
                    &table,
                    debezium::Op::Update,
                    old_data.as_ref(),
                    Some(&new_data),
                    lsn,
                    &tx,
                )?;
                deliveries.extend(send_all(producer, change));
                report.changes += 1;
            }
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => {
                let change = events.change(
                    &schema,
                    &table,
                    debezium::Op::Delete,
                    Some(&old_data),
                    None,
                    lsn,
                    &tx,
                )?;
                deliveries.extend(send_all(producer, change));
                report.changes += 1;
            }
            EventType::Truncate { tables, .. } => {
                for qualified in tables {
                    let change = events.truncate(&qualified, lsn, &tx)?;
                    deliveries.extend(send_all(producer, change));
                    report.changes += 1;
                }
            }
            _ => {}
        }
    }
}

fn send_all(
    producer: &ChangeProducer,
    records: Vec<debezium::Record>,
) -> impl Iterator<Item = futures::future::BoxFuture<'static, transport::Result<()>>> {
    records.into_iter().map(|r| {
        let fut = producer.send(&r.topic, r.key.as_deref(), r.value.as_deref());
        Box::pin(fut) as futures::future::BoxFuture<'static, transport::Result<()>>
    })
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
    let (client, conn) = tokio_postgres::connect(connection, NoTls)
        .await
        .map_err(pg("connecting"))?;
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
        Duration::from_millis(src.heartbeat_interval_ms.max(100)),
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
    LogicalReplicationStream::new(&replication_url(&src.connection), config)
        .await
        .map_err(|e| replication_err(&src.slot_name, e))
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
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(pg("reading the user's attributes"))?
        .get(0);
    if !can_replicate {
        return Err(SourceError::Precondition(
            "the connecting user lacks the REPLICATION attribute (ALTER ROLE … WITH REPLICATION)"
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
                "SELECT a.attname, a.atttypid::int8, format_type(a.atttypid, a.atttypmod),
                        coalesce(a.attnum = ANY(i.indkey), false), c.relreplident::text
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
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
        let columns: Vec<debezium::Column> = rows
            .iter()
            .map(|r| debezium::Column {
                name: r.get(0),
                type_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                type_name: r.get(2),
                is_key: r.get(3),
            })
            .collect();
        let identity: String = rows[0].get(4);
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

async fn ensure_publication(client: &tokio_postgres::Client, pipeline: &Pipeline) -> Result<()> {
    let name = &pipeline.source.publication_name;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(pg("looking up the publication"))?
        .is_some();
    if !exists {
        let tables: Vec<String> = pipeline
            .source
            .tables
            .iter()
            .map(|t| quote_qualified(t))
            .collect();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            tables.join(", ")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(pg(format!("creating publication {name}")))?;
        tracing::info!(publication = %name, tables = ?pipeline.source.tables, "created publication");
    }
    Ok(())
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
            Err(e) if e.to_string().contains("is active for PID") => {
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

/// Reads every table inside the exported snapshot and sends `op: r` events; returns the row count.
async fn snapshot_tables(
    connection: &str,
    snapshot: &str,
    consistent_lsn: u64,
    events: &EventBuilder,
    producer: &ChangeProducer,
) -> Result<u64> {
    const FETCH: usize = 5_000;
    let client = connect(connection).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(pg("importing the slot's exported snapshot"))?;
    let snapshot_ts_ms = chrono::Utc::now().timestamp_millis();
    let mut total = 0u64;
    let tables = events.tables();
    for (t_index, table) in tables.iter().enumerate() {
        let columns = table.column_list();
        client
            .batch_execute(&format!(
                "DECLARE weir_snapshot NO SCROLL CURSOR FOR SELECT {columns} FROM {}",
                table.quoted()
            ))
            .await
            .map_err(pg(format!("reading {}", table.qualified())))?;
        let mut pending: Vec<futures::future::BoxFuture<'static, transport::Result<()>>> =
            Vec::new();
        let mut rows_in_table = 0u64;
        let mut buffered: Option<Vec<Option<String>>> = None;
        loop {
            let messages = client
                .simple_query(&format!("FETCH {FETCH} FROM weir_snapshot"))
                .await
                .map_err(pg(format!("reading {}", table.qualified())))?;
            let mut fetched = 0;
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    fetched += 1;
                    let values: Vec<Option<String>> = (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect();
                    // Hold one row back so the very last snapshot event can be marked `last`.
                    if let Some(prev) = buffered.replace(values) {
                        let records = events.snapshot_row(
                            table,
                            &prev,
                            consistent_lsn,
                            snapshot_ts_ms,
                            false,
                        )?;
                        pending.extend(send_all(producer, records));
                        rows_in_table += 1;
                    }
                }
            }
            // Bound memory: wait for acknowledgements every fetch.
            for r in join_all(std::mem::take(&mut pending)).await {
                r?;
            }
            if fetched < FETCH {
                break;
            }
        }
        if let Some(last) = buffered.take() {
            let is_last = t_index + 1 == tables.len();
            let records =
                events.snapshot_row(table, &last, consistent_lsn, snapshot_ts_ms, is_last)?;
            for r in join_all(send_all(producer, records)).await {
                r?;
            }
            rows_in_table += 1;
        }
        client
            .batch_execute("CLOSE weir_snapshot")
            .await
            .map_err(pg("closing snapshot cursor"))?;
        tracing::info!(table = %table.qualified(), rows = rows_in_table, "snapshot of table done");
        total += rows_in_table;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg("ending the snapshot transaction"))?;
    Ok(total)
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

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
