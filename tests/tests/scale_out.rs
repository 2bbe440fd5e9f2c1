//! Several `weir run` processes on one pipeline file share the work: the landing consumer group
//! splits the topic's partitions, the layers race on Delta commits and retry the ones they lose,
//! and exactly one process holds the replication slot. Killing one loses nothing.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weir_tests::{
    RunningWeir, TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source,
    eventually, killable,
};

fn logs(processes: &[RunningWeir]) -> String {
    processes
        .iter()
        .enumerate()
        .map(|(i, p)| format!("--- process {i} ---\n{}", p.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A transaction of changes to the table: updates, inserts and deletes.
async fn change(t: &TestPipeline, round: i32) -> Result<()> {
    t.db.batch_execute(&format!(
        "BEGIN;
         UPDATE onlineshop SET quantity = quantity + {round} WHERE id % 7 = {m};
         INSERT INTO onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country)
           SELECT '59' || g, '2019-12-10', '85123A', 'Cream Hanging Heart T-Light Holder', 2.55, g, '17490', 'Norway'
           FROM generate_series(1, 20) g;
         DELETE FROM onlineshop WHERE id IN (SELECT id FROM onlineshop ORDER BY id LIMIT 5 OFFSET {offset});
         COMMIT;",
        m = round % 7,
        offset = round * 10,
    ))
    .await?;
    Ok(())
}

/// `error` with what each stage holds: bronze's offsets per partition, the topic, the landing files.
async fn diagnosed(
    t: &TestPipeline,
    pipeline: &weir::config::Pipeline,
    error: anyhow::Error,
) -> anyhow::Error {
    let bronze = weir_tests::Tables::InProcess(pipeline)
        .rows(
            "SELECT kafka_partition, count(*), count(DISTINCT kafka_offset), min(kafka_offset), \
             max(kafka_offset) FROM bronze GROUP BY 1 ORDER BY 1",
        )
        .await;
    let resurrected = weir_tests::Tables::InProcess(pipeline)
        .rows(
            "SELECT b.id, b.op, b.commit_lsn, b.lsn, b.kafka_partition, b.kafka_offset, b._landing_file \
             FROM bronze b WHERE b.id IN (SELECT id FROM silver) \
             AND b.id IN (SELECT id FROM bronze WHERE op = 'd') ORDER BY b.id, b.kafka_offset LIMIT 20",
        )
        .await;
    let topic = weir_tests::read_topic(&t.services.kafka, &format!("{}.public.onlineshop", t.name))
        .map(|records| records.len());
    let files = match weir::storage::open(&pipeline.landing.location) {
        Ok((store, root)) => weir::landing::list_files(&*store, &root, "public.onlineshop")
            .await
            .map(|files| {
                files
                    .iter()
                    .map(|f| format!("{}-{}-{}", f.partition, f.first_offset, f.last_offset))
                    .collect::<Vec<_>>()
            })
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    error.context(format!(
        "bronze per partition (rows, distinct offsets, min, max): {bronze:?}\nbronze rows of deleted keys still in silver: {resurrected:#?}\ntopic records: {topic:?}\nlanding files: {files:?}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_the_pipeline_and_one_killed_loses_nothing() -> Result<()> {
    let t = TestPipeline::new("scale_out").await?;
    t.load_sample().await?;
    let pipeline = t.pipeline_with(|text| {
        killable(text).replace(
            "[landing]",
            // Three partitions, so that each process's landing consumer gets one; small files, so
            // that every process lands some.
            "[kafka.topic_creation]\npartitions = 3\n\n[landing]\nmax_rows_per_file = 200",
        )
    })?;
    let mut processes = Vec::new();
    for i in 0..3 {
        let quiet = (
            "WEIR_LOG",
            "warn,weir=info,buoyant_kernel=off,deltalake_core=off",
        );
        processes.push(RunningWeir::start(&t, &format!("weir-{i}"), &[], &[quiet])?);
    }

    // One captures; the other two wait for the slot.
    let waiting = |p: &RunningWeir| p.log().contains("waiting to take over");
    eventually(Duration::from_secs(90), || async {
        ensure!(t.slot_is_streaming().await?, "nobody captures yet");
        let n = processes.iter().filter(|p| waiting(p)).count();
        ensure!(n == 2, "{n} processes wait for the slot");
        Ok(())
    })
    .await
    .with_context(|| logs(&processes))?;
    // Changes over some seconds, while the group settles its members.
    for round in 1..=5 {
        change(&t, round).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let first = eventually(Duration::from_secs(120), || {
        assert_silver_equals_source(&t, &pipeline)
    })
    .await;
    if let Err(e) = first {
        return Err(diagnosed(&t, &pipeline, e).await).with_context(|| logs(&processes));
    }

    // The work was shared: more than one process landed files and committed to the layers.
    let landed = processes
        .iter()
        .filter(|p| p.log().contains("landed change file"))
        .count();
    ensure!(
        landed >= 2,
        "{landed} process(es) landed files\n{}",
        logs(&processes)
    );

    // Kill the capturing process while changes keep coming; another takes the slot over.
    let holder = processes
        .iter()
        .position(|p| !waiting(p))
        .context("no capturing process")?;
    let mut killed = processes.remove(holder);
    killed.child.start_kill()?;
    killed.child.wait().await?;
    for round in 6..=10 {
        change(&t, round).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let second = eventually(Duration::from_secs(180), || async {
        let rows = assert_silver_equals_source(&t, &pipeline).await?;
        ensure!(rows == 1305 + 10 * 20 - 10 * 5, "silver has {rows} rows");
        assert_gold_equals_group_by(&t, &pipeline).await
    })
    .await;
    if let Err(e) = second {
        return Err(diagnosed(&t, &pipeline, e).await)
            .with_context(|| format!("{}\n--- killed ---\n{}", logs(&processes), killed.log()));
    }
    // Bronze took each landed record once, whichever process committed it.
    let bronze = weir_tests::Tables::InProcess(&pipeline)
        .rows("SELECT count(*) = count(DISTINCT (kafka_partition, kafka_offset)) FROM bronze")
        .await?;
    ensure!(
        bronze == vec![vec!["true".to_owned()]],
        "bronze holds a record twice"
    );
    ensure!(t.slot_is_streaming().await?, "nobody took the slot over");
    ensure!(
        processes
            .iter()
            .any(|p| p.log().contains("publication ready")),
        "no survivor started capturing\n{}",
        logs(&processes)
    );

    // Both survivors stop cleanly.
    for p in &mut processes {
        let pid = p.child.id().context("a survivor exited early")?;
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
    }
    for p in &mut processes {
        let status = tokio::time::timeout(Duration::from_secs(60), p.child.wait())
            .await
            .context("a survivor did not stop within 60 s")??;
        ensure!(
            status.success(),
            "a survivor exited with {status}\n{}",
            p.log()
        );
    }
    Ok(())
}
