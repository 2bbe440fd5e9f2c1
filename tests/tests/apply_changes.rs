//! Silver as DLT's APPLY CHANGES INTO: truncates, a key deleted and inserted again, many updates
//! of one key in one transaction, unchanged TOAST values; and the same silver whatever the order
//! and repetition in which the changes arrive.

use anyhow::{Context, Result, ensure};
use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use weir_tests::{
    TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source,
    assert_silver_keys_without_dictionaries, silver_files, silver_merge_rows_since, silver_version,
};

/// A row whose `productname` PostgreSQL stores out of line (TOAST): 8 kB that do not compress.
fn toasted_insert(id: i64) -> String {
    format!(
        "INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
         VALUES ({id}, '990{id}', '2019-12-11', '85123A',
                 (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 256)),
                 2.55, 1, '17850', 'United Kingdom')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silver_follows_truncates_reinserts_and_toast_and_ignores_delivery_order() -> Result<()> {
    let t = TestPipeline::new("apply_changes").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 1305);

    // A truncate empties silver; what is inserted after it stays.
    t.db.batch_execute(
        "TRUNCATE onlineshop;
         INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
           SELECT id, '58' || id, '2019-12-10', '2' || (id % 7), 'Product ' || (id % 7), 1.25 * (id % 5 + 1),
                  id % 9 + 1, '1' || id, CASE WHEN id % 2 = 0 THEN 'France' ELSE 'Norway' END
           FROM generate_series(1, 40) AS id;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 40);
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // A TOASTed row stored in silver by one run, updated in the next: the update carries
    // Debezium's placeholder, and silver keeps the stored text.
    t.db.batch_execute(&toasted_insert(5000)).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    for statement in [
        "UPDATE onlineshop SET quantity = 7 WHERE id = 5000".to_owned(),
        // Inserted and updated within one run: the update's placeholder takes the insert's text.
        toasted_insert(5001),
        "UPDATE onlineshop SET quantity = 8 WHERE id = 5001".to_owned(),
        // Many updates of one key in one transaction.
        "BEGIN;
         UPDATE onlineshop SET quantity = quantity + 1 WHERE id = 1;
         UPDATE onlineshop SET quantity = quantity + 1 WHERE id = 1;
         UPDATE onlineshop SET price = 3.75 WHERE id = 1;
         UPDATE onlineshop SET quantity = quantity * 2 WHERE id = 1;
         COMMIT;"
            .to_owned(),
        // A key deleted and inserted again, in separate transactions and in one.
        "DELETE FROM onlineshop WHERE id = 2".to_owned(),
        "INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
         VALUES (2, '581002', '2019-12-12', '22423', 'Regency Cakestand 3 Tier', 12.75, 2, '13047', 'France')"
            .to_owned(),
        "BEGIN;
         DELETE FROM onlineshop WHERE id = 3;
         INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
           VALUES (3, 'C581003', '2019-12-12', '22423', 'Regency Cakestand 3 Tier', 12.75, -1, '13047', 'France');
         COMMIT;"
            .to_owned(),
        "DELETE FROM onlineshop WHERE id = 4".to_owned(),
    ] {
        t.db.batch_execute(&statement).await?;
    }
    weir::pipeline::run_triggered(&pipeline).await?;
    let rows = assert_silver_equals_source(&t, &pipeline)
        .await
        .context("after the run with TOAST, repeated updates and reinserts")?;
    assert_eq!(rows, 41);
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // Every bronze row, replayed into new silver tables in shuffled batches with repeats, gives the
    // same silver: late changes lose to newer ones, a delete or truncate delivered before the
    // changes it cancels keeps them out, and a placeholder applied first is filled by the older
    // change that carries the text.
    let bronze = weir::lakehouse::query(&pipeline, "SELECT * FROM bronze").await?;
    let bronze = concat_batches(&bronze[0].schema(), &bronze)?;
    for seed in [1_u64, 2, 3] {
        let replay = t.pipeline_with(|text| {
            text.replace(
                "/silver/onlineshop\"",
                &format!("/silver-replay-{seed}/onlineshop\""),
            )
        })?;
        let host = weir::wasm::WasmHost::new(replay.wasm)?;
        let mut layers = weir::lakehouse::Layers::load(&host, &replay)?;
        for batch in shuffled_batches(&bronze, seed)? {
            layers.replay_into_silver(&replay, &batch).await?;
        }
        let rows = assert_silver_equals_source(&t, &replay)
            .await
            .with_context(|| format!("replay {seed}"))?;
        assert_eq!(rows, 41, "replay {seed}");
    }
    Ok(())
}

