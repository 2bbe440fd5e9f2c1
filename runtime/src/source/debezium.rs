//! Debezium's PostgreSQL change event envelope (JSON converter, schemas disabled).
//!
//! Values follow Debezium's mappings (see [`super::types`]) under the pipeline's
//! `decimal_handling_mode`, `time_precision_mode` and `binary_handling_mode`. Unchanged TOAST
//! values become `__debezium_unavailable_value`.

use std::collections::HashMap;
use std::str::FromStr;

use pg_walstream::RowData;
use serde_json::{Map, Value, json};

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
}

/// Columns of one captured table, as the catalog describes them.
#[derive(Debug, Clone)]
pub struct TableSchema {
    schema: String,
    table: String,
    columns: Vec<Column>,
}

impl TableSchema {
    pub fn new(schema: &str, table: &str, columns: Vec<Column>) -> Self {
        Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
            columns,
        }
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
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Builds change events for the captured tables.
pub struct EventBuilder {
    tables: Vec<TableSchema>,
    by_name: HashMap<String, usize>,
    topic_prefix: String,
    db: String,
    slot_name: String,
    type_options: TypeOptions,
    tombstones_on_delete: bool,
}

impl EventBuilder {
    /// Events for `captured` tables (in that order), whose columns are in `schemas`.
    pub fn new(
        pipeline: &Pipeline,
        captured: &[String],
        mut schemas: HashMap<String, TableSchema>,
    ) -> Self {
        let tables: Vec<TableSchema> = captured.iter().filter_map(|t| schemas.remove(t)).collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.qualified(), i))
            .collect();
        let db = tokio_postgres::Config::from_str(&pipeline.source.connection)
            .ok()
            .and_then(|c| c.get_dbname().map(str::to_owned))
            .unwrap_or_default();
        Self {
            tables,
            by_name,
            topic_prefix: pipeline.kafka.topic_prefix.clone(),
            db,
            slot_name: pipeline.source.slot_name.clone(),
            type_options: TypeOptions {
                decimal: pipeline.source.decimal_handling_mode,
                time_precision: pipeline.source.time_precision_mode,
                binary: pipeline.source.binary_handling_mode,
            },
            tombstones_on_delete: pipeline.source.tombstones_on_delete,
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

    fn topic(&self, table: &TableSchema) -> String {
        format!("{}.{}", self.topic_prefix, table.qualified())
    }

    fn source_block(
        &self,
        table: &TableSchema,
        ts_ms: i64,
        snapshot: &str,
        tx_id: Option<i64>,
        lsn: u64,
        commit_lsn: u64,
    ) -> Value {
        json!({
            "version": VERSION,
            "connector": "postgresql",
            "name": self.topic_prefix,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": self.db,
            "schema": table.schema,
            "table": table.table,
            "txId": tx_id,
            "lsn": lsn,
            "xmin": null,
            // weir's addition: the transaction's commit LSN, so consumers can order changes by
            // commit, then by `lsn` within it (a change's own LSN can precede an earlier commit).
            "commit_lsn": commit_lsn,
        })
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
        let before_image = before.map(|r| self.image(t, r, false)).transpose()?;
        let after_image = after.map(|r| self.image(t, r, true)).transpose()?;
        let key_source = after_image.as_ref().or(before_image.as_ref());
        let key = key_source.map(|img| self.key(t, img));
        let now_ms = chrono::Utc::now().timestamp_millis();
        let event = json!({
            "before": before_image,
            "after": after_image,
            "source": self.source_block(t, tx.commit_ts_ms, "false", Some(tx.tx_id), lsn, tx.commit_lsn),
            "op": op.code(),
            "ts_ms": now_ms,
            "transaction": null,
        });
        let key_bytes = key.map(|k| k.to_string().into_bytes());
        let topic = self.topic(t);
        let mut out = vec![Record {
            topic: topic.clone(),
            key: key_bytes.clone(),
            value: Some(event.to_string().into_bytes()),
        }];
        if op == Op::Delete && self.tombstones_on_delete {
            out.push(Record {
                topic,
                key: key_bytes,
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
        let event = json!({
            "before": null,
            "after": null,
            "source": self.source_block(t, tx.commit_ts_ms, "false", Some(tx.tx_id), lsn, tx.commit_lsn),
            "op": "t",
            "ts_ms": chrono::Utc::now().timestamp_millis(),
            "transaction": null,
        });
        Ok(vec![Record {
            topic: self.topic(t),
            key: None,
            value: Some(event.to_string().into_bytes()),
        }])
    }

    /// A snapshot read (`op: r`) of one row, values in the table's column order.
    pub fn snapshot_row(
        &self,
        table: &TableSchema,
        values: &[Option<String>],
        lsn: u64,
        ts_ms: i64,
        last: bool,
    ) -> Result<Vec<Record>> {
        let mut after = Map::new();
        for (column, value) in table.columns.iter().zip(values) {
            after.insert(column.name.clone(), self.value(column, value.as_deref()));
        }
        let after = Value::Object(after);
        let key = self.key(table, &after);
        let event = json!({
            "before": null,
            "after": after,
            "source": self.source_block(table, ts_ms, if last { "last" } else { "true" }, None, lsn, lsn),
            "op": "r",
            "ts_ms": chrono::Utc::now().timestamp_millis(),
            "transaction": null,
        });
        Ok(vec![Record {
            topic: self.topic(table),
            key: Some(key.to_string().into_bytes()),
            value: Some(event.to_string().into_bytes()),
        }])
    }

    /// The row image: every column of the table; columns missing from a new image are unchanged
    /// TOAST values, and columns missing from an old image were not logged (REPLICA IDENTITY DEFAULT).
    fn image(&self, table: &TableSchema, row: &RowData, is_new: bool) -> Result<Value> {
        let mut out = Map::new();
        for column in &table.columns {
            let value = match row.get(&column.name) {
                Some(v) => self.value(column, v.as_str()),
                None if is_new => Value::String(UNAVAILABLE_VALUE.into()),
                None => Value::Null,
            };
            out.insert(column.name.clone(), value);
        }
        Ok(Value::Object(out))
    }

    /// The event key: the primary key columns (all columns for a keyless REPLICA IDENTITY FULL table).
    fn key(&self, table: &TableSchema, image: &Value) -> Value {
        let has_key = table.columns.iter().any(|c| c.is_key);
        let mut key = Map::new();
        for column in table.columns.iter().filter(|c| c.is_key || !has_key) {
            key.insert(
                column.name.clone(),
                image.get(&column.name).cloned().unwrap_or(Value::Null),
            );
        }
        Value::Object(key)
    }

    fn value(&self, column: &Column, text: Option<&str>) -> Value {
        match text {
            None => Value::Null,
            Some(text) => types::value(&column.ty, text, &self.type_options),
        }
    }
}
