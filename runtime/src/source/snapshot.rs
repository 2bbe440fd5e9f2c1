//! The initial snapshot: every captured table read as `op: r` events, in primary-key chunks.
//!
//! The first attempt reads inside the snapshot the slot exported when it was created, so rows and
//! streamed changes meet exactly at the slot's consistent point. Progress (the last key sent and
//! acknowledged, per table) is recorded after every chunk. A snapshot cut short by a crash resumes
//! after that key in a fresh transaction: the slot has not moved, so streaming replays every change
//! since the consistent point, and those changes sort after the snapshot rows (which carry the
//! consistent point as their LSN), so consumers applying changes by LSN still converge exactly.
//!
//! Several tables are read in parallel (`snapshot_max_threads`), each by its own connection; memory
//! holds one chunk per table being read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::debezium::{EventBuilder, TableSchema};
use super::{Delivery, Result, SourceError, connect, pg, quote_ident, quote_literal, send_all};
use crate::observe::{Progress, metrics};
use crate::transport::ChangeProducer;

/// Chunks of one table being built or awaiting acknowledgement at once: enough to keep the
/// server, the event builders and the broker busy together; memory holds this many chunks more.
const CHUNKS_IN_FLIGHT: usize = 3;

/// How far a snapshot got, per `schema.table`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct SnapshotProgress {
    pub tables: BTreeMap<String, TableProgress>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct TableProgress {
    pub rows: u64,
    /// Key of the last row sent and acknowledged (text form, in key order).
    pub last_key: Option<Vec<Option<String>>>,
    pub done: bool,
}

/// Where to read from and where the rows go.
pub(super) struct Snapshot<'a> {
    pub connection: &'a str,
    /// The slot's exported snapshot; `None` when resuming (it died with the crashed process).
    pub exported: Option<String>,
    /// The slot's consistent point, carried by every snapshot row as its LSN.
    pub lsn: u64,
    pub events: Arc<EventBuilder>,
    pub producer: &'a ChangeProducer,
    pub chunk_rows: usize,
    pub threads: usize,
}

/// A row read but not yet sent: the final row of the whole snapshot must be marked `last`, and
/// which one that is is known only once every table is done.
struct HeldRow {
    table: String,
    row: SimpleQueryRow,
}

/// Reads every table not yet done; `save` records progress durably. Returns the rows sent.
pub(super) async fn run<F, Fut>(
    snapshot: Snapshot<'_>,
    progress: SnapshotProgress,
    save: F,
) -> Result<u64>
where
    F: Fn(SnapshotProgress) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let progress = Arc::new(Mutex::new(progress));
    let started = Instant::now();
    let ts_ms = chrono::Utc::now().timestamp_millis();
    // Owned, so the per-table futures borrow nothing that varies between them.
    let tables: Vec<TableSchema> = {
        let p = progress.lock().await;
        snapshot
            .events
            .tables()
            .iter()
            .filter(|t| !p.tables.get(&t.qualified()).is_some_and(|tp| tp.done))
            .cloned()
            .collect()
    };
    let save = &save;
    let held: Vec<Option<HeldRow>> = futures::stream::iter(tables)
        .map(|table| read_table(&snapshot, table, ts_ms, progress.clone(), save))
        .buffer_unordered(snapshot.threads.max(1))
        .try_collect()
        .await?;

    let mut held: Vec<HeldRow> = held.into_iter().flatten().collect();
    held.sort_by(|a, b| a.table.cmp(&b.table));
    let count = held.len();
    let mut deliveries = FuturesUnordered::new();
    for (i, row) in held.iter().enumerate() {
        let Some(table) = snapshot
            .events
            .tables()
            .iter()
            .find(|t| t.qualified() == row.table)
        else {
            continue;
        };
        let record = snapshot.events.snapshot_row(
            table,
            |i| cell(&row.row, i),
            snapshot.lsn,
            ts_ms,
            i + 1 == count,
        );
        deliveries.extend(send_all(snapshot.producer, [record]));
    }
    for counter in [&metrics().rows_in, &metrics().rows_out] {
        counter.with_label_values(&["capture"]).inc_by(count as u64);
    }
    while let Some(delivery) = deliveries.next().await {
        delivery?;
    }
    let mut p = progress.lock().await;
    for row in &held {
        let tp = p.tables.entry(row.table.clone()).or_default();
        tp.rows += 1;
    }
    for tp in p.tables.values_mut() {
        tp.done = true;
    }
    save(p.clone()).await?;
    let rows: u64 = p.tables.values().map(|t| t.rows).sum();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        rows,
        seconds = format!("{secs:.1}"),
        rows_per_second = (rows as f64 / secs) as u64,
        "snapshot done"
    );
    Ok(rows)
}

