//! Gold layer: sales per product, as deltas.
//!
//! Each input row is a silver row with a `weight` of +1 (entering) or -1 (leaving); the output has
//! one row per group touched with the change of its totals, which the host adds to the stored ones.
//! Sums are exact: quantities in `i64`, sales in `i128` hundredths, overflow is an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Int64Array, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::row::{RowConverter, SortField};
use serde::Deserialize;
use weir_guest::{Aggregate, RecordBatch, Result, TransformError, config, host};
use weir_guest::{columns, decimal};

pub struct GoldAggregates {
    group_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The key column, or columns; `productno` when absent.
    #[serde(default)]
    group_by: Option<GroupBy>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GroupBy {
    One(String),
    Many(Vec<String>),
}

impl Aggregate for GoldAggregates {
    fn configure(config_json: &str) -> Result<Self> {
        let config: Config = config::parse(config_json)?;
        let group_by = match config.group_by {
            None => vec!["productno".to_owned()],
            Some(GroupBy::One(column)) => vec![column],
            Some(GroupBy::Many(columns)) if !columns.is_empty() => columns,
            Some(GroupBy::Many(_)) => {
                return Err(TransformError::new("`group_by` names no column"));
            }
        };
        Ok(Self { group_by })
    }

    fn aggregate(&self, batch: RecordBatch) -> Result<RecordBatch> {
        aggregate(&batch, &self.group_by)
    }
}

weir_guest::export_aggregate!(GoldAggregates);

/// What one batch changes in a group's totals.
struct Delta {
    /// The first input row of the group, whose key values stand for the group.
    first_row: u32,
    total_quantity_sold: i64,
    total_sales_value: i128,
    order_lines: i64,
}

/// Sums `quantity * weight`, `price * quantity * weight` and `weight` per group of `group_by`.
/// A null price or quantity adds nothing to the sums it is part of, but the line still counts.
pub fn aggregate(batch: &RecordBatch, group_by: &[String]) -> Result<RecordBatch> {
    let keys = group_by
        .iter()
        .map(|name| columns::column(batch, name))
        .collect::<Result<Vec<_>>>()?;
    let price = columns::decimal128(batch, "price", 38, 2)?;
    let quantity = columns::primitive::<Int64Type>(batch, "quantity")?;
    let weight = columns::primitive::<Int64Type>(batch, "weight")?;

    // Row-encoded keys group any key types and sort like the columns themselves.
    let converter = RowConverter::new(
        keys.iter()
            .map(|key| SortField::new(key.data_type().clone()))
            .collect(),
    )?;
    let encoded = converter.convert_columns(&keys)?;

    let mut groups = BTreeMap::new();
    for (row, key) in encoded.iter().enumerate() {
        let overflow = |total: &str| TransformError::at_row(row, format!("{total} overflows"));
        let weight = columns::get(&weight, row)
            .ok_or_else(|| TransformError::at_row(row, "`weight` is null"))?;
        let delta = groups.entry(key).or_insert(Delta {
            first_row: u32::try_from(row)
                .map_err(|_| TransformError::new("a batch of more than u32::MAX rows"))?,
            total_quantity_sold: 0,
            total_sales_value: 0,
            order_lines: 0,
        });
        delta.order_lines = delta
            .order_lines
            .checked_add(weight)
            .ok_or_else(|| overflow("order_lines"))?;
        let Some(quantity) = columns::get(&quantity, row) else {
            continue;
        };
        let lines = quantity
            .checked_mul(weight)
            .ok_or_else(|| overflow("total_quantity_sold"))?;
        delta.total_quantity_sold = delta
            .total_quantity_sold
            .checked_add(lines)
            .ok_or_else(|| overflow("total_quantity_sold"))?;
        if let Some(price) = columns::get(&price, row) {
            let sales = price
                .checked_mul(i128::from(lines))
                .and_then(|sales| delta.total_sales_value.checked_add(sales))
                .filter(|&total| decimal::fits(total, 38))
                .ok_or_else(|| overflow("total_sales_value"))?;
            delta.total_sales_value = sales;
        }
    }

    let deltas: Vec<&Delta> = groups.values().collect();
    let first_rows = UInt32Array::from_iter_values(deltas.iter().map(|delta| delta.first_row));
    let mut fields = Vec::with_capacity(keys.len() + 3);
    let mut outputs: Vec<ArrayRef> = Vec::with_capacity(keys.len() + 3);
    for (name, key) in group_by.iter().zip(&keys) {
        fields.push(Field::new(name, key.data_type().clone(), true));
        outputs.push(take(key, &first_rows, None)?);
    }
    fields.push(Field::new("total_quantity_sold", DataType::Int64, false));
    outputs.push(Arc::new(Int64Array::from_iter_values(
        deltas.iter().map(|d| d.total_quantity_sold),
    )));
    fields.push(Field::new(
        "total_sales_value",
        DataType::Decimal128(38, 2),
        false,
    ));
    outputs.push(Arc::new(
        Decimal128Array::from_iter_values(deltas.iter().map(|d| d.total_sales_value))
            .with_precision_and_scale(38, 2)?,
    ));
    fields.push(Field::new("order_lines", DataType::Int64, false));
    outputs.push(Arc::new(Int64Array::from_iter_values(
        deltas.iter().map(|d| d.order_lines),
    )));

    let output = RecordBatch::try_new(Arc::new(Schema::new(fields)), outputs)?;
    host::count("groups", output.num_rows() as u64);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::Decimal128Type;
    use weir_guest::testing;

    use super::*;

    /// (productno, price in hundredths, quantity, weight)
    type Line = (&'static str, Option<i128>, Option<i64>, i64);

    fn silver(lines: &[Line]) -> RecordBatch {
        let prices = Decimal128Array::from(lines.iter().map(|l| l.1).collect::<Vec<_>>())
            .with_precision_and_scale(18, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..lines.len() as i64)) as ArrayRef,
            ),
            (
                "productno",
                Arc::new(StringArray::from_iter_values(lines.iter().map(|l| l.0))),
            ),
            ("price", Arc::new(prices)),
            (
                "quantity",
                Arc::new(Int64Array::from(
                    lines.iter().map(|l| l.2).collect::<Vec<_>>(),
                )),
            ),
            (
                "country",
                Arc::new(StringArray::from_iter_values(
                    lines.iter().map(|_| "United Kingdom"),
                )),
            ),
            (
                "weight",
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|l| l.3))),
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(config: &str, lines: &[Line]) -> Result<RecordBatch> {
        testing::run_aggregate::<GoldAggregates>(config, &silver(lines))
    }

    /// (key, total_quantity_sold, total_sales_value in hundredths, order_lines) per output row.
    fn totals(out: &RecordBatch) -> Vec<(String, i64, i128, i64)> {
        let key = out.column(0).as_string::<i32>();
        let quantity = out.column(1).as_primitive::<Int64Type>();
        let sales = out.column(2).as_primitive::<Decimal128Type>();
        let lines = out.column(3).as_primitive::<Int64Type>();
        (0..out.num_rows())
            .map(|i| {
                (
                    key.value(i).to_owned(),
                    quantity.value(i),
                    sales.value(i),
                    lines.value(i),
                )
            })
            .collect()
    }

    fn row(key: &str, quantity: i64, sales: i128, lines: i64) -> (String, i64, i128, i64) {
        (key.to_owned(), quantity, sales, lines)
    }

    #[test]
    fn output_schema_is_key_then_additive_totals() -> Result<()> {
        let out = run("{}", &[("85123A", Some(255), Some(6), 1)])?;
        let schema = out.schema();
        let described: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect();
        assert_eq!(
            described,
            [
                ("productno", DataType::Utf8),
                ("total_quantity_sold", DataType::Int64),
                ("total_sales_value", DataType::Decimal128(38, 2)),
                ("order_lines", DataType::Int64),
            ]
        );
        Ok(())
    }

    #[test]
    fn an_insert_adds_its_line_to_its_product() -> Result<()> {
        let out = run("{}", &[("85123A", Some(255), Some(6), 1)])?;
        assert_eq!(totals(&out), [row("85123A", 6, 1530, 1)]);
        Ok(())
    }

    #[test]
    fn retraction_cancels_insert() -> Result<()> {
        let out = run(
            "{}",
            &[
                ("85123A", Some(255), Some(6), 1),
                ("85123A", Some(255), Some(6), -1),
            ],
        )?;
        assert_eq!(
            totals(&out),
            [row("85123A", 0, 0, 0)],
            "the group was touched, so it is reported"
        );
        Ok(())
    }

    #[test]
    fn an_update_contributes_the_difference() -> Result<()> {
        let out = run(
            "{}",
            &[
                ("85123A", Some(255), Some(6), -1),
                ("85123A", Some(255), Some(10), 1),
            ],
        )?;
        assert_eq!(totals(&out), [row("85123A", 4, 1020, 0)]);
        Ok(())
    }

    #[test]
    fn a_line_moving_between_products_is_a_delta_for_both() -> Result<()> {
        let out = run(
            "{}",
            &[
                ("22752", Some(765), Some(2), -1),
                ("71053", Some(339), Some(2), 1),
            ],
        )?;
        assert_eq!(
            totals(&out),
            [row("22752", -2, -1530, -1), row("71053", 2, 678, 1)]
        );
        Ok(())
    }

    #[test]
    fn one_row_per_product_touched_ordered_by_product() -> Result<()> {
        let out = run(
            "{}",
            &[
                ("84406B", Some(275), Some(8), 1),
                ("71053", Some(339), Some(6), 1),
                ("84406B", Some(275), Some(2), 1),
            ],
        )?;
        assert_eq!(
            totals(&out),
            [row("71053", 6, 2034, 1), row("84406B", 10, 2750, 2)]
        );
        assert_eq!(host::counter("groups"), 2);
        Ok(())
    }

    #[test]
    fn cancellations_with_negative_quantity_subtract() -> Result<()> {
        let out = run("{}", &[("22752", Some(765), Some(-2), 1)])?;
        assert_eq!(totals(&out), [row("22752", -2, -1530, 1)]);
        Ok(())
    }

    #[test]
    fn null_price_or_quantity_adds_nothing_but_still_counts_as_a_line() -> Result<()> {
        let out = run(
            "{}",
            &[
                ("A", None, Some(3), 1),
                ("A", Some(100), None, 1),
                ("A", Some(100), Some(1), 1),
            ],
        )?;
        assert_eq!(totals(&out), [row("A", 4, 100, 3)]);
        Ok(())
    }

    #[test]
    fn sales_are_exact_in_hundredths() -> Result<()> {
        let lines = vec![("A", Some(10), Some(1), 1); 3];
        assert_eq!(totals(&run("{}", &lines)?), [row("A", 3, 30, 3)]);

        let max_price = 999_999_999_999_999_999; // 9_999_999_999_999_999.99
        let out = run("{}", &[("B", Some(max_price), Some(1_000_000_000), 1)])?;
        assert_eq!(
            totals(&out),
            [row("B", 1_000_000_000, max_price * 1_000_000_000, 1)]
        );
        Ok(())
    }

    #[test]
    fn overflowing_quantity_is_a_row_error() {
        let error = run(
            "{}",
            &[
                ("A", Some(1), Some(i64::MAX), 1),
                ("A", Some(1), Some(1), 1),
            ],
        )
        .err();
        assert!(
            matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("total_quantity_sold"))
        );
    }

    #[test]
    fn group_by_is_configurable() -> Result<()> {
        let out = run(
            r#"{"group_by": "country"}"#,
            &[("A", Some(100), Some(1), 1), ("B", Some(200), Some(2), 1)],
        )?;
        assert_eq!(out.schema().field(0).name(), "country");
        assert_eq!(totals(&out), [row("United Kingdom", 3, 500, 2)]);

        let out = run(
            r#"{"group_by": ["country", "productno"]}"#,
            &[("A", Some(100), Some(1), 1)],
        )?;
        assert_eq!(out.num_columns(), 5);
        Ok(())
    }

    #[test]
    fn configuration_is_checked() {
        assert!(GoldAggregates::configure("{}").is_ok());
        assert!(GoldAggregates::configure(r#"{"group_by": "productno"}"#).is_ok());
        assert!(GoldAggregates::configure(r#"{"group_by": []}"#).is_err());
        assert!(GoldAggregates::configure(r#"{"groupby": "productno"}"#).is_err());
        assert!(run(r#"{"group_by": "nope"}"#, &[("A", Some(1), Some(1), 1)]).is_err());
    }

    #[test]
    fn a_null_weight_is_a_row_error() {
        let batch = silver(&[("A", Some(1), Some(1), 1), ("A", Some(1), Some(1), 1)]);
        let weights: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let schema = batch.schema();
        let columns = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                (
                    field.name().clone(),
                    if field.name() == "weight" {
                        weights.clone()
                    } else {
                        column.clone()
                    },
                )
            });
        let batch = RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"));
        let error = testing::run_aggregate::<GoldAggregates>("{}", &batch).err();
        assert!(
            matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("weight"))
        );
    }

    #[test]
    fn an_empty_batch_touches_no_group() -> Result<()> {
        let out = run("{}", &[])?;
        assert_eq!((out.num_rows(), out.num_columns()), (0, 4));
        Ok(())
    }
}
