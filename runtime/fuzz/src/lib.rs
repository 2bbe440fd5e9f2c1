//! What the fuzz targets share: pipelines under every type option, a stand-in for the catalog that
//! types the columns of relation messages as weir's capture would, landing's path from a Kafka
//! record to an Arrow batch and a Parquet file, and the pgoutput seeds.

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use pg_walstream::{
    ColumnData, ColumnInfo, LogicalReplicationMessage, StreamingReplicationMessage, TupleData,
};
use serde_json::Value;
use weir::config::{BinaryHandlingMode, DecimalHandlingMode, Pipeline, TimePrecisionMode};
use weir::source::types::{ColumnType, TypeOptions};

const DECIMAL: [DecimalHandlingMode; 3] = [
    DecimalHandlingMode::Precise,
    DecimalHandlingMode::Double,
    DecimalHandlingMode::String,
];
const TIME: [TimePrecisionMode; 3] = [
    TimePrecisionMode::Adaptive,
    TimePrecisionMode::AdaptiveTimeMicroseconds,
    TimePrecisionMode::Connect,
];
const BINARY: [BinaryHandlingMode; 4] = [
    BinaryHandlingMode::Bytes,
    BinaryHandlingMode::Base64,
    BinaryHandlingMode::Base64UrlSafe,
    BinaryHandlingMode::Hex,
];
/// Pipelines differ in the three type options, `tombstones_on_delete` and `schemas_enable`.
const PIPELINES: usize = 3 * 3 * 4 * 2 * 2;

/// The source options of a pipeline, chosen by the input.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Options {
    pub decimal: u8,
    pub time: u8,
    pub binary: u8,
    pub tombstones_on_delete: bool,
    pub schemas_enable: bool,
}

impl Options {
    /// Every combination reachable from one byte.
    pub fn from_byte(byte: u8) -> Self {
        let mut rest = usize::from(byte) % PIPELINES;
        let mut take = |n: usize| {
            let digit = rest % n;
            rest /= n;
            digit as u8
        };
        Self {
            decimal: take(3),
            time: take(3),
            binary: take(4),
            tombstones_on_delete: take(2) == 1,
            schemas_enable: take(2) == 1,
        }
    }

    fn index(self) -> usize {
        let (d, t, b) = (
            usize::from(self.decimal) % 3,
            usize::from(self.time) % 3,
            usize::from(self.binary) % 4,
        );
        d + 3
            * (t + 3
                * (b + 4
                    * (usize::from(self.tombstones_on_delete)
                        + 2 * usize::from(self.schemas_enable))))
    }

    pub fn types(self) -> TypeOptions {
        TypeOptions {
            decimal: DECIMAL[usize::from(self.decimal) % 3],
            time_precision: TIME[usize::from(self.time) % 3],
            binary: BINARY[usize::from(self.binary) % 4],
        }
    }

    /// The pipeline with these options, parsed once.
    pub fn pipeline(self) -> &'static Pipeline {
        static PARSED: OnceLock<Vec<Pipeline>> = OnceLock::new();
        let all = PARSED.get_or_init(|| {
            (0..PIPELINES)
                .map(|i| pipeline_text(Self::from_byte(i as u8)))
                .map(|text| {
                    Pipeline::parse(Path::new("/weir-fuzz/pipeline.toml"), text)
                        .expect("the fuzz pipeline parses")
                })
                .collect()
        });
        &all[self.index()]
    }
}

fn pipeline_text(options: Options) -> String {
    let decimal = ["precise", "double", "string"][usize::from(options.decimal)];
    let time = ["adaptive", "adaptive_time_microseconds", "connect"][usize::from(options.time)];
    let binary = ["bytes", "base64", "base64_url_safe", "hex"][usize::from(options.binary)];
    format!(
        r#"
[pipeline]
name = "fuzz"

[source]
connection = "postgres://postgres@127.0.0.1:5432/business"
table_include_list = [".*"]
decimal_handling_mode = "{decimal}"
time_precision_mode = "{time}"
binary_handling_mode = "{binary}"
tombstones_on_delete = {}
schemas_enable = {}

[kafka]
bootstrap_servers = "127.0.0.1:9092"
topic_prefix = "fuzz"

[landing]
location = "memory://landing"

[bronze]
source_table = "public.t"
component = "bronze.wasm"
table = "memory://bronze"

[silver]
component = "silver.wasm"
table = "memory://silver"
keys = ["id"]
"#,
        options.tombstones_on_delete, options.schemas_enable
    )
}