/// Reads one table in key order, chunk by chunk, sending every row but its last, which it returns.
async fn read_table<F, Fut>(
    snapshot: &Snapshot<'_>,
    table: TableSchema,
    ts_ms: i64,
    progress: Arc<Mutex<SnapshotProgress>>,
    save: &F,
) -> Result<Option<HeldRow>>
where
    F: Fn(SnapshotProgress) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let name = table.qualified();
    // Shared with the tasks that build each chunk's events.
    let table = Arc::new(table);
    let client = connect(snapshot.connection).await?;
    let import = match &snapshot.exported {
        Some(id) => format!("SET TRANSACTION SNAPSHOT {};", quote_literal(id)),
        None => String::new(),
    };
    client
        .batch_execute(&format!(
            // The text formats the type mappings read, as the walsender writes them by default.
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET bytea_output = hex;
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {import}"
        ))
        .await
        .map_err(pg(format!("starting the snapshot of {name}")))?;
    let estimate = estimate_rows(&client, &table).await?;

    let key_positions: Vec<usize> = table
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect();
    let key_list = key_positions
        .iter()
        .map(|&i| quote_ident(&table.columns()[i].name))
        .collect::<Vec<_>>()
        .join(", ");
    let (mut last_key, mut rows) = {
        let p = progress.lock().await;
        let tp = p.tables.get(&name).cloned().unwrap_or_default();
        (tp.last_key, tp.rows)
    };
    if last_key.is_some() {
        tracing::info!(table = %name, rows, "resuming the snapshot after the last acknowledged key");
    }
    let client = Arc::new(client);
    let chunk_query = |after: Option<&Vec<Option<String>>>| {
        // Keyless tables (REPLICA IDENTITY FULL) are read in one pass: there is no order to resume by.
        if key_positions.is_empty() {
            return format!("SELECT {} FROM {}", table.column_list(), table.quoted());
        }
        let after = match after {
            Some(key) => {
                let literals: Vec<String> = key
                    .iter()
                    .map(|v| v.as_deref().map_or("NULL".to_owned(), quote_literal))
                    .collect();
                format!("WHERE ({key_list}) > ({})", literals.join(", "))
            }
            None => String::new(),
        };
        format!(
            "SELECT {} FROM {} {after} ORDER BY {key_list} LIMIT {}",
            table.column_list(),
            table.quoted(),
            snapshot.chunk_rows
        )
    };
    // Each chunk is fetched (and its rows parsed) by a task of its own, so the server reads the
    // next chunk while this one is turned into events.
    let fetch = |query: String| {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            client
                .simple_query(&query)
                .await
                .map_err(pg(format!("reading {name}")))
        })
    };
    let key_of = |row: &SimpleQueryRow| -> Vec<Option<String>> {
        key_positions
            .iter()
            .map(|&i| cell(row, i).map(str::to_owned))
            .collect()
    };
    let mut held: Option<SimpleQueryRow> = None;
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(CHUNKS_IN_FLIGHT + 1);
    let mut progress_report = Progress::start("snapshot", &name, estimate, rows);
    let mut next_chunk = Some(fetch(chunk_query(last_key.as_ref())));
    while let Some(chunk) = next_chunk.take() {
        let messages = chunk.await.map_err(|e| SourceError::Postgres {
            context: format!("reading {name}"),
            message: e.to_string(),
        })??;
        let chunk: Vec<SimpleQueryRow> = messages
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        if let Some(row) = chunk.last() {
            last_key = Some(key_of(row));
        }
        if !key_positions.is_empty() && chunk.len() == snapshot.chunk_rows {
            next_chunk = Some(fetch(chunk_query(last_key.as_ref())));
        }
        // The table's last row is held back (see `HeldRow`): each chunk sends the row held from the
        // previous one and all its own but the last.
        let mut batch = chunk;
        if let Some(last) = batch.pop() {
            batch.splice(0..0, held.replace(last));
        }
        rows += batch.len() as u64;
        for counter in [&metrics().rows_in, &metrics().rows_out] {
            counter
                .with_label_values(&["capture"])
                .inc_by(batch.len() as u64);
        }
        let sent_key = batch.last().map(key_of);
        // Events are built on another worker while the next chunk is fetched and this loop goes on.
        let sending = tokio::spawn(send_rows(
            snapshot.events.clone(),
            snapshot.producer.clone(),
            table.clone(),
            batch,
            snapshot.lsn,
            ts_ms,
        ));
        in_flight.push_back(InFlight {
            sending,
            sent_key,
            rows,
        });
        // Progress is recorded in chunk order, so a resume never skips a chunk still in flight.
        if in_flight.len() > CHUNKS_IN_FLIGHT
            && let Some(chunk) = in_flight.pop_front()
        {
            settle(chunk, &name, !key_positions.is_empty(), &progress, save).await?;
        }
        progress_report.set(rows);
    }
    while let Some(chunk) = in_flight.pop_front() {
        settle(chunk, &name, !key_positions.is_empty(), &progress, save).await?;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg(format!("ending the snapshot of {name}")))?;
    {
        let mut p = progress.lock().await;
        let tp = p.tables.entry(name.clone()).or_default();
        tp.rows = rows;
        if held.is_none() {
            tp.done = true;
        }
    }
    tracing::info!(table = %name, rows = rows + u64::from(held.is_some()), "snapshot of table read");
    Ok(held.map(|row| HeldRow { table: name, row }))
}

