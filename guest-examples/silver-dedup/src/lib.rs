//! Silver layer: the latest change of each row.
//!
//! Per `id`, only the last change by (`commit_lsn`, `lsn`, `kafka_offset`) is kept, deletes
//! included (the host applies them); the output is ordered by `id` and keeps every input column, so
//! host columns such as `_ingested_at` pass through. Rows without an `id` (truncates) pass through
//! after them. Data-quality expectations are the host's job.
//!
//! A kept update whose text column holds Debezium's unchanged-TOAST placeholder takes the value
//! from the key's previous change in the batch, which the dropped changes would otherwise take
//! with them (the host fills it from the stored row when there is none).
//!
//! A change's own LSN can be below an earlier-committed transaction's, hence `commit_lsn` first;
//! without that column (older bronze tables) the order is (`lsn`, `kafka_offset`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringViewArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::DataType;
use arrow::datatypes::Int64Type;
use serde::Deserialize;
use weir_guest::columns;
use weir_guest::{RecordBatch, Result, RowTransform, TransformError, config, host};

pub struct SilverDedup {
    keep_history: bool,
}

/// Unknown keys are rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Keep every change of a key (for SCD type 2 silver, where each is a version), dropping only
    /// repeated deliveries; by default only the last change of a key is kept.
    #[serde(default)]
    keep_history: bool,
}

impl RowTransform for SilverDedup {
    fn configure(config_json: &str) -> Result<Self> {
        let Config { keep_history } = config::parse(config_json)?;
        Ok(Self { keep_history })
    }

    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self.keep_history {
            true => dedup_keeping_history(&batch),
            false => dedup(&batch),
        }
    }
}

weir_guest::export_row_transform!(SilverDedup);

/// Where a change sits: its key, then its order among the changes of that key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    id: i64,
    commit_lsn: i64,
    lsn: i64,
    kafka_offset: i64,
    row: u32,
}

impl Change {
    /// The same change delivered twice (a redelivery after a crash has a new offset but the same
    /// key and LSN).
    fn same_event(&self, other: &Change) -> bool {
        (self.id, self.commit_lsn, self.lsn) == (other.id, other.commit_lsn, other.lsn)
    }
}

/// Keeps the last change per `id`, ordered by `id`.
pub fn dedup(batch: &RecordBatch) -> Result<RecordBatch> {
    dedup_with(batch, false)
}

/// Keeps every change but repeated deliveries, ordered by `id` and sequence.
pub fn dedup_keeping_history(batch: &RecordBatch) -> Result<RecordBatch> {
    dedup_with(batch, true)
}

fn dedup_with(batch: &RecordBatch, keep_history: bool) -> Result<RecordBatch> {
    let ids = columns::primitive::<Int64Type>(batch, "id")?;
    let commit_lsns = match batch.column_by_name("commit_lsn") {
        Some(_) => Some(columns::primitive::<Int64Type>(batch, "commit_lsn")?),
        None => None,
    };
    let lsns = columns::primitive::<Int64Type>(batch, "lsn")?;
    let offsets = columns::primitive::<Int64Type>(batch, "kafka_offset")?;
    let row_limit = u32::try_from(batch.num_rows())
        .map_err(|_| TransformError::new("a batch of more than u32::MAX rows"))?;

    let mut changes = Vec::with_capacity(batch.num_rows());
    let mut unkeyed = Vec::new();
    for row in 0..row_limit {
        let index = row as usize;
        let read = |name: &str, value: Option<i64>| {
            value.ok_or_else(|| TransformError::at_row(index, format!("`{name}` is null")))
        };
        let Some(id) = columns::get(&ids, index) else {
            unkeyed.push(row);
            continue;
        };
        changes.push(Change {
            id,
            commit_lsn: match &commit_lsns {
                Some(commit_lsns) => read("commit_lsn", columns::get(commit_lsns, index))?,
                None => 0,
            },
            lsn: read("lsn", columns::get(&lsns, index))?,
            kafka_offset: read("kafka_offset", columns::get(&offsets, index))?,
            row,
        });
    }
    changes.sort_unstable();

    let mut keep = Vec::new();
    let (mut duplicates, mut superseded) = (0_u64, 0_u64);
    for (position, change) in changes.iter().enumerate() {
        match changes.get(position + 1) {
            Some(next) if next.same_event(change) => duplicates += 1,
            Some(next) if next.id == change.id && !keep_history => superseded += 1,
            _ => keep.push(position),
        }
    }

    let rows: Vec<u32> = keep
        .iter()
        .map(|&position| changes[position].row)
        .chain(unkeyed.iter().copied())
        .collect();
    let output = take_record_batch(batch, &UInt32Array::from(rows))?;
    let output = carry_toasted_values(batch, output, &changes, &keep)?;
    host::count("duplicates_dropped", duplicates);
    host::count("superseded_dropped", superseded);
    host::count("rows", output.num_rows() as u64);
    Ok(output)
}