/// Built-in types weir maps, as `pg_type` has them: oid, name, category, and for arrays the
/// element's oid.
pub const BUILT_IN_TYPES: &[(u32, &str, char, Option<u32>)] = &[
    (16, "boolean", 'B', None),
    (17, "bytea", 'U', None),
    (18, "\"char\"", 'Z', None),
    (19, "name", 'S', None),
    (20, "bigint", 'N', None),
    (21, "smallint", 'N', None),
    (23, "integer", 'N', None),
    (25, "text", 'S', None),
    (26, "oid", 'N', None),
    (114, "json", 'U', None),
    (142, "xml", 'U', None),
    (600, "point", 'G', None),
    (603, "box", 'G', None),
    (650, "cidr", 'I', None),
    (700, "real", 'N', None),
    (701, "double precision", 'N', None),
    (790, "money", 'N', None),
    (829, "macaddr", 'U', None),
    (869, "inet", 'I', None),
    (1042, "character", 'S', None),
    (1043, "character varying", 'S', None),
    (1082, "date", 'D', None),
    (1083, "time without time zone", 'D', None),
    (1114, "timestamp without time zone", 'D', None),
    (1184, "timestamp with time zone", 'D', None),
    (1186, "interval", 'T', None),
    (1266, "time with time zone", 'D', None),
    (1560, "bit", 'V', None),
    (1562, "bit varying", 'V', None),
    (1700, "numeric", 'N', None),
    (2950, "uuid", 'U', None),
    (3220, "pg_lsn", 'U', None),
    (3614, "tsvector", 'U', None),
    (3615, "tsquery", 'U', None),
    (3802, "jsonb", 'U', None),
    (3904, "int4range", 'R', None),
    (199, "json[]", 'A', Some(114)),
    (791, "money[]", 'A', Some(790)),
    (1000, "boolean[]", 'A', Some(16)),
    (1001, "bytea[]", 'A', Some(17)),
    (1005, "smallint[]", 'A', Some(21)),
    (1007, "integer[]", 'A', Some(23)),
    (1009, "text[]", 'A', Some(25)),
    (1015, "character varying[]", 'A', Some(1043)),
    (1016, "bigint[]", 'A', Some(20)),
    (1017, "point[]", 'A', Some(600)),
    (1020, "box[]", 'A', Some(603)),
    (1021, "real[]", 'A', Some(700)),
    (1022, "double precision[]", 'A', Some(701)),
    (1115, "timestamp without time zone[]", 'A', Some(1114)),
    (1182, "date[]", 'A', Some(1082)),
    (1183, "time without time zone[]", 'A', Some(1083)),
    (1185, "timestamp with time zone[]", 'A', Some(1184)),
    (1187, "interval[]", 'A', Some(1186)),
    (1231, "numeric[]", 'A', Some(1700)),
    (1270, "time with time zone[]", 'A', Some(1266)),
    (1561, "bit[]", 'A', Some(1560)),
    (1563, "bit varying[]", 'A', Some(1562)),
    (2951, "uuid[]", 'A', Some(2950)),
    (3643, "tsvector[]", 'A', Some(3614)),
    (3807, "jsonb[]", 'A', Some(3802)),
];

/// Types of extensions and user-defined types (oids from 16384 on), recognised by name or category.
const USER_TYPES: &[(&str, char, Option<(&str, char)>)] = &[
    ("hstore", 'U', None),
    ("public.ltree", 'U', None),
    ("mood", 'E', None),
    ("address", 'C', None),
    ("public.hstore[]", 'A', Some(("public.hstore", 'U'))),
    ("mood[]", 'A', Some(("mood", 'E'))),
    ("vector", 'U', None),
];

