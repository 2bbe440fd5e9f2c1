//! Capture survives `kill -9`: nothing committed is lost, and the only repeats are events after
//! the last confirmed LSN, identical for the same (`lsn`, key).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_tests::{TestPipeline, TopicRecord, eventually, read_topic, weir_binary};

fn capture_pipeline(t: &TestPipeline, table: &str, source_keys: &str) -> Result<()> {
    t.pipeline_with(|text| {
        text.replace(
            "table_include_list = [\"public\\\\.onlineshop\"]",
            &format!("table_include_list = [\"{table}\"]\n{source_keys}"),
        )
    })?;
    Ok(())
}

fn start_weir(t: &TestPipeline, args: &[&str]) -> Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(t.dir.path().join("weir.log"))?;
    Ok(tokio::process::Command::new(weir_binary()?)
        .arg("run")
        .arg(t.pipeline_path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// `weir run --triggered` to the end: whatever the crashed runs left is caught up.
async fn run_triggered(t: &TestPipeline) -> Result<()> {
    let mut weir = start_weir(t, &["--triggered"])?;
    let status = tokio::time::timeout(Duration::from_secs(300), weir.wait()).await??;
    ensure!(
        status.success(),
        "weir failed after the restart:\n{}",
        log(t)
    );
    Ok(())
}

async fn kill_9(child: &mut tokio::process::Child) -> Result<()> {
    child.start_kill()?; // SIGKILL
    child.wait().await?;
    Ok(())
}

/// Waits until weir's progress record for the test's slot contains `needle`.
async fn wait_for_progress(t: &TestPipeline, needle: &str) -> Result<()> {
    let state = t
        .dir
        .path()
        .join("lakehouse/landing-zone/_weir/source")
        .join(format!("{}.json", t.name));
    eventually(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        ensure!(
            text.contains(needle),
            "progress record does not show {needle} yet: {text}"
        );
        Ok(())
    })
    .await
    .with_context(|| log(t))
}

fn log(t: &TestPipeline) -> String {
    std::fs::read_to_string(t.dir.path().join("weir.log")).unwrap_or_default()
}

/// The number logged as `field=…` on the first log line with `message`.
fn logged_number(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let value = line.split(&format!(" {field}=")).nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn events(t: &TestPipeline, table: &str) -> Result<Vec<Value>> {
    Ok(
        read_topic(&t.services.kafka, &format!("{}.{table}", t.name))?
            .into_iter()
            .filter_map(|r: TopicRecord| r.value)
            .collect(),
    )
}

/// Position of an event in the source's commit order.
fn position(event: &Value) -> (u64, u64) {
    let source = &event["source"];
    (
        source["commit_lsn"].as_u64().unwrap_or(0),
        source["lsn"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_midway_resumes_and_the_topic_converges_to_the_table() -> Result<()> {
    const ROWS: i64 = 200_000;
    const CHUNK: i64 = 2_000;
    let t = TestPipeline::new("crash_snapshot").await?;
    t.db.batch_execute(&format!(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.big (id int PRIMARY KEY, v int);
         INSERT INTO shop.big SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    ))
    .await?;
    capture_pipeline(
        &t,
        "shop\\\\.big",
        &format!("snapshot_fetch_size = {CHUNK}"),
    )?;

    let mut weir = start_weir(&t, &[])?;
    wait_for_progress(&t, "last_key").await?;
    kill_9(&mut weir).await?;
    // Progress is shown as rows done of the planner's estimate, and the rate.
    let progress = log(&t);
    let estimate = logged_number(&progress, "snapshot progress", "estimate")
        .with_context(|| format!("no snapshot progress logged:\n{progress}"))?;
    ensure!(
        estimate > ROWS as u64 / 2 && estimate < ROWS as u64 * 2,
        "estimate {estimate} for {ROWS} rows"
    );
    ensure!(logged_number(&progress, "snapshot progress", "rows").is_some());
    ensure!(logged_number(&progress, "snapshot progress", "rows_per_second").is_some());

    // Changes while weir is down, on both sides of where the snapshot stopped.
    t.db.batch_execute(
        "UPDATE shop.big SET v = 1 WHERE id % 1000 = 0;
         DELETE FROM shop.big WHERE id % 997 = 0;
         INSERT INTO shop.big SELECT g, 2 FROM generate_series(200001, 200100) g;",
    )
    .await?;
    run_triggered(&t).await?;
    ensure!(
        log(&t).contains("resuming the snapshot"),
        "the snapshot started over:\n{}",
        log(&t)
    );

    let events = events(&t, "shop.big")?;
    let reads = events.iter().filter(|e| e["op"] == "r").count() as i64;
    // Repeats are bounded by the chunks in flight at the kill (up to 4 past the recorded progress).
    assert!(
        reads < ROWS + 100 + 5 * CHUNK,
        "{reads} snapshot reads for {ROWS} rows: it did not resume"
    );
    // Applying every event in source order gives the table.
    let mut latest: BTreeMap<i64, ((u64, u64), Value)> = BTreeMap::new();
    for e in &events {
        let image = if e["op"] == "d" {
            &e["before"]
        } else {
            &e["after"]
        };
        let id = image["id"].as_i64().context("an id")?;
        let at = position(e);
        if latest.get(&id).is_none_or(|(seen, _)| *seen <= at) {
            latest.insert(id, (at, e.clone()));
        }
    }
    let derived: BTreeMap<i64, i64> = latest
        .into_iter()
        .filter(|(_, (_, e))| e["op"] != "d")
        .map(|(id, (_, e))| (id, e["after"]["v"].as_i64().unwrap_or(-1)))
        .collect();
    let table: BTreeMap<i64, i64> =
        t.db.query("SELECT id::int8, v::int8 FROM shop.big", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(derived.len(), table.len());
    assert!(
        derived == table,
        "the topic's events do not converge to the table"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_killed_while_streaming_loses_nothing_and_repeats_only_identical_events()
-> Result<()> {
    let t = TestPipeline::new("crash_stream").await?;
    t.db.batch_execute(
        "CREATE SCHEMA shop; CREATE TABLE shop.events (id int PRIMARY KEY, version int);",
    )
    .await?;
    capture_pipeline(
        &t,
        "shop\\\\.events",
        "snapshot_mode = \"never\"\nheartbeat_interval_ms = 200",
    )?;
    let mut weir = start_weir(&t, &[])?;
    // A slot being created is listed before it reaches its consistent point, and commits before
    // that point are not its to stream; weir records the snapshot mode's outcome only afterwards.
    wait_for_progress(&t, "\"snapshot_completed\":true").await?;

    // The workload: every statement its own transaction; what it commits is what must arrive.
    let mut expected: BTreeSet<(String, i64, i64)> = BTreeSet::new();
    for i in 0..3_000_i64 {
        t.db.execute("INSERT INTO shop.events VALUES ($1::int8::int, 0)", &[&i])
            .await?;
        expected.insert(("c".into(), i, 0));
        if i % 3 == 0 && i > 0 {
            t.db.execute(
                "UPDATE shop.events SET version = version + 1 WHERE id = $1::int8::int",
                &[&(i - 1)],
            )
            .await?;
            expected.insert(("u".into(), i - 1, 1));
        }
        if i % 5 == 0 && i > 1 {
            t.db.execute(
                "DELETE FROM shop.events WHERE id = $1::int8::int",
                &[&(i - 2)],
            )
            .await?;
            let version = i64::from((i - 2) % 3 == 2 && i - 2 > 0);
            expected.insert(("d".into(), i - 2, version));
        }
        if i == 1_000 || i == 2_000 {
            kill_9(&mut weir).await?;
            weir = start_weir(&t, &[])?;
        }
    }
    kill_9(&mut weir).await?;
    run_triggered(&t).await?;

    let events = events(&t, "shop.events")?;
    let mut by_position: BTreeMap<((u64, u64), String), Value> = BTreeMap::new();
    let mut seen: BTreeSet<(String, i64, i64)> = BTreeSet::new();
    for e in &events {
        let op = e["op"].as_str().context("an op")?.to_owned();
        let image = if op == "d" { &e["before"] } else { &e["after"] };
        let id = image["id"].as_i64().context("an id")?;
        // REPLICA IDENTITY DEFAULT: a delete's before image holds only the key.
        let version = if op == "d" {
            expected
                .iter()
                .find(|(o, i, _)| o == "d" && *i == id)
                .map_or(-1, |(_, _, v)| *v)
        } else {
            image["version"].as_i64().context("a version")?
        };
        seen.insert((op, id, version));
        let key = (position(e), id.to_string());
        if let Some(earlier) = by_position.insert(key, e.clone()) {
            assert_eq!(
                earlier["after"], e["after"],
                "a repeat differs from the first delivery"
            );
            assert_eq!(earlier["op"], e["op"]);
        }
    }
    // Heartbeats report how much WAL the slot holds back.
    ensure!(
        logged_number(&log(&t), "replication slot lag", "lag_bytes").is_some(),
        "no slot lag reported:\n{}",
        log(&t)
    );
    let missing: Vec<_> = expected.difference(&seen).take(5).collect();
    let unexpected: Vec<_> = seen.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty(),
        "lost {} of {} committed changes, e.g. {missing:?}; {} events in the topic\n{}",
        expected.difference(&seen).count(),
        expected.len(),
        events.len(),
        log(&t)
    );
    assert!(
        unexpected.is_empty(),
        "events that were never committed, e.g. {unexpected:?}"
    );
    Ok(())
}
