//! Landing zone: Kafka change events → Parquet change files in an object store.
//!
//! This replaces the reference design's Stream Analytics job. Files are named
//! `<landing>/<schema.table>/date=YYYY-MM-DD/<partition>-<first offset>-<last offset>.parquet`, a
//! function of the offsets they hold (the date is the first record's Kafka timestamp). The group's
//! offset is committed only after the file is stored. A crash in between leaves a file whose events
//! are landed again, maybe cut at other boundaries: the first file written for a partition after a
//! start replaces any file that starts within its offsets, so no offset stays in two files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::storage::{self, StorageError};
use crate::transport::{self, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum LandingError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "landing {topic}/{partition}@{offset}: event is not a Debezium change event: {message}"
    )]
    BadEvent {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("sample events {path}: {message}")]
    Sample { path: PathBuf, message: String },
    #[error(
        "landing {topic}/{partition}: cannot build Parquet file for offsets {first}-{last}: {message}"
    )]
    Encode {
        topic: String,
        partition: i32,
        first: i64,
        last: i64,
        message: String,
    },
}

pub type Result<T, E = LandingError> = std::result::Result<T, E>;

/// Columns of every landing file, before the `before`/`after` structs whose fields come from events.
fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_timestamp_ms", DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("op", DataType::Utf8, false),
    ]
}

fn source_fields() -> Vec<Field> {
    vec![
        Field::new("source_ts_ms", DataType::Int64, true),
        Field::new("source_lsn", DataType::Int64, true),
        Field::new("source_commit_lsn", DataType::Int64, true),
        Field::new("source_tx_id", DataType::Int64, true),
        Field::new("source_snapshot", DataType::Utf8, true),
        Field::new("source_db", DataType::Utf8, true),
        Field::new("source_schema", DataType::Utf8, true),
        Field::new("source_table", DataType::Utf8, true),
        Field::new("ts_ms", DataType::Int64, true),
    ]
}

/// What one landing pass did.
#[derive(Debug, Default, Clone)]
pub struct LandingReport {
    pub files: usize,
    pub events: usize,
    pub tombstones: usize,
    /// Bytes of the events' JSON read, and of the Parquet files written.
    pub event_bytes: usize,
    pub file_bytes: usize,
}

/// A parsed landing file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandingFile {
    pub path: StorePath,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

impl LandingFile {
    /// Parses `.../<partition>-<first>-<last>.parquet`; other files are not ours.
    pub fn parse(path: StorePath) -> Option<Self> {
        let name = path.filename()?.strip_suffix(".parquet")?;
        let mut parts = name.splitn(3, '-');
        let partition = parts.next()?.parse().ok()?;
        let first_offset = parts.next()?.parse().ok()?;
        let last_offset = parts.next()?.parse().ok()?;
        Some(Self {
            path,
            partition,
            first_offset,
            last_offset,
        })
    }
}

/// Folder of a table's landing files, relative to the landing location.
pub fn table_folder(table: &str) -> String {
    table.to_owned()
}

/// The landing consumers' group is `<kafka.group_id>-landing`.
const GROUP_SUFFIX: &str = "landing";

/// How far landing has read one partition of the source topic, for `weir status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionPosition {
    pub topic: String,
    pub partition: i32,
    /// The next offset landing will read (the group's committed offset); None before its first commit.
    pub committed: Option<i64>,
    pub high_watermark: i64,
    /// Records in the partition not yet landed.
    pub lag: i64,
}

/// Landing's consumer-group position on every partition of the source topic, read without
/// joining the group (so a running pipeline is not disturbed). Blocks on the broker.
pub fn consumer_positions(pipeline: &Pipeline) -> Result<Vec<PartitionPosition>> {
    let topic = pipeline.topic_for(&pipeline.bronze.source_table);
    let consumer = transport::group_consumer(&pipeline.kafka, GROUP_SUFFIX)?;
    Ok(group_offsets(&consumer, pipeline, &topic)?
        .into_iter()
        .map(
            |(partition, (committed, high_watermark))| PartitionPosition {
                topic: topic.clone(),
                partition,
                committed,
                high_watermark,
                lag: high_watermark - committed.unwrap_or(0).min(high_watermark),
            },
        )
        .collect())
}

