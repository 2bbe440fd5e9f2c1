//! End-to-end freshness: the time from a change's commit in PostgreSQL to the moment a reader of
//! silver can see it, while a workload runs at a target rate against a running `weir run` (all
//! stages, one process, local folders).
//!
//! A change becomes visible with the silver commit that holds it: its freshness is that commit's
//! timestamp less the row's `op_ts` (the commit time PostgreSQL sent), read from silver's change
//! feed once the run has drained, so that measuring costs the pipeline nothing while it runs. Rows
//! a later change overwrote within the same silver commit are not sampled; deletes are not sampled.
//! The rates: 1,000 and 10,000 changes/s, then doubling from 20,000 while weir keeps up (silver
//! catches up within 10 s of the workload's end). Each layer's pass times come from weir's log,
//! which is kept in `target/bench-freshness-weir.log`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use deltalake::datafusion::physical_plan::collect;
use deltalake::datafusion::prelude::SessionContext;
use tokio_util::sync::CancellationToken;
use weir_tests::{RunningWeir, TestPipeline, onlineshop};

const TABLE_ROWS: u64 = 100_000;
const RUN: Duration = Duration::from_secs(30);
/// What silver must show, as the source does, once it has caught up.
const SUMMARY_SQL: &str = "SELECT CAST(count(*) AS VARCHAR) AS n, CAST(max(id) AS VARCHAR) AS m, CAST(sum(quantity) AS VARCHAR) AS q FROM onlineshop";

pub struct Freshness {
    pub rate: f64,
    pub achieved: f64,
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// p50 and p99 of the same changes' time to bronze: what capture, Kafka, landing and bronze
    /// take of the total, silver's pass (and the wait for it) being the rest.
    pub bronze_p50: f64,
    pub bronze_p99: f64,
    /// p50 and p99 of the time to a Debezium event (capture) and to a landing file (Kafka and
    /// landing), from the landing files' `source_ts_ms`, `ts_ms` and modification times.
    pub event_p50: f64,
    pub event_p99: f64,
    pub landed_p50: f64,
    pub landed_p99: f64,
    /// Seconds from the workload's end until silver held its last change; `None` if not within 10 s.
    pub drained: Option<f64>,
}

