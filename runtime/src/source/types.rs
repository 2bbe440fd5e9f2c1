//! Debezium's PostgreSQL connector type mappings.
//!
//! Turns PostgreSQL's text output of one column value (as pgoutput delivers it in text format) into
//! the JSON that Kafka Connect's `JsonConverter` writes for the value Debezium's
//! `PostgresValueConverter` produces, and gives the Connect schema of the field as the converter
//! writes it with `schemas.enable=true`.
//!
//! Options Debezium has that are not in [`TypeOptions`] take Debezium's defaults:
//! `interval.handling.mode=numeric`, `hstore.handling.mode=json`, `money.fraction.digits=2`.
//! Text output is expected in PostgreSQL's defaults: `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `bytea_output=hex`, `lc_monetary=C`.
//!
//! Where Debezium fails or drops a column (e.g. `numeric` NaN in `precise` mode, unknown types),
//! the choice made instead is noted where it is made. Text a typed conversion cannot parse is
//! passed through as a JSON string rather than failing the stream.

use std::io::Write as _;

use serde_json::{Value, json};

/// Debezium `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandlingMode {
    Precise,
    Double,
    String,
}

/// Debezium `time.precision.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecisionMode {
    Adaptive,
    AdaptiveTimeMicroseconds,
    Connect,
}

/// Debezium `binary.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryHandlingMode {
    Bytes,
    Base64,
    /// Debezium's own spelling, `base64-url-safe`, is accepted too.
    #[serde(alias = "base64-url-safe")]
    Base64UrlSafe,
    Hex,
}

#[derive(Debug, Clone, Copy)]
pub struct TypeOptions {
    pub decimal: DecimalHandlingMode,
    pub time_precision: TimePrecisionMode,
    pub binary: BinaryHandlingMode,
}

impl Default for TypeOptions {
    /// Debezium's defaults.
    fn default() -> Self {
        Self {
            decimal: DecimalHandlingMode::Precise,
            time_precision: TimePrecisionMode::Adaptive,
            binary: BinaryHandlingMode::Bytes,
        }
    }
}

/// A column's type as the catalog describes it.
///
/// Domains should be described by their base type (Debezium maps a domain as its base type).
/// For an array, `typmod` is the column's `atttypmod`; it applies to the elements, which inherit
/// it when their own `typmod` is -1.
#[derive(Debug, Clone)]
pub struct ColumnType {
    pub oid: u32,
    /// `pg_attribute.atttypmod` (-1 when none).
    pub typmod: i32,
    /// `format_type(atttypid, atttypmod)`, e.g. "numeric(10,2)", "character varying(20)", "mood",
    /// "integer[]".
    pub name: String,
    /// `pg_type.typcategory`: 'N' numeric, 'S' string, 'E' enum, 'A' array, 'D' datetime,
    /// 'B' bool, 'U' user, 'T' timespan, ...
    pub category: char,
    /// For arrays: the element type.
    pub element: Option<Box<ColumnType>>,
}

/// PostgreSQL's text output of one non-NULL value → the JSON value Debezium's JsonConverter
/// writes (schemas disabled).
pub fn value(ty: &ColumnType, text: &str, opts: &TypeOptions) -> Value {
    Converter::new(ty, opts).value(text)
}

/// One column type's mapping under the pipeline's options, worked out once per column rather than
/// per value: events are written straight from it.
#[derive(Debug, Clone)]
pub struct Converter(Mapping);

impl Converter {
    pub fn new(ty: &ColumnType, opts: &TypeOptions) -> Self {
        Self(Mapping::of(ty, ty.typmod, opts))
    }

    /// Appends the JSON of [`value`] to `out`, without building a [`Value`] for the common types.
    pub fn write_json(&self, text: &str, out: &mut Vec<u8>) {
        if !self.write_common(text, out) {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(out, &self.value(text));
        }
    }

    /// See [`value`]: text the mapping cannot parse passes through as a JSON string.
    fn value(&self, text: &str) -> Value {
        self.0
            .value(text)
            .unwrap_or_else(|| Value::String(text.to_owned()))
    }

    /// Writes the types most tables are made of; false (and nothing written) for the others and for
    /// text the type's parser rejects.
    fn write_common(&self, text: &str, out: &mut Vec<u8>) -> bool {
        // Writing into a Vec cannot fail, hence the ignored results.
        match &self.0 {
            Mapping::Boolean if text == "t" => out.extend_from_slice(b"true"),
            Mapping::Boolean if text == "f" => out.extend_from_slice(b"false"),
            Mapping::Int16 | Mapping::Int32 | Mapping::Int64 => {
                let parsed = match &self.0 {
                    Mapping::Int16 => text.parse::<i16>().map(i64::from),
                    Mapping::Int32 => text.parse::<i32>().map(i64::from),
                    _ => text.parse::<i64>(),
                };
                let Ok(n) = parsed else { return false };
                let _ = write!(out, "{n}");
            }
            Mapping::Text(_) => {
                let _ = serde_json::to_writer(out, text);
            }
            Mapping::Date(_) => {
                let Some(days) = epoch_days(text) else {
                    return false;
                };
                let _ = write!(out, "{days}");
            }
            Mapping::Numeric {
                typmod: Some(typmod),
                mode: DecimalHandlingMode::Precise,
            } => {
                let Some(unscaled) = small_unscaled(text, typmod.scale) else {
                    return false;
                };
                out.push(b'"');
                base64_into(&twos_complement(unscaled), BASE64_STANDARD, out);
                out.push(b'"');
            }
            _ => return false,
        }
        true
    }
}

/// The unscaled value of a `numeric` printed with at most `scale` fraction digits, when it fits an
/// i128 (38 digits); `None` sends the value down the general path.
fn small_unscaled(text: &str, scale: i32) -> Option<i128> {
    let scale = usize::try_from(scale).ok()?;
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, text),
    };
    let (whole, fraction) = magnitude.split_once('.').unwrap_or((magnitude, ""));
    if whole.len() + scale > 38 || fraction.len() > scale || whole.len() + fraction.len() == 0 {
        return None;
    }
    let mut unscaled: i128 = 0;
    for byte in whole.bytes().chain(fraction.bytes()) {
        if !byte.is_ascii_digit() {
            return None;
        }
        unscaled = unscaled * 10 + i128::from(byte - b'0');
    }
    unscaled *= 10i128.pow((scale - fraction.len()) as u32);
    Some(if negative { -unscaled } else { unscaled })
}

/// `BigInteger.toByteArray()`: minimal big-endian two's complement.
fn twos_complement(value: i128) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    // A leading byte is redundant when it only repeats the sign the next byte already carries.
    while start + 1 < bytes.len()
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// The Kafka Connect schema of a field of this type, as Debezium's JsonConverter writes it with
/// `schemas.enable=true`, e.g.
/// `{"type":"int32","optional":false,"name":"io.debezium.time.Date","version":1,"field":"date"}`.
pub fn schema(ty: &ColumnType, field: &str, optional: bool, opts: &TypeOptions) -> Value {
    let mut schema = Mapping::of(ty, ty.typmod, opts).schema(optional);
    if let Value::Object(map) = &mut schema {
        map.insert("field".to_owned(), Value::String(field.to_owned()));
    }
    schema
}

// Built-in type OIDs (stable across PostgreSQL versions); extension types are recognised by name.
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const XML: u32 = 142;
const POINT: u32 = 600;
const BOX: u32 = 603;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const MONEY: u32 = 790;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const INTERVAL: u32 = 1186;
const TIMETZ: u32 = 1266;
const BIT: u32 = 1560;
const VARBIT: u32 = 1562;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const TSVECTOR: u32 = 3614;
const JSONB: u32 = 3802;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Debezium maps `timestamp` ±infinity to pgjdbc's `PGStatement.DATE_POSITIVE_INFINITY` /
/// `DATE_NEGATIVE_INFINITY`, read as microseconds (documented under "TIMESTAMP type").
const TIMESTAMP_POSITIVE_INFINITY: i64 = 9_223_372_036_825_200_000;
const TIMESTAMP_NEGATIVE_INFINITY: i64 = -9_223_372_036_832_400_000;

/// Debezium reads `date` ±infinity as
/// `PostgresValueConverter.POSITIVE/NEGATIVE_INFINITY_LOCAL_DATE` (-5877611-06-21 and -06-22):
/// PostgreSQL's INT_MAX/INT_MIN day sentinels shifted to the Unix epoch with 32-bit wraparound,
/// so "infinity" sorts before "-infinity".
const DATE_POSITIVE_INFINITY: i32 = -2_147_472_692;
const DATE_NEGATIVE_INFINITY: i32 = -2_147_472_691;

