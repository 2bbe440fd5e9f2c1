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

/// Writes `payload` to the pipeline's topic, as a foreign producer would.
async fn produce_raw(pipeline: &weir::config::Pipeline, payload: &[u8]) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.kafka.bootstrap_servers)
        .create()?;
    let topic = pipeline.topic_for("public.onlineshop");
    producer
        .send(
            FutureRecord::to(&topic).key("{}").payload(payload),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// An event that is not a Debezium change event stops landing with an error naming its topic,
/// partition and offset, having committed nothing past it, and stops it again at the same offset;
/// with `dead_letter_location`, it is kept there with its error and landing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_does_not_parse_stops_landing_or_goes_to_the_dead_letter_location()
-> Result<()> {
    use weir::pipeline::Stage;
    let t = TestPipeline::new("dead_letter_event").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    weir::pipeline::run_triggered(&pipeline).await?;
    produce_raw(&pipeline, b"\x00\x01 not json").await?;
    produce_raw(&pipeline, br#"{"before":null,"after":{"id":1},"op":"x"}"#).await?;
    t.db.batch_execute("UPDATE onlineshop SET quantity = 99 WHERE id = 1")
        .await?;

    let topic = pipeline.topic_for("public.onlineshop");
    for _ in 0..2 {
        let error =
            weir::pipeline::run_stages_triggered(&pipeline, &[Stage::Capture, Stage::Landing])
                .await
                .expect_err("an event that is not JSON")
                .to_string();
        ensure!(
            error.contains(&format!("{topic}/0@1305")) && error.contains("invalid JSON"),
            "{error}"
        );
    }

    let dead_letters = t.dir.path().join("dead-letters");
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "[pipeline]\n",
            &format!(
                "[pipeline]\ndead_letter_location = \"{}\"\n",
                dead_letters.display()
            ),
        )
    })?;
    weir::pipeline::run_triggered(&pipeline).await?;
    weir_tests::assert_silver_equals_source(&t, &pipeline).await?;
    let folder = dead_letters.join("landing").join(&topic);
    let first = std::fs::read(folder.join("0-00000000000000001305.event"))?;
    ensure!(first == b"\x00\x01 not json", "{first:?}");
    let error = std::fs::read_to_string(folder.join("0-00000000000000001306.error.json"))
        .context("the second event's error")?;
    ensure!(
        error.contains("`op`") && error.contains("\"offset\":1306"),
        "{error}"
    );
    Ok(())
}
