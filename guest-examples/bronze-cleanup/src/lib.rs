//! Bronze layer: Debezium change events of the `onlineshop` table, as landed from Kafka, become typed
//! rows with their change metadata.
//!
//! A delete carries its row in `before` (under `REPLICA IDENTITY DEFAULT` only the key is set
//! there), every other change in `after`. A truncate becomes a row without key or data (op `t`):
//! silver applies it to the whole table, as `apply_as_truncates` says.

mod parse;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Date32Builder, Decimal128Builder,
    Int32Builder, Int64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use weir_guest::columns::{self, LooseColumn};
use weir_guest::{RecordBatch, Result, RowTransform, TransformError, config, host};

pub struct BronzeCleanup;

/// No options yet; unknown keys are rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

impl RowTransform for BronzeCleanup {
    fn configure(config_json: &str) -> Result<Self> {
        let Config {} = config::parse(config_json)?;
        Ok(Self)
    }

    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        cleanup(&batch)
    }
}

#[cfg(feature = "component")]
weir_guest::export_row_transform!(BronzeCleanup);

/// The bronze table's schema.
pub fn output_schema() -> SchemaRef {
    let utc = Some(Arc::from("UTC"));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("transactionno", DataType::Utf8, true),
        Field::new("date", DataType::Date32, true),
        Field::new("productno", DataType::Utf8, true),
        Field::new("productname", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(18, 2), true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("customerno", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("is_cancellation", DataType::Boolean, true),
        Field::new("op", DataType::Utf8, false),
        Field::new("commit_lsn", DataType::Int64, false),
        Field::new("lsn", DataType::Int64, false),
        Field::new("tx_id", DataType::Int64, true),
        Field::new(
            "op_ts",
            DataType::Timestamp(TimeUnit::Microsecond, utc),
            true,
        ),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// The table's columns inside one Debezium image (`before` or `after`).
struct Image {
    name: &'static str,
    id: LooseColumn,
    transactionno: LooseColumn,
    date: LooseColumn,
    productno: LooseColumn,
    productname: LooseColumn,
    price: LooseColumn,
    quantity: LooseColumn,
    customerno: LooseColumn,
    country: LooseColumn,
}

impl Image {
    fn read(batch: &RecordBatch, name: &'static str) -> Result<Self> {
        let field = |field: &str| LooseColumn::find(batch, &[name, field]);
        Ok(Self {
            name,
            id: field("id")?,
            transactionno: field("transactionno")?,
            date: field("date")?,
            productno: field("productno")?,
            productname: field("productname")?,
            price: field("price")?,
            quantity: field("quantity")?,
            customerno: field("customerno")?,
            country: field("country")?,
        })
    }
}

/// Reads one cell with `parse`, naming the row, column and value when it fails.
fn cell<T>(
    row: usize,
    column: &str,
    parse: impl FnOnce() -> std::result::Result<Option<T>, String>,
) -> Result<Option<T>> {
    parse().map_err(|message| TransformError::at_row(row, format!("{column}: {message}")))
}

fn required<T>(row: usize, column: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| TransformError::at_row(row, format!("`{column}` is null")))
}

/// Cleans one landing batch into bronze rows.
pub fn cleanup(batch: &RecordBatch) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let op = columns::utf8(batch, "op")?;
    let partition = columns::primitive::<Int32Type>(batch, "kafka_partition")?;
    let offset = columns::primitive::<Int64Type>(batch, "kafka_offset")?;
    let lsn = columns::primitive::<Int64Type>(batch, "source_lsn")?;
    let commit_lsn = columns::optional_primitive::<Int64Type>(batch, "source_commit_lsn")?;
    let source_ts_ms = columns::primitive::<Int64Type>(batch, "source_ts_ms")?;
    let tx_id = columns::optional_primitive::<Int64Type>(batch, "source_tx_id")?;
    let before = Image::read(batch, "before")?;
    let after = Image::read(batch, "after")?;

    let mut out = Output::with_capacity(rows)?;
    let mut truncates = 0_u64;
    for row in 0..rows {
        let op = required(row, "op", op.is_valid(row).then(|| op.value(row)))?;
        let image = match op {
            "t" => None,
            "d" => Some(&before),
            "c" | "u" | "r" => Some(&after),
            other => return Err(TransformError::at_row(row, format!("unknown op `{other}`"))),
        };
        match image {
            Some(image) => out.append_image(row, op, image)?,
            None => {
                truncates += 1;
                out.append_truncate();
            }
        }

        let op_ts = match columns::get(&source_ts_ms, row) {
            Some(ms) => Some(ms.checked_mul(1000).ok_or_else(|| {
                TransformError::at_row(row, format!("source_ts_ms {ms} is out of range"))
            })?),
            None => None,
        };
        let lsn = required(row, "source_lsn", columns::get(&lsn, row))?;
        out.op.append_value(op);
        // Snapshot reads carry the slot's consistent point in both; older files had no commit LSN.
        out.commit_lsn
            .append_value(columns::get(&commit_lsn, row).unwrap_or(lsn));
        out.lsn.append_value(lsn);
        out.tx_id.append_option(columns::get(&tx_id, row));
        out.op_ts.append_option(op_ts);
        out.kafka_partition.append_value(required(
            row,
            "kafka_partition",
            columns::get(&partition, row),
        )?);
        out.kafka_offset
            .append_value(required(row, "kafka_offset", columns::get(&offset, row))?);
    }

    let output = with_added_columns(out.finish()?, batch, &op)?;
    host::count("truncates", truncates);
    host::count("rows", output.num_rows() as u64);
    Ok(output)
}

/// Columns of the source table this component was not written for (added to it later) pass
/// through as they landed: from `after`, or from `before` for deletes. So a column added to the
/// source reaches silver without a new component. A column with no value yet in this batch (all
/// null, of no type) waits for a batch that has one.
fn with_added_columns(
    output: RecordBatch,
    landing: &RecordBatch,
    op: &StringArray,
) -> Result<RecordBatch> {
    let image_columns = |image: &str| -> Vec<String> {
        landing
            .column_by_name(image)
            .and_then(|c| c.as_struct_opt())
            .map(|s| s.fields().iter().map(|f| f.name().clone()).collect())
            .unwrap_or_default()
    };
    let schema = output.schema();
    let mut added = image_columns("after");
    for name in image_columns("before") {
        if !added.contains(&name) {
            added.push(name);
        }
    }
    added.retain(|name| schema.field_with_name(name).is_err());
    if added.is_empty() {
        return Ok(output);
    }
    let is_delete: BooleanArray = op.iter().map(|o| Some(o == Some("d"))).collect();
    let is_not_delete = arrow::compute::not(&is_delete)?;
    let typed = |a: Option<ArrayRef>| a.filter(|a| a.data_type() != &DataType::Null);
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = output.columns().to_vec();
    for name in added {
        let after = typed(columns::find(landing, &["after", &name])?);
        let before = typed(columns::find(landing, &["before", &name])?);
        let values = match (after, before) {
            (Some(a), Some(b)) if a.data_type() == b.data_type() => {
                arrow::compute::kernels::zip::zip(&is_delete, &b, &a)?
            }
            (Some(a), _) => arrow::compute::nullif(&a, &is_delete)?,
            (None, Some(b)) => arrow::compute::nullif(&b, &is_not_delete)?,
            (None, None) => continue,
        };
        fields.push(Field::new(name, values.data_type().clone(), true));
        columns.push(values);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A credit note's number starts with `C`; a negative quantity returns goods. Unknown (SQL
/// three-valued logic) when neither says yes and one of them is null, as for a delete's key-only row.
fn is_cancellation(transactionno: Option<&str>, quantity: Option<i64>) -> Option<bool> {
    let by_number = transactionno.map(|number| number.starts_with('C'));
    let by_quantity = quantity.map(|quantity| quantity < 0);
    match (by_number, by_quantity) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

struct Output {
    id: Int64Builder,
    transactionno: StringBuilder,
    date: Date32Builder,
    productno: StringBuilder,
    productname: StringBuilder,
    price: Decimal128Builder,
    quantity: Int64Builder,
    customerno: StringBuilder,
    country: StringBuilder,
    is_cancellation: BooleanBuilder,
    op: StringBuilder,
    commit_lsn: Int64Builder,
    lsn: Int64Builder,
    tx_id: Int64Builder,
    op_ts: TimestampMicrosecondBuilder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
}

impl Output {
    /// The table's columns of one change, read from its image.
    fn append_image(&mut self, row: usize, op: &str, image: &Image) -> Result<()> {
        let id = cell(row, "id", || parse::integer(image.id.value(row)))?.ok_or_else(|| {
            TransformError::at_row(
                row,
                format!("no `id` in `{}` of a `{op}` event", image.name),
            )
        })?;
        let transactionno = cell(row, "transactionno", || {
            parse::text(image.transactionno.value(row))
        })?;
        let date = cell(row, "date", || parse::date(image.date.value(row)))?;
        let productno = cell(row, "productno", || parse::text(image.productno.value(row)))?;
        let productname = cell(row, "productname", || {
            parse::text(image.productname.value(row))
        })?;
        let price = cell(row, "price", || parse::price(image.price.value(row)))?;
        let quantity = cell(row, "quantity", || {
            parse::integer(image.quantity.value(row))
        })?;
        let customerno = cell(row, "customerno", || {
            parse::text(image.customerno.value(row))
        })?
        .filter(|customer| !customer.is_empty());
        let country = cell(row, "country", || parse::text(image.country.value(row)))?;
        let is_cancellation = is_cancellation(transactionno.as_deref(), quantity);

        self.id.append_value(id);
        self.transactionno.append_option(transactionno);
        self.date.append_option(date);
        self.productno.append_option(productno);
        self.productname.append_option(productname);
        self.price.append_option(price);
        self.quantity.append_option(quantity);
        self.customerno.append_option(customerno);
        self.country.append_option(country);
        self.is_cancellation.append_option(is_cancellation);
        Ok(())
    }

    /// A truncate concerns no row: no key, no columns.
    fn append_truncate(&mut self) {
        self.id.append_null();
        self.transactionno.append_null();
        self.date.append_null();
        self.productno.append_null();
        self.productname.append_null();
        self.price.append_null();
        self.quantity.append_null();
        self.customerno.append_null();
        self.country.append_null();
        self.is_cancellation.append_null();
    }

    fn with_capacity(rows: usize) -> Result<Self> {
        let text = || StringBuilder::with_capacity(rows, rows * 16);
        Ok(Self {
            id: Int64Builder::with_capacity(rows),
            transactionno: text(),
            date: Date32Builder::with_capacity(rows),
            productno: text(),
            productname: text(),
            price: Decimal128Builder::with_capacity(rows).with_precision_and_scale(18, 2)?,
            quantity: Int64Builder::with_capacity(rows),
            customerno: text(),
            country: text(),
            is_cancellation: BooleanBuilder::with_capacity(rows),
            op: StringBuilder::with_capacity(rows, rows),
            commit_lsn: Int64Builder::with_capacity(rows),
            lsn: Int64Builder::with_capacity(rows),
            tx_id: Int64Builder::with_capacity(rows),
            op_ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            kafka_partition: Int32Builder::with_capacity(rows),
            kafka_offset: Int64Builder::with_capacity(rows),
        })
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.transactionno.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.productno.finish()),
            Arc::new(self.productname.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(self.customerno.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.is_cancellation.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.commit_lsn.finish()),
            Arc::new(self.lsn.finish()),
            Arc::new(self.tx_id.finish()),
            Arc::new(self.op_ts.finish()),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
        ];
        Ok(RecordBatch::try_new(output_schema(), columns)?)
    }
}

#[cfg(test)]
mod tests;
