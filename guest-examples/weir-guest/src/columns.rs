//! Reading columns whose presence and type are not guaranteed.
//!
//! Schemas inferred from JSON drift between files: a field may be missing, may be of type `Null`
//! when every value was null, or may be an integer in one file and text in the next. Required
//! columns are read through [`convert`] (a value that does not fit is an error, never a silent
//! null); loosely typed ones through [`LooseColumn`].

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array,
    PrimitiveArray, PrimitiveBuilder, StringArray, new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;

use crate::{Result, TransformError, decimal};

/// The top-level column `name`.
pub fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| TransformError::new(format!("missing column `{name}`")))
}

/// Follows `path` through struct columns, e.g. `find(batch, &["after", "price"])`.
///
/// `None` when a step is absent. A step of type `Null` yields an all-null `Null` array. Nulls of
/// the enclosing structs are folded into the result, so fields of a null struct read as null.
pub fn find(batch: &RecordBatch, path: &[&str]) -> Result<Option<ArrayRef>> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(None);
    };
    let Some(mut current) = batch.column_by_name(first).cloned() else {
        return Ok(None);
    };
    for (depth, name) in rest.iter().enumerate() {
        if current.data_type() == &DataType::Null {
            return Ok(Some(new_null_array(&DataType::Null, current.len())));
        }
        let Some(parent) = current.as_struct_opt() else {
            return Err(TransformError::new(format!(
                "`{}` is {}, not a struct",
                path[..=depth].join("."),
                current.data_type()
            )));
        };
        let Some(child) = parent.column_by_name(name) else {
            return Ok(None);
        };
        current = with_parent_nulls(child, parent.nulls())?;
    }
    Ok(Some(current))
}

fn with_parent_nulls(child: &ArrayRef, parent: Option<&NullBuffer>) -> Result<ArrayRef> {
    let Some(parent) = parent.filter(|nulls| nulls.null_count() > 0) else {
        return Ok(child.clone());
    };
    if child.data_type() == &DataType::Null {
        return Ok(child.clone());
    }
    // `nullif` only widens the validity mask, so unlike rebuilding the array it does not
    // validate every value (UTF-8 and offsets) again.
    let parent_is_null = BooleanArray::new(!parent.inner(), None);
    Ok(arrow::compute::nullif(child, &parent_is_null)?)
}

/// Reads `array` (the column `name`, for messages) as `to`. Supported: `Null` to anything (all
/// null), integers of any width to `Int64`/`Int32`, `Float32` to `Float64`, `LargeUtf8`/`Utf8View`
/// to `Utf8`, and `Decimal128` to another precision and scale (rounding half away from zero).
/// A value that does not fit is an error naming its row, never a silent null.
///
/// Deliberately narrow: arrow's general `cast` would add about 3 MB to every component. A guest
/// that needs more can call `arrow::compute::cast` itself.
pub fn convert(array: &ArrayRef, to: &DataType, name: &str) -> Result<ArrayRef> {
    let from = array.data_type();
    if from == to {
        return Ok(array.clone());
    }
    let converted: Option<ArrayRef> = match (from, to) {
        (DataType::Null, _) => Some(new_null_array(to, array.len())),
        (_, DataType::Int64) => {
            integers::<Int64Type>(array, name)?.map(|a| Arc::new(a) as ArrayRef)
        }
        (_, DataType::Int32) => {
            integers::<Int32Type>(array, name)?.map(|a| Arc::new(a) as ArrayRef)
        }
        (DataType::Float32, DataType::Float64) => Some(Arc::new(map_values::<
            Float32Type,
            Float64Type,
        >(array, name, |v| {
            Some(f64::from(v))
        })?)),
        (DataType::LargeUtf8, DataType::Utf8) => match array.as_string_opt::<i64>() {
            Some(strings) => Some(Arc::new(utf8_from(strings.iter(), name)?)),
            None => None,
        },
        (DataType::Utf8View, DataType::Utf8) => match array.as_string_view_opt() {
            Some(strings) => Some(Arc::new(utf8_from(strings.iter(), name)?)),
            None => None,
        },
        (DataType::Decimal128(_, from_scale), DataType::Decimal128(precision, scale)) => {
            let (from_scale, precision, scale) = (*from_scale, *precision, *scale);
            let rescaled = map_values::<Decimal128Type, Decimal128Type>(array, name, |v| {
                decimal::rescale(v, from_scale, scale).filter(|&v| decimal::fits(v, precision))
            })?;
            Some(Arc::new(
                rescaled.with_precision_and_scale(precision, scale)?,
            ))
        }
        _ => None,
    };
    converted
        .ok_or_else(|| TransformError::new(format!("column `{name}`: cannot read {from} as {to}")))
}

