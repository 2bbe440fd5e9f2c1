//! Bronze, silver and gold Delta tables, each fed by a Wasm component.
//!
//! Exactly once, by construction: every commit carries Delta `txn` actions recording the input it
//! consumed (bronze: the last Kafka offset per partition of the landing files; silver: the bronze
//! version; gold: the silver version), so a stage restarted after a crash resumes after what was
//! committed, and re-running a batch is refused by Delta's conflict check on the same app id.
//!
//! - **bronze** appends cleaned change rows (with `_ingested_at` and `_landing_file`).
//! - **silver** applies changes like DLT's APPLY CHANGES INTO: keyed MERGE, sequenced, deletes applied,
//!   late or repeated events ignored. Its change data feed is on, so gold can follow it.
//! - **gold** reads silver's change feed as weighted rows (+1 insert/post-image, −1 delete/pre-image);
//!   the component returns per-group deltas, which are added to the stored aggregates.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, RecordBatchReader, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::Expr;
use deltalake::datafusion::physical_plan::collect;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::{OnViolation, Pipeline};
use crate::landing::{self, LandingFile};
use crate::storage;
use crate::wasm::{LoadedComponent, Transform, WasmError, WasmHost, World};

mod bronze;
mod contract;
mod gold;
mod maintenance;
mod position;
mod silver;

pub use maintenance::{MaintenanceReport, maintain};
pub use position::{TablePosition, positions};

use bronze::{bronze_pass, with_ingestion_metadata};
use contract::OutputContract;
use gold::{gold_pass, weigh};
pub use silver::apply_to_silver;
use silver::{SILVER_DROPPED, apply_expectations, silver_pass};

#[derive(Debug, thiserror::Error)]
pub enum LakehouseError {
    #[error("{stage} table {table}: {source}")]
    Delta {
        stage: String,
        table: String,
        source: DeltaTableError,
    },
    #[error("{stage}: {message}")]
    Stage { stage: String, message: String },
    #[error(
        "{stage}: expectation `{name}` ({expect}) failed on {rows} row(s); nothing of the batch was committed"
    )]
    ExpectationFailed {
        stage: String,
        name: String,
        expect: String,
        rows: usize,
    },
    #[error(transparent)]
    Wasm(#[from] WasmError),
    #[error(transparent)]
    Landing(#[from] landing::LandingError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

pub type Result<T, E = LakehouseError> = std::result::Result<T, E>;

impl LakehouseError {
    /// The layer the error happened in (`bronze`, `silver`, `gold.<name>`).
    pub fn stage(&self) -> String {
        match self {
            Self::Delta { stage, .. }
            | Self::Stage { stage, .. }
            | Self::ExpectationFailed { stage, .. } => stage.clone(),
            Self::Wasm(e) => e.stage().unwrap_or("layers").to_owned(),
            // Landing files are read by bronze.
            Self::Landing(_) | Self::Storage(_) => "bronze".to_owned(),
        }
    }

    /// Whether another writer committed to the table first (Delta's optimistic concurrency): the
    /// pass can run again on the new version, where its progress record tells what is left.
    pub fn is_commit_conflict(&self) -> bool {
        use deltalake::kernel::transaction::TransactionError;
        matches!(
            self,
            Self::Delta {
                source: DeltaTableError::VersionAlreadyExists(_)
                    | DeltaTableError::Transaction {
                        source: TransactionError::VersionAlreadyExists(_)
                            | TransactionError::CommitConflict(_)
                            | TransactionError::MaxCommitAttempts(_)
                    },
                ..
            }
        )
    }
}

/// Passes a layer runs again after losing a commit race before giving up.
const CONFLICT_RETRIES: u32 = 20;

/// Runs a layer's pass, again while it loses commit races to other writers. Each pass reads its
/// progress from the table's transaction records, so a pass run again does only what is left.
macro_rules! retrying_conflicts {
    ($stage:expr, $pass:expr) => {{
        let mut attempt = 0;
        loop {
            match panic_as_error(&$stage, $pass).await {
                Err(e) if e.is_commit_conflict() && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    crate::observe::metrics()
                        .delta_conflicts
                        .with_label_values(&[&*$stage])
                        .inc();
                    tracing::info!(stage = %$stage, attempt, error = %e, "another writer committed first; running the pass again");
                    // Spread the racers out a little, differently in each process.
                    let jitter = u64::from(std::process::id() % 7 + attempt) * 20;
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
                other => break other,
            }
        }
    }};
}

/// Runs one pass, turning a panic inside it into the layer's error, so the process reports which
/// layer failed and exits as on any other error. object_store's `BufWriter` panics ("Already shut
/// down") when delta-rs writes to it again after an upload failed (apache/arrow-rs-object-store#810).
/// What the pass wrote before the panic was never committed; the layer's in-memory state may be
/// half-updated, which is why this is an error for the caller and never retried here.
async fn panic_as_error<T>(stage: &str, pass: impl Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(pass).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(stage_err(
                stage,
                format!("the pass panicked and committed nothing: {cause}"),
            ))
        }
    }
}

