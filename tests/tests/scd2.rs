//! Silver `STORED AS SCD TYPE 2`: every change of a key is a version with `__START_AT` and
//! `__END_AT`, checked row by row against the captured changes; the current versions equal the
//! source, and gold aggregates the current versions only.

use anyhow::Result;
use weir_tests::{TestPipeline, assert_gold_equals_group_by, pg_rows, rows_as_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_a_version_and_the_current_versions_are_the_source() -> Result<()> {
    let t = TestPipeline::new("scd2").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"\n",
            "stored_as_scd_type = 2\nconfig = { keep_history = true }\n",
        )
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    for statement in [
        "UPDATE onlineshop SET quantity = quantity + 1 WHERE id IN (1, 2, 3)",
        "BEGIN;
         UPDATE onlineshop SET quantity = 50 WHERE id = 1;
         UPDATE onlineshop SET quantity = 60 WHERE id = 1;
         COMMIT;",
        "DELETE FROM onlineshop WHERE id = 2",
        "INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
         VALUES (2, '581002', '2019-12-12', '22423', 'Regency Cakestand 3 Tier', 12.75, 2, '13047', 'France')",
    ] {
        t.db.batch_execute(statement).await?;
    }
    weir::pipeline::run_triggered(&pipeline).await?;
    // A second run with changes on top of stored versions.
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = 70 WHERE id = 1; DELETE FROM onlineshop WHERE id = 3;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;

    // The versions expected from the captured changes, key by key in commit order.
    let changes = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, op, CAST(commit_lsn AS VARCHAR) AS c, CAST(quantity AS VARCHAR) AS q \
             FROM bronze WHERE id IN (1, 2, 3, 4) ORDER BY id, commit_lsn, lsn",
        )
        .await?,
    )?;
    let mut expected = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if change[1] == "d" {
            continue;
        }
        let end = changes
            .get(i + 1)
            .filter(|next| next[0] == change[0])
            .map_or("NULL".to_owned(), |next| next[2].clone());
        expected.push(vec![
            change[0].clone(),
            change[2].clone(),
            end,
            change[3].clone(),
        ]);
    }
    let versions = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(\"__START_AT\" AS VARCHAR) AS s, CAST(\"__END_AT\" AS VARCHAR) AS e, \
             CAST(quantity AS VARCHAR) AS q FROM silver WHERE id IN (1, 2, 3, 4) ORDER BY id, commit_lsn, lsn",
        )
        .await?,
    )?;
    assert_eq!(versions, expected);
    assert_eq!(
        versions.iter().filter(|v| v[0] == "1").count(),
        5,
        "{versions:?}"
    );

    let current = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(quantity AS VARCHAR) AS q FROM silver \
             WHERE \"__END_AT\" IS NULL ORDER BY id",
        )
        .await?,
    )?;
    let source = pg_rows(
        &t.db,
        "SELECT id::text, quantity::text FROM onlineshop ORDER BY onlineshop.id",
    )
    .await?;
    assert_eq!(current, source);
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_untracked_columns_update_the_current_version_in_place() -> Result<()> {
    let t = TestPipeline::new("scd2_tracked").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"\n",
            "stored_as_scd_type = 2\nconfig = { keep_history = true }\n\
             track_history_column_list = [\"transactionno\", \"date\", \"productno\", \"productname\", \"price\", \"quantity\", \"country\"]\n",
        )
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    for statement in [
        // Untracked only: the stored version takes the new value, no new version.
        "UPDATE onlineshop SET customerno = 'X1' WHERE id = 1",
        // Tracked: a new version.
        "UPDATE onlineshop SET quantity = 99 WHERE id = 2",
        // Tracked, then untracked in the same run: one new version with both values.
        "UPDATE onlineshop SET quantity = 5 WHERE id = 3",
        "UPDATE onlineshop SET customerno = 'X3' WHERE id = 3",
        // Untracked, then tracked: the stored version takes X4 and ends; a new version starts.
        "UPDATE onlineshop SET customerno = 'X4' WHERE id = 4",
        "UPDATE onlineshop SET quantity = 7 WHERE id = 4",
    ] {
        t.db.batch_execute(statement).await?;
    }
    weir::pipeline::run_triggered(&pipeline).await?;
    // And in a later run, untracked again on top of a stored version.
    t.db.batch_execute("UPDATE onlineshop SET customerno = 'Y2' WHERE id = 2")
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;

    let versions = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(quantity AS VARCHAR) AS q, customerno, \
             CAST(\"__END_AT\" IS NULL AS VARCHAR) AS current FROM silver \
             WHERE id IN (1, 2, 3, 4) ORDER BY id, \"__START_AT\"",
        )
        .await?,
    )?;
    let source = pg_rows(
        &t.db,
        "SELECT id::text, quantity::text, customerno FROM onlineshop WHERE id IN (1, 2, 3, 4) ORDER BY id",
    )
    .await?;
    let first = |id: usize| &source[id - 1];
    let row = |id: usize, quantity: &str, customer: &str, current: bool| {
        vec![
            id.to_string(),
            quantity.to_owned(),
            customer.to_owned(),
            current.to_string(),
        ]
    };
    // The sample's values, read back from the snapshot's rows in bronze.
    let original = rows_as_text(
        &weir::lakehouse::query(
            &pipeline,
            "SELECT CAST(id AS VARCHAR) AS i, CAST(quantity AS VARCHAR) AS q, customerno FROM bronze \
             WHERE id IN (2, 3, 4) AND op = 'r' ORDER BY id",
        )
        .await?,
    )?;
    let expected = vec![
        row(1, &first(1)[1], "X1", true),
        row(2, &original[0][1], &original[0][2], false),
        row(2, "99", "Y2", true),
        row(3, &original[1][1], &original[1][2], false),
        row(3, "5", "X3", true),
        row(4, &original[2][1], "X4", false),
        row(4, "7", "X4", true),
    ];
    assert_eq!(versions, expected);
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}
