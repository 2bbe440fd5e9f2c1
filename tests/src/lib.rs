//! Fixtures for weir's integration tests: the shared PostgreSQL and broker that `scripts/services`
//! starts, a fresh database, slot, topic prefix and table folder per test, and comparisons of the
//! lakehouse tables with the source.

pub mod onlineshop;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};
use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::SinkExt;
use tokio_postgres::{Client, NoTls};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `weir` binary of this workspace's build (`scripts/test` builds it before the tests run): the
/// dev profile's, or `WEIR_PROFILE`'s (`release` for `WEIR_BENCH_PROFILE=release scripts/bench`).
pub fn weir_binary() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let profile = std::env::var("WEIR_PROFILE").unwrap_or_else(|_| "debug".into());
    let binary = target.join(&profile).join("weir");
    if !binary.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p weir` (scripts/test does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Runs the `weir` binary with `args` and extra environment `env` (logging at `warn`), as a user
/// would, and returns what it printed and how it exited.
pub async fn run_weir(args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    Ok(tokio::process::Command::new(weir_binary()?)
        .args(args)
        .env("WEIR_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .await?)
}

/// [`run_weir`], failing with its output unless it succeeds; returns its standard output.
pub async fn weir_ok(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = run_weir(args, env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "weir {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Retries `check` every 200 ms until it succeeds or `within` passes; returns its last error.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {within:?}")));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// Addresses of the shared services, from the environment or `target/services/env`.
pub struct Services {
    pub pg_port: String,
    pub kafka: String,
}

impl Services {
    pub fn get() -> Result<Self> {
        let mut pg_port = std::env::var("WEIR_PG_PORT").ok();
        let mut kafka = std::env::var("WEIR_KAFKA_BOOTSTRAP").ok();
        if pg_port.is_none() || kafka.is_none() {
            let env_file = repo_root().join("target/services/env");
            let text = std::fs::read_to_string(&env_file).with_context(|| {
                format!(
                    "no services: run `scripts/services up` (read {})",
                    env_file.display()
                )
            })?;
            for line in text.lines() {
                let line = line.trim_start_matches("export ");
                if let Some(v) = line.strip_prefix("WEIR_PG_PORT=") {
                    pg_port.get_or_insert(v.to_owned());
                }
                if let Some(v) = line.strip_prefix("WEIR_KAFKA_BOOTSTRAP=") {
                    kafka.get_or_insert(v.to_owned());
                }
            }
        }
        match (pg_port, kafka) {
            (Some(pg_port), Some(kafka)) => Ok(Self { pg_port, kafka }),
            _ => bail!(
                "WEIR_PG_PORT and WEIR_KAFKA_BOOTSTRAP are not set; run `scripts/services up`"
            ),
        }
    }

    pub fn pg_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port)
    }
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's private world: database, slot, topics, consumer group and lakehouse folder.
pub struct TestPipeline {
    pub name: String,
    pub services: Services,
    pub dir: tempfile::TempDir,
    pub db: Client,
}

impl TestPipeline {
    /// Creates database `<test>_<pid>_<n>` with the onlineshop table, empty.
    pub async fn new(test: &str) -> Result<Self> {
        let services = Services::get()?;
        let name = format!(
            "{test}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin = connect(&services.pg_url("postgres")).await?;
        // Slots left by earlier runs of this test would hold WAL back for as long as the cluster lives.
        admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE NOT active AND slot_name ~ $1 AND slot_name NOT LIKE $2",
                &[
                    // This test's slots only: `expectations` must not reach `expectations_fail`'s.
                    &format!("^{test}_[0-9]+_[0-9]+$"),
                    &format!("{test}\\_{}\\_%", std::process::id()),
                ],
            )
            .await
            .context("dropping slots of earlier runs")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .context("creating the test database")?;
        let db = connect(&services.pg_url(&name)).await?;
        let schema = std::fs::read_to_string(repo_root().join("pipelines/onlineshop/schema.sql"))?;
        db.batch_execute(&schema)
            .await
            .context("creating the onlineshop table")?;
        Ok(Self {
            name,
            services,
            dir: tempfile::tempdir()?,
            db,
        })
    }

    /// Inserts generated onlineshop rows with ids `first..=last` (after the sample's 1,305).
    pub async fn insert_ids(&self, first: i64, last: i64) -> Result<()> {
        self.db
            .batch_execute(&format!(
                "INSERT INTO onlineshop (id, transactionno, date, productno, productname, price, quantity, customerno, country)
                 SELECT id, '59' || id, '2019-12-10', '2' || (id % 7), 'Product ' || (id % 7), 1.25 * (id % 5 + 1),
                        id % 9 + 1, '1' || id, 'Norway'
                 FROM generate_series({first}, {last}) AS id"
            ))
            .await?;
        Ok(())
    }

    /// Loads the sample data set (1,305 rows) the way the quickstart does.
    pub async fn load_sample(&self) -> Result<u64> {
        let csv = std::fs::read(repo_root().join("pipelines/onlineshop/onlineshop-sample.csv"))?;
        self.db.batch_execute("SET datestyle = 'ISO, MDY'").await?;
        let sink = self
            .db
            .copy_in(
                "COPY onlineshop (transactionno, date, productno, productname, price, quantity, customerno, country) \
                 FROM STDIN WITH (FORMAT csv, HEADER true)",
            )
            .await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(csv)).await?;
        Ok(sink.finish().await?)
    }

    /// Where [`Self::pipeline`] writes the pipeline file.
    pub fn pipeline_path(&self) -> PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    /// Writes this test's pipeline file (the onlineshop pipeline, renamed) and parses it.
    pub fn pipeline(&self) -> Result<weir::config::Pipeline> {
        self.pipeline_with(|text| text)
    }

    /// [`Self::pipeline`] with the landing zone and every table in `store` instead of local folders.
    pub fn pipeline_in(&self, store: ObjectStore) -> Result<weir::config::Pipeline> {
        let local_lake = self.dir.path().join("lakehouse").display().to_string();
        let remote_lake = format!("{}/{}", store.root(), self.name);
        self.pipeline_with(|text| text.replace(&local_lake, &remote_lake))
    }

    /// Whether a process is streaming from this test's replication slot.
    pub async fn slot_is_streaming(&self) -> Result<bool> {
        Ok(self
            .db
            .query_one(
                "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&self.name],
            )
            .await?
            .get(0))
    }

    /// Like [`Self::pipeline`], with `edit` applied to the file's text first.
    pub fn pipeline_with(
        &self,
        edit: impl FnOnce(String) -> String,
    ) -> Result<weir::config::Pipeline> {
        let guests = repo_root().join("guest-examples/target/wasm32-wasip2/release");
        let lake = self.dir.path().join("lakehouse");
        let text = format!(
            r#"
[pipeline]
name = "{name}"

[source]
connection = "{url}"
slot_name = "{name}"
publication_name = "{name}"
publication_autocreate_mode = "filtered"
table_include_list = ["public\\.onlineshop"]
decimal_handling_mode = "string"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{name}"

[landing]
location = "{lake}/landing-zone"

[bronze]
source_table = "public.onlineshop"
component = "{guests}/bronze_cleanup.wasm"
table = "{lake}/bronze/onlineshop"

[silver]
component = "{guests}/silver_dedup.wasm"
table = "{lake}/silver/onlineshop"
keys = ["id"]
sequence_by = ["commit_lsn", "lsn"]
apply_as_truncates = "op = 't'"

[gold.sales_report]
component = "{guests}/gold_aggregates.wasm"
table = "{lake}/gold/sales_report"
keys = ["productno"]
count_column = "order_lines"

[gold.daily_revenue_by_country]
component = "{guests}/gold_aggregates.wasm"
table = "{lake}/gold/daily_revenue_by_country"
keys = ["date", "country"]
count_column = "order_lines"
config = {{ group_by = ["date", "country"] }}
"#,
            name = self.name,
            url = self.services.pg_url(&self.name),
            kafka = self.services.kafka,
            lake = lake.display(),
            guests = guests.display(),
        );
        let path = self.pipeline_path();
        std::fs::write(&path, edit(text))?;
        Ok(weir::config::Pipeline::load(&path)?)
    }
}

/// A pipeline file's text made fit for tests that kill weir processes:
/// - a killed process's landing consumer leaves its group after 6 s instead of Kafka's default 45 s,
///   so the partitions it held go to a live process soon;
/// - one record per producer batch, because the test broker (tansu 0.6) answers a fetch that
///   starts inside a record batch with nothing until the next batch, where Kafka returns the batch
///   holding the offset; a landing consumer resuming from a committed offset inside a batch would
///   otherwise skip the rest of it on tansu;
/// - a rebalance timeout (`max.poll.interval.ms`) of 30 s instead of 5 minutes: after a member
///   leaves, tansu 0.6 keeps the group forming until that timeout runs out, even with no member
///   left to wait for, so a restarted landing process got nothing for 5 minutes (landing polls
///   all the time, well within 30 s).
pub fn killable(text: String) -> String {
    text.replace(
        "[landing]",
        "[kafka.options]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"30000\"\n\"batch.num.messages\" = \"1\"\n\n[landing]",
    )
}

/// A `weir run` process of a test, its standard error in a log file of the test's folder; killed
/// when dropped.
pub struct RunningWeir {
    pub child: tokio::process::Child,
    log_path: PathBuf,
}

impl RunningWeir {
    /// `weir run <the test's pipeline file> <extra>`, logging to `<name>.log`, with `env` added.
    pub fn start(
        t: &TestPipeline,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log_path = t.dir.path().join(format!("{name}.log"));
        let child = tokio::process::Command::new(weir_binary()?)
            .arg("run")
            .arg(t.pipeline_path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log_path })
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGINT, then the time it took to exit 0 (at most 60 s).
    pub async fn interrupt(&mut self) -> Result<std::time::Duration> {
        let pid = self.child.id().context("weir exited early")?;
        let started = std::time::Instant::now();
        let signalled = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        anyhow::ensure!(signalled.success(), "could not signal weir");
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), self.child.wait())
            .await
            .with_context(|| format!("no exit within 60 s of SIGINT\n{}", self.log()))??;
        anyhow::ensure!(
            status.success(),
            "weir exited with {status}\n{}",
            self.log()
        );
        Ok(started.elapsed())
    }
}

