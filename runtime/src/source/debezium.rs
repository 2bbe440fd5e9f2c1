//! Debezium's PostgreSQL change event envelope (JSON converter, schemas disabled).
//!
//! Values follow Debezium's mappings (see [`super::types`]) under the pipeline's
//! `decimal_handling_mode`, `time_precision_mode` and `binary_handling_mode`. Unchanged TOAST
//! values become `__debezium_unavailable_value`.

use std::collections::HashMap;
use std::str::FromStr;

use std::io::Write as _;
use std::sync::Arc;

use pg_walstream::RowData;

use super::types::{self, ColumnType, TypeOptions};
use super::{Result, quote_ident};
use crate::config::Pipeline;

/// The placeholder Debezium writes for an unchanged TOAST value it cannot see.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";
/// The connector version reported in `source.version`.
const VERSION: &str = concat!("weir-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub is_key: bool,
    pub not_null: bool,
    /// The name as a JSON string, quotes included, escaped once rather than per event.
    json_name: String,
    /// The type's mapping; Debezium's default options until the table is bound to the pipeline's.
    converter: types::Converter,
}

impl Column {
    pub fn new(name: String, ty: ColumnType, is_key: bool, not_null: bool) -> Self {
        let json_name = json(&name);
        let converter = types::Converter::new(&ty, &TypeOptions::default());
        Self {
            name,
            ty,
            is_key,
            not_null,
            json_name,
            converter,
        }
    }
}

/// Columns of one captured table, as the catalog describes them.
#[derive(Debug, Clone)]
pub struct TableSchema {
    schema: String,
    table: String,
    columns: Vec<Column>,
    /// `<prefix>.<schema>.<table>`, shared by every record of the table.
    topic: Arc<str>,
    /// `"db":…,"schema":…,"table":…` of the events' `source`, rendered once.
    source_ids: String,
    /// Kafka Connect schemas of the key and the envelope, for schemas-enabled JSON.
    key_schema: String,
    value_schema: String,
}

