//! DataFusion adapters of the window aggregates in [`crate::core::geo`]: fastest movement,
//! dwell time and radius of gyration.
//!
//! All three merge partial states from any partition of the rows, in any order (the
//! engine computes sliding windows from per-slide partials). `max_speed_kmh` and
//! `dwell_seconds` need consecutive pairs by time, which no fixed-size summary of an
//! interleaved partition preserves, so their state is the list of usable samples; the
//! radius of gyration merges exactly from five numbers.

use std::mem::size_of;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, PrimitiveArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type, UInt64Type};
use datafusion_common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion_expr::utils::format_state_name;
use datafusion_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

use super::util::{coerce_float, coerce_timestamp, expect_args, f64s, millis};
use crate::core::geo::{self, Fix, Gyration};

fn list_field(name: &str, item: DataType) -> FieldRef {
    Arc::new(Field::new_list(
        name,
        Field::new_list_field(item, true),
        true,
    ))
}

/// One list scalar holding `values`.
fn list_scalar(values: ArrayRef) -> ScalarValue {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let offsets = OffsetBuffer::from_lengths([values.len()]);
    ScalarValue::List(Arc::new(ListArray::new(field, offsets, values, None)))
}

/// The flat values of the list column `state` as `T`, or an internal error.
fn list_values<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    function: &str,
    state: &'a ArrayRef,
) -> Result<(&'a ListArray, &'a PrimitiveArray<T>)> {
    let list = state.as_list_opt::<i32>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function}: state must be a list, got {}",
            state.data_type()
        ))
    })?;
    let values = list.values().as_primitive_opt::<T>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function}: unexpected state item type {}",
            list.values().data_type()
        ))
    })?;
    Ok((list, values))
}

/// Row range `[start, end)` of list row `row` in the flat values, skipping null lists.
fn list_range(list: &ListArray, row: usize) -> std::ops::Range<usize> {
    if list.is_null(row) {
        return 0..0;
    }
    let offsets = list.value_offsets();
    offsets[row] as usize..offsets[row + 1] as usize
}

/// `max_speed_kmh(ts, lat, lon, accuracy_m) -> DOUBLE`: the fastest movement between
/// consecutive usable fixes by time (see [`geo::max_speed_kmh`]); NULL with fewer than two.
/// `ts` is a TIMESTAMP (any unit) or BIGINT milliseconds.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MaxSpeedKmh {
    signature: Signature,
}

impl Default for MaxSpeedKmh {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for MaxSpeedKmh {
    fn name(&self) -> &str {
        "max_speed_kmh"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let [ts, lat, lon, acc] = arg_types else {
            return plan_err!(
                "{name} takes 4 arguments (ts, lat, lon, accuracy), got {}",
                arg_types.len()
            );
        };
        Ok(vec![
            coerce_timestamp(name, ts)?,
            coerce_float(name, lat)?,
            coerce_float(name, lon)?,
            coerce_float(name, acc)?,
        ])
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            list_field(&format_state_name(args.name, "ts_ms"), DataType::Int64),
            list_field(&format_state_name(args.name, "lat"), DataType::Float64),
            list_field(&format_state_name(args.name, "lon"), DataType::Float64),
            list_field(
                &format_state_name(args.name, "accuracy_m"),
                DataType::Float64,
            ),
        ])
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<MaxSpeedAccumulator>::default())
    }
}

/// Usable fixes seen so far.
#[derive(Debug, Default)]
struct MaxSpeedAccumulator {
    fixes: Vec<Fix>,
}

impl MaxSpeedAccumulator {
    fn push_all(
        &mut self,
        ts: &Int64Array,
        lat: &Float64Array,
        lon: &Float64Array,
        acc: &Float64Array,
        rows: std::ops::Range<usize>,
    ) {
        for i in rows {
            if ts.is_null(i) || lat.is_null(i) || lon.is_null(i) || acc.is_null(i) {
                continue;
            }
            if let Some(fix) = Fix::new(ts.value(i), lat.value(i), lon.value(i), acc.value(i)) {
                self.fixes.push(fix);
            }
        }
    }
}

