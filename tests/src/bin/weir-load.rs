//! The onlineshop data set at any scale, and a workload at a target rate, for trying weir on more
//! than the sample:
//!
//! ```text
//! weir-load generate --db postgres://…/business --rows 10000000 [--seed 1]
//! weir-load drive    --db postgres://…/business --rate 1000 --seconds 60 [--seed 1]
//! ```
//!
//! `generate` creates `public.onlineshop` if it is missing (pipelines/onlineshop/schema.sql) and
//! appends generated rows with `COPY`; `--csv FILE` writes them to a file instead.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_tests::onlineshop::{self, Generator};

#[derive(Parser)]
#[command(about = "Generates onlineshop rows and runs a workload of changes against PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Appends generated rows to the table (or writes them as CSV).
    Generate {
        /// PostgreSQL connection URL of the database holding the table.
        #[arg(long, required_unless_present = "csv")]
        db: Option<String>,
        #[arg(long, default_value = "public.onlineshop")]
        table: String,
        #[arg(long)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Writes the rows to this CSV file (no header, ISO dates) instead of the database.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// Inserts, updates and deletes at a target rate of changes per second.
    Drive {
        #[arg(long)]
        db: String,
        #[arg(long, default_value = "public.onlineshop")]
        table: String,
        /// Changes per second.
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate {
            csv: Some(path),
            rows,
            seed,
            ..
        } => {
            let mut generator = Generator::new(seed, rows)?;
            let mut out = Vec::new();
            let mut made = 0;
            while made < rows {
                let mut basket = generator.basket();
                basket.truncate((rows - made) as usize);
                made += basket.len() as u64;
                onlineshop::write_csv(&basket, &mut out)?;
            }
            std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {rows} rows to {}", path.display());
        }
        Command::Generate {
            db: Some(url),
            table,
            rows,
            seed,
            ..
        } => {
            let db = weir_tests::connect(&url).await?;
            let schema = std::fs::read_to_string(
                weir_tests::repo_root().join("pipelines/onlineshop/schema.sql"),
            )?;
            if table == "public.onlineshop" {
                db.batch_execute(&schema)
                    .await
                    .context("creating public.onlineshop")?;
            }
            let started = Instant::now();
            let copied = onlineshop::load(&db, &table, rows, seed).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "copied {copied} rows into {table} in {seconds:.1} s ({:.0} rows/s)",
                copied as f64 / seconds
            );
        }
        Command::Generate { db: None, .. } => anyhow::bail!("generate needs --db or --csv"),
        Command::Drive {
            db,
            table,
            rate,
            seconds,
            seed,
        } => {
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let workload = onlineshop::drive(
                || weir_tests::connect(&db),
                &table,
                rate,
                Duration::from_secs(seconds),
                seed,
                &stop,
            )
            .await?;
            println!("{workload}");
        }
    }
    Ok(())
}
