//! Shared plumbing of the DataFusion adapters: argument arrays, typed access, output
//! building without per-row allocation, timestamp conversion and row-located errors.

use std::fmt::Display;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanBufferBuilder, Int64Array, PrimitiveArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion_common::{DataFusionError, Result, exec_err, plan_err};
use datafusion_expr::ColumnarValue;

/// An execution error that names the function, the row and what was wrong with it.
pub(crate) fn row_error(function: &str, row: usize, error: impl Display) -> DataFusionError {
    DataFusionError::Execution(format!("{function}: row {row}: {error}"))
}

/// Every argument as an array of `rows` rows (scalars are broadcast once per batch).
pub(crate) fn arrays(args: &[ColumnarValue], rows: usize) -> Result<Vec<ArrayRef>> {
    args.iter().map(|a| a.to_array(rows)).collect()
}

/// Checks the argument count, naming the function when it is wrong.
pub(crate) fn expect_args<'a, const N: usize>(
    function: &str,
    arrays: &'a [ArrayRef],
) -> Result<&'a [ArrayRef; N]> {
    match <&[ArrayRef; N]>::try_from(arrays) {
        Ok(args) => Ok(args),
        Err(_) => exec_err!("{function} takes {N} arguments, got {}", arrays.len()),
    }
}

/// The argument as `Float64`, or an internal error (the signature coerced it already).
pub(crate) fn f64s<'a>(
    function: &str,
    array: &'a ArrayRef,
) -> Result<&'a PrimitiveArray<Float64Type>> {
    array.as_primitive_opt::<Float64Type>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function}: expected Float64, got {}",
            array.data_type()
        ))
    })
}

/// The argument as `Int64`, or an internal error (the signature coerced it already).
pub(crate) fn i64s<'a>(function: &str, array: &'a ArrayRef) -> Result<&'a Int64Array> {
    array.as_primitive_opt::<Int64Type>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function}: expected Int64, got {}",
            array.data_type()
        ))
    })
}

/// The null buffer of rows where any input is null.
pub(crate) fn union_nulls(arrays: &[&dyn Array]) -> Option<NullBuffer> {
    arrays.iter().fold(None, |acc, a| {
        NullBuffer::union(acc.as_ref(), a.logical_nulls().as_ref())
    })
}

/// Builds a primitive array of `rows` rows from `f`, called only on rows where no input is
/// null (`nulls`); `None` from `f` is a null output. One buffer per batch, nothing per row.
#[inline]
pub(crate) fn map_rows<T, F>(
    rows: usize,
    nulls: Option<&NullBuffer>,
    mut f: F,
) -> Result<PrimitiveArray<T>>
where
    T: ArrowPrimitiveType,
    F: FnMut(usize) -> Result<Option<T::Native>>,
{
    let mut values = Vec::with_capacity(rows);
    let mut valid = BooleanBufferBuilder::new(rows);
    for row in 0..rows {
        let value = match nulls {
            Some(n) if n.is_null(row) => None,
            _ => f(row)?,
        };
        valid.append(value.is_some());
        values.push(value.unwrap_or_default());
    }
    Ok(PrimitiveArray::new(
        values.into(),
        Some(NullBuffer::new(valid.finish())),
    ))
}

/// The type a timestamp argument is coerced to: timestamps stay as they are (any unit and
/// zone), integers become `Int64` (milliseconds since the epoch).
pub(crate) fn coerce_timestamp(function: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Timestamp(..) => Ok(t.clone()),
        DataType::Null
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Ok(DataType::Int64),
        other => plan_err!(
            "{function}: time argument must be a TIMESTAMP or BIGINT milliseconds, got {other}"
        ),
    }
}

/// The type a numeric argument is coerced to (`Float64`).
pub(crate) fn coerce_float(function: &str, t: &DataType) -> Result<DataType> {
    if t.is_numeric() || t.is_null() {
        Ok(DataType::Float64)
    } else {
        plan_err!("{function}: expected a number, got {t}")
    }
}

/// Milliseconds since the epoch from a (coerced) time argument: `Int64` as is, or a
/// timestamp of any unit (sub-millisecond units floor towards minus infinity).
pub(crate) fn millis(function: &str, array: &ArrayRef) -> Result<Int64Array> {
    Ok(match array.data_type() {
        DataType::Int64 => i64s(function, array)?.clone(),
        DataType::Timestamp(TimeUnit::Second, _) => array
            .as_primitive::<TimestampSecondType>()
            .reinterpret_cast::<Int64Type>()
            .unary(|s| s.saturating_mul(1_000)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => array
            .as_primitive::<TimestampMillisecondType>()
            .reinterpret_cast::<Int64Type>(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => array
            .as_primitive::<TimestampMicrosecondType>()
            .reinterpret_cast::<Int64Type>()
            .unary(|us| us.div_euclid(1_000)),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => array
            .as_primitive::<TimestampNanosecondType>()
            .reinterpret_cast::<Int64Type>()
            .unary(|ns| ns.div_euclid(1_000_000)),
        other => {
            return exec_err!(
                "{function}: time argument must be a TIMESTAMP or BIGINT milliseconds, got {other}"
            );
        }
    })
}