/// One record of a change topic: its key and value as JSON (`None` for a tombstone's value).
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<serde_json::Value>,
    pub value: Option<serde_json::Value>,
}

/// Every record of `topic` (all partitions, in offset order per partition), read to its current end.
pub fn read_topic(kafka: &str, topic: &str) -> Result<Vec<TopicRecord>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set(
            "group.id",
            format!("weir-tests-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let timeout = std::time::Duration::from_secs(30);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut out = Vec::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        // tansu 0.6 reports the last batch's base offset as the high watermark, so past it, read
        // on until the partition has nothing more to give.
        if high <= low {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut next = low;
        let mut idle_polls = 0;
        loop {
            if std::time::Instant::now() > deadline {
                bail!("reading {topic}/{partition}: stuck at offset {next} of {high}");
            }
            let Some(message) = consumer.poll(std::time::Duration::from_millis(500)) else {
                idle_polls += 1;
                if next >= high && idle_polls >= 2 {
                    break;
                }
                continue;
            };
            idle_polls = 0;
            let message = message?;
            let json = |bytes: Option<&[u8]>| -> Result<Option<serde_json::Value>> {
                Ok(match bytes {
                    Some(b) => Some(serde_json::from_slice(b)?),
                    None => None,
                })
            };
            out.push(TopicRecord {
                partition,
                offset: message.offset(),
                key: json(message.key())?,
                value: json(message.payload())?,
            });
            next = message.offset() + 1;
        }
    }
    Ok(out)
}

/// Rows as text, for comparing tables across systems.
pub fn rows_as_text(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Rows of a PostgreSQL query as text (every column must be cast to text in the query).
pub async fn pg_rows(db: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let rows = db
        .query(sql, &[])
        .await
        .with_context(|| format!("running {sql}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect()
        })
        .collect())
}

/// An object store emulator started by `scripts/services`, as tests reach it.
#[derive(Debug, Clone, Copy)]
pub enum ObjectStore {
    /// Azure Blob Storage (Azurite), `az://weir/…`.
    Azure,
    /// S3 (moto), `s3://weir/…`.
    S3,
}

impl ObjectStore {
    /// The URL of the tests' container or bucket.
    pub fn root(self) -> &'static str {
        match self {
            Self::Azure => "az://weir",
            Self::S3 => "s3://weir",
        }
    }

    /// The environment a user would set for weir to reach the store: the emulator's settings.
    pub fn env(self) -> Result<Vec<(&'static str, String)>> {
        let service = |variable: &str| {
            std::env::var(variable).with_context(|| {
                format!("{variable} is unset: run under scripts/test (scripts/services up)")
            })
        };
        Ok(match self {
            Self::Azure => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                (
                    "AZURITE_BLOB_STORAGE_URL",
                    service("WEIR_AZURITE_BLOB_URL")?,
                ),
            ],
            Self::S3 => vec![
                ("AWS_ENDPOINT_URL", service("WEIR_S3_ENDPOINT")?),
                ("AWS_ALLOW_HTTP", "true".into()),
                ("AWS_ACCESS_KEY_ID", "weir".into()),
                ("AWS_SECRET_ACCESS_KEY", "weir".into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
        })
    }
}

/// Where a test reads a pipeline's tables: in this process, or through `weir query` run with an
/// object store's settings in its environment, as a user passes credentials.
pub enum Tables<'a> {
    InProcess(&'a weir::config::Pipeline),
    Cli {
        file: &'a str,
        env: &'a [(&'a str, &'a str)],
    },
}

impl Tables<'_> {
    /// The rows of `sql` as text (cast every column to VARCHAR in the query; nulls are `NULL`).
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        match self {
            Self::InProcess(pipeline) => {
                rows_as_text(&weir::lakehouse::query(pipeline, sql).await?)
            }
            Self::Cli { file, env } => {
                let printed = weir_ok(&["query", file, sql, "--format", "json"], env).await?;
                printed
                    .lines()
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| {
                        let row: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(line)
                                .with_context(|| format!("`weir query` printed {line:?}"))?;
                        Ok(row
                            .values()
                            .map(|v| match v {
                                serde_json::Value::Null => "NULL".to_owned(),
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect())
                    })
                    .collect()
            }
        }
    }
}

