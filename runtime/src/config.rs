//! Pipeline files: typed, validated TOML.
//!
//! Keys follow Debezium's connector properties for the source (`slot.name` becomes `slot_name`) and
//! Delta Live Tables' APPLY CHANGES for silver, so users recognise them. Every error names the file,
//! and where it can, the line and the key. `${VAR}` is expanded from the environment in the fields
//! that usually hold secrets or addresses, after parsing, so secret values never appear in errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Why a pipeline file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A parsed pipeline file, with relative paths resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub landing: LandingConfig,
    pub bronze: BronzeConfig,
    pub silver: SilverConfig,
    pub gold: BTreeMap<String, GoldConfig>,
    pub wasm: WasmLimits,
    pub maintenance: MaintenanceConfig,
    pub metrics: MetricsConfig,
    /// Where weir keeps its own progress records (snapshot state); an object store URL.
    pub state_location: String,
    /// Where a batch a layer's component fails on goes (as Parquet, with its error beside it) so
    /// the layer can go on; without it, such a batch stops the pipeline.
    pub dead_letter_location: Option<String>,
    /// How often a continuous run's idle bronze layer looks for new landing files (silver and
    /// gold start as soon as the layer before them commits).
    pub trigger_interval_ms: u64,
    /// Source text, kept to turn key spans into line numbers for later checks (`weir validate`).
    text: String,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub connection: String,
    pub slot_name: String,
    pub publication_name: String,
    pub publication_autocreate_mode: PublicationAutocreateMode,
    /// Regular expressions matched against whole `schema.table` names, as Debezium's
    /// `table.include.list` / `table.exclude.list`.
    pub table_include_list: Vec<String>,
    pub table_exclude_list: Vec<String>,
    pub snapshot_mode: SnapshotMode,
    /// Rows per snapshot chunk (`snapshot.fetch.size`); progress is recorded after each.
    pub snapshot_fetch_size: usize,
    /// Tables read at once (`snapshot.max.threads`).
    pub snapshot_max_threads: usize,
    pub decimal_handling_mode: DecimalHandlingMode,
    pub time_precision_mode: TimePrecisionMode,
    pub binary_handling_mode: BinaryHandlingMode,
    pub tombstones_on_delete: bool,
    /// JSON with schemas, as `key.converter.schemas.enable` / `value.converter.schemas.enable`.
    pub schemas_enable: bool,
    /// 0 turns heartbeats off, as in Debezium.
    pub heartbeat_interval_ms: u64,
    /// Run at every heartbeat instead of emitting a logical message (`heartbeat.action.query`).
    pub heartbeat_action_query: Option<String>,
}

pub use crate::source::types::{BinaryHandlingMode, DecimalHandlingMode, TimePrecisionMode};

/// Debezium's `snapshot.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot the tables when the slot is first created, then stream.
    Initial,
    /// Snapshot at every start (on a freshly created slot), then stream.
    Always,
    /// Snapshot once, then stop capturing (the slot is dropped so it cannot hold WAL back).
    InitialOnly,
    /// Only stream changes from the slot's creation on.
    Never,
}

/// Debezium's `publication.autocreate.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublicationAutocreateMode {
    /// Create the publication `FOR ALL TABLES` if it does not exist (needs superuser).
    AllTables,
    /// Create it for the captured tables, or set its tables to them if it exists.
    Filtered,
    /// Never touch it: it must exist.
    Disabled,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub group_id: String,
    pub topic_creation: TopicCreation,
    /// Passed to librdkafka as is, for producers and consumers (SASL/SSL settings for Event Hubs).
    pub options: BTreeMap<String, String>,
}

/// Settings of the topics weir creates, as Debezium's `topic.creation.default.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicCreation {
    #[serde(default = "one")]
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// `cleanup.policy` (`delete`, `compact`, `compact,delete`); the broker's default when unset.
    pub cleanup_policy: Option<String>,
    /// `compression.type` (`lz4`, `zstd`, `producer`, …); the broker's default when unset.
    pub compression_type: Option<String>,
}