/// Reads the CDC topic of the table bronze serves and writes landing files.
///
/// With `until_caught_up`, stops once every partition has been read up to the end it had when the
/// pass started (a triggered run); otherwise runs until `stop` is set.
pub async fn run(
    pipeline: &Pipeline,
    until_caught_up: bool,
    stop: &CancellationToken,
) -> Result<LandingReport> {
    let (store, root) = storage::open(&pipeline.landing.location)?;
    let topic = pipeline.topic_for(&pipeline.bronze.source_table);
    transport::ensure_topics(&pipeline.kafka, std::slice::from_ref(&topic)).await?;
    let mut consumer = join_group(pipeline, &topic)?;

    let mut targets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    if until_caught_up {
        for (p, high) in transport::high_watermarks(&consumer, &pipeline.kafka, &topic)? {
            targets.insert((topic.clone(), p), high);
        }
    }
    let committed = |consumer: &transport::GroupConsumer| -> BTreeMap<(String, i32), i64> {
        let mut out = BTreeMap::new();
        if let Ok(assignment) = consumer.assignment()
            && let Ok(tpl) = consumer.committed_offsets(assignment, Duration::from_secs(10))
        {
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    out.insert((e.topic().to_owned(), e.partition()), o);
                }
            }
        }
        out
    };

    let mut lander = Lander {
        store: &*store,
        root: &root,
        table: &pipeline.bronze.source_table,
        report: LandingReport::default(),
        written: BTreeMap::new(),
    };
    let mut buffers: BTreeMap<(String, i32), Buffer> = BTreeMap::new();
    let mut position: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let idle = Duration::from_millis(500);
    let mut watch = GroupWatch::new(pipeline.landing.rejoin_stalled_group_after);
    'membership: loop {
        let mut stream = consumer.stream();
        loop {
            if stop.is_cancelled() {
                break 'membership;
            }
            let wait = wake_after(buffers.values(), &pipeline.landing, idle, Instant::now());
            let next = tokio::time::timeout(wait, stream.next()).await;
            match next {
                Ok(Some(Ok(msg))) => {
                    crate::observe::metrics()
                        .rows_in
                        .with_label_values(&["landing"])
                        .inc();
                    let key = (msg.topic().to_owned(), msg.partition());
                    position.insert(key.clone(), msg.offset() + 1);
                    let buffer = buffers
                        .entry(key.clone())
                        .or_insert_with(|| Buffer::new(&key.0, key.1));
                    match msg.payload() {
                        None => {
                            lander.report.tombstones += 1;
                            buffer.skipped_to = Some(msg.offset());
                        }
                        Some(payload) => match buffer.push(&msg, payload) {
                            Ok(()) => {}
                            // Kept with its error where the pipeline keeps failed batches, and
                            // passed over: its offset is committed with the buffer's.
                            Err(bad @ LandingError::BadEvent { .. })
                                if pipeline.dead_letter_location.is_some() =>
                            {
                                dead_letter_event(pipeline, &msg, payload, &bad).await?;
                                buffer.skipped_to = Some(
                                    buffer
                                        .skipped_to
                                        .map_or(msg.offset(), |s| s.max(msg.offset())),
                                );
                            }
                            Err(e) => return Err(e),
                        },
                    }
                    // Any partition's file that reached a limit is written, including quiet
                    // partitions' while others stay busy.
                    lander
                        .flush_full(&consumer, &mut buffers, &pipeline.landing)
                        .await?;
                }
                Ok(Some(Err(e))) if transient(&e) => {
                    // librdkafka reconnects by itself; the buffers wait, their offsets uncommitted.
                    tracing::warn!(error = %e, "landing: the broker is unreachable for now; retrying");
                    crate::observe::metrics()
                        .errors
                        .with_label_values(&["landing"])
                        .inc();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Some(Err(e))) => {
                    return Err(TransportError::Kafka {
                        servers: pipeline.kafka.bootstrap_servers.clone(),
                        action: "consuming change events".into(),
                        source: e,
                    }
                    .into());
                }
                Ok(None) => break 'membership,
                Err(_elapsed) if buffers.values().any(|b| b.full(&pipeline.landing)) => {
                    lander
                        .flush_full(&consumer, &mut buffers, &pipeline.landing)
                        .await?;
                }
                Err(_elapsed) => {
                    // Idle: make what we hold durable, then see whether a triggered pass is done.
                    for (_, buffer) in std::mem::take(&mut buffers) {
                        lander.flush(&consumer, buffer).await?;
                    }
                    if until_caught_up {
                        let committed = committed(&consumer);
                        let done = targets.iter().all(|(tp, high)| {
                            *high == 0
                                || position.get(tp).copied().unwrap_or(-1) >= *high
                                || committed.get(tp).copied().unwrap_or(-1) >= *high
                        });
                        if done {
                            break 'membership;
                        }
                    }
                    if watch.due(Instant::now(), holds_partitions(&consumer))
                        && watch.stalled(group_offsets(&consumer, pipeline, &topic).ok())
                    {
                        tracing::warn!(
                            topic = %topic,
                            after_s = watch.window.as_secs(),
                            "landing: the consumer group has handed this process no partition while its offsets stand still behind the topic's end; leaving and rejoining the group"
                        );
                        break;
                    }
                }
            }
        }
        // Dropping the consumer leaves the group; the new one joins it afresh.
        drop(stream);
        drop(consumer);
        consumer = join_group(pipeline, &topic)?;
    }
    for (_, buffer) in std::mem::take(&mut buffers) {
        lander.flush(&consumer, buffer).await?;
    }
    Ok(lander.report)
}

