//! Capture throughput next to `pg_recvlogical`, landing throughput next to a consumer that only
//! reads the topic, and snapshot throughput next to `COPY … TO STDOUT`, on the same data in one run
//! (see `scripts/bench`); then one pass of the layers over the landed changes.
//!
//! The workload is 1,000,000 changes in 1,000-row transactions: 600,000 inserts, 300,000 updates
//! and 100,000 deletes of onlineshop-like rows. `pg_recvlogical` reads them through pgoutput into
//! /dev/null; weir reads the same WAL on its own slot and produces every change to Kafka as a
//! Debezium event, waiting for the broker's acknowledgement, which is what a pipeline pays.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use weir_tests::TestPipeline;

const INSERTS: i64 = 600_000;
const UPDATES: i64 = 300_000;
const DELETES: i64 = 100_000;
const TX_ROWS: i64 = 1_000;

pub async fn run() -> Result<()> {
    let t = TestPipeline::new("bench").await?;
    t.db.batch_execute(
        "CREATE SCHEMA bench;
         CREATE TABLE bench.onlineshop (id int PRIMARY KEY, transactionno text, date date, productno text,
           productname text, price numeric(10,2), quantity int, customerno text, country text);",
    )
    .await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "table_include_list = [\"public\\\\.onlineshop\"]",
            "table_include_list = [\"bench\\\\.onlineshop\"]\nsnapshot_mode = \"never\"",
        )
        .replace(
            "source_table = \"public.onlineshop\"",
            "source_table = \"bench.onlineshop\"",
        )
    })?;
    let stop = CancellationToken::new();
    weir::source::run(&pipeline, true, &stop).await?; // creates weir's slot: streaming starts here
    let recvlogical_slot = format!("{}_recvlogical", t.name);
    pg_recvlogical(
        &t,
        &[
            "--create-slot",
            "--plugin",
            "pgoutput",
            "--slot",
            &recvlogical_slot,
        ],
    )?;

    println!(
        "generating {} changes in {TX_ROWS}-row transactions…",
        INSERTS + UPDATES + DELETES
    );
    let started = Instant::now();
    t.db.batch_execute(&format!(
        "DO $$ BEGIN
           FOR b IN 0..{inserts_tx} LOOP
             INSERT INTO bench.onlineshop
               SELECT g, (536000 + g / 7)::text, DATE '2019-12-09' - (g % 365), (20000 + g % 3000)::text,
                      'Product number ' || (g % 3000), (g % 5000) / 100.0 + 0.5, 1 + g % 24,
                      (12000 + g % 4000)::text, 'United Kingdom'
               FROM generate_series(b * {TX_ROWS} + 1, (b + 1) * {TX_ROWS}) g;
             COMMIT;
           END LOOP;
           FOR b IN 0..{updates_tx} LOOP
             UPDATE bench.onlineshop SET quantity = quantity + 1 WHERE id BETWEEN b * {TX_ROWS} + 1 AND (b + 1) * {TX_ROWS};
             COMMIT;
           END LOOP;
           FOR b IN {deletes_from}..{deletes_to} LOOP
             DELETE FROM bench.onlineshop WHERE id BETWEEN b * {TX_ROWS} + 1 AND (b + 1) * {TX_ROWS};
             COMMIT;
           END LOOP;
         END $$;",
        inserts_tx = INSERTS / TX_ROWS - 1,
        updates_tx = UPDATES / TX_ROWS - 1,
        deletes_from = UPDATES / TX_ROWS,
        deletes_to = (UPDATES + DELETES) / TX_ROWS - 1,
    ))
    .await?;
    let end_lsn: String =
        t.db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
    println!(
        "  done in {:.1} s (WAL end {end_lsn})",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    pg_recvlogical(
        &t,
        &[
            "--start",
            "--slot",
            &recvlogical_slot,
            "--endpos",
            &end_lsn,
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={}", t.name),
            "-f",
            "/dev/null",
        ],
    )?;
    let recvlogical_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let report = weir::source::run(&pipeline, true, &stop).await?;
    let weir_secs = started.elapsed().as_secs_f64();
    let changes = report.changes as f64;
    let expected = (INSERTS + UPDATES + DELETES) as f64;
    if (changes - expected).abs() > 0.5 {
        bail!("weir captured {changes} changes, expected {expected}");
    }

    // Snapshot: the 500,000 remaining rows, next to COPY of the same table.
    let started = Instant::now();
    let copy = t.db.copy_out("COPY bench.onlineshop TO STDOUT").await?;
    futures::pin_mut!(copy);
    let mut copied_bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        copied_bytes += chunk?.len();
    }
    let copy_secs = started.elapsed().as_secs_f64();
    let rows: i64 =
        t.db.query_one("SELECT count(*) FROM bench.onlineshop", &[])
            .await?
            .get(0);
    // The same snapshot of a table a tenth the size first: peak memory must not follow size.
    t.db.batch_execute(&format!(
        "CREATE TABLE bench.small AS SELECT * FROM bench.onlineshop ORDER BY id LIMIT {};
         ALTER TABLE bench.small ADD PRIMARY KEY (id);",
        rows / 10
    ))
    .await?;
    let (small_rows, _, small_peak_kib) = snapshot_run(&t, "small", &stop).await?;
    let (snapshot_rows, snapshot_secs, peak_kib) = snapshot_run(&t, "onlineshop", &stop).await?;
    if snapshot_rows != u64::try_from(rows)? {
        bail!("snapshot sent {snapshot_rows} rows of {rows}");
    }

    // Landing (after the snapshots, whose peak RSS it would raise): the topic's events into
    // Parquet change files, next to a consumer that only reads them.
    let started = Instant::now();
    let landing = weir::landing::run(&pipeline, true, &stop).await?;
    let landing_secs = started.elapsed().as_secs_f64();
    if landing.events != report.changes as usize {
        bail!(
            "landing wrote {} events of {}",
            landing.events,
            report.changes
        );
    }
    let records = landing.events + landing.tombstones;
    let topic = pipeline.topic_for(&pipeline.bronze.source_table);
    let started = Instant::now();
    let read_bytes = read_only(&t.services.kafka, &topic, records)?;
    let read_secs = started.elapsed().as_secs_f64();

    let recvlogical_rate = expected / recvlogical_secs;
    let weir_rate = changes / weir_secs;
    let copy_rate = rows as f64 / copy_secs;
    let snapshot_rate = rows as f64 / snapshot_secs;
    println!(
        "\ncapture of {expected} changes (600k inserts, 300k updates, 100k deletes; 1,000-row transactions)"
    );
    println!(
        "  pg_recvlogical (pgoutput → /dev/null)      {recvlogical_secs:7.2} s  {recvlogical_rate:>10.0} changes/s"
    );
    println!(
        "  weir (Debezium JSON → Kafka, acknowledged)  {weir_secs:7.2} s  {weir_rate:>10.0} changes/s"
    );
    println!(
        "  ratio weir / pg_recvlogical                 {:.2}",
        weir_rate / recvlogical_rate
    );
    println!("snapshot of {rows} rows");
    println!(
        "  COPY … TO STDOUT ({} MB)                  {copy_secs:7.2} s  {copy_rate:>10.0} rows/s",
        copied_bytes >> 20
    );
    println!(
        "  weir snapshot (→ Kafka, acknowledged)       {snapshot_secs:7.2} s  {snapshot_rate:>10.0} rows/s"
    );
    println!(
        "  ratio weir / COPY                           {:.2}",
        snapshot_rate / copy_rate
    );
    println!(
        "  peak RSS during the snapshot                {} MiB",
        peak_kib / 1024
    );
    println!(
        "  peak RSS snapshotting {small_rows} rows instead  {} MiB (memory does not follow table size)",
        small_peak_kib / 1024
    );
    let mb = |bytes: usize, secs: f64| bytes as f64 / 1e6 / secs;
    println!(
        "landing of the topic's {records} records ({} events, {} tombstones; {} MB of JSON)",
        landing.events,
        landing.tombstones,
        landing.event_bytes / 1_000_000
    );
    println!(
        "  a consumer that only reads them             {read_secs:7.2} s  {:>10.0} records/s  {:6.1} MB/s",
        records as f64 / read_secs,
        mb(read_bytes, read_secs)
    );
    println!(
        "  weir landing (→ {} Parquet files, {} MB)     {landing_secs:7.2} s  {:>10.0} events/s   {:6.1} MB/s",
        landing.files,
        landing.file_bytes / 1_000_000,
        landing.events as f64 / landing_secs,
        mb(landing.event_bytes, landing_secs)
    );
    println!(
        "  ratio weir / read only                      {:.2} (the pass includes its 0.5 s idle check at the end)",
        read_secs / landing_secs
    );

    // The layers: bronze, silver (APPLY CHANGES) and both gold tables over the landed changes.
    let started = Instant::now();
    let layers =
        weir::pipeline::run_stages_triggered(&pipeline, &[weir::pipeline::Stage::Layers]).await?;
    let layers_secs = started.elapsed().as_secs_f64();
    let rows_in = |name: &str| {
        layers
            .layers
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, r)| r.rows_in)
    };
    println!(
        "layers over the {} landed events, one pass (bronze {} rows in, silver {}, gold {} each)",
        landing.events,
        rows_in("bronze"),
        rows_in("silver"),
        rows_in("gold.sales_report")
    );
    println!(
        "  bronze → silver → 2 gold tables             {layers_secs:7.2} s  {:>10.0} changes/s",
        landing.events as f64 / layers_secs
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "goals (issue 3): capture ≥ 0.8× pg_recvlogical and ≥ 100,000 changes/s: {}; snapshot ≥ 250,000 rows/s: {}",
        verdict(weir_rate >= 0.8 * recvlogical_rate && weir_rate >= 100_000.0),
        verdict(snapshot_rate >= 250_000.0)
    );
    Ok(())
}

