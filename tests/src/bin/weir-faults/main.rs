//! The fault-injection suite (`scripts/faults`): while a workload changes the onlineshop table,
//! weir runs as three supervised processes (capture, landing, layers) with its lakehouse on S3,
//! and faults are injected at random moments:
//!
//! - `kill -9` of each stage's process (the supervisor starts it again, as systemd would);
//! - a crash and restart of the broker (tansu on its sqlite storage) and of PostgreSQL;
//! - the object store stalling, then refusing, every request for a while;
//! - a bronze component that traps on some batches, deployed for a while and rolled back.
//!
//! Then, with the faults over and the workload stopped, weir must catch up to: silver equal to the
//! source table, gold equal to PostgreSQL's GROUP BY, every committed change in the topic (checked
//! against a second, `test_decoding` slot), no offset in two landing files, and every change event
//! of the topic in bronze exactly once. It prints each fault as it injects it, what the processes
//! died of, and each check.
//!
//! `--short` (CI) injects each fault once in a minute of workload; the default (long form) injects
//! random faults for `--minutes`.

mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use weir_tests::onlineshop::{self, Random};
use weir_tests::{
    Tables, TestPipeline, assert_gold_equals_group_by_in, assert_silver_equals_source_in, killable,
};

use proxy::{Mode, Proxy};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Injects faults into a running weir pipeline and checks that nothing is lost")]
struct Args {
    /// Each fault once, in about a minute of workload (what CI runs).
    #[arg(long)]
    short: bool,
    /// How long the long form injects faults.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rows in the table before weir starts (its snapshot).
    #[arg(long)]
    rows: Option<u64>,
    /// Workload changes per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Injects only these faults (kill-capture, kill-landing, kill-layers, broker-crash,
    /// postgres-crash, store-stall, store-down, trapping-component).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(Stage),
    BrokerCrash,
    PostgresCrash,
    StoreStall,
    StoreDown,
    TrappingComponent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Capture,
    Landing,
    Layers,
}

