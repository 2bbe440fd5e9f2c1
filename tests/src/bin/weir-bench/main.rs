//! weir's benchmarks, each printed next to its reference on the same data in one run (see
//! `scripts/bench`):
//!
//! - `weir-bench capture`: capture next to `pg_recvlogical`, the snapshot next to `COPY … TO STDOUT`;
//! - `weir-bench transforms`: the bronze-cleanup component in the Wasm sandbox next to the same Rust
//!   function called natively.

mod capture;
mod transforms;

use anyhow::{Result, bail};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc; // as the weir binary

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref().unwrap_or("capture") {
        "capture" => capture::run().await,
        "transforms" => transforms::run(),
        other => bail!("unknown benchmark {other:?}: usage: weir-bench capture|transforms"),
    }
}