impl Default for TopicCreation {
    fn default() -> Self {
        Self {
            partitions: 1,
            replication_factor: 1,
            cleanup_policy: None,
            compression_type: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LandingConfig {
    pub location: String,
    pub max_rows_per_file: usize,
    /// A file is written once its events' JSON reaches this many bytes…
    pub max_bytes_per_file: usize,
    /// …or once its first event has waited this long, even while events keep coming.
    pub max_file_age_ms: u64,
    /// How long landing may go without a partition while its group's offsets stand still behind
    /// the topic's end before it leaves and rejoins the group (zero: never).
    pub rejoin_stalled_group_after: std::time::Duration,
}

/// A layer whose logic is a Wasm component and whose output is a Delta table.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    pub component: PathBuf,
    pub table: String,
    /// The layer's `config` table, handed to the component's `configure` as JSON.
    pub component_config: serde_json::Value,
    pub partition_by: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BronzeConfig {
    pub layer: LayerConfig,
    /// The captured `schema.table` whose landing files bronze reads (silver and gold follow bronze).
    pub source_table: String,
}

#[derive(Debug, Clone)]
pub struct SilverConfig {
    pub layer: LayerConfig,
    pub keys: Vec<String>,
    pub sequence_by: Vec<String>,
    /// SQL predicate over the incoming row marking it as a delete, as DLT's `APPLY AS DELETE WHEN`.
    pub apply_as_deletes: String,
    /// SQL predicate marking a row as a truncate of the whole table (`APPLY AS TRUNCATE WHEN`);
    /// without it, rows without a key (what a truncate becomes) are dropped and counted.
    pub apply_as_truncates: Option<String>,
    /// The columns silver keeps: `column_list` (keys and `sequence_by` always), or all but
    /// `except_column_list`.
    pub columns: ColumnSelection,
    /// Whether an update's null columns keep the stored values (`IGNORE NULL UPDATES`).
    pub ignore_null_updates: bool,
    pub expectations: Vec<Expectation>,
    /// Delta table receiving the rows `drop` expectations remove, with the rules they failed.
    pub quarantine_table: Option<String>,
    /// `STORED AS SCD TYPE 1` (the latest row per key) or `2` (every version, with `__START_AT`
    /// and `__END_AT`).
    pub scd_type: ScdType,
    /// SCD type 2: the columns whose changes start a new version (`TRACK HISTORY ON`); a change
    /// of other columns only updates the current version in place.
    pub track_history: ColumnSelection,
    /// Changes one MERGE applies at most (more are split along the table's files), which bounds
    /// a pass's memory whatever the table's size.
    pub max_changes_per_merge: usize,
    /// Rows one MERGE rewrites at most, counting its changes (files are cut at their key ranges),
    /// which bounds a pass's memory as the table grows.
    pub max_rows_per_merge: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScdType {
    One,
    Two,
}

/// DLT's `COLUMNS (...)` / `COLUMNS * EXCEPT (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSelection {
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

impl ColumnSelection {
    pub fn keeps(&self, column: &str) -> bool {
        match self {
            Self::Only(list) => list.iter().any(|c| c == column),
            Self::AllExcept(list) => !list.iter().any(|c| c == column),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub name: String,
    /// SQL predicate each row must satisfy.
    pub expect: String,
    #[serde(default = "default_on_violation")]
    pub on_violation: OnViolation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// Keep the row, count the violation.
    Warn,
    /// Drop the row, count it.
    Drop,
    /// Stop the pipeline before anything of the batch is committed.
    Fail,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Drop => "drop",
            Self::Fail => "fail",
        }
    }
}

fn default_on_violation() -> OnViolation {
    OnViolation::Warn
}

#[derive(Debug, Clone)]
pub struct GoldConfig {
    pub layer: LayerConfig,
    /// Group columns the component returns first; the rest of its columns are additive.
    pub keys: Vec<String>,
    /// Additive column holding the number of input rows in a group; groups reaching 0 are removed.
    pub count_column: String,
}

/// Care of the layers' Delta tables: compaction of small files, then vacuum.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// How often a continuous run compacts and vacuums its tables, between passes (0: never;
    /// `weir maintain` does it on demand).
    pub interval_s: u64,
    /// How long files a table no longer uses are kept for readers of older versions.
    pub vacuum_retention_hours: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        // Delta's own default retention (`delta.deletedFileRetentionDuration`): 7 days.
        Self {
            interval_s: 3600,
            vacuum_retention_hours: 168,
        }
    }
}

/// The HTTP port a running pipeline serves `/metrics`, `/health`, `/status` and its page on.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `127.0.0.1:9187`; without it no port is opened.
    pub listen: Option<std::net::SocketAddr>,
    /// `/health` reports a stage as behind when input has waited this long without it progressing.
    pub stalled_after_s: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            stalled_after_s: 60,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WasmLimits {
    pub memory_limit_bytes: usize,
    pub timeout_ms: u64,
    pub fuel: Option<u64>,
    /// Whether guests read the real clocks; otherwise they read a clock stopped at the Unix epoch,
    /// so that a transform's output depends on its input alone.
    pub allow_clocks: bool,
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pipeline: RawPipeline,
    source: RawSource,
    kafka: RawKafka,
    landing: RawLanding,
    bronze: RawBronze,
    silver: RawSilver,
    #[serde(default)]
    gold: BTreeMap<String, RawGold>,
    #[serde(default)]
    wasm: RawWasm,
    #[serde(default)]
    maintenance: MaintenanceConfig,
    #[serde(default)]
    metrics: MetricsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    state_location: Option<Spanned<String>>,
    dead_letter_location: Option<Spanned<String>>,
    trigger_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    connection: Spanned<String>,
    slot_name: Option<Spanned<String>>,
    publication_name: Option<Spanned<String>>,
    #[serde(default = "default_autocreate_mode")]
    publication_autocreate_mode: PublicationAutocreateMode,
    table_include_list: Spanned<Vec<String>>,
    table_exclude_list: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_snapshot_mode")]
    snapshot_mode: SnapshotMode,
    #[serde(default = "default_snapshot_fetch_size")]
    snapshot_fetch_size: usize,
    #[serde(default = "default_snapshot_max_threads")]
    snapshot_max_threads: usize,
    #[serde(default = "default_decimal_mode")]
    decimal_handling_mode: DecimalHandlingMode,
    #[serde(default = "default_time_precision_mode")]
    time_precision_mode: TimePrecisionMode,
    #[serde(default = "default_binary_mode")]
    binary_handling_mode: BinaryHandlingMode,
    #[serde(default = "yes")]
    tombstones_on_delete: bool,
    #[serde(default)]
    schemas_enable: bool,
    #[serde(default)]
    heartbeat_interval_ms: u64,
    heartbeat_action_query: Option<String>,
}

// Debezium's defaults.
fn default_autocreate_mode() -> PublicationAutocreateMode {
    PublicationAutocreateMode::AllTables
}
fn default_snapshot_mode() -> SnapshotMode {
    SnapshotMode::Initial
}
fn default_snapshot_fetch_size() -> usize {
    10_240
}
fn default_snapshot_max_threads() -> usize {
    1
}
fn default_decimal_mode() -> DecimalHandlingMode {
    DecimalHandlingMode::Precise
}
fn default_time_precision_mode() -> TimePrecisionMode {
    TimePrecisionMode::Adaptive
}
fn default_binary_mode() -> BinaryHandlingMode {
    BinaryHandlingMode::Bytes
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: Spanned<String>,
    topic_prefix: Option<Spanned<String>>,
    group_id: Option<String>,
    #[serde(default)]
    topic_creation: TopicCreation,
    #[serde(default)]
    options: BTreeMap<String, Spanned<String>>,
}

fn one() -> i32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLanding {
    location: Spanned<String>,
    #[serde(default = "default_rows_per_file")]
    max_rows_per_file: usize,
    #[serde(default = "default_bytes_per_file")]
    max_bytes_per_file: usize,
    #[serde(default = "default_file_age_ms")]
    max_file_age_ms: u64,
    #[serde(default = "default_rejoin_stalled_group_s")]
    rejoin_stalled_group_s: u64,
}

fn default_rejoin_stalled_group_s() -> u64 {
    30
}

fn default_rows_per_file() -> usize {
    100_000
}

fn default_bytes_per_file() -> usize {
    64 << 20
}

fn default_file_age_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBronze {
    source_table: Spanned<String>,
    component: Spanned<String>,
    table: Spanned<String>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    partition_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSilver {
    component: Spanned<String>,
    table: Spanned<String>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    partition_by: Vec<String>,
    keys: Spanned<Vec<String>>,
    #[serde(default = "default_sequence_by")]
    sequence_by: Vec<String>,
    #[serde(default = "default_apply_as_deletes")]
    apply_as_deletes: String,
    apply_as_truncates: Option<String>,
    column_list: Option<Spanned<Vec<String>>>,
    except_column_list: Option<Vec<String>>,
    #[serde(default)]
    ignore_null_updates: bool,
    #[serde(default)]
    expectations: Vec<Expectation>,
    quarantine_table: Option<Spanned<String>>,
    stored_as_scd_type: Option<Spanned<u8>>,
    track_history_column_list: Option<Spanned<Vec<String>>>,
    track_history_except_column_list: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_max_changes_per_merge")]
    max_changes_per_merge: usize,
    #[serde(default = "default_max_rows_per_merge")]
    max_rows_per_merge: u64,
}

fn default_max_changes_per_merge() -> usize {
    100_000
}

fn default_max_rows_per_merge() -> u64 {
    250_000
}

fn default_sequence_by() -> Vec<String> {
    vec!["lsn".into(), "kafka_offset".into()]
}
fn default_apply_as_deletes() -> String {
    "op = 'd'".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGold {
    component: Spanned<String>,
    table: Spanned<String>,
    #[serde(default)]
    config: toml::Table,
    keys: Spanned<Vec<String>>,
    count_column: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWasm {
    memory_limit_mb: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    fuel: Option<Spanned<u64>>,
    #[serde(default)]
    allow_clocks: bool,
}

const DEFAULT_TRIGGER_INTERVAL_MS: u64 = 1_000;
const DEFAULT_MEMORY_MB: u64 = 256;
/// A 32-bit guest addresses at most 4 GiB.
const MAX_MEMORY_MB: u64 = 4096;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// A day: longer is a mistake, and far longer would overflow the epoch deadline.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl Pipeline {
    /// Reads, parses and checks a pipeline file. Component files are checked by `weir validate`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<Self> {
        let raw: RawFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let ctx = Ctx {
            path,
            text: &text,
            base: &base,
        };

        let name = raw.pipeline.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ctx.invalid(
                &raw.pipeline.name,
                "pipeline.name",
                "use letters, digits, '_' and '-' only",
            ));
        }
        let slug = name.replace('-', "_");

        let table_include_list =
            ctx.patterns(&raw.source.table_include_list, "source.table_include_list")?;
        if table_include_list.is_empty() {
            return Err(ctx.invalid(
                &raw.source.table_include_list,
                "source.table_include_list",
                "name at least one `schema.table` (a regular expression)",
            ));
        }
        let table_exclude_list = match &raw.source.table_exclude_list {
            Some(list) => ctx.patterns(list, "source.table_exclude_list")?,
            None => Vec::new(),
        };
        let bronze_source = raw.bronze.source_table.get_ref().clone();
        if bronze_source.split('.').count() != 2 {
            return Err(ctx.invalid(
                &raw.bronze.source_table,
                "bronze.source_table",
                &format!("`{bronze_source}` is not `schema.table`"),
            ));
        }
        if let Some(action) = &raw.source.heartbeat_action_query
            && raw.source.heartbeat_interval_ms == 0
        {
            return Err(ctx.invalid(
                &raw.source.connection,
                "source.heartbeat_action_query",
                &format!("`{action}` never runs: set source.heartbeat_interval_ms too"),
            ));
        }
        let landing_location = ctx.location(&raw.landing.location, "landing.location")?;
        let state_location = match &raw.pipeline.state_location {
            Some(s) => ctx.location(s, "pipeline.state_location")?,
            None => format!("{}/_weir", landing_location.trim_end_matches('/')),
        };
        let dead_letter_location = match &raw.pipeline.dead_letter_location {
            Some(d) => Some(ctx.location(d, "pipeline.dead_letter_location")?),
            None => None,
        };

        let silver_keys = raw.silver.keys.get_ref().clone();
        if silver_keys.is_empty() {
            return Err(ctx.invalid(
                &raw.silver.keys,
                "silver.keys",
                "name at least one key column",
            ));
        }
        let silver_columns = match (raw.silver.column_list, raw.silver.except_column_list) {
            (Some(only), None) => {
                // Keys and sequence columns are what APPLY CHANGES works by: always kept.
                let mut only = only.into_inner();
                for needed in silver_keys.iter().chain(&raw.silver.sequence_by) {
                    if !only.contains(needed) {
                        only.push(needed.clone());
                    }
                }
                ColumnSelection::Only(only)
            }
            (None, except) => {
                let except = except.unwrap_or_default();
                if let Some(needed) = silver_keys
                    .iter()
                    .chain(&raw.silver.sequence_by)
                    .find(|c| except.contains(c))
                {
                    return Err(ctx.invalid(
                        &raw.silver.keys,
                        "silver.except_column_list",
                        &format!("`{needed}` is a key or sequence_by column: silver needs it"),
                    ));
                }
                ColumnSelection::AllExcept(except)
            }
            (Some(only), Some(_)) => {
                return Err(ctx.invalid(
                    &only,
                    "silver.column_list",
                    "set column_list or except_column_list, not both",
                ));
            }
        };
        let silver_scd_type = match &raw.silver.stored_as_scd_type {
            None => ScdType::One,
            Some(t) => match (*t.get_ref(), &raw.silver.apply_as_truncates) {
                (1, _) => ScdType::One,
                (2, None) => ScdType::Two,
                (2, Some(_)) => {
                    return Err(ctx.invalid(
                        t,
                        "silver.stored_as_scd_type",
                        "apply_as_truncates applies to SCD type 1 only, as in DLT",
                    ));
                }
                (other, _) => {
                    return Err(ctx.invalid(
                        t,
                        "silver.stored_as_scd_type",
                        &format!("{other} is not 1 or 2"),
                    ));
                }
            },
        };
        let track_history = match (
            raw.silver.track_history_column_list,
            raw.silver.track_history_except_column_list,
        ) {
            (Some(list), _) | (None, Some(list)) if silver_scd_type != ScdType::Two => {
                return Err(ctx.invalid(
                    &list,
                    "silver.track_history_column_list",
                    "history is tracked with stored_as_scd_type = 2 only, as in DLT",
                ));
            }
            (Some(only), Some(_)) => {
                return Err(ctx.invalid(
                    &only,
                    "silver.track_history_column_list",
                    "set track_history_column_list or track_history_except_column_list, not both",
                ));
            }
            (Some(only), None) => ColumnSelection::Only(only.into_inner()),
            (None, except) => {
                ColumnSelection::AllExcept(except.map(Spanned::into_inner).unwrap_or_default())
            }
        };
        // Each table has one writer: two layers on one location would overwrite each other.
        let mut tables = TableClaims::default();
        let bronze_layer = ctx.layer(
            &raw.bronze.component,
            &raw.bronze.table,
            raw.bronze.config,
            raw.bronze.partition_by,
            "bronze",
        )?;
        tables.claim(&ctx, &bronze_layer.table, &raw.bronze.table, "bronze.table")?;
        let silver_layer = ctx.layer(
            &raw.silver.component,
            &raw.silver.table,
            raw.silver.config,
            raw.silver.partition_by,
            "silver",
        )?;
        tables.claim(&ctx, &silver_layer.table, &raw.silver.table, "silver.table")?;
        let quarantine_table = match &raw.silver.quarantine_table {
            Some(q) => {
                let location = ctx.location(q, "silver.quarantine_table")?;
                tables.claim(&ctx, &location, q, "silver.quarantine_table")?;
                Some(location)
            }
            None => None,
        };
        let mut gold = BTreeMap::new();
        for (gold_name, g) in raw.gold {
            let key = format!("gold.{gold_name}");
            let keys = g.keys.get_ref().clone();
            if keys.is_empty() {
                return Err(ctx.invalid(
                    &g.keys,
                    &format!("{key}.keys"),
                    "name at least one group column",
                ));
            }
            let layer = ctx.layer(&g.component, &g.table, g.config, Vec::new(), &key)?;
            tables.claim(&ctx, &layer.table, &g.table, &format!("{key}.table"))?;
            gold.insert(
                gold_name,
                GoldConfig {
                    layer,
                    keys,
                    count_column: g.count_column,
                },
            );
        }

        let wasm = ctx.wasm_limits(&raw.wasm)?;
        let trigger_interval_ms = match &raw.pipeline.trigger_interval_ms {
            Some(ms) if !(10..=3_600_000).contains(ms.get_ref()) => {
                return Err(ctx.invalid(
                    ms,
                    "pipeline.trigger_interval_ms",
                    &format!("{} is not between 10 and 3600000 ms", ms.get_ref()),
                ));
            }
            Some(ms) => *ms.get_ref(),
            None => DEFAULT_TRIGGER_INTERVAL_MS,
        };
        let topic_prefix = match &raw.kafka.topic_prefix {
            Some(prefix) => ctx.topic_prefix(prefix)?,
            None => "postgres".to_owned(),
        };

        let slot_name = match &raw.source.slot_name {
            Some(s) => ctx.identifier(s, "source.slot_name")?,
            None => format!("weir_{slug}"),
        };
        let publication_name = match &raw.source.publication_name {
            Some(s) => ctx.identifier(s, "source.publication_name")?,
            None => format!("weir_{slug}"),
        };
        let mut options = BTreeMap::new();
        for (k, v) in &raw.kafka.options {
            options.insert(k.clone(), ctx.expand(v, &format!("kafka.options.{k}"))?);
        }

        Ok(Self {
            path: path.to_owned(),
            source: SourceConfig {
                connection: ctx.expand(&raw.source.connection, "source.connection")?,
                slot_name,
                publication_name,
                publication_autocreate_mode: raw.source.publication_autocreate_mode,
                table_include_list,
                table_exclude_list,
                snapshot_mode: raw.source.snapshot_mode,
                snapshot_fetch_size: raw.source.snapshot_fetch_size.max(1),
                snapshot_max_threads: raw.source.snapshot_max_threads.max(1),
                decimal_handling_mode: raw.source.decimal_handling_mode,
                time_precision_mode: raw.source.time_precision_mode,
                binary_handling_mode: raw.source.binary_handling_mode,
                tombstones_on_delete: raw.source.tombstones_on_delete,
                schemas_enable: raw.source.schemas_enable,
                heartbeat_interval_ms: raw.source.heartbeat_interval_ms,
                heartbeat_action_query: raw.source.heartbeat_action_query,
            },
            kafka: KafkaConfig {
                bootstrap_servers: ctx
                    .expand(&raw.kafka.bootstrap_servers, "kafka.bootstrap_servers")?,
                topic_prefix,
                group_id: raw.kafka.group_id.unwrap_or_else(|| format!("weir-{name}")),
                topic_creation: raw.kafka.topic_creation,
                options,
            },
            landing: LandingConfig {
                location: landing_location,
                max_rows_per_file: raw.landing.max_rows_per_file.max(1),
                max_bytes_per_file: raw.landing.max_bytes_per_file.max(1),
                max_file_age_ms: raw.landing.max_file_age_ms,
                rejoin_stalled_group_after: std::time::Duration::from_secs(
                    raw.landing.rejoin_stalled_group_s,
                ),
            },
            bronze: BronzeConfig {
                layer: bronze_layer,
                source_table: bronze_source,
            },
            silver: SilverConfig {
                layer: silver_layer,
                keys: silver_keys,
                sequence_by: raw.silver.sequence_by,
                apply_as_deletes: raw.silver.apply_as_deletes,
                apply_as_truncates: raw.silver.apply_as_truncates,
                columns: silver_columns,
                ignore_null_updates: raw.silver.ignore_null_updates,
                expectations: raw.silver.expectations,
                scd_type: silver_scd_type,
                track_history,
                max_changes_per_merge: raw.silver.max_changes_per_merge.max(1),
                max_rows_per_merge: raw.silver.max_rows_per_merge,
                quarantine_table,
            },
            gold,
            wasm,
            maintenance: raw.maintenance,
            metrics: raw.metrics,
            state_location,
            dead_letter_location,
            trigger_interval_ms,
            name,
            text,
        })
    }

    /// The Kafka topic of a `schema.table`, as Debezium names it: `<prefix>.<schema>.<table>`.
    pub fn topic_for(&self, table: &str) -> String {
        format!("{}.{}", self.kafka.topic_prefix, table)
    }

    /// Every layer with a component, named as in the file (`bronze`, `silver`, `gold.<name>`).
    pub fn layers(&self) -> Vec<(String, &LayerConfig)> {
        let mut out = vec![
            ("bronze".to_owned(), &self.bronze.layer),
            ("silver".to_owned(), &self.silver.layer),
        ];
        out.extend(
            self.gold
                .iter()
                .map(|(n, g)| (format!("gold.{n}"), &g.layer)),
        );
        out
    }

    /// The line of the first occurrence of `needle` in the file, for errors found after parsing.
    pub fn line_of(&self, needle: &str) -> usize {
        self.text
            .lines()
            .position(|l| l.contains(needle))
            .map_or(0, |i| i + 1)
    }
}

/// The table locations taken so far, and by which key.
#[derive(Default)]
struct TableClaims(BTreeMap<String, String>);

impl TableClaims {
    fn claim(&mut self, ctx: &Ctx, location: &str, at: &Spanned<String>, key: &str) -> Result<()> {
        let normalized = location.trim_end_matches('/').to_owned();
        if let Some(owner) = self.0.get(&normalized) {
            return Err(ctx.invalid(
                at,
                key,
                &format!("{location} is already {owner}: each layer needs a table of its own"),
            ));
        }
        self.0.insert(normalized, key.to_owned());
        Ok(())
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .lines()
            .count()
            .max(1)
    }

