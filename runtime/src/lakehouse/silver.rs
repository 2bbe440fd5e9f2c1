//! Silver: APPLY CHANGES INTO a Delta table, keyed and sequenced.

use super::*;

pub(super) async fn silver_pass(pipeline: &Pipeline, transform: &mut Transform) -> Result<LayerReport> {
    const STAGE: &str = "silver";
    let silver_location = &pipeline.silver.layer.table;
    let mut report = LayerReport::default();
    let mut bronze = open(STAGE, &pipeline.bronze.layer.table).await?;
    let Some(bronze_latest) = bronze.version() else {
        return Ok(report);
    };
    let mut silver = open(STAGE, silver_location).await?;
    let app = app_id(pipeline, STAGE);
    let mut next = txn_version(STAGE, silver_location, &silver, &app)
        .await?
        .map_or(0, |v| v as u64 + 1);
    while next <= bronze_latest {
        // Bronze commits hold at most ROWS_PER_COMMIT rows; take a few at a time.
        let end = (next + 9).min(bronze_latest);
        bronze
            .update_state()
            .await
            .map_err(delta_err(STAGE, &pipeline.bronze.layer.table))?;
        let input = read_changes(
            STAGE,
            &pipeline.bronze.layer.table,
            bronze.clone(),
            next,
            end,
        )
        .await?;
        let rows: Vec<RecordBatch> = input.into_iter().map(|(b, _)| b).collect();
        let input = concat(STAGE, rows)?;
        report.rows_in += input.as_ref().map_or(0, RecordBatch::num_rows);
        let txn = vec![Transaction::new(&app, end as i64)];
        let changes = match input {
            Some(batch) if batch.num_rows() > 0 => {
                let label = format!("bronze versions {next}-{end}");
                match transform.call(&batch, &label) {
                    Ok(out) => {
                        let (kept, dropped) = apply_expectations(pipeline, out).await?;
                        report.dropped_by_expectations += dropped;
                        kept
                    }
                    Err(e) => {
                        dead_letter(pipeline, STAGE, &label, &batch, e).await?;
                        report.dead_lettered += batch.num_rows();
                        None
                    }
                }
            }
            _ => None,
        };
        match changes {
            Some(batch) if batch.num_rows() > 0 => {
                report.rows_out += batch.num_rows();
                silver = merge_silver(pipeline, silver, batch, txn).await?;
            }
            _ => {
                if silver.version().is_some() {
                    commit_progress_only(STAGE, silver_location, &mut silver, txn).await?;
                }
            }
        }
        report.commits += 1;
        next = end + 1;
    }
    report.table_version = silver.version();
    Ok(report)
}

/// Applies the silver expectations (SQL predicates) to the component's output.
pub(super) async fn apply_expectations(
    pipeline: &Pipeline,
    batch: RecordBatch,
) -> Result<(Option<RecordBatch>, usize)> {
    const STAGE: &str = "silver";
    if pipeline.silver.expectations.is_empty() {
        return Ok((Some(batch), 0));
    }
    let ctx = SessionContext::new();
    let before = batch.num_rows();
    let mut df = ctx.read_batch(batch).map_err(|e| stage_err(STAGE, e))?;
    for e in &pipeline.silver.expectations {
        let predicate = df.parse_sql_expr(&e.expect).map_err(|err| {
            stage_err(
                STAGE,
                format!(
                    "expectation `{}`: cannot parse `{}`: {err}",
                    e.name, e.expect
                ),
            )
        })?;
        // A NULL outcome is a violation, as in DLT.
        let passes = Expr::IsTrue(Box::new(predicate));
        let violations = df
            .clone()
            .filter(Expr::Not(Box::new(passes.clone())))
            .map_err(|err| stage_err(STAGE, err))?
            .count()
            .await
            .map_err(|err| stage_err(STAGE, err))?;
        if violations == 0 {
            continue;
        }
        match e.on_violation {
            OnViolation::Warn => {
                tracing::warn!(expectation = %e.name, rows = violations, "expectation violated (kept)")
            }
            OnViolation::Drop => {
                tracing::warn!(expectation = %e.name, rows = violations, "expectation violated (dropped)");
                df = df.filter(passes).map_err(|err| stage_err(STAGE, err))?;
            }
            OnViolation::Fail => {
                return Err(LakehouseError::ExpectationFailed {
                    stage: STAGE.into(),
                    name: e.name.clone(),
                    expect: e.expect.clone(),
                    rows: violations,
                });
            }
        }
    }
    let batches = df.collect().await.map_err(|e| stage_err(STAGE, e))?;
    let kept = concat(STAGE, batches)?;
    let after = kept.as_ref().map_or(0, RecordBatch::num_rows);
    Ok((kept, before - after))
}

