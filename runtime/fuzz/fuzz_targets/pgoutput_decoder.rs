//! pgoutput bytes → pg_walstream's decoder → weir's Debezium events → landing's rows → an Arrow
//! batch: the path capture and landing take from the WAL to a landing file.
//!
//! Input: a byte choosing the protocol version (1 + byte % 4; weir streams with 1), a byte
//! choosing the pipeline's type options, then pgoutput messages, each after its length as a
//! big-endian u16. Decoding errors are expected (a real stream would reconnect) and skipped; a
//! panic, an event weir writes that landing cannot read, or invalid JSON is a bug.
//!
//! With WEIR_FUZZ_SEEDS set to a folder, the target first writes its seeds there.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pg_walstream::{
    ChangeEvent, EventType, LogicalReplicationParser, Lsn, PgOutputDecoder, RelationColumn,
};
use serde_json::Value;
use weir::source::{Column, EventBuilder, Op, TableSchema, TxContext};

fuzz_target!(
    init: {
        if let Some(folder) = std::env::var_os("WEIR_FUZZ_SEEDS") {
            weir_fuzz::write_pgoutput_seeds(std::path::Path::new(&folder))
                .expect("writing the pgoutput seeds");
        }
    },
    |data: &[u8]| run(data)
);

fn run(data: &[u8]) {
    let [version, options, messages @ ..] = data else {
        return;
    };
    let protocol_version = 1 + u32::from(*version % 4);
    let pipeline = weir_fuzz::Options::from_byte(*options).pipeline();

    // The captured tables as weir reads them from the catalog when capture starts: here, each as
    // the first relation message about it describes it.
    let mut captured: Vec<String> = Vec::new();
    let mut columns_of: HashMap<String, Vec<RelationColumn>> = HashMap::new();
    let mut schemas: HashMap<String, TableSchema> = HashMap::new();
    let mut catalog = PgOutputDecoder::with_protocol_version(protocol_version);
    for message in weir_fuzz::frames(messages) {
        if let Ok(Some(ChangeEvent {
            event_type:
                EventType::Relation {
                    namespace,
                    relation_name,
                    columns,
                    ..
                },
            ..
        })) = catalog.decode_message(bytes::Bytes::copy_from_slice(message), Lsn::new(0))
        {
            let qualified = format!("{namespace}.{relation_name}");
            if !schemas.contains_key(&qualified) {
                let table = table_schema(&namespace, &relation_name, &columns);
                captured.push(qualified.clone());
                columns_of.insert(qualified.clone(), columns);
                schemas.insert(qualified, table);
            }
        }
    }
    let mut events = EventBuilder::new(pipeline, &captured, schemas);

    // The parser weir's stream holds, and the decoder that turns its messages into the events
    // the stream hands weir (it keeps the relation cache as the stream does).
    let mut parser = LogicalReplicationParser::with_protocol_version(protocol_version);
    let mut decoder = PgOutputDecoder::with_protocol_version(protocol_version);
    let mut tx = TxContext::default();
    let mut rows: BTreeMap<Arc<str>, Vec<Value>> = BTreeMap::new();
    let mut offset = 0i64;

    for (i, message) in weir_fuzz::frames(messages).enumerate() {
        let _ = parser.parse_wal_message(message);
        let lsn = 0x0100_0000 + 8 * i as u64;
        let Ok(Some(event)) =
            decoder.decode_message(bytes::Bytes::copy_from_slice(message), Lsn::new(lsn))
        else {
            continue;
        };
        let lsn = event.lsn.value();
        let records = match &event.event_type {
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => {
                tx = TxContext {
                    tx_id: i64::from(*transaction_id),
                    commit_lsn: final_lsn.value(),
                    commit_ts_ms: commit_timestamp.timestamp_millis(),
                };
                continue;
            }
            EventType::Relation {
                namespace,
                relation_name,
                columns,
                ..
            } => {
                // As capture does: a table whose columns changed is bound to its new ones.
                let qualified = format!("{namespace}.{relation_name}");
                if columns_of.get(&qualified) != Some(columns) {
                    events.replace_table(table_schema(namespace, relation_name, columns));
                    columns_of.insert(qualified, columns.clone());
                }
                continue;
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } => events.change(schema, table, Op::Create, None, Some(data), lsn, &tx),
            EventType::Update {
                schema,
                table,
                old_data,
                new_data,
                ..
            } => events.change(
                schema,
                table,
                Op::Update,
                old_data.as_ref(),
                Some(new_data),
                lsn,
                &tx,
            ),
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => events.change(schema, table, Op::Delete, Some(old_data), None, lsn, &tx),
            EventType::Truncate { tables, .. } => tables
                .iter()
                .map(|qualified| events.truncate(qualified, lsn, &tx))
                .collect::<Result<Vec<_>, _>>()
                .map(|records| records.into_iter().flatten().collect()),
            _ => continue,
        };
        let Ok(records) = records else { continue };
        for record in records {
            if let Some(key) = &record.key {
                serde_json::from_slice::<Value>(key).unwrap_or_else(|e| {
                    panic!(
                        "weir wrote a key that is not JSON ({e}): {}",
                        String::from_utf8_lossy(key)
                    )
                });
            }
            // A tombstone: landing counts it and moves on.
            let Some(value) = &record.value else { continue };
            let row = weir_fuzz::landing_row(value, record.key.as_deref(), &record.topic, offset)
                .unwrap_or_else(|e| {
                    panic!(
                        "landing cannot read weir's event ({e}): {}",
                        String::from_utf8_lossy(value)
                    )
                });
            offset += 1;
            rows.entry(record.topic.clone()).or_default().push(row);
        }
    }
    // Landing writes one file per topic partition.
    for rows in rows.values() {
        weir_fuzz::land(rows, false);
    }
}

/// A table as weir's catalog query describes it, from a relation message's columns.
fn table_schema(schema: &str, table: &str, columns: &[RelationColumn]) -> TableSchema {
    let columns = columns
        .iter()
        .map(|c| {
            Column::new(
                c.name.to_string(),
                weir_fuzz::catalog_type(c.type_id, c.type_modifier),
                c.is_key,
                // Key columns are NOT NULL in PostgreSQL.
                c.is_key,
            )
        })
        .collect();
    TableSchema::new(schema, table, columns)
}