/// The planner's row count estimate for `table`, which it makes from the table's size even before
/// the first ANALYZE (when `pg_class.reltuples` is still unknown). Progress only: 0 if unreadable.
async fn estimate_rows(client: &tokio_postgres::Client, table: &TableSchema) -> Result<u64> {
    let name = table.qualified();
    let messages = client
        .simple_query(&format!(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM {}",
            table.quoted()
        ))
        .await
        .map_err(pg(format!("estimating the size of {name}")))?;
    let plan = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => cell(row, 0),
        _ => None,
    });
    Ok(plan
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|plan| plan[0]["Plan"]["Plan Rows"].as_f64())
        .map_or(0, |rows| rows as u64))
}

/// The text of a row's column; `None` for NULL (and, defensively, for a column the row lacks).
fn cell(row: &SimpleQueryRow, i: usize) -> Option<&str> {
    row.try_get(i).ok().flatten()
}

/// Builds the events of `rows` and queues them to Kafka; yields their acknowledgements.
async fn send_rows(
    events: Arc<EventBuilder>,
    producer: ChangeProducer,
    table: Arc<TableSchema>,
    rows: Vec<SimpleQueryRow>,
    lsn: u64,
    ts_ms: i64,
) -> FuturesUnordered<Delivery> {
    let records = rows
        .iter()
        .map(|row| events.snapshot_row(&table, |i| cell(row, i), lsn, ts_ms, false));
    send_all(&producer, records).collect()
}

/// A chunk on its way to Kafka: its events being built, or their acknowledgements arriving.
struct InFlight {
    sending: tokio::task::JoinHandle<FuturesUnordered<Delivery>>,
    /// Key of the chunk's last sent row.
    sent_key: Option<Vec<Option<String>>>,
    /// Rows of the table sent up to and including this chunk.
    rows: u64,
}

/// Waits for a chunk's acknowledgements, then records it as done.
async fn settle<F, Fut>(
    chunk: InFlight,
    table: &str,
    resumable: bool,
    progress: &Mutex<SnapshotProgress>,
    save: &F,
) -> Result<()>
where
    F: Fn(SnapshotProgress) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut deliveries = chunk.sending.await.map_err(|e| SourceError::Table {
        table: table.to_owned(),
        message: format!("building snapshot events: {e}"),
    })?;
    while let Some(delivery) = deliveries.next().await {
        delivery?;
    }
    if resumable && chunk.sent_key.is_some() {
        let mut p = progress.lock().await;
        let tp = p.tables.entry(table.to_owned()).or_default();
        tp.rows = chunk.rows;
        tp.last_key = chunk.sent_key;
        save(p.clone()).await?;
    }
    Ok(())
}
