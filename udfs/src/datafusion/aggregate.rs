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
use datafusion_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

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
        Ok(Box::new(SampleList::<SpeedFixes>::default()))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SampleGroups::<SpeedFixes>::default()))
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
        Ok(Box::new(SampleList::<DwellSamples>::default()))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SampleGroups::<DwellSamples>::default()))
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

/// The sample lists of `max_speed_kmh` and `dwell_seconds`, as [`SampleList`] and
/// [`SampleGroups`] need them: samples read from the arguments or from the flat values of the list states, the
/// flat values written back, the final value.
trait SampleKind: Send + Sync + 'static {
    const NAME: &'static str;
    type Item: Copy + Send + Sync + 'static;
    /// The columns samples are read from (arguments, or the values of the state lists).
    type Cols<'a>;
    fn arg_cols(values: &[ArrayRef]) -> Result<Self::Cols<'_>>;
    /// The list column of the states (for the row ranges) and its flat values.
    fn state_cols(states: &[ArrayRef]) -> Result<(&ListArray, Self::Cols<'_>)>;
    /// The usable sample at position `i`, if any.
    fn item(cols: &Self::Cols<'_>, i: usize) -> Option<Self::Item>;
    /// One flat value array per state column, the groups' samples in order.
    fn state_values(groups: &[Vec<Self::Item>]) -> Vec<ArrayRef>;
    fn evaluate(items: &mut [Self::Item]) -> Option<f64>;
}

/// `max_speed_kmh`'s samples: usable fixes.
#[derive(Debug)]
struct SpeedFixes;

impl SampleKind for SpeedFixes {
    const NAME: &'static str = "max_speed_kmh";
    type Item = Fix;
    type Cols<'a> = (
        Int64Array,
        &'a Float64Array,
        &'a Float64Array,
        &'a Float64Array,
    );
    fn arg_cols(values: &[ArrayRef]) -> Result<Self::Cols<'_>> {
        let name = Self::NAME;
        let [ts, lat, lon, acc] = expect_args::<4>(name, values)?;
        Ok((
            millis(name, ts)?,
            f64s(name, lat)?,
            f64s(name, lon)?,
            f64s(name, acc)?,
        ))
    }
    fn state_cols(states: &[ArrayRef]) -> Result<(&ListArray, Self::Cols<'_>)> {
        let name = Self::NAME;
        let [ts, lat, lon, acc] = expect_args::<4>(name, states)?;
        let (list, ts) = list_values::<Int64Type>(name, ts)?;
        let (_, lat) = list_values::<Float64Type>(name, lat)?;
        let (_, lon) = list_values::<Float64Type>(name, lon)?;
        let (_, acc) = list_values::<Float64Type>(name, acc)?;
        if lat.len() != ts.len() || lon.len() != ts.len() || acc.len() != ts.len() {
            return Err(DataFusionError::Internal(format!(
                "{name}: state lists differ in length"
            )));
        }
        Ok((list, (ts.clone(), lat, lon, acc)))
    }
    #[inline]
    fn item((ts, lat, lon, acc): &Self::Cols<'_>, i: usize) -> Option<Fix> {
        if ts.is_null(i) || lat.is_null(i) || lon.is_null(i) || acc.is_null(i) {
            return None;
        }
        Fix::new(ts.value(i), lat.value(i), lon.value(i), acc.value(i))
    }
    fn state_values(groups: &[Vec<Fix>]) -> Vec<ArrayRef> {
        let all = || groups.iter().flatten();
        vec![
            Arc::new(all().map(|x| x.ts_ms).collect::<Int64Array>()),
            Arc::new(all().map(|x| x.lat).collect::<Float64Array>()),
            Arc::new(all().map(|x| x.lon).collect::<Float64Array>()),
            Arc::new(all().map(|x| x.accuracy_m).collect::<Float64Array>()),
        ]
    }
    fn evaluate(items: &mut [Fix]) -> Option<f64> {
        geo::max_speed_kmh(items)
    }
}

/// `dwell_seconds`'s samples: `(ts_ms, inside)`.
#[derive(Debug)]
struct DwellSamples;

