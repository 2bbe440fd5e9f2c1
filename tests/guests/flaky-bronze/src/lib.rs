//! bronze-cleanup with a bug: it traps on every batch with an odd number of rows and cleans the
//! others as bronze-cleanup does. The fault suite deploys it for a while, then rolls it back.

// bronze-cleanup's source, as a module: depending on the crate would also build its component,
// over the real one in the shared target folder. Its export is this crate's `FlakyBronze`.
#[path = "../../../../guest-examples/bronze-cleanup/src/lib.rs"]
#[allow(dead_code)]
mod bronze_cleanup;

use weir_guest::{RecordBatch, Result, RowTransform};

pub struct FlakyBronze;

impl RowTransform for FlakyBronze {
    fn configure(_config_json: &str) -> Result<Self> {
        Ok(Self)
    }

    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.num_rows() % 2 == 1 {
            panic!(
                "flaky-bronze: a bug on a batch of {} rows",
                batch.num_rows()
            );
        }
        bronze_cleanup::cleanup(&batch)
    }
}

weir_guest::export_row_transform!(FlakyBronze);
