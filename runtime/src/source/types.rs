//! Placeholder until the Debezium type mappings land (being written in parallel).

use serde::Deserialize;

/// Debezium `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandlingMode {
    Precise,
    Double,
    String,
}

/// Debezium `time.precision.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecisionMode {
    Adaptive,
    AdaptiveTimeMicroseconds,
    Connect,
}

/// Debezium `binary.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryHandlingMode {
    Bytes,
    Base64,
    Base64UrlSafe,
    Hex,
}