const STAGES: [Stage; 3] = [Stage::Capture, Stage::Landing, Stage::Layers];
const FAULTS: [Fault; 8] = [
    Fault::Kill(Stage::Capture),
    Fault::Kill(Stage::Landing),
    Fault::Kill(Stage::Layers),
    Fault::BrokerCrash,
    Fault::PostgresCrash,
    Fault::StoreStall,
    Fault::StoreDown,
    Fault::TrappingComponent,
];

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Kill(stage) => format!("kill-{}", stage.name()),
            Fault::BrokerCrash => "broker-crash".into(),
            Fault::PostgresCrash => "postgres-crash".into(),
            Fault::StoreStall => "store-stall".into(),
            Fault::StoreDown => "store-down".into(),
            Fault::TrappingComponent => "trapping-component".into(),
        }
    }
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Landing => "landing",
            Stage::Layers => "layers",
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("off"))
        .init();
    let (rows, rate, run_for) = if args.short {
        (
            args.rows.unwrap_or(5_000),
            args.rate.unwrap_or(100.0),
            Duration::from_secs(60),
        )
    } else {
        (
            args.rows.unwrap_or(100_000),
            args.rate.unwrap_or(300.0),
            Duration::from_secs(args.minutes * 60),
        )
    };
    let started = Instant::now();
    let say = |what: String| println!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());

    let proxy = Proxy::start(
        env_addr("WEIR_FAULTS_PROXY")?,
        env_addr("WEIR_S3_ENDPOINT")?,
    )
    .await?;
    let mut t = TestPipeline::new("faults").await?;
    let copied = onlineshop::load(&t.db, "onlineshop", rows, args.seed).await?;
    say(format!(
        "loaded {copied} generated rows (seed {})",
        args.seed
    ));

    let run_dir = weir_tests::repo_root().join("target/faults").join(&t.name);
    std::fs::create_dir_all(&run_dir)?;
    let guests = weir_tests::repo_root().join("guest-examples/target/wasm32-wasip2/release");
    let good_bronze = guests.join("bronze_cleanup.wasm");
    let flaky_bronze = guests.join("flaky_bronze.wasm");
    let deployed_bronze = run_dir.join("bronze.wasm");
    std::fs::copy(&good_bronze, &deployed_bronze)
        .with_context(|| format!("copying {}", good_bronze.display()))?;
    let local_lake = t.dir.path().join("lakehouse").display().to_string();
    let pipeline = t.pipeline_with(|text| {
        // Files every 2 s under load: many files, many boundaries for a kill to fall between.
        killable(text)
            .replace("[landing]\n", "[landing]\nmax_file_age_ms = 2000\n")
            // Silver's passes in several bounded MERGEs (about four over the loaded rows), so
            // that kills fall between a pass's MERGEs too.
            .replace(
                "[silver]\n",
                &format!("[silver]\nmax_rows_per_merge = {}\n", rows / 4),
            )
            .replace(
                "[kafka.options]\n",
                &match std::env::var("WEIR_FAULTS_KAFKA_DEBUG") {
                    Ok(debug) => format!("[kafka.options]\n\"debug\" = \"{debug}\"\n"),
                    Err(_) => "[kafka.options]\n".into(),
                },
            )
            .replace(&local_lake, &format!("s3://weir/{}", t.name))
            .replace(
                &good_bronze.display().to_string(),
                &deployed_bronze.display().to_string(),
            )
    })?;
    let file = t.pipeline_path();

    let stop = CancellationToken::new();
    let processes: Vec<Supervised> = STAGES
        .iter()
        .map(|&stage| Supervised::start(stage, &file, &run_dir, stop.clone()))
        .collect::<Result<_>>()?;
    let process = |stage: Stage| &processes[STAGES.iter().position(|s| *s == stage).unwrap_or(0)];

    // The reference for "every committed change": a slot created after weir's, so that everything
    // it decodes came after weir's snapshot and must be in the topic as a change event.
    weir_tests::eventually(Duration::from_secs(120), || async {
        let exists: bool =
            t.db.query_one(
                "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
                &[&t.name],
            )
            .await?
            .get(0);
        ensure!(exists, "weir has not created its slot yet");
        Ok(())
    })
    .await?;
    let reference_slot = format!("{}_reference", t.name);
    t.db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&reference_slot],
    )
    .await?;
    say(format!(
        "weir is running (logs in {}); workload: {rate} changes/s for {} s",
        run_dir.display(),
        run_for.as_secs()
    ));

    let workload_stop = CancellationToken::new();
    let url = t.services.pg_url(&t.name);
    let workload = {
        let (url, stop) = (url.clone(), workload_stop.clone());
        tokio::spawn(async move {
            onlineshop::drive(
                || weir_tests::connect(&url),
                "onlineshop",
                rate,
                run_for,
                args.seed,
                &stop,
            )
            .await
        })
    };

    let faults: Vec<Fault> = FAULTS
        .into_iter()
        .filter(|f| args.only.is_empty() || args.only.contains(&f.name()))
        .collect();
    ensure!(!faults.is_empty(), "--only names no fault: {:?}", args.only);
    let mut random = Random::new(args.seed);
    let mut schedule: Vec<Fault> = if args.short {
        let mut all = faults.clone();
        // A seeded shuffle: every fault once, in an order the seed replays.
        for i in (1..all.len()).rev() {
            all.swap(i, random.below(i as u64 + 1) as usize);
        }
        all
    } else {
        Vec::new()
    };
    let mut injected = Vec::new();
    let deadline = Instant::now() + run_for - Duration::from_secs(10);
    while args.short || Instant::now() < deadline {
        let fault = if args.short {
            match schedule.pop() {
                Some(fault) => fault,
                None => break,
            }
        } else {
            *random.pick(&faults)
        };
        let gap = if args.short {
            2 + random.below(3)
        } else {
            3 + random.below(15)
        };
        tokio::time::sleep(Duration::from_secs(gap)).await;
        let hold = Duration::from_secs(if args.short {
            3 + random.below(4)
        } else {
            5 + random.below(10)
        });
        let what = match fault {
            Fault::Kill(stage) => {
                let pid = process(stage).kill().await?;
                format!("kill -9 {} (pid {pid})", stage.name())
            }
            Fault::BrokerCrash => {
                // tansu 0.6 restores a group's members after a restart without ever expiring
                // those gone: a restart while a dead landing member awaits expiry leaves the
                // group stuck with it (Kafka expires it). So crash it once the group has settled.
                process(Stage::Landing)
                    .settled(Duration::from_secs(10))
                    .await;
                services(&["crash-restart", "broker"])?;
                "broker killed (-9) and restarted on its sqlite storage".into()
            }
            Fault::PostgresCrash => {
                services(&["crash-restart", "postgres"])?;
                "PostgreSQL crashed (immediate shutdown) and restarted".into()
            }
            Fault::StoreStall => {
                proxy.set(Mode::Stalled);
                tokio::time::sleep(hold).await;
                proxy.set(Mode::Open);
                format!(
                    "object store stalled every request for {} s",
                    hold.as_secs()
                )
            }
            Fault::StoreDown => {
                proxy.set(Mode::Down);
                tokio::time::sleep(hold).await;
                proxy.set(Mode::Open);
                format!(
                    "object store refused every connection for {} s",
                    hold.as_secs()
                )
            }
            Fault::TrappingComponent => {
                std::fs::copy(&flaky_bronze, &deployed_bronze)?;
                process(Stage::Layers).kill().await?;
                tokio::time::sleep(hold).await;
                std::fs::copy(&good_bronze, &deployed_bronze)?;
                process(Stage::Layers).kill().await?;
                format!(
                    "bronze component trapping on odd-sized batches deployed for {} s, then rolled back",
                    hold.as_secs()
                )
            }
        };
        say(format!("injected: {what}"));
        injected.push(what);
    }
    let workload = workload.await??;
    say(format!("workload done: {workload}"));

    say("waiting for weir to catch up".into());
    // PostgreSQL may have restarted under this connection.
    t.db = weir_tests::connect(&url).await?;
    let tables = Tables::InProcess(&pipeline);
    let caught_up = weir_tests::eventually(Duration::from_secs(180), || async {
        assert_silver_equals_source_in(&t, &tables).await?;
        assert_gold_equals_group_by_in(&t, &tables).await
    })
    .await;
    let mut failures = Vec::new();
    match &caught_up {
        Ok(_) => say("silver equals the source table; gold equals PostgreSQL's GROUP BY".into()),
        Err(e) => failures.push(format!("silver or gold differ from PostgreSQL: {e:#}")),
    }
    let topic = pipeline.topic_for("public.onlineshop");
    let records = weir_tests::read_topic(&pipeline.kafka.bootstrap_servers, &topic)?;
    match topic_holds_every_change(&t, &topic, &records, &reference_slot).await {
        Ok(n) => say(format!(
            "the topic holds all {n} changes committed since weir's snapshot"
        )),
        Err(e) => failures.push(format!("topic: {e:#}")),
    }
    match each_offset_landed_once(&pipeline, &records).await {
        Ok((files, offsets)) => say(format!(
            "{files} landing files, no offset in two; bronze holds each of the topic's {offsets} offsets once"
        )),
        Err(e) => failures.push(format!("landing: {e:#}")),
    }

    stop.cancel();
    for p in &processes {
        p.stopped().await;
    }
    t.db.execute("SELECT pg_drop_replication_slot($1)", &[&reference_slot])
        .await
        .ok();
    println!("\nfaults injected ({}):", injected.len());
    for what in &injected {
        println!("  - {what}");
    }
    println!("process exits (the supervisor restarted each):");
    for p in &processes {
        p.summarize();
    }
    if failures.is_empty() {
        println!(
            "\nPASS: nothing lost, nothing duplicated ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        for f in &failures {
            println!("\nFAIL: {f}");
        }
        bail!(
            "{} checks failed; logs in {}",
            failures.len(),
            run_dir.display()
        )
    }
}

