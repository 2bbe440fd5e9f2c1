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
}

impl LayerReport {
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
        let mut bronze = bronze_pass(pipeline, &mut self.bronze).await?;
        bronze.counters = self.bronze.take_counters();
        let mut out = vec![("bronze".to_owned(), bronze)];
        let mut silver = silver_pass(pipeline, &mut self.silver).await?;
        silver.counters = self.silver.take_counters();
        out.push(("silver".to_owned(), silver));
        for (name, transform) in &mut self.gold {
            let mut gold = gold_pass(pipeline, name, transform).await?;
            gold.counters = transform.take_counters();
            out.push((format!("gold.{name}"), gold));
        }
        Ok(out)
    }

    /// Runs sample landing rows through every layer, writing nothing, and checks that each layer's
    /// output has what the next stage needs (`weir validate --sample`). Returns each layer's output.
    pub async fn run_sample(
        &mut self,
        pipeline: &Pipeline,
        landing: &RecordBatch,
    ) -> Result<Vec<(String, RecordBatch)>> {
        const LABEL: &str = "the sample";
        let bronze = self.bronze.call(landing, LABEL)?;
        let bronze = with_ingestion_metadata(&bronze, LABEL).map_err(|e| stage_err("bronze", e))?;
        let silver_needs = pipeline
            .silver
            .keys
            .iter()
            .chain(&pipeline.silver.sequence_by);
        require_columns(
            "bronze",
            &bronze,
            silver_needs,
            "[silver] keys and sequence_by",
        )?;
        let silver = self.silver.call(&bronze, LABEL)?;
        require_columns("silver", &silver, &pipeline.silver.keys, "[silver] keys")?;
        // Expectations are SQL over silver's rows: this also checks that they parse and type.
        let (kept, _) = apply_expectations(pipeline, silver.clone()).await?;
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
            let deltas = transform.call(&weighted, LABEL)?;
            let needs = cfg.keys.iter().chain(std::iter::once(&cfg.count_column));
            require_columns(
                &stage,
                &deltas,
                needs,
                &format!("[gold.{name}] keys and count_column"),
            )?;
            out.push((stage, deltas));
        }
        Ok(out)
    }
}