impl SampleKind for DwellSamples {
    const NAME: &'static str = "dwell_seconds";
    type Item = (i64, bool);
    type Cols<'a> = (Int64Array, &'a BooleanArray);
    fn arg_cols(values: &[ArrayRef]) -> Result<Self::Cols<'_>> {
        let name = Self::NAME;
        let [ts, inside] = expect_args::<2>(name, values)?;
        Ok((millis(name, ts)?, booleans(name, inside)?))
    }
    fn state_cols(states: &[ArrayRef]) -> Result<(&ListArray, Self::Cols<'_>)> {
        let name = Self::NAME;
        let [ts, inside] = expect_args::<2>(name, states)?;
        let (list, ts) = list_values::<Int64Type>(name, ts)?;
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
        Ok((list, (ts.clone(), inside)))
    }
    #[inline]
    fn item((ts, inside): &Self::Cols<'_>, i: usize) -> Option<(i64, bool)> {
        (ts.is_valid(i) && inside.is_valid(i)).then(|| (ts.value(i), inside.value(i)))
    }
    fn state_values(groups: &[Vec<(i64, bool)>]) -> Vec<ArrayRef> {
        let all = || groups.iter().flatten();
        vec![
            Arc::new(all().map(|x| x.0).collect::<Int64Array>()),
            Arc::new(all().map(|x| Some(x.1)).collect::<BooleanArray>()),
        ]
    }
    fn evaluate(items: &mut [(i64, bool)]) -> Option<f64> {
        geo::dwell_seconds(items)
    }
}

/// The sample-list aggregates without groups: the samples seen so far.
struct SampleList<K: SampleKind> {
    items: Vec<K::Item>,
}

impl<K: SampleKind> Default for SampleList<K> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<K: SampleKind> std::fmt::Debug for SampleList<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleList")
            .field("function", &K::NAME)
            .field("items", &self.items.len())
            .finish()
    }
}

impl<K: SampleKind> Accumulator for SampleList<K> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let cols = K::arg_cols(values)?;
        let rows = values.first().map_or(0, |v| v.len());
        self.items
            .extend((0..rows).filter_map(|i| K::item(&cols, i)));
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (list, cols) = K::state_cols(states)?;
        for row in 0..list.len() {
            self.items
                .extend(list_range(list, row).filter_map(|i| K::item(&cols, i)));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(K::state_values(std::slice::from_ref(&self.items))
            .into_iter()
            .map(list_scalar)
            .collect())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(K::evaluate(&mut self.items)))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.items.capacity() * size_of::<K::Item>()
    }
}

/// The grouped form of the sample-list aggregates: one sample list per group, states
/// written and read as whole list columns. Without it DataFusion wraps the per-group
/// [`Accumulator`] and builds every group's state through `ScalarValue`s, which was most
/// of the engine's time on the product rules (`load-tests/README.md`).
struct SampleGroups<K: SampleKind> {
    groups: Vec<Vec<K::Item>>,
    /// Samples held, for [`GroupsAccumulator::size`] (called per batch: no scan).
    items: usize,
}

impl<K: SampleKind> Default for SampleGroups<K> {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            items: 0,
        }
    }
}

impl<K: SampleKind> std::fmt::Debug for SampleGroups<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleGroups")
            .field("function", &K::NAME)
            .field("groups", &self.groups.len())
            .field("items", &self.items)
            .finish()
    }
}

impl<K: SampleKind> SampleGroups<K> {
    fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<K::Item>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.items -= taken.iter().map(Vec::len).sum::<usize>();
        taken
    }
}

impl<K: SampleKind> GroupsAccumulator for SampleGroups<K> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let cols = K::arg_cols(values)?;
        for (i, &g) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|f| !(f.is_valid(i) && f.value(i))) {
                continue;
            }
            if let (Some(item), Some(group)) = (K::item(&cols, i), self.groups.get_mut(g)) {
                group.push(item);
                self.items += 1;
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let (list, cols) = K::state_cols(values)?;
        for (row, &g) in group_indices.iter().enumerate() {
            let Some(group) = self.groups.get_mut(g) else {
                continue;
            };
            for i in list_range(list, row) {
                if let Some(item) = K::item(&cols, i) {
                    group.push(item);
                    self.items += 1;
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut groups = self.take(emit_to);
        Ok(Arc::new(
            groups
                .iter_mut()
                .map(|g| K::evaluate(g))
                .collect::<Float64Array>(),
        ))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        state_lists::<K>(&groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let cols = K::arg_cols(values)?;
        let rows = values.first().map_or(0, |v| v.len());
        let groups: Vec<Vec<K::Item>> = (0..rows)
            .map(|i| {
                let kept = opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
                kept.then(|| K::item(&cols, i))
                    .flatten()
                    .into_iter()
                    .collect()
            })
            .collect();
        state_lists::<K>(&groups)
    }

    fn size(&self) -> usize {
        size_of::<Self>()
            + self.groups.capacity() * size_of::<Vec<K::Item>>()
            + self.items * size_of::<K::Item>()
    }
}

/// The state columns of `groups`: one list column per state field, a row per group.
fn state_lists<K: SampleKind>(groups: &[Vec<K::Item>]) -> Result<Vec<ArrayRef>> {
    let offsets = OffsetBuffer::from_lengths(groups.iter().map(Vec::len));
    K::state_values(groups)
        .into_iter()
        .map(|values| {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            Ok(Arc::new(ListArray::try_new(field, offsets.clone(), values, None)?) as ArrayRef)
        })
        .collect()
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
