//! The process's Prometheus metrics, in one registry served at `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric weir exports. Stage labels are `capture`, `landing`, `bronze`, `silver` and
/// `gold.<name>`; table labels are the same names.
pub struct Metrics {
    registry: Registry,
    /// Records a stage read: WAL changes and snapshot rows, Kafka events, input rows of a layer.
    pub rows_in: IntCounterVec,
    /// Records a stage wrote: Kafka events, landed events, rows committed by a layer.
    pub rows_out: IntCounterVec,
    /// Units of work: transactions captured, landing files written, layer passes with input.
    pub batches: IntCounterVec,
    /// Errors that stopped a stage.
    pub errors: IntCounterVec,
    pub wasm_call_seconds: HistogramVec,
    /// Time of a layer's pass that found input: read, component, commit.
    pub layer_pass_seconds: HistogramVec,
    pub wasm_traps: IntCounterVec,
    /// Rows per silver expectation and result (`passed`, `failed`), with the rule's action.
    pub expectation_rows: IntCounterVec,
    /// Rows silver's expectations dropped.
    pub dropped_rows: IntCounterVec,
    pub slot_lag_bytes: IntGaugeVec,
    /// Like Debezium's MilliSecondsBehindSource: at the last transaction sent, how long after its
    /// commit in PostgreSQL it reached Kafka.
    pub capture_behind_source_seconds: prometheus::GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub landing_files: IntCounterVec,
    pub landing_bytes: IntCounterVec,
    pub delta_commits: IntCounterVec,
    pub delta_version: IntGaugeVec,
    pub delta_conflicts: IntCounterVec,
    /// Work waiting per stage, in the stage's own unit (bytes of WAL, Kafka records, landing
    /// files, Delta versions), as the status poller last saw it.
    pub stage_lag: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let wasm_call_seconds = HistogramVec::new(
        HistogramOpts::new(
            "weir_wasm_call_seconds",
            "Time in a component's transform or aggregate call, per batch",
        )
        .buckets(prometheus::exponential_buckets(0.0005, 4.0, 10).expect("valid buckets")),
        &["stage", "component"],
    )
    .expect("valid histogram");
    r.register(Box::new(wasm_call_seconds.clone()))
        .expect("metric names are unique");
    let layer_pass_seconds = HistogramVec::new(
        HistogramOpts::new(
            "weir_layer_pass_seconds",
            "Time of a layer's pass that found new input: reading it, the component, the commit",
        )
        .buckets(prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
        &["stage"],
    )
    .expect("valid histogram");
    r.register(Box::new(layer_pass_seconds.clone()))
        .expect("metric names are unique");
    let behind = prometheus::GaugeVec::new(
        Opts::new(
            "weir_capture_behind_source_seconds",
            "Seconds between the last captured transaction's commit and its events reaching Kafka",
        ),
        &["slot"],
    )
    .expect("valid gauge");
    r.register(Box::new(behind.clone()))
        .expect("metric names are unique");
    Metrics {
        rows_in: counter(&r, "weir_rows_in_total", "Records a stage read", &["stage"]),
        rows_out: counter(
            &r,
            "weir_rows_out_total",
            "Records a stage wrote",
            &["stage"],
        ),
        batches: counter(
            &r,
            "weir_batches_total",
            "Units of work a stage completed (transactions, files, commits)",
            &["stage"],
        ),
        errors: counter(
            &r,
            "weir_errors_total",
            "Errors that stopped a stage",
            &["stage"],
        ),
        wasm_call_seconds,
        layer_pass_seconds,
        wasm_traps: counter(
            &r,
            "weir_wasm_traps_total",
            "Component calls that trapped (including time and memory limits)",
            &["stage", "component"],
        ),
        expectation_rows: counter(
            &r,
            "weir_expectation_rows_total",
            "Rows checked by a silver expectation, by result",
            &["rule", "action", "result"],
        ),
        dropped_rows: counter(
            &r,
            "weir_dropped_rows_total",
            "Rows a stage dropped because they failed an expectation",
            &["stage"],
        ),
        slot_lag_bytes: gauge(
            &r,
            "weir_replication_slot_lag_bytes",
            "WAL bytes between the server's current position and the slot's confirmed position",
            &["slot"],
        ),
        capture_behind_source_seconds: behind,
        consumer_lag: gauge(
            &r,
            "weir_kafka_consumer_lag",
            "Records in a partition not yet landed (high watermark minus committed offset)",
            &["topic", "partition"],
        ),
        landing_files: counter(
            &r,
            "weir_landing_files_total",
            "Parquet change files written to the landing zone",
            &["table"],
        ),
        landing_bytes: counter(
            &r,
            "weir_landing_bytes_total",
            "Bytes of Parquet change files written to the landing zone",
            &["table"],
        ),
        delta_commits: counter(
            &r,
            "weir_delta_commits_total",
            "Delta commits made by this process",
            &["table"],
        ),
        delta_version: gauge(
            &r,
            "weir_delta_table_version",
            "A Delta table's latest version",
            &["table"],
        ),
        delta_conflicts: counter(
            &r,
            "weir_delta_commit_conflicts_total",
            "Commits lost to another writer and retried",
            &["table"],
        ),
        stage_lag: gauge(
            &r,
            "weir_stage_lag",
            "Work waiting for a stage, in the unit of its `unit` label",
            &["stage", "unit"],
        ),
        registry: r,
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Every metric in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }

    /// A counter's value, for the pipeline page and status (0 if never set).
    pub fn count(vec: &IntCounterVec, labels: &[&str]) -> u64 {
        vec.get_metric_with_label_values(labels)
            .map_or(0, |c| c.get())
    }
}
