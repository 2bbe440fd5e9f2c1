use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, NullArray, StringArray, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{Date32Type, Decimal128Type, Fields, TimestampMicrosecondType};
use weir_guest::testing;

use super::*;

// ---- building landing batches ----

fn ints(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn texts(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn floats(values: &[Option<f64>]) -> ArrayRef {
    Arc::new(Float64Array::from(values.to_vec()))
}

fn all_null(rows: usize) -> ArrayRef {
    Arc::new(NullArray::new(rows))
}

/// A `before`/`after` struct column as inferred from the JSON; `present[row]` false is a null image.
fn image(fields: Vec<(&str, ArrayRef)>, present: &[bool]) -> ArrayRef {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = fields
        .into_iter()
        .map(|(name, array)| (Field::new(name, array.data_type().clone(), true), array))
        .unzip();
    let nulls = Some(NullBuffer::from(present.to_vec()));
    Arc::new(
        StructArray::try_new(Fields::from(fields), arrays, nulls).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// One row of the `sales` table as Debezium writes it (`decimal.handling.mode=string`).
#[derive(Clone, Copy)]
struct Sale {
    id: Option<i64>,
    transactionno: Option<&'static str>,
    date: Option<&'static str>,
    productno: Option<&'static str>,
    productname: Option<&'static str>,
    price: Option<&'static str>,
    quantity: Option<i64>,
    customerno: Option<&'static str>,
    country: Option<&'static str>,
}

impl Sale {
    fn typical(id: i64) -> Self {
        Self {
            id: Some(id),
            transactionno: Some("536365"),
            date: Some("12/1/2010"),
            productno: Some("85123A"),
            productname: Some("WHITE HANGING HEART T-LIGHT HOLDER"),
            price: Some("2.55"),
            quantity: Some(6),
            customerno: Some("17850"),
            country: Some("United Kingdom"),
        }
    }

    /// The `before` of a delete under `REPLICA IDENTITY DEFAULT`: only the key.
    fn key_only(id: i64) -> Self {
        Self {
            id: Some(id),
            transactionno: None,
            date: None,
            productno: None,
            productname: None,
            price: None,
            quantity: None,
            customerno: None,
            country: None,
        }
    }
}

/// An image column of `sales`; `None` is a null image (e.g. `after` of a delete).
fn images(sales: &[Option<Sale>]) -> ArrayRef {
    let field = |get: fn(&Sale) -> Option<&'static str>| {
        texts(
            &sales
                .iter()
                .map(|sale| sale.as_ref().and_then(get))
                .collect::<Vec<_>>(),
        )
    };
    let ids = sales
        .iter()
        .map(|sale| sale.and_then(|s| s.id))
        .collect::<Vec<_>>();
    let quantities = sales
        .iter()
        .map(|sale| sale.and_then(|s| s.quantity))
        .collect::<Vec<_>>();
    let present = sales.iter().map(Option::is_some).collect::<Vec<_>>();
    image(
        vec![
            ("id", ints(&ids)),
            ("transactionno", field(|s| s.transactionno)),
            ("date", field(|s| s.date)),
            ("productno", field(|s| s.productno)),
            ("productname", field(|s| s.productname)),
            ("price", field(|s| s.price)),
            ("quantity", ints(&quantities)),
            ("customerno", field(|s| s.customerno)),
            ("country", field(|s| s.country)),
        ],
        &present,
    )
}

/// A landing batch: row `i` has offset `500 + i`, LSN `10_000 + i`, commit LSN `20_000 + i`,
/// transaction 77, and `source_ts_ms` `1_700_000_000_000 + i`.
fn landing(ops: &[&str], before: ArrayRef, after: ArrayRef) -> RecordBatch {
    let rows = ops.len();
    let sequence = |base: i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| base + i),
        ))
    };
    let constant = |text: &str| -> ArrayRef { Arc::new(StringArray::from(vec![text; rows])) };
    RecordBatch::try_from_iter(vec![
        ("kafka_topic", constant("weir.public.sales")),
        (
            "kafka_partition",
            Arc::new(Int32Array::from(vec![0; rows])) as ArrayRef,
        ),
        ("kafka_offset", sequence(500)),
        ("kafka_timestamp_ms", ints(&vec![None; rows])),
        ("key", constant(r#"{"id":1}"#)),
        (
            "op",
            texts(&ops.iter().map(|op| Some(*op)).collect::<Vec<_>>()),
        ),
        ("before", before),
        ("after", after),
        ("source_ts_ms", sequence(1_700_000_000_000)),
        ("source_lsn", sequence(10_000)),
        ("source_commit_lsn", sequence(20_000)),
        ("source_tx_id", ints(&vec![Some(77); rows])),
        ("source_snapshot", all_null(rows)),
        ("source_db", constant("shop")),
        ("source_schema", constant("public")),
        ("source_table", constant("sales")),
        ("ts_ms", sequence(1_700_000_000_500)),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Inserts of the given `after` column.
fn inserts(after: ArrayRef) -> RecordBatch {
    let rows = after.len();
    landing(&vec!["c"; rows], all_null(rows), after)
}

fn run(batch: &RecordBatch) -> Result<RecordBatch> {
    testing::run_row_transform::<BronzeCleanup>("{}", batch)
}

// ---- reading bronze batches ----

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column `{name}`"))
}

fn text_values(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    column(batch, name)
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(String::from))
        .collect()
}

fn int_values(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    column(batch, name)
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

fn dates(batch: &RecordBatch) -> Vec<Option<i32>> {
    column(batch, "date")
        .as_primitive::<Date32Type>()
        .iter()
        .collect()
}

fn prices(batch: &RecordBatch) -> Vec<Option<i128>> {
    column(batch, "price")
        .as_primitive::<Decimal128Type>()
        .iter()
        .collect()
}

fn cancellations(batch: &RecordBatch) -> Vec<Option<bool>> {
    column(batch, "is_cancellation")
        .as_boolean()
        .iter()
        .collect()
}

fn some(text: &str) -> Option<String> {
    Some(text.to_owned())
}

// ---- the specification ----

#[test]
fn output_schema_is_the_bronze_contract() {
    let schema = output_schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "transactionno",
            "date",
            "productno",
            "productname",
            "price",
            "quantity",
            "customerno",
            "country",
            "is_cancellation",
            "op",
            "commit_lsn",
            "lsn",
            "tx_id",
            "op_ts",
            "kafka_partition",
            "kafka_offset",
        ]
    );
    let not_null: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !f.is_nullable())
        .map(|f| f.name().as_str())
        .collect();
    // `id` is null for a truncate alone.
    assert_eq!(
        not_null,
        ["op", "commit_lsn", "lsn", "kafka_partition", "kafka_offset"]
    );
    assert_eq!(schema.field(5).data_type(), &DataType::Decimal128(18, 2));
    assert_eq!(
        schema.field(14).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
}

#[test]
fn insert_takes_every_column_from_after() -> Result<()> {
    let out = run(&inserts(images(&[Some(Sale::typical(1))])))?;
    assert_eq!(out.schema(), output_schema());
    assert_eq!(int_values(&out, "id"), [Some(1)]);
    assert_eq!(text_values(&out, "transactionno"), [some("536365")]);
    assert_eq!(dates(&out), [Some(14944)]);
    assert_eq!(text_values(&out, "productno"), [some("85123A")]);
    assert_eq!(
        text_values(&out, "productname"),
        [some("WHITE HANGING HEART T-LIGHT HOLDER")]
    );
    assert_eq!(prices(&out), [Some(255)]);
    assert_eq!(int_values(&out, "quantity"), [Some(6)]);
    assert_eq!(text_values(&out, "customerno"), [some("17850")]);
    assert_eq!(text_values(&out, "country"), [some("United Kingdom")]);
    assert_eq!(cancellations(&out), [Some(false)]);
    assert_eq!(text_values(&out, "op"), [some("c")]);
    assert_eq!(int_values(&out, "commit_lsn"), [Some(20_000)]);
    assert_eq!(int_values(&out, "lsn"), [Some(10_000)]);
    assert_eq!(int_values(&out, "tx_id"), [Some(77)]);
    let op_ts: Vec<_> = column(&out, "op_ts")
        .as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect();
    assert_eq!(op_ts, [Some(1_700_000_000_000_000)]);
    assert_eq!(
        column(&out, "kafka_partition")
            .as_primitive::<Int32Type>()
            .value(0),
        0
    );
    assert_eq!(int_values(&out, "kafka_offset"), [Some(500)]);
    Ok(())
}

#[test]
fn updates_and_snapshot_reads_take_after() -> Result<()> {
    let before = images(&[Some(Sale::typical(1)), None]);
    let after = images(&[
        Some(Sale {
            quantity: Some(9),
            ..Sale::typical(1)
        }),
        Some(Sale::typical(2)),
    ]);
    let out = run(&landing(&["u", "r"], before, after))?;
    assert_eq!(int_values(&out, "id"), [Some(1), Some(2)]);
    assert_eq!(int_values(&out, "quantity"), [Some(9), Some(6)]);
    assert_eq!(text_values(&out, "op"), [some("u"), some("r")]);
    Ok(())
}

#[test]
fn delete_takes_key_from_before() -> Result<()> {
    let out = run(&landing(
        &["d"],
        images(&[Some(Sale::key_only(7))]),
        all_null(1),
    ))?;
    assert_eq!(int_values(&out, "id"), [Some(7)]);
    assert_eq!(text_values(&out, "op"), [some("d")]);
    assert_eq!(text_values(&out, "productno"), [None]);
    assert_eq!(prices(&out), [None]);
    assert_eq!(int_values(&out, "quantity"), [None]);
    assert_eq!(
        cancellations(&out),
        [None],
        "nothing is known about a key-only row"
    );
    assert_eq!(int_values(&out, "lsn"), [Some(10_000)]);
    Ok(())
}

#[test]
fn delete_with_a_full_before_image_keeps_its_columns() -> Result<()> {
    // REPLICA IDENTITY FULL; `after` is a null struct rather than a Null-typed column here.
    let out = run(&landing(
        &["d"],
        images(&[Some(Sale::typical(3))]),
        images(&[None]),
    ))?;
    assert_eq!(int_values(&out, "id"), [Some(3)]);
    assert_eq!(text_values(&out, "productno"), [some("85123A")]);
    assert_eq!(prices(&out), [Some(255)]);
    Ok(())
}

#[test]
fn delete_without_a_key_in_before_is_rejected_naming_the_row() {
    let before = images(&[
        None,
        Some(Sale {
            id: None,
            ..Sale::key_only(0)
        }),
    ]);
    let after = images(&[Some(Sale::typical(1)), None]);
    let error = run(&landing(&["c", "d"], before, after)).err();
    assert!(
        matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("before"))
    );
}

