//! Gold: weighted changes of silver through the aggregate component, merged as per-group deltas.

use deltalake::datafusion::logical_expr::lit;

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
    let mut next = next_input_version(&stage, location, &gold, &app).await?;
    let contract = OutputContract::gold(name, cfg).with_table(location, &gold);
    while next <= silver_latest {
        let (end, changes) = read_changes_bounded(
            &stage,
            &pipeline.silver.layer.table,
            &silver,
            next,
            silver_latest,
        )
        .await?;
        let weighted = weigh(&stage, changes)?;
        report.rows_in += weighted.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let deltas = match weighted {
            Some(b) if b.num_rows() > 0 => {
                let label = format!("silver versions {next}-{end}");
                match transform.call_checked(&b, &label, |i, o| contract.violation(i, o)) {
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

/// Recomputes gold table `name` from silver as it stands, as `weir rebuild --layer gold` does:
/// every silver row enters with weight +1, a batch at a time, the component's per-group deltas are
/// summed, and the table is replaced in one commit recording silver's version, so incremental
/// passes go on from there and a crash midway leaves the old table whole.
pub(super) async fn rebuild_gold(
    pipeline: &Pipeline,
    name: &str,
    transform: &mut Transform,
) -> Result<LayerReport> {
    use deltalake::datafusion::functions_aggregate::expr_fn::sum;
    use deltalake::datafusion::logical_expr::cast;
    use futures::StreamExt as _;

    let stage = format!("gold.{name}");
    let cfg = pipeline
        .gold
        .get(name)
        .ok_or_else(|| stage_err(&stage, "no such gold table in the pipeline file"))?;
    let location = &cfg.layer.table;
    let contract = OutputContract::gold(name, cfg);
    let silver_location = &pipeline.silver.layer.table;
    let silver = open(&stage, silver_location).await?;
    let Some(silver_version) = silver.version() else {
        return Err(stage_err(
            &stage,
            format!("silver ({silver_location}) has no table yet: nothing to rebuild from"),
        ));
    };
    let err = |e: deltalake::datafusion::error::DataFusionError| stage_err(&stage, e);
    let ctx = SessionContext::new();
    let provider = silver
        .table_provider()
        .await
        .map_err(|e| stage_err(&stage, e))?;
    let rows = ctx.read_table(provider).map_err(err)?;
    let schema = Arc::new(rows.schema().as_arrow().clone());
    let mut stream = rows.execute_stream().await.map_err(err)?;
    let mut progress = crate::observe::Progress::start(
        "rebuild",
        stage.clone(),
        stored_rows(&silver).unwrap_or(0),
        0,
    );

    let mut report = LayerReport::default();
    let mut deltas = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    loop {
        let next = stream.next().await.transpose().map_err(err)?;
        let done = next.is_none();
        if let Some(batch) = next {
            pending_rows += batch.num_rows();
            pending.push(batch);
        }
        progress.set((report.rows_in + pending_rows) as u64);
        // Full chunks, then the rest; and one call even for an empty silver, as the component's
        // output gives the table's schema.
        if pending_rows >= ROWS_PER_COMMIT || (done && (pending_rows > 0 || deltas.is_empty())) {
            let batch = arrow::compute::concat_batches(&schema, &pending)
                .map_err(|e| stage_err(&stage, e))?;
            let label = format!(
                "silver version {silver_version}, rows {}-{}",
                report.rows_in,
                report.rows_in + pending_rows
            );
            report.rows_in += pending_rows;
            let inserts = StringArray::from(vec!["insert"; batch.num_rows()]);
            if let Some(weighted) = weigh(&stage, vec![(batch, inserts)])? {
                let checked =
                    transform.call_checked(&weighted, &label, |i, o| contract.violation(i, o));
                deltas.push(checked?);
            }
            pending.clear();
            pending_rows = 0;
        }
        if done {
            break;
        }
    }

    // The sum of the deltas per group, in the component's own column types.
    let Some(first) = deltas.first() else {
        return Err(stage_err(&stage, "the component returned nothing"));
    };
    let delta_schema = first.schema();
    let summed = ctx.read_batches(deltas).map_err(err)?;
    let key_columns: Vec<Expr> = cfg
        .keys
        .iter()
        .map(|k| Expr::Column(Column::from_name(k.as_str())))
        .collect();
    let measures: Vec<&Arc<Field>> = delta_schema
        .fields()
        .iter()
        .filter(|f| !cfg.keys.contains(f.name()))
        .collect();
    let sums: Vec<Expr> = measures
        .iter()
        .map(|f| sum(Expr::Column(Column::from_name(f.name().as_str()))).alias(f.name()))
        .collect();
    let typed: Vec<Expr> = delta_schema
        .fields()
        .iter()
        .map(|f| {
            let column = Expr::Column(Column::from_name(f.name().as_str()));
            match cfg.keys.contains(f.name()) {
                true => column,
                false => cast(column, f.data_type().clone()).alias(f.name()),
            }
        })
        .collect();
    let groups = summed
        .aggregate(key_columns, sums)
        .map_err(err)?
        .filter(Expr::Column(Column::from_name(cfg.count_column.as_str())).not_eq(lit(0_i64)))
        .map_err(err)?
        .select(typed)
        .map_err(err)?
        .collect()
        .await
        .map_err(err)?;
    let groups =
        arrow::compute::concat_batches(&delta_schema, &groups).map_err(|e| stage_err(&stage, e))?;
    report.rows_out = groups.num_rows();

    let columns: Vec<String> = delta_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let gold = open(&stage, location).await?;
    let gold = if gold.version().is_none() {
        create_table(&stage, location, gold, &groups, &columns, &[]).await?
    } else {
        gold
    };
    let txn = vec![Transaction::new(
        app_id(pipeline, &stage),
        silver_version as i64,
    )];
    let gold = gold
        .write(vec![groups])
        .with_save_mode(SaveMode::Overwrite)
        .with_commit_properties(commit_properties(txn))
        .await
        .map_err(delta_err(&stage, location))?;
    report.commits = 1;
    report.table_version = gold.version();
    tracing::info!(table = %location, groups = report.rows_out, silver_version, "gold rebuilt from silver");
    Ok(report)
}

/// Change-feed rows as weighted rows: +1 entering the table, −1 leaving it.
pub(super) fn weigh(
    stage: &str,
    changes: Vec<(RecordBatch, StringArray)>,
) -> Result<Option<RecordBatch>> {
    let mut out = Vec::new();
    for (batch, change_type) in changes {
        // In an SCD type 2 silver only current versions (`__END_AT` null) are the table's rows.
        let ended = batch.column_by_name(silver::END_AT).cloned();
        let weights: Int64Array = change_type
            .iter()
            .enumerate()
            .map(|(row, t)| match t {
                _ if ended.as_ref().is_some_and(|e| e.is_valid(row)) => Some(0),
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
            insert_from_source(i, format!("source.{count} <> 0"), &columns)
        })
        .map_err(delta_err(stage, location))?
        .await
        .map_err(delta_err(stage, location))?;
    record_progress_if_unchanged(stage, location, table, before_version, txns).await
}

/// The rows of a table by its files' statistics, for progress estimates.
fn stored_rows(table: &DeltaTable) -> Option<u64> {
    let files = table.snapshot().ok()?.add_actions_table(true).ok()?;
    let counts = files
        .column_by_name("num_records")?
        .as_any()
        .downcast_ref::<Int64Array>()?;
    Some(counts.iter().flatten().sum::<i64>().max(0) as u64)
}