/// Columns bronze carries that silver does not keep.
pub(super) const SILVER_DROPPED: [&str; 1] = ["op"];

async fn merge_silver(
    pipeline: &Pipeline,
    silver: DeltaTable,
    changes: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    const STAGE: &str = "silver";
    let location = &pipeline.silver.layer.table;
    let cfg = &pipeline.silver;
    let target_columns: Vec<String> = changes
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !SILVER_DROPPED.contains(&n.as_str()))
        .collect();
    for required in cfg.keys.iter().chain(&cfg.sequence_by) {
        if !target_columns.contains(required) {
            return Err(stage_err(
                STAGE,
                format!(
                    "the silver component's output has no column `{required}` (named in silver.keys or silver.sequence_by)"
                ),
            ));
        }
    }
    let silver = if silver.version().is_none() {
        create_table(
            STAGE,
            location,
            silver,
            &changes,
            &target_columns,
            &cfg.layer.partition_by,
        )
        .await?
    } else {
        silver
    };
    let before_version = silver.version();
    let ctx = SessionContext::new();
    let source = ctx.read_batch(changes).map_err(|e| stage_err(STAGE, e))?;
    let on = keys_match(&cfg.keys);
    let newer = sequence_newer(&cfg.sequence_by);
    let is_delete = format!("({})", qualify_source(&cfg.apply_as_deletes));
    let src = |c: &str| Expr::Column(Column::new(Some("source"), c));
    let (table, metrics) = silver
        .merge(source, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(commit_properties(txns.clone()))
        .when_matched_delete(|d| d.predicate(format!("{is_delete} AND {newer}")))
        .map_err(delta_err(STAGE, location))?
        .when_matched_update(|u| {
            target_columns.iter().fold(
                u.predicate(format!("NOT {is_delete} AND {newer}")),
                |u, c| u.update(Column::from_name(c.as_str()), src(c)),
            )
        })
        .map_err(delta_err(STAGE, location))?
        .when_not_matched_insert(|i| {
            target_columns
                .iter()
                .fold(i.predicate(format!("NOT {is_delete}")), |i, c| {
                    i.set(Column::from_name(c.as_str()), src(c))
                })
        })
        .map_err(delta_err(STAGE, location))?
        .await
        .map_err(delta_err(STAGE, location))?;
    let mut table = table;
    if table.version() == before_version {
        // Nothing changed (every event was late or repeated): record the progress alone.
        commit_progress_only(STAGE, location, &mut table, txns).await?;
    }
    tracing::info!(
        table = %location,
        inserted = metrics.num_target_rows_inserted,
        updated = metrics.num_target_rows_updated,
        deleted = metrics.num_target_rows_deleted,
        version = ?table.version(),
        "silver merge"
    );
    Ok(table)
}

/// `(s.a, s.b) > (t.a, t.b)` written out, so a repeated or older event never overwrites a newer one.
fn sequence_newer(columns: &[String]) -> String {
    let mut clauses = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let mut parts: Vec<String> = columns[..i]
            .iter()
            .map(|p| format!("source.{} = target.{}", q(p), q(p)))
            .collect();
        parts.push(format!("source.{} > target.{}", q(c), q(c)));
        clauses.push(format!("({})", parts.join(" AND ")));
    }
    format!("({})", clauses.join(" OR "))
}

/// Prefixes bare column names in a simple predicate like `op = 'd'` with `source.`.
fn qualify_source(predicate: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            let keyword = [
                "and", "or", "not", "is", "null", "in", "true", "false", "like",
            ]
            .contains(&word.to_lowercase().as_str());
            if keyword
                || word.chars().next().is_some_and(|c| c.is_ascii_digit())
                || word.contains('.')
            {
                out.push_str(word);
            } else {
                out.push_str("source.");
                out.push_str(word);
            }
            word.clear();
        }
    };
    for ch in predicate.chars() {
        if in_string {
            out.push(ch);
            if ch == '\'' {
                in_string = false;
            }
        } else if ch == '\'' {
            flush(&mut word, &mut out);
            in_string = true;
            out.push(ch);
        } else if ch.is_alphanumeric() || ch == '_' || ch == '.' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

