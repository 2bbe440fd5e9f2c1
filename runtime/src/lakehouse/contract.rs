//! What a layer needs of its component's output, checked on every batch as `weir validate
//! --sample` checks it once: the columns the next stage works by, and, for the columns the layer's
//! table already has, the table's types. A component that breaks it fails the batch as a trap does
//! (stop, or the dead-letter location), before anything of it is committed.

use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;

use super::*;
use crate::config::GoldConfig;

pub(super) struct OutputContract {
    needed: Vec<String>,
    /// Where `needed` comes from in the pipeline file, for the error.
    named_by: String,
    /// The table's location and schema, once it exists.
    table: Option<(String, StructType)>,
}

impl OutputContract {
    /// Bronze's output is silver's input: it carries silver's keys and sequence columns.
    pub(super) fn bronze(pipeline: &Pipeline) -> Self {
        let silver = &pipeline.silver;
        Self::needing(
            silver.keys.iter().chain(&silver.sequence_by),
            "[silver] keys and sequence_by",
        )
    }

    /// Silver's output is applied by key.
    pub(super) fn silver(pipeline: &Pipeline) -> Self {
        Self::needing(&pipeline.silver.keys, "[silver] keys")
    }

    /// Gold's output is per-group deltas merged by key, the group's count deciding its removal.
    pub(super) fn gold(name: &str, cfg: &GoldConfig) -> Self {
        Self::needing(
            cfg.keys.iter().chain(std::iter::once(&cfg.count_column)),
            &format!("[gold.{name}] keys and count_column"),
        )
    }

    fn needing<'a>(needed: impl IntoIterator<Item = &'a String>, named_by: &str) -> Self {
        Self {
            needed: needed.into_iter().cloned().collect(),
            named_by: named_by.to_owned(),
            table: None,
        }
    }

    /// Also holds the output to the column types of `table`, if it exists yet.
    pub(super) fn with_table(mut self, location: &str, table: &DeltaTable) -> Self {
        if let Ok(snapshot) = table.snapshot() {
            self.table = Some((location.to_owned(), snapshot.schema().as_ref().clone()));
        }
        self
    }

    /// Why `output`, what the component made of `input`, cannot go on, if it cannot.
    pub(super) fn violation(&self, input: &RecordBatch, output: &RecordBatch) -> Option<String> {
        let schema = output.schema();
        if let Some(missing) = self
            .needed
            .iter()
            .find(|c| schema.column_with_name(c).is_none())
        {
            let has: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Some(format!(
                "its output has no column `{missing}`, which {} name; it has: {}",
                self.named_by,
                has.join(", ")
            ));
        }
        let (location, stored) = self.table.as_ref()?;
        let input = input.schema();
        schema.fields().iter().find_map(|field| {
            // A type the input already had is not the component's doing.
            if input
                .field_with_name(field.name())
                .is_ok_and(|f| f.data_type() == field.data_type())
            {
                return None;
            }
            let stored = stored.field(field.name())?;
            let produced: deltalake::kernel::DataType = field.data_type().try_into_kernel().ok()?;
            (&produced != stored.data_type()).then(|| {
                format!(
                    "its output has column `{}` as {produced} where the table {location} has {}",
                    field.name(),
                    stored.data_type()
                )
            })
        })
    }
}