impl TableSchema {
    pub fn new(schema: &str, table: &str, columns: Vec<Column>) -> Self {
        Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
            columns,
            topic: Arc::from(""),
            source_ids: String::new(),
            key_schema: String::new(),
            value_schema: String::new(),
        }
    }

    /// Fixes what every event of the table repeats: its topic and its identity in `source`.
    fn bind(&mut self, topic_prefix: &str, db: &str, types: &TypeOptions) {
        self.topic = Arc::from(format!("{topic_prefix}.{}", self.qualified()));
        for column in &mut self.columns {
            column.converter = types::Converter::new(&column.ty, types);
        }
        let (key_schema, value_schema) = connect_schemas(self, &self.topic, types);
        self.key_schema = key_schema.to_string();
        self.value_schema = value_schema.to_string();
        self.source_ids = format!(
            "\"db\":{},\"schema\":{},\"table\":{}",
            json(db),
            json(&self.schema),
            json(&self.table)
        );
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// The select list for a snapshot read, in catalog order.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// The transaction a streamed change belongs to.
#[derive(Debug, Default, Clone, Copy)]
pub struct TxContext {
    pub tx_id: i64,
    /// The commit record's LSN (from `Begin`): orders changes across transactions.
    pub commit_lsn: u64,
    pub commit_ts_ms: i64,
}

/// One Kafka record to produce: a change event, or the tombstone that follows a delete.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Builds change events for the captured tables.
#[derive(Clone)]
pub struct EventBuilder {
    tables: Vec<TableSchema>,
    by_name: HashMap<String, usize>,
    /// `source.name` (the topic prefix) as a JSON string.
    name_json: String,
    slot_name: String,
    tombstones_on_delete: bool,
    /// JSON with schemas (`key/value.converter.schemas.enable=true`): `{"schema":…,"payload":…}`.
    schemas_enable: bool,
    /// What binding a table again after a schema change needs.
    topic_prefix: String,
    db: String,
    type_options: TypeOptions,
}

impl EventBuilder {
    /// Events for `captured` tables (in that order), whose columns are in `schemas`.
    pub fn new(
        pipeline: &Pipeline,
        captured: &[String],
        mut schemas: HashMap<String, TableSchema>,
    ) -> Self {
        let mut tables: Vec<TableSchema> =
            captured.iter().filter_map(|t| schemas.remove(t)).collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.qualified(), i))
            .collect();
        let db = tokio_postgres::Config::from_str(&pipeline.source.connection)
            .ok()
            .and_then(|c| c.get_dbname().map(str::to_owned))
            .unwrap_or_default();
        let type_options = TypeOptions {
            decimal: pipeline.source.decimal_handling_mode,
            time_precision: pipeline.source.time_precision_mode,
            binary: pipeline.source.binary_handling_mode,
        };
        for t in &mut tables {
            t.bind(&pipeline.kafka.topic_prefix, &db, &type_options);
        }
        Self {
            tables,
            by_name,
            name_json: json(&pipeline.kafka.topic_prefix),
            slot_name: pipeline.source.slot_name.clone(),
            tombstones_on_delete: pipeline.source.tombstones_on_delete,
            schemas_enable: pipeline.source.schemas_enable,
            topic_prefix: pipeline.kafka.topic_prefix.clone(),
            db,
            type_options,
        }
    }

    /// The columns of a captured table, `None` for a table weir does not capture.
    pub fn columns_of(&self, schema: &str, table: &str) -> Option<&[Column]> {
        self.table(schema, table).map(TableSchema::columns)
    }

    /// Replaces a captured table's columns: events after a schema change carry the new ones.
    pub fn replace_table(&mut self, mut table: TableSchema) {
        if let Some(&i) = self.by_name.get(&table.qualified()) {
            table.bind(&self.topic_prefix, &self.db, &self.type_options);
            self.tables[i] = table;
        }
    }

    pub fn tables(&self) -> &[TableSchema] {
        &self.tables
    }

    pub fn slot_name(&self) -> &str {
        &self.slot_name
    }

    /// The captured table, or `None` for one the publication carries but weir does not capture
    /// (a publication `FOR ALL TABLES`, or a table excluded by the lists): its changes are skipped.
    fn table(&self, schema: &str, table: &str) -> Option<&TableSchema> {
        self.by_name
            .get(&format!("{schema}.{table}"))
            .map(|&i| &self.tables[i])
    }

    /// `payload` as it goes to Kafka: alone, or with its schema when schemas are enabled.
    fn with_schema(&self, schema: &str, payload: Vec<u8>) -> Vec<u8> {
        if !self.schemas_enable {
            return payload;
        }
        let mut out = Vec::with_capacity(schema.len() + payload.len() + 24);
        out.extend_from_slice(b"{\"schema\":");
        out.extend_from_slice(schema.as_bytes());
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(&payload);
        out.push(b'}');
        out
    }

    /// A streamed insert, update or delete.
    #[allow(clippy::too_many_arguments)]
    pub fn change(
        &self,
        schema: &str,
        table: &str,
        op: Op,
        before: Option<&RowData>,
        after: Option<&RowData>,
        lsn: u64,
        tx: &TxContext,
    ) -> Result<Vec<Record>> {
        let Some(t) = self.table(schema, table) else {
            return Ok(Vec::new());
        };
        let mut event = Vec::with_capacity(512);
        let mut key = Vec::with_capacity(32);
        event.extend_from_slice(b"{\"before\":");
        match before {
            // The key comes from the new image when there is one.
            Some(row) => {
                let key = if after.is_none() {
                    Some(&mut key)
                } else {
                    None
                };
                self.write_image(&mut event, key, t, |_, c| cell(row, false, c));
            }
            None => event.extend_from_slice(b"null"),
        }
        event.extend_from_slice(b",\"after\":");
        match after {
            Some(row) => self.write_image(&mut event, Some(&mut key), t, |_, c| cell(row, true, c)),
            None => event.extend_from_slice(b"null"),
        }
        self.write_tail(
            &mut event,
            t,
            op.code(),
            tx.commit_ts_ms,
            "false",
            Some(tx.tx_id),
            lsn,
            tx.commit_lsn,
        );
        let key = self.with_schema(&t.key_schema, key);
        let mut out = vec![Record {
            topic: t.topic.clone(),
            key: Some(key.clone()),
            value: Some(self.with_schema(&t.value_schema, event)),
        }];
        if op == Op::Delete && self.tombstones_on_delete {
            out.push(Record {
                topic: t.topic.clone(),
                key: Some(key),
                value: None,
            });
        }
        Ok(out)
    }

    /// A truncate of `schema.table`: Debezium's `op: t` event, without key or images.
    pub fn truncate(&self, qualified: &str, lsn: u64, tx: &TxContext) -> Result<Vec<Record>> {
        let (schema, table) = qualified.split_once('.').unwrap_or(("public", qualified));
        let Some(t) = self.table(schema, table) else {
            return Ok(Vec::new());
        };
        let mut event = b"{\"before\":null,\"after\":null".to_vec();
        self.write_tail(
            &mut event,
            t,
            "t",
            tx.commit_ts_ms,
            "false",
            Some(tx.tx_id),
            lsn,
            tx.commit_lsn,
        );
        Ok(vec![Record {
            topic: t.topic.clone(),
            key: None,
            value: Some(self.with_schema(&t.value_schema, event)),
        }])
    }

    /// A snapshot read (`op: r`) of one row; `value(i)` is the text of the table's i-th column.
    pub fn snapshot_row<'a>(
        &self,
        table: &TableSchema,
        value: impl Fn(usize) -> Option<&'a str>,
        lsn: u64,
        ts_ms: i64,
        last: bool,
    ) -> Record {
        let mut event = Vec::with_capacity(512);
        let mut key = Vec::with_capacity(32);
        event.extend_from_slice(b"{\"before\":null,\"after\":");
        self.write_image(&mut event, Some(&mut key), table, |i, _| {
            value(i).map_or(Cell::Null, Cell::Text)
        });
        let snapshot = if last { "last" } else { "true" };
        self.write_tail(&mut event, table, "r", ts_ms, snapshot, None, lsn, lsn);
        Record {
            topic: table.topic.clone(),
            key: Some(self.with_schema(&table.key_schema, key)),
            value: Some(self.with_schema(&table.value_schema, event)),
        }
    }

    /// Writes a row image as a JSON object of every column, and the key's columns (all of them for
    /// a keyless REPLICA IDENTITY FULL table) as another object into `key`.
    fn write_image<'a>(
        &self,
        out: &mut Vec<u8>,
        mut key: Option<&mut Vec<u8>>,
        table: &TableSchema,
        cell: impl Fn(usize, &Column) -> Cell<'a>,
    ) {
        let keyless = !table.columns.iter().any(|c| c.is_key);
        out.push(b'{');
        if let Some(k) = key.as_deref_mut() {
            k.clear();
            k.push(b'{');
        }
        let mut first_key = true;
        for (i, column) in table.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            out.extend_from_slice(column.json_name.as_bytes());
            out.push(b':');
            match cell(i, column) {
                Cell::Null => out.extend_from_slice(b"null"),
                Cell::Unavailable => {
                    out.extend_from_slice(b"\"");
                    out.extend_from_slice(UNAVAILABLE_VALUE.as_bytes());
                    out.extend_from_slice(b"\"");
                }
                Cell::Text(text) => column.converter.write_json(text, out),
            }
            if let Some(k) = key.as_deref_mut()
                && (column.is_key || keyless)
            {
                if !first_key {
                    k.push(b',');
                }
                first_key = false;
                k.extend_from_slice(&out[start..]);
            }
        }
        out.push(b'}');
        if let Some(k) = key {
            k.push(b'}');
        }
    }

    /// Writes `"source":{…},"op":…,"ts_ms":…,"transaction":null}`, closing the event, with the
    /// source fields in Debezium's order.
    #[allow(clippy::too_many_arguments)]
    fn write_tail(
        &self,
        out: &mut Vec<u8>,
        table: &TableSchema,
        op: &str,
        ts_ms: i64,
        snapshot: &str,
        tx_id: Option<i64>,
        lsn: u64,
        commit_lsn: u64,
    ) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            ",\"source\":{{\"version\":\"{VERSION}\",\"connector\":\"postgresql\",\"name\":{},\"ts_ms\":{ts_ms},\
             \"snapshot\":\"{snapshot}\",{},\"txId\":",
            self.name_json, table.source_ids,
        );
        let _ = match tx_id {
            Some(id) => write!(out, "{id}"),
            None => write!(out, "null"),
        };
        let _ = write!(
            out,
            ",\"lsn\":{lsn},\"xmin\":null,\"commit_lsn\":{commit_lsn}}},\"op\":\"{op}\",\"ts_ms\":{now_ms},\"transaction\":null}}"
        );
    }
}

