//! Silver: APPLY CHANGES INTO a Delta table, keyed and sequenced.

use std::time::Instant;

use arrow::array::{AsArray as _, BooleanArray};
use deltalake::datafusion::logical_expr::lit;
use deltalake::datafusion::scalar::ScalarValue;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::*;
use crate::config::{ColumnSelection, ScdType, SilverConfig};

const STAGE: &str = "silver";

pub(super) async fn silver_pass(
    pipeline: &Pipeline,
    transform: &mut Transform,
) -> Result<LayerReport> {
    let silver_location = &pipeline.silver.layer.table;
    let mut report = LayerReport::default();
    let mut bronze = open(STAGE, &pipeline.bronze.layer.table).await?;
    let Some(bronze_latest) = bronze.version() else {
        return Ok(report);
    };
    let mut silver = open(STAGE, silver_location).await?;
    let app = app_id(pipeline, STAGE);
    let mut next = next_input_version(STAGE, silver_location, &silver, &app).await?;
    let contract = OutputContract::silver(pipeline).with_table(silver_location, &silver);
    while next <= bronze_latest {
        let started = Instant::now();
        bronze
            .update_state()
            .await
            .map_err(delta_err(STAGE, &pipeline.bronze.layer.table))?;
        let (end, input) = read_changes_bounded(
            STAGE,
            &pipeline.bronze.layer.table,
            &bronze,
            next,
            bronze_latest,
        )
        .await?;
        let rows: Vec<RecordBatch> = input.into_iter().map(|(b, _)| b).collect();
        let input = concat(STAGE, rows)?;
        report.rows_in += input.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let read = started.elapsed();
        let (mut component, mut expectations) = Default::default();
        let changes = match input {
            Some(batch) if batch.num_rows() > 0 => {
                let label = format!("bronze versions {next}-{end}");
                let called = Instant::now();
                match transform.call_checked(&batch, &label, |i, o| contract.violation(i, o)) {
                    Ok(out) => {
                        component = called.elapsed();
                        let checked = apply_expectations(pipeline, out).await?;
                        expectations = called.elapsed() - component;
                        for (rule, (passed, failed)) in checked.counts {
                            let counts = report.expectations.entry(rule).or_default();
                            counts.0 += passed;
                            counts.1 += failed;
                        }
                        if let Some(dropped) = checked.dropped {
                            report.dropped_by_expectations += dropped.num_rows();
                            quarantine(pipeline, dropped, txn.clone()).await?;
                        }
                        checked.kept
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
                let applying = Instant::now();
                silver = apply_changes(pipeline, silver, batch, txn).await?;
                tracing::debug!(
                    read_ms = read.as_millis(),
                    component_ms = component.as_millis(),
                    expectations_ms = expectations.as_millis(),
                    apply_ms = applying.elapsed().as_millis(),
                    "silver steps"
                );
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

pub(super) async fn apply_batch(
    pipeline: &Pipeline,
    transform: &mut Transform,
    bronze_rows: &RecordBatch,
) -> Result<()> {
    let contract = OutputContract::silver(pipeline);
    let out = transform.call_checked(bronze_rows, "replayed bronze rows", |i, o| {
        contract.violation(i, o)
    })?;
    let checked = apply_expectations(pipeline, out).await?;
    if let Some(dropped) = checked.dropped {
        quarantine(pipeline, dropped, Vec::new()).await?;
    }
    match checked.kept {
        Some(changes) => apply_to_silver(pipeline, changes).await,
        None => Ok(()),
    }
}

/// APPLY CHANGES of rows shaped as the silver component's output (at most one change per key)
/// into silver, recording no progress: for replays and benchmarks.
pub async fn apply_to_silver(pipeline: &Pipeline, changes: RecordBatch) -> Result<()> {
    if changes.num_rows() > 0 {
        let silver = open("silver", &pipeline.silver.layer.table).await?;
        apply_changes(pipeline, silver, changes, Vec::new()).await?;
    }
    Ok(())
}

/// What the silver expectations made of a batch.
pub(super) struct Checked {
    /// The rows to apply (none of them violating a `drop` rule).
    pub kept: Option<RecordBatch>,
    /// The rows a `drop` rule removed, with `_failed_expectations` naming the rules.
    pub dropped: Option<RecordBatch>,
    /// Per rule: rows that passed, rows that failed.
    pub counts: BTreeMap<String, (u64, u64)>,
}

/// Column of the quarantine table naming the `drop` rules a row failed.
const FAILED_EXPECTATIONS: &str = "_failed_expectations";

/// Applies the silver expectations (SQL predicates, a NULL outcome failing as in DLT) to the
/// component's output, deletes and truncates excepted: counts each rule, stops on a failed `fail`
/// rule, and separates the rows a `drop` rule removes.
pub(super) async fn apply_expectations(pipeline: &Pipeline, batch: RecordBatch) -> Result<Checked> {
    let expectations = &pipeline.silver.expectations;
    let mut counts = BTreeMap::new();
    if expectations.is_empty() {
        return Ok(Checked {
            kept: Some(batch),
            dropped: None,
            counts,
        });
    }
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let ctx = SessionContext::new();
    let total = batch.num_rows() as u64;
    let columns: Vec<Expr> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| Expr::Column(Column::from_name(f.name().as_str())))
        .collect();
    let mut df = ctx.read_batch(batch).map_err(err)?;
    // Deletes and truncates carry only a key, if that: they are applied, not checked (checking
    // them is how the reference design's deletes never reached silver).
    let cfg = &pipeline.silver;
    let mut exempt = Vec::new();
    for (key, predicate) in [
        ("silver.apply_as_deletes", Some(&cfg.apply_as_deletes)),
        ("silver.apply_as_truncates", cfg.apply_as_truncates.as_ref()),
    ] {
        if let Some(predicate) = predicate {
            let parsed = df
                .parse_sql_expr(predicate)
                .map_err(|e| stage_err(STAGE, format!("{key}: cannot parse `{predicate}`: {e}")))?;
            exempt.push(Expr::IsTrue(Box::new(parsed)));
        }
    }
    let exempt = exempt
        .into_iter()
        .reduce(Expr::or)
        .unwrap_or_else(|| lit(false));
    let mut dropping: Vec<(String, String)> = Vec::new();
    for (i, e) in expectations.iter().enumerate() {
        let predicate = df.parse_sql_expr(&e.expect).map_err(|err| {
            stage_err(
                STAGE,
                format!(
                    "expectation `{}`: cannot parse `{}`: {err}",
                    e.name, e.expect
                ),
            )
        })?;
        let passes = Expr::IsTrue(Box::new(predicate)).or(exempt.clone());
        let failed = df
            .clone()
            .filter(Expr::Not(Box::new(passes.clone())))
            .map_err(err)?
            .count()
            .await
            .map_err(err)? as u64;
        counts.insert(e.name.clone(), (total - failed, failed));
        if failed == 0 {
            continue;
        }
        match e.on_violation {
            OnViolation::Warn => {
                tracing::warn!(expectation = %e.name, rows = failed, "expectation violated (kept)")
            }
            OnViolation::Drop => {
                tracing::warn!(expectation = %e.name, rows = failed, "expectation violated (dropped)");
                let flag = format!("__passes_{i}");
                df = df.with_column(&flag, passes).map_err(err)?;
                dropping.push((flag, e.name.clone()));
            }
            OnViolation::Fail => {
                return Err(LakehouseError::ExpectationFailed {
                    stage: STAGE.into(),
                    name: e.name.clone(),
                    expect: e.expect.clone(),
                    rows: failed as usize,
                });
            }
        }
    }
    if dropping.is_empty() {
        let kept = df.collect().await.map_err(err)?;
        return Ok(Checked {
            kept: concat(STAGE, kept)?,
            dropped: None,
            counts,
        });
    }
    let flag = |name: &str| Expr::Column(Column::from_name(name));
    let all_pass = dropping
        .iter()
        .map(|(f, _)| flag(f))
        .reduce(Expr::and)
        .unwrap_or_else(|| lit(true));
    let kept = df
        .clone()
        .filter(all_pass.clone())
        .map_err(err)?
        .select(columns.clone())
        .map_err(err)?
        .collect()
        .await
        .map_err(err)?;
    let failed_rules = deltalake::datafusion::functions::string::expr_fn::concat_ws(
        lit(","),
        dropping
            .iter()
            .map(|(f, name)| {
                deltalake::datafusion::logical_expr::when(
                    Expr::Not(Box::new(flag(f))),
                    lit(name.clone()),
                )
                .end()
                .unwrap_or_else(|_| lit(ScalarValue::Utf8(None)))
            })
            .collect(),
    );
    let dropped = df
        .filter(Expr::Not(Box::new(all_pass)))
        .map_err(err)?
        .select(
            columns
                .into_iter()
                .chain([failed_rules.alias(FAILED_EXPECTATIONS)])
                .collect::<Vec<_>>(),
        )
        .map_err(err)?
        .collect()
        .await
        .map_err(err)?;
    Ok(Checked {
        kept: concat(STAGE, kept)?,
        dropped: concat(STAGE, dropped)?,
        counts,
    })
}

/// Appends rows a `drop` expectation removed to the quarantine table, once per bronze range: a
/// rerun after a crash finds its own progress there and writes nothing.
async fn quarantine(
    pipeline: &Pipeline,
    dropped: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<()> {
    let Some(location) = &pipeline.silver.quarantine_table else {
        return Ok(());
    };
    let mut table = open(STAGE, location).await?;
    for txn in &txns {
        let done = txn_version(STAGE, location, &table, &txn.app_id).await?;
        if done.is_some_and(|v| v >= txn.version) {
            return Ok(());
        }
    }
    if table.version().is_none() {
        let columns: Vec<String> = dropped
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        table = create_table(STAGE, location, table, &dropped, &columns, &[]).await?;
    }
    let rows = dropped.num_rows();
    table
        .write(vec![dropped])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(STAGE, location))?;
    tracing::info!(table = %location, rows, "rows quarantined");
    Ok(())
}

/// Columns bronze carries that silver does not keep.
pub(super) const SILVER_DROPPED: [&str; 1] = ["op"];

/// What Debezium writes for an unchanged TOASTed value, which the stored row still holds.
const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Where silver keeps what APPLY CHANGES must remember beyond the table itself: per key, the
/// sequence of its last delete (so an older insert delivered late is not resurrected), and the
/// sequence of each truncate. A Delta table in the silver table's folder, hidden from readers as
/// `_`-prefixed folders are.
pub(super) fn tombstones_location(silver: &str) -> String {
    format!("{}/_weir_tombstones", silver.trim_end_matches('/'))
}

const TRUNCATE_FLAG: &str = "__truncate";
/// SCD type 2's validity columns, named as DLT names them.
pub(super) const START_AT: &str = "__START_AT";
pub(super) const END_AT: &str = "__END_AT";
const DELETE_FLAG: &str = "__delete";

/// APPLY CHANGES of one batch (at most one change per key, the component's output) into silver:
/// truncates first, then keyed changes that are newer than what silver and its tombstones hold.
async fn apply_changes(
    pipeline: &Pipeline,
    silver: DeltaTable,
    changes: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let cfg = &pipeline.silver;
    let location = &cfg.layer.table;
    let target_columns: Vec<String> = changes
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !SILVER_DROPPED.contains(&n.as_str()) && cfg.columns.keeps(n))
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
    // An SCD type 2 table has columns the changes do not: it is created from its first versions.
    let mut silver = if silver.version().is_none() && cfg.scd_type == ScdType::One {
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

    let started = Instant::now();
    let ctx = SessionContext::new();
    ctx.register_batch("changes", changes)
        .map_err(|e| stage_err(STAGE, e))?;
    let (truncates, keyed) = split_truncates(&ctx, cfg).await?;
    let tombstones_at = tombstones_location(location);
    let mut tombstones = open(STAGE, &tombstones_at).await?;
    let opened_ms = started.elapsed().as_millis();
    if let Some(truncate) = truncates {
        let rows = tombstone_rows(&truncate, cfg, true).await?;
        tombstones = record_tombstones(&tombstones_at, tombstones, None, &rows, cfg).await?;
        silver = truncate_older(location, silver, &truncate, cfg).await?;
    }
    let (keyed, read_tombstones) = match tombstones.version() {
        Some(_) => {
            let read = tombstones_of(&keyed, &tombstones, cfg).await?;
            (drop_superseded(&ctx, keyed, &read, cfg).await?, Some(read))
        }
        None => (keyed, None),
    };
    let superseded_ms = started.elapsed().as_millis();
    let mut rows = tombstone_rows(&keyed, cfg, false).await?;
    if tombstones.version().is_none() {
        // Without tombstones yet, only deletes have something to record: the other changes would
        // clear tombstones of their keys, and there are none.
        rows = only_true(&rows, DELETE_FLAG)?;
    }
    if rows.num_rows() > 0 {
        record_tombstones(&tombstones_at, tombstones, read_tombstones, &rows, cfg).await?;
    }
    tracing::debug!(
        ms = started.elapsed().as_millis(),
        opened_ms,
        superseded_ms,
        "silver tombstones"
    );
    match cfg.scd_type {
        ScdType::One => {
            // One MERGE per group of files: each rewrites files no other touches and holds one
            // group's changes at a time. Progress is recorded with the last; replaying the batch
            // after a crash in between changes nothing twice, because a change applies only over
            // an older sequence and a batch holds one change per key.
            let chunks = file_aligned_chunks(&silver, &keyed, cfg)?;
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let txns = if i == last { txns.clone() } else { Vec::new() };
                silver = merge_keyed(location, silver, chunk, &target_columns, cfg, txns).await?;
            }
            Ok(silver)
        }
        ScdType::Two => merge_versions(location, silver, keyed, &target_columns, cfg, txns).await,
    }
}

/// Cuts keyed changes into MERGEs that each rewrite a bounded set of silver's files, no two the
/// same, so that memory follows a MERGE's share of the table rather than the table. The files'
/// key ranges (from their statistics) are joined where they overlap; the changes, sorted by key,
/// are cut where each joined range begins and past the last one, and consecutive pieces are
/// packed up to `max_changes_per_merge` changes and `max_rows_per_merge` rows (the files' rows
/// plus the changes). A MERGE's key range then meets only its own files, which delta-rs's
/// key-range filter keeps while it skips every other. Keys past every file (new rows of a growing
/// key) touch no file: they go in MERGEs of their own once the last range is full, so silver grows
/// by new files rather than by rewriting its last one. Without a single key or statistics, the
/// batch stays whole.
fn file_aligned_chunks(
    silver: &DeltaTable,
    batch: &RecordBatch,
    cfg: &SilverConfig,
) -> Result<Vec<RecordBatch>> {
    let whole = || Ok(vec![batch.clone()]);
    let ([key], true) = (&cfg.keys[..], batch.num_rows() > 1) else {
        return whole();
    };
    let Ok(key_index) = batch.schema().index_of(key) else {
        return whole();
    };
    let keys = batch.column(key_index);
    let Some(files) = FileStats::of(silver, key, keys.data_type(), &cfg.layer.table)? else {
        return whole();
    };
    let order = arrow::compute::sort_to_indices(keys, None, None).map_err(arrow_err)?;
    let sorted = arrow::compute::take_record_batch(batch, &order).map_err(arrow_err)?;
    let sorted_keys = files.as_rows(sorted.column(key_index))?;
    let sorted_keys: Vec<_> = sorted_keys.iter().collect();
    let spans = merge_spans(
        &files.joined_ranges(),
        &sorted_keys,
        cfg.max_changes_per_merge,
        cfg.max_rows_per_merge,
    );
    Ok(spans
        .into_iter()
        .map(|span| sorted.slice(span.start, span.len()))
        .collect())
}

fn arrow_err(e: arrow::error::ArrowError) -> LakehouseError {
    stage_err(STAGE, e)
}

/// The key bounds and row counts of silver's files (Delta's per-file statistics), as rows that
/// compare as the key's values do.
struct FileStats {
    converter: arrow::row::RowConverter,
    key_type: DataType,
    min: arrow::row::Rows,
    max: arrow::row::Rows,
    rows: Vec<u64>,
    /// Bytes of all the files.
    bytes: u64,
}

impl FileStats {
    /// `None` where a file has no statistics for `key`: its range is unknown.
    fn of(
        silver: &DeltaTable,
        key: &str,
        key_type: &DataType,
        location: &str,
    ) -> Result<Option<Self>> {
        let files = silver
            .snapshot()
            .and_then(|s| s.add_actions_table(true))
            .map_err(delta_err(STAGE, location))?;
        let converter =
            arrow::row::RowConverter::new(vec![arrow::row::SortField::new(key_type.clone())])
                .map_err(arrow_err)?;
        let mut stats = Self {
            min: converter.empty_rows(0, 0),
            max: converter.empty_rows(0, 0),
            converter,
            key_type: key_type.clone(),
            rows: Vec::new(),
            bytes: 0,
        };
        if files.num_rows() == 0 {
            return Ok(Some(stats));
        }
        let (Some(min), Some(max), Some(rows)) = (
            files.column_by_name(&format!("min.{key}")),
            files.column_by_name(&format!("max.{key}")),
            files
                .column_by_name("num_records")
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>()),
        ) else {
            return Ok(None);
        };
        if min.null_count() > 0 || max.null_count() > 0 || rows.null_count() > 0 {
            return Ok(None);
        }
        stats.min = stats.as_rows(min)?;
        stats.max = stats.as_rows(max)?;
        stats.rows = rows
            .values()
            .iter()
            .map(|&n| u64::try_from(n).unwrap_or(0))
            .collect();
        stats.bytes = files
            .column_by_name("size_bytes")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
            .map_or(0, |sizes| {
                sizes
                    .iter()
                    .flatten()
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .sum()
            });
        Ok(Some(stats))
    }

    fn as_rows(&self, values: &arrow::array::ArrayRef) -> Result<arrow::row::Rows> {
        let values = arrow::compute::cast(values, &self.key_type).map_err(arrow_err)?;
        self.converter.convert_columns(&[values]).map_err(arrow_err)
    }

    /// The files' ranges in key order, overlapping ones joined.
    fn joined_ranges(&self) -> Vec<FileRange<arrow::row::Row<'_>>> {
        let mut ranges: Vec<_> = (0..self.rows.len())
            .map(|i| FileRange {
                start: self.min.row(i),
                end: self.max.row(i),
                rows: self.rows[i],
            })
            .collect();
        ranges.sort_by(|a, b| (&a.start, &a.end).cmp(&(&b.start, &b.end)));
        joined(ranges)
    }
}

/// How maintenance compacts silver when its files lost their order by key: files of a single-key
/// type 1 silver are kept apart by key range so that each MERGE rewrites a bounded share (see
/// [`file_aligned_chunks`]); a bin-packing compaction would join random ranges. They are sorted
/// again (a Z-order on one column is a sort) into files of about half `max_rows_per_merge` rows
/// when overlapping files hold more than that, or when files are mostly far smaller (many passes
/// of a few new rows each). `None`: silver is left as it is.
pub(super) fn clustering(silver: &DeltaTable, cfg: &SilverConfig) -> Result<Option<Clustering>> {
    let Some(key) = key_ordered_by(cfg) else {
        return Ok(None);
    };
    let location = &cfg.layer.table;
    let Some(key_type) = silver.snapshot().ok().and_then(|s| {
        s.snapshot()
            .arrow_schema()
            .field_with_name(key)
            .ok()
            .map(|f| f.data_type().clone())
    }) else {
        return Ok(None);
    };
    let Some(files) = FileStats::of(silver, key, &key_type, location)? else {
        return Ok(None);
    };
    let rows: u64 = files.rows.iter().sum();
    if rows == 0 {
        return Ok(None);
    }
    let file_rows = (cfg.max_rows_per_merge / 2).max(1);
    let outgrown = files
        .joined_ranges()
        .iter()
        .any(|r| r.rows > cfg.max_rows_per_merge);
    let fragmented = files.rows.len() as u64 > 2 * rows.div_ceil(file_rows) + 8;
    if !outgrown && !fragmented {
        return Ok(None);
    }
    let bytes_per_row = files.bytes.div_ceil(rows).max(1);
    Ok(Some(Clustering {
        key: key.clone(),
        target_file_bytes: std::num::NonZeroU64::new(bytes_per_row * file_rows)
            .unwrap_or(std::num::NonZeroU64::MIN),
    }))
}

/// The key whose ranges keep silver's files apart: a single-key type 1 silver's (type 2 keeps a
/// key's versions side by side, and several keys have no one order to cut along).
pub(super) fn key_ordered_by(cfg: &SilverConfig) -> Option<&String> {
    match (&cfg.keys[..], cfg.scd_type) {
        ([key], ScdType::One) => Some(key),
        _ => None,
    }
}

/// See [`clustering`].
pub(super) struct Clustering {
    pub key: String,
    pub target_file_bytes: std::num::NonZeroU64,
}

/// Key range of one or more of silver's files, and how many rows they hold.
#[derive(Debug, Clone, PartialEq)]
struct FileRange<K> {
    start: K,
    end: K,
    rows: u64,
}

/// Ranges sorted by start, with overlapping ones joined.
fn joined<K: Ord>(sorted: Vec<FileRange<K>>) -> Vec<FileRange<K>> {
    let mut out: Vec<FileRange<K>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match out.last_mut() {
            Some(last) if range.start <= last.end => {
                if range.end > last.end {
                    last.end = range.end;
                }
                last.rows += range.rows;
            }
            _ => out.push(range),
        }
    }
    out
}

/// Which slices of `sorted_keys` go in one MERGE each (see [`file_aligned_chunks`]); `ranges`
/// are joined and in key order.
fn merge_spans<K: Ord>(
    ranges: &[FileRange<K>],
    sorted_keys: &[K],
    max_changes: usize,
    max_rows: u64,
) -> Vec<std::ops::Range<usize>> {
    let max_changes = max_changes.max(1);
    // Each range's keys, from the previous range's end (or the first key) to the next's start.
    let mut pieces = Vec::with_capacity(ranges.len() + 1);
    let mut from = 0;
    for (i, range) in ranges.iter().enumerate() {
        let to = match ranges.get(i + 1) {
            Some(next) => sorted_keys.partition_point(|k| *k < next.start),
            None => sorted_keys.partition_point(|k| *k <= range.end),
        };
        pieces.push((from..to, range.rows));
        from = to;
    }
    let new_file_rows =
        usize::try_from(max_rows).map_or(max_changes, |rows| rows.clamp(1, max_changes));
    while from < sorted_keys.len() {
        let to = (from + new_file_rows).min(sorted_keys.len());
        pieces.push((from..to, 0));
        from = to;
    }
    let mut spans = Vec::new();
    // The span being packed and its weight: rows of the files it meets, plus its changes.
    let mut packing: Option<(std::ops::Range<usize>, u64)> = None;
    // Rows of ranges without changes after the span's last piece: joining a later piece would
    // bring their files inside the span's key range.
    let mut passed_rows = 0;
    for (keys, rows) in pieces {
        if keys.is_empty() {
            if packing.is_some() {
                passed_rows += rows;
            }
            continue;
        }
        let weight = rows + keys.len() as u64;
        match &mut packing {
            Some((span, packed))
                if span.len() + keys.len() <= max_changes
                    && *packed + passed_rows + weight <= max_rows =>
            {
                span.end = keys.end;
                *packed += passed_rows + weight;
            }
            _ => {
                spans.extend(packing.take().map(|(span, _)| span));
                packing = Some((keys, weight));
            }
        }
        passed_rows = 0;
    }
    spans.extend(packing.map(|(span, _)| span));
    if spans.is_empty() {
        spans.push(0..sorted_keys.len());
    }
    spans
}

/// SCD type 2: each change newer than the key's latest stored version becomes a version of its
/// own (`__START_AT` its sequence, `__END_AT` the next change's, or null while current); a delete
/// ends the current version without starting one. `__START_AT`/`__END_AT` hold the first
/// `sequence_by` column; the row keeps all of them.
async fn merge_versions(
    location: &str,
    silver: DeltaTable,
    keyed: RecordBatch,
    target_columns: &[String],
    cfg: &SilverConfig,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let ctx = SessionContext::new();
    ctx.register_batch("keyed", keyed).map_err(err)?;
    let keys = columns_sql(&cfg.keys, q, ", ");
    let order = columns_sql(&cfg.sequence_by, q, ", ");
    let newest_first = columns_sql(&cfg.sequence_by, |c| format!("{} DESC", q(c)), ", ");
    let changes = if silver.version().is_some() {
        // Changes no newer than the key's latest stored version were applied already, or are late.
        let provider = silver
            .table_provider()
            .await
            .map_err(|e| stage_err(STAGE, e))?;
        ctx.register_table("silver", provider).map_err(err)?;
        let same_key = columns_sql(&cfg.keys, |k| format!("c.{0} = s.{0}", q(k)), " AND ");
        format!(
            "(SELECT c.* FROM keyed c LEFT JOIN \
               (SELECT {keys}, {order} FROM \
                  (SELECT {keys}, {order}, \
                          ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {newest_first}) AS __rank \
                   FROM silver) \
                WHERE __rank = 1) s ON {same_key} \
             WHERE s.{first} IS NULL OR {newer})",
            first = q(&cfg.keys[0]),
            newer = sequence_newer(&cfg.sequence_by, "c", "s"),
        )
    } else {
        "keyed".to_owned()
    };
    let start = q(&cfg.sequence_by[0]);
    let (start_at, end_at) = (q(START_AT), q(END_AT));
    let by_key = format!("PARTITION BY {keys} ORDER BY {order}");
    let columns = columns_sql(target_columns, q, ", ");
    // With `track_history_*`, a change whose tracked columns equal the key's previous state (the
    // change before it, or the stored current version) starts no version: it folds into the
    // current one. Runs of such changes behind a version's first change make one version, with
    // the values of the run's last change.
    let tracked: Vec<&String> = target_columns
        .iter()
        .filter(|c| {
            cfg.track_history.keeps(c) && !cfg.keys.contains(c) && !cfg.sequence_by.contains(c)
        })
        .collect();
    let tracking_all = cfg.track_history == ColumnSelection::AllExcept(Vec::new());
    let all = |each: &dyn Fn(&str) -> String| {
        tracked
            .iter()
            .map(|c| each(c))
            .chain(std::iter::once("true".to_owned()))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let previous = |c: &str| format!("\"__previous_{c}\"");
    let lags: String = tracked
        .iter()
        .map(|c| format!(", LAG({}) OVER ({by_key}) AS {}", q(c), previous(c)))
        .collect();
    let stored_current = silver.version().is_some() && !tracking_all;
    let (current_join, same_as_stored) = match stored_current {
        true => (
            format!(
                "LEFT JOIN (SELECT * FROM silver WHERE {end_at} IS NULL) cur ON {}",
                columns_sql(&cfg.keys, |k| format!("l.{0} = cur.{0}", q(k)), " AND ")
            ),
            format!(
                "cur.{} IS NOT NULL AND {}",
                q(&cfg.keys[0]),
                all(&|c| format!("(l.{0} IS NOT DISTINCT FROM cur.{0})", q(c)))
            ),
        ),
        false => (String::new(), "false".to_owned()),
    };
    let same = match tracking_all {
        true => "false".to_owned(),
        false => format!(
            "CASE WHEN l.__is_delete THEN false WHEN l.__position = 1 THEN {same_as_stored} \
                  ELSE (NOT l.__previous_delete) AND {} END",
            all(&|c| format!("(l.{} IS NOT DISTINCT FROM l.{})", q(c), previous(c)))
        ),
    };
    let l_columns = target_columns
        .iter()
        .map(|c| format!("l.{}", q(c)))
        .chain(
            ["__is_delete", "__position", "__previous_delete"]
                .iter()
                .map(|c| format!("l.{c}")),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let versions = sql_batch(
        &ctx,
        &format!(
            "WITH c AS (SELECT *, COALESCE(({is_delete}), false) AS __is_delete FROM {changes} AS c0), \
             l AS (SELECT *, ROW_NUMBER() OVER ({by_key}) AS __position, \
                          LAG(__is_delete) OVER ({by_key}) AS __previous_delete{lags} FROM c), \
             s AS (SELECT {l_columns}, {same} AS __same FROM l {current_join}), \
             r AS (SELECT *, SUM(CASE WHEN __same THEN 0 ELSE 1 END) OVER ({by_key} \
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __run FROM s), \
             v AS (SELECT *, \
                          FIRST_VALUE({start}) OVER (PARTITION BY {keys}, __run ORDER BY {order}) AS __run_start, \
                          FIRST_VALUE(__is_delete) OVER (PARTITION BY {keys}, __run ORDER BY {order}) AS __run_is_delete, \
                          ROW_NUMBER() OVER (PARTITION BY {keys}, __run ORDER BY {newest_first}) AS __from_last \
                   FROM r), \
             runs AS (SELECT *, LEAD(__run_start) OVER (PARTITION BY {keys} ORDER BY __run) AS __next_start, \
                             ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY __run) AS __run_position \
                      FROM v WHERE __from_last = 1) \
             SELECT {columns}, __run_start AS {start_at}, __next_start AS {end_at}, 'insert' AS __action, \
                    false AS __fold \
             FROM runs WHERE __run >= 1 AND NOT __run_is_delete \
             UNION ALL \
             SELECT {columns}, __run_start AS {start_at}, \
                    CASE WHEN __run = 0 THEN __next_start ELSE __run_start END AS {end_at}, \
                    'current' AS __action, __run = 0 AS __fold \
             FROM runs WHERE __run_position = 1",
            is_delete = cfg.apply_as_deletes,
        ),
    )
    .await?;
    let mut stored: Vec<String> = target_columns.to_vec();
    stored.extend([START_AT.to_owned(), END_AT.to_owned()]);
    let silver = if silver.version().is_none() {
        create_table(
            STAGE,
            location,
            silver,
            &versions,
            &stored,
            &cfg.layer.partition_by,
        )
        .await?
    } else {
        silver
    };
    let before_version = silver.version();
    let source = ctx.read_batch(versions).map_err(err)?;
    // The stored current version ends where the first new version starts, and takes the values
    // of the changes folded into it.
    let stored_columns = stored_columns(&silver);
    let folded: Vec<&String> = target_columns
        .iter()
        .filter(|c| !tracked.contains(c) && !cfg.keys.contains(c) && stored_columns.contains(c))
        .collect();
    let (table, metrics) = silver
        .merge(
            source,
            format!(
                "{} AND target.{end_at} IS NULL AND source.__action = 'current'",
                keys_match(&cfg.keys)
            ),
        )
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(true)
        .with_commit_properties(commit_properties(txns.clone()))
        .when_matched_update(|u| {
            folded.iter().fold(
                u.update(Column::from_name(END_AT), format!("source.{end_at}")),
                |u, c| {
                    u.update(
                        Column::from_name(c.as_str()),
                        format!(
                            "CASE WHEN source.__fold THEN source.{0} ELSE target.{0} END",
                            q(c)
                        ),
                    )
                },
            )
        })
        .map_err(delta_err(STAGE, location))?
        .when_not_matched_insert(|i| {
            insert_from_source(i, "source.__action = 'insert'".into(), &stored)
        })
        .map_err(delta_err(STAGE, location))?
        .await
        .map_err(delta_err(STAGE, location))?;
    let table = record_progress_if_unchanged(STAGE, location, table, before_version, txns).await?;
    tracing::info!(
        table = %location,
        versions = metrics.num_target_rows_inserted,
        ended = metrics.num_target_rows_updated,
        version = ?table.version(),
        "silver merge (SCD type 2)"
    );
    Ok(table)
}

/// Splits the batch into its latest truncate (if any) and its keyed changes. Rows without a key
/// that are not truncates cannot be applied: they are dropped with a warning.
async fn split_truncates(
    ctx: &SessionContext,
    cfg: &SilverConfig,
) -> Result<(Option<RecordBatch>, RecordBatch)> {
    let has_key = cfg
        .keys
        .iter()
        .map(|k| format!("{} IS NOT NULL", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = |predicate: &str| format!("SELECT * FROM changes WHERE {predicate}");
    let run = |sql: String| async move { sql_batch(ctx, &sql).await };
    let keyed = run(sql(&has_key)).await?;
    let truncates = match &cfg.apply_as_truncates {
        Some(is_truncate) => {
            let newest_first = columns_sql(&cfg.sequence_by, |c| format!("{} DESC", q(c)), ", ");
            let truncates = run(format!(
                "{} ORDER BY {newest_first} LIMIT 1",
                sql(&format!("COALESCE(({is_truncate}), false)"))
            ))
            .await?;
            let keyed = run(sql(&format!(
                "NOT ({has_key}) AND NOT COALESCE(({is_truncate}), false)"
            )))
            .await?;
            warn_unkeyed(keyed.num_rows(), cfg);
            (truncates.num_rows() > 0).then_some(truncates)
        }
        None => {
            let unkeyed = run(sql(&format!("NOT ({has_key})"))).await?;
            warn_unkeyed(unkeyed.num_rows(), cfg);
            None
        }
    };
    Ok((truncates, keyed))
}

fn warn_unkeyed(rows: usize, cfg: &SilverConfig) {
    if rows > 0 {
        tracing::warn!(
            rows,
            keys = ?cfg.keys,
            apply_as_truncates = ?cfg.apply_as_truncates,
            "silver dropped changes without a key that are not truncates"
        );
    }
}

/// The tombstones of `keyed`'s keys, and every truncate's: all that a pass needs of the
/// tombstones table, read once.
async fn tombstones_of(
    keyed: &RecordBatch,
    tombstones: &DeltaTable,
    cfg: &SilverConfig,
) -> Result<RecordBatch> {
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let ctx = SessionContext::new();
    ctx.register_batch("keyed", keyed.clone()).map_err(err)?;
    let provider = tombstones
        .table_provider()
        .await
        .map_err(|e| stage_err(STAGE, e))?;
    ctx.register_table("tombstones", provider).map_err(err)?;
    let keys = columns_sql(&cfg.keys, q, ", ");
    let same_key = columns_sql(&cfg.keys, |k| format!("c.{0} = t.{0}", q(k)), " AND ");
    sql_batch(
        &ctx,
        &format!(
            "SELECT t.* FROM tombstones t \
             LEFT JOIN (SELECT DISTINCT {keys}, true AS __changed FROM keyed) c ON {same_key} \
             WHERE t.{TRUNCATE_FLAG} OR c.__changed IS NOT NULL"
        ),
    )
    .await
}

/// The keyed changes at least as new as their key's tombstone, and newer than the latest truncate
/// (`tombstones` holding at least those of their keys, and the truncates).
async fn drop_superseded(
    ctx: &SessionContext,
    keyed: RecordBatch,
    tombstones: &RecordBatch,
    cfg: &SilverConfig,
) -> Result<RecordBatch> {
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let schema = keyed.schema();
    ctx.register_batch("keyed", keyed).map_err(err)?;
    ctx.register_batch("tombstones", tombstones.clone())
        .map_err(err)?;
    let columns = schema
        .fields()
        .iter()
        .map(|f| format!("c.{}", q(f.name())))
        .collect::<Vec<_>>()
        .join(", ");
    let sequence = columns_sql(&cfg.sequence_by, q, ", ");
    let newest_first = columns_sql(&cfg.sequence_by, |c| format!("{} DESC", q(c)), ", ");
    let same_key = columns_sql(&cfg.keys, |k| format!("c.{0} = t.{0}", q(k)), " AND ");
    // A key can have several tombstones (two writers appending its first at once): any newer
    // than the change supersedes it.
    let sql = format!(
        "SELECT {columns} FROM keyed c \
         LEFT JOIN (SELECT 1 AS __one, {sequence} FROM tombstones WHERE {TRUNCATE_FLAG} \
                    ORDER BY {newest_first} LIMIT 1) w ON w.__one = 1 \
         WHERE NOT EXISTS (SELECT 1 FROM tombstones t WHERE NOT t.{TRUNCATE_FLAG} AND {same_key} AND {}) \
           AND (w.__one IS NULL OR {})",
        // A delete whose tombstone a pass recorded before losing its silver commit (to a crash
        // or another writer) is as new as its tombstone, and must still reach silver.
        sequence_newer(&cfg.sequence_by, "t", "c"),
        sequence_newer(&cfg.sequence_by, "c", "w"),
    );
    let kept = sql_batch(ctx, &sql).await?;
    // The query's schema can differ in nullability only; the keyed batch's is the contract.
    RecordBatch::try_new(schema, kept.columns().to_vec()).map_err(|e| stage_err(STAGE, e))
}

/// The keys and sequence of each row, flagged as a delete or a truncate, as the tombstones hold them.
async fn tombstone_rows(
    rows: &RecordBatch,
    cfg: &SilverConfig,
    truncate: bool,
) -> Result<RecordBatch> {
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let ctx = SessionContext::new();
    ctx.register_batch("rows", rows.clone()).map_err(err)?;
    let columns = cfg
        .keys
        .iter()
        .chain(&cfg.sequence_by)
        .map(|c| q(c))
        .collect::<Vec<_>>()
        .join(", ");
    let is_delete = match truncate {
        true => "false".to_owned(),
        false => format!("COALESCE(({}), false)", cfg.apply_as_deletes),
    };
    let keys = columns_sql(&cfg.keys, q, ", ");
    let newest_first = columns_sql(&cfg.sequence_by, |c| format!("{} DESC", q(c)), ", ");
    // A key's latest change decides its tombstone: SCD type 2 batches hold several per key,
    // type 1 batches one (and sorting a large batch for nothing costs seconds).
    let sql = match cfg.scd_type {
        ScdType::One => format!(
            "SELECT {columns}, {is_delete} AS {DELETE_FLAG}, {truncate} AS {TRUNCATE_FLAG} FROM rows"
        ),
        ScdType::Two => format!(
            "SELECT {columns}, {DELETE_FLAG}, {TRUNCATE_FLAG} FROM \
               (SELECT {columns}, {is_delete} AS {DELETE_FLAG}, {truncate} AS {TRUNCATE_FLAG}, \
                       ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {newest_first}) AS __rank \
                FROM rows) \
             WHERE __rank = 1"
        ),
    };
    sql_batch(&ctx, &sql).await
}

/// `columns`, each written by `each`, joined by `separator`: a fragment of the SQL below.
/// The columns `table` has now (none before its first version).
fn stored_columns(table: &DeltaTable) -> Vec<String> {
    table
        .snapshot()
        .map(|s| s.schema().fields().map(|f| f.name().clone()).collect())
        .unwrap_or_default()
}

fn columns_sql(columns: &[String], each: impl Fn(&str) -> String, separator: &str) -> String {
    columns
        .iter()
        .map(|c| each(c))
        .collect::<Vec<_>>()
        .join(separator)
}

/// Runs `sql` and gathers its rows in one batch of the query's schema (empty when no rows).
async fn sql_batch(ctx: &SessionContext, sql: &str) -> Result<RecordBatch> {
    let err = |e: deltalake::datafusion::error::DataFusionError| {
        stage_err(STAGE, format!("{e} (in `{sql}`)"))
    };
    let df = ctx.sql(sql).await.map_err(err)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(err)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| stage_err(STAGE, e))
}

/// The rows of `batch` whose boolean `column` is true.
fn only_true(batch: &RecordBatch, column: &str) -> Result<RecordBatch> {
    let flags = batch
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| stage_err("silver", format!("no boolean column `{column}`")))?;
    arrow::compute::filter_record_batch(batch, flags).map_err(|e| stage_err("silver", e))
}

/// Records deletes and truncates in the tombstones, and forgets the tombstone of a key that a
/// newer change brought back. `rows` holds keys, sequence and the two flags (a truncate's keys are
/// null), all newer than what the tombstones hold.
///
/// Most deletes are a key's first: they are appended, which rewrites no file. Only keys
/// that already have a tombstone take a MERGE, which rewrites the files holding them.
async fn record_tombstones(
    location: &str,
    tombstones: DeltaTable,
    read: Option<RecordBatch>,
    rows: &RecordBatch,
    cfg: &SilverConfig,
) -> Result<DeltaTable> {
    let stored: Vec<String> = cfg
        .keys
        .iter()
        .chain(&cfg.sequence_by)
        .cloned()
        .chain([TRUNCATE_FLAG.to_owned()])
        .collect();
    let tombstones = if tombstones.version().is_none() {
        create_table(STAGE, location, tombstones, rows, &stored, &[]).await?
    } else {
        tombstones
    };
    let (first, known) = split_by_tombstone(&tombstones, read, rows, cfg, &stored).await?;
    let mut table = tombstones;
    if known.num_rows() > 0 {
        table = merge_tombstones(location, table, known, cfg, &stored).await?;
    }
    if first.num_rows() > 0 {
        table = table
            .write(vec![first])
            .with_save_mode(SaveMode::Append)
            .await
            .map_err(delta_err(STAGE, location))?;
    }
    compact_if_fragmented(location, table).await
}

/// `rows` split into the first tombstones of their keys (deletes and truncates of keys without
/// one, as stored), and the rows of keys that have one (as given). `read`: the tombstones of at
/// least `rows`' keys as already read from `tombstones`, if they were.
async fn split_by_tombstone(
    tombstones: &DeltaTable,
    read: Option<RecordBatch>,
    rows: &RecordBatch,
    cfg: &SilverConfig,
    stored: &[String],
) -> Result<(RecordBatch, RecordBatch)> {
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(STAGE, e);
    let ctx = SessionContext::new();
    ctx.register_batch("rows", rows.clone()).map_err(err)?;
    match read {
        Some(read) => {
            ctx.register_batch("tombstones", read).map_err(err)?;
        }
        None => {
            let provider = tombstones
                .table_provider()
                .await
                .map_err(|e| stage_err(STAGE, e))?;
            ctx.register_table("tombstones", provider).map_err(err)?;
        }
    }
    // One read of the tombstones: each row flagged with whether its key has one.
    let keys = columns_sql(&cfg.keys, q, ", ");
    let same_key = columns_sql(&cfg.keys, |k| format!("r.{0} = t.{0}", q(k)), " AND ");
    let flagged = sql_batch(
        &ctx,
        &format!(
            "SELECT r.*, t.{first_key} IS NOT NULL AS __has_tombstone FROM rows r \
             LEFT JOIN (SELECT DISTINCT {keys} FROM tombstones WHERE NOT {TRUNCATE_FLAG}) t ON {same_key}",
            first_key = q(&cfg.keys[0]),
        ),
    )
    .await?;
    ctx.register_batch("flagged", flagged).map_err(err)?;
    let first = sql_batch(
        &ctx,
        &format!(
            "SELECT {} FROM flagged WHERE ({DELETE_FLAG} OR {TRUNCATE_FLAG}) AND NOT __has_tombstone",
            columns_sql(stored, q, ", ")
        ),
    )
    .await?;
    let known = sql_batch(
        &ctx,
        "SELECT * EXCLUDE (__has_tombstone) FROM flagged WHERE __has_tombstone",
    )
    .await?;
    Ok((first, known))
}

/// Moves the tombstones of `rows`' keys to newer deletes, and forgets those a newer change
/// brought back.
async fn merge_tombstones(
    location: &str,
    tombstones: DeltaTable,
    rows: RecordBatch,
    cfg: &SilverConfig,
    stored: &[String],
) -> Result<DeltaTable> {
    let ctx = SessionContext::new();
    let source = ctx.read_batch(rows).map_err(|e| stage_err(STAGE, e))?;
    let src = |c: &str| Expr::Column(Column::new(Some("source"), c));
    let newer = sequence_newer(&cfg.sequence_by, "source", "target");
    let (table, _) = tombstones
        .merge(source, keys_match(&cfg.keys))
        .with_source_alias("source")
        .with_target_alias("target")
        // Only newer changes move a tombstone: a pass working from an older view of bronze
        // (another writer's, or its own before a retry) must not undo a later delete's.
        .when_matched_update(|u| {
            cfg.sequence_by.iter().fold(
                u.predicate(format!("source.{DELETE_FLAG} AND {newer}")),
                |u, c| u.update(Column::from_name(c.as_str()), src(c)),
            )
        })
        .map_err(delta_err(STAGE, location))?
        .when_matched_delete(|d| d.predicate(format!("NOT source.{DELETE_FLAG} AND {newer}")))
        .map_err(delta_err(STAGE, location))?
        .when_not_matched_insert(|i| insert_from_source(i, format!("source.{DELETE_FLAG}"), stored))
        .map_err(delta_err(STAGE, location))?
        .await
        .map_err(delta_err(STAGE, location))?;
    Ok(table)
}

/// Appended tombstones come a small file per pass, and every pass reads them all: past
/// `TOMBSTONE_FILES` files they are compacted into one. A compaction that loses to another
/// writer is left for the next pass.
async fn compact_if_fragmented(location: &str, table: DeltaTable) -> Result<DeltaTable> {
    const TOMBSTONE_FILES: usize = 16;
    let files = table
        .get_file_uris()
        .map_err(delta_err(STAGE, location))?
        .count();
    if files <= TOMBSTONE_FILES {
        return Ok(table);
    }
    match table
        .clone()
        .optimize()
        .await
        .map_err(delta_err(STAGE, location))
    {
        Ok((table, _)) => Ok(table),
        Err(e) if e.is_commit_conflict() => {
            tracing::info!(table = %location, error = %e, "tombstone compaction lost a commit race; left for the next pass");
            Ok(table)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the silver rows older than the truncate (a row newer than it came from a change
/// delivered before the truncate and must stay).
async fn truncate_older(
    location: &str,
    silver: DeltaTable,
    truncate: &RecordBatch,
    cfg: &SilverConfig,
) -> Result<DeltaTable> {
    let bound = |column: &String| -> Result<(Expr, Expr)> {
        let array = truncate
            .column_by_name(column)
            .ok_or_else(|| stage_err(STAGE, format!("no column `{column}`")))?;
        let value = ScalarValue::try_from_array(array, 0).map_err(|e| stage_err(STAGE, e))?;
        Ok((Expr::Column(Column::from_name(column.as_str())), lit(value)))
    };
    // (a, b) < (x, y) written out: a < x OR (a = x AND b < y).
    let mut older: Option<Expr> = None;
    for i in 0..cfg.sequence_by.len() {
        let (column, value) = bound(&cfg.sequence_by[i])?;
        let mut clause = column.lt(value);
        for earlier in &cfg.sequence_by[..i] {
            let (column, value) = bound(earlier)?;
            clause = column.eq(value).and(clause);
        }
        older = Some(match older {
            Some(o) => o.or(clause),
            None => clause,
        });
    }
    let Some(older) = older else {
        return Ok(silver);
    };
    let (table, metrics) = silver
        .delete()
        .with_predicate(older)
        .await
        .map_err(delta_err(STAGE, location))?;
    tracing::info!(table = %location, deleted = metrics.num_deleted_rows, "silver truncated");
    Ok(table)
}

/// MERGE of keyed changes (already freed of superseded ones) into silver, in one commit carrying
/// the stage's progress.
async fn merge_keyed(
    location: &str,
    silver: DeltaTable,
    changes: RecordBatch,
    target_columns: &[String],
    cfg: &SilverConfig,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let before_version = silver.version();
    let schema = changes.schema();
    // Only columns where some change carries the placeholder need the CASE that keeps the stored
    // value; evaluating it for every column of every row costs a fair share of a large MERGE.
    let changes_with_placeholders: Vec<String> = target_columns
        .iter()
        .filter(|c| has_placeholder(&changes, c))
        .cloned()
        .collect();
    let ctx = SessionContext::new();
    let source = ctx.read_batch(changes).map_err(|e| stage_err(STAGE, e))?;
    let newer = sequence_newer(&cfg.sequence_by, "source", "target");
    let is_delete = format!(
        "COALESCE(({}), false)",
        qualify_source(&cfg.apply_as_deletes)
    );
    let is_text = |c: &str| {
        schema.field_with_name(c).is_ok_and(|f| {
            matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        })
    };
    // Columns the source gained since silver was written: the MERGE adds them, and no stored
    // value of theirs exists to keep.
    let stored = stored_columns(&silver);
    let is_stored = |c: &str| stored.iter().any(|s| s == c);
    let toasted_columns: Vec<&String> = target_columns
        .iter()
        .filter(|c| is_text(c) && !cfg.keys.contains(c) && is_stored(c))
        .collect();
    let any_placeholder = match toasted_columns.is_empty() {
        true => "false".to_owned(),
        false => toasted_columns
            .iter()
            .map(|c| format!("target.{} = '{UNAVAILABLE_VALUE}'", q(c)))
            .collect::<Vec<_>>()
            .join(" OR "),
    };
    // An update's value of a column: an unchanged TOASTed value keeps the stored one, and with
    // `ignore_null_updates` so does a null.
    let carries_placeholder = |c: &str| changes_with_placeholders.iter().any(|p| p.as_str() == c);
    let updated = |c: &str| {
        let mut value = format!("source.{}", q(c));
        if carries_placeholder(c) && is_stored(c) {
            value = format!(
                "CASE WHEN {value} = '{UNAVAILABLE_VALUE}' THEN target.{0} ELSE {value} END",
                q(c)
            );
        }
        if cfg.ignore_null_updates && !cfg.keys.iter().any(|k| k == c) && is_stored(c) {
            value = format!("COALESCE({value}, target.{})", q(c));
        }
        value
    };
    // Columns dropped from the source stay in silver, null in every row changed since.
    let dropped: Vec<&String> = stored
        .iter()
        .filter(|c| !target_columns.contains(c) && cfg.columns.keeps(c))
        .collect();
    let (table, metrics) = silver
        .merge(source, keys_match(&cfg.keys))
        .with_source_alias("source")
        .with_target_alias("target")
        // A column added to the source becomes a column of silver (null in rows not changed since).
        .with_merge_schema(true)
        .with_commit_properties(commit_properties(txns.clone()))
        .with_writer_properties(writer_properties(cfg, Compression::SNAPPY))
        .when_matched_delete(|d| d.predicate(format!("{is_delete} AND {newer}")))
        .map_err(delta_err(STAGE, location))?
        .when_matched_update(|u| {
            let u = target_columns.iter().fold(
                u.predicate(format!("NOT {is_delete} AND {newer}")),
                |u, c| u.update(Column::from_name(c.as_str()), updated(c)),
            );
            dropped.iter().fold(u, |u, c| {
                u.update(Column::from_name(c.as_str()), "NULL")
            })
        })
        .map_err(delta_err(STAGE, location))?
        .when_matched_update(|u| {
            // An older change delivered late still knows what an update applied before it could
            // not: the values behind its unchanged-TOAST placeholders.
            toasted_columns.iter().fold(
                u.predicate(format!("NOT {is_delete} AND ({any_placeholder})")),
                |u, c| {
                    u.update(
                        Column::from_name(c.as_str()),
                        format!(
                            "CASE WHEN target.{0} = '{UNAVAILABLE_VALUE}' THEN source.{0} ELSE target.{0} END",
                            q(c)
                        ),
                    )
                },
            )
        })
        .map_err(delta_err(STAGE, location))?
        .when_not_matched_insert(|i| {
            insert_from_source(i, format!("NOT {is_delete}"), target_columns)
        })
        .map_err(delta_err(STAGE, location))?
        .await
        .map_err(delta_err(STAGE, location))?;
    let table = record_progress_if_unchanged(STAGE, location, table, before_version, txns).await?;
    tracing::info!(
        table = %location,
        inserted = metrics.num_target_rows_inserted,
        updated = metrics.num_target_rows_updated,
        deleted = metrics.num_target_rows_deleted,
        copied = metrics.num_target_rows_copied,
        files_scanned = metrics.num_target_files_scanned,
        files_skipped = metrics.num_target_files_skipped_during_scan,
        ms = metrics.execution_time_ms,
        version = ?table.version(),
        "silver merge"
    );
    Ok(table)
}

/// Parquet settings for silver's files, with `compression` as delta-rs would choose it (Snappy
/// for MERGEs, zstd for OPTIMIZE), but without dictionaries for the key and sequence columns: their
/// values are distinct, so a dictionary only costs each rewrite a hash of every value before the
/// writer gives it up.
pub(super) fn writer_properties(cfg: &SilverConfig, compression: Compression) -> WriterProperties {
    cfg.keys
        .iter()
        .chain(&cfg.sequence_by)
        .fold(
            WriterProperties::builder()
                .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
                .set_compression(compression),
            |props, column| {
                props.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false)
            },
        )
        .build()
}

/// Whether text column `column` of `batch` holds Debezium's unchanged-TOAST placeholder.
fn has_placeholder(batch: &RecordBatch, column: &str) -> bool {
    let Some(values) = batch.column_by_name(column) else {
        return false;
    };
    use arrow::array::{LargeStringArray, StringArray, StringViewArray};
    use arrow::compute::kernels::cmp::eq;
    let found = match values.data_type() {
        DataType::Utf8 => eq(values, &StringArray::new_scalar(UNAVAILABLE_VALUE)),
        DataType::LargeUtf8 => eq(values, &LargeStringArray::new_scalar(UNAVAILABLE_VALUE)),
        DataType::Utf8View => eq(values, &StringViewArray::new_scalar(UNAVAILABLE_VALUE)),
        _ => return false,
    };
    found.is_ok_and(|found| found.true_count() > 0)
}

/// `(newer.a, newer.b) > (older.a, older.b)` written out, so a repeated or older event never
/// overwrites a newer one.
fn sequence_newer(columns: &[String], newer: &str, older: &str) -> String {
    let mut clauses = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let mut parts: Vec<String> = columns[..i]
            .iter()
            .map(|p| format!("{newer}.{0} = {older}.{0}", q(p)))
            .collect();
        parts.push(format!("{newer}.{0} > {older}.{0}", q(c)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, rows: u64) -> FileRange<i64> {
        FileRange { start, end, rows }
    }

    fn three_files_of_100_rows() -> [FileRange<i64>; 3] {
        [
            range(1, 100, 100),
            range(101, 200, 100),
            range(201, 300, 100),
        ]
    }

    #[test]
    fn overlapping_file_ranges_are_joined_and_their_rows_added() {
        let sorted = vec![
            range(1, 10, 5),
            range(5, 20, 5),
            range(21, 30, 7),
            range(30, 31, 1),
        ];
        assert_eq!(joined(sorted), vec![range(1, 20, 10), range(21, 31, 8)]);
    }

    #[test]
    fn changes_are_packed_along_file_ranges_up_to_the_row_bound() {
        let ranges = three_files_of_100_rows();
        // Two changes in each range: each range with its changes weighs 102 rows.
        let keys = [5, 50, 150, 160, 250, 260];
        assert_eq!(merge_spans(&ranges, &keys, 1_000, 204), vec![0..4, 4..6]);
        assert_eq!(
            merge_spans(&ranges, &keys, 1_000, 150),
            vec![0..2, 2..4, 4..6]
        );
        assert_eq!(
            merge_spans(&ranges, &keys, 3, 10_000),
            vec![0..2, 2..4, 4..6]
        );
        assert_eq!(merge_spans(&ranges, &keys, 1_000, 10_000), vec![0..6]);
    }

    #[test]
    fn a_range_without_changes_between_two_counts_toward_the_bound() {
        let ranges = three_files_of_100_rows();
        let keys = [5, 250];
        // Packing both changes would bring the middle range's files into the MERGE's key range.
        assert_eq!(merge_spans(&ranges, &keys, 1_000, 250), vec![0..1, 1..2]);
        assert_eq!(merge_spans(&ranges, &keys, 1_000, 302), vec![0..2]);
    }

    #[test]
    fn keys_past_every_file_join_the_last_range_until_it_is_full_then_go_alone() {
        let ranges = [range(1, 100, 100)];
        let new_keys: Vec<i64> = (101..=110).collect();
        let with_update: Vec<i64> = std::iter::once(50)
            .chain(new_keys.iter().copied())
            .collect();
        assert_eq!(merge_spans(&ranges, &with_update, 1_000, 200), vec![0..11]);
        // The last range is full: the new keys touch no file and go in MERGEs of their own, at
        // most `max_changes` (and `max_rows`) each, so silver grows by new files.
        assert_eq!(
            merge_spans(&ranges, &with_update, 4, 100),
            vec![0..1, 1..5, 5..9, 9..11]
        );
        assert_eq!(merge_spans(&[], &new_keys, 4, 100), vec![0..4, 4..8, 8..10]);
        assert_eq!(
            merge_spans(&[], &new_keys, 100, 3),
            vec![0..3, 3..6, 6..9, 9..10]
        );
    }

    #[test]
    fn a_range_holding_more_than_the_bounds_is_still_one_merge() {
        let ranges = [range(1, 100, 1_000)];
        let keys: Vec<i64> = (1..=10).collect();
        assert_eq!(merge_spans(&ranges, &keys, 3, 50), vec![0..10]);
    }
}