    fn invalid<T>(&self, at: &Spanned<T>, key: &str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: self.line(at.span()),
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Expands `${VAR}` from the environment; an unset variable is an error naming it.
    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String> {
        let raw = value.get_ref();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| self.invalid(value, key, "unclosed `${`"))?;
            let var = &after[..end];
            let val = std::env::var(var).map_err(|_| {
                self.invalid(
                    value,
                    key,
                    &format!("environment variable `{var}` is not set"),
                )
            })?;
            out.push_str(&val);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A storage location: an object store URL, or a path relative to the pipeline file's folder.
    fn location(&self, value: &Spanned<String>, key: &str) -> Result<String> {
        let expanded = self.expand(value, key)?;
        if let Some((scheme, _)) = expanded.split_once("://") {
            return match scheme {
                "file" | "s3" | "s3a" | "az" | "azure" | "abfs" | "abfss" | "memory" => {
                    Ok(expanded)
                }
                other => Err(self.invalid(
                    value,
                    key,
                    &format!("unsupported storage scheme `{other}://`"),
                )),
            };
        }
        let path = self.base.join(&expanded);
        let absolute = std::path::absolute(&path)
            .map_err(|e| self.invalid(value, key, &format!("cannot resolve path: {e}")))?;
        Ok(format!("file://{}", normalize(&absolute).display()))
    }

    fn identifier(&self, value: &Spanned<String>, key: &str) -> Result<String> {
        let v = value.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(v.clone())
        } else {
            Err(self.invalid(
                value,
                key,
                "use lower-case letters, digits and '_' (at most 63), as PostgreSQL requires",
            ))
        }
    }