/// Rows per Delta commit (and so per component call) in the bronze and silver stages.
const ROWS_PER_COMMIT: usize = 100_000;
/// Change-feed columns deltalake adds to `scan_cdf` output.
const CDF_COLUMNS: [&str; 3] = ["_change_type", "_commit_version", "_commit_timestamp"];

/// What one pass of a layer did.
#[derive(Debug, Default, Clone)]
pub struct LayerReport {
    pub rows_in: usize,
    pub rows_out: usize,
    pub commits: usize,
    pub dropped_by_expectations: usize,
    pub table_version: Option<u64>,
    /// What the layer's component counted through `host.count` during the pass.
    pub counters: BTreeMap<String, u64>,
    /// Input rows of batches the component failed on, routed to the dead-letter location.
    pub dead_lettered: usize,
    /// Per silver expectation: rows that passed it, rows that failed it.
    pub expectations: BTreeMap<String, (u64, u64)>,
}

impl LayerReport {
    /// Adds the pass's figures to the process's metrics; `took` is the pass's time.
    fn record_metrics(&self, stage: &str, pipeline: &Pipeline, took: std::time::Duration) {
        let m = crate::observe::metrics();
        if self.rows_in > 0 {
            m.layer_pass_seconds
                .with_label_values(&[stage])
                .observe(took.as_secs_f64());
            tracing::debug!(
                stage,
                rows_in = self.rows_in,
                seconds = took.as_secs_f64(),
                "layer pass"
            );
        }
        m.rows_in
            .with_label_values(&[stage])
            .inc_by(self.rows_in as u64);
        m.rows_out
            .with_label_values(&[stage])
            .inc_by(self.rows_out as u64);
        m.batches
            .with_label_values(&[stage])
            .inc_by(self.commits as u64);
        m.delta_commits
            .with_label_values(&[stage])
            .inc_by(self.commits as u64);
        m.dropped_rows
            .with_label_values(&[stage])
            .inc_by(self.dropped_by_expectations as u64);
        if let Some(version) = self.table_version {
            m.delta_version
                .with_label_values(&[stage])
                .set(version as i64);
        }
        for (rule, (passed, failed)) in &self.expectations {
            let action = pipeline
                .silver
                .expectations
                .iter()
                .find(|e| e.name == *rule)
                .map_or("", |e| e.on_violation.as_str());
            m.expectation_rows
                .with_label_values(&[rule.as_str(), action, "passed"])
                .inc_by(*passed);
            m.expectation_rows
                .with_label_values(&[rule.as_str(), action, "failed"])
                .inc_by(*failed);
        }
    }