/// Any integer column as `T`, or `None` when `array` is not of an integer type.
fn integers<T>(array: &ArrayRef, name: &str) -> Result<Option<PrimitiveArray<T>>>
where
    T: ArrowPrimitiveType,
    T::Native: TryFrom<i128>,
{
    macro_rules! from {
        ($source:ty) => {
            map_values::<$source, T>(array, name, |v| T::Native::try_from(i128::from(v)).ok())?
        };
    }
    Ok(Some(match array.data_type() {
        DataType::Int8 => from!(Int8Type),
        DataType::Int16 => from!(Int16Type),
        DataType::Int32 => from!(Int32Type),
        DataType::Int64 => from!(Int64Type),
        DataType::UInt8 => from!(UInt8Type),
        DataType::UInt16 => from!(UInt16Type),
        DataType::UInt32 => from!(UInt32Type),
        DataType::UInt64 => from!(UInt64Type),
        _ => return Ok(None),
    }))
}

/// Maps every non-null value with `f`; `None` from `f` means the value does not fit `T`.
fn map_values<S: ArrowPrimitiveType, T: ArrowPrimitiveType>(
    array: &ArrayRef,
    name: &str,
    f: impl Fn(S::Native) -> Option<T::Native>,
) -> Result<PrimitiveArray<T>> {
    let source = as_primitive::<S>(array, name)?;
    let mut out = PrimitiveBuilder::<T>::with_capacity(source.len());
    for (row, value) in source.iter().enumerate() {
        match value {
            None => out.append_null(),
            Some(value) => out.append_value(f(value).ok_or_else(|| {
                TransformError::at_row(
                    row,
                    format!("column `{name}`: {value:?} does not fit {}", T::DATA_TYPE),
                )
            })?),
        }
    }
    Ok(out.finish())
}

fn utf8_from<'a>(
    values: impl Iterator<Item = Option<&'a str>> + Clone,
    name: &str,
) -> Result<StringArray> {
    let bytes: usize = values.clone().flatten().map(str::len).sum();
    if i32::try_from(bytes).is_err() {
        return Err(TransformError::new(format!(
            "column `{name}` holds too much text for Utf8"
        )));
    }
    Ok(values.collect())
}

/// The required column `name` as `T` (see [`convert`]). For decimals use [`decimal128`].
pub fn primitive<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
) -> Result<PrimitiveArray<T>> {
    as_primitive(&convert(&column(batch, name)?, &T::DATA_TYPE, name)?, name)
}

/// Like [`primitive`], but an absent column reads as all-null.
pub fn optional_primitive<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
) -> Result<PrimitiveArray<T>> {
    match batch.column_by_name(name) {
        Some(array) => as_primitive(&convert(array, &T::DATA_TYPE, name)?, name),
        None => as_primitive(&new_null_array(&T::DATA_TYPE, batch.num_rows()), name),
    }
}

/// The required column `name` as `Decimal128(precision, scale)`, rescaling if needed.
pub fn decimal128(
    batch: &RecordBatch,
    name: &str,
    precision: u8,
    scale: i8,
) -> Result<Decimal128Array> {
    let to = DataType::Decimal128(precision, scale);
    as_primitive(&convert(&column(batch, name)?, &to, name)?, name)
}

/// The required column `name` as `Utf8`.
pub fn utf8(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    as_utf8(
        &convert(&column(batch, name)?, &DataType::Utf8, name)?,
        name,
    )
}

/// Like [`utf8`], but an absent column reads as all-null.
pub fn optional_utf8(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    match batch.column_by_name(name) {
        Some(array) => as_utf8(&convert(array, &DataType::Utf8, name)?, name),
        None => Ok(StringArray::new_null(batch.num_rows())),
    }
}