#[test]
fn row_without_id_is_rejected_with_its_row() {
    let after = images(&[
        Some(Sale::typical(1)),
        Some(Sale::typical(2)),
        Some(Sale {
            id: None,
            ..Sale::typical(3)
        }),
    ]);
    let error = run(&inserts(after)).err();
    assert!(
        matches!(error, Some(TransformError { row: Some(2), .. })),
        "{error:?}"
    );
}

#[test]
fn a_truncate_is_a_row_without_key_or_data_and_is_counted() -> Result<()> {
    let after = images(&[Some(Sale::typical(1)), None, Some(Sale::typical(2))]);
    let out = run(&landing(&["c", "t", "c"], all_null(3), after))?;
    assert_eq!(int_values(&out, "id"), [Some(1), None, Some(2)]);
    assert_eq!(int_values(&out, "quantity")[1], None);
    assert_eq!(
        int_values(&out, "kafka_offset"),
        [Some(500), Some(501), Some(502)]
    );
    assert_eq!(columns::utf8(&out, "op")?.value(1), "t");
    assert_eq!(host::counter("truncates"), 1);
    assert_eq!(host::counter("rows"), 3);
    Ok(())
}

#[test]
fn unknown_op_is_rejected() {
    let error = run(&landing(
        &["c", "x"],
        all_null(2),
        images(&[Some(Sale::typical(1)), Some(Sale::typical(2))]),
    ))
    .err();
    assert!(
        matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("`x`"))
    );
}