/// How one PostgreSQL type is represented, with the options already applied.
#[derive(Debug, Clone)]
enum Mapping {
    Boolean,
    /// `bit(1)`/`varbit(1)`, which Debezium reads as a boolean.
    Bit,
    /// `bit(n)`/`varbit(n)` with n > 1: `io.debezium.data.Bits`.
    Bits {
        length: i32,
    },
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Numeric {
        /// `None` when declared without precision and scale.
        typmod: Option<NumericTypmod>,
        mode: DecimalHandlingMode,
    },
    Money(DecimalHandlingMode),
    /// Passed through as text, under a Debezium semantic name when it has one.
    Text(Option<&'static str>),
    Hstore,
    Date(&'static str),
    Time(Temporal),
    Timestamp(Temporal),
    ZonedTimestamp {
        /// Exact fraction width; 0 prints only the digits needed (Java's ISO format).
        fraction_digits: usize,
    },
    ZonedTime,
    Interval,
    Binary(BinaryHandlingMode),
    Point,
    Array {
        element: Box<Mapping>,
        /// Debezium marks array items optional, except enum items.
        element_optional: bool,
        delimiter: char,
    },
}

#[derive(Debug, Clone, Copy)]
struct NumericTypmod {
    precision: i32,
    scale: i32,
}

/// A time or timestamp Connect type: its schema name, and whether it counts milliseconds rather
/// than microseconds.
#[derive(Debug, Clone, Copy)]
struct Temporal {
    name: &'static str,
    millis: bool,
}

impl Mapping {
    fn of(ty: &ColumnType, typmod: i32, opts: &TypeOptions) -> Self {
        if ty.category == 'A'
            && let Some(element) = &ty.element
        {
            let element_typmod = if element.typmod == -1 {
                typmod
            } else {
                element.typmod
            };
            return Self::Array {
                element: Box::new(Self::of(element, element_typmod, opts)),
                element_optional: element.category != 'E',
                // box is the one built-in type whose arrays are delimited by ';'.
                delimiter: if element.oid == BOX { ';' } else { ',' },
            };
        }
        if ty.category == 'E' {
            // Debezium lists the labels in an `allowed` parameter; ColumnType does not carry them.
            return Self::Text(Some("io.debezium.data.Enum"));
        }
        // Fractional-second precision of time types; PostgreSQL's default is 6.
        let precision = usize::try_from(typmod).map_or(6, |precision| precision.min(6));
        let connect = opts.time_precision == TimePrecisionMode::Connect;
        match ty.oid {
            BOOL => Self::Boolean,
            BYTEA => Self::Binary(opts.binary),
            INT2 => Self::Int16,
            INT4 => Self::Int32,
            INT8 | OID => Self::Int64,
            FLOAT4 => Self::Float32,
            FLOAT8 => Self::Float64,
            NUMERIC => Self::Numeric {
                typmod: numeric_typmod(typmod),
                mode: opts.decimal,
            },
            MONEY => Self::Money(opts.decimal),
            BIT | VARBIT => {
                let length = match typmod {
                    length if length > 0 => length,
                    // Debezium's length for an unbounded varbit.
                    _ if ty.oid == VARBIT => i32::MAX,
                    _ => 1,
                };
                if length > 1 {
                    Self::Bits { length }
                } else {
                    Self::Bit
                }
            }
            DATE if connect => Self::Date("org.apache.kafka.connect.data.Date"),
            DATE => Self::Date("io.debezium.time.Date"),
            TIME => Self::Time(match opts.time_precision {
                TimePrecisionMode::Adaptive if precision <= 3 => Temporal {
                    name: "io.debezium.time.Time",
                    millis: true,
                },
                TimePrecisionMode::Adaptive | TimePrecisionMode::AdaptiveTimeMicroseconds => {
                    Temporal {
                        name: "io.debezium.time.MicroTime",
                        millis: false,
                    }
                }
                TimePrecisionMode::Connect => Temporal {
                    name: "org.apache.kafka.connect.data.Time",
                    millis: true,
                },
            }),
            TIMESTAMP => Self::Timestamp(match opts.time_precision {
                TimePrecisionMode::Connect => Temporal {
                    name: "org.apache.kafka.connect.data.Timestamp",
                    millis: true,
                },
                _ if precision <= 3 => Temporal {
                    name: "io.debezium.time.Timestamp",
                    millis: true,
                },
                _ => Temporal {
                    name: "io.debezium.time.MicroTimestamp",
                    millis: false,
                },
            }),
            // Debezium pads the fraction to the column's precision (DBZ-6163).
            TIMESTAMPTZ => Self::ZonedTimestamp {
                fraction_digits: precision,
            },
            TIMETZ => Self::ZonedTime,
            INTERVAL => Self::Interval,
            JSON | JSONB => Self::Text(Some("io.debezium.data.Json")),
            XML => Self::Text(Some("io.debezium.data.Xml")),
            UUID => Self::Text(Some("io.debezium.data.Uuid")),
            // Debezium's spelling, lower-case v.
            TSVECTOR => Self::Text(Some("io.debezium.data.Tsvector")),
            POINT => Self::Point,
            _ => match unqualified(&ty.name) {
                "hstore" => Self::Hstore,
                "ltree" => Self::Text(Some("io.debezium.data.Ltree")),
                // text, varchar, bpchar, name, citext, inet, ranges, ...: Debezium's plain strings.
                // Types Debezium does not know (composites, pg_lsn, tsquery, PostGIS, pgvector,
                // ...) it drops, or sends as bytes with include.unknown.datatypes; the text is
                // kept instead.
                _ => Self::Text(None),
            },
        }
    }

    fn value(&self, text: &str) -> Option<Value> {
        Some(match self {
            Self::Boolean => Value::Bool(match text {
                "t" => true,
                "f" => false,
                _ => return None,
            }),
            Self::Bit => Value::Bool(match text {
                "1" => true,
                "0" => false,
                _ => return None,
            }),
            Self::Bits { .. } => Value::String(base64(&bits_little_endian(text)?, BASE64_STANDARD)),
            Self::Int16 => json!(text.parse::<i16>().ok()?),
            Self::Int32 => json!(text.parse::<i32>().ok()?),
            Self::Int64 => json!(text.parse::<i64>().ok()?),
            Self::Float32 => float32_json(text.parse().ok()?)?,
            Self::Float64 => double_json(text.parse().ok()?),
            Self::Numeric { typmod, mode } => numeric_value(text, *typmod, *mode)?,
            Self::Money(mode) => money_value(text, *mode)?,
            Self::Text(_) => Value::String(text.to_owned()),
            Self::Hstore => Value::String(hstore_json(text)?),
            Self::Date(_) => json!(epoch_days(text)?),
            Self::Time(temporal) => {
                let micros = clock_micros(text)?;
                json!(if temporal.millis {
                    micros / 1000
                } else {
                    micros
                })
            }
            Self::Timestamp(temporal) => json!(timestamp_value(text, temporal.millis)?),
            Self::ZonedTimestamp { fraction_digits } => {
                Value::String(zoned_timestamp(text, *fraction_digits)?)
            }
            Self::ZonedTime => Value::String(zoned_time(text)?),
            Self::Interval => json!(interval_micros(text)?),
            Self::Binary(mode) => Value::String(encode_binary(&bytea(text)?, *mode)),
            Self::Point => point_value(text)?,
            Self::Array {
                element, delimiter, ..
            } => Value::Array(
                array_elements(text, *delimiter)?
                    .into_iter()
                    .map(|item| match item {
                        Some(item) => element.value(&item).unwrap_or(Value::String(item)),
                        None => Value::Null,
                    })
                    .collect(),
            ),
        })
    }

    fn schema(&self, optional: bool) -> Value {
        match self {
            Self::Boolean | Self::Bit => plain("boolean", optional),
            Self::Bits { length } => json!({
                "type": "bytes",
                "optional": optional,
                "name": "io.debezium.data.Bits",
                "version": 1,
                "parameters": {"length": length.to_string()},
            }),
            Self::Int16 => plain("int16", optional),
            Self::Int32 => plain("int32", optional),
            Self::Int64 => plain("int64", optional),
            Self::Float32 => plain("float32", optional),
            Self::Float64 => plain("float64", optional),
            Self::Numeric { typmod, mode } => match (mode, typmod) {
                (DecimalHandlingMode::Precise, Some(typmod)) => json!({
                    "type": "bytes",
                    "optional": optional,
                    "name": "org.apache.kafka.connect.data.Decimal",
                    "version": 1,
                    "parameters": {
                        "scale": typmod.scale.to_string(),
                        "connect.decimal.precision": typmod.precision.to_string(),
                    },
                }),
                (DecimalHandlingMode::Precise, None) => json!({
                    "type": "struct",
                    "fields": [
                        {"type": "int32", "optional": false, "field": "scale"},
                        {"type": "bytes", "optional": false, "field": "value"},
                    ],
                    "optional": optional,
                    "name": "io.debezium.data.VariableScaleDecimal",
                    "version": 1,
                    "doc": "Variable scaled decimal",
                }),
                (DecimalHandlingMode::Double, _) => plain("float64", optional),
                (DecimalHandlingMode::String, _) => plain("string", optional),
            },
            Self::Money(mode) => match mode {
                // Debezium gives money no precision parameter.
                DecimalHandlingMode::Precise => json!({
                    "type": "bytes",
                    "optional": optional,
                    "name": "org.apache.kafka.connect.data.Decimal",
                    "version": 1,
                    "parameters": {"scale": MONEY_FRACTION_DIGITS.to_string()},
                }),
                DecimalHandlingMode::Double => plain("float64", optional),
                DecimalHandlingMode::String => plain("string", optional),
            },
            Self::Text(None) => plain("string", optional),
            Self::Text(Some(name)) => named("string", optional, name),
            Self::Hstore => named("string", optional, "io.debezium.data.Json"),
            Self::Date(name) => named("int32", optional, name),
            Self::Time(temporal) => named(
                if temporal.millis { "int32" } else { "int64" },
                optional,
                temporal.name,
            ),
            Self::Timestamp(temporal) => named("int64", optional, temporal.name),
            Self::ZonedTimestamp { .. } => {
                named("string", optional, "io.debezium.time.ZonedTimestamp")
            }
            Self::ZonedTime => named("string", optional, "io.debezium.time.ZonedTime"),
            Self::Interval => named("int64", optional, "io.debezium.time.MicroDuration"),
            Self::Binary(BinaryHandlingMode::Bytes) => plain("bytes", optional),
            Self::Binary(_) => plain("string", optional),
            Self::Point => json!({
                "type": "struct",
                "fields": [
                    {"type": "float64", "optional": false, "field": "x"},
                    {"type": "float64", "optional": false, "field": "y"},
                    {"type": "bytes", "optional": true, "field": "wkb"},
                    {"type": "int32", "optional": true, "field": "srid"},
                ],
                "optional": optional,
                "name": "io.debezium.data.geometry.Point",
                "version": 1,
                "doc": "Geometry (POINT)",
            }),
            Self::Array {
                element,
                element_optional,
                ..
            } => json!({
                "type": "array",
                "items": element.schema(*element_optional),
                "optional": optional,
            }),
        }
    }
}

// Keys go in the order JsonConverter writes them, which shows if serde_json preserves order.
fn plain(kind: &str, optional: bool) -> Value {
    json!({"type": kind, "optional": optional})
}

fn named(kind: &str, optional: bool, name: &str) -> Value {
    json!({"type": kind, "optional": optional, "name": name, "version": 1})
}

/// The type's own name in `format_type` output, without schema qualification or quotes.
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name).trim_matches('"')
}

/// Precision and scale of a `numeric` typmod; PostgreSQL 15+ stores the scale as 11 signed bits.
fn numeric_typmod(typmod: i32) -> Option<NumericTypmod> {
    const VARHDRSZ: i32 = 4;
    (typmod >= VARHDRSZ).then(|| {
        let packed = typmod - VARHDRSZ;
        NumericTypmod {
            precision: (packed >> 16) & 0xffff,
            scale: ((packed & 0x7ff) ^ 1024) - 1024,
        }
    })
}

/// Kafka Connect's JSON for a double. JSON has no NaN or infinities; Jackson's default
/// `QUOTE_NON_NUMERIC_NUMBERS` writes them as the strings "NaN", "Infinity" and "-Infinity".
fn double_json(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or_else(
        || {
            Value::String(
                if value.is_nan() {
                    "NaN"
                } else if value > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                }
                .to_owned(),
            )
        },
        Value::Number,
    )
}

/// A `float4` goes through its shortest decimal form, as Java's `Float.toString` does; widening the
/// bits would print 1.1 as 1.100000023841858.
fn float32_json(value: f32) -> Option<Value> {
    if !value.is_finite() {
        return Some(double_json(f64::from(value)));
    }
    Some(double_json(value.to_string().parse().ok()?))
}

/// `numeric`'s special values: PostgreSQL's text, then Debezium's in `double` and `string` modes.
const NUMERIC_SPECIALS: [(&str, &str, &str); 3] = [
    ("NaN", "NaN", "NAN"),
    ("Infinity", "Infinity", "POSITIVE_INFINITY"),
    ("-Infinity", "-Infinity", "NEGATIVE_INFINITY"),
];

