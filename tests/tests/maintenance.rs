//! Table care: checkpoints every ten commits, compaction and vacuum (`weir maintain`) leave every
//! table's rows as they were, and the layers go on correctly afterwards.

use std::path::Path;

use anyhow::{Result, ensure};
use weir_tests::{
    TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source,
    assert_silver_keys_without_dictionaries, silver_files, silver_merge_rows_since, silver_version,
    weir_ok,
};

/// Parquet data files under `table` (the log and hidden folders aside).
fn data_files(table: &Path) -> Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(table)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() && !name.starts_with('_') {
            count += data_files(&path)?;
        } else if name.ends_with(".parquet") {
            count += 1;
        }
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_keep_the_rows_and_checkpoints_come_every_ten_commits() -> Result<()>
{
    let t = TestPipeline::new("maintenance").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    // Small commits, deletes among them (so silver keeps tombstones).
    for round in 0..10 {
        t.db.batch_execute(&format!(
            "UPDATE onlineshop SET quantity = quantity + 1 WHERE id % 10 = {round};
             DELETE FROM onlineshop WHERE id = {};",
            100 + round
        ))
        .await?;
        weir::pipeline::run_triggered(&pipeline).await?;
    }
    let silver = Path::new(pipeline.silver.layer.table.trim_start_matches("file://"));
    let checkpoints = std::fs::read_dir(silver.join("_delta_log"))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.parquet")
        })
        .count();
    ensure!(
        checkpoints >= 1,
        "silver has no checkpoint after more than ten commits"
    );
    let before = data_files(silver)?;
    let tombstone_files = data_files(&silver.join("_weir_tombstones"))?;

    let file = t.pipeline_path().display().to_string();
    let stdout = weir_ok(&["maintain", &file, "--retention-hours", "0"], &[]).await?;
    ensure!(
        stdout.contains("silver: ") && stdout.contains("compacted"),
        "{stdout}"
    );
    let after = data_files(silver)?;
    ensure!(
        after < before,
        "silver had {before} data files, {after} after compaction and vacuum"
    );
    ensure!(
        data_files(&silver.join("_weir_tombstones"))? >= 1 && tombstone_files >= 1,
        "the tombstones inside silver's folder survive silver's vacuum"
    );
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;

    // The layers read each other's change feeds across the compaction commits.
    t.db.batch_execute(
        "UPDATE onlineshop SET price = price + 1 WHERE id % 4 = 0;
         DELETE FROM onlineshop WHERE id % 9 = 0;",
    )
    .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}

/// Silver's files that overlap in key and together hold more rows than one MERGE may rewrite are
/// sorted by key again by maintenance, into files that each MERGE can take a few at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_sorts_silver_by_key_when_overlapping_files_outgrow_a_merge() -> Result<()> {
    let t = TestPipeline::new("maintenance_cluster").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.insert_ids(1306, 6000).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    // One MERGE (the default bound is far above 6,000 rows) rewrites silver whole: its files
    // overlap, one group of 6,000 rows.
    t.db.batch_execute("UPDATE onlineshop SET quantity = quantity + 1 WHERE id % 2 = 0")
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;

    // The writer cuts files at 1,024-row slices: a bound of 2,500 rows asks for files of about
    // 1,250.
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "apply_as_truncates = \"op = 't'\"",
            "apply_as_truncates = \"op = 't'\"\nmax_rows_per_merge = 2500",
        )
    })?;
    let file = t.pipeline_path().display().to_string();
    let stdout = weir_ok(&["maintain", &file], &[]).await?;
    let files = silver_files(&pipeline).await?;
    ensure!(
        files.len() >= 3 && files.windows(2).all(|w| w[0].1 < w[1].0),
        "silver sorted into files with disjoint key ranges: {files:?}\n{stdout}"
    );
    ensure!(
        files.iter().all(|&(_, _, rows)| rows <= 2500),
        "files of at most 2,500 rows: {files:?}"
    );
    assert_silver_keys_without_dictionaries(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;

    // A batch over every key then goes in MERGEs of at most 2,500 rows each, and gold follows.
    let version = silver_version(&pipeline).await?;
    t.db.batch_execute("UPDATE onlineshop SET price = price + 1 WHERE id % 3 = 0")
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let merges = silver_merge_rows_since(&pipeline, version).await?;
    ensure!(
        merges.len() >= 3 && merges.iter().all(|&rows| rows <= 2500),
        "rows written by each MERGE: {merges:?}"
    );
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}
