//! The pipeline with its landing zone and Delta tables on Azure Blob Storage (`az://`, the
//! reference design's ADLS Gen2 `landing-zone` container), against Azurite started by
//! `scripts/services`. weir runs as a separate process with the emulator's settings in its
//! environment, as a user would pass credentials.

use anyhow::{Context, Result, ensure};
use weir_tests::{TestPipeline, pg_rows, weir_ok};

async fn weir(blob_url: &str, args: &[&str]) -> Result<String> {
    let emulator = [
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", blob_url),
    ];
    weir_ok(args, &emulator).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_azure_blob_storage() -> Result<()> {
    let blob_url = std::env::var("WEIR_AZURITE_BLOB_URL")
        .context("WEIR_AZURITE_BLOB_URL is unset: run under scripts/test (scripts/services up)")?;
    let t = TestPipeline::new("azure").await?;
    t.load_sample().await?;
    let local_lake = t.dir.path().join("lakehouse").display().to_string();
    let remote_lake = format!("az://weir/{}", t.name);
    t.pipeline_with(|text| text.replace(&local_lake, &remote_lake))?;
    let file = t.pipeline_path().display().to_string();

    weir(&blob_url, &["run", &file, "--triggered"]).await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 2 WHERE id % 6 = 0;
         DELETE FROM onlineshop WHERE id % 10 = 0;",
    )
    .await?;
    weir(&blob_url, &["run", &file, "--triggered"]).await?;

    // Silver and gold, summed, equal the same sums over the source.
    let expected = pg_rows(
        &t.db,
        "SELECT count(*)::text, sum(quantity)::text, sum(price * quantity)::text FROM onlineshop",
    )
    .await?;
    let [count, quantity, value] = &expected[0][..] else {
        anyhow::bail!("no sums from PostgreSQL");
    };
    for sql in [
        "SELECT CAST(count(*) AS VARCHAR) AS n, CAST(sum(quantity) AS VARCHAR) AS q, \
         CAST(sum(price * quantity) AS VARCHAR) AS v FROM silver",
        "SELECT CAST(sum(order_lines) AS VARCHAR) AS n, CAST(sum(total_quantity_sold) AS VARCHAR) AS q, \
         CAST(sum(total_sales_value) AS VARCHAR) AS v FROM gold_sales_report",
    ] {
        let printed = weir(&blob_url, &["query", &file, sql]).await?;
        let row = printed
            .lines()
            .find(|l| l.starts_with("| ") && !l.contains(" n "))
            .unwrap_or_default()
            .to_owned();
        let cells: Vec<&str> = row
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        ensure!(
            cells == [count.as_str(), quantity.as_str(), value.as_str()],
            "`{sql}` printed\n{printed}\nexpected {expected:?}"
        );
    }
    Ok(())
}
