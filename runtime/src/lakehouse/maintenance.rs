//! Table care: compaction of small files, then vacuum, for every table a pipeline writes. It runs
//! between passes of the layers (or on demand), so no writer of the same process races it; other
//! processes' writers may, and a compaction that loses to one is left for the next time. A
//! compaction commit changes no data (`dataChange = false`), so the change feeds the next layers
//! read are untouched. Checkpoints need no schedule: every table is created with
//! `delta.checkpointInterval`, and the writer checkpoints as it commits.

use chrono::Duration;

use super::*;
use deltalake::delta_datafusion::create_session_state_with_spill_config;
use deltalake::operations::optimize::{Metrics, OptimizeType};
use parquet::basic::{Compression, ZstdLevel};

use crate::config::MaintenanceConfig;

/// What maintenance did to one table.
#[derive(Debug, Default, Clone)]
pub struct MaintenanceReport {
    pub files_compacted: u64,
    pub files_written: u64,
    pub files_vacuumed: usize,
    pub table_version: Option<u64>,
}

impl fmt::Display for MaintenanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files compacted into {}, {} unused files vacuumed",
            self.files_compacted, self.files_written, self.files_vacuumed
        )?;
        if let Some(v) = self.table_version {
            write!(f, ", table at version {v}")?;
        }
        Ok(())
    }
}

/// Every table the pipeline writes, named as in reports.
fn tables(pipeline: &Pipeline) -> Vec<(String, String)> {
    let silver = &pipeline.silver.layer.table;
    let mut out = vec![
        ("bronze".to_owned(), pipeline.bronze.layer.table.clone()),
        ("silver".to_owned(), silver.clone()),
        (
            "silver tombstones".to_owned(),
            silver::tombstones_location(silver),
        ),
    ];
    if let Some(q) = &pipeline.silver.quarantine_table {
        out.push(("silver quarantine".to_owned(), q.clone()));
    }
    out.extend(
        pipeline
            .gold
            .iter()
            .map(|(n, g)| (format!("gold.{n}"), g.layer.table.clone())),
    );
    out
}

/// delta-rs's OPTIMIZE writes zstd at this level unless told otherwise.
const ZSTD_LEVEL: i32 = 4;

/// Memory the sort of silver's clustering may hold before it spills.
const SORT_MEMORY_BYTES: usize = 256 << 20;

enum Compaction {
    /// Small files packed together (delta-rs's default OPTIMIZE).
    BinPack,
    /// Rewritten in key order into files of a bounded size (silver: see [`silver::clustering`]).
    SortByKey(silver::Clustering),
    /// Left as they are: silver's files already in key order and of bounded size.
    None,
}

fn compaction(name: &str, pipeline: &Pipeline, table: &DeltaTable) -> Result<Compaction> {
    if name != "silver" {
        return Ok(Compaction::BinPack);
    }
    let silver = &pipeline.silver;
    match silver::clustering(table, silver)? {
        Some(sorted) => Ok(Compaction::SortByKey(sorted)),
        None if silver::key_ordered_by(silver).is_some() => Ok(Compaction::None),
        None => Ok(Compaction::BinPack),
    }
}

/// Compacts and vacuums every table of the pipeline that exists.
pub async fn maintain(
    pipeline: &Pipeline,
    config: &MaintenanceConfig,
) -> Result<Vec<(String, MaintenanceReport)>> {
    let mut out = Vec::new();
    for (name, location) in tables(pipeline) {
        let stage = format!("maintenance of {name}");
        let table = open(&stage, &location).await?;
        if table.version().is_none() {
            continue;
        }
        let compacted = match compaction(&name, pipeline, &table)? {
            Compaction::BinPack => table.optimize().await,
            Compaction::SortByKey(sorted) => {
                table
                    .optimize()
                    .with_type(OptimizeType::ZOrder(vec![sorted.key]))
                    .with_target_size(sorted.target_file_bytes)
                    .with_writer_properties(silver::writer_properties(
                        &pipeline.silver,
                        // delta-rs's OPTIMIZE default: compaction also makes files smaller.
                        Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default()),
                    ))
                    // Past this the sort spills to disk rather than holding the table.
                    .with_session_state(Arc::new(create_session_state_with_spill_config(
                        Some(SORT_MEMORY_BYTES),
                        None,
                    )))
                    .await
            }
            Compaction::None => Ok((table, Metrics::default())),
        }
        .map_err(delta_err(&stage, &location));
        let (table, compacted) = match compacted {
            // A writer changed the files being compacted: they are compacted next time.
            Err(e) if e.is_commit_conflict() => {
                tracing::info!(table = %location, error = %e, "compaction lost a commit race; left for next time");
                continue;
            }
            other => other?,
        };
        let retention = i64::try_from(config.vacuum_retention_hours)
            .ok()
            .and_then(Duration::try_hours)
            .unwrap_or(Duration::MAX);
        let (table, vacuumed) = table
            .vacuum()
            .with_retention_period(retention)
            // The pipeline file's retention is the owner's decision, shorter than Delta's or not.
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta_err(&stage, &location))?;
        let report = MaintenanceReport {
            files_compacted: compacted.num_files_removed,
            files_written: compacted.num_files_added,
            files_vacuumed: vacuumed.files_deleted.len(),
            table_version: table.version(),
        };
        tracing::info!(table = %location, %report, "table maintained");
        out.push((name, report));
    }
    Ok(out)
}
