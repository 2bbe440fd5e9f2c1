//! Silver's data-quality expectations, as DLT's `CONSTRAINT … EXPECT … ON VIOLATION`: counted per
//! rule, `drop` rows routed to a quarantine table with the rules they failed, `fail` stopping the
//! batch before anything of it is committed, and deletes applied whatever the rules say.

use anyhow::Result;
use weir_tests::{TestPipeline, pg_rows, rows_as_text};

const RULES: &str = r#"
quarantine_table = "QUARANTINE"

[[silver.expectations]]
name = "retail_quantity"
expect = "quantity < 24"
on_violation = "drop"

[[silver.expectations]]
name = "known_customer"
expect = "customerno IS NOT NULL"
on_violation = "warn"

[[silver.expectations]]
name = "not_a_gift"
expect = "price > 7"
on_violation = "drop"
"#;

fn with_rules(text: String, quarantine: &str, extra: &str) -> String {
    let rules = RULES.replace("QUARANTINE", quarantine) + extra;
    text.replace(
        "apply_as_truncates = \"op = 't'\"\n",
        &format!("apply_as_truncates = \"op = 't'\"\n{rules}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_rules_quarantine_rows_and_every_rule_is_counted() -> Result<()> {
    let t = TestPipeline::new("expectations").await?;
    t.load_sample().await?;
    t.db.batch_execute("UPDATE onlineshop SET customerno = NULL WHERE id % 100 = 0")
        .await?;
    let quarantine = t.dir.path().join("lakehouse/quarantine/onlineshop");
    let pipeline =
        t.pipeline_with(|text| with_rules(text, &quarantine.display().to_string(), ""))?;
    let report = weir::pipeline::run_triggered(&pipeline).await?;

    let count = |sql: &str| {
        let sql = sql.to_owned();
        let db = &t.db;
        async move { Ok::<u64, anyhow::Error>(pg_rows(db, &sql).await?[0][0].parse()?) }
    };
    let bulk = count("SELECT count(*)::text FROM onlineshop WHERE NOT quantity < 24").await?;
    let gifts = count("SELECT count(*)::text FROM onlineshop WHERE NOT price > 7").await?;
    let either =
        count("SELECT count(*)::text FROM onlineshop WHERE NOT (quantity < 24 AND price > 7)")
            .await?;
    let unknown = count("SELECT count(*)::text FROM onlineshop WHERE customerno IS NULL").await?;
    assert!(
        bulk > 0 && gifts > 0 && unknown == 13,
        "the sample exercises every rule"
    );

    let silver = report
        .layers
        .iter()
        .find(|(name, _)| name == "silver")
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    assert_eq!(
        silver.expectations["retail_quantity"],
        (1305 - bulk, bulk),
        "{silver}"
    );
    assert_eq!(
        silver.expectations["not_a_gift"],
        (1305 - gifts, gifts),
        "{silver}"
    );
    assert_eq!(
        silver.expectations["known_customer"],
        (1305 - unknown, unknown),
        "{silver}"
    );
    assert_eq!(silver.dropped_by_expectations as u64, either, "{silver}");

    // Silver holds exactly the rows passing the drop rules; warned rows stay.
    let in_silver = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS id_text FROM silver ORDER BY id",
        )
        .await?,
    )?;
    let passing = pg_rows(
        &t.db,
        "SELECT id::text FROM onlineshop WHERE quantity < 24 AND price > 7 ORDER BY onlineshop.id",
    )
    .await?;
    assert_eq!(in_silver, passing);

    // The quarantine table has the dropped rows, each naming the rules it failed.
    let url = deltalake::ensure_table_uri(quarantine.display().to_string())?;
    let table = deltalake::open_table(url).await?;
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table("quarantine", table.table_provider().await?)?;
    let quarantined = rows_as_text(
        &ctx.sql(
            "SELECT CAST(id AS VARCHAR) AS id_text, _failed_expectations FROM quarantine ORDER BY id",
        )
        .await?
        .collect()
        .await?,
    )?;
    let expected = pg_rows(
        &t.db,
        "SELECT id::text, concat_ws(',', CASE WHEN NOT quantity < 24 THEN 'retail_quantity' END,
                                         CASE WHEN NOT price > 7 THEN 'not_a_gift' END)
         FROM onlineshop WHERE NOT (quantity < 24 AND price > 7) ORDER BY onlineshop.id",
    )
    .await?;
    assert_eq!(quarantined, expected);

    // A delete carries only the key, which the rules would reject: it applies all the same.
    let victim = &passing[0][0];
    t.db.batch_execute(&format!("DELETE FROM onlineshop WHERE id = {victim}"))
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let still = weir::lakehouse::query(
        &pipeline,
        &format!("SELECT id FROM silver WHERE id = {victim}"),
    )
    .await?;
    assert_eq!(still.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_rule_stops_the_batch_and_commits_nothing_of_it() -> Result<()> {
    let t = TestPipeline::new("expectations_fail").await?;
    t.load_sample().await?;
    let quarantine = t.dir.path().join("lakehouse/quarantine/onlineshop");
    let pipeline = t.pipeline_with(|text| {
        with_rules(
            text,
            &quarantine.display().to_string(),
            "\n[[silver.expectations]]\nname = \"single_country\"\nexpect = \"country = 'United Kingdom'\"\non_violation = \"fail\"\n",
        )
    })?;
    let error = weir::pipeline::run_triggered(&pipeline)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        error.contains("single_country") && error.contains("nothing of the batch was committed"),
        "{error}"
    );
    let silver = weir::lakehouse::query(&pipeline, "SELECT count(*) FROM silver").await;
    assert!(
        silver.map_or(true, |b| rows_as_text(&b).map_or(true, |r| r[0][0] == "0")),
        "silver stayed empty"
    );
    Ok(())
}
