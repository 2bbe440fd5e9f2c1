//! Input weir does not control, at run time: a component that returns another schema than its
//! table's, and topic names that do not look like `<prefix>.<schema>.<table>` at first sight.
//! Each gets a clear error or works; nothing already committed is lost.

use anyhow::{Context, Result, ensure};
use weir_tests::{TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source};

async fn version_of(table: &str) -> Result<u64> {
    let delta = deltalake::open_table(deltalake::ensure_table_uri(table)?).await?;
    delta
        .version()
        .with_context(|| format!("{table} has no version"))
}

/// Runs the pipeline once, then again after some changes with `layer`'s component replaced by one
/// that turns the key column `id` into text; then with the right component once more.
async fn a_layer_returning_the_wrong_schema(test: &str, component: &str) -> Result<String> {
    let t = TestPipeline::new(test).await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let tables = [
        pipeline.bronze.layer.table.clone(),
        pipeline.silver.layer.table.clone(),
        pipeline.gold["sales_report"].layer.table.clone(),
    ];
    let mut versions = Vec::new();
    for table in &tables {
        versions.push(version_of(table).await?);
    }

    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 1 WHERE id <= 20;
         DELETE FROM onlineshop WHERE id BETWEEN 21 AND 25;",
    )
    .await?;
    let wrong = t.pipeline_with(|text| {
        text.replace(
            &format!("{component}\""),
            "hostile.wasm\"\nconfig = { attack = \"wrong-schema\" }",
        )
    })?;
    let error = match weir::pipeline::run_triggered(&wrong).await {
        Ok(report) => {
            anyhow::bail!("a component returning the wrong schema went through: {report}")
        }
        Err(e) => format!("{e:#}"),
    };
    // The layer before the faulty one may have committed its share; none after it did.
    let faulty = if component.starts_with("bronze") {
        0
    } else {
        1
    };
    for (i, table) in tables.iter().enumerate().skip(faulty) {
        ensure!(
            version_of(table).await? == versions[i],
            "{table} moved past a failed batch: {error}"
        );
    }

    // With the right component back, the changes waiting since reach every table.
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bronze_component_returning_the_wrong_schema_stops_bronze_and_loses_nothing() -> Result<()>
{
    let error =
        a_layer_returning_the_wrong_schema("bad_bronze_schema", "bronze_cleanup.wasm").await?;
    ensure!(error.contains("bronze"), "{error}");
    ensure!(error.contains("hostile.wasm"), "{error}");
    ensure!(error.contains("`id`"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silver_component_returning_the_wrong_schema_stops_silver_and_loses_nothing() -> Result<()>
{
    let error =
        a_layer_returning_the_wrong_schema("bad_silver_schema", "silver_dedup.wasm").await?;
    ensure!(error.contains("silver"), "{error}");
    ensure!(error.contains("hostile.wasm"), "{error}");
    ensure!(error.contains("`id`"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_prefix_with_dots_lands_in_the_tables_folder() -> Result<()> {
    let t = TestPipeline::new("dotted_prefix").await?;
    t.load_sample().await?;
    let prefix = format!("eu.shop.{}", t.name);
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            &format!("topic_prefix = \"{}\"", t.name),
            &format!("topic_prefix = \"{prefix}\""),
        )
    })?;
    ensure!(pipeline.topic_for("public.onlineshop") == format!("{prefix}.public.onlineshop"));
    weir::pipeline::run_triggered(&pipeline).await?;
    ensure!(assert_silver_equals_source(&t, &pipeline).await? == 1305);
    let landing = pipeline.landing.location.trim_start_matches("file://");
    let landed = std::path::Path::new(landing).join("public.onlineshop");
    ensure!(landed.is_dir(), "no landing folder {}", landed.display());
    Ok(())
}
