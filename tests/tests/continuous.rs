//! `weir run FILE`: streams until SIGINT, then finishes in-flight work, checkpoints and exits 0.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weir_tests::{
    RunningWeir, TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source,
    eventually, killable, weir_binary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_run_streams_live_changes_and_stops_cleanly_on_sigint() -> Result<()> {
    let t = TestPipeline::new("continuous").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    let mut running = RunningWeir::start(&t, "weir", &[], &[])?;

    // The snapshot arrives in silver while the process keeps running.
    eventually(Duration::from_secs(120), || {
        assert_silver_equals_source(&t, &pipeline)
    })
    .await
    .with_context(|| running.log())?;
    // Which partitions the group handed this process is in its log.
    ensure!(
        running.log().contains(&format!(
            "partitions assigned partitions={}/0",
            pipeline.topic_for("public.onlineshop")
        )),
        "no partition assignment logged:\n{}",
        running.log()
    );

    // Changes made while it runs reach silver and gold without a restart.
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = 1000 WHERE id = 7;
         DELETE FROM onlineshop WHERE id BETWEEN 100 AND 109;
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country)
           VALUES ('581600', '2019-12-10', '85123A', 'Cream Hanging Heart T-Light Holder', 2.55, 12, '17490', 'United Kingdom');",
    )
    .await?;
    let last_change: String =
        t.db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
    eventually(Duration::from_secs(60), || async {
        let rows = assert_silver_equals_source(&t, &pipeline).await?;
        ensure!(rows == 1305 - 10 + 1, "silver has {rows} rows");
        assert_gold_equals_group_by(&t, &pipeline).await
    })
    .await
    .with_context(|| running.log())?;

    // SIGINT: drain, checkpoint, exit 0, leaving the slot confirmed past the changes.
    running.interrupt().await?;
    let confirmed_past_changes: bool = t
        .db
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn AND NOT active FROM pg_replication_slots WHERE slot_name = $2",
            &[&last_change, &t.name],
        )
        .await?
        .get(0);
    ensure!(
        confirmed_past_changes,
        "the slot was not confirmed past the streamed changes\n{}",
        running.log()
    );
    Ok(())
}

/// Exactly one process captures: a second `weir run` on the same pipeline waits while the first
/// holds the replication slot, and takes over when it dies, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capturing_process_waits_and_takes_over_when_the_first_dies() -> Result<()> {
    let t = TestPipeline::new("capture_handover").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline()?;
    let spawn = |name: &str| -> Result<(tokio::process::Child, std::path::PathBuf)> {
        let log_path = t.dir.path().join(format!("{name}.log"));
        let child = tokio::process::Command::new(weir_binary()?)
            .args([
                "run",
                &t.pipeline_path().display().to_string(),
                "--stages",
                "capture",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok((child, log_path))
    };
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let slot_active = || async {
        ensure!(t.slot_is_streaming().await?, "the slot is not streaming");
        Ok(())
    };

    let (mut first, first_log) = spawn("first")?;
    eventually(Duration::from_secs(60), slot_active)
        .await
        .with_context(|| read(&first_log))?;
    let (mut second, second_log) = spawn("second")?;
    eventually(Duration::from_secs(30), || async {
        ensure!(
            read(&second_log).contains("waiting to take over"),
            "not waiting yet"
        );
        Ok(())
    })
    .await
    .with_context(|| read(&second_log))?;
    ensure!(
        second.try_wait()?.is_none(),
        "the second process exited instead of waiting:\n{}",
        read(&second_log)
    );

    // The first dies without a word; changes go on.
    first.kill().await?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = quantity + 1 WHERE id <= 20;
         DELETE FROM onlineshop WHERE id BETWEEN 30 AND 39;",
    )
    .await?;
    // The second captures them: the lakehouse built from the topic equals the source.
    let lakehouse = [
        weir::pipeline::Stage::Landing,
        weir::pipeline::Stage::Layers,
    ];
    eventually(Duration::from_secs(120), || async {
        weir::pipeline::run_stages_triggered(&pipeline, &lakehouse).await?;
        assert_silver_equals_source(&t, &pipeline).await
    })
    .await
    .with_context(|| read(&second_log))?;

    let pid = second.id().context("the second process exited early")?;
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    ensure!(signalled.success(), "could not signal weir");
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait()).await??;
    ensure!(
        status.success(),
        "exited with {status}\n{}",
        read(&second_log)
    );
    Ok(())
}