    pub fn add(&mut self, other: &LayerReport) {
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.commits += other.commits;
        self.dropped_by_expectations += other.dropped_by_expectations;
        self.table_version = other.table_version.or(self.table_version);
        self.dead_lettered += other.dead_lettered;
        for (name, n) in &other.counters {
            *self.counters.entry(name.clone()).or_default() += n;
        }
        for (rule, (passed, failed)) in &other.expectations {
            let counts = self.expectations.entry(rule.clone()).or_default();
            counts.0 += passed;
            counts.1 += failed;
        }
    }
}

impl fmt::Display for LayerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows in, {} rows out, {} commits",
            self.rows_in, self.rows_out, self.commits
        )?;
        if self.dropped_by_expectations > 0 {
            write!(
                f,
                ", {} dropped by expectations",
                self.dropped_by_expectations
            )?;
        }
        if self.dead_lettered > 0 {
            write!(f, ", {} rows dead-lettered", self.dead_lettered)?;
        }
        if let Some(v) = self.table_version {
            write!(f, ", table at version {v}")?;
        }
        for (i, (rule, (passed, failed))) in self.expectations.iter().enumerate() {
            let lead = if i == 0 { "; expectations " } else { ", " };
            write!(f, "{lead}{rule}: {passed} passed, {failed} failed")?;
        }
        for (i, (name, n)) in self.counters.iter().enumerate() {
            let lead = if i == 0 { "; component counted " } else { ", " };
            write!(f, "{lead}{name}={n}")?;
        }
        Ok(())
    }
}

/// The instantiated components of a pipeline's layers.
pub struct Layers {
    bronze: Transform,
    silver: Transform,
    gold: Vec<(String, Transform)>,
}

impl Layers {
    /// Compiles and instantiates every layer's component (and so checks their exports).
    pub fn load(host: &WasmHost, pipeline: &Pipeline) -> Result<Self> {
        let instantiate = |stage: &str, layer: &crate::config::LayerConfig, world: World| {
            let loaded: LoadedComponent = host.load(&layer.component, world)?;
            Ok::<_, LakehouseError>(loaded.instantiate(stage, &layer.component_config)?)
        };
        let bronze = instantiate("bronze", &pipeline.bronze.layer, World::RowTransform)?;
        let silver = instantiate("silver", &pipeline.silver.layer, World::RowTransform)?;
        let mut gold = Vec::new();
        for (name, g) in &pipeline.gold {
            let stage = format!("gold.{name}");
            gold.push((
                name.clone(),
                instantiate(&stage, &g.layer, World::Aggregate)?,
            ));
        }
        Ok(Self {
            bronze,
            silver,
            gold,
        })
    }

    /// One pass of bronze, silver and every gold table over whatever input is new.
    pub async fn run_once(&mut self, pipeline: &Pipeline) -> Result<Vec<(String, LayerReport)>> {
        let mut out = vec![bronze_once(pipeline, &mut self.bronze).await?];
        out.push(silver_once(pipeline, &mut self.silver).await?);
        out.extend(gold_once(pipeline, &mut self.gold).await?);
        Ok(out)
    }