/// The oid of the `index`th type weir maps (built-in ones, then user-defined ones), wrapping.
pub fn catalog_oid(index: usize) -> u32 {
    let index = index % (BUILT_IN_TYPES.len() + USER_TYPES.len());
    match BUILT_IN_TYPES.get(index) {
        Some(&(oid, ..)) => oid,
        None => FIRST_USER_OID + (index - BUILT_IN_TYPES.len()) as u32,
    }
}

const FIRST_USER_OID: u32 = 16_384;

/// The type weir's catalog query gives a column of type `oid` with modifier `typmod`.
pub fn catalog_type(oid: u32, typmod: i32) -> ColumnType {
    let scalar = |oid: u32, name: &str, category: char| ColumnType {
        oid,
        typmod: -1,
        name: name.to_owned(),
        category,
        element: None,
    };
    if let Some(&(_, name, category, element)) = BUILT_IN_TYPES.iter().find(|t| t.0 == oid) {
        let element = element.map(|element| {
            let &(_, name, category, _) = BUILT_IN_TYPES
                .iter()
                .find(|t| t.0 == element)
                .expect("element types are listed");
            Box::new(scalar(element, name, category))
        });
        return ColumnType {
            typmod,
            element,
            ..scalar(oid, name, category)
        };
    }
    if oid >= FIRST_USER_OID {
        let (name, category, element) =
            USER_TYPES[(oid - FIRST_USER_OID) as usize % USER_TYPES.len()];
        return ColumnType {
            typmod,
            element: element
                .map(|(name, category)| Box::new(scalar(oid.wrapping_add(1), name, category))),
            ..scalar(oid, name, category)
        };
    }
    // A built-in type weir has no mapping for: passed through as text.
    ColumnType {
        typmod,
        ..scalar(oid, "unknown", 'X')
    }
}

/// What landing does with one Kafka record: the JSON event flattened into a landing row.
pub fn landing_row(
    value: &[u8],
    key: Option<&[u8]>,
    topic: &str,
    offset: i64,
) -> Result<Value, String> {
    let event: Value = serde_json::from_slice(value).map_err(|e| format!("invalid JSON: {e}"))?;
    weir::landing::flatten_event(
        event,
        key,
        topic,
        0,
        offset,
        Some(1_700_000_000_000 + offset),
    )
}

/// What landing does with a buffer of rows: one Arrow batch, and with `parquet` the file's bytes.
pub fn land(rows: &[Value], parquet: bool) {
    if rows.is_empty() {
        return;
    }
    let Ok(batch) = weir::landing::rows_to_batch(rows) else {
        return;
    };
    assert_eq!(
        batch.num_rows(),
        rows.len(),
        "the landing batch lost or gained rows"
    );
    if parquet {
        let _ = weir::landing::write_parquet(&batch);
    }
}

/// Splits the pgoutput target's input after its two option bytes into messages, each preceded by
/// its length as a big-endian u16 (the last one may be cut short).
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (length, rest) = data.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_be_bytes(*length)).min(rest.len());
        let (message, rest) = rest.split_at(length);
        data = rest;
        Some(message)
    })
}

/// Frames `messages` as the pgoutput target reads them.
pub fn frame(protocol_version: u8, options: u8, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![protocol_version - 1, options];
    for message in messages {
        let length = u16::try_from(message.len()).expect("seed messages are short");
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(message);
    }
    out
}

