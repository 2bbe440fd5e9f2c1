//! Silver's APPLY CHANGES at size: 1,000,000 changes (700,000 updates and 100,000 deletes of
//! existing keys spread over the whole table, 200,000 inserts) merged into a 5,000,000-row silver
//! table, by weir and by one plain `deltalake` MERGE with the same ordering rule, each on its own
//! copy of the table and in its own process, so that each peak RSS is its own.
//!
//! The rows are the bronze component's output for onlineshop change events (built as the
//! transforms benchmark builds them), with keys, operations, sequence numbers and quantities set
//! per change. After both runs the two tables must hold the same rows.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::prelude::SessionContext;
use weir_tests::TestPipeline;

const TABLE_ROWS: i64 = 5_000_000;
const UPDATES: i64 = 700_000;
const DELETES: i64 = 100_000;
const INSERTS: i64 = 200_000;
/// Rows per write while building the table, as bronze commits them.
const BUILD_ROWS: i64 = 500_000;
/// Multiplier walking all of 1..=TABLE_ROWS without repeats (coprime with 5,000,000 = 2⁶·5⁷).
const STRIDE: i64 = 1_000_003;

pub async fn run() -> Result<()> {
    let t = TestPipeline::new("bench_merge").await?;
    let pipeline = t.pipeline()?;
    let template = template_rows()?;
    let location = &pipeline.silver.layer.table;
    let silver = Path::new(location.strip_prefix("file://").unwrap_or(location)).to_path_buf();

    println!("building a {TABLE_ROWS}-row silver table with weir, {BUILD_ROWS} inserts at a time…");
    let started = Instant::now();
    let mut id = 1;
    while id <= TABLE_ROWS {
        let ids: Vec<i64> = (id..(id + BUILD_ROWS).min(TABLE_ROWS + 1)).collect();
        let ops = vec!["c"; ids.len()];
        let quantities: Vec<i64> = ids.iter().map(|i| i % 24 + 1).collect();
        weir::lakehouse::apply_to_silver(
            &pipeline,
            change_rows(&template, &ids, &ops, &quantities, 0)?,
        )
        .await?;
        id += BUILD_ROWS;
    }
    let (files, bytes) = data_files(&silver)?;
    println!(
        "  done in {:.1} s: {files} data files, {} MiB",
        started.elapsed().as_secs_f64(),
        bytes >> 20
    );
    let copy = t.dir.path().join("plain-merge");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&silver)
        .arg(&copy)
        .status()?;
    if !status.success() {
        bail!("copying the table failed: {status}");
    }

    let weir = contender("weir", &t.pipeline_path(), &silver)?;
    let plain = contender("deltalake", &t.pipeline_path(), &copy)?;

    let (weir_rows, weir_sum) = count_and_sum(&silver).await?;
    let (plain_rows, plain_sum) = count_and_sum(&copy).await?;
    let expected_rows = TABLE_ROWS - DELETES + INSERTS;
    if weir_rows != expected_rows || plain_rows != expected_rows || weir_sum != plain_sum {
        bail!(
            "the tables differ: weir {weir_rows} rows (quantity sum {weir_sum}), deltalake {plain_rows} rows ({plain_sum}); expected {expected_rows} rows"
        );
    }

    let changes = (UPDATES + DELETES + INSERTS) as f64;
    println!(
        "\nsilver merge of {changes} changes ({UPDATES} updates, {DELETES} deletes, {INSERTS} inserts) into {TABLE_ROWS} rows"
    );
    for (name, r) in [
        ("weir APPLY CHANGES (by key range)", &weir),
        ("deltalake MERGE (one statement)  ", &plain),
    ] {
        println!(
            "  {name}  {:7.1} s  {:>9.0} changes/s  peak RSS {:>6} MiB",
            r.secs,
            changes / r.secs,
            r.peak_kib >> 10
        );
    }
    println!(
        "  of which the 1,000,000 changes in memory, in both     {:>6} MiB",
        weir.changes_bytes >> 20
    );
    println!(
        "  ratio weir / deltalake: speed {:.2}, peak RSS {:.2}",
        plain.secs / weir.secs,
        weir.peak_kib as f64 / plain.peak_kib as f64
    );
    println!("  both tables hold {expected_rows} rows with the same quantities");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "goal (issue 5): faster than deltalake MERGE and with less memory: {}",
        verdict(weir.secs < plain.secs && weir.peak_kib < plain.peak_kib)
    );
    Ok(())
}

/// Runs one side of the benchmark in a process of its own, which prints its figures.
fn contender(name: &str, pipeline: &Path, table: &Path) -> Result<Measured> {
    println!("merging with {name}…");
    let output = Command::new(std::env::current_exe()?)
        .args(["merge-contender", name])
        .arg(pipeline)
        .arg(table)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {name} merge"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the {name} merge failed ({}): {stdout}", output.status);
    }
    let figures: Vec<f64> = stdout
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [secs, peak_kib, changes_bytes] = figures[..] else {
        bail!("the {name} merge printed {stdout:?}");
    };
    Ok(Measured {
        secs,
        peak_kib: peak_kib as u64,
        changes_bytes: changes_bytes as u64,
    })
}

struct Measured {
    secs: f64,
    peak_kib: u64,
    changes_bytes: u64,
}

