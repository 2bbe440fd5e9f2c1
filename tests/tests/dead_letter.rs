//! A batch a layer's component fails on stops the pipeline, or, with `dead_letter_location`, goes
//! there as Parquet with its error beside it while the layer goes on.

use anyhow::{Context, Result, ensure};
use weir_tests::TestPipeline;

/// The pipeline with a silver component that traps on every batch.
fn trapping_silver(t: &TestPipeline, dead_letter: Option<&str>) -> Result<weir::config::Pipeline> {
    t.pipeline_with(|text| {
        let text = text.replace(
            "silver_dedup.wasm\"",
            "hostile.wasm\"\nconfig = { attack = \"trap\" }",
        );
        match dead_letter {
            Some(location) => text.replace(
                "[pipeline]\n",
                &format!("[pipeline]\ndead_letter_location = \"{location}\"\n"),
            ),
            None => text,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_location_a_failed_batch_stops_the_pipeline() -> Result<()> {
    let t = TestPipeline::new("dead_letter_stop").await?;
    t.load_sample().await?;
    let pipeline = trapping_silver(&t, None)?;
    let error = match weir::pipeline::run_triggered(&pipeline).await {
        Ok(report) => anyhow::bail!("the run went on past a trapping component: {report}"),
        Err(e) => e.to_string(),
    };
    ensure!(error.contains("silver component"), "{error}");
    ensure!(error.contains("hostile.wasm"), "{error}");
    ensure!(error.contains("bronze versions"), "{error}");
    ensure!(error.contains("trapped"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_dead_letter_location_the_batch_goes_there_and_the_layer_goes_on() -> Result<()> {
    let t = TestPipeline::new("dead_letter_route").await?;
    let loaded = t.load_sample().await?;
    let folder = t.dir.path().join("dead-letter");
    let pipeline = trapping_silver(&t, Some(&folder.display().to_string()))?;

    let report = weir::pipeline::run_triggered(&pipeline).await?;
    let silver = &report
        .layers
        .iter()
        .find(|(name, _)| name == "silver")
        .context("a silver report")?
        .1;
    ensure!(silver.dead_lettered as u64 == loaded, "{report}");

    // The batch, whole, as Parquet, and the error that sent it there.
    let stage = folder.join("silver");
    let mut names: Vec<String> = std::fs::read_dir(&stage)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    // Named after the batch: the bronze versions it came from.
    let stem = names[0].strip_suffix(".error.json").unwrap_or_default();
    ensure!(
        stem.starts_with("bronze_versions_0-")
            && names == [format!("{stem}.error.json"), format!("{stem}.parquet")],
        "{names:?}"
    );
    let error: serde_json::Value = serde_json::from_slice(&std::fs::read(stage.join(&names[0]))?)?;
    ensure!(
        error["stage"] == "silver" && error["rows"] == loaded,
        "{error}"
    );
    let message = error["error"].as_str().unwrap_or_default();
    ensure!(
        message.contains("hostile.wasm") && message.contains("trapped"),
        "{message}"
    );
    let file = std::fs::File::open(stage.join(&names[1]))?;
    let rows: usize =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?
            .map(|b| b.map(|b| b.num_rows()))
            .sum::<Result<usize, _>>()?;
    ensure!(rows as u64 == loaded, "{rows} rows dead-lettered");

    // Silver has no table yet to record progress in, so a rerun routes the same batch again: under
    // the same names, so the dead-letter folder holds it once.
    weir::pipeline::run_triggered(&pipeline).await?;
    ensure!(std::fs::read_dir(&stage)?.count() == 2);
    Ok(())
}