/// A second SIGTERM exits at once (status 130) even mid-work, and still loses nothing: the next
/// run completes every layer from where progress was recorded.
///
/// Ignored while it fails about one run in four, on the test broker rather than weir: tansu 0.6
/// answers a fetch from an offset inside a record batch with nothing until the next batch (Kafka
/// returns the batch holding it). When the killed process has landed and committed part of the
/// snapshot's batch, the next run's landing resumes mid-batch and tansu skips the batch's rest.
/// (Checked with a plain rdkafka consumer: 100 records in one batch, a fetch from offset 50
/// receives nothing, one from 0 receives all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_loss() -> Result<()> {
    let t = TestPipeline::new("second_signal").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(killable)?;
    let mut running = RunningWeir::start(&t, "weir", &[], &[])?;
    eventually(Duration::from_secs(60), || async {
        ensure!(t.slot_is_streaming().await?, "not capturing yet");
        Ok(())
    })
    .await
    .with_context(|| running.log())?;
    t.db.batch_execute("UPDATE onlineshop SET quantity = quantity + 5 WHERE id % 3 = 0")
        .await?;

    let pid = running.child.id().context("weir exited early")?.to_string();
    for _ in 0..2 {
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        ensure!(signalled.success(), "could not signal weir");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(5), running.child.wait())
        .await
        .with_context(|| {
            format!(
                "weir did not exit within 5 s of the second signal\n{}",
                running.log()
            )
        })??;
    ensure!(
        status.code() == Some(130) || status.success(),
        "exited with {status}\n{}",
        running.log()
    );

    weir::pipeline::run_triggered(&pipeline).await?;
    assert_silver_equals_source(&t, &pipeline).await?;
    assert_gold_equals_group_by(&t, &pipeline).await?;
    Ok(())
}

/// A broker's group can leave landing without a partition while nobody lands the topic (tansu 0.6
/// once did after a kill -9 and a quick restart). Here a member that polls but never commits holds
/// the only partition: landing sees the group's offsets stand still behind the topic's end, leaves
/// and rejoins the group, and lands everything once the partition is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_rejoins_a_group_that_left_it_without_a_partition() -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let t = TestPipeline::new("landing_rejoin").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        killable(text).replace("[landing]\n", "[landing]\nrejoin_stalled_group_s = 2\n")
    })?;
    let topic = pipeline.topic_for("public.onlineshop");
    weir::transport::ensure_topics(&pipeline.kafka, std::slice::from_ref(&topic)).await?;

    // The range assignor gives the partition to the member whose id sorts first, and tansu's
    // member ids start with the client id: "a-…" sorts before weir's "rdkafka-…".
    let squatter: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.kafka.bootstrap_servers)
        .set("group.id", format!("{}-landing", pipeline.kafka.group_id))
        .set("client.id", "a-squatter")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "30000")
        .create()?;
    squatter.subscribe(&[&topic])?;
    let leave = Arc::new(AtomicBool::new(false));
    let (holds_tx, holds_rx) = std::sync::mpsc::channel();
    let squatting = std::thread::spawn({
        let leave = leave.clone();
        move || {
            let mut told = false;
            while !leave.load(Ordering::SeqCst) {
                // Polls, so it stays a member; reads, never commits.
                let _ = squatter.poll(Duration::from_millis(100));
                if !told && squatter.assignment().is_ok_and(|a| a.count() > 0) {
                    told = holds_tx.send(()).is_ok();
                }
            }
            // Dropping it leaves the group.
        }
    });
    tokio::task::spawn_blocking(move || holds_rx.recv_timeout(Duration::from_secs(60)))
        .await?
        .context("the squatting member got no partition")?;

    let mut running = RunningWeir::start(&t, "weir", &[], &[])?;
    // The squatter leaves only once landing's new membership has settled (with nothing: the
    // squatter still holds the partition). Leaving while the group forms is the one case tansu 0.6
    // does not recover from without a restart: it keeps the departed member as the group's leader.
    let rejoined = eventually(Duration::from_secs(90), || async {
        let log = running.log();
        let after_rejoin = log.split_once("leaving and rejoining the group");
        ensure!(
            after_rejoin.is_some_and(|(_, after)| after.contains("partitions assigned")),
            "landing has not rejoined the group and settled in it"
        );
        Ok(())
    })
    .await;
    leave.store(true, Ordering::SeqCst);
    squatting
        .join()
        .map_err(|_| anyhow::anyhow!("the squatting member panicked"))?;
    rejoined.with_context(|| running.log())?;

    // Gold is written after silver's commit: both are awaited.
    eventually(Duration::from_secs(120), || async {
        assert_silver_equals_source(&t, &pipeline).await?;
        assert_gold_equals_group_by(&t, &pipeline).await
    })
    .await
    .with_context(|| running.log())?;
    running.interrupt().await?;
    Ok(())
}
