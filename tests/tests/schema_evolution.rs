//! Schema evolution, as Auto Loader and DLT give it: a column added to the source table while the
//! pipeline runs reaches landing, bronze and silver (Delta schema merge), older rows reading it
//! as null; a dropped column stays, null in rows changed since; a widened type goes on; a type
//! change Delta cannot take stops the pipeline saying what changed and how to resume, having
//! lost nothing.

use anyhow::Result;
use weir_tests::{
    TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source, pg_rows, rows_as_text,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_to_the_source_reaches_bronze_and_silver() -> Result<()> {
    let t = TestPipeline::new("schema_evolution").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;

    t.db.batch_execute(
        "ALTER TABLE onlineshop ADD COLUMN discount numeric(5,2);
         UPDATE onlineshop SET discount = 0.15, quantity = quantity + 1 WHERE id % 5 = 0;
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country, discount)
           VALUES ('590001', '2019-12-12', '85123A', 'White Hanging Heart', 2.55, 6, '17850', 'France', 0.05);
         DELETE FROM onlineshop WHERE id % 7 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;

    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    let silver = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(discount AS VARCHAR) AS d FROM silver ORDER BY id",
        )
        .await?,
    )?;
    let source = pg_rows(
        &t.db,
        "SELECT id::text, discount::text FROM onlineshop ORDER BY onlineshop.id",
    )
    .await?;
    assert_eq!(silver, source);

    // Widened in place, then dropped: the column stays in silver, null where rows changed since.
    t.db.batch_execute(
        "ALTER TABLE onlineshop ALTER COLUMN quantity TYPE bigint;
         ALTER TABLE onlineshop DROP COLUMN discount;
         UPDATE onlineshop SET quantity = quantity + 3000000000 WHERE id % 10 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    let discounts = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(discount AS VARCHAR) AS d FROM silver \
             WHERE id IN (5, 10) ORDER BY id",
        )
        .await?,
    )?;
    assert_eq!(
        discounts,
        [["5", "0.15"], ["10", "NULL"]],
        "id 10 changed after the drop, id 5 did not"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_delta_cannot_take_stops_with_what_changed_and_how_to_resume() -> Result<()> {
    let t = TestPipeline::new("schema_type_change").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    t.db.batch_execute(
        "ALTER TABLE onlineshop ADD COLUMN gift boolean;
         UPDATE onlineshop SET gift = id % 2 = 0 WHERE id <= 10;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    let quantity = pg_rows(&t.db, "SELECT quantity::text FROM onlineshop WHERE id = 3").await?;

    t.db.batch_execute(
        "ALTER TABLE onlineshop ALTER COLUMN gift TYPE text USING CASE WHEN gift THEN 'yes' ELSE 'no' END;
         UPDATE onlineshop SET gift = 'wrapped', quantity = 1 WHERE id = 3;",
    )
    .await?;
    let err = weir::pipeline::run_triggered(&pipeline)
        .await
        .expect_err("boolean to text cannot go into bronze")
        .to_string();
    assert!(
        err.contains("column `gift` changed type from boolean to string")
            && err.contains("To resume"),
        "{err}"
    );
    // Nothing committed was lost or half-applied: silver still holds the state before the change.
    let silver = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(quantity AS VARCHAR) AS q, CAST(gift AS VARCHAR) AS g FROM silver WHERE id = 3",
        )
        .await?,
    )?;
    assert_eq!(silver, [[quantity[0][0].as_str(), "false"]]);
    Ok(())
}

/// The same changes while capture runs, each between changes of one streaming session: pgoutput
/// describes the table anew after each, and the events that follow carry its columns then, not
/// those capture started with (no column left out, no dropped column sent as "unavailable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_dropped_and_widened_while_capture_runs_reach_silver() -> Result<()> {
    use std::time::Duration;
    let t = TestPipeline::new("schema_while_running").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace("[source]\n", "[source]\nheartbeat_interval_ms = 500\n")
    })?;
    let mut weir = weir_tests::RunningWeir::start(&t, "weir", &[], &[])?;
    let silver_equals_source = || async {
        assert_silver_equals_source(&t, &pipeline).await?;
        assert_gold_equals_group_by(&t, &pipeline).await
    };
    weir_tests::eventually(Duration::from_secs(120), silver_equals_source).await?;

    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 1 WHERE id = 1;
         ALTER TABLE onlineshop ADD COLUMN discount numeric(5,2), ADD COLUMN note varchar(10);
         UPDATE onlineshop SET discount = 0.15, note = 'gift' WHERE id % 5 = 0;
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country, discount)
           VALUES ('590001', '2019-12-12', '85123A', 'White Hanging Heart', 2.55, 6, '17850', 'France', 0.05);
         ALTER TABLE onlineshop ALTER COLUMN quantity TYPE bigint, ALTER COLUMN price TYPE numeric(14,2),
                                ALTER COLUMN note TYPE text;
         UPDATE onlineshop SET quantity = quantity + 3000000000, note = 'a longer note than ten' WHERE id % 10 = 0;
         ALTER TABLE onlineshop DROP COLUMN discount;
         UPDATE onlineshop SET quantity = quantity + 1 WHERE id % 4 = 0;
         DELETE FROM onlineshop WHERE id % 7 = 0;",
    )
    .await?;
    weir_tests::eventually(Duration::from_secs(120), silver_equals_source).await?;
    let silver = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(discount AS VARCHAR) AS d, note FROM silver \
             WHERE id IN (5, 10, 15, 20, 25) ORDER BY id",
        )
        .await?,
    )?;
    assert_eq!(
        silver,
        [
            ["5", "0.15", "gift"],
            ["10", "0.15", "a longer note than ten"],
            ["15", "0.15", "gift"],
            ["20", "NULL", "a longer note than ten"],
            ["25", "0.15", "gift"]
        ],
        "ids 10 and 20 changed before the drop (10 kept its discount then); 20 changed after it"
    );
    let topic =
        weir_tests::read_topic(&t.services.kafka, &pipeline.topic_for("public.onlineshop"))?;
    let unavailable = topic
        .iter()
        .filter_map(|r| r.value.as_ref())
        .filter(|v| v.to_string().contains("__debezium_unavailable_value"))
        .count();
    assert_eq!(unavailable, 0, "no column was sent as unavailable");
    weir.interrupt().await?;
    Ok(())
}
