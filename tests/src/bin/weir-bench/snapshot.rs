//! The initial snapshot of generated onlineshop tables the full data set's size (536,350 rows) and
//! 10,000,000 rows: rows/s and this process's peak RSS (weir's capture runs in it), next to
//! `COPY … TO STDOUT` of the same table.

use std::time::Instant;

use anyhow::{Result, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use weir_tests::{TestPipeline, onlineshop};

use crate::capture::snapshot_run;

const SIZES: [(&str, u64); 2] = [("full_size", 536_350), ("ten_million", 10_000_000)];

pub async fn run() -> Result<()> {
    let t = TestPipeline::new("bench_snapshot").await?;
    t.db.batch_execute("CREATE SCHEMA bench").await?;
    let stop = CancellationToken::new();
    println!("snapshot of generated onlineshop tables (→ Kafka, every event acknowledged)");
    println!(
        "  {:>10} {:>9} {:>12} {:>13} {:>9} {:>14}",
        "rows", "weir s", "weir rows/s", "COPY rows/s", "ratio", "peak RSS MiB"
    );
    let mut worst_peak = 0;
    for (table, rows) in SIZES {
        t.db.batch_execute(&format!(
            "CREATE TABLE bench.{table} (LIKE public.onlineshop INCLUDING ALL)"
        ))
        .await?;
        onlineshop::load(&t.db, &format!("bench.{table}"), rows, 1).await?;
        t.db.batch_execute(&format!("VACUUM ANALYZE bench.{table}"))
            .await?;

        let started = Instant::now();
        let copy =
            t.db.copy_out(&format!("COPY bench.{table} TO STDOUT"))
                .await?;
        futures::pin_mut!(copy);
        while let Some(chunk) = copy.next().await {
            chunk?;
        }
        let copy_rate = rows as f64 / started.elapsed().as_secs_f64();

        let (sent, secs, peak_kib) = snapshot_run(&t, table, &stop).await?;
        if sent != rows {
            bail!("the snapshot of bench.{table} sent {sent} rows of {rows}");
        }
        let rate = rows as f64 / secs;
        println!(
            "  {rows:>10} {secs:>9.1} {rate:>12.0} {copy_rate:>13.0} {:>9.2} {:>14}",
            rate / copy_rate,
            peak_kib / 1024
        );
        worst_peak = worst_peak.max(peak_kib);
        t.db.batch_execute(&format!("DROP TABLE bench.{table}"))
            .await?;
    }
    println!(
        "goals (issue 6): peak RSS ≤ 1 GiB at any table size: {} ({} MiB at most)",
        if worst_peak <= 1 << 20 {
            "met"
        } else {
            "MISSED"
        },
        worst_peak / 1024
    );
    Ok(())
}