pub async fn run() -> Result<()> {
    let t = TestPipeline::new("bench_freshness").await?;
    onlineshop::load(&t.db, "onlineshop", TABLE_ROWS, 7).await?;
    let pipeline = t.pipeline_with(|text| {
        // Files as soon as 100 ms of changes have gathered, and bronze looking for them as often:
        // freshness over file count and listing.
        text.replace("[landing]\n", "[landing]\nmax_file_age_ms = 100\n")
            .replace("[pipeline]\n", "[pipeline]\ntrigger_interval_ms = 100\n")
    })?;
    let mut weir = RunningWeir::start(
        &t,
        "freshness",
        &[],
        &[("WEIR_LOG", "info,weir::lakehouse=debug")],
    )?;
    let pid = weir.child.id().context("weir exited at once")?;
    println!(
        "freshness: {TABLE_ROWS} generated rows, then workloads of {} s each (60% inserts, 30% updates, 10% deletes)",
        RUN.as_secs()
    );
    wait_for_rows(&pipeline, TABLE_ROWS as usize, &weir).await?;
    println!(
        "  {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "rate/s", "achieved", "samples", "p50 s", "p99 s", "max s", "drained s"
    );
    let mut results = Vec::new();
    let mut peak = crate::capture::peak_rss_kib_of(&pid.to_string())?;
    let mut rate = 1_000.0;
    // A quicker look at the low rates: WEIR_FRESHNESS_MAX_RATE=10000 stops after that rate.
    let max_rate: f64 = match std::env::var("WEIR_FRESHNESS_MAX_RATE") {
        Ok(v) => v
            .parse()
            .context("WEIR_FRESHNESS_MAX_RATE is not a number")?,
        Err(_) => 160_000.0,
    };
    loop {
        let log_from = weir.log().len();
        // The kernel's peak RSS restarts at the current RSS: this rate's peak alone.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        let r = measure(&t, &pipeline, rate).await?;
        let rate_peak = crate::capture::peak_rss_kib_of(&pid.to_string())?;
        peak = peak.max(rate_peak);
        println!(
            "  {:>8.0} {:>9.0} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>10}",
            r.rate,
            r.achieved,
            r.samples,
            r.p50,
            r.p99,
            r.max,
            r.drained
                .map_or("no (>10)".to_owned(), |s| format!("{s:.1}"))
        );
        println!(
            "           p50/p99 to event {:.2}/{:.2} s, to landing file {:.2}/{:.2} s, to bronze {:.2}/{:.2} s",
            r.event_p50, r.event_p99, r.landed_p50, r.landed_p99, r.bronze_p50, r.bronze_p99,
        );
        println!(
            "           peak RSS {} MiB; layer passes p50/max: {}",
            rate_peak / 1024,
            pass_times(&weir.log()[log_from..])
        );
        let kept_up = r.drained.is_some();
        results.push(r);
        if weir.child.try_wait()?.is_some() {
            bail!("weir exited during the workload:\n{}", weir.log());
        }
        rate = if rate < 10_000.0 {
            10_000.0
        } else {
            rate * 2.0
        };
        if !kept_up || rate > max_rate {
            break;
        }
    }
    weir.interrupt().await?;
    // weir's own log of the run (debug level for the layers), for a closer look at its passes.
    let kept_log =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-freshness-weir.log");
    std::fs::write(&kept_log, weir.log())?;
    let sustained = results
        .iter()
        .filter(|r| r.drained.is_some())
        .map(|r| r.achieved)
        .fold(0.0, f64::max);
    println!("  highest rate weir kept up with: {sustained:.0} changes/s");
    println!(
        "  peak RSS of the weir process over all runs: {} MiB",
        peak / 1024
    );
    let at_10k = results.iter().find(|r| r.rate == 10_000.0);
    println!(
        "goals (issue 6): p99 freshness ≤ 2 s at 10,000 changes/s: {}; peak RSS ≤ 1 GiB: {}",
        match at_10k {
            Some(r) if r.p99 <= 2.0 && r.drained.is_some() => format!("met ({:.2} s)", r.p99),
            Some(r) => format!("MISSED ({:.2} s)", r.p99),
            None => "not measured".into(),
        },
        if peak <= 1 << 20 { "met" } else { "MISSED" }
    );
    Ok(())
}