/// The text at `row` of a `Utf8` or `Utf8View` column (what Arrow readers such as DataFusion's
/// give); `None` for a null or another type.
fn text_at(array: &dyn Array, row: usize) -> Option<&str> {
    if let Some(strings) = array.as_string_opt::<i32>() {
        return strings.is_valid(row).then(|| strings.value(row));
    }
    let views = array.as_string_view_opt()?;
    views.is_valid(row).then(|| views.value(row))
}

/// What Debezium writes for a TOASTed value the change did not touch.
const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Replaces placeholders in the kept changes (`output`'s first rows, `keep`'s positions in the
/// sorted `changes`) with the key's latest earlier value in `input`, when the batch has one.
fn carry_toasted_values(
    input: &RecordBatch,
    output: RecordBatch,
    changes: &[Change],
    keep: &[usize],
) -> Result<RecordBatch> {
    let ops = input.column_by_name("op");
    let is_delete = |row: usize| ops.is_some_and(|ops| text_at(ops.as_ref(), row) == Some("d"));
    let mut columns = output.columns().to_vec();
    for (index, column) in columns.iter_mut().enumerate() {
        let all = input.column(index).as_ref();
        let placeholder =
            |array: &dyn Array, row: usize| text_at(array, row) == Some(UNAVAILABLE_VALUE);
        if !(0..keep.len()).any(|row| placeholder(column.as_ref(), row)) {
            continue;
        }
        let kept = column.as_ref();
        let carried: Vec<Option<&str>> = (0..kept.len())
            .map(|row| {
                let own = text_at(kept, row);
                let Some(&position) = keep.get(row).filter(|_| placeholder(kept, row)) else {
                    return own;
                };
                let id = changes[position].id;
                let earlier = changes[..position]
                    .iter()
                    .rev()
                    .take_while(|c| c.id == id)
                    .map(|c| c.row as usize)
                    .find(|&r| !placeholder(all, r));
                match earlier {
                    Some(r) if !is_delete(r) => text_at(all, r).or(own),
                    _ => own,
                }
            })
            .collect();
        let carried: ArrayRef = match kept.data_type() {
            DataType::Utf8View => Arc::new(StringViewArray::from(carried)),
            _ => Arc::new(StringArray::from(carried)),
        };
        *column = carried;
    }
    Ok(RecordBatch::try_new(output.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::TimestampMicrosecondType;
    use weir_guest::testing;

    use super::*;

    /// (id, lsn, kafka_offset, op): a cut-down bronze row.
    type Event = (i64, i64, i64, &'static str);

    fn bronze(events: &[Event]) -> RecordBatch {
        let column = |f: fn(&Event) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(events.iter().map(f)))
        };
        RecordBatch::try_from_iter(vec![
            ("id", column(|e| e.0)),
            (
                "op",
                Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.3))) as ArrayRef,
            ),
            ("lsn", column(|e| e.1)),
            ("kafka_offset", column(|e| e.2)),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(batch: &RecordBatch) -> Result<RecordBatch> {
        testing::run_row_transform::<SilverDedup>("{}", batch)
    }

    /// The (id, lsn, kafka_offset, op) of each output row.
    fn kept(out: &RecordBatch) -> Vec<(i64, i64, i64, String)> {
        let int = |name: &str| {
            columns::primitive::<Int64Type>(out, name).unwrap_or_else(|e| panic!("{e}"))
        };
        let (ids, lsns, offsets) = (int("id"), int("lsn"), int("kafka_offset"));
        let ops = columns::utf8(out, "op").unwrap_or_else(|e| panic!("{e}"));
        (0..out.num_rows())
            .map(|i| {
                (
                    ids.value(i),
                    lsns.value(i),
                    offsets.value(i),
                    ops.value(i).to_owned(),
                )
            })
            .collect()
    }

    fn events(expected: &[Event]) -> Vec<(i64, i64, i64, String)> {
        expected
            .iter()
            .map(|&(id, lsn, offset, op)| (id, lsn, offset, op.to_owned()))
            .collect()
    }

    #[test]
    fn last_change_per_key_wins() -> Result<()> {
        let out = run(&bronze(&[
            (1, 100, 0, "c"),
            (1, 105, 3, "u"),
            (1, 103, 2, "u"),
        ]))?;
        assert_eq!(kept(&out), events(&[(1, 105, 3, "u")]));
        assert_eq!(host::counter("superseded_dropped"), 2);
        assert_eq!(host::counter("duplicates_dropped"), 0);
        Ok(())
    }

    /// `batch` with a `commit_lsn` column.
    fn with_commit_lsn(batch: RecordBatch, commit_lsns: &[i64]) -> RecordBatch {
        let schema = batch.schema();
        let mut columns: Vec<(String, ArrayRef)> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(batch.columns().iter().cloned())
            .collect();
        columns.push((
            "commit_lsn".into(),
            Arc::new(Int64Array::from(commit_lsns.to_vec())),
        ));
        RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn commit_lsn_orders_before_the_change_lsn() -> Result<()> {
        // Transaction A commits at 300 with a change at LSN 150; B commits earlier, at 250, with a
        // change at LSN 200. A's change is the later one although its own LSN is lower.
        let batch = bronze(&[(1, 150, 1, "u"), (1, 200, 0, "u")]);
        let out = run(&with_commit_lsn(batch, &[300, 250]))?;
        assert_eq!(kept(&out), events(&[(1, 150, 1, "u")]));
        assert_eq!(host::counter("superseded_dropped"), 1);
        Ok(())
    }

    #[test]
    fn a_null_commit_lsn_is_a_row_error() {
        let batch = bronze(&[(1, 150, 1, "u")]);
        let batch = with_commit_lsn(batch, &[300]);
        let schema = batch.schema();
        let columns = schema.fields().iter().zip(batch.columns()).map(|(f, c)| {
            let c = if f.name() == "commit_lsn" {
                Arc::new(Int64Array::from(vec![None::<i64>])) as ArrayRef
            } else {
                c.clone()
            };
            (f.name().clone(), c)
        });
        let batch = RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"));
        let error = run(&batch).err();
        assert!(
            matches!(&error, Some(TransformError { row: Some(0), message }) if message.contains("commit_lsn"))
        );
    }

    #[test]
    fn a_delete_that_comes_last_is_kept() -> Result<()> {
        let out = run(&bronze(&[(4, 100, 0, "c"), (4, 200, 1, "d")]))?;
        assert_eq!(kept(&out), events(&[(4, 200, 1, "d")]));
        Ok(())
    }

    #[test]
    fn of_one_change_delivered_twice_the_later_offset_is_kept() -> Result<()> {
        let out = run(&bronze(&[(2, 100, 9, "u"), (2, 100, 7, "u")]))?;
        assert_eq!(kept(&out), events(&[(2, 100, 9, "u")]));
        assert_eq!(host::counter("duplicates_dropped"), 1);
        Ok(())
    }

    #[test]
    fn exact_repeats_are_dropped_and_counted_as_duplicates() -> Result<()> {
        let out = run(&bronze(&[
            (1, 100, 0, "c"),
            (1, 100, 0, "c"),
            (1, 90, 5, "c"),
            (2, 50, 1, "c"),
            (2, 50, 1, "c"),
        ]))?;
        assert_eq!(kept(&out), events(&[(1, 100, 0, "c"), (2, 50, 1, "c")]));
        assert_eq!(host::counter("duplicates_dropped"), 2);
        assert_eq!(host::counter("superseded_dropped"), 1);
        assert_eq!(host::counter("rows"), 2);
        Ok(())
    }

    #[test]
    fn a_change_redelivered_at_a_new_offset_is_a_duplicate() -> Result<()> {
        let out = run(&bronze(&[
            (1, 100, 0, "u"),
            (1, 100, 7, "u"),
            (1, 120, 8, "d"),
        ]))?;
        assert_eq!(kept(&out), events(&[(1, 120, 8, "d")]));
        assert_eq!(host::counter("duplicates_dropped"), 1);
        assert_eq!(host::counter("superseded_dropped"), 1);
        Ok(())
    }

    #[test]
    fn output_is_ordered_by_id() -> Result<()> {
        let out = run(&bronze(&[
            (30, 1, 0, "c"),
            (10, 2, 1, "c"),
            (20, 3, 2, "c"),
        ]))?;
        assert_eq!(
            kept(&out),
            events(&[(10, 2, 1, "c"), (20, 3, 2, "c"), (30, 1, 0, "c")])
        );
        Ok(())
    }

    #[test]
    fn unknown_columns_pass_through_and_the_schema_is_unchanged() -> Result<()> {
        let base = bronze(&[(1, 100, 0, "c"), (1, 101, 1, "u")]);
        let ingested: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![10, 20]).with_timezone("UTC"));
        let file: ArrayRef = Arc::new(StringArray::from(vec!["a.parquet", "b.parquet"]));
        let mut columns: Vec<(String, ArrayRef)> = base
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(base.columns().iter().cloned())
            .collect();
        columns.push(("_ingested_at".into(), ingested));
        columns.push(("_landing_file".into(), file));
        let input = RecordBatch::try_from_iter(columns)?;

        let out = run(&input)?;
        assert_eq!(out.schema(), input.schema());
        let ingested = out
            .column_by_name("_ingested_at")
            .map(|c| c.as_primitive::<TimestampMicrosecondType>().value(0));
        assert_eq!(ingested, Some(20));
        let file = out
            .column_by_name("_landing_file")
            .map(|c| c.as_string::<i32>().value(0).to_owned());
        assert_eq!(file.as_deref(), Some("b.parquet"));
        Ok(())
    }

    #[test]
    fn a_null_sequence_is_a_row_error() {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("lsn", Arc::new(Int64Array::from(vec![Some(1), None]))),
            ("kafka_offset", Arc::new(Int64Array::from(vec![0, 1]))),
        ];
        let error =
            run(&RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))).err();
        assert!(
            matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("lsn"))
        );
    }

    #[test]
    fn an_empty_batch_stays_empty() -> Result<()> {
        let input = bronze(&[]);
        let out = run(&input)?;
        assert_eq!((out.num_rows(), out.schema()), (0, input.schema()));
        Ok(())
    }

    /// (id, lsn, op, productname): rows with a text column that may be a TOAST placeholder.
    fn with_text(rows: &[(Option<i64>, i64, &str, Option<&str>)]) -> RecordBatch {
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "id",
                Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()),
            ),
            (
                "op",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "lsn",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "kafka_offset",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "productname",
                Arc::new(rows.iter().map(|r| r.3).collect::<StringArray>()),
            ),
        ];
        RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
    }

    fn texts(out: &RecordBatch) -> Vec<Option<String>> {
        let names = columns::utf8(out, "productname").unwrap_or_else(|e| panic!("{e}"));
        (0..out.num_rows())
            .map(|i| names.is_valid(i).then(|| names.value(i).to_owned()))
            .collect()
    }

    #[test]
    fn rows_without_a_key_pass_through_after_the_keyed_ones() -> Result<()> {
        let out = run(&with_text(&[
            (Some(2), 10, "c", Some("b")),
            (None, 20, "t", None),
            (Some(1), 30, "c", Some("a")),
            (Some(2), 40, "u", Some("b2")),
        ]))?;
        let ids = columns::primitive::<Int64Type>(&out, "id")?;
        let ids: Vec<Option<i64>> = (0..out.num_rows()).map(|i| columns::get(&ids, i)).collect();
        assert_eq!(ids, [Some(1), Some(2), None]);
        assert_eq!(columns::utf8(&out, "op")?.value(2), "t");
        Ok(())
    }

    #[test]
    fn an_unchanged_toasted_value_is_taken_from_the_keys_earlier_change() -> Result<()> {
        let out = run(&with_text(&[
            (Some(1), 10, "c", Some("a long description")),
            (Some(1), 20, "u", Some(UNAVAILABLE_VALUE)),
            (Some(1), 30, "u", Some(UNAVAILABLE_VALUE)),
            // Nothing earlier in the batch: the host fills it from the stored row.
            (Some(2), 40, "u", Some(UNAVAILABLE_VALUE)),
            // Not across a delete.
            (Some(3), 50, "d", None),
            (Some(3), 60, "u", Some(UNAVAILABLE_VALUE)),
        ]))?;
        assert_eq!(
            texts(&out),
            [
                Some("a long description".to_owned()),
                Some(UNAVAILABLE_VALUE.to_owned()),
                Some(UNAVAILABLE_VALUE.to_owned()),
            ]
        );
        Ok(())
    }

    #[test]
    fn with_keep_history_every_change_but_repeats_stays_in_order() -> Result<()> {
        let batch = bronze(&[
            (1, 105, 3, "u"),
            (1, 100, 0, "c"),
            (1, 105, 4, "u"),
            (2, 90, 1, "c"),
        ]);
        let out = testing::run_row_transform::<SilverDedup>(r#"{"keep_history": true}"#, &batch)?;
        assert_eq!(
            kept(&out),
            events(&[(1, 100, 0, "c"), (1, 105, 4, "u"), (2, 90, 1, "c")])
        );
        assert_eq!(host::counter("duplicates_dropped"), 1);
        assert_eq!(host::counter("superseded_dropped"), 0);
        Ok(())
    }
}
