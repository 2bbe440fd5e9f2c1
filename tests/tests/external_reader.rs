//! The tables are Delta tables for any engine: delta-rs's Python release (another version of the
//! protocol reader, with pyarrow) reads silver and gold after updates, deletes and a compaction,
//! and sees what PostgreSQL holds.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_tests::{TestPipeline, pg_rows, weir_ok};

const READER: &str = r#"
import json, os, sys
from deltalake import DeltaTable
silver = DeltaTable(sys.argv[1]).to_pyarrow_table(columns=["id", "quantity", "price"]).to_pylist()
gold = DeltaTable(sys.argv[2]).to_pyarrow_table(
    columns=["productno", "total_quantity_sold", "order_lines"]).to_pylist()
print(json.dumps({
    "silver": [[str(r["id"]), str(r["quantity"]), str(r["price"])] for r in silver],
    "gold": [[r["productno"], str(r["total_quantity_sold"]), str(r["order_lines"])] for r in gold],
}), flush=True)
# Native threads of the readers can abort the interpreter's teardown ("terminate called without an
# active exception"); the answer is out, so leave at once.
os._exit(0)
"#;

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

fn rows(value: &Value) -> Vec<Vec<String>> {
    value
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.as_str().unwrap_or("").to_owned())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_reads_silver_and_gold_as_the_source_holds_them() -> Result<()> {
    let python = std::env::var("WEIR_DELTA_PYTHON").context(
        "WEIR_DELTA_PYTHON is unset: run under scripts/test (scripts/install-deps installs it)",
    )?;
    let t = TestPipeline::new("external_reader").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity * 2, price = price + 0.5 WHERE id % 5 = 0;
         DELETE FROM onlineshop WHERE id % 8 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let file = t.pipeline_path().display().to_string();
    weir_ok(&["maintain", &file, "--retention-hours", "0"], &[]).await?;

    let local = |location: &str| location.trim_start_matches("file://").to_owned();
    let out = tokio::process::Command::new(&python)
        .args([
            "-c",
            READER,
            &local(&pipeline.silver.layer.table),
            &local(&pipeline.gold["sales_report"].layer.table),
        ])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout)?;

    let silver = pg_rows(
        &t.db,
        "SELECT id::text, quantity::text, price::text FROM onlineshop",
    )
    .await?;
    assert_eq!(sorted(rows(&read["silver"])), sorted(silver));
    let gold = pg_rows(
        &t.db,
        "SELECT productno, sum(quantity)::text, count(*)::text FROM onlineshop GROUP BY productno",
    )
    .await?;
    assert_eq!(sorted(rows(&read["gold"])), sorted(gold));
    Ok(())
}