fn pg_recvlogical(t: &TestPipeline, args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_recvlogical")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &t.services.pg_port,
            "-U",
            "postgres",
            "-d",
            &t.name,
        ])
        .args(args)
        .status()
        .context("running pg_recvlogical")?;
    if !status.success() {
        bail!("pg_recvlogical {args:?} failed: {status}");
    }
    Ok(())
}

/// Snapshots `bench.<table>` on a slot of its own (`initial_only`), measuring this process's peak
/// RSS during it alone. Returns rows, seconds and peak KiB.
pub async fn snapshot_run(
    t: &TestPipeline,
    table: &str,
    stop: &CancellationToken,
) -> Result<(u64, f64, u64)> {
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            "table_include_list = [\"public\\\\.onlineshop\"]",
            &format!(
                "table_include_list = [\"bench\\\\.{table}\"]\nsnapshot_mode = \"initial_only\""
            ),
        )
        .replace(
            &format!("slot_name = \"{}\"", t.name),
            &format!("slot_name = \"{}_{table}\"", t.name),
        )
        .replace(
            &format!("topic_prefix = \"{}\"", t.name),
            &format!("topic_prefix = \"{}_{table}\"", t.name),
        )
    })?;
    // Writing 5 to clear_refs resets the peak RSS the kernel reports as VmHWM.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let started = Instant::now();
    let report = weir::source::run(&pipeline, true, stop).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok((report.snapshot_rows, secs, peak_rss_kib()?))
}

pub fn peak_rss_kib() -> Result<u64> {
    peak_rss_kib_of("self")
}

/// Peak resident memory of process `pid` (or `self`) so far, in KiB.
pub fn peak_rss_kib_of(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// Reads `records` records of `topic` from the start with a plain consumer, doing nothing with
/// them: the floor under landing's cost. Returns the bytes of their values.
fn read_only(kafka: &str, topic: &str, records: usize) -> Result<usize> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set(
            "group.id",
            format!("weir-bench-read-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    let (mut read, mut bytes) = (0, 0);
    while read < records {
        if Instant::now() > deadline {
            bail!("reading {topic}: {read} records of {records} after 10 minutes");
        }
        if let Some(message) = consumer.poll(std::time::Duration::from_millis(500)) {
            bytes += message?.payload().map_or(0, <[u8]>::len);
            read += 1;
        }
    }
    Ok(bytes)
}
