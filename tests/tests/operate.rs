//! Operating a running pipeline: Prometheus metrics, `/health`, `/status` and `weir status`, the
//! pipeline page as a browser shows it, a timed graceful shutdown, and the last error of a stopped
//! pipeline.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_tests::{
    RunningWeir, TestPipeline, assert_gold_equals_group_by, assert_silver_equals_source,
    eventually, weir_binary, weir_ok,
};

/// The test pipeline's stages, as status names them.
const STAGES: [&str; 6] = [
    "capture",
    "landing",
    "bronze",
    "silver",
    "gold.sales_report",
    "gold.daily_revenue_by_country",
];

/// A port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The test pipeline with the metrics port on `port`, a drop rule in silver, and no maintenance
/// (so versions move only with data).
fn observed(text: String, port: u16, stalled_after_s: u64) -> String {
    format!(
        r#"{text}
[[silver.expectations]]
name = "known_customer"
expect = "customerno IS NOT NULL"
on_violation = "drop"

[maintenance]
interval_s = 0

[metrics]
listen = "127.0.0.1:{port}"
stalled_after_s = {stalled_after_s}
"#
    )
}

async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await?;
    let code = response.status().as_u16();
    Ok((code, response.text().await?))
}

/// The scraped samples, by metric name and labels (`name{k="v",…}`, labels sorted).
async fn scrape(port: u16) -> Result<BTreeMap<String, f64>> {
    let (code, text) = get(port, "/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("parsing /metrics")?;
    let mut out = BTreeMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let labels: Vec<String> = labels
            .into_iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    Ok(out)
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    samples.get(key).copied().with_context(|| {
        let near: Vec<&String> = samples
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap_or(key)))
            .collect();
        format!("no sample {key}; samples of that name: {near:?}")
    })
}

fn stage<'a>(status: &'a Value, name: &str) -> Result<&'a Value> {
    status["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["stage"] == name))
        .with_context(|| format!("no stage {name} in {status:#}"))
}

