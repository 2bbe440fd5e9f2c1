//! Secrets never appear in what weir prints: the PostgreSQL password and Kafka's SASL password,
//! in debug logs (text and JSON) of a successful run, in the errors of a failing one, and in
//! `weir status`.

use anyhow::{Result, ensure};
use weir_tests::{TestPipeline, run_weir};

const PG_PASSWORD: &str = "pg-s3cr3t-Pa55";
const KAFKA_PASSWORD: &str = "kafka-s3cr3t-Pa55";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_logs_reports_and_errors() -> Result<()> {
    let t = TestPipeline::new("secrets").await?;
    t.load_sample().await?;
    // The test cluster trusts local connections, so any password gets in.
    let with_password = |text: String| {
        text.replace(
            "postgres://postgres@",
            &format!("postgres://postgres:{PG_PASSWORD}@"),
        )
        .replace(
            "[landing]",
            &format!("[kafka.options]\n\"sasl.password\" = \"{KAFKA_PASSWORD}\"\n\n[landing]"),
        )
    };
    t.pipeline_with(with_password)?;
    let file = t.pipeline_path().display().to_string();
    let debug = [("WEIR_LOG", "debug")];
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let run = run_weir(
            &["--log-format", format, "run", &file, "--triggered"],
            &debug,
        )
        .await?;
        ensure!(
            run.status.success(),
            "the run failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        outputs.push(run);
    }
    // Unreachable PostgreSQL: the error names the connection without its password.
    let port = t.services.pg_port.clone();
    t.pipeline_with(|text| with_password(text).replace(&format!(":{port}/"), ":1/"))?;
    let failed = run_weir(&["run", &file, "--triggered"], &debug).await?;
    ensure!(!failed.status.success(), "a run against port 1 succeeded");
    outputs.push(failed);
    // `weir status`, which shows the error that run stopped on and the unreachable source.
    for args in [vec!["status", &file], vec!["status", &file, "--json"]] {
        let status = run_weir(&args, &debug).await?;
        let printed = String::from_utf8_lossy(&status.stdout).into_owned();
        ensure!(
            status.status.success() && printed.contains("capture"),
            "{printed}"
        );
        outputs.push(status);
    }

    for output in &outputs {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            for secret in [PG_PASSWORD, KAFKA_PASSWORD] {
                ensure!(
                    !text.contains(secret),
                    "`{secret}` printed in:\n{}",
                    text.lines()
                        .filter(|l| l.contains(secret))
                        .take(5)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
    Ok(())
}
