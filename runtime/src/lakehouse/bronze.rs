//! Bronze: landing files, incrementally, through the bronze component, appended to a Delta table.

use super::*;

const STAGE: &str = "bronze";

pub(super) async fn bronze_pass(
    pipeline: &Pipeline,
    transform: &mut Transform,
) -> Result<LayerReport> {
    let location = &pipeline.bronze.layer.table;
    let mut table = open(STAGE, location).await?;
    let (store, _) = storage::open(&pipeline.landing.location)?;
    let LandingProgress { pending, mut done } = landing_progress(pipeline, &table).await?;
    // Column types are checked at commit, where a change from the source is told apart.
    let contract = OutputContract::bronze(pipeline);

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
        // A landing pass cut short can leave a file that a later pass rewrote with other
        // boundaries: files come in offset order, and each offset is taken once.
        done.insert(
            file.partition,
            file.last_offset
                .max(done.get(&file.partition).copied().unwrap_or(-1)),
        );
        if input.num_rows() > 0 {
            match transform.call_checked(&input, &label, |i, o| contract.violation(i, o)) {
                Ok(cleaned) => {
                    // A commit holds up to ROWS_PER_COMMIT rows (or one larger file): silver
                    // hands a whole version to its component, whose memory is bounded.
                    if group_rows > 0 && group_rows + cleaned.num_rows() > ROWS_PER_COMMIT {
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
    }
    if !group.is_empty() {
        table = commit_bronze(pipeline, table, batches, &group, &mut report).await?;
    }
    report.table_version = table.version();
    Ok(report)
}

/// Which landing files bronze has yet to take, and per partition the last Kafka offset it has.
pub(super) struct LandingProgress {
    pub pending: Vec<LandingFile>,
    pub done: BTreeMap<i32, i64>,
}

pub(super) async fn landing_progress(
    pipeline: &Pipeline,
    bronze: &DeltaTable,
) -> Result<LandingProgress> {
    let location = &pipeline.bronze.layer.table;
    let (store, root) = storage::open(&pipeline.landing.location)?;
    let files = landing::list_files(&*store, &root, &pipeline.bronze.source_table).await?;
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let partitions: std::collections::BTreeSet<i32> = files.iter().map(|f| f.partition).collect();
    for p in partitions {
        let app = format!("{}:p{p}", app_id(pipeline, STAGE));
        done.insert(
            p,
            txn_version(STAGE, location, bronze, &app)
                .await?
                .unwrap_or(-1),
        );
    }
    let pending = files
        .into_iter()
        .filter(|f| f.last_offset > done.get(&f.partition).copied().unwrap_or(-1))
        .collect();
    Ok(LandingProgress { pending, done })
}

/// Reads a landing file, keeping only the records after `after_offset` (already in bronze).
async fn read_landing_file(
    store: &dyn ObjectStore,
    file: &LandingFile,
    after_offset: i64,
) -> Result<RecordBatch> {
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
    // Files landed before and after a column was added to the source differ in columns.
    let batches = with_all_columns(batches).map_err(|e| stage_err(STAGE, e))?;
    if let Some(first) = batches.first() {
        refuse_type_changes(location, &table, first, files)?;
    }
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
        // A column added to the source becomes a column of bronze (null in earlier rows).
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .with_partition_columns(pipeline.bronze.layer.partition_by.clone())
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(STAGE, location))?;
    report.rows_out += rows;
    report.commits += 1;
    tracing::info!(table = %location, rows, files = files.len(), version = ?table.version(), "bronze commit");
    Ok(table)
}

pub(super) fn with_ingestion_metadata(
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

/// Gives every batch the columns of all of them (in order of first appearance; missing ones
/// null), so that batches from before and after a schema change go into one commit.
fn with_all_columns(batches: Vec<RecordBatch>) -> arrow::error::Result<Vec<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    if batches.iter().all(|b| b.schema() == first.schema()) {
        return Ok(batches);
    }
    let mut fields: Vec<Field> = Vec::new();
    for batch in &batches {
        for field in batch.schema().fields() {
            match fields.iter_mut().find(|f| f.name() == field.name()) {
                Some(known) if known.data_type() != field.data_type() => {
                    return Err(arrow::error::ArrowError::SchemaError(format!(
                        "column `{}` is {} in some landing files and {} in others",
                        field.name(),
                        known.data_type(),
                        field.data_type()
                    )));
                }
                Some(known) => known.set_nullable(known.is_nullable() || field.is_nullable()),
                None => fields.push(field.as_ref().clone()),
            }
        }
    }
    // A column some batches lack is null in their rows.
    for field in &mut fields {
        if batches
            .iter()
            .any(|b| b.schema().field_with_name(field.name()).is_err())
        {
            field.set_nullable(true);
        }
    }
    let schema = Arc::new(Schema::new(fields));
    batches
        .iter()
        .map(|batch| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| match batch.column_by_name(f.name()) {
                    Some(c) => c.clone(),
                    None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
                })
                .collect();
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect()
}

/// Fails, saying what changed and how to resume, when a column of `batch` has another type than
/// the same column of bronze: a Delta table cannot change a column's type in place. Added and
/// dropped columns are fine (schema merge); widenings the landing zone absorbs (int to bigint,
/// varchar(n) to text) never show up here.
fn refuse_type_changes(
    location: &str,
    table: &DeltaTable,
    batch: &RecordBatch,
    files: &[LandingFile],
) -> Result<()> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let Ok(stored) = table.snapshot().map(|s| s.schema()) else {
        return Ok(());
    };
    for field in batch.schema().fields() {
        let Some(stored_field) = stored.field(field.name()) else {
            continue;
        };
        let incoming: Result<deltalake::kernel::DataType, _> = field.data_type().try_into_kernel();
        let Ok(incoming) = incoming else {
            continue;
        };
        if &incoming != stored_field.data_type() {
            let (first, last) = (files.first(), files.last());
            return Err(stage_err(
                "bronze",
                format!(
                    "column `{}` changed type from {} to {} in the landing files {} to {}; bronze \
                     ({location}) cannot change a column's type in place. To resume, convert the \
                     column in the bronze component, or stop weir and delete the bronze, silver \
                     and gold tables, which the next run rebuilds from the landing zone",
                    field.name(),
                    stored_field.data_type(),
                    incoming,
                    first.map_or_else(String::new, |f| f.path.to_string()),
                    last.map_or_else(String::new, |f| f.path.to_string()),
                ),
            ));
        }
    }
    Ok(())
}