/// The pipeline page after its script ran, as headless Chromium renders it.
async fn page_dom(port: u16) -> Result<String> {
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .await
        .context("running chromium (scripts/install-deps installs it)")?;
    ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each stage card of the page: its `data-*` attributes.
fn page_stages(dom: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let card = regex::Regex::new(r#"<div class="stage[^"]*"((?:\s+data-[a-z-]+="[^"]*")+)>"#)?;
    let attribute = regex::Regex::new(r#"data-([a-z-]+)="([^"]*)""#)?;
    let mut out = BTreeMap::new();
    for c in card.captures_iter(dom) {
        let attributes: BTreeMap<String, String> = attribute
            .captures_iter(&c[1])
            .map(|a| (a[1].to_owned(), a[2].to_owned()))
            .collect();
        let name = attributes.get("stage").cloned().unwrap_or_default();
        out.insert(name, attributes);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_serves_metrics_health_status_and_its_page() -> Result<()> {
    let t = TestPipeline::new("operate").await?;
    t.load_sample().await?;
    // One row silver's rule drops.
    t.db.execute("UPDATE onlineshop SET customerno = NULL WHERE id = 3", &[])
        .await?;
    let port = free_port()?;
    let pipeline = t.pipeline_with(|text| observed(text, port, 60))?;
    let mut weir = RunningWeir::start(&t, "weir", &[], &[])?;
    // The snapshot through silver first (its rule dropping one row), so that the changes below
    // are streamed and applied on top.
    eventually(Duration::from_secs(120), || async {
        let m = scrape(port).await?;
        let captured = sample(&m, r#"weir_rows_in_total{stage="capture"}"#)?;
        ensure!(captured == 1305.0, "{captured} rows captured");
        let dropped = sample(&m, r#"weir_dropped_rows_total{stage="silver"}"#)?;
        ensure!(dropped == 1.0, "{dropped} rows dropped");
        Ok(())
    })
    .await
    .with_context(|| weir.log())?;
    t.db.batch_execute(
        "UPDATE onlineshop SET quantity = 7 WHERE id = 10;
         DELETE FROM onlineshop WHERE id = 3;
         DELETE FROM onlineshop WHERE id BETWEEN 20 AND 24;",
    )
    .await?;
    eventually(Duration::from_secs(120), || async {
        let rows = assert_silver_equals_source(&t, &pipeline).await?;
        ensure!(rows == 1305 - 6, "silver has {rows} rows");
        assert_gold_equals_group_by(&t, &pipeline).await?;
        // The status poller has seen every stage caught up.
        let (code, body) = get(port, "/health").await?;
        ensure!(code == 200, "/health answered {code}: {body}");
        // Reading positions (as the poller does every few seconds) sets the lag gauges.
        get(port, "/status").await?;
        Ok(())
    })
    .await
    .with_context(|| weir.log())?;

    // Prometheus metrics, per stage, parsed as a scraper would.
    let m = scrape(port).await?;
    ensure!(sample(&m, r#"weir_rows_in_total{stage="capture"}"#)? == (1305 + 7) as f64);
    ensure!(sample(&m, r#"weir_rows_out_total{stage="landing"}"#)? >= (1305 + 7) as f64);
    ensure!(sample(&m, r#"weir_rows_in_total{stage="bronze"}"#)? >= (1305 + 7) as f64);
    ensure!(
        sample(&m, r#"weir_dropped_rows_total{stage="silver"}"#)? == 1.0,
        "{m:#?}"
    );
    ensure!(
        sample(
            &m,
            r#"weir_expectation_rows_total{action="drop",result="failed",rule="known_customer"}"#
        )? == 1.0
    );
    ensure!(sample(&m, r#"weir_batches_total{stage="capture"}"#)? >= 1.0);
    ensure!(sample(&m, r#"weir_landing_files_total{table="public.onlineshop"}"#)? >= 2.0);
    ensure!(sample(&m, r#"weir_landing_bytes_total{table="public.onlineshop"}"#)? > 0.0);
    ensure!(sample(&m, r#"weir_delta_commits_total{table="silver"}"#)? >= 2.0);
    ensure!(sample(&m, r#"weir_delta_table_version{table="silver"}"#)? >= 1.0);
    let topic = format!("{}.public.onlineshop", t.name);
    ensure!(
        sample(
            &m,
            &format!(r#"weir_kafka_consumer_lag{{partition="0",topic="{topic}"}}"#)
        )
        .with_context(|| format!("{m:#?}"))?
            == 0.0
    );
    ensure!(
        sample(
            &m,
            &format!(r#"weir_replication_slot_lag_bytes{{slot="{}"}}"#, t.name)
        )? >= 0.0
    );
    ensure!(
        sample(
            &m,
            &format!(r#"weir_capture_behind_source_seconds{{slot="{}"}}"#, t.name)
        )? >= 0.0
    );
    let bronze_component = pipeline.bronze.layer.component.display().to_string();
    ensure!(
        sample(
            &m,
            &format!(r#"weir_wasm_call_seconds{{component="{bronze_component}",stage="bronze"}}"#)
        )? >= 1.0,
        "no bronze component calls counted"
    );
    for stage in ["bronze", "silver"] {
        ensure!(
            sample(
                &m,
                &format!(r#"weir_layer_pass_seconds_count{{stage="{stage}"}}"#)
            )? >= 1.0,
            "no {stage} pass timed"
        );
    }
    ensure!(sample(&m, r#"weir_errors_total{stage="silver"}"#)? == 0.0);

    // `/status` is `weir status --json` plus this process's counters.
    let (_, served) = get(port, "/status").await?;
    let served: Value = serde_json::from_str(&served)?;
    let path = t.pipeline_path().display().to_string();
    let printed: Value = serde_json::from_str(&weir_ok(&["status", &path, "--json"], &[]).await?)?;
    for name in STAGES {
        let (s, p) = (stage(&served, name)?, stage(&printed, name)?);
        for field in ["version", "lag_unit", "reads", "writes", "component"] {
            ensure!(
                s[field] == p[field],
                "{name}.{field}: /status {} vs weir status {}",
                s[field],
                p[field]
            );
        }
        // The slot's lag moves with every other database's WAL in the cluster.
        if name != "capture" {
            ensure!(
                s["lag"] == p["lag"],
                "{name}.lag: {} vs {}",
                s["lag"],
                p["lag"]
            );
            ensure!(p["state"] == "caught up", "{name} is {}", p["state"]);
        }
        ensure!(p["counters"].is_null() && s["counters"].is_object());
    }
    ensure!(stage(&printed, "capture")?["details"]["slot"] == t.name.as_str());
    ensure!(stage(&printed, "capture")?["details"]["active"] == true);

    // The page, once its script has run, shows what status and the metrics say.
    let dom = page_dom(port).await?;
    // To look at it: WEIR_PAGE_SCREENSHOT=/tmp/page.png cargo test -p weir-tests --test operate
    if let Some(path) = std::env::var_os("WEIR_PAGE_SCREENSHOT") {
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
            ])
            .arg("--window-size=1700,700")
            .arg(format!(
                "--screenshot={}",
                std::path::Path::new(&path).display()
            ))
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .await?;
    }
    let cards = page_stages(&dom)?;
    for name in STAGES {
        let card = cards
            .get(name)
            .with_context(|| format!("the page has no {name} card:\n{dom}"))?;
        let s = stage(&printed, name)?;
        if name != "capture" {
            ensure!(card["state"] == "caught up", "{name} card: {card:?}");
            let lag = s["lag"].to_string();
            ensure!(card["lag"] == lag, "{name} lag: {card:?} vs {s}");
        }
        let version = s["version"]
            .as_u64()
            .map(|v| v.to_string())
            .unwrap_or_default();
        ensure!(
            card["version"] == version,
            "{name} version: {card:?} vs {s}"
        );
    }
    let m = scrape(port).await?;
    for name in ["capture", "bronze", "silver"] {
        let rows_out = sample(&m, &format!(r#"weir_rows_out_total{{stage="{name}"}}"#))?;
        ensure!(
            cards[name]["rows-out"] == (rows_out as u64).to_string(),
            "{name}: {:?}",
            cards[name]
        );
    }
    ensure!(cards["silver"]["dropped"] == "1");
    ensure!(dom.contains("bronze_cleanup.wasm") && dom.contains("silver_dedup.wasm"));
    ensure!(dom.contains(&topic), "the page does not name the topic");

    // Graceful shutdown within a bounded time, and the port closes with the process.
    let took = weir.interrupt().await?;
    ensure!(took < Duration::from_secs(30), "SIGINT took {took:?}");
    ensure!(
        get(port, "/health").await.is_err(),
        "the port outlived the process"
    );

    // Stopped: `weir status` still reads every stage's position.
    let table = weir_ok(&["status", &path], &[]).await?;
    for name in STAGES {
        ensure!(table.contains(name), "no {name} row:\n{table}");
    }
    let printed: Value = serde_json::from_str(&weir_ok(&["status", &path, "--json"], &[]).await?)?;
    ensure!(stage(&printed, "capture")?["details"]["active"] == false);
    for name in &STAGES[1..] {
        ensure!(
            stage(&printed, name)?["state"] == "caught up",
            "{name}:\n{table}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_stage_that_is_behind() -> Result<()> {
    let t = TestPipeline::new("operate_behind").await?;
    t.load_sample().await?;
    let port = free_port()?;
    // Heartbeats keep capture's slot moving while other tests write WAL to the same server.
    t.pipeline_with(|text| {
        let beating = text.replace("[source]\n", "[source]\nheartbeat_interval_ms = 200\n");
        observed(beating, port, 3)
    })?;
    // Nothing runs the layers: landing files wait for bronze.
    let mut weir = RunningWeir::start(
        &t,
        "weir-capture-landing",
        &["--stages", "capture,landing"],
        &[],
    )?;
    let body: Value = eventually(Duration::from_secs(90), || async {
        let (code, body) = get(port, "/health").await?;
        ensure!(code == 503, "/health answered {code}: {body}");
        let body: Value = serde_json::from_str(&body)?;
        ensure!(
            body["unhealthy_stages"] == serde_json::json!(["bronze"]),
            "{body}"
        );
        Ok(body)
    })
    .await
    .with_context(|| weir.log())?;
    ensure!(body["healthy"] == false);
    let bronze = body["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == "bronze"))
        .context("no bronze")?;
    ensure!(
        bronze["state"] == "behind" && bronze["lag"].as_i64() >= Some(1),
        "{bronze}"
    );
    ensure!(bronze["lag_unit"] == "landing files");
    weir.interrupt().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pipeline_shows_the_error_that_stopped_it() -> Result<()> {
    let t = TestPipeline::new("operate_error").await?;
    t.load_sample().await?;
    t.pipeline_with(|text| {
        format!(
            "{text}\n[[silver.expectations]]\nname = \"tiny_orders\"\nexpect = \"quantity < 50\"\non_violation = \"fail\"\n"
        )
    })?;
    let path = t.pipeline_path().display().to_string();
    let out = weir_tests::run_weir(&["run", &path, "--triggered"], &[]).await?;
    ensure!(!out.status.success(), "the run should fail on its rule");
    let printed: Value = serde_json::from_str(&weir_ok(&["status", &path, "--json"], &[]).await?)?;
    let silver = stage(&printed, "silver")?;
    let error = silver["last_error"]["message"].as_str().unwrap_or_default();
    ensure!(error.contains("tiny_orders"), "{silver:#}");
    ensure!(
        silver["version"].is_null(),
        "nothing of the batch was committed: {silver:#}"
    );
    ensure!(
        silver["state"] == "lagging" && silver["lag"].as_i64() >= Some(1),
        "{silver:#}"
    );
    ensure!(stage(&printed, "bronze")?["last_error"].is_null());
    let table = weir_ok(&["status", &path], &[]).await?;
    ensure!(table.contains("tiny_orders"), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_shows_a_progress_bar_on_a_terminal_and_log_lines_elsewhere() -> Result<()> {
    let t = TestPipeline::new("operate_progress").await?;
    t.load_sample().await?;
    t.pipeline()?;
    let path = t.pipeline_path().display().to_string();
    // `script` gives weir a terminal; WEIR_LOG=warn leaves the bar alone on it.
    let on_terminal = tokio::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} run {path} --triggered", weir_binary()?.display()),
            "/dev/null",
        ])
        .env("WEIR_LOG", "warn")
        .output()
        .await?;
    let screen = String::from_utf8_lossy(&on_terminal.stdout);
    ensure!(on_terminal.status.success(), "{screen}");
    ensure!(
        screen.contains("snapshot public.onlineshop") && screen.contains("rows"),
        "no progress bar on the terminal:\n{screen}"
    );
    // Not a terminal: log lines with rows, estimate and rate.
    let out = tokio::process::Command::new(weir_binary()?)
        .args(["rebuild", &path, "--layer", "gold.sales_report"])
        .env("WEIR_LOG", "info")
        .output()
        .await?;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("rebuild progress"))
        .with_context(|| format!("no progress line:\n{log}"))?;
    for field in [
        "of=gold.sales_report",
        "rows=",
        "estimate=1305",
        "rows_per_second=",
    ] {
        ensure!(line.contains(field), "{field} missing: {line}");
    }
    ensure!(!log.contains('\u{1b}'), "terminal codes in a log:\n{log}");
    Ok(())
}