#[test]
fn dates_in_m_d_yyyy_are_parsed() -> Result<()> {
    let after = images(&[
        Some(Sale {
            date: Some("12/1/2010"),
            ..Sale::typical(1)
        }),
        Some(Sale {
            date: Some("1/31/2011"),
            ..Sale::typical(2)
        }),
        Some(Sale {
            date: Some("12/09/2019"),
            ..Sale::typical(3)
        }),
    ]);
    assert_eq!(
        dates(&run(&inserts(after))?),
        [Some(14944), Some(15005), Some(18239)]
    );
    Ok(())
}

#[test]
fn iso_dates_are_parsed() -> Result<()> {
    let after = images(&[Some(Sale {
        date: Some("2019-12-09"),
        ..Sale::typical(1)
    })]);
    assert_eq!(dates(&run(&inserts(after))?), [Some(18239)]);
    Ok(())
}

#[test]
fn debezium_epoch_day_dates_are_parsed() -> Result<()> {
    let after = image(
        vec![
            ("id", ints(&[Some(1), Some(2)])),
            ("date", ints(&[Some(14944), None])),
        ],
        &[true, true],
    );
    assert_eq!(dates(&run(&inserts(after))?), [Some(14944), None]);
    Ok(())
}

#[test]
fn unparseable_date_is_a_row_error_naming_the_value() {
    let after = images(&[
        Some(Sale::typical(1)),
        Some(Sale {
            date: Some("31/12/2010"),
            ..Sale::typical(2)
        }),
    ]);
    let error = run(&inserts(after)).err();
    assert!(
        matches!(&error, Some(TransformError { row: Some(1), message }) if message.contains("31/12/2010")),
        "{error:?}"
    );
}