impl Accumulator for MaxSpeedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let name = "max_speed_kmh";
        let [ts, lat, lon, acc] = expect_args::<4>(name, values)?;
        let ts = millis(name, ts)?;
        let (lat, lon, acc) = (f64s(name, lat)?, f64s(name, lon)?, f64s(name, acc)?);
        self.push_all(&ts, lat, lon, acc, 0..ts.len());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let name = "max_speed_kmh";
        let [ts, lat, lon, acc] = expect_args::<4>(name, states)?;
        let (ts_list, ts) = list_values::<Int64Type>(name, ts)?;
        let (_, lat) = list_values::<Float64Type>(name, lat)?;
        let (_, lon) = list_values::<Float64Type>(name, lon)?;
        let (_, acc) = list_values::<Float64Type>(name, acc)?;
        if lat.len() != ts.len() || lon.len() != ts.len() || acc.len() != ts.len() {
            return Err(DataFusionError::Internal(format!(
                "{name}: state lists differ in length"
            )));
        }
        for row in 0..ts_list.len() {
            self.push_all(ts, lat, lon, acc, list_range(ts_list, row));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let f = &self.fixes;
        Ok(vec![
            list_scalar(Arc::new(f.iter().map(|x| x.ts_ms).collect::<Int64Array>())),
            list_scalar(Arc::new(f.iter().map(|x| x.lat).collect::<Float64Array>())),
            list_scalar(Arc::new(f.iter().map(|x| x.lon).collect::<Float64Array>())),
            list_scalar(Arc::new(
                f.iter().map(|x| x.accuracy_m).collect::<Float64Array>(),
            )),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(geo::max_speed_kmh(&mut self.fixes)))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.fixes.capacity() * size_of::<Fix>()
    }
}

/// `dwell_seconds(ts, inside BOOLEAN) -> DOUBLE`: seconds between consecutive samples that
/// are both inside (see [`geo::dwell_seconds`]); NULL without samples. `ts` is a TIMESTAMP
/// (any unit) or BIGINT milliseconds; `inside` may also be an integer, non-zero meaning
/// inside (the form the Arroyo UDF takes).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DwellSeconds {
    signature: Signature,
}

impl Default for DwellSeconds {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for DwellSeconds {
    fn name(&self) -> &str {
        "dwell_seconds"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let [ts, inside] = arg_types else {
            return plan_err!(
                "{name} takes 2 arguments (ts, inside), got {}",
                arg_types.len()
            );
        };
        // Integers (non-zero = inside) are the form Arroyo UDFs can take.
        if !(matches!(inside, DataType::Boolean | DataType::Null) || inside.is_integer()) {
            return plan_err!("{name}: inside must be a BOOLEAN or an integer, got {inside}");
        }
        Ok(vec![coerce_timestamp(name, ts)?, DataType::Boolean])
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            list_field(&format_state_name(args.name, "ts_ms"), DataType::Int64),
            list_field(&format_state_name(args.name, "inside"), DataType::Boolean),
        ])
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<DwellAccumulator>::default())
    }
}

/// Samples `(ts_ms, inside)` seen so far.
#[derive(Debug, Default)]
struct DwellAccumulator {
    samples: Vec<(i64, bool)>,
}

impl DwellAccumulator {
    fn push_all(&mut self, ts: &Int64Array, inside: &BooleanArray, rows: std::ops::Range<usize>) {
        for i in rows {
            if ts.is_valid(i) && inside.is_valid(i) {
                self.samples.push((ts.value(i), inside.value(i)));
            }
        }
    }
}