/// A new member of the landing group, subscribed to `topic`.
fn join_group(pipeline: &Pipeline, topic: &str) -> Result<transport::GroupConsumer> {
    let consumer = transport::group_consumer(&pipeline.kafka, GROUP_SUFFIX)?;
    consumer
        .subscribe(&[topic])
        .map_err(|source| TransportError::Kafka {
            servers: pipeline.kafka.bootstrap_servers.clone(),
            action: "subscribing".into(),
            source,
        })?;
    Ok(consumer)
}

fn holds_partitions(consumer: &transport::GroupConsumer) -> bool {
    // An unreadable assignment counts as held: only a known empty one may make landing rejoin.
    consumer.assignment().map_or(true, |a| a.count() > 0)
}

/// The landing group's committed offset (`None` before its first commit) and the high watermark
/// of each partition of `topic`. Blocks on the broker.
fn group_offsets(
    consumer: &transport::GroupConsumer,
    pipeline: &Pipeline,
    topic: &str,
) -> Result<BTreeMap<i32, (Option<i64>, i64)>> {
    let highs = transport::high_watermarks(consumer, &pipeline.kafka, topic)?;
    let mut wanted = TopicPartitionList::new();
    for partition in highs.keys() {
        wanted.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .map_err(|source| TransportError::Kafka {
            servers: pipeline.kafka.bootstrap_servers.clone(),
            action: format!("reading the landing group's offsets on {topic}"),
            source,
        })?;
    Ok(highs
        .into_iter()
        .map(|(partition, high)| {
            let offset =
                committed
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
            (partition, (offset, high))
        })
        .collect())
}

/// Tells when the landing group has left this process without a partition while nobody lands the
/// topic's waiting records: a whole window without a partition, and the group's committed offsets
/// behind the topic's end and unmoved since the window before. A broker's group can settle so
/// (tansu 0.6 once handed a member restarted within a second of its killed predecessor an empty
/// assignment and never rebalanced again); leaving and rejoining makes it assign afresh. A process
/// that is one consumer too many sees the others' offsets move, and stays.
struct GroupWatch {
    window: Duration,
    unassigned_since: Option<Instant>,
    /// The committed offsets seen at the end of the last window without a partition.
    last_committed: Option<BTreeMap<i32, Option<i64>>>,
}

impl GroupWatch {
    /// A zero window never rejoins.
    fn new(window: Duration) -> Self {
        Self {
            window,
            unassigned_since: None,
            last_committed: None,
        }
    }

    /// Whether a window without a partition has ended, so the group's offsets are worth reading.
    fn due(&mut self, now: Instant, holds_partitions: bool) -> bool {
        if holds_partitions || self.window.is_zero() {
            self.unassigned_since = None;
            self.last_committed = None;
            return false;
        }
        let since = *self.unassigned_since.get_or_insert(now);
        now.duration_since(since) >= self.window
    }

    /// Given the group's offsets at the end of a window (committed, high watermark per partition),
    /// whether landing should rejoin; starts the next window either way.
    fn stalled(&mut self, offsets: Option<BTreeMap<i32, (Option<i64>, i64)>>) -> bool {
        self.unassigned_since = None;
        let Some(offsets) = offsets else {
            return false;
        };
        let behind = offsets
            .values()
            .any(|(committed, high)| committed.unwrap_or(0) < *high);
        let committed: BTreeMap<i32, Option<i64>> =
            offsets.iter().map(|(p, (c, _))| (*p, *c)).collect();
        let unmoved = self.last_committed.as_ref() == Some(&committed);
        if behind && unmoved {
            self.last_committed = None;
            true
        } else {
            self.last_committed = Some(committed);
            false
        }
    }
}

/// Stores an event landing cannot read under `<dead_letter_location>/landing/<topic>/`, as the
/// bytes the broker holds and its error beside them.
async fn dead_letter_event(
    pipeline: &Pipeline,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    payload: &[u8],
    error: &LandingError,
) -> Result<()> {
    let Some(location) = &pipeline.dead_letter_location else {
        return Ok(());
    };
    let mut record = serde_json::Map::new();
    record.insert("stage".into(), "landing".into());
    record.insert("topic".into(), msg.topic().into());
    record.insert("partition".into(), msg.partition().into());
    record.insert("offset".into(), msg.offset().into());
    record.insert("error".into(), error.to_string().into());
    storage::dead_letter(
        location,
        &["landing", msg.topic()],
        &format!("{}-{:020}", msg.partition(), msg.offset()),
        "event",
        payload.to_vec(),
        record,
    )
    .await?;
    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), location = %location, error = %error, "event dead-lettered");
    crate::observe::metrics()
        .errors
        .with_label_values(&["landing"])
        .inc();
    Ok(())
}

