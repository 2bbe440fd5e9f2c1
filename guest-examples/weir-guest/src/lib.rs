//! Guest-side SDK for weir transform components.
//!
//! A layer is plain Rust over Arrow [`RecordBatch`]es: implement [`RowTransform`] (bronze, silver)
//! or [`Aggregate`] (gold), then name the type once with [`export_row_transform!`] or
//! [`export_aggregate!`]. The WIT bindings, the Arrow IPC framing and the host imports stay in here;
//! natively (unit tests) the export macros only check the trait and [`host`] records its calls.
//!
//! ```
//! use weir_guest::{RecordBatch, RowTransform, TransformError};
//!
//! pub struct Passthrough;
//!
//! impl RowTransform for Passthrough {
//!     fn configure(_config_json: &str) -> Result<Self, TransformError> {
//!         Ok(Passthrough)
//!     }
//!     fn transform(&self, batch: RecordBatch) -> Result<RecordBatch, TransformError> {
//!         Ok(batch)
//!     }
//! }
//!
//! weir_guest::export_row_transform!(Passthrough);
//! ```

pub use arrow;
pub use arrow::record_batch::RecordBatch;

pub mod columns;
pub mod config;
pub mod decimal;
mod error;
pub mod host;
pub mod ipc;
pub mod testing;

pub use error::{Result, TransformError};

/// A row-wise layer (WIT world `row-transform`): one batch in, one batch out.
///
/// The host calls `configure` once per instance, then `transform` for each batch. The host may
/// create instances at any time, so keep no state between batches beyond the configuration.
pub trait RowTransform: Sized + 'static {
    /// Builds the transform from the stage's `config` table as JSON (see [`config::parse`]).
    fn configure(config_json: &str) -> Result<Self>;

    /// Transforms one batch. The output may have more or fewer rows than the input.
    fn transform(&self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// An aggregating layer (WIT world `aggregate`).
///
/// Input rows carry an `Int64` column `weight`: +1 for a row entering the input table, -1 for one
/// leaving it. The output holds one row per group touched: the key columns, then additive deltas
/// that the host adds to the stored aggregates.
pub trait Aggregate: Sized + 'static {
    /// Builds the aggregate from the stage's `config` table as JSON (see [`config::parse`]).
    fn configure(config_json: &str) -> Result<Self>;

    /// Returns the per-group deltas for one batch.
    fn aggregate(&self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// Exports a [`RowTransform`] as the component's `row-transform` world.
///
/// Use once per crate, at the crate root. Outside wasm it only checks the trait bound.
#[macro_export]
macro_rules! export_row_transform {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::row_transform as __weir_world;

            struct __WeirExport;

            impl __weir_world::Guest for __WeirExport {
                fn configure(
                    config_json: ::std::string::String,
                ) -> ::core::result::Result<(), __weir_world::TransformError> {
                    $crate::__private::configure_row_transform::<$ty>(&config_json)
                        .map_err(::core::convert::Into::into)
                }

                fn transform(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, __weir_world::TransformError>
                {
                    $crate::__private::transform_bytes::<$ty>(batch)
                        .map_err(::core::convert::Into::into)
                }
            }

            $crate::__private::row_transform::export!(
                __WeirExport with_types_in $crate::__private::row_transform
            );
        };

        #[cfg(not(target_family = "wasm"))]
        const _: () = $crate::__private::assert_row_transform::<$ty>();
    };
}

/// Exports an [`Aggregate`] as the component's `aggregate` world.
///
/// Use once per crate, at the crate root. Outside wasm it only checks the trait bound.
#[macro_export]
macro_rules! export_aggregate {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::aggregate as __weir_world;

            struct __WeirExport;

            impl __weir_world::Guest for __WeirExport {
                fn configure(
                    config_json: ::std::string::String,
                ) -> ::core::result::Result<(), __weir_world::TransformError> {
                    $crate::__private::configure_aggregate::<$ty>(&config_json)
                        .map_err(::core::convert::Into::into)
                }

                fn aggregate(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, __weir_world::TransformError>
                {
                    $crate::__private::aggregate_bytes::<$ty>(batch)
                        .map_err(::core::convert::Into::into)
                }
            }

            $crate::__private::aggregate::export!(
                __WeirExport with_types_in $crate::__private::aggregate
            );
        };

        #[cfg(not(target_family = "wasm"))]
        const _: () = $crate::__private::assert_aggregate::<$ty>();
    };
}

/// Not public API: what the export macros expand to.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::{Aggregate, Result, RowTransform, TransformError, ipc};

    #[cfg(target_family = "wasm")]
    pub use crate::bindings::{aggregate, row_transform};

    pub const fn assert_row_transform<T: RowTransform>() {}
    pub const fn assert_aggregate<T: Aggregate>() {}

    thread_local! {
        // The configured layer of this instance; components are single-threaded.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn install<T: 'static>(value: T) {
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(value)));
    }

    fn with_instance<T: 'static, R>(f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        INSTANCE.with(|slot| {
            let slot = slot.borrow();
            let instance = slot
                .as_ref()
                .and_then(|boxed| boxed.downcast_ref::<T>())
                .ok_or_else(|| TransformError::new("called before configure"))?;
            f(instance)
        })
    }

    pub fn configure_row_transform<T: RowTransform>(config_json: &str) -> Result<()> {
        install(T::configure(config_json)?);
        Ok(())
    }

    pub fn configure_aggregate<T: Aggregate>(config_json: &str) -> Result<()> {
        install(T::configure(config_json)?);
        Ok(())
    }

    pub fn transform_bytes<T: RowTransform>(batch: Vec<u8>) -> Result<Vec<u8>> {
        with_instance(|layer: &T| apply_row_transform(layer, batch))
    }

    pub fn aggregate_bytes<T: Aggregate>(batch: Vec<u8>) -> Result<Vec<u8>> {
        with_instance(|layer: &T| apply_aggregate(layer, batch))
    }

    pub(crate) fn apply_row_transform<T: RowTransform>(
        layer: &T,
        batch: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let output = layer.transform(ipc::decode_from_host(batch)?)?;
        ipc::encode(&output)
    }

    pub(crate) fn apply_aggregate<T: Aggregate>(layer: &T, batch: Vec<u8>) -> Result<Vec<u8>> {
        let output = layer.aggregate(ipc::decode_from_host(batch)?)?;
        ipc::encode(&output)
    }
}

/// Generated from `wit/weir-transform.wit`. Each world emits only its imports here; its exports are
/// emitted by the `export!` macro in the guest crate, so one SDK serves both worlds.
#[cfg(target_family = "wasm")]
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
mod bindings {
    pub mod row_transform {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "weir:transform/row-transform@0.1.0",
            pub_export_macro: true,
        });
    }

    pub mod aggregate {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "weir:transform/aggregate@0.1.0",
            pub_export_macro: true,
            with: {
                "weir:transform/host@0.1.0": crate::bindings::row_transform::weir::transform::host,
            },
        });
    }

    impl From<crate::TransformError> for row_transform::TransformError {
        fn from(error: crate::TransformError) -> Self {
            Self {
                row: error.row,
                message: error.message,
            }
        }
    }

    impl From<crate::TransformError> for aggregate::TransformError {
        fn from(error: crate::TransformError) -> Self {
            Self {
                row: error.row,
                message: error.message,
            }
        }
    }
}
