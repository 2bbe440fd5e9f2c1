//! Gold: weighted changes of silver through the aggregate component, merged as per-group deltas.

use super::*;

pub(super) async fn gold_pass(
    pipeline: &Pipeline,
    name: &str,
    transform: &mut Transform,
) -> Result<LayerReport> {
    let stage = format!("gold.{name}");
    let Some(cfg) = pipeline.gold.get(name) else {
        return Ok(LayerReport::default());
    };
    let location = &cfg.layer.table;
    let mut report = LayerReport::default();
    let silver = open(&stage, &pipeline.silver.layer.table).await?;
    let Some(silver_latest) = silver.version() else {
        return Ok(report);
    };
    let mut gold = open(&stage, location).await?;
    let app = app_id(pipeline, &stage);
    let mut next = txn_version(&stage, location, &gold, &app)
        .await?
        .map_or(0, |v| v as u64 + 1);
    while next <= silver_latest {
        let end = (next + 9).min(silver_latest);
        let changes = read_changes(
            &stage,
            &pipeline.silver.layer.table,
            silver.clone(),
            next,
            end,
        )
        .await?;
        let weighted = weigh(&stage, changes)?;
        report.rows_in += weighted.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let deltas = match weighted {
            Some(b) if b.num_rows() > 0 => {
                let label = format!("silver versions {next}-{end}");
                match transform.call(&b, &label) {
                    Ok(deltas) => Some(deltas),
                    Err(e) => {
                        dead_letter(pipeline, &stage, &label, &b, e).await?;
                        report.dead_lettered += b.num_rows();
                        None
                    }
                }
            }
            _ => None,
        };
        match deltas {
            Some(d) if d.num_rows() > 0 => {
                report.rows_out += d.num_rows();
                gold = merge_gold(&stage, cfg, gold, d, txn).await?;
            }
            _ => {
                if gold.version().is_some() {
                    commit_progress_only(&stage, location, &mut gold, txn).await?;
                }
            }
        }
        report.commits += 1;
        next = end + 1;
    }
    report.table_version = gold.version();
    Ok(report)
}

/// Change-feed rows as weighted rows: +1 entering the table, −1 leaving it.
pub(super) fn weigh(
    stage: &str,
    changes: Vec<(RecordBatch, StringArray)>,
) -> Result<Option<RecordBatch>> {
    let mut out = Vec::new();
    for (batch, change_type) in changes {
        let weights: Int64Array = change_type
            .iter()
            .map(|t| match t {
                Some("insert" | "update_postimage") => Some(1),
                Some("delete" | "update_preimage") => Some(-1),
                _ => Some(0),
            })
            .collect();
        let weight = (
            Field::new("weight", DataType::Int64, false),
            Arc::new(weights) as ArrayRef,
        );
        out.push(with_columns(&batch, vec![weight]).map_err(|e| stage_err(stage, e))?);
    }
    concat(stage, out)
}

async fn merge_gold(
    stage: &str,
    cfg: &crate::config::GoldConfig,
    gold: DeltaTable,
    deltas: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let location = &cfg.layer.table;
    let schema = deltas.schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for required in cfg.keys.iter().chain(std::iter::once(&cfg.count_column)) {
        if !columns.contains(required) {
            return Err(stage_err(
                stage,
                format!("the component's output has no column `{required}`"),
            ));
        }
    }
    let measures: Vec<&String> = columns.iter().filter(|c| !cfg.keys.contains(c)).collect();
    let gold = if gold.version().is_none() {
        create_table(stage, location, gold, &deltas, &columns, &[]).await?
    } else {
        gold
    };
    let before_version = gold.version();
    let ctx = SessionContext::new();
    let source = ctx.read_batch(deltas).map_err(|e| stage_err(stage, e))?;
    let on = keys_match(&cfg.keys);
    let count = q(&cfg.count_column);
    let (table, _metrics) = gold
        .merge(source, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(commit_properties(txns.clone()))
        // A group whose last row left is removed, in the same commit.
        .when_matched_delete(|d| d.predicate(format!("target.{count} + source.{count} = 0")))
        .map_err(delta_err(stage, location))?
        .when_matched_update(|u| {
            measures.iter().fold(u, |u, c| {
                let c = q(c);
                u.update(
                    Column::from_name(c.as_str()),
                    format!("target.{c} + source.{c}"),
                )
            })
        })
        .map_err(delta_err(stage, location))?
        .when_not_matched_insert(|i| {
            columns
                .iter()
                .fold(i.predicate(format!("source.{count} <> 0")), |i, c| {
                    i.set(
                        Column::from_name(c.as_str()),
                        Expr::Column(Column::new(Some("source"), c.as_str())),
                    )
                })
        })
        .map_err(delta_err(stage, location))?
        .await
        .map_err(delta_err(stage, location))?;
    let mut table = table;
    if table.version() == before_version {
        commit_progress_only(stage, location, &mut table, txns).await?;
    }
    Ok(table)
}