/// The value at `row`, `None` when null; `row` must be below the array's length.
pub fn get<T: ArrowPrimitiveType>(array: &PrimitiveArray<T>, row: usize) -> Option<T::Native> {
    array.is_valid(row).then(|| array.value(row))
}

fn as_primitive<T: ArrowPrimitiveType>(array: &ArrayRef, name: &str) -> Result<PrimitiveArray<T>> {
    array.as_primitive_opt::<T>().cloned().ok_or_else(|| {
        TransformError::new(format!(
            "column `{name}` is {}, expected {}",
            array.data_type(),
            T::DATA_TYPE
        ))
    })
}

fn as_utf8(array: &ArrayRef, name: &str) -> Result<StringArray> {
    array.as_string_opt::<i32>().cloned().ok_or_else(|| {
        TransformError::new(format!(
            "column `{name}` is {}, expected Utf8",
            array.data_type()
        ))
    })
}

/// One cell of a [`LooseColumn`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    /// A decimal: `unscaled / 10^scale`.
    Decimal {
        unscaled: i128,
        scale: i8,
    },
    /// A type the column reader does not interpret (lists, structs, binary, ...).
    Unsupported(&'a DataType),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Decimal { unscaled, scale } => f.write_str(&decimal::format(*unscaled, *scale)),
            Value::Unsupported(data_type) => write!(f, "<{data_type}>"),
        }
    }
}

/// A column read cell by cell whatever its type: integers of any width as `Int`, floats as `Float`,
/// any string type as `Str`; an absent or `Null`-typed column reads as all-null.
#[derive(Clone, Debug)]
pub struct LooseColumn {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    Nulls,
    Bool(BooleanArray),
    Int(Int64Array),
    Float(Float64Array),
    Str(StringArray),
    Decimal(Decimal128Array, i8),
    Other(ArrayRef),
}

impl LooseColumn {
    /// The column at `path` (see [`find`]).
    pub fn find(batch: &RecordBatch, path: &[&str]) -> Result<Self> {
        Self::new(find(batch, path)?.as_ref(), &path.join("."))
    }

