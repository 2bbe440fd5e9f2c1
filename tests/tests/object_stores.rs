//! The pipeline with its landing zone and Delta tables on object stores: Azure Blob Storage
//! (`az://`, the reference design's ADLS Gen2 `landing-zone` container) against Azurite, and S3
//! (`s3://`) against moto, both started by `scripts/services`. weir runs as a separate process
//! with the emulator's settings in its environment, as a user would pass credentials.

use anyhow::{Context, Result, ensure};
use weir_tests::{TestPipeline, pg_rows, weir_ok};

fn service(variable: &str) -> Result<String> {
    std::env::var(variable)
        .with_context(|| format!("{variable} is unset: run under scripts/test (scripts/services up)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_azure_blob_storage() -> Result<()> {
    let blob_url = service("WEIR_AZURITE_BLOB_URL")?;
    let emulator = [
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", blob_url.as_str()),
    ];
    the_pipeline_runs_on("azure", "az://weir", &emulator, 1).await
}

/// Three processes run the layers at once on the same tables, beside a fourth compacting them:
/// Azure's conditional writes let exactly one commit each table version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_share_the_tables_on_azure_blob_storage() -> Result<()> {
    let blob_url = service("WEIR_AZURITE_BLOB_URL")?;
    let emulator = [
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", blob_url.as_str()),
    ];
    the_pipeline_runs_on("azure_writers", "az://weir", &emulator, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_s3() -> Result<()> {
    let endpoint = service("WEIR_S3_ENDPOINT")?;
    let emulator = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "weir"),
        ("AWS_SECRET_ACCESS_KEY", "weir"),
        ("AWS_REGION", "us-east-1"),
    ];
    the_pipeline_runs_on("s3", "s3://weir", &emulator, 1).await
}

/// Runs the pipeline twice (the sample, then updates and deletes) with every location under
/// `root`, then checks silver and gold against PostgreSQL through `weir query`. With several
/// `writers`, one process captures and lands, then that many run the layers at once beside one
/// running `weir maintain`.
async fn the_pipeline_runs_on(
    test: &str,
    root: &str,
    env: &[(&str, &str)],
    writers: usize,
) -> Result<()> {
    let weir = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weir_ok(&args, env).await
    };
    let t = TestPipeline::new(test).await?;
    t.load_sample().await?;
    let local_lake = t.dir.path().join("lakehouse").display().to_string();
    let remote_lake = format!("{root}/{}", t.name);
    t.pipeline_with(|text| text.replace(&local_lake, &remote_lake))?;
    let file = t.pipeline_path().display().to_string();

    let run = |stages: &str| {
        let mut args = vec!["run".to_owned(), file.clone(), "--triggered".to_owned()];
        args.extend(["--stages".to_owned(), stages.to_owned()]);
        args
    };
    let run_all = || async {
        if writers == 1 {
            return weir(run("capture,landing,layers")).await.map(drop);
        }
        weir(run("capture,landing")).await?;
        let mut racers: Vec<_> = (0..writers).map(|_| weir(run("layers"))).collect();
        racers.push(weir(vec!["maintain".to_owned(), file.clone()]));
        for outcome in futures::future::join_all(racers).await {
            outcome?;
        }
        Ok::<_, anyhow::Error>(())
    };
    run_all().await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 2 WHERE id % 6 = 0;
         DELETE FROM onlineshop WHERE id % 10 = 0;",
    )
    .await?;
    run_all().await?;

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
        let printed = weir(vec!["query".to_owned(), file.clone(), sql.to_owned()]).await?;
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