fn booleans<'a>(function: &str, array: &'a ArrayRef) -> Result<&'a BooleanArray> {
    array.as_boolean_opt().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function}: expected Boolean, got {}",
            array.data_type()
        ))
    })
}

impl Accumulator for DwellAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let name = "dwell_seconds";
        let [ts, inside] = expect_args::<2>(name, values)?;
        let ts = millis(name, ts)?;
        self.push_all(&ts, booleans(name, inside)?, 0..ts.len());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let name = "dwell_seconds";
        let [ts, inside] = expect_args::<2>(name, states)?;
        let (ts_list, ts) = list_values::<Int64Type>(name, ts)?;
        let inside_list = inside.as_list_opt::<i32>().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "{name}: state must be a list, got {}",
                inside.data_type()
            ))
        })?;
        let inside = booleans(name, inside_list.values())?;
        if inside.len() != ts.len() {
            return Err(DataFusionError::Internal(format!(
                "{name}: state lists differ in length"
            )));
        }
        for row in 0..ts_list.len() {
            self.push_all(ts, inside, list_range(ts_list, row));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let s = &self.samples;
        Ok(vec![
            list_scalar(Arc::new(s.iter().map(|x| x.0).collect::<Int64Array>())),
            list_scalar(Arc::new(
                s.iter().map(|x| Some(x.1)).collect::<BooleanArray>(),
            )),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(geo::dwell_seconds(&mut self.samples)))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.samples.capacity() * size_of::<(i64, bool)>()
    }
}

/// `radius_of_gyration_m(lat, lon DOUBLE) -> DOUBLE`: root-mean-square distance of the
/// valid positions from their centroid, in metres (see [`Gyration`]); NULL without one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RadiusOfGyrationM {
    signature: Signature,
}

impl Default for RadiusOfGyrationM {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Float64; 2], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for RadiusOfGyrationM {
    fn name(&self) -> &str {
        "radius_of_gyration_m"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let field = |part: &str, t: DataType| {
            Arc::new(Field::new(format_state_name(args.name, part), t, true))
        };
        Ok(vec![
            field("count", DataType::UInt64),
            field("mean_x", DataType::Float64),
            field("mean_y", DataType::Float64),
            field("mean_z", DataType::Float64),
            field("m2", DataType::Float64),
        ])
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<GyrationAccumulator>::default())
    }
}

/// The mergeable [`Gyration`] summary.
#[derive(Debug, Default)]
struct GyrationAccumulator {
    gyration: Gyration,
}

impl Accumulator for GyrationAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let name = "radius_of_gyration_m";
        let [lat, lon] = expect_args::<2>(name, values)?;
        let (lat, lon) = (f64s(name, lat)?, f64s(name, lon)?);
        for i in 0..lat.len() {
            if lat.is_valid(i) && lon.is_valid(i) {
                self.gyration.push(lat.value(i), lon.value(i));
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let name = "radius_of_gyration_m";
        let [count, x, y, z, m2] = expect_args::<5>(name, states)?;
        let count = count.as_primitive_opt::<UInt64Type>().ok_or_else(|| {
            DataFusionError::Internal(format!("{name}: count state must be UInt64"))
        })?;
        let (x, y, z, m2) = (
            f64s(name, x)?,
            f64s(name, y)?,
            f64s(name, z)?,
            f64s(name, m2)?,
        );
        for i in 0..count.len() {
            if count.is_null(i) {
                continue;
            }
            self.gyration.merge(&Gyration {
                count: count.value(i),
                mean: [x.value(i), y.value(i), z.value(i)],
                m2: m2.value(i),
            });
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let g = &self.gyration;
        Ok(vec![
            ScalarValue::UInt64(Some(g.count)),
            ScalarValue::Float64(Some(g.mean[0])),
            ScalarValue::Float64(Some(g.mean[1])),
            ScalarValue::Float64(Some(g.mean[2])),
            ScalarValue::Float64(Some(g.m2)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.gyration.radius_m()))
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }
}
