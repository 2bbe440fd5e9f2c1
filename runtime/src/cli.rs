//! The command line: `weir run`, `weir status`, `weir validate`, `weir rebuild`, `weir maintain`,
//! `weir query`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Pipeline;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "PostgreSQL CDC → Kafka → bronze/silver/gold Delta tables, with Wasm transforms"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How `weir query` prints its result.
#[derive(Clone, Copy, ValueEnum)]
enum QueryFormat {
    /// A table for people.
    Table,
    /// One JSON object per row (nulls included), for programs.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: continuously until SIGINT/SIGTERM, or once with --triggered.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Process everything committed so far through every stage, then exit (like a DLT triggered update).
        #[arg(long)]
        triggered: bool,
        /// The stages this process runs (default: all). Several processes can share a pipeline,
        /// e.g. one with `capture,landing` and others with `layers`.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::pipeline::Stage::ALL)]
        stages: Vec<crate::pipeline::Stage>,
    },
    /// Show every stage's position and lag (slot vs WAL, Kafka offsets vs high watermarks, landing
    /// files pending, Delta versions) and each stage's last error; whether the pipeline runs or not.
    Status {
        /// The pipeline file.
        file: PathBuf,
        /// Print JSON (what a running pipeline's `/status` serves) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a pipeline file and the components it names, without touching any service.
    Validate {
        /// The pipeline file.
        file: PathBuf,
        /// Debezium events (a JSON array, or one per line) to run through every layer, checking
        /// that each layer's output fits the next stage; nothing is written.
        #[arg(long)]
        sample: Option<PathBuf>,
    },
    /// Recompute a layer from the one below it, replacing its tables (like a DLT full refresh).
    Rebuild {
        /// The pipeline file.
        file: PathBuf,
        /// `gold` (every gold table) or `gold.<name>`.
        #[arg(long)]
        layer: String,
    },
    /// Compact small files and vacuum unused ones in every table of the pipeline, now.
    Maintain {
        /// The pipeline file.
        file: PathBuf,
        /// Keep unused files this long for readers of older versions (default: the pipeline
        /// file's `maintenance.vacuum_retention_hours`).
        #[arg(long)]
        retention_hours: Option<u64>,
    },
    /// Run SQL over the pipeline's Delta tables (`bronze`, `silver`, `gold_<name>`) and print the result.
    Query {
        /// The pipeline file.
        file: PathBuf,
        /// The query, e.g. "SELECT * FROM gold_sales_report ORDER BY total_sales_value DESC LIMIT 10".
        sql: String,
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            file,
            triggered,
            stages,
        } => {
            let pipeline = Pipeline::load(&file)?;
            let stop = crate::pipeline::stop_on_signals();
            let report = if triggered {
                crate::pipeline::run_stages_triggered(&pipeline, &stages).await?
            } else {
                crate::pipeline::run_continuous(&pipeline, &stages, stop).await?
            };
            println!("{report}");
            Ok(())
        }
        Command::Status { file, json } => {
            let pipeline = Pipeline::load(&file)?;
            let status = crate::observe::status(&pipeline).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{status}");
            }
            Ok(())
        }
        Command::Validate { file, sample } => {
            let pipeline = Pipeline::load(&file)?;
            crate::pipeline::validate(&pipeline)?;
            println!(
                "{}: valid ({} layers, components export the right worlds of weir:transform@{})",
                file.display(),
                pipeline.layers().len(),
                crate::wasm::contract_version()
            );
            if let Some(sample) = sample {
                let rows = crate::pipeline::validate_with_sample(&pipeline, &sample).await?;
                let rows: Vec<String> = rows
                    .iter()
                    .map(|(layer, n)| format!("{layer} {n} rows"))
                    .collect();
                println!(
                    "{}: ran through every layer, each output fits the next stage: {}",
                    sample.display(),
                    rows.join(", ")
                );
            }
            Ok(())
        }
        Command::Rebuild { file, layer } => {
            let pipeline = Pipeline::load(&file)?;
            for (name, report) in crate::pipeline::rebuild(&pipeline, &layer).await? {
                println!("{name}: rebuilt from silver, {report}");
            }
            Ok(())
        }
        Command::Maintain {
            file,
            retention_hours,
        } => {
            let pipeline = Pipeline::load(&file)?;
            let mut config = pipeline.maintenance;
            if let Some(hours) = retention_hours {
                config.vacuum_retention_hours = hours;
            }
            for (table, report) in crate::lakehouse::maintain(&pipeline, &config).await? {
                println!("{table}: {report}");
            }
            Ok(())
        }
        Command::Query { file, sql, format } => {
            let pipeline = Pipeline::load(&file)?;
            let batches = crate::lakehouse::query(&pipeline, &sql)
                .await
                .with_context(|| format!("running `{sql}`"))?;
            match format {
                QueryFormat::Table => {
                    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                }
                QueryFormat::Json => {
                    let mut writer = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::LineDelimited>(
                        std::io::stdout().lock(),
                    );
                    writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
                    writer.finish()?;
                }
            }
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // The Delta kernel logs an ERROR when probing a table that does not exist yet, and MERGE warns
    // about metrics it derives; weir reports real failures itself, naming stage and table.
    const DEFAULT: &str =
        "warn,weir=info,buoyant_kernel=off,deltalake_core::operations::merge=error";
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
