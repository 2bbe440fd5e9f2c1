//! Where each layer's table stands: its version, last commit, and the input still waiting for it.

use super::*;
use bronze::{LandingProgress, landing_progress};

/// One layer's table, as `weir status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TablePosition {
    /// `bronze`, `silver` or `gold.<name>`.
    pub stage: String,
    pub table: String,
    /// None until the first commit.
    pub version: Option<u64>,
    /// When the latest version was committed (milliseconds since the epoch).
    pub last_commit_ms: Option<i64>,
    /// Input not yet taken in: landing files for bronze, versions of the layer below otherwise.
    pub pending: u64,
    pub pending_unit: &'static str,
    /// What the table has taken in: per Kafka partition the last offset (bronze), or the last
    /// version of the layer below.
    pub consumed: BTreeMap<String, i64>,
}

/// Every layer's position, in pipeline order; a table that cannot be read gives its error instead.
pub async fn positions(pipeline: &Pipeline) -> Vec<(String, Result<TablePosition>)> {
    let mut out = vec![
        ("bronze".to_owned(), bronze_position(pipeline).await),
        (
            "silver".to_owned(),
            follower_position(
                pipeline,
                "silver",
                &pipeline.silver.layer.table,
                &pipeline.bronze.layer.table,
            )
            .await,
        ),
    ];
    for (name, gold) in &pipeline.gold {
        let stage = format!("gold.{name}");
        let position = follower_position(
            pipeline,
            &stage,
            &gold.layer.table,
            &pipeline.silver.layer.table,
        )
        .await;
        out.push((stage, position));
    }
    out
}

async fn bronze_position(pipeline: &Pipeline) -> Result<TablePosition> {
    const STAGE: &str = "bronze";
    let location = &pipeline.bronze.layer.table;
    let table = open(STAGE, location).await?;
    let LandingProgress { pending, done } = landing_progress(pipeline, &table).await?;
    Ok(TablePosition {
        stage: STAGE.to_owned(),
        table: location.clone(),
        version: table.version(),
        last_commit_ms: last_commit_ms(STAGE, location, &table).await?,
        pending: pending.len() as u64,
        pending_unit: "landing files",
        consumed: done
            .into_iter()
            .map(|(p, offset)| (format!("partition {p}"), offset))
            .collect(),
    })
}

/// A table fed by the change feed of the one below it (silver by bronze, gold by silver).
async fn follower_position(
    pipeline: &Pipeline,
    stage: &str,
    location: &str,
    below_location: &str,
) -> Result<TablePosition> {
    let table = open(stage, location).await?;
    let below = open(stage, below_location).await?;
    let next = next_input_version(stage, location, &table, &app_id(pipeline, stage)).await?;
    let pending = below
        .version()
        .map_or(0, |latest| (latest + 1).saturating_sub(next));
    let mut consumed = BTreeMap::new();
    if next > 0 {
        consumed.insert(format!("{below_location} version"), next as i64 - 1);
    }
    Ok(TablePosition {
        stage: stage.to_owned(),
        table: location.to_owned(),
        version: table.version(),
        last_commit_ms: last_commit_ms(stage, location, &table).await?,
        pending,
        pending_unit: "versions",
        consumed,
    })
}

async fn last_commit_ms(stage: &str, location: &str, table: &DeltaTable) -> Result<Option<i64>> {
    use futures::StreamExt;
    if table.version().is_none() {
        return Ok(None);
    }
    match table.history(Some(1)).next().await {
        Some(commit) => Ok(commit.map_err(delta_err(stage, location))?.timestamp),
        None => Ok(None),
    }
}
