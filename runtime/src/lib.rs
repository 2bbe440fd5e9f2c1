//! weir streams changes out of PostgreSQL into bronze, silver and gold Delta tables, through Kafka
//! and a Parquet landing zone, with each layer's logic in a sandboxed WebAssembly component.
//!
//! Stages, each in its own module: [`source`] (WAL capture into Debezium-style events),
//! [`transport`] (Kafka), [`landing`] (Parquet change files), [`lakehouse`] (bronze, silver, gold
//! Delta tables), [`wasm`] (the component host). [`observe`] serves metrics, status and the
//! pipeline page. [`config`] reads pipeline files, [`pipeline`] runs
//! the stages in order, [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod lakehouse;
pub mod landing;
pub mod observe;
pub mod pipeline;
pub mod source;
pub mod storage;
pub mod transport;
pub mod wasm;