/// The Kafka Connect schemas Debezium's PostgreSQL connector gives a table's keys and envelopes.
fn connect_schemas(
    table: &TableSchema,
    topic: &str,
    types: &TypeOptions,
) -> (serde_json::Value, serde_json::Value) {
    use serde_json::json;
    let keyless = !table.columns.iter().any(|c| c.is_key);
    let field = |c: &Column| types::schema(&c.ty, &c.name, !c.not_null && !c.is_key, types);
    let key = json!({
        "type": "struct",
        "fields": table.columns.iter().filter(|c| c.is_key || keyless).map(field).collect::<Vec<_>>(),
        "optional": false,
        "name": format!("{topic}.Key"),
    });
    let row = |name: &str| {
        json!({
            "type": "struct",
            "fields": table.columns.iter().map(field).collect::<Vec<_>>(),
            "optional": true,
            "name": format!("{topic}.Value"),
            "field": name,
        })
    };
    let plain = |ty: &str, optional: bool, name: &str| json!({"type": ty, "optional": optional, "field": name});
    let source = json!({
        "type": "struct",
        "fields": [
            plain("string", false, "version"),
            plain("string", false, "connector"),
            plain("string", false, "name"),
            plain("int64", false, "ts_ms"),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,last,false,incremental"}, "default": "false", "field": "snapshot"},
            plain("string", false, "db"),
            plain("string", false, "schema"),
            plain("string", false, "table"),
            plain("int64", true, "txId"),
            plain("int64", true, "lsn"),
            plain("int64", true, "xmin"),
            plain("int64", true, "commit_lsn"),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source",
    });
    let transaction = json!({
        "type": "struct",
        "fields": [
            plain("string", false, "id"),
            plain("int64", false, "total_order"),
            plain("int64", false, "data_collection_order"),
        ],
        "optional": true,
        "name": "event.block",
        "version": 1,
        "field": "transaction",
    });
    let envelope = json!({
        "type": "struct",
        "fields": [row("before"), row("after"), source, plain("string", false, "op"), plain("int64", true, "ts_ms"), transaction],
        "optional": false,
        "name": format!("{topic}.Envelope"),
        "version": 1,
    });
    (key, envelope)
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A column of a logged row. Columns missing from a new image are unchanged TOAST values; columns
/// missing from an old image were not logged (REPLICA IDENTITY DEFAULT logs only the key).
fn cell<'r>(row: &'r RowData, is_new: bool, column: &Column) -> Cell<'r> {
    match row.get(&column.name) {
        Some(v) => v.as_str().map_or(Cell::Null, Cell::Text),
        None if is_new => Cell::Unavailable,
        None => Cell::Null,
    }
}

/// One column's value in an image.
enum Cell<'a> {
    Text(&'a str),
    Null,
    /// An unchanged TOAST value the WAL does not carry.
    Unavailable,
}
