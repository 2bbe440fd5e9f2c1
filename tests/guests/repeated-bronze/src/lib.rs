//! bronze-cleanup that cleans each batch `times` times and returns the last result. Calls with
//! `times` 1 and `times` N cross the boundary alike, so their difference is N − 1 passes of the
//! component's own code under Cranelift: what `weir-bench transforms` sets against native code.

#[path = "../../../../guest-examples/bronze-cleanup/src/lib.rs"]
#[allow(dead_code)]
mod bronze_cleanup;

use serde::Deserialize;
use weir_guest::{RecordBatch, Result, RowTransform, TransformError, config};

pub struct RepeatedBronze {
    times: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    times: u32,
}

impl RowTransform for RepeatedBronze {
    fn configure(config_json: &str) -> Result<Self> {
        let Config { times } = config::parse(config_json)?;
        if times == 0 {
            return Err(TransformError::new("`times` must be at least 1"));
        }
        Ok(Self { times })
    }

    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut output = bronze_cleanup::cleanup(&batch)?;
        for _ in 1..self.times {
            // Freed first, so that a pass needs no more guest memory than a single one.
            drop(output);
            output = std::hint::black_box(bronze_cleanup::cleanup(std::hint::black_box(&batch))?);
        }
        Ok(output)
    }
}

weir_guest::export_row_transform!(RepeatedBronze);