#[test]
fn dates_with_missing_extra_or_mixed_separators_are_row_errors() {
    for bad in [
        "1/2/3/2010",
        "2019-12-09-1",
        "12/1-2010",
        "12/2010",
        "2019-12",
        "/1/2010",
        "12//2010",
    ] {
        let after = images(&[Some(Sale {
            date: Some(bad),
            ..Sale::typical(1)
        })]);
        let error = run(&inserts(after)).err();
        assert!(
            matches!(&error, Some(TransformError { row: Some(0), message }) if message.contains(bad)),
            "{bad}: {error:?}"
        );
    }
}

#[test]
fn text_is_trimmed_and_inner_whitespace_collapsed() -> Result<()> {
    let after = images(&[Some(Sale {
        productname: Some("  WHITE   HANGING\tHEART  "),
        country: Some(" United  Kingdom"),
        ..Sale::typical(1)
    })]);
    let out = run(&inserts(after))?;
    assert_eq!(
        text_values(&out, "productname"),
        [some("WHITE HANGING HEART")]
    );
    assert_eq!(text_values(&out, "country"), [some("United Kingdom")]);
    Ok(())
}

#[test]
fn empty_customerno_becomes_null() -> Result<()> {
    let after = images(&[
        Some(Sale {
            customerno: Some(""),
            ..Sale::typical(1)
        }),
        Some(Sale {
            customerno: Some("   "),
            ..Sale::typical(2)
        }),
        Some(Sale {
            customerno: None,
            ..Sale::typical(3)
        }),
        Some(Sale {
            customerno: Some(" 17850 "),
            ..Sale::typical(4)
        }),
    ]);
    assert_eq!(
        text_values(&run(&inserts(after))?, "customerno"),
        [None, None, None, some("17850")]
    );
    Ok(())
}

