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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::debezium::{EventBuilder, TableSchema};
use super::{Delivery, Result, connect, pg, quote_ident, quote_literal, send_all};
use crate::transport::ChangeProducer;

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
    pub events: &'a EventBuilder,
    pub producer: &'a ChangeProducer,
    pub chunk_rows: usize,
    pub threads: usize,
}

/// A row read but not yet sent: the final row of the whole snapshot must be marked `last`, and
/// which one that is is known only once every table is done.
struct HeldRow {
    table: String,
    values: Vec<Option<String>>,
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
        let records = snapshot.events.snapshot_row(
            table,
            &row.values,
            snapshot.lsn,
            ts_ms,
            i + 1 == count,
        )?;
        deliveries.extend(send_all(snapshot.producer, records));
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
    let estimate: i64 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
            &[&table.quoted()],
        )
        .await
        .map_err(pg(format!("estimating the size of {name}")))?
        .get(0);

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
    let mut held: Option<Vec<Option<String>>> = None;
    let mut in_flight: Option<InFlight> = None;
    let mut last_report = Instant::now();
    let started = Instant::now();
    loop {
        // Keyless tables (REPLICA IDENTITY FULL) are read in one pass: there is no order to resume by.
        let query = if key_positions.is_empty() {
            format!("SELECT {} FROM {}", table.column_list(), table.quoted())
        } else {
            let after = match &last_key {
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
        let messages = client
            .simple_query(&query)
            .await
            .map_err(pg(format!("reading {name}")))?;
        let mut deliveries: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut fetched = 0usize;
        let mut last_sent = None;
        for message in messages {
            let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            fetched += 1;
            let values: Vec<Option<String>> = (0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect();
            if let Some(previous) = held.replace(values) {
                let records =
                    snapshot
                        .events
                        .snapshot_row(&table, &previous, snapshot.lsn, ts_ms, false)?;
                deliveries.extend(send_all(snapshot.producer, records));
                last_sent = Some(previous);
                rows += 1;
            }
        }
        if let Some(key) = &held {
            last_key = Some(key_positions.iter().map(|&i| key[i].clone()).collect());
        }
        let sent_key = last_sent.map(|row| {
            key_positions
                .iter()
                .map(|&i| row[i].clone())
                .collect::<Vec<_>>()
        });
        // The previous chunk's acknowledgements arrived while this one was read: record it now.
        if let Some(chunk) = in_flight.replace(InFlight {
            deliveries,
            sent_key,
            rows,
        }) {
            settle(chunk, &name, !key_positions.is_empty(), &progress, save).await?;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(table = %name, rows, estimate, rows_per_second = rate as u64, "snapshot progress");
        }
        if key_positions.is_empty() || fetched < snapshot.chunk_rows {
            break;
        }
    }
    if let Some(chunk) = in_flight.take() {
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
    Ok(held.map(|values| HeldRow {
        table: name,
        values,
    }))
}

/// A chunk sent to Kafka whose acknowledgements are still arriving.
struct InFlight {
    deliveries: FuturesUnordered<Delivery>,
    /// Key of the chunk's last sent row.
    sent_key: Option<Vec<Option<String>>>,
    /// Rows of the table sent up to and including this chunk.
    rows: u64,
}

/// Waits for a chunk's acknowledgements, then records it as done.
async fn settle<F, Fut>(
    mut chunk: InFlight,
    table: &str,
    resumable: bool,
    progress: &Mutex<SnapshotProgress>,
    save: &F,
) -> Result<()>
where
    F: Fn(SnapshotProgress) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    while let Some(delivery) = chunk.deliveries.next().await {
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