/// Whether a consumer error is the broker being away (restarting, a network blip, a leader moving),
/// which librdkafka rides through by reconnecting, rather than something a retry cannot mend.
fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e,
        rdkafka::error::KafkaError::MessageConsumption(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::NetworkException
                | Code::RequestTimedOut
                | Code::OperationTimedOut
                | Code::NotCoordinator
                | Code::CoordinatorNotAvailable
                | Code::CoordinatorLoadInProgress
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
        )
    )
}

/// Change events of one partition waiting to become a file.
struct Buffer {
    topic: String,
    partition: i32,
    rows: Vec<Value>,
    /// Each row's offset and event size, in delivery order: the file's offset range, and what
    /// a redelivery rewinds.
    offsets: Vec<(i64, usize)>,
    first_timestamp_ms: Option<i64>,
    /// Offset of a trailing tombstone, committed even when no file is written.
    skipped_to: Option<i64>,
    /// The events' JSON bytes, and when the first of them arrived: the file rolls on either.
    bytes: usize,
    opened: Option<Instant>,
}

impl Buffer {
    fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            rows: Vec::new(),
            offsets: Vec::new(),
            first_timestamp_ms: None,
            skipped_to: None,
            bytes: 0,
            opened: None,
        }
    }

    /// The first and last offsets of its rows (-1 without rows).
    fn first_offset(&self) -> i64 {
        self.offsets.first().map_or(-1, |&(offset, _)| offset)
    }

    fn last_offset(&self) -> i64 {
        self.offsets.last().map_or(-1, |&(offset, _)| offset)
    }

    /// Whether the buffer has reached any of the landing zone's file limits.
    fn full(&self, limits: &crate::config::LandingConfig) -> bool {
        self.rows.len() >= limits.max_rows_per_file
            || self.bytes >= limits.max_bytes_per_file
            || self
                .opened
                .is_some_and(|at| at.elapsed() >= Duration::from_millis(limits.max_file_age_ms))
    }

    fn push(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>, payload: &[u8]) -> Result<()> {
        let bad = |message: String| LandingError::BadEvent {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            message,
        };
        let event: Value =
            serde_json::from_slice(payload).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let row = flatten_event(
            event,
            msg.key(),
            msg.topic(),
            msg.partition(),
            msg.offset(),
            msg.timestamp().to_millis(),
        )
        .map_err(bad)?;
        self.push_row(
            msg.offset(),
            msg.timestamp().to_millis(),
            payload.len(),
            row,
        );
        Ok(())
    }

    fn push_row(&mut self, offset: i64, timestamp_ms: Option<i64>, size: usize, row: Value) {
        // The consumer went back (a rebalance that handed the partition back, a fetch restarted
        // after a broker restart): it delivers again from its committed offset, which this
        // buffer's rows all follow. Those from `offset` on come again now, so they go.
        if self.offsets.last().is_some_and(|&(last, _)| offset <= last) {
            let keep = self.offsets.partition_point(|&(o, _)| o < offset);
            self.bytes -= self.offsets[keep..]
                .iter()
                .map(|&(_, size)| size)
                .sum::<usize>();
            self.rows.truncate(keep);
            self.offsets.truncate(keep);
            // A tombstone among them comes again too; committing past it now would skip the
            // events between the rewound buffer and it.
            if self.skipped_to.is_some_and(|skipped| skipped >= offset) {
                self.skipped_to = None;
            }
            tracing::info!(
                partition = self.partition,
                offset,
                "events delivered again; the buffer rewinds to them"
            );
        }
        if self.rows.is_empty() {
            self.first_timestamp_ms = timestamp_ms;
            self.opened = Some(Instant::now());
        }
        self.bytes += size;
        self.rows.push(row);
        self.offsets.push((offset, size));
    }
}