/// Waits until silver holds `rows` rows.
async fn wait_for_rows(
    pipeline: &weir::config::Pipeline,
    rows: usize,
    weir: &RunningWeir,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(batches) = weir::lakehouse::query(pipeline, "SELECT count(*) FROM silver").await
            && let Some(b) = batches.first()
            && b.num_rows() == 1
            && b.column(0).as_primitive::<Int64Type>().value(0) as usize >= rows
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "silver did not reach {rows} rows in 10 minutes:\n{}",
                weir.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn measure(
    t: &TestPipeline,
    pipeline: &weir::config::Pipeline,
    rate: f64,
) -> Result<Freshness> {
    let silver = &pipeline.silver.layer.table;
    let bronze = &pipeline.bronze.layer.table;
    let before = table_version(silver).await?;
    let bronze_before = table_version(bronze).await?;
    let started = std::time::SystemTime::now();
    let stop = CancellationToken::new();
    let url = t.services.pg_url(&t.name);
    let workload = tokio::spawn({
        let stop = stop.clone();
        async move {
            onlineshop::drive(
                || weir_tests::connect(&url),
                "onlineshop",
                rate,
                RUN,
                rate as u64,
                &stop,
            )
            .await
        }
    });
    let workload = workload.await??;
    let ended = Instant::now();
    let expected = weir_tests::pg_rows(&t.db, SUMMARY_SQL).await?;
    let mut drained = None;
    while ended.elapsed() <= Duration::from_secs(10) {
        let silver = weir_tests::Tables::InProcess(pipeline)
            .rows(&SUMMARY_SQL.replace("onlineshop", "silver"))
            .await?;
        if silver == expected {
            drained = Some(ended.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut samples = visible_after(silver, before + 1).await?;
    let mut to_bronze = visible_after(bronze, bronze_before + 1).await?;
    let (mut to_event, mut landed) = landing_delays(&pipeline.landing.location, started)?;
    for sorted in [&mut samples, &mut to_bronze, &mut to_event, &mut landed] {
        sorted.sort_by(f64::total_cmp);
    }
    let at = |samples: &[f64], q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Freshness {
        rate,
        achieved: workload.rate(),
        samples: samples.len(),
        p50: at(&samples, 0.5),
        p99: at(&samples, 0.99),
        max: at(&samples, 1.0),
        bronze_p50: at(&to_bronze, 0.5),
        bronze_p99: at(&to_bronze, 0.99),
        event_p50: at(&to_event, 0.5),
        event_p99: at(&to_event, 0.99),
        landed_p50: at(&landed, 0.5),
        landed_p99: at(&landed, 0.99),
        drained,
    })
}

async fn table_version(location: &str) -> Result<u64> {
    let table = deltalake::open_table(deltalake::ensure_table_uri(location)?).await?;
    table
        .version()
        .with_context(|| format!("{location} has no version"))
}

/// For every row a layer's commits from version `from` on inserted or updated: the seconds from
/// its commit in PostgreSQL to the layer's commit that made it visible.
async fn visible_after(location: &str, from: u64) -> Result<Vec<f64>> {
    let table = deltalake::open_table(deltalake::ensure_table_uri(location)?).await?;
    if table.version().is_none_or(|v| v < from) {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    let plan = table
        .scan_cdf()
        .with_starting_version(from)
        .build(&ctx.state(), None)
        .await?;
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let mut samples = Vec::new();
    for batch in collect(plan, ctx.task_ctx()).await? {
        let column = |name: &str| -> Result<arrow::array::ArrayRef> {
            let c = batch.column_by_name(name).context(name.to_owned())?;
            Ok(arrow::compute::cast(c, &micros)?)
        };
        let change = batch
            .column_by_name("_change_type")
            .context("_change_type")?
            .as_string::<i32>()
            .clone();
        let (committed, op_ts) = (column("_commit_timestamp")?, column("op_ts")?);
        let (committed, op_ts) = (
            committed.as_primitive::<TimestampMicrosecondType>(),
            op_ts.as_primitive::<TimestampMicrosecondType>(),
        );
        for i in 0..batch.num_rows() {
            let visible = matches!(change.value(i), "insert" | "update_postimage");
            if visible && op_ts.is_valid(i) && committed.is_valid(i) {
                samples.push((committed.value(i) - op_ts.value(i)) as f64 / 1e6);
            }
        }
    }
    Ok(samples)
}

/// For every change in the landing files written since `since`: seconds from its commit to its
/// Debezium event, and to its landing file's last write.
fn landing_delays(location: &str, since: std::time::SystemTime) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut to_event, mut landed) = (Vec::new(), Vec::new());
    let mut folders = vec![std::path::PathBuf::from(
        location.strip_prefix("file://").unwrap_or(location),
    )];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let modified = path.metadata()?.modified()?;
            if path.extension().is_none_or(|e| e != "parquet") || modified < since {
                continue;
            }
            let modified_ms = modified.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path)?,
            )?
            .build()?;
            for batch in reader {
                let batch = batch?;
                let ms = |name: &str| -> Result<arrow::array::Int64Array> {
                    Ok(batch
                        .column_by_name(name)
                        .with_context(|| format!("{} has no {name}", path.display()))?
                        .as_primitive::<Int64Type>()
                        .clone())
                };
                let (committed, event) = (ms("source_ts_ms")?, ms("ts_ms")?);
                for i in 0..batch.num_rows() {
                    if committed.is_valid(i) && event.is_valid(i) {
                        to_event.push((event.value(i) - committed.value(i)) as f64 / 1e3);
                        landed.push((modified_ms - committed.value(i)) as f64 / 1e3);
                    }
                }
            }
        }
    }
    Ok((to_event, landed))
}

/// Each layer's pass times in a stretch of weir's log: `stage p50/max s (passes)`.
fn pass_times(log: &str) -> String {
    let mut by_stage: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in log.lines().filter(|l| l.contains("layer pass")) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|v| v.trim_matches('"').to_owned())
        };
        if let (Some(stage), Some(Ok(seconds))) =
            (field("stage="), field("seconds=").map(|s| s.parse::<f64>()))
        {
            by_stage.entry(stage).or_default().push(seconds);
        }
    }
    by_stage
        .into_iter()
        .map(|(stage, mut times)| {
            times.sort_by(f64::total_cmp);
            let p50 = times[(times.len() - 1) / 2];
            let max = times[times.len() - 1];
            format!("{stage} {p50:.2}/{max:.2} s ({})", times.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