#[test]
fn numbers_arriving_as_numbers_become_text() -> Result<()> {
    let after = image(
        vec![
            ("id", ints(&[Some(1)])),
            ("transactionno", ints(&[Some(536365)])),
            ("productno", ints(&[Some(85123)])),
            ("customerno", floats(&[Some(17850.0)])),
        ],
        &[true],
    );
    let out = run(&inserts(after))?;
    assert_eq!(text_values(&out, "transactionno"), [some("536365")]);
    assert_eq!(text_values(&out, "productno"), [some("85123")]);
    assert_eq!(text_values(&out, "customerno"), [some("17850")]);
    Ok(())
}

#[test]
fn codes_with_letters_stay_text() -> Result<()> {
    let after = images(&[Some(Sale {
        transactionno: Some("C536379"),
        productno: Some("85123A"),
        ..Sale::typical(1)
    })]);
    let out = run(&inserts(after))?;
    assert_eq!(text_values(&out, "transactionno"), [some("C536379")]);
    assert_eq!(text_values(&out, "productno"), [some("85123A")]);
    Ok(())
}

#[test]
fn cancellations_are_flagged_by_c_prefix_or_negative_quantity() -> Result<()> {
    let after = images(&[
        Some(Sale {
            transactionno: Some("C536379"),
            quantity: Some(-1),
            ..Sale::typical(1)
        }),
        Some(Sale {
            transactionno: Some("536365"),
            quantity: Some(6),
            ..Sale::typical(2)
        }),
        Some(Sale {
            transactionno: Some("536366"),
            quantity: Some(-2),
            ..Sale::typical(3)
        }),
        Some(Sale {
            transactionno: Some("C536380"),
            quantity: Some(1),
            ..Sale::typical(4)
        }),
        Some(Sale {
            transactionno: Some("536367"),
            quantity: None,
            ..Sale::typical(5)
        }),
    ]);
    let flags = cancellations(&run(&inserts(after))?);
    assert_eq!(
        flags,
        [Some(true), Some(false), Some(true), Some(true), None]
    );
    Ok(())
}

#[test]
fn price_text_is_exact_and_rounds_half_away_from_zero() -> Result<()> {
    let after = images(&[
        Some(Sale {
            price: Some("21.47"),
            ..Sale::typical(1)
        }),
        Some(Sale {
            price: Some("21.475"),
            ..Sale::typical(2)
        }),
        Some(Sale {
            price: Some("-1.005"),
            ..Sale::typical(3)
        }),
        Some(Sale {
            price: Some("3"),
            ..Sale::typical(4)
        }),
        Some(Sale {
            price: Some("0.004"),
            ..Sale::typical(5)
        }),
    ]);
    assert_eq!(
        prices(&run(&inserts(after))?),
        [Some(2147), Some(2148), Some(-101), Some(300), Some(0)]
    );
    Ok(())
}

#[test]
fn float_prices_round_to_cents() -> Result<()> {
    let after = image(
        vec![
            ("id", ints(&[Some(1), Some(2), Some(3)])),
            ("price", floats(&[Some(21.47), Some(2.999), Some(1.005)])),
        ],
        &[true, true, true],
    );
    assert_eq!(
        prices(&run(&inserts(after))?),
        [Some(2147), Some(300), Some(101)]
    );
    Ok(())
}

#[test]
fn integer_prices_are_whole_units() -> Result<()> {
    let after = image(
        vec![("id", ints(&[Some(1)])), ("price", ints(&[Some(3)]))],
        &[true],
    );
    assert_eq!(prices(&run(&inserts(after))?), [Some(300)]);
    Ok(())
}

#[test]
fn garbage_price_is_a_row_error() {
    let after = images(&[Some(Sale {
        price: Some("12,50"),
        ..Sale::typical(1)
    })]);
    let error = run(&inserts(after)).err();
    assert!(
        matches!(&error, Some(TransformError { row: Some(0), message }) if message.contains("price") && message.contains("12,50")),
        "{error:?}"
    );
}