/// Turns a Debezium envelope into one landing row (an object keyed by landing column).
pub fn flatten_event(
    event: Value,
    key: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
) -> std::result::Result<Value, String> {
    let Value::Object(mut event) = event else {
        return Err("not a JSON object".into());
    };
    // Schemas-enabled events wrap the envelope in {"schema": ..., "payload": ...}.
    if let Some(Value::Object(payload)) = event.remove("payload") {
        event = payload;
    }
    let op = match event.remove("op") {
        Some(Value::String(op)) if matches!(op.as_str(), "c" | "u" | "d" | "r" | "t") => op,
        other => {
            return Err(format!(
                "`op` must be one of c, u, d, r, t; found {other:?}"
            ));
        }
    };
    let source = match event.remove("source") {
        Some(Value::Object(s)) => s,
        _ => return Err("missing `source` object".into()),
    };
    let image = |v: Option<Value>, name: &str| match v {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Object(o)) => Ok(Value::Object(o)),
        Some(other) => Err(format!("`{name}` must be an object or null, found {other}")),
    };
    let before = image(event.remove("before"), "before")?;
    let after = image(event.remove("after"), "after")?;
    if op != "t" && before.is_null() && after.is_null() {
        return Err("both `before` and `after` are null".into());
    }
    let text = |s: &Map<String, Value>, k: &str| match s.get(k) {
        Some(Value::String(v)) => Value::String(v.clone()),
        Some(Value::Bool(b)) => Value::String(b.to_string()),
        _ => Value::Null,
    };
    let number = |s: &Map<String, Value>, k: &str| {
        s.get(k)
            .filter(|v| v.is_i64() || v.is_u64())
            .cloned()
            .unwrap_or(Value::Null)
    };
    Ok(json!({
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
        "kafka_timestamp_ms": timestamp_ms,
        "key": key.map(|k| String::from_utf8_lossy(k).into_owned()),
        "op": op,
        "before": before,
        "after": after,
        "source_ts_ms": number(&source, "ts_ms"),
        "source_lsn": number(&source, "lsn"),
        // Debezium's own events lack it; ordering then falls back to the change's LSN.
        "source_commit_lsn": source.get("commit_lsn").filter(|v| v.is_u64() || v.is_i64()).or_else(|| source.get("lsn")).cloned().unwrap_or(Value::Null),
        "source_tx_id": number(&source, "txId"),
        "source_snapshot": text(&source, "snapshot"),
        "source_db": text(&source, "db"),
        "source_schema": text(&source, "schema"),
        "source_table": text(&source, "table"),
        "ts_ms": number(&event, "ts_ms"),
    }))
}

/// Landing rows of the Debezium events in `path`: a JSON array of events, or one event per line
/// (as a topic dump writes them). Event `i` stands at offset `i` of partition 0.
pub fn sample_batch(path: &Path) -> Result<RecordBatch> {
    let err = |message: String| LandingError::Sample {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let events: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", n + 1)))
            })
            .collect::<Result<_>>()?
    };
    if events.is_empty() {
        return Err(err("no events".into()));
    }
    let rows = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            flatten_event(event, None, "sample", 0, i as i64, None)
                .map_err(|message| err(format!("event {i}: {message}")))
        })
        .collect::<Result<Vec<_>>>()?;
    rows_to_batch(&rows).map_err(err)
}

