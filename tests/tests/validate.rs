//! `weir validate`: every mistake in a pipeline file is reported with the file, line and key, and
//! components are checked for the world their layer needs, without touching any service.

use anyhow::Result;
use weir::config::Pipeline;
use weir_tests::repo_root;

fn onlineshop_text() -> Result<String> {
    Ok(std::fs::read_to_string(
        repo_root().join("pipelines/onlineshop.toml"),
    )?)
}

/// Writes `text` beside the real pipeline file, so its relative component paths still resolve.
fn load_variant(name: &str, text: &str) -> Result<Result<Pipeline, weir::config::ConfigError>> {
    let path = repo_root()
        .join("pipelines")
        .join(format!(".test-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    let parsed = Pipeline::load(&path);
    std::fs::remove_file(&path)?;
    Ok(parsed)
}

#[test]
fn the_onlineshop_pipeline_validates_with_its_components() -> Result<()> {
    let text = onlineshop_text()?
        .replace("${WEIR_PG_PORT}", "5432")
        .replace("${WEIR_KAFKA_BOOTSTRAP}", "127.0.0.1:9092");
    let pipeline = load_variant("valid", &text)??;
    weir::pipeline::validate(&pipeline)?;
    assert_eq!(pipeline.layers().len(), 4);
    Ok(())
}

#[test]
fn a_misspelt_key_names_the_file_line_and_key() -> Result<()> {
    let text = onlineshop_text()?.replace("apply_as_deletes =", "apply_as_delete =");
    let err = load_variant("typo", &text)?
        .expect_err("unknown key must be rejected")
        .to_string();
    let line = text
        .lines()
        .position(|l| l.starts_with("apply_as_delete ="))
        .map(|i| i + 1)
        .unwrap_or(0);
    assert!(err.contains(".toml"), "{err}");
    assert!(err.contains("apply_as_delete"), "{err}");
    assert!(
        err.contains(&format!("line {line}")),
        "expected line {line}: {err}"
    );
    Ok(())
}

#[test]
fn a_component_exporting_the_wrong_world_is_rejected_by_name() -> Result<()> {
    let text = onlineshop_text()?
        .replace("${WEIR_PG_PORT}", "5432")
        .replace("${WEIR_KAFKA_BOOTSTRAP}", "127.0.0.1:9092")
        .replace(
            "release/bronze_cleanup.wasm",
            "release/gold_aggregates.wasm",
        );
    let pipeline = load_variant("world", &text)??;
    let err = weir::pipeline::validate(&pipeline)
        .expect_err("gold component in bronze")
        .to_string();
    assert!(err.contains("gold_aggregates.wasm"), "{err}");
    assert!(err.contains("row-transform"), "{err}");
    Ok(())
}

#[test]
fn a_missing_component_file_is_named() -> Result<()> {
    let text = onlineshop_text()?
        .replace("${WEIR_PG_PORT}", "5432")
        .replace("${WEIR_KAFKA_BOOTSTRAP}", "127.0.0.1:9092")
        .replace(
            "release/silver_dedup.wasm",
            "release/no_such_component.wasm",
        );
    let pipeline = load_variant("missing", &text)??;
    let err = weir::pipeline::validate(&pipeline)
        .expect_err("missing file")
        .to_string();
    assert!(err.contains("no_such_component.wasm"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_debezium_events_runs_through_every_layer() -> Result<()> {
    let text = onlineshop_text()?
        .replace("${WEIR_PG_PORT}", "5432")
        .replace("${WEIR_KAFKA_BOOTSTRAP}", "127.0.0.1:9092");
    let pipeline = load_variant("sample", &text)??;
    let sample = repo_root().join("tests/data/debezium-1.2.5-onlineshop-sample.json");
    let rows = weir::pipeline::validate_with_sample(&pipeline, &sample).await?;
    let layers: Vec<&str> = rows.iter().map(|(layer, _)| layer.as_str()).collect();
    assert_eq!(
        layers,
        [
            "bronze",
            "silver",
            "gold.daily_revenue_by_country",
            "gold.sales_report"
        ]
    );
    assert!(rows.iter().all(|(_, n)| *n > 0), "{rows:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_output_missing_a_column_the_next_stage_needs_is_named() -> Result<()> {
    let text = onlineshop_text()?
        .replace("${WEIR_PG_PORT}", "5432")
        .replace("${WEIR_KAFKA_BOOTSTRAP}", "127.0.0.1:9092")
        .replace("keys = [\"productno\"]", "keys = [\"product_number\"]");
    let pipeline = load_variant("sample-mismatch", &text)??;
    let sample = repo_root().join("tests/data/debezium-1.2.5-onlineshop-sample.json");
    let err = weir::pipeline::validate_with_sample(&pipeline, &sample)
        .await
        .expect_err("gold keys the component does not return")
        .to_string();
    assert!(err.contains("gold.sales_report"), "{err}");
    assert!(err.contains("no column `product_number`"), "{err}");
    assert!(err.contains("productno"), "{err}");
    Ok(())
}
