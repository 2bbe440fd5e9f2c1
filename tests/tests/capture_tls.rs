//! weir's PostgreSQL sessions over TLS, as managed services require it (RDS `rds.force_ssl`, Azure
//! `require_secure_transport`): libpq's `sslmode` and `sslrootcert` in `source.connection`.

use anyhow::{Context, Result, ensure};
use weir_tests::{TestPipeline, assert_silver_equals_source, connect};

/// The test pipeline, connecting as `tls_only` (whom the test server admits over TLS alone) with
/// `params`.
async fn as_tls_only(t: &TestPipeline, params: &str) -> Result<weir::config::Pipeline> {
    let admin = connect(&t.services.pg_url("postgres")).await?;
    // Both tests create the role; the loser of a race sees a unique violation.
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE tls_only LOGIN SUPERUSER; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .await?;
    let plain = t.services.pg_url(&t.name);
    let with_tls = format!(
        "{}?{params}",
        plain.replace("postgres://postgres@", "postgres://tls_only@")
    );
    t.pipeline_with(|text| text.replace(&format!("\"{plain}\""), &format!("\"{with_tls}\"")))
}

fn test_ca() -> Result<String> {
    std::env::var("WEIR_PG_CA")
        .context("WEIR_PG_CA is not set: run `scripts/services up` and source its env")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_admits_only_tls_is_captured_with_its_certificate_verified() -> Result<()> {
    let t = TestPipeline::new("tls").await?;
    t.load_sample().await?;
    let ca = test_ca()?;
    let pipeline = as_tls_only(&t, &format!("sslmode=verify-full&sslrootcert={ca}")).await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    t.db.execute("DELETE FROM onlineshop WHERE id <= 10", &[])
        .await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    let rows = assert_silver_equals_source(&t, &pipeline).await?;
    ensure!(rows == 1295, "silver has {rows} rows");

    // `require` encrypts without checking the certificate, as libpq does.
    let pipeline = as_tls_only(&t, "sslmode=require").await?;
    weir::pipeline::run_triggered(&pipeline).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_that_cannot_work_fail_with_a_clear_error() -> Result<()> {
    let t = TestPipeline::new("tls_refused").await?;
    // Without TLS, the server's rule turns the user away.
    let pipeline = as_tls_only(&t, "sslmode=disable").await?;
    let error = weir::pipeline::run_triggered(&pipeline)
        .await
        .err()
        .context("a plain connection got in")?
        .to_string();
    ensure!(error.contains("no encryption"), "{error}");
    // A certificate that does not chain to the given root is refused.
    let other_ca = t.dir.path().join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(t.dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()?;
    ensure!(made.status.success(), "openssl: {made:?}");
    let pipeline = as_tls_only(
        &t,
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    )
    .await?;
    let error = weir::pipeline::run_triggered(&pipeline)
        .await
        .err()
        .context("a server with an untrusted certificate was accepted")?
        .to_string();
    ensure!(error.to_lowercase().contains("certificate"), "{error}");
    // An unknown sslmode names the setting.
    let pipeline = as_tls_only(&t, "sslmode=always").await?;
    let error = weir::pipeline::run_triggered(&pipeline)
        .await
        .err()
        .context("sslmode=always was accepted")?
        .to_string();
    ensure!(
        error.contains("sslmode") && error.contains("always"),
        "{error}"
    );
    Ok(())
}