    /// A list of regular expressions, each checked; they match whole names.
    fn patterns(&self, list: &Spanned<Vec<String>>, key: &str) -> Result<Vec<String>> {
        for pattern in list.get_ref() {
            if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
                return Err(self.invalid(
                    list,
                    key,
                    &format!("`{pattern}` is not a valid regular expression: {e}"),
                ));
            }
        }
        Ok(list.get_ref().clone())
    }

    /// `[wasm]`, each limit within what the host can enforce.
    fn wasm_limits(&self, raw: &RawWasm) -> Result<WasmLimits> {
        let within = |value: Option<&Spanned<u64>>, key: &str, max: u64, unit: &str| match value {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > max => Err(self.invalid(
                v,
                key,
                &format!("{} is not between 1 and {max} {unit}", v.get_ref()),
            )),
            _ => Ok(value.map(|v| *v.get_ref())),
        };
        let memory_mb = within(
            raw.memory_limit_mb.as_ref(),
            "wasm.memory_limit_mb",
            MAX_MEMORY_MB,
            "MiB",
        )?
        .unwrap_or(DEFAULT_MEMORY_MB);
        let timeout_ms = within(
            raw.timeout_ms.as_ref(),
            "wasm.timeout_ms",
            MAX_TIMEOUT_MS,
            "ms",
        )?
        .unwrap_or(DEFAULT_TIMEOUT_MS);
        let fuel = within(raw.fuel.as_ref(), "wasm.fuel", u64::MAX, "units")?;
        Ok(WasmLimits {
            memory_limit_bytes: (memory_mb as usize) << 20, // at most 4096, checked above
            timeout_ms,
            fuel,
            allow_clocks: raw.allow_clocks,
        })
    }