/// Silver must equal `SELECT * FROM onlineshop`, row for row.
pub async fn assert_silver_equals_source(
    t: &TestPipeline,
    pipeline: &weir::config::Pipeline,
) -> Result<usize> {
    assert_silver_equals_source_in(t, &Tables::InProcess(pipeline)).await
}

/// [`assert_silver_equals_source`], reading silver through `tables`.
pub async fn assert_silver_equals_source_in(
    t: &TestPipeline,
    tables: &Tables<'_>,
) -> Result<usize> {
    let silver = tables.rows(
        "SELECT CAST(id AS VARCHAR) AS id_text, transactionno, CAST(date AS VARCHAR) AS date_text, productno, \
         productname, CAST(price AS VARCHAR) AS price_text, CAST(quantity AS VARCHAR) AS quantity_text, \
         customerno, country FROM silver ORDER BY id",
    )
    .await?;
    let source = pg_rows(
        &t.db,
        "SELECT id::text, transactionno, date::text, productno, productname, price::text, quantity::text, \
         customerno, country FROM onlineshop ORDER BY onlineshop.id",
    )
    .await?;
    assert_same_rows("silver", &silver, "source", &source)?;
    Ok(source.len())
}

/// Gold must equal the same GROUP BY computed by PostgreSQL.
pub async fn assert_gold_equals_group_by(
    t: &TestPipeline,
    pipeline: &weir::config::Pipeline,
) -> Result<usize> {
    assert_gold_equals_group_by_in(t, &Tables::InProcess(pipeline)).await
}