fn numeric_value(
    text: &str,
    typmod: Option<NumericTypmod>,
    mode: DecimalHandlingMode,
) -> Option<Value> {
    if let Some((_, double, string)) = NUMERIC_SPECIALS
        .iter()
        .find(|(postgres, _, _)| *postgres == text)
    {
        return Some(match mode {
            // Debezium stops the connector here ("Got a special value (NaN/Infinity) for Decimal
            // type ... set decimal handling mode to 'string'"); a Decimal cannot hold it: null.
            DecimalHandlingMode::Precise => Value::Null,
            DecimalHandlingMode::Double => Value::String((*double).to_owned()),
            DecimalHandlingMode::String => Value::String((*string).to_owned()),
        });
    }
    let decimal = Decimal::parse(text)?;
    Some(match (mode, typmod) {
        (DecimalHandlingMode::Double, _) => double_json(text.parse().ok()?),
        (DecimalHandlingMode::String, Some(typmod)) => {
            Value::String(decimal.with_scale(typmod.scale).java_string())
        }
        (DecimalHandlingMode::String, None) => Value::String(decimal.java_string()),
        (DecimalHandlingMode::Precise, Some(typmod)) => Value::String(base64(
            &decimal.with_scale(typmod.scale).unscaled_bytes(),
            BASE64_STANDARD,
        )),
        (DecimalHandlingMode::Precise, None) => {
            let decimal = decimal.strip_trailing_zeros();
            let unscaled = base64(&decimal.unscaled_bytes(), BASE64_STANDARD);
            json!({"scale": decimal.scale, "value": unscaled})
        }
    })
}

/// Debezium's `money.fraction.digits` default.
const MONEY_FRACTION_DIGITS: i32 = 2;

/// Money text such as "$1,234.56", "-$1.00" or "($1.00)"; like Debezium's `PostgresMoney`, the sign
/// comes from a leading '-' or '(' and everything but digits and the point is dropped.
fn money_value(text: &str, mode: DecimalHandlingMode) -> Option<Value> {
    let negative = text.starts_with('-') || text.starts_with('(');
    let magnitude: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let decimal = Decimal::from_parts(negative, &magnitude)?;
    Some(match mode {
        DecimalHandlingMode::Precise => Value::String(base64(
            &decimal.with_scale(MONEY_FRACTION_DIGITS).unscaled_bytes(),
            BASE64_STANDARD,
        )),
        DecimalHandlingMode::Double => double_json(decimal.plain_string().parse().ok()?),
        DecimalHandlingMode::String => Value::String(decimal.plain_string()),
    })
}

/// An exact decimal as Java's `BigDecimal` holds it: sign, unscaled digits and scale. The unscaled
/// value is kept in decimal digits: `numeric` reaches 131072 digits, beyond any machine integer.
#[derive(Debug)]
struct Decimal {
    negative: bool,
    /// ASCII digits without leading zeros; "0" for zero.
    unscaled: String,
    scale: i32,
}

impl Decimal {
    /// PostgreSQL's `numeric` output: optional '-', digits, optional fraction; never an exponent.
    fn parse(text: &str) -> Option<Self> {
        match text.strip_prefix('-') {
            Some(magnitude) => Self::from_parts(true, magnitude),
            None => Self::from_parts(false, text),
        }
    }

    fn from_parts(negative: bool, magnitude: &str) -> Option<Self> {
        let (whole, fraction) = magnitude.split_once('.').unwrap_or((magnitude, ""));
        let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.len() + fraction.len() == 0 || !digits_only(whole) || !digits_only(fraction) {
            return None;
        }
        Some(Self::new(
            negative,
            &format!("{whole}{fraction}"),
            i32::try_from(fraction.len()).ok()?,
        ))
    }

    fn new(negative: bool, digits: &str, scale: i32) -> Self {
        let unscaled = match digits.trim_start_matches('0') {
            "" => "0",
            significant => significant,
        };
        Self {
            negative: negative && unscaled != "0",
            unscaled: unscaled.to_owned(),
            scale,
        }
    }

    /// `BigDecimal.setScale(scale, RoundingMode.HALF_UP)`.
    fn with_scale(&self, scale: i32) -> Self {
        let places = scale.abs_diff(self.scale) as usize;
        if scale >= self.scale {
            let unscaled = format!("{}{}", self.unscaled, "0".repeat(places));
            return Self::new(self.negative, &unscaled, scale);
        }
        let dropped = places;
        // Left-pad so that at least one digit is kept and the first dropped digit exists.
        let padding = (dropped + 1).saturating_sub(self.unscaled.len());
        let padded = format!("{}{}", "0".repeat(padding), self.unscaled);
        let (kept, removed) = padded.split_at(padded.len() - dropped);
        let round_up = removed.starts_with(['5', '6', '7', '8', '9']);
        let kept = if round_up {
            increment(kept)
        } else {
            kept.to_owned()
        };
        Self::new(self.negative, &kept, scale)
    }

    /// `BigDecimal.stripTrailingZeros()`, then Debezium's `setScale(0)` if the scale went negative.
    fn strip_trailing_zeros(&self) -> Self {
        let mut unscaled = self.unscaled.as_str();
        let mut scale = self.scale;
        while scale > 0 && unscaled.len() > 1 && unscaled.ends_with('0') {
            unscaled = &unscaled[..unscaled.len() - 1];
            scale -= 1;
        }
        if unscaled == "0" {
            scale = 0;
        }
        Self::new(self.negative, unscaled, scale)
    }

    /// `BigInteger.toByteArray()` of the unscaled value: minimal big-endian two's complement.
    fn unscaled_bytes(&self) -> Vec<u8> {
        let mut bytes = magnitude_bytes(&self.unscaled);
        if bytes.is_empty() {
            return vec![0];
        }
        if self.negative {
            // Negate: invert and add one; the carry stops at the lowest set byte of the magnitude.
            let mut carry = true;
            for byte in bytes.iter_mut().rev() {
                let (sum, overflow) = (!*byte).overflowing_add(u8::from(carry));
                *byte = sum;
                carry = overflow;
            }
            if bytes.first().is_some_and(|top| top & 0x80 == 0) {
                bytes.insert(0, 0xff);
            }
        } else if bytes.first().is_some_and(|top| top & 0x80 != 0) {
            bytes.insert(0, 0);
        }
        bytes
    }

    /// `BigDecimal.toString()`: plain unless the scale is negative or the number is below 1e-6,
    /// in which case Java switches to scientific notation ("1E-7", "0E-8").
    fn java_string(&self) -> String {
        let sign = if self.negative { "-" } else { "" };
        let digits = self.unscaled.len() as i64;
        let adjusted = digits - 1 - i64::from(self.scale);
        if self.scale >= 0 && adjusted >= -6 {
            return self.plain_string();
        }
        let (first, rest) = self.unscaled.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let exponent_sign = if adjusted > 0 { "+" } else { "" };
        format!("{sign}{first}{point}{rest}E{exponent_sign}{adjusted}")
    }

    /// `BigDecimal.toPlainString()`.
    fn plain_string(&self) -> String {
        let sign = if self.negative { "-" } else { "" };
        let Ok(scale) = usize::try_from(self.scale) else {
            let zeros = "0".repeat(self.scale.unsigned_abs() as usize);
            return format!("{sign}{}{zeros}", self.unscaled);
        };
        if scale == 0 {
            return format!("{sign}{}", self.unscaled);
        }
        if self.unscaled.len() <= scale {
            return format!(
                "{sign}0.{}{}",
                "0".repeat(scale - self.unscaled.len()),
                self.unscaled
            );
        }
        let (whole, fraction) = self.unscaled.split_at(self.unscaled.len() - scale);
        format!("{sign}{whole}.{fraction}")
    }
}

/// Adds one to a string of decimal digits.
fn increment(digits: &str) -> String {
    let mut bytes = digits.as_bytes().to_vec();
    for byte in bytes.iter_mut().rev() {
        if *byte == b'9' {
            *byte = b'0';
        } else {
            *byte += 1;
            return bytes.into_iter().map(char::from).collect();
        }
    }
    std::iter::once('1')
        .chain(bytes.into_iter().map(char::from))
        .collect()
}

/// Big-endian bytes of a non-negative decimal digit string, without leading zero bytes.
fn magnitude_bytes(digits: &str) -> Vec<u8> {
    // Little-endian base-2^64 limbs, fed 19 decimal digits (< 2^64) at a time.
    let mut limbs: Vec<u64> = Vec::new();
    for chunk in digits.as_bytes().chunks(19) {
        let multiplier = 10u128.pow(chunk.len() as u32);
        let mut carry = chunk
            .iter()
            .fold(0u128, |acc, digit| acc * 10 + u128::from(digit - b'0'));
        for limb in &mut limbs {
            let product = u128::from(*limb) * multiplier + carry;
            *limb = product as u64;
            carry = product >> 64;
        }
        if carry > 0 {
            limbs.push(carry as u64);
        }
    }
    let bytes: Vec<u8> = limbs
        .iter()
        .rev()
        .flat_map(|limb| limb.to_be_bytes())
        .collect();
    let first_significant = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    bytes[first_significant..].to_vec()
}

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL_SAFE: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Padded base64, as both `java.util.Base64` encoders and JsonConverter (for bytes) write it.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut encoded = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    base64_into(bytes, alphabet, &mut encoded);
    encoded.into_iter().map(char::from).collect()
}

fn base64_into(bytes: &[u8], alphabet: &[u8; 64], out: &mut Vec<u8>) {
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |acc, (i, byte)| {
            acc | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(group >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|byte| {
            [
                DIGITS[usize::from(byte >> 4)],
                DIGITS[usize::from(byte & 0x0f)],
            ]
        })
        .map(char::from)
        .collect()
}

/// `bytea` in hex output format, "\x0a0b"; Debezium supports no other `bytea_output`.
fn bytea(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("\\x")?.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let nibble = |c: u8| char::from(c).to_digit(16);
            Some((nibble(pair[0])? << 4 | nibble(pair[1])?) as u8)
        })
        .collect()
}

fn encode_binary(bytes: &[u8], mode: BinaryHandlingMode) -> String {
    match mode {
        // Connect bytes are written by JsonConverter as standard base64.
        BinaryHandlingMode::Bytes | BinaryHandlingMode::Base64 => base64(bytes, BASE64_STANDARD),
        BinaryHandlingMode::Base64UrlSafe => base64(bytes, BASE64_URL_SAFE),
        BinaryHandlingMode::Hex => hex(bytes),
    }
}