    /// A prefix of Kafka topic names, as Debezium's `topic.prefix`: letters, digits, '.', '_', '-'.
    fn topic_prefix(&self, prefix: &Spanned<String>) -> Result<String> {
        let text = prefix.get_ref();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if text.is_empty() || text.len() > 200 || !text.chars().all(allowed) {
            return Err(self.invalid(
                prefix,
                "kafka.topic_prefix",
                &format!(
                    "`{text}` is not a topic prefix: use up to 200 letters, digits, '.', '_' and '-'"
                ),
            ));
        }
        Ok(text.clone())
    }

    fn layer(
        &self,
        component: &Spanned<String>,
        table: &Spanned<String>,
        config: toml::Table,
        partition_by: Vec<String>,
        key: &str,
    ) -> Result<LayerConfig> {
        let component_path = self
            .base
            .join(self.expand(component, &format!("{key}.component"))?);
        let component_config = serde_json::to_value(&config)
            .map_err(|e| self.invalid(component, &format!("{key}.config"), &e.to_string()))?;
        Ok(LayerConfig {
            component: normalize(&component_path),
            table: self.location(table, &format!("{key}.table"))?,
            component_config,
            partition_by,
        })
    }
}

/// Removes `.` and `..` segments without touching the file system (the path may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pipeline]
name = "shop"