/// Fails unless `batch`, the output of `stage`'s component, has every column of `needed`.
fn require_columns<'a>(
    stage: &str,
    batch: &RecordBatch,
    needed: impl IntoIterator<Item = &'a String>,
    named_by: &str,
) -> Result<()> {
    let schema = batch.schema();
    for column in needed {
        if schema.column_with_name(column).is_none() {
            let has: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(stage_err(
                stage,
                format!(
                    "the component's output has no column `{column}`, which {named_by} name; it has: {}",
                    has.join(", ")
                ),
            ));
        }
    }
    Ok(())
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
    let (store, root) = storage::open(location)?;
    let folder = root.join(stage);
    let parquet = landing::write_parquet(batch).map_err(|e| stage_err(stage, e))?;
    storage::put(
        &*store,
        &folder.clone().join(format!("{name}.parquet")),
        parquet,
    )
    .await?;
    let record = serde_json::json!({
        "stage": stage,
        "batch": label,
        "rows": batch.num_rows(),
        "error": error.to_string(),
        "at": chrono::Utc::now().to_rfc3339(),
    });
    storage::put(
        &*store,
        &folder.join(format!("{name}.error.json")),
        record.to_string().into_bytes(),
    )
    .await?;
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

fn commit_properties(txns: Vec<Transaction>) -> CommitProperties {
    CommitProperties::default().with_application_transactions(txns)
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

// ---------------- bronze ----------------

async fn bronze_pass(pipeline: &Pipeline, transform: &mut Transform) -> Result<LayerReport> {
    const STAGE: &str = "bronze";
    let location = &pipeline.bronze.layer.table;
    let mut table = open(STAGE, location).await?;
    let (store, root) = storage::open(&pipeline.landing.location)?;
    let files = landing::list_files(&*store, &root, &pipeline.bronze.source_table).await?;

    // Per partition, the last Kafka offset already in bronze.
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let partitions: std::collections::BTreeSet<i32> = files.iter().map(|f| f.partition).collect();
    for p in partitions {
        let app = format!("{}:p{p}", app_id(pipeline, STAGE));
        done.insert(
            p,
            txn_version(STAGE, location, &table, &app)
                .await?
                .unwrap_or(-1),
        );
    }
    let pending: Vec<LandingFile> = files
        .into_iter()
        .filter(|f| f.last_offset > done.get(&f.partition).copied().unwrap_or(-1))
        .collect();

    let mut report = LayerReport::default();
    let mut group: Vec<LandingFile> = Vec::new();
    let mut group_rows = 0usize;
    let mut batches: Vec<RecordBatch> = Vec::new();
    for file in pending {
        let input = read_landing_file(
            &*store,
            &file,
            done.get(&file.partition).copied().unwrap_or(-1),
        )
        .await?;
        report.rows_in += input.num_rows();
        // Rows at or below the committed offset were skipped: the batch starts after it.
        let first_offset = file
            .first_offset
            .max(done.get(&file.partition).copied().unwrap_or(-1) + 1);
        let label = format!(
            "{} (partition {}, offsets {first_offset}-{})",
            file.path, file.partition, file.last_offset
        );
        if input.num_rows() > 0 {
            match transform.call(&input, &label) {
                Ok(cleaned) => {
                    batches.push(
                        with_ingestion_metadata(&cleaned, file.path.as_ref())
                            .map_err(|e| stage_err(STAGE, e))?,
                    );
                    group_rows += cleaned.num_rows();
                }
                Err(e) => {
                    dead_letter(pipeline, STAGE, &label, &input, e).await?;
                    report.dead_lettered += input.num_rows();
                }
            }
        }
        group.push(file);
        if group_rows >= ROWS_PER_COMMIT {
            table = commit_bronze(
                pipeline,
                table,
                std::mem::take(&mut batches),
                &std::mem::take(&mut group),
                &mut report,
            )
            .await?;
            group_rows = 0;
        }
    }
    if !group.is_empty() {
        table = commit_bronze(pipeline, table, batches, &group, &mut report).await?;
    }
    report.table_version = table.version();
    Ok(report)
}

/// Reads a landing file, keeping only the records after `after_offset` (already in bronze).
async fn read_landing_file(
    store: &dyn ObjectStore,
    file: &LandingFile,
    after_offset: i64,
) -> Result<RecordBatch> {
    const STAGE: &str = "bronze";
    let bad = |e: String| stage_err(STAGE, format!("landing file {}: {e}", file.path));
    let bytes = storage::get(store, &file.path)
        .await?
        .ok_or_else(|| bad("vanished while being read".into()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(ROWS_PER_COMMIT).build())
        .map_err(|e| bad(e.to_string()))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let batch =
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| bad(e.to_string()))?;
    if file.first_offset > after_offset {
        return Ok(batch);
    }
    // A file rewritten with other boundaries after a crash can overlap what bronze already has.
    let offsets = batch
        .column_by_name("kafka_offset")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| bad("has no int64 kafka_offset column".into()))?;
    let keep = arrow::compute::kernels::cmp::gt(offsets, &Int64Array::new_scalar(after_offset))
        .map_err(|e| bad(e.to_string()))?;
    arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| bad(e.to_string()))
}