/// `batch`'s rows in a shuffled order, a tenth of them twice, cut into batches of 1 to 300 rows.
fn shuffled_batches(batch: &RecordBatch, seed: u64) -> Result<Vec<RecordBatch>> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let rows = u32::try_from(batch.num_rows())?;
    let mut order: Vec<u32> = (0..rows).collect();
    order.extend((0..rows).filter(|r| r % 10 == 3));
    for i in (1..order.len()).rev() {
        order.swap(i, next(i + 1));
    }
    let mut batches = Vec::new();
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        let size = (1 + next(300)).min(rest.len());
        let (chunk, after) = rest.split_at(size);
        batches.push(take_record_batch(
            batch,
            &UInt32Array::from(chunk.to_vec()),
        )?);
        rest = after;
    }
    Ok(batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_null_updates_keeps_stored_values_and_column_lists_shape_silver() -> Result<()> {
    let t = TestPipeline::new("apply_changes_options").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"",
            "apply_as_truncates = \"op = 't'\"\nignore_null_updates = true\nexcept_column_list = [\"is_cancellation\", \"op_ts\"]",
        )
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET customerno = NULL, quantity = 99 WHERE id = 5;
         DELETE FROM onlineshop WHERE id = 6;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;

    let silver = weir::lakehouse::query(
        &pipeline,
        "SELECT CAST(id AS VARCHAR), customerno, CAST(quantity AS VARCHAR) FROM silver WHERE id IN (5, 6)",
    )
    .await?;
    let source = weir_tests::pg_rows(
        &t.db,
        "SELECT id::text, customerno, quantity::text FROM onlineshop WHERE id = 5",
    )
    .await?;
    let silver = weir_tests::rows_as_text(&silver)?;
    assert_eq!(silver.len(), 1, "the delete still applies: {silver:?}");
    assert_eq!(source[0][1], "NULL");
    assert_ne!(
        silver[0][1], "NULL",
        "the null update kept the stored value"
    );
    assert_eq!(
        silver[0][2], "99",
        "the other columns of the update applied"
    );

    let columns = weir::lakehouse::query(&pipeline, "SELECT * FROM silver LIMIT 1").await?;
    let schema = columns[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert!(
        !names.contains(&"is_cancellation") && !names.contains(&"op_ts"),
        "{names:?}"
    );
    assert!(
        names.contains(&"customerno") && names.contains(&"lsn"),
        "{names:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_merge_one_group_of_files_at_a_time() -> Result<()> {
    let t = TestPipeline::new("apply_changes_split").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"",
            "apply_as_truncates = \"op = 't'\"\nmax_changes_per_merge = 50",
        )
    })?;
    // Three runs of inserts: silver's files hold the key ranges 1-1305, 1306-2000, 2001-3000.
    weir::pipeline::run_triggered(&pipeline).await?;
    for (first, last) in [(1306, 2000), (2001, 3000)] {
        t.insert_ids(first, last).await?;
        weir::pipeline::run_triggered(&pipeline).await?;
    }
    let version_before = silver_version(&pipeline).await?;

    // One batch of changes over every file, far more than one MERGE may take.
    change_every_key(&t).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let merges = silver_version(&pipeline).await? - version_before;
    assert!(
        merges >= 3,
        "the batch went in one MERGE per group of files, not in {merges}"
    );
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 2800);
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}