    /// Recomputes the gold tables named by `layer` (`gold` for all, `gold.<name>` for one) from
    /// silver as it stands, replacing each in one commit (`weir rebuild --layer`).
    pub async fn rebuild(
        &mut self,
        pipeline: &Pipeline,
        layer: &str,
    ) -> Result<Vec<(String, LayerReport)>> {
        let wanted = match layer {
            "gold" => None,
            other => match other.strip_prefix("gold.") {
                Some(name) if pipeline.gold.contains_key(name) => Some(name),
                _ => {
                    let names: Vec<String> =
                        pipeline.gold.keys().map(|n| format!("gold.{n}")).collect();
                    return Err(stage_err(
                        "rebuild",
                        format!(
                            "`{layer}` is not a gold layer of this pipeline; rebuild `gold` or one of: {}",
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        let mut out = Vec::new();
        for (name, transform) in &mut self.gold {
            if wanted.is_some_and(|w| w != name) {
                continue;
            }
            let mut report = gold::rebuild_gold(pipeline, name, transform).await?;
            report.counters = transform.take_counters();
            out.push((format!("gold.{name}"), report));
        }
        Ok(out)
    }

    /// Applies bronze rows to silver as one batch, as a pass does with new bronze versions, but
    /// without recording progress: for replaying bronze into a new silver table, in any order.
    pub async fn replay_into_silver(
        &mut self,
        pipeline: &Pipeline,
        bronze_rows: &RecordBatch,
    ) -> Result<()> {
        silver::apply_batch(pipeline, &mut self.silver, bronze_rows).await
    }

    /// Runs sample landing rows through every layer, writing nothing, and checks that each layer's
    /// output has what the next stage needs (`weir validate --sample`). Returns each layer's output.
    pub async fn run_sample(
        &mut self,
        pipeline: &Pipeline,
        landing: &RecordBatch,
    ) -> Result<Vec<(String, RecordBatch)>> {
        const LABEL: &str = "the sample";
        let contract = OutputContract::bronze(pipeline);
        let bronze = self
            .bronze
            .call_checked(landing, LABEL, |i, o| contract.violation(i, o))?;
        let bronze = with_ingestion_metadata(&bronze, LABEL).map_err(|e| stage_err("bronze", e))?;
        let contract = OutputContract::silver(pipeline);
        let silver = self
            .silver
            .call_checked(&bronze, LABEL, |i, o| contract.violation(i, o))?;
        // Expectations are SQL over silver's rows: this also checks that they parse and type.
        let kept = apply_expectations(pipeline, silver.clone()).await?.kept;
        let mut out = vec![("bronze".to_owned(), bronze), ("silver".to_owned(), silver)];
        let Some(kept) = kept.filter(|k| k.num_rows() > 0) else {
            return Ok(out);
        };
        // Gold reads silver's rows as inserts.
        let stored = without_columns(&kept, &SILVER_DROPPED).map_err(|e| stage_err("silver", e))?;
        let inserts = StringArray::from(vec!["insert"; stored.num_rows()]);
        for (name, transform) in &mut self.gold {
            let stage = format!("gold.{name}");
            let Some(cfg) = pipeline.gold.get(name) else {
                continue;
            };
            let Some(weighted) = weigh(&stage, vec![(stored.clone(), inserts.clone())])? else {
                continue;
            };
            let contract = OutputContract::gold(name, cfg);
            let deltas =
                transform.call_checked(&weighted, LABEL, |i, o| contract.violation(i, o))?;
            out.push((stage, deltas));
        }
        Ok(out)
    }
}

/// One pass of bronze, run again on a commit conflict, with the component's counters.
async fn bronze_once(pipeline: &Pipeline, t: &mut Transform) -> Result<(String, LayerReport)> {
    let started = std::time::Instant::now();
    let report = retrying_conflicts!("bronze", bronze_pass(pipeline, t))?;
    Ok(finished("bronze".to_owned(), report, t, pipeline, started))
}

/// One pass of silver, as [`bronze_once`].
async fn silver_once(pipeline: &Pipeline, t: &mut Transform) -> Result<(String, LayerReport)> {
    let started = std::time::Instant::now();
    let report = retrying_conflicts!("silver", silver_pass(pipeline, t))?;
    Ok(finished("silver".to_owned(), report, t, pipeline, started))
}

/// One pass of each gold table in turn, as [`bronze_once`].
async fn gold_once(
    pipeline: &Pipeline,
    golds: &mut [(String, Transform)],
) -> Result<Vec<(String, LayerReport)>> {
    let mut out = Vec::new();
    for (name, t) in golds {
        let stage = format!("gold.{name}");
        let started = std::time::Instant::now();
        let report = retrying_conflicts!(stage, gold_pass(pipeline, name, t))?;
        out.push(finished(stage, report, t, pipeline, started));
    }
    Ok(out)
}

/// A finished pass's report with its component's counters, added to the metrics.
fn finished(
    stage: String,
    mut report: LayerReport,
    t: &mut Transform,
    pipeline: &Pipeline,
    started: std::time::Instant,
) -> (String, LayerReport) {
    report.counters = t.take_counters();
    report.record_metrics(&stage, pipeline, started.elapsed());
    (stage, report)
}

/// `batch` without the named columns.
fn without_columns(batch: &RecordBatch, dropped: &[&str]) -> arrow::error::Result<RecordBatch> {
    let schema = batch.schema();
    let kept: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !dropped.contains(&schema.field(i).name().as_str()))
        .collect();
    batch.project(&kept)
}

/// Routes a batch a layer's component failed on to the pipeline's dead-letter location: the batch as
/// Parquet and the error as JSON beside it, named after the stage and the batch, so a rerun over the
/// same input overwrites rather than repeats. Without a dead-letter location the error stops the
/// pipeline, as it is returned.
async fn dead_letter(
    pipeline: &Pipeline,
    stage: &str,
    label: &str,
    batch: &RecordBatch,
    error: WasmError,
) -> Result<()> {
    let Some(location) = &pipeline.dead_letter_location else {
        return Err(error.into());
    };
    let name: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let parquet = landing::write_parquet(batch).map_err(|e| stage_err(stage, e))?;
    let mut record = serde_json::Map::new();
    record.insert("stage".into(), stage.into());
    record.insert("batch".into(), label.into());
    record.insert("rows".into(), batch.num_rows().into());
    record.insert("error".into(), error.to_string().into());
    storage::dead_letter(location, &[stage], &name, "parquet", parquet, record).await?;
    tracing::warn!(stage, batch = label, rows = batch.num_rows(), location = %location, error = %error, "batch dead-lettered");
    Ok(())
}

fn delta_err(stage: &str, table: &str) -> impl FnOnce(DeltaTableError) -> LakehouseError {
    let (stage, table) = (stage.to_owned(), table.to_owned());
    move |source| LakehouseError::Delta {
        stage,
        table,
        source,
    }
}

fn stage_err(stage: &str, message: impl fmt::Display) -> LakehouseError {
    LakehouseError::Stage {
        stage: stage.to_owned(),
        message: message.to_string(),
    }
}

/// Opens the table at `location`, or returns an uninitialised handle if it does not exist yet.
async fn open(stage: &str, location: &str) -> Result<DeltaTable> {
    let url = deltalake::ensure_table_uri(location).map_err(delta_err(stage, location))?;
    DeltaTable::try_from_url(url)
        .await
        .map_err(delta_err(stage, location))
}

async fn txn_version(
    stage: &str,
    location: &str,
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<i64>> {
    if table.version().is_none() {
        return Ok(None);
    }
    let snapshot = table.snapshot().map_err(delta_err(stage, location))?;
    snapshot
        .transaction_version(&table.log_store(), app_id)
        .await
        .map_err(delta_err(stage, location))
}

/// The first version of the layer below that the table at `location` has not taken in yet.
async fn next_input_version(
    stage: &str,
    location: &str,
    table: &DeltaTable,
    app_id: &str,
) -> Result<u64> {
    Ok(txn_version(stage, location, table, app_id)
        .await?
        .map_or(0, |v| v as u64 + 1))
}

fn commit_properties(txns: Vec<Transaction>) -> CommitProperties {
    CommitProperties::default().with_application_transactions(txns)
}

/// A MERGE's `WHEN NOT MATCHED AND predicate THEN INSERT`, each of `columns` from the source.
fn insert_from_source<'a>(
    insert: deltalake::operations::merge::InsertBuilder,
    predicate: String,
    columns: impl IntoIterator<Item = &'a String>,
) -> deltalake::operations::merge::InsertBuilder {
    columns
        .into_iter()
        .fold(insert.predicate(predicate), |i, c| {
            i.set(
                Column::from_name(c.as_str()),
                Expr::Column(Column::new(Some("source"), c.as_str())),
            )
        })
}

/// After a MERGE: if it changed nothing (every change was late or repeated), records the
/// progress alone, if there is progress to record.
async fn record_progress_if_unchanged(
    stage: &str,
    location: &str,
    mut table: DeltaTable,
    before_version: Option<u64>,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    if table.version() == before_version && !txns.is_empty() {
        commit_progress_only(stage, location, &mut table, txns).await?;
    }
    Ok(table)
}

/// Records progress without data, for batches that produced no rows.
async fn commit_progress_only(
    stage: &str,
    location: &str,
    table: &mut DeltaTable,
    txns: Vec<Transaction>,
) -> Result<()> {
    let snapshot = table.snapshot().map_err(delta_err(stage, location))?;
    CommitBuilder::from(commit_properties(txns))
        .with_actions(vec![])
        .build(
            Some(snapshot as &dyn TableReference),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(delta_err(stage, location))?;
    table
        .update_state()
        .await
        .map_err(delta_err(stage, location))?;
    Ok(())
}

fn app_id(pipeline: &Pipeline, stage: &str) -> String {
    format!("weir:{}:{stage}", pipeline.name)
}

/// Creates a table (with change data feed) whose columns are `columns` of `like`.
async fn create_table(
    stage: &str,
    location: &str,
    table: DeltaTable,
    like: &RecordBatch,
    columns: &[String],
    partition_by: &[String],
) -> Result<DeltaTable> {
    use deltalake::kernel::StructType;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let schema = like.schema();
    let fields: Vec<Field> = columns
        .iter()
        .filter_map(|c| schema.field_with_name(c).ok())
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let arrow_schema = Schema::new(fields);
    let delta_schema: StructType = (&arrow_schema)
        .try_into_kernel()
        .map_err(|e| stage_err(stage, e))?;
    let created = table
        .create()
        .with_columns(delta_schema.fields().cloned())
        .with_partition_columns(partition_by.iter().cloned())
        .with_configuration(table_properties(stage))
        // `quality` is not a Delta property: it is the medallion layer's, as DLT sets it.
        .with_raise_if_key_not_exists(false)
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(delta_err(stage, location))?;
    // Another writer created the table first and committed to it: what this pass read as "no
    // progress yet" is stale, so the pass must run again on the table as it is.
    match created.version() {
        Some(version) if version > 0 => Err(delta_err(stage, location)(
            DeltaTableError::VersionAlreadyExists(version),
        )),
        _ => Ok(created),
    }
}

/// Properties of a layer's table: its change feed (which the next layer reads), and its medallion
/// `quality` (bronze, silver or gold), the table property DLT pipelines set.
fn table_properties(stage: &str) -> [(&'static str, Option<&str>); 3] {
    let quality = stage.split('.').next().unwrap_or(stage);
    [
        ("delta.enableChangeDataFeed", Some("true")),
        // Spark's default: a reader replays at most ten JSON commits after the last checkpoint.
        ("delta.checkpointInterval", Some("10")),
        ("quality", Some(quality)),
    ]
}

/// The change feed of `table` from version `from` on: up to ten versions, up to `latest`, while
/// they hold at most ROWS_PER_COMMIT rows together (one version at least), so that the next
/// layer's component takes them in one call within its memory limit. Returns the last version
/// read, and the changes with their change types.
async fn read_changes_bounded(
    stage: &str,
    location: &str,
    table: &DeltaTable,
    from: u64,
    latest: u64,
) -> Result<(u64, Vec<(RecordBatch, StringArray)>)> {
    let (mut end, mut out, mut taken) = (from, Vec::new(), 0);
    loop {
        let version = read_changes(stage, location, table.clone(), end, end).await?;
        let rows: usize = version.iter().map(|(b, _)| b.num_rows()).sum();
        if taken > 0 && taken + rows > ROWS_PER_COMMIT {
            return Ok((end - 1, out)); // the next pass reads this version again
        }
        taken += rows;
        out.extend(version);
        if end >= latest || end >= from + 9 {
            return Ok((end, out));
        }
        end += 1;
    }
}

/// Reads a table's change feed for versions `from..=to`, without the change-feed columns, with
/// each batch's change types (`insert`, `update_preimage`, `update_postimage`, `delete`).
async fn read_changes(
    stage: &str,
    location: &str,
    table: DeltaTable,
    from: u64,
    to: u64,
) -> Result<Vec<(RecordBatch, StringArray)>> {
    let ctx = SessionContext::new();
    let plan = table
        .scan_cdf()
        .with_starting_version(from)
        .with_ending_version(to)
        .build(&ctx.state(), None)
        .await
        .map_err(delta_err(stage, location))?;
    let batches = collect(plan, ctx.task_ctx())
        .await
        .map_err(|e| delta_err(stage, location)(e.into()))?;
    let mut out = Vec::new();
    for b in batches {
        let change_type = b
            .column_by_name("_change_type")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .cloned()
            .ok_or_else(|| {
                stage_err(
                    stage,
                    format!("change feed of {location} has no _change_type"),
                )
            })?;
        let keep: Vec<usize> = b
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !CDF_COLUMNS.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let projected = b.project(&keep).map_err(|e| stage_err(stage, e))?;
        out.push((projected, change_type));
    }
    Ok(out)
}

fn concat(stage: &str, batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let schema = first.schema();
    arrow::compute::concat_batches(&schema, &batches)
        .map(Some)
        .map_err(|e| stage_err(stage, e))
}

/// The MERGE condition pairing source and target rows by `keys`.
fn keys_match(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("target.{} = source.{}", q(k), q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn q(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `batch` with `extra` columns appended.
fn with_columns(
    batch: &RecordBatch,
    extra: Vec<(Field, ArrayRef)>,
) -> arrow::error::Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (field, column) in extra {
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

// ---------------- queries ----------------

/// Runs SQL over the pipeline's tables, registered as `bronze`, `silver` and `gold_<name>`.
pub async fn query(pipeline: &Pipeline, sql: &str) -> Result<Vec<RecordBatch>> {
    const STAGE: &str = "query";
    let ctx = SessionContext::new();
    let mut tables: Vec<(String, &String)> = vec![
        ("bronze".into(), &pipeline.bronze.layer.table),
        ("silver".into(), &pipeline.silver.layer.table),
    ];
    tables.extend(
        pipeline
            .gold
            .iter()
            .map(|(n, g)| (format!("gold_{n}"), &g.layer.table)),
    );
    for (name, location) in tables {
        let table = open(STAGE, location).await?;
        if table.version().is_none() {
            continue;
        }
        let provider = table
            .table_provider()
            .await
            .map_err(|e| stage_err(STAGE, e))?;
        ctx.register_table(name.as_str(), provider)
            .map_err(|e| stage_err(STAGE, e))?;
    }
    let df = ctx.sql(sql).await.map_err(|e| stage_err(STAGE, e))?;
    df.collect().await.map_err(|e| stage_err(STAGE, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_panics_fails_its_layer_with_the_panic_message() {
        let pass = async {
            if true {
                panic!("Already shut down");
            }
            Ok(())
        };
        let err = futures::executor::block_on(panic_as_error("gold.sales", pass))
            .expect_err("a panicking pass is an error");
        assert_eq!(err.stage(), "gold.sales");
        assert_eq!(
            err.to_string(),
            "gold.sales: the pass panicked and committed nothing: Already shut down"
        );
    }

    #[test]
    fn a_pass_that_returns_is_passed_through() {
        let ok = futures::executor::block_on(panic_as_error("bronze", async { Ok(7) }));
        assert_eq!(ok.ok(), Some(7));
        let failed = futures::executor::block_on(panic_as_error::<()>("bronze", async {
            Err(stage_err("bronze", "the store refused the write"))
        }));
        assert_eq!(
            failed.expect_err("the pass failed").to_string(),
            "bronze: the store refused the write"
        );
    }
}