    /// Wraps `array` (`None` when absent); `name` is for messages.
    pub fn new(array: Option<&ArrayRef>, name: &str) -> Result<Self> {
        let Some(array) = array else {
            return Ok(Self { repr: Repr::Nulls });
        };
        let repr = match array.data_type() {
            DataType::Null => Repr::Nulls,
            DataType::Boolean => match array.as_boolean_opt() {
                Some(values) => Repr::Bool(values.clone()),
                None => Repr::Other(array.clone()),
            },
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => Repr::Int(as_primitive(
                &convert(array, &DataType::Int64, name)?,
                name,
            )?),
            DataType::Float32 | DataType::Float64 => Repr::Float(as_primitive(
                &convert(array, &DataType::Float64, name)?,
                name,
            )?),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Repr::Str(as_utf8(&convert(array, &DataType::Utf8, name)?, name)?)
            }
            DataType::Decimal128(_, scale) => Repr::Decimal(as_primitive(array, name)?, *scale),
            _ => Repr::Other(array.clone()),
        };
        Ok(Self { repr })
    }

    /// The cell at `row`; `row` must be below the batch's row count.
    pub fn value(&self, row: usize) -> Value<'_> {
        match &self.repr {
            Repr::Nulls => Value::Null,
            Repr::Bool(a) if a.is_valid(row) => Value::Bool(a.value(row)),
            Repr::Int(a) if a.is_valid(row) => Value::Int(a.value(row)),
            Repr::Float(a) if a.is_valid(row) => Value::Float(a.value(row)),
            Repr::Str(a) if a.is_valid(row) => Value::Str(a.value(row)),
            Repr::Decimal(a, scale) if a.is_valid(row) => Value::Decimal {
                unscaled: a.value(row),
                scale: *scale,
            },
            Repr::Other(a) if a.is_valid(row) => Value::Unsupported(a.data_type()),
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, NullArray, StructArray};
    use arrow::datatypes::{Field, Fields};

    use super::*;

    fn batch_of(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
    }

    fn after(ids: ArrayRef, struct_nulls: Option<NullBuffer>) -> ArrayRef {
        let fields = Fields::from(vec![Field::new("id", ids.data_type().clone(), true)]);
        Arc::new(StructArray::new(fields, vec![ids], struct_nulls))
    }

    #[test]
    fn nested_fields_are_found_by_path() -> Result<()> {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2)]));
        let batch = batch_of(vec![("after", after(ids, None))]);
        let id = LooseColumn::find(&batch, &["after", "id"])?;
        assert_eq!(id.value(1), Value::Int(2));
        Ok(())
    }

    #[test]
    fn fields_of_a_null_struct_read_as_null() -> Result<()> {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2)]));
        let nulls = NullBuffer::from(vec![true, false]);
        let batch = batch_of(vec![("after", after(ids, Some(nulls)))]);
        let id = LooseColumn::find(&batch, &["after", "id"])?;
        assert_eq!((id.value(0), id.value(1)), (Value::Int(1), Value::Null));
        Ok(())
    }

    #[test]
    fn absent_and_null_typed_columns_read_as_null() -> Result<()> {
        let batch = batch_of(vec![("after", Arc::new(NullArray::new(2)) as ArrayRef)]);
        assert_eq!(
            LooseColumn::find(&batch, &["after", "id"])?.value(0),
            Value::Null
        );
        assert_eq!(
            LooseColumn::find(&batch, &["before", "id"])?.value(1),
            Value::Null
        );
        assert!(find(&batch, &["missing"])?.is_none());
        Ok(())
    }

    #[test]
    fn a_scalar_in_the_middle_of_a_path_is_an_error() {
        let batch = batch_of(vec![(
            "after",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )]);
        assert!(find(&batch, &["after", "id"]).is_err());
    }

    #[test]
    fn narrow_integers_widen_and_casts_are_strict() -> Result<()> {
        let batch = batch_of(vec![
            ("n", Arc::new(Int32Array::from(vec![7])) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ]);
        assert_eq!(primitive::<Int64Type>(&batch, "n")?.value(0), 7);
        assert!(primitive::<Int64Type>(&batch, "s").is_err());
        assert!(primitive::<Int64Type>(&batch, "absent").is_err());
        assert_eq!(
            optional_primitive::<Int64Type>(&batch, "absent")?.null_count(),
            1
        );
        Ok(())
    }

    #[test]
    fn conversions_are_exact_or_fail_naming_the_row() -> Result<()> {
        let big: ArrayRef = Arc::new(arrow::array::UInt64Array::from(vec![1, u64::MAX]));
        let error = convert(&big, &DataType::Int64, "n").err();
        assert!(matches!(error, Some(TransformError { row: Some(1), .. })));

        let wide: ArrayRef = Arc::new(Int64Array::from(vec![Some(-5), None]));
        let narrow = convert(&wide, &DataType::Int32, "n")?;
        assert_eq!(
            narrow
                .as_primitive::<Int32Type>()
                .iter()
                .collect::<Vec<_>>(),
            [Some(-5), None]
        );

        let prices: ArrayRef =
            Arc::new(Decimal128Array::from(vec![21475]).with_precision_and_scale(10, 3)?);
        let cents = convert(&prices, &DataType::Decimal128(38, 2), "price")?;
        assert_eq!(cents.as_primitive::<Decimal128Type>().value(0), 2148);
        assert!(convert(&prices, &DataType::Decimal128(3, 2), "price").is_err());

        let large: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec![Some("a"), None]));
        assert_eq!(
            convert(&large, &DataType::Utf8, "s")?
                .as_string::<i32>()
                .value(0),
            "a"
        );

        let text: ArrayRef = Arc::new(StringArray::from(vec!["1"]));
        assert!(
            convert(&text, &DataType::Int64, "s").is_err(),
            "text is not parsed"
        );
        Ok(())
    }

    #[test]
    fn decimals_display_with_their_scale() {
        assert_eq!(
            Value::Decimal {
                unscaled: -2147,
                scale: 2
            }
            .to_string(),
            "-21.47"
        );
    }
}
