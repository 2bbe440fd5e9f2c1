//! Kafka records → landing's rows → an Arrow batch → a Parquet file; and column values of every
//! type weir maps → Debezium JSON and Connect schemas → the same landing path.
//!
//! Input starting with a zero byte: the rest drives `arbitrary` (pipeline options, columns of
//! types weir maps or any type the catalog could describe, a text value each): each value goes
//! through `types::value`, `Converter::write_json` (which must write the same JSON) and
//! `types::schema`, then the row through a snapshot read's event into landing.
//!
//! Any other input is Kafka records as landing reads them: a JSON array of events (as a sample
//! file), or one record a line, its value alone or its key, a tab and its value. Records landing
//! rejects are expected (it dead-letters them); a panic is a bug.
#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weir::source::types::{self, ColumnType, Converter};
use weir::source::{Column, EventBuilder, TableSchema};

fuzz_target!(|data: &[u8]| match data.split_first() {
    Some((0, rest)) => typed(rest),
    _ => records(data),
});

fn records(data: &[u8]) {
    let mut rows = Vec::new();
    if data.trim_ascii_start().starts_with(b"[") {
        // A sample file: `weir run --sample` lands its events at offsets 0, 1, ...
        let Ok(events) = serde_json::from_slice::<Vec<Value>>(data) else {
            return;
        };
        for (offset, event) in events.into_iter().enumerate() {
            if let Ok(row) =
                weir::landing::flatten_event(event, None, "sample", 0, offset as i64, None)
            {
                rows.push(row);
            }
        }
    } else {
        for (offset, line) in data.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = match line.iter().position(|&b| b == b'\t') {
                Some(tab) => (Some(&line[..tab]), &line[tab + 1..]),
                None => (None, line),
            };
            if let Ok(row) = weir_fuzz::landing_row(value, key, "fuzz.public.t", offset as i64) {
                rows.push(row);
            }
        }
    }
    weir_fuzz::land(&rows, true);
}

#[derive(Arbitrary, Debug)]
struct Typed {
    options: weir_fuzz::Options,
    columns: Vec<TypedColumn>,
}

#[derive(Arbitrary, Debug)]
struct TypedColumn {
    ty: Type,
    name: String,
    is_key: bool,
    not_null: bool,
    /// PostgreSQL's text output of the value; `None` for NULL.
    text: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Type {
    /// One of the types weir maps (built-in, then extension and user-defined ones), by index.
    Catalog { index: u16, typmod: Typmod },
    /// Anything the catalog could describe, however unlikely.
    Raw {
        oid: u32,
        typmod: i32,
        name: String,
        category: char,
        element: Option<Box<Type>>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Typmod {
    None,
    /// Fractional-second precision of time types, length of bit strings.
    Plain(u8),
    /// `numeric(precision, scale)`, the scale as PostgreSQL 15+ packs it (11 signed bits).
    Numeric {
        precision: u16,
        scale: i16,
    },
    Raw(i32),
}

impl Typmod {
    fn value(self) -> i32 {
        match self {
            Self::None => -1,
            Self::Plain(n) => i32::from(n),
            Self::Numeric { precision, scale } => {
                ((i32::from(precision) << 16) | (i32::from(scale) & 0x7ff)) + 4
            }
            Self::Raw(typmod) => typmod,
        }
    }
}

impl Type {
    fn column_type(&self) -> ColumnType {
        match self {
            Self::Catalog { index, typmod } => {
                weir_fuzz::catalog_type(weir_fuzz::catalog_oid(usize::from(*index)), typmod.value())
            }
            Self::Raw {
                oid,
                typmod,
                name,
                category,
                element,
            } => ColumnType {
                oid: *oid,
                typmod: *typmod,
                name: name.clone(),
                category: *category,
                element: element.as_ref().map(|e| Box::new(e.column_type())),
            },
        }
    }
}

fn typed(data: &[u8]) {
    let Ok(input) = Typed::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let options = input.options.types();
    let mut columns = Vec::new();
    for column in input.columns.iter().take(64) {
        let ty = column.ty.column_type();
        let schema = types::schema(&ty, &column.name, !column.not_null, &options);
        assert!(
            schema.is_object(),
            "a Connect schema is an object: {schema}"
        );
        if let Some(text) = &column.text {
            let value = types::value(&ty, text, &options);
            let mut written = Vec::new();
            Converter::new(&ty, &options).write_json(text, &mut written);
            let expected = serde_json::to_vec(&value).expect("a Value serialises");
            assert!(
                written == expected,
                "write_json wrote {} where value is {} for {text:?} as {ty:?} under {options:?}",
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected),
            );
        }
        columns.push(Column::new(
            column.name.clone(),
            ty,
            column.is_key,
            column.not_null,
        ));
    }

    // The row as a snapshot read writes it, landed.
    let qualified = "public.t".to_owned();
    let events = EventBuilder::new(
        input.options.pipeline(),
        std::slice::from_ref(&qualified),
        HashMap::from([(qualified.clone(), TableSchema::new("public", "t", columns))]),
    );
    let table = &events.tables()[0];
    let record = events.snapshot_row(
        table,
        |i| input.columns[i].text.as_deref(),
        0x0100_0000,
        1_700_000_000_000,
        false,
    );
    let key = record.key.as_deref().expect("a snapshot row has a key");
    serde_json::from_slice::<Value>(key).unwrap_or_else(|e| {
        panic!(
            "weir wrote a key that is not JSON ({e}): {}",
            String::from_utf8_lossy(key)
        )
    });
    let value = record.value.as_deref().expect("a snapshot row has a value");
    let row = weir_fuzz::landing_row(value, Some(key), &record.topic, 0).unwrap_or_else(|e| {
        panic!(
            "landing cannot read weir's event ({e}): {}",
            String::from_utf8_lossy(value)
        )
    });
    weir_fuzz::land(&[row], true);
}