/// A bit string as `java.util.BitSet.toByteArray()` holds it: the last character is bit 0,
/// little-endian bytes, high zero bytes dropped.
fn bits_little_endian(text: &str) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; text.len().div_ceil(8)];
    for (index, bit) in text.bytes().rev().enumerate() {
        match bit {
            b'1' => bytes[index / 8] |= 1 << (index % 8),
            b'0' => {}
            _ => return None,
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Some(bytes)
}

/// `point` as `io.debezium.data.geometry.Point`: coordinates, a little-endian WKB point, no SRID.
fn point_value(text: &str) -> Option<Value> {
    let (x, y) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    let (x, y): (f64, f64) = (x.trim().parse().ok()?, y.trim().parse().ok()?);
    const WKB_LITTLE_ENDIAN: u8 = 1;
    const WKB_POINT: u32 = 1;
    let mut wkb = vec![WKB_LITTLE_ENDIAN];
    wkb.extend(WKB_POINT.to_le_bytes());
    wkb.extend(x.to_le_bytes());
    wkb.extend(y.to_le_bytes());
    let wkb = base64(&wkb, BASE64_STANDARD);
    Some(json!({"x": double_json(x), "y": double_json(y), "wkb": wkb, "srid": null}))
}

/// hstore as Debezium's default `json` mode writes it: a JSON object in a string, keys in the order
/// of the `java.util.HashMap` pgjdbc parses into, NULL values as null.
fn hstore_json(text: &str) -> Option<String> {
    let entries = hstore_entries(text)?;
    let members: Vec<String> = java_hash_map_order(&entries)
        .into_iter()
        .map(|index| {
            let (key, value) = &entries[index];
            let value = value.clone().map_or(Value::Null, Value::String);
            format!("{}:{value}", Value::String(key.clone()))
        })
        .collect();
    Some(format!("{{{}}}", members.join(",")))
}

/// hstore text output: `"key"=>"value", "other"=>NULL`.
fn hstore_entries(text: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut chars = text.chars().peekable();
    let mut entries = Vec::new();
    loop {
        skip_whitespace(&mut chars);
        match chars.next() {
            None => return Some(entries),
            Some('"') => {}
            Some(_) => return None,
        }
        let key = quoted(&mut chars)?;
        skip_whitespace(&mut chars);
        if (chars.next(), chars.next()) != (Some('='), Some('>')) {
            return None;
        }
        skip_whitespace(&mut chars);
        let value = match chars.next()? {
            '"' => Some(quoted(&mut chars)?),
            'N' if chars.by_ref().take(3).eq("ULL".chars()) => None,
            _ => return None,
        };
        entries.push((key, value));
        skip_whitespace(&mut chars);
        match chars.next() {
            None => return Some(entries),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Indices of `entries` in the order a `java.util.HashMap` filled in that order iterates them:
/// by bucket of the spread `String.hashCode`, insertion order within a bucket. Bins that Java would
/// turn into trees (8+ colliding keys in a 64+ table) are not modelled.
fn java_hash_map_order<T>(entries: &[(String, T)]) -> Vec<usize> {
    let mut capacity = 16;
    while entries.len() * 4 > capacity * 3 {
        capacity *= 2;
    }
    let bucket = |key: &str| {
        let hash = key.encode_utf16().fold(0i32, |hash, unit| {
            hash.wrapping_mul(31).wrapping_add(i32::from(unit))
        });
        let spread = (hash as u32) ^ ((hash as u32) >> 16);
        spread as usize & (capacity - 1)
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&index| bucket(&entries[index].0));
    order
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_whitespace(chars: &mut Chars) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// The rest of a double-quoted string whose opening quote was consumed; a backslash escapes the
/// next character.
fn quoted(chars: &mut Chars) -> Option<String> {
    let mut text = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(text),
            '\\' => text.push(chars.next()?),
            c => text.push(c),
        }
    }
}

/// Elements of PostgreSQL's array text output in storage order, NULL as `None`. Multidimensional
/// arrays are flattened: the Connect schema of an array column is one-dimensional (the catalog does
/// not record dimensions) and Debezium has no working support for more.
fn array_elements(text: &str, delimiter: char) -> Option<Vec<Option<String>>> {
    // Non-default lower bounds come first, as in "[0:1]={5,6}".
    let body = if text.starts_with('[') {
        text.split_once('=')?.1
    } else {
        text
    };
    if !body.starts_with('{') {
        return None;
    }
    let mut chars = body.chars().peekable();
    let mut elements = Vec::new();
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    break;
                }
            }
            c if c == delimiter || c.is_whitespace() => {}
            '"' => elements.push(Some(quoted(&mut chars)?)),
            first => {
                let mut element = String::new();
                let mut next = Some(first);
                while let Some(c) = next {
                    element.push(if c == '\\' { chars.next()? } else { c });
                    next = chars.next_if(|&c| c != delimiter && c != '}');
                }
                let element = element.trim_end();
                elements.push((!element.eq_ignore_ascii_case("NULL")).then(|| element.to_owned()));
            }
        }
    }
    (depth == 0 && chars.next().is_none()).then_some(elements)
}

/// A string of ASCII digits as a number; unlike `str::parse`, rejects a leading sign.
fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar, where year 0 is 1 BC, as both
/// PostgreSQL and `java.time` count them.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A DateStyle ISO date ("2016-11-04", "0044-03-15" with `bc`, years past 9999) as days since
/// the epoch.
fn civil_days(text: &str, bc: bool) -> Option<i64> {
    let (year, rest) = text.split_once('-')?;
    let (month, day) = rest.split_once('-')?;
    let (year, month, day): (i64, i64, i64) = (digits(year)?, digits(month)?, digits(day)?);
    // PostgreSQL's dates end in 5874897 AD; the bound keeps the day arithmetic in range.
    if !(1..=10_000_000).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(
        if bc { 1 - year } else { year },
        month,
        day,
    ))
}

/// Separates PostgreSQL's " BC" suffix of dates and timestamps.
fn split_era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

fn epoch_days(text: &str) -> Option<i32> {
    match text {
        "infinity" => Some(DATE_POSITIVE_INFINITY),
        "-infinity" => Some(DATE_NEGATIVE_INFINITY),
        _ => {
            let (date, bc) = split_era(text);
            i32::try_from(civil_days(date, bc)?).ok()
        }
    }
}

/// "HH:MM:SS[.ffffff]" (hour 24 allowed, as PostgreSQL does) as microseconds.
fn clock_micros(text: &str) -> Option<i64> {
    let (clock, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = clock.split(':');
    let (hours, minutes, seconds): (i64, i64, i64) = (
        digits(parts.next()?)?,
        digits(parts.next()?)?,
        digits(parts.next()?)?,
    );
    if parts.next().is_some() || hours > 24 || minutes > 59 || seconds > 59 || fraction.len() > 6 {
        return None;
    }
    let fraction = if fraction.is_empty() {
        0
    } else {
        digits::<i64>(&format!("{fraction:0<6}"))?
    };
    Some(((hours * 60 + minutes) * 60 + seconds) * MICROS_PER_SECOND + fraction)
}

/// A timestamp's date as days since the epoch, and the rest of the text (clock, and zone if any).
fn split_timestamp(text: &str) -> Option<(i64, &str)> {
    let (body, bc) = split_era(text);
    let (date, rest) = body.split_once(' ')?;
    Some((civil_days(date, bc)?, rest))
}

fn local_timestamp_micros(days: i64, clock: &str) -> Option<i64> {
    days.checked_mul(MICROS_PER_DAY)?
        .checked_add(clock_micros(clock)?)
}

fn timestamp_value(text: &str, millis: bool) -> Option<i64> {
    let micros = match text {
        "infinity" => TIMESTAMP_POSITIVE_INFINITY,
        "-infinity" => TIMESTAMP_NEGATIVE_INFINITY,
        _ => {
            let (days, clock) = split_timestamp(text)?;
            local_timestamp_micros(days, clock)?
        }
    };
    // Instant.toEpochMilli floors.
    Some(if millis {
        micros.div_euclid(1000)
    } else {
        micros
    })
}

/// Splits "10:00:00.5+05:30" into clock and UTC offset in seconds; offsets are ±HH, ±HH:MM or
/// ±HH:MM:SS.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.find(['+', '-'])?;
    let (clock, offset) = text.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':');
    let mut seconds = 0;
    for unit in [3600, 60, 1] {
        if let Some(part) = parts.next() {
            seconds += i64::from(digits::<u8>(part)?) * unit;
        }
    }
    parts.next().is_none().then_some((clock, sign * seconds))
}

fn zoned_timestamp(text: &str, fraction_digits: usize) -> Option<String> {
    if text == "infinity" || text == "-infinity" {
        // Debezium passes PostgreSQL's infinities through as text.
        return Some(text.to_owned());
    }
    let (days, rest) = split_timestamp(text)?;
    let (clock, offset) = split_offset(rest)?;
    let utc = local_timestamp_micros(days, clock)?.checked_sub(offset * MICROS_PER_SECOND)?;
    let (year, month, day) = civil_from_days(utc.div_euclid(MICROS_PER_DAY));
    Some(format!(
        "{}-{month:02}-{day:02}T{}Z",
        iso_year(year),
        iso_clock(utc.rem_euclid(MICROS_PER_DAY), fraction_digits)
    ))
}

/// `java.time`'s ISO year: four digits at least, '+' beyond 9999, '-' before year 0 (1 BC).
fn iso_year(year: i64) -> String {
    match year {
        10_000.. => format!("+{year}"),
        0.. => format!("{year:04}"),
        _ => format!("-{:04}", -year),
    }
}