async fn commit_bronze(
    pipeline: &Pipeline,
    mut table: DeltaTable,
    batches: Vec<RecordBatch>,
    files: &[LandingFile],
    report: &mut LayerReport,
) -> Result<DeltaTable> {
    const STAGE: &str = "bronze";
    let location = &pipeline.bronze.layer.table;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for f in files {
        let e = last.entry(f.partition).or_insert(f.last_offset);
        *e = (*e).max(f.last_offset);
    }
    let txns: Vec<Transaction> = last
        .iter()
        .map(|(p, o)| Transaction::new(format!("{}:p{p}", app_id(pipeline, STAGE)), *o))
        .collect();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        if table.version().is_some() {
            commit_progress_only(STAGE, location, &mut table, txns).await?;
            report.commits += 1;
        }
        // A bronze table that does not exist yet has nothing to record progress in; the files
        // held no rows, so reprocessing them later costs nothing.
        return Ok(table);
    }
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    let table = match batches.first() {
        Some(first) if table.version().is_none() => {
            let columns: Vec<String> = first
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let partition_by = &pipeline.bronze.layer.partition_by;
            create_table(STAGE, location, table, first, &columns, partition_by).await?
        }
        _ => table,
    };
    let table = table
        .write(batches)
        .with_save_mode(SaveMode::Append)
        .with_partition_columns(pipeline.bronze.layer.partition_by.clone())
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(STAGE, location))?;
    report.rows_out += rows;
    report.commits += 1;
    tracing::info!(table = %location, rows, files = files.len(), version = ?table.version(), "bronze commit");
    Ok(table)
}