/// [`assert_gold_equals_group_by`], reading gold through `tables`.
pub async fn assert_gold_equals_group_by_in(
    t: &TestPipeline,
    tables: &Tables<'_>,
) -> Result<usize> {
    let gold = tables.rows(
        "SELECT productno, CAST(total_quantity_sold AS VARCHAR) AS q, CAST(total_sales_value AS VARCHAR) AS s, \
         CAST(order_lines AS VARCHAR) AS n FROM gold_sales_report ORDER BY productno",
    )
    .await?;
    let source = pg_rows(
        &t.db,
        "SELECT productno, sum(quantity)::text, sum(price * quantity)::text, count(*)::text \
         FROM onlineshop GROUP BY productno ORDER BY productno COLLATE \"C\"",
    )
    .await?;
    assert_same_rows("gold", &gold, "PostgreSQL GROUP BY", &source)?;

    let daily = tables
        .rows(
            "SELECT CAST(date AS VARCHAR) AS d, country, CAST(total_sales_value AS VARCHAR) AS s, \
         CAST(order_lines AS VARCHAR) AS n FROM gold_daily_revenue_by_country ORDER BY d, country",
        )
        .await?;
    let daily_source = pg_rows(
        &t.db,
        "SELECT date::text AS d, country, sum(price * quantity)::text, count(*)::text \
         FROM onlineshop GROUP BY date, country ORDER BY d, country COLLATE \"C\"",
    )
    .await?;
    assert_same_rows(
        "gold daily revenue",
        &daily,
        "PostgreSQL GROUP BY",
        &daily_source,
    )?;
    Ok(source.len())
}