/// "HH:MM:SS" and the fraction: exactly `fraction_digits` digits, or with 0 as many as needed
/// (none for a whole second), as Java's `ISO_LOCAL_TIME` prints it.
fn iso_clock(micros: i64, fraction_digits: usize) -> String {
    let seconds = micros / MICROS_PER_SECOND;
    let fraction = format!("{:06}", micros % MICROS_PER_SECOND);
    let fraction = match fraction_digits {
        0 => fraction.trim_end_matches('0'),
        width => &fraction[..width.min(6)],
    };
    let point = if fraction.is_empty() { "" } else { "." };
    format!(
        "{:02}:{:02}:{:02}{point}{fraction}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `timetz` shifted to UTC and printed as Java's `ISO_OFFSET_TIME`, "08:00:00Z".
fn zoned_time(text: &str) -> Option<String> {
    let (clock, offset) = split_offset(text)?;
    let local = clock_micros(clock)?;
    if local == MICROS_PER_DAY && offset == 0 {
        // Debezium keeps PostgreSQL's end-of-day boundary rather than wrapping it to midnight.
        return Some("24:00:00Z".to_owned());
    }
    let utc = (local - offset * MICROS_PER_SECOND).rem_euclid(MICROS_PER_DAY);
    Some(format!("{}Z", iso_clock(utc, 0)))
}

/// An interval in IntervalStyle `postgres` ("1 year 2 mons -3 days +04:05:06.5") as
/// `io.debezium.time.MicroDuration`: fields read as pgjdbc's `PGInterval` reads them, then
/// Debezium's `durationMicros` approximation with 365.25 / 12 days a month, computed in the same
/// double arithmetic and truncated as Java's `(long)` cast does.
fn interval_micros(text: &str) -> Option<i64> {
    if text == "infinity" || text == "-infinity" {
        // PostgreSQL 17's infinite intervals: PGInterval reads no fields from them, so Debezium
        // emits 0.
        return Some(0);
    }
    let (mut years, mut months, mut days, mut hours, mut minutes) = (0i64, 0i64, 0i64, 0i64, 0i64);
    let mut seconds = 0f64;
    let mut quantity: Option<&str> = None;
    // PGInterval reads '+' as a separator.
    for token in text
        .split(|c: char| c.is_whitespace() || c == '+')
        .filter(|token| !token.is_empty())
    {
        if let Some(quantity) = quantity.take() {
            match token {
                unit if unit.starts_with("year") => years = quantity.parse().ok()?,
                unit if unit.starts_with("mon") => months = quantity.parse().ok()?,
                unit if unit.starts_with("day") => days = quantity.parse().ok()?,
                unit if unit.starts_with("hour") => hours = quantity.parse().ok()?,
                unit if unit.starts_with("min") => minutes = quantity.parse().ok()?,
                unit if unit.starts_with("sec") => seconds = quantity.parse().ok()?,
                _ => return None,
            }
        } else if token.contains(':') {
            (hours, minutes, seconds) = interval_clock(token)?;
        } else {
            quantity = Some(token);
        }
    }
    if quantity.is_some() {
        return None;
    }
    // PGInterval keeps whole seconds and microseconds, rounded with Math.round.
    let total = java_round(seconds * 1e6);
    let seconds = (total / MICROS_PER_SECOND) as f64 + (total % MICROS_PER_SECOND) as f64 / 1e6;
    let months = years.checked_mul(12)?.checked_add(months)?;
    let days = months as f64 * (365.25 / 12.0) + days as f64;
    let seconds = ((days * 24.0 + hours as f64) * 60.0 + minutes as f64) * 60.0 + seconds;
    Some((seconds * 1e6) as i64)
}

/// The "[-]HH:MM:SS[.ffffff]" part of an interval; a leading '-' negates all three fields.
fn interval_clock(token: &str) -> Option<(i64, i64, f64)> {
    let (negative, clock) = match token.strip_prefix('-') {
        Some(clock) => (true, clock),
        None => (false, token),
    };
    let mut parts = clock.splitn(3, ':');
    let hours: i64 = digits(parts.next()?)?;
    let minutes: i64 = digits(parts.next()?)?;
    let seconds: f64 = match parts.next() {
        Some(seconds) => seconds.parse().ok()?,
        None => 0.0,
    };
    Some(if negative {
        (-hours, -minutes, -seconds)
    } else {
        (hours, minutes, seconds)
    })
}

/// Java's `Math.round`: nearest integer, halves toward positive infinity.
fn java_round(value: f64) -> i64 {
    let floor = value.floor();
    (if value - floor >= 0.5 {
        floor + 1.0
    } else {
        floor
    }) as i64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ty(oid: u32, typmod: i32, name: &str, category: char) -> ColumnType {
        ColumnType {
            oid,
            typmod,
            name: name.to_owned(),
            category,
            element: None,
        }
    }

    fn array_of(element: ColumnType, typmod: i32) -> ColumnType {
        ColumnType {
            oid: 0,
            typmod,
            name: format!("{}[]", element.name),
            category: 'A',
            element: Some(Box::new(element)),
        }
    }

    fn with_decimal(decimal: DecimalHandlingMode) -> TypeOptions {
        TypeOptions {
            decimal,
            ..TypeOptions::default()
        }
    }

    fn with_time(time_precision: TimePrecisionMode) -> TypeOptions {
        TypeOptions {
            time_precision,
            ..TypeOptions::default()
        }
    }

    fn with_binary(binary: BinaryHandlingMode) -> TypeOptions {
        TypeOptions {
            binary,
            ..TypeOptions::default()
        }
    }

    /// Converts with Debezium's default options.
    fn v(ty: &ColumnType, text: &str) -> Value {
        value(ty, text, &TypeOptions::default())
    }

    /// `numeric(precision, scale)`'s typmod.
    fn numeric(precision: i32, scale: i32) -> ColumnType {
        ty(
            NUMERIC,
            ((precision << 16) | (scale & 0x7ff)) + 4,
            "numeric",
            'N',
        )
    }

    #[test]
    fn options_default_to_debeziums_and_read_its_spellings() {
        let defaults = TypeOptions::default();
        assert_eq!(defaults.decimal, DecimalHandlingMode::Precise);
        assert_eq!(defaults.time_precision, TimePrecisionMode::Adaptive);
        assert_eq!(defaults.binary, BinaryHandlingMode::Bytes);
        let binary = |s: &str| serde_json::from_value::<BinaryHandlingMode>(json!(s)).unwrap();
        assert_eq!(binary("base64_url_safe"), BinaryHandlingMode::Base64UrlSafe);
        assert_eq!(binary("base64-url-safe"), BinaryHandlingMode::Base64UrlSafe);
        assert_eq!(
            serde_json::from_value::<TimePrecisionMode>(json!("adaptive_time_microseconds"))
                .unwrap(),
            TimePrecisionMode::AdaptiveTimeMicroseconds
        );
        assert_eq!(
            serde_json::from_value::<DecimalHandlingMode>(json!("string")).unwrap(),
            DecimalHandlingMode::String
        );
    }

    #[test]
    fn booleans() {
        let bool_ty = ty(BOOL, -1, "boolean", 'B');
        assert_eq!(v(&bool_ty, "t"), json!(true));
        assert_eq!(v(&bool_ty, "f"), json!(false));
        assert_eq!(
            schema(&bool_ty, "b", true, &TypeOptions::default()),
            json!({"type": "boolean", "optional": true, "field": "b"})
        );
    }

    #[test]
    fn bits() {
        // bit(1) is a boolean; longer bit strings are io.debezium.data.Bits, little-endian and sized
        // to their highest set bit (Debezium's AbstractRecordsProducerTest bs/bs7/bv/bv2 columns).
        let bit1 = ty(BIT, 1, "bit(1)", 'V');
        assert_eq!(v(&bit1, "1"), json!(true));
        assert_eq!(
            schema(&bit1, "b", false, &TypeOptions::default()),
            json!({"type": "boolean", "optional": false, "field": "b"})
        );
        let bit7 = ty(BIT, 7, "bit(7)", 'V');
        assert_eq!(v(&bit7, "1000000"), json!("QA==")); // [64]
        assert_eq!(v(&bit7, "0000000"), json!("")); // []
        let varbit24 = ty(VARBIT, 24, "bit varying(24)", 'V');
        assert_eq!(v(&varbit24, "000000110000001000000001"), json!("AQID")); // [1, 2, 3]
        assert_eq!(
            schema(&bit7, "bs7", true, &TypeOptions::default()),
            json!({"type": "bytes", "optional": true, "name": "io.debezium.data.Bits", "version": 1,
                   "parameters": {"length": "7"}, "field": "bs7"})
        );
        let unbounded = ty(VARBIT, -1, "bit varying", 'V');
        assert_eq!(
            schema(&unbounded, "bv", true, &TypeOptions::default())["parameters"]["length"],
            json!("2147483647")
        );
        assert_eq!(
            v(&unbounded, "12"),
            json!("12"),
            "not a bit string: passed through"
        );
    }

    #[test]
    fn integers() {
        let int2 = ty(INT2, -1, "smallint", 'N');
        let int4 = ty(INT4, -1, "integer", 'N');
        let int8 = ty(INT8, -1, "bigint", 'N');
        let oid = ty(OID, -1, "oid", 'N');
        assert_eq!(v(&int2, "-32768"), json!(-32768));
        assert_eq!(v(&int4, "2147483647"), json!(2147483647));
        assert_eq!(v(&int8, "-9223372036854775808"), json!(i64::MIN));
        assert_eq!(v(&oid, "4294967295"), json!(4294967295u32));
        let defaults = TypeOptions::default();
        assert_eq!(
            schema(&int2, "a", false, &defaults),
            json!({"type": "int16", "optional": false, "field": "a"})
        );
        assert_eq!(
            schema(&int4, "a", false, &defaults),
            json!({"type": "int32", "optional": false, "field": "a"})
        );
        assert_eq!(
            schema(&int8, "a", false, &defaults),
            json!({"type": "int64", "optional": false, "field": "a"})
        );
        assert_eq!(
            schema(&oid, "a", false, &defaults),
            json!({"type": "int64", "optional": false, "field": "a"})
        );
        assert_eq!(
            v(&int2, "40000"),
            json!("40000"),
            "out of range: passed through"
        );
    }

    #[test]
    fn floats() {
        let float4 = ty(FLOAT4, -1, "real", 'N');
        let float8 = ty(FLOAT8, -1, "double precision", 'N');
        assert_eq!(v(&float4, "1.1").to_string(), "1.1");
        assert_eq!(v(&float4, "3.4028235e+38"), json!(3.4028235e38));
        assert_eq!(v(&float8, "1.1"), json!(1.1));
        assert_eq!(v(&float8, "1e+300"), json!(1e300));
        // Jackson's default QUOTE_NON_NUMERIC_NUMBERS writes non-finite doubles as strings.
        assert_eq!(v(&float4, "NaN"), json!("NaN"));
        assert_eq!(v(&float8, "Infinity"), json!("Infinity"));
        assert_eq!(v(&float8, "-Infinity"), json!("-Infinity"));
        let defaults = TypeOptions::default();
        assert_eq!(
            schema(&float4, "r", true, &defaults),
            json!({"type": "float32", "optional": true, "field": "r"})
        );
        assert_eq!(
            schema(&float8, "d", true, &defaults),
            json!({"type": "float64", "optional": true, "field": "d"})
        );
    }

    #[test]
    fn written_json_is_the_json_of_the_value() {
        let types = [
            ty(BOOL, -1, "boolean", 'B'),
            ty(INT2, -1, "smallint", 'N'),
            ty(INT4, -1, "integer", 'N'),
            ty(INT8, -1, "bigint", 'N'),
            ty(25, -1, "text", 'S'),
            ty(DATE, -1, "date", 'D'),
            numeric(10, 2),
            numeric(38, 0),
            numeric(38, 4),
            ty(NUMERIC, -1, "numeric", 'N'),
        ];
        let texts = [
            "t",
            "f",
            "x",
            "0",
            "-0",
            "1",
            "127",
            "128",
            "-128",
            "-129",
            "32768",
            "-2147483649",
            "9223372036854775807",
            "1.5",
            "-0.00",
            "12345678.99",
            "-12345678.99",
            "0.005",
            "1e5",
            "99999999999999999999999999999999999999",
            "-99999999999999999999999999999999999999",
            "999999999999999999999999999999999999999",
            "1234567890123456789012345678901234.5678",
            "NaN",
            "Infinity",
            "",
            "-",
            ".",
            "2019-12-09",
            "infinity",
            "-infinity",
            "0044-03-15 BC",
            "quote \" backslash \\ tab \t ü \u{1}",
        ];
        for opts in [
            TypeOptions::default(),
            with_decimal(DecimalHandlingMode::Double),
            with_decimal(DecimalHandlingMode::String),
        ] {
            for ty in &types {
                let converter = Converter::new(ty, &opts);
                for text in texts {
                    let mut written = Vec::new();
                    converter.write_json(text, &mut written);
                    let expected = serde_json::to_vec(&value(ty, text, &opts)).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&written),
                        String::from_utf8_lossy(&expected),
                        "{} {text:?}",
                        ty.name
                    );
                }
            }
        }
    }

    #[test]
    fn numeric_precise_with_scale_is_a_connect_decimal() {
        let money_like = numeric(10, 2);
        assert_eq!(v(&money_like, "21.47"), json!("CGM=")); // unscaled 2147 = 0x0863
        assert_eq!(v(&money_like, "21.5"), json!("CGY=")); // padded to 2150
        assert_eq!(v(&money_like, "0.00"), json!("AA=="));
        assert_eq!(
            schema(&money_like, "price", false, &TypeOptions::default()),
            json!({"type": "bytes", "optional": false, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                   "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "price"})
        );
        // Two's complement, minimal length, as BigInteger.toByteArray writes it.
        let integer = numeric(10, 0);
        assert_eq!(v(&integer, "-1"), json!("/w=="));
        assert_eq!(v(&integer, "127"), json!("fw=="));
        assert_eq!(v(&integer, "128"), json!("AIA="));
        assert_eq!(v(&integer, "-128"), json!("gA=="));
        assert_eq!(v(&integer, "-129"), json!("/38="));
        assert_eq!(v(&integer, "-256"), json!("/wA="));
        // PostgreSQL 15 negative scale: numeric(5,-2) holds 12300 as unscaled 123.
        let hundreds = numeric(5, -2);
        assert_eq!(v(&hundreds, "12300"), json!("ew=="));
        assert_eq!(
            schema(&hundreds, "n", true, &TypeOptions::default())["parameters"]["scale"],
            json!("-2")
        );
    }

    #[test]
    fn numeric_precise_handles_values_beyond_machine_integers() {
        let wide = numeric(1000, 0);
        assert_eq!(
            v(&wide, "340282366920938463463374607431768211456"),
            json!("AQAAAAAAAAAAAAAAAAAAAAA=")
        ); // 2^128
        assert_eq!(
            v(&wide, "-340282366920938463463374607431768211456"),
            json!("/wAAAAAAAAAAAAAAAAAAAAA=")
        );
        // 2^3200 (964 digits) and neighbours, with the decimal text built independently by doubling.
        let mut power = vec![1u8]; // little-endian decimal digits
        for _ in 0..3200 {
            let mut carry = 0;
            for digit in &mut power {
                let doubled = *digit * 2 + carry;
                *digit = doubled % 10;
                carry = doubled / 10;
            }
            if carry > 0 {
                power.push(carry);
            }
        }
        let text: String = power.iter().rev().map(|d| char::from(b'0' + d)).collect();
        let mut just_below = text.clone().into_bytes();
        *just_below.last_mut().unwrap() -= 1; // 2^3200 ends in 6
        let just_below = String::from_utf8(just_below).unwrap();
        let zeros = [0u8; 400];
        let expected =
            |head: u8, tail: &[u8]| base64(&[&[head][..], tail].concat(), BASE64_STANDARD);
        assert_eq!(v(&wide, &text), json!(expected(0x01, &zeros)));
        assert_eq!(v(&wide, &format!("-{text}")), json!(expected(0xff, &zeros)));
        assert_eq!(v(&wide, &just_below), json!(expected(0x00, &[0xff; 400])));
    }

    #[test]
    fn numeric_without_scale_is_a_variable_scale_decimal() {
        let unconstrained = ty(NUMERIC, -1, "numeric", 'N');
        // Trailing zeros are stripped, never below scale 0 (PostgresValueConverter.convertDecimal).
        assert_eq!(
            v(&unconstrained, "1.10"),
            json!({"scale": 1, "value": "Cw=="})
        );
        assert_eq!(
            v(&unconstrained, "100"),
            json!({"scale": 0, "value": "ZA=="})
        );
        assert_eq!(
            v(&unconstrained, "0.000"),
            json!({"scale": 0, "value": "AA=="})
        );
        assert_eq!(
            v(&unconstrained, "-0.5"),
            json!({"scale": 1, "value": "+w=="})
        );
        assert_eq!(
            schema(&unconstrained, "n", true, &TypeOptions::default()),
            json!({"type": "struct", "fields": [
                       {"type": "int32", "optional": false, "field": "scale"},
                       {"type": "bytes", "optional": false, "field": "value"}],
                   "optional": true, "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
                   "doc": "Variable scaled decimal", "field": "n"})
        );
    }

    #[test]
    fn numeric_special_values() {
        let fixed = numeric(10, 2);
        let unconstrained = ty(NUMERIC, -1, "numeric", 'N');
        // Debezium fails on NaN in precise mode; null is the closest this can say.
        assert_eq!(v(&fixed, "NaN"), Value::Null);
        assert_eq!(v(&unconstrained, "NaN"), Value::Null);
        let double = with_decimal(DecimalHandlingMode::Double);
        assert_eq!(value(&fixed, "NaN", &double), json!("NaN"));
        assert_eq!(value(&fixed, "-Infinity", &double), json!("-Infinity"));
        // Docs: "the connector encodes NaN as either Double.NaN or the string constant NAN".
        let string = with_decimal(DecimalHandlingMode::String);
        assert_eq!(value(&fixed, "NaN", &string), json!("NAN"));
        assert_eq!(
            value(&unconstrained, "Infinity", &string),
            json!("POSITIVE_INFINITY")
        );
    }

    #[test]
    fn numeric_double_and_string_modes() {
        let fixed = numeric(10, 2);
        let unconstrained = ty(NUMERIC, -1, "numeric", 'N');
        let double = with_decimal(DecimalHandlingMode::Double);
        assert_eq!(value(&fixed, "21.47", &double), json!(21.47));
        assert_eq!(value(&unconstrained, "-3", &double), json!(-3.0));
        assert_eq!(
            schema(&fixed, "n", false, &double),
            json!({"type": "float64", "optional": false, "field": "n"})
        );
        assert_eq!(
            schema(&unconstrained, "n", false, &double),
            json!({"type": "float64", "optional": false, "field": "n"})
        );
        // BigDecimal.toString at the column's scale, including Java's scientific notation below 1e-6.
        let string = with_decimal(DecimalHandlingMode::String);
        assert_eq!(value(&fixed, "21.5", &string), json!("21.50"));
        assert_eq!(value(&fixed, "-0.05", &string), json!("-0.05"));
        assert_eq!(
            value(&unconstrained, "123456789012345678901234567890.5", &string),
            json!("123456789012345678901234567890.5")
        );
        assert_eq!(value(&unconstrained, "0.0000001", &string), json!("1E-7"));
        assert_eq!(
            value(&unconstrained, "-0.00000012", &string),
            json!("-1.2E-7")
        );
        assert_eq!(value(&numeric(10, 8), "0.00000000", &string), json!("0E-8"));
        assert_eq!(value(&numeric(5, -2), "12300", &string), json!("1.23E+4"));
        assert_eq!(
            schema(&fixed, "n", true, &string),
            json!({"type": "string", "optional": true, "field": "n"})
        );
        assert_eq!(
            v(&fixed, "1.2.3"),
            json!("1.2.3"),
            "unparseable: passed through"
        );
    }

    #[test]
    fn money() {
        let money = ty(MONEY, -1, "money", 'N');
        // Decimal with money.fraction.digits (2) as scale and no precision parameter.
        assert_eq!(v(&money, "$1,234.11"), json!("AeIT")); // 123411
        assert_eq!(v(&money, "-$1,234.11"), json!("/h3t")); // -123411
        assert_eq!(v(&money, "($5.00)"), json!("/gw=")); // -500
        assert_eq!(
            schema(&money, "csh", true, &TypeOptions::default()),
            json!({"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                   "parameters": {"scale": "2"}, "field": "csh"})
        );
        let double = with_decimal(DecimalHandlingMode::Double);
        assert_eq!(value(&money, "-$1,234.11", &double), json!(-1234.11));
        let string = with_decimal(DecimalHandlingMode::String);
        assert_eq!(value(&money, "$1,234.11", &string), json!("1234.11"));
        assert_eq!(value(&money, "($5.00)", &string), json!("-5.00"));
        assert_eq!(
            schema(&money, "csh", true, &string),
            json!({"type": "string", "optional": true, "field": "csh"})
        );
    }

    #[test]
    fn character_types_are_plain_strings() {
        let defaults = TypeOptions::default();
        for (oid, name) in [
            (25, "text"),
            (1043, "character varying(20)"),
            (1042, "character(5)"),
            (19, "name"),
            (18, "\"char\""),
        ] {
            let text_ty = ty(oid, -1, name, 'S');
            assert_eq!(
                schema(&text_ty, "s", true, &defaults),
                json!({"type": "string", "optional": true, "field": "s"})
            );
        }
        // char(n) keeps PostgreSQL's blank padding.
        assert_eq!(
            v(&ty(1042, 9, "character(5)", 'S'), "ab   "),
            json!("ab   ")
        );
        let citext = ty(16_385, -1, "public.citext", 'S');
        assert_eq!(v(&citext, "MiXeD"), json!("MiXeD"));
        assert_eq!(
            schema(&citext, "s", false, &defaults),
            json!({"type": "string", "optional": false, "field": "s"})
        );
    }

    #[test]
    fn semantic_strings() {
        let defaults = TypeOptions::default();
        let cases = [
            (
                ty(UUID, -1, "uuid", 'U'),
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "io.debezium.data.Uuid",
            ),
            (
                ty(JSON, -1, "json", 'U'),
                r#"{"a": [1, 2]}"#,
                "io.debezium.data.Json",
            ),
            (
                ty(JSONB, -1, "jsonb", 'U'),
                r#"{"a": [1, 2]}"#,
                "io.debezium.data.Json",
            ),
            (ty(XML, -1, "xml", 'U'), "<a>1</a>", "io.debezium.data.Xml"),
            (
                ty(TSVECTOR, -1, "tsvector", 'U'),
                "'cat':1 'fat':2",
                "io.debezium.data.Tsvector",
            ),
            (
                ty(16_400, -1, "ltree", 'U'),
                "Top.Science",
                "io.debezium.data.Ltree",
            ),
            // Debezium's schema would add "parameters": {"allowed": "happy,sad"}; the labels are not in ColumnType.
            (
                ty(16_410, -1, "mood", 'E'),
                "happy",
                "io.debezium.data.Enum",
            ),
        ];
        for (column, text, name) in cases {
            assert_eq!(v(&column, text), json!(text));
            assert_eq!(
                schema(&column, "c", true, &defaults),
                json!({"type": "string", "optional": true, "name": name, "version": 1, "field": "c"})
            );
        }
    }

    #[test]
    fn other_types_pass_through_as_strings() {
        for (oid, name, text) in [
            (869, "inet", "192.168.0.1/24"),
            (650, "cidr", "10.0.0.0/8"),
            (829, "macaddr", "08:00:2b:01:02:03"),
            (3904, "int4range", "[1000,6000)"),
            (3910, "tstzrange", "[\"2019-03-31 15:30:00+00\",infinity)"),
            (3220, "pg_lsn", "16/B374D848"),
            (
                16_420,
                "public.geometry",
                "0101000000000000000000F03F000000000000F03F",
            ),
        ] {
            let column = ty(oid, -1, name, 'U');
            assert_eq!(v(&column, text), json!(text));
            assert_eq!(
                schema(&column, "c", true, &TypeOptions::default()),
                json!({"type": "string", "optional": true, "field": "c"})
            );
        }
    }

    #[test]
    fn hstore_is_a_json_string() {
        let hstore = ty(16_430, -1, "hstore", 'U');
        assert_eq!(
            v(&hstore, r#""a"=>"1", "b"=>NULL"#),
            json!(r#"{"a":"1","b":null}"#)
        );
        // PostgreSQL prints shorter keys first; pgjdbc's HashMap puts "aa" (bucket 0) before "b" (bucket 2).
        assert_eq!(
            v(&hstore, r#""b"=>"2", "aa"=>"1""#),
            json!(r#"{"aa":"1","b":"2"}"#)
        );
        assert_eq!(v(&hstore, r#""k\"q"=>"v\\w""#), json!(r#"{"k\"q":"v\\w"}"#));
        assert_eq!(v(&hstore, ""), json!("{}"));
        assert_eq!(
            schema(&hstore, "h", true, &TypeOptions::default()),
            json!({"type": "string", "optional": true, "name": "io.debezium.data.Json", "version": 1, "field": "h"})
        );
        assert_eq!(
            v(&hstore, r#""a"=>1"#),
            json!(r#""a"=>1"#),
            "malformed: passed through"
        );
    }

    #[test]
    fn dates() {
        let date = ty(DATE, -1, "date", 'D');
        assert_eq!(v(&date, "1970-01-01"), json!(0));
        assert_eq!(v(&date, "1969-12-31"), json!(-1));
        assert_eq!(v(&date, "2016-11-04"), json!(17109));
        assert_eq!(v(&date, "0001-01-01 BC"), json!(-719528)); // year 0 in java.time
        assert_eq!(v(&date, "5874897-12-31"), json!(2145042905));
        assert_eq!(v(&date, "infinity"), json!(-2147472692));
        assert_eq!(v(&date, "-infinity"), json!(-2147472691));
        assert_eq!(
            schema(&date, "date", false, &TypeOptions::default()),
            json!({"type": "int32", "optional": false, "name": "io.debezium.time.Date", "version": 1, "field": "date"})
        );
        let connect = with_time(TimePrecisionMode::Connect);
        assert_eq!(value(&date, "2016-11-04", &connect), json!(17109));
        assert_eq!(
            schema(&date, "date", false, &connect),
            json!({"type": "int32", "optional": false, "name": "org.apache.kafka.connect.data.Date", "version": 1, "field": "date"})
        );
        assert_eq!(
            v(&date, "2016-13-04"),
            json!("2016-13-04"),
            "invalid: passed through"
        );
    }

    #[test]
    fn times() {
        let time = ty(TIME, -1, "time without time zone", 'D');
        let time3 = ty(TIME, 3, "time(3) without time zone", 'D');
        assert_eq!(v(&time, "13:51:30.123456"), json!(49890123456i64));
        assert_eq!(v(&time, "00:00:00"), json!(0));
        assert_eq!(v(&time, "24:00:00"), json!(86400000000i64));
        assert_eq!(v(&time3, "13:51:30.123"), json!(49890123));
        let defaults = TypeOptions::default();
        assert_eq!(
            schema(&time, "t", true, &defaults),
            json!({"type": "int64", "optional": true, "name": "io.debezium.time.MicroTime", "version": 1, "field": "t"})
        );
        assert_eq!(
            schema(&time3, "t", true, &defaults),
            json!({"type": "int32", "optional": true, "name": "io.debezium.time.Time", "version": 1, "field": "t"})
        );
        let micros = with_time(TimePrecisionMode::AdaptiveTimeMicroseconds);
        assert_eq!(
            value(&time3, "13:51:30.123", &micros),
            json!(49890123000i64)
        );
        assert_eq!(
            schema(&time3, "t", true, &micros)["name"],
            json!("io.debezium.time.MicroTime")
        );
        let connect = with_time(TimePrecisionMode::Connect);
        assert_eq!(value(&time, "13:51:30.123456", &connect), json!(49890123));
        assert_eq!(
            schema(&time, "t", true, &connect),
            json!({"type": "int32", "optional": true, "name": "org.apache.kafka.connect.data.Time", "version": 1, "field": "t"})
        );
        assert_eq!(
            v(&time, "13:51"),
            json!("13:51"),
            "unparseable: passed through"
        );
    }

    #[test]
    fn timestamps() {
        let timestamp = ty(TIMESTAMP, -1, "timestamp without time zone", 'D');
        let timestamp3 = ty(TIMESTAMP, 3, "timestamp(3) without time zone", 'D');
        // The documentation's example.
        assert_eq!(
            v(&timestamp, "2018-06-20 15:13:16.945104"),
            json!(1529507596945104i64)
        );
        assert_eq!(
            v(&timestamp, "2016-11-04 13:51:30"),
            json!(1478267490000000i64)
        );
        assert_eq!(
            v(&timestamp, "2016-11-04 13:51:30.5"),
            json!(1478267490500000i64)
        );
        assert_eq!(
            v(&timestamp, "1936-10-25 22:10:12.608"),
            json!(-1047174587392000i64)
        );
        // Debezium's test values for ts_min (streamed), ts_large_us and ts_max.
        assert_eq!(
            v(&timestamp, "4713-12-31 23:59:59.999999 BC"),
            json!(-210831897600000001i64)
        );
        assert_eq!(
            v(&timestamp, "21016-11-04 13:51:30.123457"),
            json!(601060312290123457i64)
        );
        assert_eq!(
            v(&timestamp, "294247-01-01 23:59:59.999999"),
            json!(9223371331199999999i64)
        );
        // Documented: "converted to timestamps with value 9223372036825200000 ... or -9223372036832400000".
        assert_eq!(v(&timestamp, "infinity"), json!(9223372036825200000i64));
        assert_eq!(v(&timestamp, "-infinity"), json!(-9223372036832400000i64));
        assert_eq!(
            v(&timestamp3, "2016-11-04 13:51:30.123"),
            json!(1478267490123i64)
        );
        assert_eq!(v(&timestamp3, "infinity"), json!(9223372036825200i64));
        let defaults = TypeOptions::default();
        assert_eq!(
            schema(&timestamp, "ts", true, &defaults),
            json!({"type": "int64", "optional": true, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "ts"})
        );
        assert_eq!(
            schema(&timestamp3, "ts", true, &defaults),
            json!({"type": "int64", "optional": true, "name": "io.debezium.time.Timestamp", "version": 1, "field": "ts"})
        );
        let micros = with_time(TimePrecisionMode::AdaptiveTimeMicroseconds);
        assert_eq!(
            schema(&timestamp3, "ts", true, &micros)["name"],
            json!("io.debezium.time.Timestamp")
        );
        let connect = with_time(TimePrecisionMode::Connect);
        // Milliseconds, floored as Instant.toEpochMilli does.
        assert_eq!(
            value(&timestamp, "2016-11-04 13:51:30.123456", &connect),
            json!(1478267490123i64)
        );
        assert_eq!(
            value(&timestamp, "1969-12-31 23:59:59.9995", &connect),
            json!(-1)
        );
        assert_eq!(
            schema(&timestamp, "ts", true, &connect),
            json!({"type": "int64", "optional": true, "name": "org.apache.kafka.connect.data.Timestamp", "version": 1, "field": "ts"})
        );
        assert_eq!(
            v(&timestamp, "2016-11-04T13:51:30"),
            json!("2016-11-04T13:51:30"),
            "not DateStyle ISO: passed through"
        );
    }

    #[test]
    fn timestamps_with_time_zone() {
        let tz = ty(TIMESTAMPTZ, -1, "timestamp with time zone", 'D');
        // The fraction is padded to the column's precision, 6 by default (Debezium's tz, tz_zero and
        // timestamptza test values).
        assert_eq!(
            v(&tz, "2016-11-04 13:51:30.123456+02"),
            json!("2016-11-04T11:51:30.123456Z")
        );
        assert_eq!(
            v(&tz, "2019-12-09 10:00:00+02"),
            json!("2019-12-09T08:00:00.000000Z")
        );
        assert_eq!(
            v(&tz, "2019-12-09 10:00:00.5+05:30"),
            json!("2019-12-09T04:30:00.500000Z")
        );
        assert_eq!(
            v(&tz, "2019-12-09 01:00:00-03"),
            json!("2019-12-09T04:00:00.000000Z")
        );
        assert_eq!(
            v(&tz, "1900-01-01 00:00:00+00:53:28"),
            json!("1899-12-31T23:06:32.000000Z")
        );
        assert_eq!(
            v(&tz, "21016-11-04 06:51:30+00"),
            json!("+21016-11-04T06:51:30.000000Z")
        );
        assert_eq!(
            v(&tz, "294247-01-01 23:59:59.999999+00"),
            json!("+294247-01-01T23:59:59.999999Z")
        );
        assert_eq!(
            v(&tz, "4714-12-31 23:59:59.999999+00 BC"),
            json!("-4713-12-31T23:59:59.999999Z")
        );
        assert_eq!(v(&tz, "infinity"), json!("infinity"));
        assert_eq!(v(&tz, "-infinity"), json!("-infinity"));
        let tz3 = ty(TIMESTAMPTZ, 3, "timestamp(3) with time zone", 'D');
        assert_eq!(
            v(&tz3, "2019-12-09 10:00:00.5+05:30"),
            json!("2019-12-09T04:30:00.500Z")
        );
        // Precision 0 uses Java's ISO_OFFSET_DATE_TIME, which prints no fraction for whole seconds.
        let tz0 = ty(TIMESTAMPTZ, 0, "timestamp(0) with time zone", 'D');
        assert_eq!(
            v(&tz0, "2019-12-09 10:00:00+02"),
            json!("2019-12-09T08:00:00Z")
        );
        assert_eq!(
            schema(&tz, "tz", true, &TypeOptions::default()),
            json!({"type": "string", "optional": true, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "tz"})
        );
        assert_eq!(
            v(&tz, "2019-12-09 10:00:00"),
            json!("2019-12-09 10:00:00"),
            "no offset: passed through"
        );
    }

    #[test]
    fn times_with_time_zone() {
        let timetz = ty(TIMETZ, -1, "time with time zone", 'D');
        // Debezium's ttz and tptz test values; ISO_OFFSET_TIME prints only the fraction digits needed.
        assert_eq!(v(&timetz, "13:51:30.123789+02"), json!("11:51:30.123789Z"));
        assert_eq!(
            v(
                &ty(TIMETZ, 3, "time(3) with time zone", 'D'),
                "13:51:30.123+02"
            ),
            json!("11:51:30.123Z")
        );
        assert_eq!(v(&timetz, "10:00:00+02"), json!("08:00:00Z"));
        assert_eq!(v(&timetz, "01:00:00.5+02"), json!("23:00:00.5Z"));
        assert_eq!(v(&timetz, "22:00:00-03:30"), json!("01:30:00Z"));
        assert_eq!(v(&timetz, "24:00:00+00"), json!("24:00:00Z"));
        assert_eq!(
            schema(&timetz, "ttz", false, &TypeOptions::default()),
            json!({"type": "string", "optional": false, "name": "io.debezium.time.ZonedTime", "version": 1, "field": "ttz"})
        );
        assert_eq!(
            v(&timetz, "10:00:00"),
            json!("10:00:00"),
            "no offset: passed through"
        );
    }

    #[test]
    fn intervals() {
        let interval = ty(INTERVAL, -1, "interval", 'T');
        // MicroDuration.durationMicros(1, 2, 3, 4, 5, 6.78, 365.25 / 12), as in Debezium's test.
        assert_eq!(
            v(&interval, "1 year 2 mons 3 days 04:05:06.78"),
            json!(37091106780000i64)
        );
        assert_eq!(v(&interval, "1 mon"), json!(2629800000000i64)); // 30.4375 days
        assert_eq!(v(&interval, "-1 days +02:00:00"), json!(-79200000000i64));
        assert_eq!(
            v(&interval, "-1 years -2 mons +3 days -04:05:06"),
            json!(-36572706000000i64)
        );
        assert_eq!(v(&interval, "-00:00:01.5"), json!(-1500000));
        assert_eq!(v(&interval, "00:00:00.000001"), json!(1));
        assert_eq!(v(&interval, "100:00:00"), json!(360000000000i64));
        assert_eq!(v(&interval, "00:00:00"), json!(0));
        assert_eq!(v(&interval, "infinity"), json!(0));
        assert_eq!(
            schema(&interval, "it", true, &TypeOptions::default()),
            json!({"type": "int64", "optional": true, "name": "io.debezium.time.MicroDuration", "version": 1, "field": "it"})
        );
        assert_eq!(
            v(&interval, "P1Y2M"),
            json!("P1Y2M"),
            "not IntervalStyle postgres: passed through"
        );
    }

    #[test]
    fn bytea_in_each_binary_mode() {
        let bytea_ty = ty(BYTEA, -1, "bytea", 'U');
        assert_eq!(v(&bytea_ty, r"\x0a0b"), json!("Cgs="));
        assert_eq!(v(&bytea_ty, r"\x"), json!(""));
        assert_eq!(
            schema(&bytea_ty, "ba", true, &TypeOptions::default()),
            json!({"type": "bytes", "optional": true, "field": "ba"})
        );
        let cases = [
            (BinaryHandlingMode::Bytes, "+/8="),
            (BinaryHandlingMode::Base64, "+/8="),
            (BinaryHandlingMode::Base64UrlSafe, "-_8="),
            (BinaryHandlingMode::Hex, "fbff"),
        ];
        for (mode, expected) in cases {
            assert_eq!(
                value(&bytea_ty, r"\xFBff", &with_binary(mode)),
                json!(expected),
                "{mode:?}"
            );
        }
        for mode in [
            BinaryHandlingMode::Base64,
            BinaryHandlingMode::Base64UrlSafe,
            BinaryHandlingMode::Hex,
        ] {
            assert_eq!(
                schema(&bytea_ty, "ba", false, &with_binary(mode)),
                json!({"type": "string", "optional": false, "field": "ba"})
            );
        }
        assert_eq!(
            v(&bytea_ty, r"\001"),
            json!(r"\001"),
            "escape format: passed through"
        );
    }

    #[test]
    fn points() {
        let point = ty(POINT, -1, "point", 'G');
        assert_eq!(
            v(&point, "(1,2)"),
            json!({"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": null})
        );
        assert_eq!(
            schema(&point, "p", true, &TypeOptions::default()),
            json!({"type": "struct", "fields": [
                       {"type": "float64", "optional": false, "field": "x"},
                       {"type": "float64", "optional": false, "field": "y"},
                       {"type": "bytes", "optional": true, "field": "wkb"},
                       {"type": "int32", "optional": true, "field": "srid"}],
                   "optional": true, "name": "io.debezium.data.geometry.Point", "version": 1,
                   "doc": "Geometry (POINT)", "field": "p"})
        );
    }

    #[test]
    fn hostile_text_never_panics() {
        let scalars = [
            ty(BOOL, -1, "boolean", 'B'),
            ty(BIT, 3, "bit(3)", 'V'),
            ty(INT8, -1, "bigint", 'N'),
            ty(FLOAT4, -1, "real", 'N'),
            numeric(10, 2),
            ty(NUMERIC, -1, "numeric", 'N'),
            ty(MONEY, -1, "money", 'N'),
            ty(DATE, -1, "date", 'D'),
            ty(TIME, -1, "time without time zone", 'D'),
            ty(TIMESTAMP, 3, "timestamp(3) without time zone", 'D'),
            ty(TIMESTAMPTZ, -1, "timestamp with time zone", 'D'),
            ty(TIMETZ, -1, "time with time zone", 'D'),
            ty(INTERVAL, -1, "interval", 'T'),
            ty(BYTEA, -1, "bytea", 'U'),
            ty(POINT, -1, "point", 'G'),
            ty(16_430, -1, "hstore", 'U'),
        ];
        let columns: Vec<ColumnType> = scalars
            .iter()
            .cloned()
            .chain(scalars.iter().cloned().map(|element| array_of(element, -1)))
            .collect();
        let inputs = [
            "",
            " ",
            "-",
            ".",
            "NaN",
            "\\x",
            "\\x0",
            "{",
            "}",
            "{{1}",
            "{\"",
            "\"",
            "[1:2]",
            "(1,",
            "\"a\"=>",
            "99999999999999999999-01-01",
            "9999999999-01-01 00:00:00",
            "2020-01-01 00:00:00+99999999999",
            "2020-01-01 00:00:00+",
            "25:00:00",
            "00:00:00.1234567",
            "9223372036854775807 years",
            "-9223372036854775808 mons 9223372036854775807 days",
            "1e400 secs",
            "99999999999999999999:00:00",
            "-0",
            "1.",
            ".5",
            "$",
            "(",
            "1,2",
            "\u{1F600}",
        ];
        for column in &columns {
            for decimal in [
                DecimalHandlingMode::Precise,
                DecimalHandlingMode::Double,
                DecimalHandlingMode::String,
            ] {
                for time_precision in [TimePrecisionMode::Adaptive, TimePrecisionMode::Connect] {
                    let opts = TypeOptions {
                        decimal,
                        time_precision,
                        binary: BinaryHandlingMode::Hex,
                    };
                    for input in inputs {
                        value(column, input, &opts);
                    }
                }
            }
        }
        assert_eq!(
            v(&ty(DATE, -1, "date", 'D'), "99999999999999999999-01-01"),
            json!("99999999999999999999-01-01")
        );
        assert_eq!(
            v(
                &ty(INTERVAL, -1, "interval", 'T'),
                "9223372036854775807 years"
            ),
            json!("9223372036854775807 years")
        );
    }

    #[test]
    fn arrays() {
        let int_array = array_of(ty(INT4, -1, "integer", 'N'), -1);
        assert_eq!(v(&int_array, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(v(&int_array, "{}"), json!([]));
        assert_eq!(
            schema(&int_array, "a", true, &TypeOptions::default()),
            json!({"type": "array", "items": {"type": "int32", "optional": true}, "optional": true, "field": "a"})
        );
        // Multidimensional arrays flatten into the one-dimensional schema; bounds decoration is skipped.
        assert_eq!(v(&int_array, "{{1,2},{3,4}}"), json!([1, 2, 3, 4]));
        assert_eq!(v(&int_array, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(
            v(&int_array, "{1,x}"),
            json!([1, "x"]),
            "an unparseable element passes through alone"
        );

        let text_array = array_of(ty(25, -1, "text", 'S'), -1);
        assert_eq!(
            v(&text_array, r#"{"a b","c\"d","e\\f",NULL,"NULL",plain,""}"#),
            json!(["a b", "c\"d", "e\\f", null, "NULL", "plain", ""])
        );
        assert_eq!(
            schema(&text_array, "tags", false, &TypeOptions::default()),
            json!({"type": "array", "items": {"type": "string", "optional": true}, "optional": false, "field": "tags"})
        );

        // Elements take the array column's typmod: numeric(10,2)[] holds Decimals of scale 2.
        let numeric_array = array_of(ty(NUMERIC, -1, "numeric", 'N'), numeric(10, 2).typmod);
        assert_eq!(
            v(&numeric_array, "{21.47,NULL,21.5}"),
            json!(["CGM=", null, "CGY="])
        );
        assert_eq!(
            schema(&numeric_array, "n", true, &TypeOptions::default())["items"]["parameters"]["scale"],
            json!("2")
        );
        let variable_array = array_of(ty(NUMERIC, -1, "numeric", 'N'), -1);
        assert_eq!(
            v(&variable_array, "{1.1,2.22}"),
            json!([{"scale": 1, "value": "Cw=="}, {"scale": 2, "value": "AN4="}])
        );

        let timestamptz_array = array_of(ty(TIMESTAMPTZ, -1, "timestamp with time zone", 'D'), -1);
        assert_eq!(
            v(
                &timestamptz_array,
                r#"{"2020-04-01 11:51:02+00","2020-04-01 14:51:03+02"}"#
            ),
            json!(["2020-04-01T11:51:02.000000Z", "2020-04-01T12:51:03.000000Z"])
        );

        // Debezium builds enum array items from Enum.builder without marking them optional.
        let enum_array = array_of(ty(16_410, -1, "mood", 'E'), -1);
        assert_eq!(v(&enum_array, "{happy,sad}"), json!(["happy", "sad"]));
        assert_eq!(
            schema(&enum_array, "moods", true, &TypeOptions::default()),
            json!({"type": "array",
                   "items": {"type": "string", "optional": false, "name": "io.debezium.data.Enum", "version": 1},
                   "optional": true, "field": "moods"})
        );

        let box_array = array_of(ty(BOX, -1, "box", 'G'), -1);
        assert_eq!(
            v(&box_array, "{(1,1),(0,0);(2,2),(1,1)}"),
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );

        assert_eq!(
            v(&int_array, "{1,2"),
            json!("{1,2"),
            "unterminated: passed through"
        );
        assert_eq!(
            v(&int_array, "1,2"),
            json!("1,2"),
            "not an array: passed through"
        );
    }
}