/// Writes seeds for the pgoutput target into `folder`: transactions pgoutput sends for tables of
/// every type weir maps, encoded with pg_walstream's own encoder.
pub fn write_pgoutput_seeds(folder: &Path) -> std::io::Result<()> {
    use LogicalReplicationMessage as M;
    let encode = |message: &M| pg_walstream::encode_message_to_bytes(message, 1).to_vec();
    let text = |s: &str| ColumnData::text(s.as_bytes().to_vec());
    let begin = M::Begin {
        final_lsn: 0x0100_0000,
        timestamp: 780_000_000_000_000,
        xid: 740,
    };
    let commit = M::Commit {
        flags: 0,
        commit_lsn: 0x0100_0000,
        end_lsn: 0x0100_0040,
        timestamp: 780_000_000_000_000,
    };
    // The reference table, public.onlineshop.
    let onlineshop_columns = [
        (1, "id", 23, -1),
        (0, "transactionno", 23, -1),
        (0, "date", 1043, 24),
        (0, "productno", 23, -1),
        (0, "productname", 1043, 104),
        (0, "price", 1700, (10 << 16 | 2) + 4),
        (0, "quantity", 23, -1),
        (0, "customerno", 23, -1),
        (0, "country", 1043, 104),
    ];
    let onlineshop = M::Relation {
        relation_id: 16_390,
        namespace: "public".into(),
        relation_name: "onlineshop".into(),
        replica_identity: b'd',
        columns: onlineshop_columns
            .iter()
            .map(|&(flags, name, oid, typmod)| ColumnInfo::new(flags, name.to_owned(), oid, typmod))
            .collect(),
    };
    let row = |id: &str, price: &str| {
        TupleData::new(vec![
            text(id),
            text("581492"),
            text("12/9/2019"),
            text("22196"),
            text("teste"),
            text(price),
            text("11"),
            ColumnData::null(),
            text("United Kingdom"),
        ])
    };
    let onlineshop_tx = vec![
        encode(&begin),
        encode(&onlineshop),
        encode(&M::Insert {
            relation_id: 16_390,
            tuple: row("1", "7.24"),
        }),
        encode(&M::Update {
            relation_id: 16_390,
            old_tuple: None,
            new_tuple: row("1", "-0.50"),
            key_type: None,
        }),
        encode(&M::Delete {
            relation_id: 16_390,
            old_tuple: TupleData::new(vec![
                text("1"),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
                ColumnData::null(),
            ]),
            key_type: 'K',
        }),
        encode(&M::Truncate {
            relation_ids: vec![16_390],
            flags: 0,
        }),
        encode(&commit),
    ];

    // A REPLICA IDENTITY FULL table with a column of every type and a value of each.
    let typed: Vec<(u32, i32, &str)> = vec![
        (16, -1, "t"),
        (17, -1, "\\x0a0bff"),
        (20, -1, "-9223372036854775808"),
        (21, -1, "32767"),
        (23, -1, "-2147483648"),
        (25, -1, "text \"quoted\" \\ \u{e9}"),
        (26, -1, "4294967295"),
        (114, -1, "{\"a\": [1, 2.5, null]}"),
        (142, -1, "<a>b</a>"),
        (600, -1, "(1.5,-2)"),
        (603, -1, "(1,1),(0,0)"),
        (700, -1, "1.1"),
        (701, -1, "-Infinity"),
        (790, -1, "-$1,234.56"),
        (1042, 5, "ab   "),
        (1082, -1, "2020-02-29"),
        (1082, -1, "0044-03-15 BC"),
        (1083, 3, "23:59:59.999"),
        (1114, -1, "2016-11-04 13:51:30.123456"),
        (1114, 0, "infinity"),
        (1184, 2, "2016-11-04 13:51:30.12+05:30"),
        (1186, -1, "1 year 2 mons -3 days +04:05:06.5"),
        (1266, -1, "10:00:00.5-07"),
        (1560, 3, "101"),
        (1562, -1, "1"),
        (1700, (38 << 16 | 4) + 4, "12345678901234567890.1234"),
        (1700, -1, "NaN"),
        (1700, -1, "0.00000001"),
        (2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (3614, -1, "'a':1 'b':2"),
        (3802, -1, "{\"k\": \"v\"}"),
        (1007, -1, "{1,2,NULL}"),
        (1009, -1, "{\"a,b\",\"c\\\"d\",NULL}"),
        (1017, -1, "{\"(1,2)\",\"(3,4)\"}"),
        (1020, -1, "{(1,1),(0,0);(2,2),(1,1)}"),
        (1115, -1, "[0:1]={\"2020-01-01 00:00:00\",infinity}"),
        (1231, (5 << 16 | 2) + 4, "{{1.5,2},{3,NULL}}"),
        (1561, 2, "{10,01}"),
        (16_384, -1, "\"a\"=>\"1\", \"b\"=>NULL"),
        (16_385, -1, "top.science.astronomy"),
        (16_386, -1, "happy"),
        (16_388, -1, "{\"\\\"k\\\"=>\\\"v\\\"\"}"),
        (16_389, -1, "{sad,ok}"),
    ];
    let types_relation = M::Relation {
        relation_id: 16_500,
        namespace: "inventory".into(),
        relation_name: "all_types".into(),
        replica_identity: b'f',
        columns: typed
            .iter()
            .enumerate()
            .map(|(i, &(oid, typmod, _))| ColumnInfo::new(0, format!("c{i}"), oid, typmod))
            .collect(),
    };
    let typed_row = TupleData::new(typed.iter().map(|&(_, _, value)| text(value)).collect());
    let mut changed = typed_row.clone();
    changed.columns[1] = ColumnData::unchanged();
    changed.columns[2] = ColumnData::null();
    let types_tx = vec![
        encode(&begin),
        encode(&types_relation),
        encode(&M::Insert {
            relation_id: 16_500,
            tuple: typed_row.clone(),
        }),
        encode(&M::Update {
            relation_id: 16_500,
            old_tuple: Some(typed_row.clone()),
            new_tuple: changed,
            key_type: Some('O'),
        }),
        encode(&M::Delete {
            relation_id: 16_500,
            old_tuple: typed_row,
            key_type: 'O',
        }),
        encode(&commit),
    ];

    // A schema change in the middle of a transaction, then a heartbeat message.
    let mut altered = onlineshop.clone();
    if let M::Relation { columns, .. } = &mut altered {
        columns.push(ColumnInfo::new(0, "note".to_owned(), 25, -1));
        columns[5].type_modifier = (12 << 16 | 3) + 4;
    }
    let mut wide_row = row("2", "99999999.999");
    wide_row.columns.push(text("added"));
    let schema_change_tx = vec![
        encode(&begin),
        encode(&onlineshop),
        encode(&M::Insert {
            relation_id: 16_390,
            tuple: row("2", "1"),
        }),
        encode(&altered),
        encode(&M::Insert {
            relation_id: 16_390,
            tuple: wide_row,
        }),
        encode(&commit),
        encode(&M::Message {
            flags: 0,
            lsn: 0x0100_0080,
            prefix: "weir_heartbeat".into(),
            content: bytes::Bytes::from_static(b"1"),
        }),
    ];

    // A streamed transaction (protocol 2), as PostgreSQL sends a large one.
    let streamed = |message: M| {
        pg_walstream::encode_streaming_message_to_bytes(
            &StreamingReplicationMessage::new_streaming(message, 741),
            2,
        )
        .to_vec()
    };
    let stream_tx = vec![
        pg_walstream::encode_message_to_bytes(
            &M::StreamStart {
                xid: 741,
                first_segment: true,
            },
            2,
        )
        .to_vec(),
        streamed(onlineshop.clone()),
        streamed(M::Insert {
            relation_id: 16_390,
            tuple: row("3", "0.01"),
        }),
        pg_walstream::encode_message_to_bytes(&M::StreamStop, 2).to_vec(),
        pg_walstream::encode_message_to_bytes(
            &M::StreamCommit {
                xid: 741,
                flags: 0,
                commit_lsn: 0x0100_0100,
                end_lsn: 0x0100_0140,
                timestamp: 780_000_000_000_000,
            },
            2,
        )
        .to_vec(),
    ];

    std::fs::create_dir_all(folder)?;
    let seeds = [
        ("seed-onlineshop", frame(1, 0, &onlineshop_tx)),
        (
            "seed-onlineshop-schemas-tombstones",
            frame(1, 108, &onlineshop_tx),
        ),
        ("seed-all-types", frame(1, 0, &types_tx)),
        ("seed-all-types-string-connect-hex", frame(1, 35, &types_tx)),
        (
            "seed-all-types-double-micros-base64",
            frame(1, 13, &types_tx),
        ),
        ("seed-schema-change", frame(1, 0, &schema_change_tx)),
        ("seed-streamed", frame(2, 0, &stream_tx)),
    ];
    for (name, bytes) in seeds {
        let path = folder.join(name);
        if !path.exists() {
            std::fs::write(path, bytes)?;
        }
    }
    Ok(())
}
