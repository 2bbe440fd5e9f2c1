//! The pipeline with its landing zone and Delta tables on object stores: Azure Blob Storage
//! (`az://`, the reference design's ADLS Gen2 `landing-zone` container) against Azurite, and S3
//! (`s3://`) against moto, both started by `scripts/services`. weir runs as a separate process
//! with the emulator's settings in its environment, as a user would pass credentials. The random
//! workloads of `random_workload.rs` run on both stores too.

use anyhow::Result;
use weir_tests::{
    ObjectStore, Tables, TestPipeline, assert_gold_equals_group_by_in,
    assert_silver_equals_source_in, weir_ok,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_azure_blob_storage() -> Result<()> {
    the_pipeline_runs_on("azure", ObjectStore::Azure, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_s3() -> Result<()> {
    the_pipeline_runs_on("s3", ObjectStore::S3, 1).await
}

/// Three processes run the layers at once on the same tables, beside a fourth compacting them:
/// Azure's conditional writes let exactly one commit each table version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_share_the_tables_on_azure_blob_storage() -> Result<()> {
    the_pipeline_runs_on("azure_writers", ObjectStore::Azure, 3).await
}

/// Runs the pipeline twice (the sample, then updates and deletes) with every location in `store`,
/// then checks silver and gold against PostgreSQL through `weir query`. With several `writers`,
/// one process captures and lands, then that many run the layers at once beside one running
/// `weir maintain`.
async fn the_pipeline_runs_on(test: &str, store: ObjectStore, writers: usize) -> Result<()> {
    let env = store.env()?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let weir = |args: Vec<String>| {
        let env = env.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            weir_ok(&args, &env).await
        }
    };
    let t = TestPipeline::new(test).await?;
    t.load_sample().await?;
    t.pipeline_in(store)?;
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

    let tables = Tables::Cli {
        file: &file,
        env: &env,
    };
    assert_silver_equals_source_in(&t, &tables).await?;
    assert_gold_equals_group_by_in(&t, &tables).await?;
    Ok(())
}