[source]
connection = "postgres://u@127.0.0.1/business"
table_include_list = ["public.onlineshop"]

[kafka]
bootstrap_servers = "127.0.0.1:9092"

[landing]
location = "../lake/landing"

[bronze]
source_table = "public.onlineshop"
component = "b.wasm"
table = "../lake/bronze"

[silver]
component = "s.wasm"
table = "../lake/silver"
keys = ["id"]

[gold.sales]
component = "g.wasm"
table = "../lake/gold"
keys = ["productno"]
count_column = "order_lines"
"#;

    fn parse(text: &str) -> Result<Pipeline> {
        Pipeline::parse(Path::new("/etc/weir/pipelines/shop.toml"), text.to_owned())
    }

    #[test]
    fn relative_locations_resolve_against_the_pipeline_folder() {
        let p = parse(MINIMAL).expect("valid file");
        assert_eq!(p.landing.location, "file:///etc/weir/lake/landing");
        assert_eq!(
            p.bronze.layer.component,
            PathBuf::from("/etc/weir/pipelines/b.wasm")
        );
        assert_eq!(p.state_location, "file:///etc/weir/lake/landing/_weir");
        assert_eq!(p.source.slot_name, "weir_shop");
        assert_eq!(
            p.topic_for("public.onlineshop"),
            "postgres.public.onlineshop"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let text = MINIMAL.replace("keys = [\"id\"]", "keys = [\"id\"]\nsequnce_by = [\"lsn\"]");
        let err = parse(&text).expect_err("typo must be rejected").to_string();
        assert!(err.contains("shop.toml"), "{err}");
        assert!(err.contains("sequnce_by"), "{err}");
        assert!(err.contains("line 24"), "{err}");
    }

    /// Malformed files: each error names the file and the line, and says what is wrong.
    #[test]
    fn malformed_files_are_refused_with_file_line_and_cause() {
        let cases = [
            // TOML syntax: an unclosed string.
            (
                MINIMAL.replace("name = \"shop\"", "name = \"shop"),
                "line 3",
                "",
            ),
            // A wrong type.
            (
                MINIMAL.replace("keys = [\"id\"]", "keys = \"id\""),
                "line 23",
                "keys",
            ),
            // A negative count.
            (
                MINIMAL.replace(
                    "location = \"../lake/landing\"",
                    "location = \"../lake/landing\"\nmax_rows_per_file = -5",
                ),
                "line 14",
                "max_rows_per_file",
            ),
            // A required field missing.
            (
                MINIMAL.replace("bootstrap_servers = \"127.0.0.1:9092\"\n", ""),
                "line 9",
                "bootstrap_servers",
            ),
            // The same gold table twice.
            (
                format!(
                    "{MINIMAL}\n[gold.sales]\ncomponent = \"g.wasm\"\ntable = \"x\"\nkeys = [\"p\"]\n"
                ),
                "line 31",
                "sales",
            ),
        ];
        assert_refused(&cases);
    }

    /// Each file is refused with an error naming the file, the line (`line`) and `names`.
    fn assert_refused(cases: &[(String, &str, &str)]) {
        for (text, line, names) in cases {
            let err = parse(text).expect_err(names).to_string();
            assert!(err.contains("shop.toml"), "{err}");
            assert!(err.contains(line), "{line}: {err}");
            assert!(err.contains(names), "{names}: {err}");
        }
    }

    /// Values that parse but that weir cannot honour: each refused at its line, naming its key.
    #[test]
    fn hostile_values_are_refused_with_their_key_and_line() {
        let with_wasm = |wasm: &str| format!("{MINIMAL}\n[wasm]\n{wasm}\n");
        let cases = [
            (
                with_wasm("timeout_ms = 18446744073709551615"),
                ":32:",
                "wasm.timeout_ms",
            ),
            (with_wasm("timeout_ms = 0"), ":32:", "wasm.timeout_ms"),
            (
                with_wasm("memory_limit_mb = 0"),
                ":32:",
                "wasm.memory_limit_mb",
            ),
            (
                with_wasm("memory_limit_mb = 1000000"),
                ":32:",
                "wasm.memory_limit_mb",
            ),
            (with_wasm("fuel = 0"), ":32:", "wasm.fuel"),
            (
                MINIMAL.replace(
                    "name = \"shop\"",
                    "name = \"shop\"\ntrigger_interval_ms = 0",
                ),
                ":4:",
                "pipeline.trigger_interval_ms",
            ),
            (
                MINIMAL.replace("9092\"", "9092\"\ntopic_prefix = \"shop/eu\""),
                ":11:",
                "kafka.topic_prefix",
            ),
            (
                MINIMAL.replace("table = \"../lake/gold\"", "table = \"../lake/silver/\""),
                ":27:",
                "gold.sales.table",
            ),
            (
                MINIMAL.replace(
                    "keys = [\"id\"]",
                    "keys = [\"id\"]\nquarantine_table = \"../lake/bronze\"",
                ),
                ":24:",
                "silver.quarantine_table",
            ),
        ];
        assert_refused(&cases);
        let p = parse(&with_wasm(
            "timeout_ms = 86400000\nmemory_limit_mb = 4096\nfuel = 1",
        ))
        .expect("limits at their bounds");
        assert_eq!(p.wasm.memory_limit_bytes, 4 << 30);
        assert_eq!(p.wasm.fuel, Some(1));
        let p = parse(&MINIMAL.replace("9092\"", "9092\"\ntopic_prefix = \"eu.shop-1\""))
            .expect("dots, dashes and underscores, as in Debezium");
        assert_eq!(p.topic_for("public.t"), "eu.shop-1.public.t");
    }

    #[test]
    fn unset_environment_variable_names_the_key_not_the_value() {
        let text = MINIMAL.replace("u@127.0.0.1", "u:${WEIR_TEST_SURELY_UNSET}@127.0.0.1");
        let err = parse(&text).expect_err("unset variable").to_string();
        assert!(err.contains("source.connection"), "{err}");
        assert!(err.contains("WEIR_TEST_SURELY_UNSET"), "{err}");
        assert!(err.contains(":6:"), "{err}");
    }

    #[test]
    fn silver_column_lists_keep_keys_and_sequence_and_exclude_each_other() {
        let p = parse(MINIMAL).expect("valid file");
        assert_eq!(p.silver.columns, ColumnSelection::AllExcept(vec![]));
        assert!(!p.silver.ignore_null_updates && p.silver.apply_as_truncates.is_none());

        let only = MINIMAL.replace(
            "keys = [\"id\"]",
            "keys = [\"id\"]\ncolumn_list = [\"price\"]",
        );
        let p = parse(&only).expect("valid file");
        assert!(
            ["price", "id", "lsn", "kafka_offset"]
                .iter()
                .all(|c| p.silver.columns.keeps(c))
        );
        assert!(!p.silver.columns.keeps("country"));

        let both = only.replace(
            "column_list = [\"price\"]",
            "column_list = [\"price\"]\nexcept_column_list = [\"country\"]",
        );
        let err = parse(&both).expect_err("both lists").to_string();
        assert!(
            err.contains("silver.column_list") && err.contains("not both"),
            "{err}"
        );

        let without_key = MINIMAL.replace(
            "keys = [\"id\"]",
            "keys = [\"id\"]\nexcept_column_list = [\"id\"]",
        );
        let err = parse(&without_key).expect_err("key excluded").to_string();
        assert!(
            err.contains("silver.except_column_list") && err.contains("`id`"),
            "{err}"
        );
    }

    #[test]
    fn scd_type_is_1_or_2_and_type_2_takes_no_truncates() {
        assert_eq!(
            parse(MINIMAL).expect("valid file").silver.scd_type,
            ScdType::One
        );
        let two = MINIMAL.replace("keys = [\"id\"]", "keys = [\"id\"]\nstored_as_scd_type = 2");
        assert_eq!(
            parse(&two).expect("valid file").silver.scd_type,
            ScdType::Two
        );
        let three = two.replace("stored_as_scd_type = 2", "stored_as_scd_type = 3");
        let err = parse(&three).expect_err("type 3").to_string();
        assert!(
            err.contains("silver.stored_as_scd_type") && err.contains("3 is not 1 or 2"),
            "{err}"
        );
        let truncating = two.replace(
            "stored_as_scd_type = 2",
            "stored_as_scd_type = 2\napply_as_truncates = \"op = 't'\"",
        );
        let err = parse(&truncating).expect_err("SCD 2 truncates").to_string();
        assert!(err.contains("SCD type 1 only"), "{err}");
    }

    #[test]
    fn history_is_tracked_on_chosen_columns_of_scd_type_2_only() {
        let two = MINIMAL.replace("keys = [\"id\"]", "keys = [\"id\"]\nstored_as_scd_type = 2");
        assert_eq!(
            parse(&two).expect("valid file").silver.track_history,
            ColumnSelection::AllExcept(Vec::new())
        );
        let tracked = two.replace(
            "stored_as_scd_type = 2",
            "stored_as_scd_type = 2\ntrack_history_column_list = [\"price\"]",
        );
        assert_eq!(
            parse(&tracked).expect("valid file").silver.track_history,
            ColumnSelection::Only(vec!["price".into()])
        );
        let both = tracked.replace(
            "track_history_column_list",
            "track_history_except_column_list = [\"op_ts\"]\ntrack_history_column_list",
        );
        let err = parse(&both).expect_err("both lists").to_string();
        assert!(err.contains("not both") && err.contains("line"), "{err}");
        let type_one = tracked.replace("stored_as_scd_type = 2\n", "");
        let err = parse(&type_one).expect_err("SCD 1").to_string();
        assert!(err.contains("stored_as_scd_type = 2 only"), "{err}");
    }

    #[test]
    fn bad_slot_name_is_rejected() {
        let text = MINIMAL.replace(
            "table_include_list =",
            "slot_name = \"Bad-Slot\"\ntable_include_list =",
        );
        let err = parse(&text).expect_err("bad slot").to_string();
        assert!(err.contains("source.slot_name"), "{err}");
    }

    #[test]
    fn source_defaults_are_debeziums() {
        let p = parse(MINIMAL).expect("valid file");
        assert_eq!(p.source.snapshot_mode, SnapshotMode::Initial);
        assert_eq!(
            p.source.publication_autocreate_mode,
            PublicationAutocreateMode::AllTables
        );
        assert_eq!(p.source.decimal_handling_mode, DecimalHandlingMode::Precise);
        assert_eq!(p.source.time_precision_mode, TimePrecisionMode::Adaptive);
        assert_eq!(p.source.binary_handling_mode, BinaryHandlingMode::Bytes);
        assert!(p.source.tombstones_on_delete);
        assert_eq!(p.source.heartbeat_interval_ms, 0);
        assert_eq!(p.kafka.topic_creation.partitions, 1);
        assert_eq!(p.kafka.topic_creation.cleanup_policy, None);
    }

    #[test]
    fn topic_creation_settings_are_read() {
        let text = MINIMAL.replace(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            "bootstrap_servers = \"127.0.0.1:9092\"\n[kafka.topic_creation]\npartitions = 3\ncleanup_policy = \"compact\"\ncompression_type = \"lz4\"",
        );
        let p = parse(&text).expect("valid file");
        assert_eq!(p.kafka.topic_creation.partitions, 3);
        assert_eq!(
            p.kafka.topic_creation.cleanup_policy.as_deref(),
            Some("compact")
        );
        assert_eq!(
            p.kafka.topic_creation.compression_type.as_deref(),
            Some("lz4")
        );
    }

    #[test]
    fn an_invalid_table_pattern_is_named_with_its_line() {
        let text = MINIMAL.replace(
            "[\"public.onlineshop\"]\n\n[kafka]",
            "[\"public.(online\"]\n\n[kafka]",
        );
        let err = parse(&text).expect_err("bad regex").to_string();
        assert!(err.contains("source.table_include_list"), "{err}");
        assert!(err.contains("public.(online"), "{err}");
        assert!(err.contains(":7:"), "{err}");
    }

    #[test]
    fn an_unknown_snapshot_mode_is_rejected() {
        let text = MINIMAL.replace(
            "table_include_list =",
            "snapshot_mode = \"sometimes\"\ntable_include_list =",
        );
        let err = parse(&text).expect_err("bad mode").to_string();
        assert!(err.contains("sometimes"), "{err}");
        assert!(err.contains("initial_only"), "{err}");
    }

    #[test]
    fn a_heartbeat_query_without_an_interval_is_rejected() {
        let text = MINIMAL.replace(
            "table_include_list =",
            "heartbeat_action_query = \"UPDATE hb SET ts = now()\"\ntable_include_list =",
        );
        let err = parse(&text).expect_err("query never runs").to_string();
        assert!(err.contains("heartbeat_interval_ms"), "{err}");
    }
}
