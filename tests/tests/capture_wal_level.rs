//! Capture refuses a server whose `wal_level` is not `logical`, and says how to fix it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;
use weir_tests::{TestPipeline, repo_root};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL cluster with `wal_level = replica`, stopped when dropped.
struct ReplicaCluster {
    dir: PathBuf,
    port: u16,
}

/// PostgreSQL refuses to run as root; the services script uses the `postgres` user the same way.
fn as_postgres(program: &str) -> Command {
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

impl ReplicaCluster {
    fn start() -> Result<Self> {
        let dir = repo_root().join(format!(
            "target/services/wal-level-replica-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:", &dir.display().to_string()]);
                c
            },
            "chown",
        )
        .ok();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = dir.join("data");
        let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"));
        initdb.args([
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
        ]);
        run(initdb, "initdb")?;
        let mut start = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        start.args([
            "-D",
            &data.display().to_string(),
            "-l",
            &dir.join("postgres.log").display().to_string(),
            "-w",
            "-o",
            &format!("-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c wal_level=replica", dir.display()),
            "start",
        ]);
        run(start, "pg_ctl start")?;
        Ok(Self { dir, port })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for ReplicaCluster {
    fn drop(&mut self) {
        let mut stop = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        stop.args([
            "-D",
            &self.data().display().to_string(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_is_refused_with_the_setting_to_change() -> Result<()> {
    if !Path::new(PG_BIN).join("initdb").exists() {
        bail!("PostgreSQL 15 is not installed: run scripts/install-deps");
    }
    let cluster = ReplicaCluster::start()?;
    // The usual test pipeline (its broker and lakehouse), pointed at the replica-level cluster.
    let t = TestPipeline::new("wal_level").await?;
    let pipeline = t.pipeline_with(|text| {
        text.replace(
            &format!("127.0.0.1:{}/{}", t.services.pg_port, t.name),
            &format!("127.0.0.1:{}/postgres", cluster.port),
        )
    })?;
    let err = match weir::source::run(&pipeline, true, &CancellationToken::new()).await {
        Ok(report) => bail!("capture ran on wal_level = replica: {report:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("wal_level") && err.contains("logical"),
        "{err}"
    );
    Ok(())
}