fn env_addr(variable: &str) -> Result<SocketAddr> {
    let value = std::env::var(variable)
        .with_context(|| format!("{variable} is unset: run through scripts/faults"))?;
    let host = value.trim_start_matches("http://").trim_end_matches('/');
    host.parse()
        .with_context(|| format!("{variable}={value} is not host:port"))
}

/// `scripts/services <args>`, on this run's services (`WEIR_SERVICES`, inherited).
fn services(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new(weir_tests::repo_root().join("scripts/services"))
        .args(args)
        .status()?;
    ensure!(status.success(), "scripts/services {args:?} failed");
    Ok(())
}

/// A stage's `weir run` process, started again whenever it exits, as a service manager would.
struct Supervised {
    stage: Stage,
    /// The running process and when it started.
    pid: Arc<Mutex<Option<(u32, Instant)>>>,
    exits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    fn start(stage: Stage, file: &Path, dir: &Path, stop: CancellationToken) -> Result<Self> {
        let log = dir.join(format!("{}.log", stage.name()));
        let weir = weir_tests::weir_binary()?;
        let (pid, exits) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(Vec::new())));
        let (file, pid_slot, exit_list) = (file.to_owned(), pid.clone(), exits.clone());
        let task = tokio::spawn(async move {
            while !stop.is_cancelled() {
                let from = std::fs::metadata(&log).map_or(0, |m| m.len());
                let Ok(log_file) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                else {
                    return;
                };
                let Ok(mut child) = tokio::process::Command::new(&weir)
                    .arg("run")
                    .arg(&file)
                    .args(["--stages", stage.name()])
                    .env(
                        "WEIR_LOG",
                        std::env::var("WEIR_FAULTS_LOG").unwrap_or_else(|_| "info".into()),
                    )
                    .stdout(std::process::Stdio::null())
                    .stderr(log_file)
                    .kill_on_drop(true)
                    .spawn()
                else {
                    return;
                };
                *lock(&pid_slot) = child.id().map(|pid| (pid, Instant::now()));
                let status = tokio::select! {
                    status = child.wait() => status,
                    () = stop.cancelled() => {
                        if let Some(pid) = child.id() {
                            signal("-INT", pid);
                        }
                        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                            Ok(status) => status,
                            Err(_) => { let _ = child.kill().await; child.wait().await }
                        }
                    }
                };
                *lock(&pid_slot) = None;
                if stop.is_cancelled() {
                    break;
                }
                let exit = match status {
                    // Killed by the suite: whatever it logged last is not why it stopped.
                    Ok(s) if s.signal() == Some(9) => "killed (SIGKILL)".to_owned(),
                    Ok(s) => format!("{s}: {}", last_error(&log, from)),
                    Err(e) => e.to_string(),
                };
                lock(&exit_list).push(exit);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(Self {
            stage,
            pid,
            exits,
            task,
        })
    }

    /// `kill -9` of the running process (waiting for the supervisor's restart if it is between
    /// two); returns its pid.
    async fn kill(&self) -> Result<u32> {
        for _ in 0..100 {
            let pid = *lock(&self.pid);
            if let Some((pid, _)) = pid {
                signal("-KILL", pid);
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} has not been restarted in 10 s", self.stage.name())
    }

    /// Waits until the process has run for `long` without a restart.
    async fn settled(&self, long: Duration) {
        while !lock(&self.pid).is_some_and(|(_, at)| at.elapsed() >= long) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stopped(&self) {
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn summarize(&self) {
        let exits = lock(&self.exits);
        println!("  {}: {} exits", self.stage.name(), exits.len());
        let mut seen = BTreeSet::new();
        for exit in exits.iter() {
            if seen.insert(exit.clone()) {
                println!("    - {exit}");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn signal(which: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status();
}

/// The last error a process logged after byte `from` of its log, shortened.
fn last_error(log: &PathBuf, from: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("ERROR") || l.starts_with("Error") || l.starts_with("error"))
        .unwrap_or("(no error logged)");
    let line = line.split(" ERROR ").last().unwrap_or(line);
    line.chars().take(240).collect()
}

/// Every change the reference slot decoded (insert, update, delete of an id at an LSN) is in the
/// topic as an event with the same operation, id and LSN. Returns how many were checked.
async fn topic_holds_every_change(
    t: &TestPipeline,
    topic: &str,
    records: &[weir_tests::TopicRecord],
    reference_slot: &str,
) -> Result<usize> {
    let change = regex::Regex::new(
        r"^table public\.onlineshop: (INSERT|UPDATE|DELETE): id\[integer\]:(\d+)",
    )?;
    let mut committed = BTreeSet::new();
    for row in
        t.db.query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, NULL)",
            &[&reference_slot],
        )
        .await?
    {
        let data: String = row.get(1);
        if let Some(c) = change.captures(&data) {
            let op = match &c[1] {
                "INSERT" => "c",
                "UPDATE" => "u",
                _ => "d",
            };
            committed.insert((lsn(row.get(0))?, op.to_owned(), c[2].parse::<i64>()?));
        }
    }
    let mut in_topic = BTreeSet::new();
    for record in records.iter().filter_map(|r| r.value.as_ref()) {
        let op = record["op"].as_str().unwrap_or_default().to_owned();
        let image = if op == "d" {
            &record["before"]
        } else {
            &record["after"]
        };
        if let (Some(lsn), Some(id)) = (record["source"]["lsn"].as_u64(), image["id"].as_i64()) {
            in_topic.insert((lsn, op, id));
        }
    }
    let missing: Vec<_> = committed.difference(&in_topic).collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} committed changes are not in {topic} ({} events); first: {:?}",
            missing.len(),
            committed.len(),
            records.len(),
            &missing[..missing.len().min(5)]
        );
    }
    Ok(committed.len())
}

/// `X/Y` as PostgreSQL writes an LSN, as the number Debezium's `source.lsn` holds.
fn lsn(text: String) -> Result<u64> {
    let (high, low) = text.split_once('/').context("an LSN has a slash")?;
    Ok((u64::from_str_radix(high, 16)? << 32) | u64::from_str_radix(low, 16)?)
}

/// No Kafka offset in two landing files, and every offset of the topic's change events in bronze
/// exactly once. Returns the number of files and of offsets in bronze.
async fn each_offset_landed_once(
    pipeline: &weir::config::Pipeline,
    records: &[weir_tests::TopicRecord],
) -> Result<(usize, usize)> {
    let (store, root) = weir::storage::open(&pipeline.landing.location)?;
    let files = weir::landing::list_files(&*store, &root, "public.onlineshop").await?;
    let mut last_by_partition: BTreeMap<i32, &weir::landing::LandingFile> = BTreeMap::new();
    for file in &files {
        if let Some(previous) = last_by_partition.get(&file.partition)
            && file.first_offset <= previous.last_offset
        {
            bail!(
                "landing files {} and {} both hold offsets {}-{} of partition {}",
                previous.path,
                file.path,
                file.first_offset,
                previous.last_offset.min(file.last_offset),
                file.partition
            );
        }
        last_by_partition.insert(file.partition, file);
    }
    // One read of bronze's offsets serves both halves: none twice, none missing.
    let in_bronze = weir::lakehouse::query(
        pipeline,
        "SELECT CAST(kafka_partition AS VARCHAR), CAST(kafka_offset AS VARCHAR) FROM bronze",
    )
    .await?;
    let mut times: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for row in weir_tests::rows_as_text(&in_bronze)? {
        *times.entry((row[0].parse()?, row[1].parse()?)).or_default() += 1;
    }
    let twice = times.values().filter(|&&n| n > 1).count();
    ensure!(twice == 0, "{twice} offsets are in bronze more than once");
    // A gap between landing files, or a batch bronze skipped, loses changes no other check names.
    let missing: Vec<String> = records
        .iter()
        .filter_map(|r| Some((r, r.value.as_ref()?)))
        .filter(|(r, _)| !times.contains_key(&(r.partition, r.offset)))
        .map(|(r, value)| {
            let key = r.key.as_ref().map(ToString::to_string).unwrap_or_default();
            format!(
                "{}/{} ({} of {key} at LSN {})",
                r.partition, r.offset, value["op"], value["source"]["lsn"]
            )
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "{} of the topic's change events are not in bronze; first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let offsets = times.len();
    Ok((files.len(), offsets))
}