#[test]
fn fields_missing_from_an_image_or_of_null_type_read_as_null() -> Result<()> {
    let after = image(
        vec![
            ("id", ints(&[Some(1)])),
            ("productno", texts(&[Some("22752")])),
            ("customerno", all_null(1)),
        ],
        &[true],
    );
    let out = run(&inserts(after))?;
    assert_eq!(text_values(&out, "productno"), [some("22752")]);
    assert_eq!(text_values(&out, "customerno"), [None]);
    assert_eq!(text_values(&out, "country"), [None]);
    assert_eq!(prices(&out), [None]);
    Ok(())
}

/// `batch` with column `name` replaced by `array`, or dropped when `array` is `None`.
fn replace_column(batch: &RecordBatch, name: &str, array: Option<ArrayRef>) -> RecordBatch {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter_map(|(field, column)| {
            let column = if field.name() == name {
                array.clone()?
            } else {
                column.clone()
            };
            Some((field.name().clone(), column))
        });
    RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn null_typed_metadata_columns_are_tolerated() -> Result<()> {
    let batch = inserts(images(&[Some(Sale::typical(1))]));
    let batch = replace_column(&batch, "source_tx_id", Some(all_null(1)));
    assert_eq!(int_values(&run(&batch)?, "tx_id"), [None]);
    Ok(())
}

#[test]
fn commit_lsn_falls_back_to_the_change_lsn() -> Result<()> {
    let batch = inserts(images(&[Some(Sale::typical(1)), Some(Sale::typical(2))]));
    let partly_null = replace_column(&batch, "source_commit_lsn", Some(ints(&[Some(7), None])));
    assert_eq!(
        int_values(&run(&partly_null)?, "commit_lsn"),
        [Some(7), Some(10_001)]
    );
    let absent = replace_column(&batch, "source_commit_lsn", None);
    assert_eq!(
        int_values(&run(&absent)?, "commit_lsn"),
        [Some(10_000), Some(10_001)]
    );
    Ok(())
}

#[test]
fn an_empty_batch_gives_an_empty_bronze_batch() -> Result<()> {
    let out = run(&landing(&[], all_null(0), images(&[])))?;
    assert_eq!(out.num_rows(), 0);
    assert_eq!(out.schema(), output_schema());
    Ok(())
}

#[test]
fn configuration_accepts_nothing_but_an_empty_object() {
    assert!(BronzeCleanup::configure("{}").is_ok());
    assert!(BronzeCleanup::configure("").is_ok());
    assert!(BronzeCleanup::configure(r#"{"strict": true}"#).is_err());
}

/// `image` with one more field, as after an `ALTER TABLE … ADD COLUMN`.
fn with_field(image: ArrayRef, name: &str, values: ArrayRef) -> ArrayRef {
    let image = image.as_struct();
    let mut fields: Vec<Field> = image.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(name, values.data_type().clone(), true));
    let mut columns = image.columns().to_vec();
    columns.push(values);
    Arc::new(
        StructArray::try_new(Fields::from(fields), columns, image.nulls().cloned())
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

#[test]
fn columns_added_to_the_source_pass_through_from_after_or_before() -> Result<()> {
    let sale = Some(Sale::typical(1));
    let before = with_field(
        images(&[None, sale, sale]),
        "discount",
        texts(&[None, Some("0.10"), Some("0.30")]),
    );
    let after = with_field(
        images(&[sale, sale, None]),
        "discount",
        texts(&[Some("0.15"), Some("0.20"), None]),
    );
    let out = run(&landing(&["c", "u", "d"], before, after))?;
    assert_eq!(
        text_values(&out, "discount"),
        [some("0.15"), some("0.20"), some("0.30")],
        "inserts and updates take after's value, deletes before's"
    );
    // A column no row has a value for yet has no type: it waits for a batch with a value.
    let untyped = with_field(images(&[sale]), "note", all_null(1));
    let out = run(&inserts(untyped))?;
    assert!(out.column_by_name("note").is_none());
    assert_eq!(out.num_columns(), output_schema().fields().len());
    Ok(())
}