/// Silver grows by files of bounded rows, and a batch over the whole table goes in MERGEs that
/// each write at most `max_rows_per_merge` rows, so memory follows that bound, not the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_merge_rewrites_at_most_max_rows_per_merge_of_a_growing_table() -> Result<()> {
    let t = TestPipeline::new("apply_changes_bounded").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"",
            "apply_as_truncates = \"op = 't'\"\nmax_rows_per_merge = 500",
        )
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.insert_ids(1306, 3000).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let files = silver_files(&pipeline).await?;
    ensure!(
        files.len() >= 6 && files.iter().all(|&(_, _, rows)| rows <= 500),
        "3,000 rows in files of at most 500: {files:?}"
    );
    ensure!(
        files.windows(2).all(|w| w[0].1 < w[1].0),
        "new keys went to files of their own: {files:?}"
    );

    let version_before = silver_version(&pipeline).await?;
    change_every_key(&t).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let merges = silver_merge_rows_since(&pipeline, version_before).await?;
    ensure!(
        merges.len() >= 6 && merges.iter().all(|&rows| rows <= 500),
        "rows written by each MERGE: {merges:?}"
    );
    assert_eq!(assert_silver_equals_source(&t, &pipeline).await?, 2800);
    assert_gold_equals_group_by(&t, &pipeline).await?;
    assert_silver_keys_without_dictionaries(&pipeline).await
}

/// Updates a third of the keys, deletes a tenth and inserts 100 past the last.
async fn change_every_key(t: &TestPipeline) -> Result<()> {
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 1 WHERE id % 3 = 0;
         DELETE FROM onlineshop WHERE id % 10 = 1;
         INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
           SELECT id, '60' || id, '2019-12-11', '85123A', 'White Hanging Heart', 2.55, 6, '17850', 'France'
           FROM generate_series(3001, 3100) AS id;",
    )
    .await?;
    Ok(())
}

/// A key's first delete is appended to silver's tombstones (no MERGE rewriting them), the
/// appended files are compacted as they pile up, and the tombstones still keep late changes of
/// deleted keys out, whether a delete comes once or again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_appended_compacted_and_still_keep_late_changes_out() -> Result<()> {
    let t = TestPipeline::new("apply_changes_tombstones").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    for id in 1..=40 {
        t.db.batch_execute(&format!("DELETE FROM onlineshop WHERE id = {id}"))
            .await?;
    }
    weir::pipeline::run_triggered(&pipeline).await?;
    let bronze =
        weir::lakehouse::query(&pipeline, "SELECT * FROM bronze ORDER BY op = 'd'").await?;
    let bronze = concat_batches(&bronze[0].schema(), &bronze)?;
    let deletes = bronze.num_rows() - 40;
    let (changes, deleted) = (bronze.slice(0, deletes), bronze.slice(deletes, 40));

    // Into a new silver: every insert in one pass, then each delete in a pass of its own.
    let replay = t.pipeline_with(|text| {
        text.replace("/silver/onlineshop\"", "/silver-replay/onlineshop\"")
    })?;
    let host = weir::wasm::WasmHost::new(replay.wasm)?;
    let mut layers = weir::lakehouse::Layers::load(&host, &replay)?;
    layers.replay_into_silver(&replay, &changes).await?;
    for i in 0..40 {
        layers
            .replay_into_silver(&replay, &deleted.slice(i, 1))
            .await?;
    }
    let tombstones = format!("{}/_weir_tombstones", replay.silver.layer.table);
    let table =
        deltalake::DeltaTable::try_from_url(deltalake::ensure_table_uri(&tombstones)?).await?;
    let files = table.get_file_uris()?.count();
    assert!(files <= 16, "40 appended tombstones left {files} files");
    let operations: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
        .await?
        .into_iter()
        .filter_map(|commit| commit.operation)
        .collect();
    let count = |op: &str| operations.iter().filter(|o| o.as_str() == op).count();
    assert!(
        count("WRITE") >= 40 && count("OPTIMIZE") >= 2 && count("MERGE") == 0,
        "{operations:?}"
    );

    // The inserts delivered again, late, and the deletes again: nothing deleted comes back, and
    // each key keeps one tombstone.
    layers.replay_into_silver(&replay, &changes).await?;
    layers.replay_into_silver(&replay, &deleted).await?;
    layers.replay_into_silver(&replay, &changes).await?;
    assert_eq!(assert_silver_equals_source(&t, &replay).await?, 1265);
    let mut table = table;
    table.update_state().await?;
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table("tombstones", table.table_provider().await?)?;
    let counted = ctx
        .sql("SELECT count(*) AS n, count(DISTINCT id) AS keys FROM tombstones")
        .await?
        .collect()
        .await?;
    let counts = arrow::util::pretty::pretty_format_batches(&counted)?.to_string();
    assert!(counts.contains("| 40 | 40   |"), "{counts}");
    Ok(())
}