/// The child process of [`contender`]: builds the changes, merges them into `table` the way
/// `name` says, and prints seconds, peak RSS in KiB and the changes' size in bytes.
pub async fn contender_main(name: &str, pipeline: &Path, table: &Path) -> Result<()> {
    let pipeline = weir::config::Pipeline::load(pipeline)?;
    let changes = changes(&template_rows()?)?;
    let changes_bytes = changes.get_array_memory_size();
    let started = Instant::now();
    match name {
        "weir" => weir::lakehouse::apply_to_silver(&pipeline, changes).await?,
        "deltalake" => plain_merge(table, changes).await?,
        other => bail!("unknown contender {other}"),
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{secs} {} {changes_bytes}", crate::capture::peak_rss_kib()?);
    Ok(())
}

/// The MERGE a deltalake user writes for the same semantics: by key, newer sequence wins, deletes
/// by `op`.
async fn plain_merge(table: &Path, changes: RecordBatch) -> Result<()> {
    let url = deltalake::ensure_table_uri(table.to_string_lossy())?;
    let table = deltalake::DeltaTable::try_from_url(url).await?;
    let columns: Vec<String> = table
        .snapshot()?
        .schema()
        .fields()
        .map(|f| f.name().clone())
        .collect();
    let newer = "(source.commit_lsn > target.commit_lsn OR (source.commit_lsn = target.commit_lsn AND source.lsn > target.lsn))";
    let source = SessionContext::new().read_batch(changes)?;
    table
        .merge(source, "target.id = source.id")
        .with_source_alias("source")
        .with_target_alias("target")
        .when_matched_delete(|d| d.predicate(format!("source.op = 'd' AND {newer}")))?
        .when_matched_update(|u| {
            columns.iter().fold(
                u.predicate(format!("source.op <> 'd' AND {newer}")),
                |u, c| u.update(Column::from_name(c.as_str()), format!("source.{c}")),
            )
        })?
        .when_not_matched_insert(|i| {
            columns
                .iter()
                .fold(i.predicate("source.op <> 'd'"), |i, c| {
                    i.set(Column::from_name(c.as_str()), format!("source.{c}"))
                })
        })?
        .await?;
    Ok(())
}

/// The bench's 1,000,000 changes, one per key, keys spread over the whole table.
fn changes(template: &RecordBatch) -> Result<RecordBatch> {
    let existing = |k: i64| (k * STRIDE) % TABLE_ROWS + 1;
    let mut ids: Vec<i64> = (0..UPDATES + DELETES).map(existing).collect();
    ids.extend(TABLE_ROWS + 1..=TABLE_ROWS + INSERTS);
    let ops: Vec<&str> = (0..ids.len() as i64)
        .map(|k| match k {
            k if k < UPDATES => "u",
            k if k < UPDATES + DELETES => "d",
            _ => "c",
        })
        .collect();
    let quantities: Vec<i64> = ids.iter().map(|i| 1_000 + i % 7).collect();
    change_rows(template, &ids, &ops, &quantities, 1 << 40)
}

/// Rows shaped as the silver component's output: the template's rows in turn, with the given
/// keys, operations and quantities, sequenced after `sequence_base`.
fn change_rows(
    template: &RecordBatch,
    ids: &[i64],
    ops: &[&str],
    quantities: &[i64],
    sequence_base: i64,
) -> Result<RecordBatch> {
    let picks =
        UInt32Array::from_iter_values((0..ids.len()).map(|i| (i % template.num_rows()) as u32));
    let rows = arrow::compute::take_record_batch(template, &picks)?;
    let sequence: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..ids.len() as i64).map(|i| sequence_base + i * 64),
    ));
    let replaced = |name: &str| -> Option<ArrayRef> {
        match name {
            "id" => Some(Arc::new(Int64Array::from(ids.to_vec()))),
            "op" => Some(Arc::new(StringArray::from(ops.to_vec()))),
            "quantity" => Some(Arc::new(Int64Array::from(quantities.to_vec()))),
            "commit_lsn" | "lsn" => Some(sequence.clone()),
            _ => None,
        }
    };
    let columns = rows
        .schema()
        .fields()
        .iter()
        .zip(rows.columns())
        .map(|(f, c)| replaced(f.name()).unwrap_or_else(|| c.clone()))
        .collect();
    Ok(RecordBatch::try_new(rows.schema(), columns)?)
}

/// Complete onlineshop rows as the bronze component makes them from insert events.
fn template_rows() -> Result<RecordBatch> {
    let landing = crate::transforms::landing_batches(10_000)?;
    let bronze = bronze_cleanup::cleanup(&landing[0]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let ops = bronze
        .column_by_name("op")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .context("bronze rows without op")?;
    let inserts = arrow::compute::kernels::cmp::eq(ops, &StringArray::new_scalar("c"))?;
    Ok(arrow::compute::filter_record_batch(&bronze, &inserts)?)
}

/// Data files under a table (change data and tombstones excluded), and their bytes.
fn data_files(table: &Path) -> Result<(usize, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(table)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".parquet") {
            count += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((count, bytes))
}

/// Rows and the sum of `quantity` of the table's current version.
async fn count_and_sum(table: &Path) -> Result<(i64, i64)> {
    let url = deltalake::ensure_table_uri(table.to_string_lossy())?;
    let table = deltalake::DeltaTable::try_from_url(url).await?;
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await?)?;
    let batches = ctx
        .sql("SELECT count(*), CAST(sum(quantity) AS BIGINT) FROM t")
        .await?
        .collect()
        .await?;
    let batch = batches.first().context("no result")?;
    let value = |i: usize| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(0))
            .context("not a BIGINT")
    };
    Ok((value(0)?, value(1)?))
}
