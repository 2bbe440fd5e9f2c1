//! Running a layer as the host would, minus the component: configure it, then pass the batch
//! through Arrow IPC bytes both ways, so tests also cover what the wire does to types.

use arrow::record_batch::RecordBatch;

use crate::__private::{apply_aggregate, apply_row_transform};
use crate::{Aggregate, Result, RowTransform, ipc};

/// Configures `T` with `config_json` and transforms `batch`.
pub fn run_row_transform<T: RowTransform>(
    config_json: &str,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let layer = T::configure(config_json)?;
    ipc::decode(apply_row_transform(&layer, ipc::encode(batch)?)?)
}

/// Configures `T` with `config_json` and aggregates `batch`.
pub fn run_aggregate<T: Aggregate>(config_json: &str, batch: &RecordBatch) -> Result<RecordBatch> {
    let layer = T::configure(config_json)?;
    ipc::decode(apply_aggregate(&layer, ipc::encode(batch)?)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use serde::Deserialize;

    use super::*;
    use crate::{TransformError, config};

    /// Keeps rows whose `n` is at least `min`.
    struct AtLeast {
        min: i64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AtLeastConfig {
        #[serde(default)]
        min: i64,
    }

    impl RowTransform for AtLeast {
        fn configure(config_json: &str) -> Result<Self> {
            let AtLeastConfig { min } = config::parse(config_json)?;
            Ok(Self { min })
        }

        fn transform(&self, batch: RecordBatch) -> Result<RecordBatch> {
            let n = crate::columns::primitive::<arrow::datatypes::Int64Type>(&batch, "n")?;
            let keep = arrow::compute::kernels::cmp::gt_eq(&n, &Int64Array::new_scalar(self.min))?;
            Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
        }
    }

    crate::export_row_transform!(AtLeast);

    fn numbers(values: &[i64]) -> RecordBatch {
        let column: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        RecordBatch::try_from_iter([("n", column)]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_layer_runs_through_ipc_with_its_configuration() -> Result<()> {
        let out = run_row_transform::<AtLeast>(r#"{"min": 2}"#, &numbers(&[1, 2, 3]))?;
        assert_eq!(out, numbers(&[2, 3]));
        Ok(())
    }

    #[test]
    fn blank_configuration_means_defaults_and_unknown_keys_are_rejected() -> Result<()> {
        assert_eq!(
            run_row_transform::<AtLeast>("", &numbers(&[-1, 0]))?,
            numbers(&[0])
        );
        let error = run_row_transform::<AtLeast>(r#"{"minimum": 2}"#, &numbers(&[1]));
        assert!(matches!(error, Err(TransformError { row: None, .. })));
        Ok(())
    }

    #[test]
    fn transform_before_configure_is_an_error() {
        assert!(crate::__private::transform_bytes::<AtLeast>(Vec::new()).is_err());
    }
}