fn with_ingestion_metadata(
    batch: &RecordBatch,
    landing_file: &str,
) -> arrow::error::Result<RecordBatch> {
    let n = batch.num_rows();
    let now = chrono::Utc::now().timestamp_micros();
    let utc_micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    with_columns(
        batch,
        vec![
            (
                Field::new("_ingested_at", utc_micros, false),
                Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
            ),
            (
                Field::new("_landing_file", DataType::Utf8, false),
                Arc::new(StringArray::from(vec![landing_file; n])),
            ),
        ],
    )
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

// ---------------- silver ----------------

async fn silver_pass(pipeline: &Pipeline, transform: &mut Transform) -> Result<LayerReport> {
    const STAGE: &str = "silver";
    let silver_location = &pipeline.silver.layer.table;
    let mut report = LayerReport::default();
    let mut bronze = open(STAGE, &pipeline.bronze.layer.table).await?;
    let Some(bronze_latest) = bronze.version() else {
        return Ok(report);
    };
    let mut silver = open(STAGE, silver_location).await?;
    let app = app_id(pipeline, STAGE);
    let mut next = txn_version(STAGE, silver_location, &silver, &app)
        .await?
        .map_or(0, |v| v as u64 + 1);
    while next <= bronze_latest {
        // Bronze commits hold at most ROWS_PER_COMMIT rows; take a few at a time.
        let end = (next + 9).min(bronze_latest);
        bronze
            .update_state()
            .await
            .map_err(delta_err(STAGE, &pipeline.bronze.layer.table))?;
        let input = read_changes(
            STAGE,
            &pipeline.bronze.layer.table,
            bronze.clone(),
            next,
            end,
        )
        .await?;
        let rows: Vec<RecordBatch> = input.into_iter().map(|(b, _)| b).collect();
        let input = concat(STAGE, rows)?;
        report.rows_in += input.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let changes = match input {
            Some(batch) if batch.num_rows() > 0 => {
                let label = format!("bronze versions {next}-{end}");
                match transform.call(&batch, &label) {
                    Ok(out) => {
                        let (kept, dropped) = apply_expectations(pipeline, out).await?;
                        report.dropped_by_expectations += dropped;
                        kept
                    }
                    Err(e) => {
                        dead_letter(pipeline, STAGE, &label, &batch, e).await?;
                        report.dead_lettered += batch.num_rows();
                        None
                    }
                }
            }
            _ => None,
        };
        match changes {
            Some(batch) if batch.num_rows() > 0 => {
                report.rows_out += batch.num_rows();
                silver = merge_silver(pipeline, silver, batch, txn).await?;
            }
            _ => {
                if silver.version().is_some() {
                    commit_progress_only(STAGE, silver_location, &mut silver, txn).await?;
                }
            }
        }
        report.commits += 1;
        next = end + 1;
    }
    report.table_version = silver.version();
    Ok(report)
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

/// Applies the silver expectations (SQL predicates) to the component's output.
async fn apply_expectations(
    pipeline: &Pipeline,
    batch: RecordBatch,
) -> Result<(Option<RecordBatch>, usize)> {
    const STAGE: &str = "silver";
    if pipeline.silver.expectations.is_empty() {
        return Ok((Some(batch), 0));
    }
    let ctx = SessionContext::new();
    let before = batch.num_rows();
    let mut df = ctx.read_batch(batch).map_err(|e| stage_err(STAGE, e))?;
    for e in &pipeline.silver.expectations {
        let predicate = df.parse_sql_expr(&e.expect).map_err(|err| {
            stage_err(
                STAGE,
                format!(
                    "expectation `{}`: cannot parse `{}`: {err}",
                    e.name, e.expect
                ),
            )
        })?;
        // A NULL outcome is a violation, as in DLT.
        let passes = Expr::IsTrue(Box::new(predicate));
        let violations = df
            .clone()
            .filter(Expr::Not(Box::new(passes.clone())))
            .map_err(|err| stage_err(STAGE, err))?
            .count()
            .await
            .map_err(|err| stage_err(STAGE, err))?;
        if violations == 0 {
            continue;
        }
        match e.on_violation {
            OnViolation::Warn => {
                tracing::warn!(expectation = %e.name, rows = violations, "expectation violated (kept)")
            }
            OnViolation::Drop => {
                tracing::warn!(expectation = %e.name, rows = violations, "expectation violated (dropped)");
                df = df.filter(passes).map_err(|err| stage_err(STAGE, err))?;
            }
            OnViolation::Fail => {
                return Err(LakehouseError::ExpectationFailed {
                    stage: STAGE.into(),
                    name: e.name.clone(),
                    expect: e.expect.clone(),
                    rows: violations,
                });
            }
        }
    }
    let batches = df.collect().await.map_err(|e| stage_err(STAGE, e))?;
    let kept = concat(STAGE, batches)?;
    let after = kept.as_ref().map_or(0, RecordBatch::num_rows);
    Ok((kept, before - after))
}

/// Columns bronze carries that silver does not keep.
const SILVER_DROPPED: [&str; 1] = ["op"];

async fn merge_silver(
    pipeline: &Pipeline,
    silver: DeltaTable,
    changes: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    const STAGE: &str = "silver";
    let location = &pipeline.silver.layer.table;
    let cfg = &pipeline.silver;
    let target_columns: Vec<String> = changes
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !SILVER_DROPPED.contains(&n.as_str()))
        .collect();
    for required in cfg.keys.iter().chain(&cfg.sequence_by) {
        if !target_columns.contains(required) {
            return Err(stage_err(
                STAGE,
                format!(
                    "the silver component's output has no column `{required}` (named in silver.keys or silver.sequence_by)"
                ),
            ));
        }
    }
    let silver = if silver.version().is_none() {
        create_table(
            STAGE,
            location,
            silver,
            &changes,
            &target_columns,
            &cfg.layer.partition_by,
        )
        .await?
    } else {
        silver
    };
    let before_version = silver.version();
    let ctx = SessionContext::new();
    let source = ctx.read_batch(changes).map_err(|e| stage_err(STAGE, e))?;
    let on = keys_match(&cfg.keys);
    let newer = sequence_newer(&cfg.sequence_by);
    let is_delete = format!("({})", qualify_source(&cfg.apply_as_deletes));
    let src = |c: &str| Expr::Column(Column::new(Some("source"), c));
    let (table, metrics) = silver
        .merge(source, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(commit_properties(txns.clone()))
        .when_matched_delete(|d| d.predicate(format!("{is_delete} AND {newer}")))
        .map_err(delta_err(STAGE, location))?
        .when_matched_update(|u| {
            target_columns.iter().fold(
                u.predicate(format!("NOT {is_delete} AND {newer}")),
                |u, c| u.update(Column::from_name(c.as_str()), src(c)),
            )
        })
        .map_err(delta_err(STAGE, location))?
        .when_not_matched_insert(|i| {
            target_columns
                .iter()
                .fold(i.predicate(format!("NOT {is_delete}")), |i, c| {
                    i.set(Column::from_name(c.as_str()), src(c))
                })
        })
        .map_err(delta_err(STAGE, location))?
        .await
        .map_err(delta_err(STAGE, location))?;
    let mut table = table;
    if table.version() == before_version {
        // Nothing changed (every event was late or repeated): record the progress alone.
        commit_progress_only(STAGE, location, &mut table, txns).await?;
    }
    tracing::info!(
        table = %location,
        inserted = metrics.num_target_rows_inserted,
        updated = metrics.num_target_rows_updated,
        deleted = metrics.num_target_rows_deleted,
        version = ?table.version(),
        "silver merge"
    );
    Ok(table)
}

/// The MERGE condition pairing source and target rows by `keys`.
fn keys_match(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("target.{} = source.{}", q(k), q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `(s.a, s.b) > (t.a, t.b)` written out, so a repeated or older event never overwrites a newer one.
fn sequence_newer(columns: &[String]) -> String {
    let mut clauses = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let mut parts: Vec<String> = columns[..i]
            .iter()
            .map(|p| format!("source.{} = target.{}", q(p), q(p)))
            .collect();
        parts.push(format!("source.{} > target.{}", q(c), q(c)));
        clauses.push(format!("({})", parts.join(" AND ")));
    }
    format!("({})", clauses.join(" OR "))
}

/// Prefixes bare column names in a simple predicate like `op = 'd'` with `source.`.
fn qualify_source(predicate: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            let keyword = [
                "and", "or", "not", "is", "null", "in", "true", "false", "like",
            ]
            .contains(&word.to_lowercase().as_str());
            if keyword
                || word.chars().next().is_some_and(|c| c.is_ascii_digit())
                || word.contains('.')
            {
                out.push_str(word);
            } else {
                out.push_str("source.");
                out.push_str(word);
            }
            word.clear();
        }
    };
    for ch in predicate.chars() {
        if in_string {
            out.push(ch);
            if ch == '\'' {
                in_string = false;
            }
        } else if ch == '\'' {
            flush(&mut word, &mut out);
            in_string = true;
            out.push(ch);
        } else if ch.is_alphanumeric() || ch == '_' || ch == '.' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
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
    table
        .create()
        .with_columns(delta_schema.fields().cloned())
        .with_partition_columns(partition_by.iter().cloned())
        .with_configuration(table_properties(stage))
        // `quality` is not a Delta property: it is the medallion layer's, as DLT sets it.
        .with_raise_if_key_not_exists(false)
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(delta_err(stage, location))
}

/// Properties of a layer's table: its change feed (which the next layer reads), and its medallion
/// `quality` (bronze, silver or gold), the table property DLT pipelines set.
fn table_properties(stage: &str) -> [(&'static str, Option<&str>); 2] {
    let quality = stage.split('.').next().unwrap_or(stage);
    [
        ("delta.enableChangeDataFeed", Some("true")),
        ("quality", Some(quality)),
    ]
}

// ---------------- gold ----------------

async fn gold_pass(
    pipeline: &Pipeline,
    name: &str,
    transform: &mut Transform,
) -> Result<LayerReport> {
    let stage = format!("gold.{name}");
    let Some(cfg) = pipeline.gold.get(name) else {
        return Ok(LayerReport::default());
    };
    let location = &cfg.layer.table;
    let mut report = LayerReport::default();
    let silver = open(&stage, &pipeline.silver.layer.table).await?;
    let Some(silver_latest) = silver.version() else {
        return Ok(report);
    };
    let mut gold = open(&stage, location).await?;
    let app = app_id(pipeline, &stage);
    let mut next = txn_version(&stage, location, &gold, &app)
        .await?
        .map_or(0, |v| v as u64 + 1);
    while next <= silver_latest {
        let end = (next + 9).min(silver_latest);
        let changes = read_changes(
            &stage,
            &pipeline.silver.layer.table,
            silver.clone(),
            next,
            end,
        )
        .await?;
        let weighted = weigh(&stage, changes)?;
        report.rows_in += weighted.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let deltas = match weighted {
            Some(b) if b.num_rows() > 0 => {
                let label = format!("silver versions {next}-{end}");
                match transform.call(&b, &label) {
                    Ok(deltas) => Some(deltas),
                    Err(e) => {
                        dead_letter(pipeline, &stage, &label, &b, e).await?;
                        report.dead_lettered += b.num_rows();
                        None
                    }
                }
            }
            _ => None,
        };
        match deltas {
            Some(d) if d.num_rows() > 0 => {
                report.rows_out += d.num_rows();
                gold = merge_gold(&stage, cfg, gold, d, txn).await?;
            }
            _ => {
                if gold.version().is_some() {
                    commit_progress_only(&stage, location, &mut gold, txn).await?;
                }
            }
        }
        report.commits += 1;
        next = end + 1;
    }
    report.table_version = gold.version();
    Ok(report)
}

/// Change-feed rows as weighted rows: +1 entering the table, −1 leaving it.
fn weigh(stage: &str, changes: Vec<(RecordBatch, StringArray)>) -> Result<Option<RecordBatch>> {
    let mut out = Vec::new();
    for (batch, change_type) in changes {
        let weights: Int64Array = change_type
            .iter()
            .map(|t| match t {
                Some("insert" | "update_postimage") => Some(1),
                Some("delete" | "update_preimage") => Some(-1),
                _ => Some(0),
            })
            .collect();
        let weight = (
            Field::new("weight", DataType::Int64, false),
            Arc::new(weights) as ArrayRef,
        );
        out.push(with_columns(&batch, vec![weight]).map_err(|e| stage_err(stage, e))?);
    }
    concat(stage, out)
}

async fn merge_gold(
    stage: &str,
    cfg: &crate::config::GoldConfig,
    gold: DeltaTable,
    deltas: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let location = &cfg.layer.table;
    let schema = deltas.schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for required in cfg.keys.iter().chain(std::iter::once(&cfg.count_column)) {
        if !columns.contains(required) {
            return Err(stage_err(
                stage,
                format!("the component's output has no column `{required}`"),
            ));
        }
    }
    let measures: Vec<&String> = columns.iter().filter(|c| !cfg.keys.contains(c)).collect();
    let gold = if gold.version().is_none() {
        create_table(stage, location, gold, &deltas, &columns, &[]).await?
    } else {
        gold
    };
    let before_version = gold.version();
    let ctx = SessionContext::new();
    let source = ctx.read_batch(deltas).map_err(|e| stage_err(stage, e))?;
    let on = keys_match(&cfg.keys);
    let count = q(&cfg.count_column);
    let (table, _metrics) = gold
        .merge(source, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(commit_properties(txns.clone()))
        // A group whose last row left is removed, in the same commit.
        .when_matched_delete(|d| d.predicate(format!("target.{count} + source.{count} = 0")))
        .map_err(delta_err(stage, location))?
        .when_matched_update(|u| {
            measures.iter().fold(u, |u, c| {
                let c = q(c);
                u.update(
                    Column::from_name(c.as_str()),
                    format!("target.{c} + source.{c}"),
                )
            })
        })
        .map_err(delta_err(stage, location))?
        .when_not_matched_insert(|i| {
            columns
                .iter()
                .fold(i.predicate(format!("source.{count} <> 0")), |i, c| {
                    i.set(
                        Column::from_name(c.as_str()),
                        Expr::Column(Column::new(Some("source"), c.as_str())),
                    )
                })
        })
        .map_err(delta_err(stage, location))?
        .await
        .map_err(delta_err(stage, location))?;
    let mut table = table;
    if table.version() == before_version {
        commit_progress_only(stage, location, &mut table, txns).await?;
    }
    Ok(table)
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
