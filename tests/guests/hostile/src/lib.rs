//! A row transform that attacks its sandbox, as `{"attack": …}` in its configuration says:
//!
//! - `spin`: loops forever;
//! - `memory`: allocates until something stops it;
//! - `leak`: keeps 40 MiB more on every call, and passes the batch through;
//! - `trap`: panics, which aborts (traps) the instance; `trap-on-empty` only on an empty batch;
//! - `wrong-schema`: returns its input with the key column `id` turned into text;
//! - `file`, `environment`, `network`, `clock`: reads a file, the environment, a socket or the clock,
//!   and fails the batch with what it saw, so the test can tell what the sandbox let through.
//!
//! Otherwise it passes batches through unchanged.

use std::io::Read as _;
use std::sync::Arc;

use serde::Deserialize;
use weir_guest::arrow::array::{ArrayRef, StringArray};
use weir_guest::arrow::datatypes::{DataType, Field, Schema};
use weir_guest::{RecordBatch, Result, RowTransform, TransformError, config};

#[derive(Deserialize)]
struct Config {
    attack: String,
    /// For `network`: the address to connect to.
    #[serde(default)]
    address: String,
}

pub struct Hostile(Config);

impl RowTransform for Hostile {
    fn configure(config_json: &str) -> Result<Self> {
        Ok(Self(config::parse(config_json)?))
    }

    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let saw = |what: String| Err(TransformError::new(what));
        match self.0.attack.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "leak" => {
                static HOARD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
                let mut hoard = HOARD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                hoard.push(vec![1; 40 << 20]);
                std::hint::black_box(&hoard);
                Ok(batch)
            }
            "trap" => panic!("a guest bug"),
            "trap-on-empty" if batch.num_rows() == 0 => panic!("a guest bug on empty batches"),
            "wrong-schema" => id_as_text(&batch),
            "file" => {
                let mut text = String::new();
                match std::fs::File::open("/etc/passwd")
                    .and_then(|mut f| f.read_to_string(&mut text))
                {
                    Ok(_) => saw(format!("file: read {} bytes", text.len())),
                    Err(e) => saw(format!("file: denied ({e})")),
                }
            }
            "environment" => saw(format!(
                "environment: {} variables, {} arguments",
                std::env::vars().count(),
                std::env::args().count()
            )),
            "network" => match std::net::TcpStream::connect(&self.0.address) {
                Ok(_) => saw("network: connected".into()),
                Err(e) => saw(format!("network: denied ({e})")),
            },
            "clock" => {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                saw(format!("clock: {since_epoch} s since the epoch"))
            }
            _ => Ok(batch),
        }
    }
}

/// `batch` with its `id` column replaced by text, every other column as it was.
fn id_as_text(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if field.name() == "id" {
                let text = StringArray::from(vec!["not a number"; batch.num_rows()]);
                (Field::new("id", DataType::Utf8, true), Arc::new(text) as ArrayRef)
            } else {
                (field.as_ref().clone(), column.clone())
            }
        })
        .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| TransformError::new(e.to_string()))
}

weir_guest::export_row_transform!(Hostile);