fn assert_same_rows(
    left_name: &str,
    left: &[Vec<String>],
    right_name: &str,
    right: &[Vec<String>],
) -> Result<()> {
    if left == right {
        return Ok(());
    }
    // Every difference counted, not only the first: one lost change looks like a lag, many a pattern.
    let (l, r): (BTreeSet<&Vec<String>>, BTreeSet<&Vec<String>>) =
        (left.iter().collect(), right.iter().collect());
    let only =
        |a: &BTreeSet<&Vec<String>>, b: &BTreeSet<&Vec<String>>| -> (usize, Vec<Vec<String>>) {
            let rows: Vec<&&Vec<String>> = a.difference(b).collect();
            (
                rows.len(),
                rows.iter().take(5).map(|r| (**r).clone()).collect(),
            )
        };
    let ((left_only, left_first), (right_only, right_first)) = (only(&l, &r), only(&r, &l));
    bail!(
        "{left_name} ({} rows) differs from {right_name} ({} rows): {left_only} rows only in \
         {left_name}, first {left_first:?}; {right_only} rows only in {right_name}, first {right_first:?}",
        left.len(),
        right.len()
    )
}

/// Silver's data files as (smallest id, largest id, rows), from their Delta statistics, by
/// smallest id.
pub async fn silver_files(pipeline: &weir::config::Pipeline) -> Result<Vec<(i64, i64, i64)>> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let table = open_silver(pipeline).await?;
    let files = table.snapshot()?.add_actions_table(true)?;
    let column = |name: &str| -> Result<arrow::array::Int64Array> {
        let values = files
            .column_by_name(name)
            .with_context(|| format!("silver's file statistics have no `{name}`"))?;
        Ok(
            arrow::compute::cast(values, &arrow::datatypes::DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone(),
        )
    };
    let (min, max, rows) = (column("min.id")?, column("max.id")?, column("num_records")?);
    let mut out: Vec<_> = (0..files.num_rows())
        .map(|i| (min.value(i), max.value(i), rows.value(i)))
        .collect();
    out.sort();
    Ok(out)
}

/// The silver rows each MERGE after `version` wrote (inserted, updated, deleted and copied),
/// from the metrics in its commit.
pub async fn silver_merge_rows_since(
    pipeline: &weir::config::Pipeline,
    version: u64,
) -> Result<Vec<u64>> {
    let table = open_silver(pipeline).await?;
    let commits: Vec<_> = futures::TryStreamExt::try_collect(table.history(None)).await?;
    commits
        .into_iter()
        .filter(|c| {
            c.operation.as_deref() == Some("MERGE") && c.read_version.is_some_and(|v| v >= version)
        })
        .map(|c| {
            let metrics = c
                .info
                .get("operationMetrics")
                .context("a MERGE commit without metrics")?;
            [
                "num_target_rows_inserted",
                "num_target_rows_updated",
                "num_target_rows_deleted",
                "num_target_rows_copied",
            ]
            .iter()
            .map(|m| {
                metrics[m]
                    .as_u64()
                    .with_context(|| format!("no {m} in {metrics}"))
            })
            .sum()
        })
        .collect()
}

/// Silver's current version.
pub async fn silver_version(pipeline: &weir::config::Pipeline) -> Result<u64> {
    let table = open_silver(pipeline).await?;
    table.version().context("silver has no version")
}

/// Checks that silver's files hold the onlineshop key and sequence columns (distinct values) without
/// dictionaries, which would only cost each rewrite a hash of every value, and text with them.
pub async fn assert_silver_keys_without_dictionaries(
    pipeline: &weir::config::Pipeline,
) -> Result<()> {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let table = open_silver(pipeline).await?;
    let files: Vec<String> = table.get_file_uris()?.collect();
    ensure!(!files.is_empty(), "silver has no files");
    for uri in files {
        let path = uri.strip_prefix("file://").unwrap_or(&uri).to_owned();
        let reader = SerializedFileReader::new(
            std::fs::File::open(&path).with_context(|| format!("opening {path}"))?,
        )?;
        let metadata = reader.metadata();
        let schema = metadata.file_metadata().schema_descr();
        for (i, column) in metadata.row_group(0).columns().iter().enumerate() {
            let name = schema.column(i).name().to_owned();
            let dictionary = column.dictionary_page_offset().is_some();
            match name.as_str() {
                "id" | "commit_lsn" | "lsn" => {
                    ensure!(!dictionary, "{path}: `{name}` has a dictionary")
                }
                "productname" => ensure!(dictionary, "{path}: `{name}` lost its dictionary"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Silver's Delta table at its latest version.
async fn open_silver(pipeline: &weir::config::Pipeline) -> Result<deltalake::DeltaTable> {
    let url = deltalake::ensure_table_uri(&pipeline.silver.layer.table)?;
    Ok(deltalake::DeltaTable::try_from_url(url).await?)
}
