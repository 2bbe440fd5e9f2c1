//! `weir rebuild FILE --layer gold` recomputes gold from silver (a DLT full refresh of the gold
//! tables): the result equals what the incremental passes built, and they go on from it.

use anyhow::{Result, ensure};
use weir_tests::{TestPipeline, assert_gold_equals_group_by, rows_as_text, run_weir};

async fn gold_rows(pipeline: &weir::config::Pipeline) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT productno, CAST(total_quantity_sold AS VARCHAR) AS q, CAST(total_sales_value AS VARCHAR) AS v, \
         CAST(order_lines AS VARCHAR) AS n FROM gold_sales_report ORDER BY productno",
        "SELECT CAST(date AS VARCHAR) AS d, country, CAST(total_sales_value AS VARCHAR) AS v, \
         CAST(order_lines AS VARCHAR) AS n FROM gold_daily_revenue_by_country ORDER BY d, country",
    ] {
        rows.extend(rows_as_text(&weir::lakehouse::query(pipeline, sql).await?)?);
    }
    Ok(rows)
}

async fn rebuild(t: &TestPipeline, layer: &str) -> Result<std::process::Output> {
    let file = t.pipeline_path().display().to_string();
    run_weir(&["rebuild", &file, "--layer", layer], &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_gold_equals_the_incremental_gold_and_increments_go_on_from_it() -> Result<()> {
    let t = TestPipeline::new("rebuild").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 3 WHERE id % 7 = 0;
         UPDATE onlineshop SET country = 'Iceland' WHERE id % 11 = 0;
         DELETE FROM onlineshop WHERE id % 13 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let incremental = gold_rows(&pipeline).await?;

    let out = rebuild(&t, "gold").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("gold.sales_report: rebuilt from silver")
            && stdout.contains("gold.daily_revenue_by_country: rebuilt from silver"),
        "{stdout}"
    );
    assert_eq!(gold_rows(&pipeline).await?, incremental);
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // Later changes are applied incrementally on top of the rebuilt tables, once.
    t.db.batch_execute(
        "DELETE FROM onlineshop WHERE id % 5 = 0;
         UPDATE onlineshop SET price = price + 1 WHERE id % 3 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // One table by name; an unknown name says which exist.
    assert!(rebuild(&t, "gold.sales_report").await?.status.success());
    assert_gold_equals_group_by(&t, &pipeline).await?;
    let out = rebuild(&t, "gold.nope").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("gold.sales_report"),
        "{stderr}"
    );
    Ok(())
}
