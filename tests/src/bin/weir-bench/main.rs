//! weir's benchmarks, each printed next to its reference on the same data in one run (see
//! `scripts/bench`):
//!
//! - `weir-bench capture`: capture next to `pg_recvlogical`, the snapshot next to `COPY … TO STDOUT`;
//! - `weir-bench transforms`: the bronze-cleanup component in the Wasm sandbox next to the same Rust
//!   function called natively;
//! - `weir-bench merge`: silver's APPLY CHANGES of 1,000,000 changes into 5,000,000 rows next to one
//!   plain `deltalake` MERGE;
//! - `weir-bench snapshot`: the snapshot of generated 536,350- and 10,000,000-row tables;
//! - `weir-bench freshness`: commit in PostgreSQL to row visible in silver under a workload;
//! - `weir-bench report`: all of them, written to `BENCHMARKS.md`.

mod capture;
mod freshness;
mod merge;
mod report;
mod snapshot;
mod transforms;

use std::path::Path;

use anyhow::{Result, bail};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc; // as the weir binary

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // weir's own logs, on standard error, as `RUST_LOG` asks (none by default).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map_or("capture", String::as_str) {
        "capture" => capture::run().await,
        "transforms" => transforms::run(),
        "freshness" => freshness::run().await,
        "snapshot" => snapshot::run().await,
        "report" => report::run(&args[1..]),
        "merge" => merge::run().await,
        "merge-contender" if args.len() == 4 => {
            merge::contender_main(&args[1], Path::new(&args[2]), Path::new(&args[3])).await
        }
        other => bail!(
            "unknown benchmark {other:?}: usage: weir-bench capture|snapshot|freshness|transforms|merge|report"
        ),
    }
}