/// Builds the Arrow batch of landing rows; `before`/`after` struct types are inferred from the rows.
pub fn rows_to_batch(rows: &[Value]) -> std::result::Result<RecordBatch, String> {
    let images = rows.iter().map(|r| {
        Ok::<_, arrow::error::ArrowError>(
            json!({"before": r["before"].clone(), "after": r["after"].clone()}),
        )
    });
    let inferred =
        arrow::json::reader::infer_json_schema_from_iterator(images).map_err(|e| e.to_string())?;
    let image_field = |name: &str| -> Field {
        inferred
            .field_with_name(name)
            .map(|f| Field::new(name, f.data_type().clone(), true))
            .unwrap_or_else(|_| Field::new(name, DataType::Null, true))
    };
    let mut fields = envelope_fields();
    fields.push(image_field("before"));
    fields.push(image_field("after"));
    fields.extend(source_fields());
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.serialize(rows).map_err(|e| e.to_string())?;
    Ok(decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Writes buffers as files and commits their offsets.
struct Lander<'a> {
    store: &'a dyn ObjectStore,
    root: &'a StorePath,
    /// The `schema.table` whose topic this lands (the topic prefix may hold dots too).
    table: &'a str,
    report: LandingReport,
    /// The last offset of the last file this process wrote, per topic and partition.
    written: BTreeMap<(String, i32), i64>,
}

impl Lander<'_> {
    async fn flush(&mut self, consumer: &transport::GroupConsumer, buffer: Buffer) -> Result<()> {
        let mut commit_to = buffer.skipped_to;
        if !buffer.rows.is_empty() {
            let encode_err = |message: String| LandingError::Encode {
                topic: buffer.topic.clone(),
                partition: buffer.partition,
                first: buffer.first_offset(),
                last: buffer.last_offset(),
                message,
            };
            let batch = rows_to_batch(&buffer.rows).map_err(encode_err)?;
            let bytes = write_parquet(&batch).map_err(|e| encode_err(e.to_string()))?;
            let date =
                chrono::DateTime::from_timestamp_millis(buffer.first_timestamp_ms.unwrap_or(0))
                    .unwrap_or_default()
                    .format("%Y-%m-%d");
            let table = self.table;
            let folder = self
                .root
                .clone()
                .join(table_folder(table))
                .join(format!("date={date}"));
            let path = folder.clone().join(format!(
                "{}-{:020}-{:020}.parquet",
                buffer.partition,
                buffer.first_offset(),
                buffer.last_offset()
            ));
            let file_bytes = bytes.len();
            storage::put(self.store, &path, bytes).await?;
            let key = (buffer.topic.clone(), buffer.partition);
            if self.written.get(&key) != Some(&(buffer.first_offset() - 1)) {
                self.remove_overlapped(&folder, &path, &buffer).await?;
            }
            self.written.insert(key, buffer.last_offset());
            tracing::info!(file = %path, rows = buffer.rows.len(), "landed change file");
            let m = crate::observe::metrics();
            m.landing_files.with_label_values(&[table]).inc();
            m.landing_bytes
                .with_label_values(&[table])
                .inc_by(file_bytes as u64);
            m.batches.with_label_values(&["landing"]).inc();
            m.rows_out
                .with_label_values(&["landing"])
                .inc_by(buffer.rows.len() as u64);
            self.report.files += 1;
            self.report.events += buffer.rows.len();
            self.report.event_bytes += buffer.bytes;
            self.report.file_bytes += file_bytes;
            commit_to =
                Some(commit_to.map_or(buffer.last_offset(), |t| t.max(buffer.last_offset())));
        }
        if let Some(last) = commit_to {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&buffer.topic, buffer.partition, Offset::Offset(last + 1))
                .map_err(|source| TransportError::Kafka {
                    servers: String::new(),
                    action: "committing".into(),
                    source,
                })?;
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|source| TransportError::Kafka {
                    servers: String::new(),
                    action: format!(
                        "committing offset {} of {}/{}",
                        last + 1,
                        buffer.topic,
                        buffer.partition
                    ),
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the buffers that reached one of the landing zone's file limits.
    async fn flush_full(
        &mut self,
        consumer: &transport::GroupConsumer,
        buffers: &mut BTreeMap<(String, i32), Buffer>,
        limits: &crate::config::LandingConfig,
    ) -> Result<()> {
        let full: Vec<(String, i32)> = buffers
            .iter()
            .filter(|(_, b)| b.full(limits))
            .map(|(k, _)| k.clone())
            .collect();
        for key in full {
            if let Some(buffer) = buffers.remove(&key) {
                self.flush(consumer, buffer).await?;
            }
        }
        Ok(())
    }

    /// Removes the files of `buffer`'s partition, other than `written`, that start at or after its
    /// first offset: nothing past the committed offset `buffer` starts from was committed, so such
    /// a file was left by a writer that crashed after storing it, and it may be cut at other
    /// boundaries than the files that now hold its events. Only the first file after a start or a
    /// rebalance can meet one, so only then is the folder listed.
    async fn remove_overlapped(
        &self,
        folder: &StorePath,
        written: &StorePath,
        buffer: &Buffer,
    ) -> Result<()> {
        for file in storage::list(self.store, folder).await? {
            let Some(file) = LandingFile::parse(file) else {
                continue;
            };
            if file.partition == buffer.partition
                && file.path != *written
                && file.first_offset >= buffer.first_offset()
            {
                tracing::info!(file = %file.path, replaced_by = %written, "removing a landing file a crashed writer left uncommitted");
                storage::delete(self.store, &file.path).await?;
            }
        }
        Ok(())
    }
}

/// A landing file's bytes: `batch` as zstd-compressed Parquet. Public for runtime/fuzz.
pub fn write_parquet(batch: &RecordBatch) -> parquet::errors::Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

/// Lists a table's landing files, ordered by partition and first offset.
pub async fn list_files(
    store: &dyn ObjectStore,
    root: &StorePath,
    table: &str,
) -> Result<Vec<LandingFile>> {
    let prefix = root.clone().join(table_folder(table));
    let mut files: Vec<LandingFile> = storage::list(store, &prefix)
        .await?
        .into_iter()
        .filter_map(LandingFile::parse)
        .collect();
    files.sort_by_key(|f| (f.partition, f.first_offset, f.last_offset));
    Ok(files)
}

/// How long the landing loop waits for the next event: until the oldest buffered file is due, so
/// that a file is written when its first change is `max_file_age_ms` old whether or not another
/// change arrives to notice it, and at most `idle`.
fn wake_after<'a>(
    buffers: impl Iterator<Item = &'a Buffer>,
    limits: &crate::config::LandingConfig,
    idle: Duration,
    now: Instant,
) -> Duration {
    let file_age = Duration::from_millis(limits.max_file_age_ms);
    buffers
        .filter_map(|b| b.opened)
        .map(|opened| (opened + file_age).saturating_duration_since(now))
        .fold(idle, Duration::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One window of `GroupWatch`: passes `window` without a partition, then reads `offsets`
    /// (committed, high watermark) of partition 0.
    fn window_ends(watch: &mut GroupWatch, start: Instant, offsets: (Option<i64>, i64)) -> bool {
        assert!(!watch.due(start, false), "a window has only begun");
        watch.due(start + watch.window, false)
            && watch.stalled(Some(BTreeMap::from([(0, offsets)])))
    }

    #[test]
    fn landing_rejoins_after_two_windows_without_a_partition_while_the_group_stands_still() {
        let mut watch = GroupWatch::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(
            !window_ends(&mut watch, t0, (Some(10), 50)),
            "one window proves no stall"
        );
        assert!(window_ends(
            &mut watch,
            t0 + Duration::from_secs(30),
            (Some(10), 50)
        ));
        // After rejoining, it takes two windows again.
        assert!(!window_ends(
            &mut watch,
            t0 + Duration::from_secs(60),
            (Some(10), 50)
        ));
    }

    #[test]
    fn landing_stays_while_another_member_lands_the_topic_or_nothing_waits() {
        let mut watch = GroupWatch::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let window = Duration::from_secs(30);
        // Another member commits: its offsets move.
        assert!(!window_ends(&mut watch, t0, (Some(10), 50)));
        assert!(!window_ends(&mut watch, t0 + window, (Some(20), 60)));
        // Caught up: nothing waits, moved or not.
        assert!(!window_ends(&mut watch, t0 + window * 2, (Some(60), 60)));
        assert!(!window_ends(&mut watch, t0 + window * 3, (Some(60), 60)));
        // Nothing ever committed on an empty topic.
        assert!(!window_ends(&mut watch, t0 + window * 4, (None, 0)));
        assert!(!window_ends(&mut watch, t0 + window * 5, (None, 0)));
        // Offsets the broker could not give start the count again.
        assert!(!watch.due(t0 + window * 6, false));
        assert!(watch.due(t0 + window * 7, false));
        assert!(!watch.stalled(None));
    }

    #[test]
    fn holding_a_partition_or_a_zero_window_never_rejoins() {
        let t0 = Instant::now();
        let mut watch = GroupWatch::new(Duration::from_secs(30));
        assert!(!window_ends(&mut watch, t0, (Some(10), 50)));
        // A partition held in between forgets what was seen.
        assert!(!watch.due(t0 + Duration::from_secs(31), true));
        assert!(!window_ends(
            &mut watch,
            t0 + Duration::from_secs(32),
            (Some(10), 50)
        ));
        let mut never = GroupWatch::new(Duration::ZERO);
        for s in 0..10 {
            assert!(!never.due(t0 + Duration::from_secs(s * 60), false));
        }
    }

    /// Events pushed as the consumer delivered them: (offset, event size).
    fn buffer_after(deliveries: &[(i64, usize)]) -> Buffer {
        let mut buffer = Buffer::new("t", 0);
        for &(offset, size) in deliveries {
            buffer.push_row(offset, Some(0), size, json!({ "kafka_offset": offset }));
        }
        buffer
    }

    fn offsets_in(buffer: &Buffer) -> Vec<i64> {
        buffer
            .rows
            .iter()
            .filter_map(|r| r["kafka_offset"].as_i64())
            .collect()
    }

    #[test]
    fn landing_wakes_when_the_oldest_file_is_due_or_after_idle() {
        let limits = crate::config::LandingConfig {
            location: "landing".into(),
            max_rows_per_file: 1_000_000,
            max_bytes_per_file: 1 << 30,
            max_file_age_ms: 100,
            rejoin_stalled_group_after: Duration::ZERO,
        };
        let idle = Duration::from_millis(500);
        let t0 = Instant::now();
        let opened_at = |at: Instant| {
            let mut buffer = buffer_after(&[(1, 1)]);
            buffer.opened = Some(at);
            buffer
        };
        assert_eq!(wake_after([].iter(), &limits, idle, t0), idle);
        let (older, newer) = (opened_at(t0), opened_at(t0 + Duration::from_millis(40)));
        let at = t0 + Duration::from_millis(30);
        assert_eq!(
            wake_after([&newer, &older].into_iter(), &limits, idle, at),
            Duration::from_millis(70),
            "the oldest buffer is due first, with no change arriving"
        );
        assert_eq!(
            wake_after(
                [&older].into_iter(),
                &limits,
                idle,
                t0 + Duration::from_millis(150)
            ),
            Duration::ZERO,
            "a file past its age is due at once"
        );
    }

    #[test]
    fn events_delivered_again_replace_their_first_delivery_in_the_buffer() {
        // A file once held offsets 70468..71885 twice: the consumer went back after a broker
        // restart while they were buffered.
        let buffer = buffer_after(&[(10, 1), (11, 2), (12, 4), (11, 2), (12, 4), (13, 8)]);
        assert_eq!(offsets_in(&buffer), [10, 11, 12, 13]);
        assert_eq!(
            (buffer.first_offset(), buffer.last_offset(), buffer.bytes),
            (10, 13, 15)
        );
    }

    #[test]
    fn a_redelivery_forgets_a_tombstone_it_will_deliver_again() {
        let mut buffer = buffer_after(&[(10, 1), (11, 1)]);
        buffer.skipped_to = Some(12);
        buffer.push_row(11, Some(0), 1, json!({ "kafka_offset": 11 }));
        // Flushed now, the buffer must not commit past 11: 12 comes again.
        assert_eq!((buffer.last_offset(), buffer.skipped_to), (11, None));
    }

    #[test]
    fn a_redelivery_from_before_the_buffer_starts_it_over() {
        let buffer = buffer_after(&[(10, 1), (11, 1), (8, 1), (9, 1)]);
        assert_eq!(offsets_in(&buffer), [8, 9]);
        assert_eq!(
            (buffer.first_offset(), buffer.last_offset(), buffer.bytes),
            (8, 9, 2)
        );
    }

    #[test]
    fn landing_file_names_round_trip_offsets() {
        let f = LandingFile::parse(StorePath::from("l/public.onlineshop/date=2026-11-26/3-00000000000000000010-00000000000000000019.parquet"))
            .expect("ours");
        assert_eq!((f.partition, f.first_offset, f.last_offset), (3, 10, 19));
        assert!(LandingFile::parse(StorePath::from("l/t/date=x/_SUCCESS")).is_none());
    }

    #[test]
    fn delete_event_keeps_before_image_and_source_position() {
        let event = json!({
            "before": {"id": 7, "price": null}, "after": null,
            "source": {"ts_ms": 1700000000000i64, "lsn": 1234, "txId": 99, "snapshot": "false",
                       "db": "business", "schema": "public", "table": "onlineshop"},
            "op": "d", "ts_ms": 1700000000001i64, "transaction": null
        });
        let row = flatten_event(
            event,
            Some(br#"{"id":7}"#),
            "p.public.onlineshop",
            0,
            42,
            Some(5),
        )
        .expect("valid");
        let batch = rows_to_batch(&[row]).expect("batch");
        assert_eq!(batch.num_rows(), 1);
        let schema = batch.schema();
        assert_eq!(
            schema.field_with_name("after").expect("after").data_type(),
            &DataType::Null
        );
        assert!(matches!(
            schema
                .field_with_name("before")
                .expect("before")
                .data_type(),
            DataType::Struct(_)
        ));
    }

    #[test]
    fn event_without_op_is_rejected_with_reason() {
        let err = flatten_event(
            json!({"after": {"id": 1}, "source": {}}),
            None,
            "t",
            0,
            0,
            None,
        )
        .expect_err("no op");
        assert!(err.contains("`op`"), "{err}");
    }
}
