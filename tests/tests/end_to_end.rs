//! The onlineshop pipeline, end to end against real services: PostgreSQL's WAL → Kafka → Parquet
//! landing files → bronze → silver → gold Delta tables, with each layer's logic in a Wasm component.

use anyhow::Result;
use weir_tests::{TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source};

fn counted(report: &weir::pipeline::RunReport, layer: &str, counter: &str) -> u64 {
    report
        .layers
        .iter()
        .find(|(name, _)| name == layer)
        .and_then(|(_, r)| r.counters.get(counter).copied())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_runs_keep_silver_equal_to_source_and_gold_equal_to_group_by() -> Result<()> {
    let t = TestPipeline::new("e2e").await?;
    let loaded = t.load_sample().await?;
    assert_eq!(loaded, 1305);
    let pipeline = t.pipeline()?;

    // First run: the initial snapshot flows through every stage.
    let report = weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(report.capture.snapshot_rows, 1305, "{report}");
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 1305);
    assert!(assert_gold_equals_group_by(&t, &pipeline).await? > 0);
    // Each table carries its medallion quality as a table property, as DLT's do.
    for (table, quality) in [
        (&pipeline.bronze.layer.table, "bronze"),
        (&pipeline.silver.layer.table, "silver"),
        (&pipeline.gold["sales_report"].layer.table, "gold"),
        (
            &pipeline.gold["daily_revenue_by_country"].layer.table,
            "gold",
        ),
    ] {
        let url = deltalake::ensure_table_uri(table)?;
        let delta = deltalake::open_table(url).await?;
        let configuration = delta.snapshot()?.metadata().configuration().clone();
        assert_eq!(
            configuration.get("quality").map(String::as_str),
            Some(quality),
            "{table}: {configuration:?}"
        );
    }
    // What the components counted through the host reaches the run's report.
    assert_eq!(counted(&report, "bronze", "rows"), 1305, "{report}");
    assert_eq!(counted(&report, "silver", "rows"), 1305, "{report}");

    // Live changes, each statement its own transaction except the first: a row inserted and
    // deleted in one transaction, a row updated twice, an update of a grouping column, deletes by
    // key, and every row of one product (so its gold group must disappear).
    for statement in [
        "BEGIN;
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country)
           VALUES ('C999001', '2019-12-10', '85123A', 'White Hanging Heart T-Light Holder', 2.55, -6, NULL, 'France');
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country)
           VALUES ('999002', '2019-12-10', '22485', 'Short-lived row', 1.00, 1, '1', 'Norway');
         DELETE FROM onlineshop WHERE transactionno = '999002';
         COMMIT;",
        "UPDATE onlineshop SET quantity = quantity + 100 WHERE id = 10",
        "UPDATE onlineshop SET quantity = quantity + 1, price = 99.99 WHERE id = 10",
        "UPDATE onlineshop SET productno = '22596' WHERE id = 20",
        "DELETE FROM onlineshop WHERE id IN (1, 2, 3)",
        "DELETE FROM onlineshop WHERE productno = '22730'",
    ] {
        t.db.batch_execute(statement).await?;
    }
    let report = weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(
        report.capture.snapshot_rows, 0,
        "no second snapshot: {report}"
    );
    assert_eq!(report.capture.changes, 14, "{report}");
    assert_eq!(report.capture.transactions, 6, "{report}");
    let rows = assert_silver_equals_source(&t, &pipeline).await?;
    assert!(rows < 1305, "deletes reached silver: {rows} rows");
    // The short-lived row's insert and the first of row 10's updates gave way to later changes.
    assert!(
        counted(&report, "silver", "superseded_dropped") >= 2,
        "{report}"
    );
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // Nothing new: a third run changes nothing and still agrees.
    let report = weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(report.capture.changes, 0, "{report}");
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}

/// A backlog of several commits reaches silver and gold in calls their components' memory limit
/// (256 MiB by default) can take: each layer hands its component at most 100,000 rows of its
/// input's commits at a time (one commit at least), where it once took ten commits in one call
/// and trapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_a_components_memory_reaches_silver_in_bounded_calls() -> Result<()> {
    let t = TestPipeline::new("e2e_backlog").await?;
    weir_tests::onlineshop::load(&t.db, "onlineshop", 300_000, 5).await?;
    let pipeline = t.pipeline()?;
    let report = weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(report.capture.snapshot_rows, 300_000, "{report}");
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 300_000);
    assert_gold_equals_group_by(&t, &pipeline).await?;
    // Every row updated: gold reads silver's change feed, a pre- and a post-image per update.
    t.db.batch_execute("UPDATE onlineshop SET quantity = quantity + 1")
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}
