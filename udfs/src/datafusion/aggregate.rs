//! DataFusion adapters of the window aggregates in [`crate::core::geo`]: fastest movement,
//! dwell time and radius of gyration.
//!
//! All three merge partial states from any partition of the rows, in any order (the
//! engine computes sliding windows from per-slide partials). `max_speed_kmh` and
//! `dwell_seconds` need consecutive pairs by time, which no fixed-size summary of an
//! interleaved partition preserves, so their state is the list of usable samples; the
//! radius of gyration merges exactly from five numbers. `max_speed_kmh` can shorten its
//! list where the caller knows no other fix will fall in between (see [`SettledSpans`]).

use std::mem::size_of;
use std::sync::Arc;
use std::sync::Mutex;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int64Array, Int64Builder,
    ListArray, PrimitiveArray,
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

/// Times, shared between a streaming engine and its [`MaxSpeedKmh`], in which the fixes
/// of the partial states `max_speed_kmh` writes are *settled*: open intervals `(lo, hi)`
/// of epoch milliseconds such that no fix that is not already in a state will ever be
/// merged into it with a time strictly inside one. The engine sets them around each merge
/// of partial states for which it can promise that, and clears them (nothing settled, the
/// default) otherwise.
///
/// A run of consecutive fixes inside one interval has no unknown neighbour, so its steps
/// are final: the state keeps the run's first fix, carrying the fastest step inside the
/// run, and its last fix, which still pairs with whatever follows. A state then holds two
/// fixes for each settled run where it held every fix, and the result is exactly the one
/// the whole list would give.
///
/// Breaking the promise (a fix inside an interval merged later) gives a result that skips
/// that fix's steps, never a panic.
///
/// The intervals are per thread: a merge sees those its own thread set. An engine may
/// merge on two threads at once (a compaction in the background, the batch at hand on
/// its own thread), each under a promise of its own.
#[derive(Debug, Clone, Default)]
pub struct SettledSpans(Arc<Mutex<Vec<(std::thread::ThreadId, Spans)>>>);

/// Open intervals `(lo, hi)` of epoch milliseconds, sorted and disjoint.
type Spans = Arc<[(i64, i64)]>;

impl SettledSpans {
    /// Fixes strictly inside these intervals are settled from now on, in merges on the
    /// calling thread. They must be sorted and disjoint.
    pub fn set(&self, spans: Vec<(i64, i64)>) {
        let me = std::thread::current().id();
        let mut all = self.lock();
        all.retain(|(t, _)| *t != me);
        if !spans.is_empty() {
            all.push((me, spans.into()));
        }
    }

    /// Settles every time outside `occupied`: closed intervals `[lo, hi]` holding every
    /// time a fix not yet in the states may have (in any order, overlapping or not).
    pub fn set_outside(&self, mut occupied: Vec<(i64, i64)>) {
        occupied.sort_unstable();
        let mut spans = Vec::with_capacity(occupied.len() + 1);
        let mut reach = i64::MIN;
        for (lo, hi) in occupied {
            if lo > reach {
                spans.push((reach, lo));
            }
            reach = reach.max(hi);
        }
        if reach < i64::MAX {
            spans.push((reach, i64::MAX));
        }
        self.set(spans);
    }

    /// Nothing is settled from now on, in merges on the calling thread.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// The calling thread's current intervals.
    pub fn get(&self) -> Spans {
        let me = std::thread::current().id();
        self.lock()
            .iter()
            .find(|(t, _)| *t == me)
            .map_or_else(|| Arc::from([]), |(_, s)| Arc::clone(s))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(std::thread::ThreadId, Spans)>> {
        // A panic elsewhere cannot leave the value half-written: use it as it is.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PartialEq for SettledSpans {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SettledSpans {}

impl std::hash::Hash for SettledSpans {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// `max_speed_kmh(ts, lat, lon, accuracy_m) -> DOUBLE`: the fastest movement between
/// consecutive usable fixes by time (see [`geo::max_speed_kmh`]); NULL with fewer than two.
/// `ts` is a TIMESTAMP (any unit) or BIGINT milliseconds.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MaxSpeedKmh {
    signature: Signature,
    settled: Option<SettledSpans>,
}

impl Default for MaxSpeedKmh {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            settled: None,
        }
    }
}

impl MaxSpeedKmh {
    /// The function whose partial states settle their fixes inside `settled` (see
    /// [`SettledSpans`]). Same name, arguments and results as the default.
    pub fn settling(settled: SettledSpans) -> Self {
        Self {
            settled: Some(settled),
            ..Self::default()
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
        Ok(Box::new(SampleList::<SpeedFixes> {
            settled: self.settled.clone(),
            ..SampleList::default()
        }))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SampleGroups::<SpeedFixes> {
            settled: self.settled.clone(),
            ..SampleGroups::default()
        }))
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
    /// Adds what position `i` of a list state holds to `group`: how many samples it added.
    #[inline]
    fn merge_item(cols: &Self::Cols<'_>, i: usize, group: &mut Vec<Self::Item>) -> usize {
        push_item(group, Self::item(cols, i))
    }
    /// The length of `group`'s state list.
    fn state_len(group: &[Self::Item]) -> usize {
        group.len()
    }
    /// One flat value array per state column, the groups' samples in order.
    fn state_values(groups: &[Vec<Self::Item>]) -> Vec<ArrayRef>;
    fn evaluate(items: &mut [Self::Item]) -> Option<f64>;
    /// Shortens `items` where samples inside `spans` are settled (see
    /// [`SettledSpans`]); only kinds that can do so exactly override it.
    fn settle(_items: &mut Vec<Self::Item>, _spans: &[(i64, i64)]) {}
}

/// Pushes `item`, if any, onto `group`: how many samples that added.
#[inline]
fn push_item<T>(group: &mut Vec<T>, item: Option<T>) -> usize {
    item.map_or(0, |x| {
        group.push(x);
        1
    })
}

/// A usable fix in `max_speed_kmh`'s state. `span_kmh` is NaN, except on the first fix of
/// a settled run ([`SettledSpans`]), where it is the fastest step from this fix to the
/// next one kept (the run's last), through the fixes dropped between them.
#[derive(Clone, Copy, Debug)]
struct SpeedItem {
    fix: Fix,
    span_kmh: f64,
}

impl SpeedItem {
    /// The step to `next`, the item after this one in time.
    #[inline]
    fn step_kmh(&self, next: &SpeedItem) -> f64 {
        if self.span_kmh.is_nan() {
            geo::step_kmh(&self.fix, &next.fix)
        } else {
            self.span_kmh
        }
    }
}

/// Sorts by `(ts, lat, lon, accuracy, span)`, the order of [`geo::max_speed_kmh`] made
/// total over the span too, so that neither input order nor merge order shows.
fn sort_speed_items(items: &mut [SpeedItem]) {
    items.sort_unstable_by(|a, b| {
        let (x, y) = (&a.fix, &b.fix);
        x.ts_ms
            .cmp(&y.ts_ms)
            .then(x.lat.total_cmp(&y.lat))
            .then(x.lon.total_cmp(&y.lon))
            .then(x.accuracy_m.total_cmp(&y.accuracy_m))
            .then(a.span_kmh.total_cmp(&b.span_kmh))
    });
}

/// `max_speed_kmh`'s samples: usable fixes.
#[derive(Debug)]
struct SpeedFixes;

impl SampleKind for SpeedFixes {
    const NAME: &'static str = "max_speed_kmh";
    type Item = SpeedItem;
    /// ts, lat, lon, accuracy, and whether they are the values of state lists.
    type Cols<'a> = (
        Int64Array,
        &'a Float64Array,
        &'a Float64Array,
        &'a Float64Array,
        bool,
    );
    fn arg_cols(values: &[ArrayRef]) -> Result<Self::Cols<'_>> {
        let name = Self::NAME;
        let [ts, lat, lon, acc] = expect_args::<4>(name, values)?;
        Ok((
            millis(name, ts)?,
            f64s(name, lat)?,
            f64s(name, lon)?,
            f64s(name, acc)?,
            false,
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
        Ok((list, (ts.clone(), lat, lon, acc, true)))
    }
    #[inline]
    fn item((ts, lat, lon, acc, _): &Self::Cols<'_>, i: usize) -> Option<SpeedItem> {
        if ts.is_null(i) || lat.is_null(i) || lon.is_null(i) || acc.is_null(i) {
            return None;
        }
        let fix = Fix::new(ts.value(i), lat.value(i), lon.value(i), acc.value(i))?;
        Some(SpeedItem {
            fix,
            span_kmh: f64::NAN,
        })
    }
    /// In a state, a value with a null latitude and a longitude is no fix: it marks the
    /// fix before it as the first of a settled run, the longitude holding the run's
    /// fastest step (see [`SpeedFixes::state_values`]).
    #[inline]
    fn merge_item(cols: &Self::Cols<'_>, i: usize, group: &mut Vec<SpeedItem>) -> usize {
        let (_, lat, lon, _, state) = cols;
        if *state && lat.is_null(i) && lon.is_valid(i) {
            if let Some(first) = group.last_mut() {
                first.span_kmh = lon.value(i);
            }
            return 0;
        }
        push_item(group, Self::item(cols, i))
    }
    fn state_len(group: &[SpeedItem]) -> usize {
        group.len() + group.iter().filter(|x| !x.span_kmh.is_nan()).count()
    }
    /// The fixes as lists of ts, lat, lon and accuracy, each first fix of a settled run
    /// followed by a marker: its time, a null latitude and accuracy, and the run's
    /// fastest step as longitude. A state without settled runs is just its fixes, with
    /// no null buffer.
    fn state_values(groups: &[Vec<SpeedItem>]) -> Vec<ArrayRef> {
        let n = groups.iter().map(|g| Self::state_len(g)).sum();
        let mut ts = Int64Builder::with_capacity(n);
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut acc = Float64Builder::with_capacity(n);
        for x in groups.iter().flatten() {
            ts.append_value(x.fix.ts_ms);
            lat.append_value(x.fix.lat);
            lon.append_value(x.fix.lon);
            acc.append_value(x.fix.accuracy_m);
            if !x.span_kmh.is_nan() {
                ts.append_value(x.fix.ts_ms);
                lat.append_null();
                lon.append_value(x.span_kmh);
                acc.append_null();
            }
        }
        vec![
            Arc::new(ts.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
            Arc::new(acc.finish()),
        ]
    }
    /// [`geo::max_speed_kmh`] over the items, a settled run counting as its fastest step.
    fn evaluate(items: &mut [SpeedItem]) -> Option<f64> {
        if items.len() < 2 {
            return None;
        }
        sort_speed_items(items);
        let fastest = items
            .windows(2)
            .map(|pair| pair[0].step_kmh(&pair[1]))
            .fold(0.0_f64, f64::max);
        Some(fastest)
    }
    /// Replaces each run of three or more consecutive items inside one of `spans` by
    /// the run's first item, carrying the fastest step of the run, and its last.
    fn settle(items: &mut Vec<SpeedItem>, spans: &[(i64, i64)]) {
        // The span strictly containing `ts`, if any.
        let span_of = |ts: i64| {
            let i = spans.partition_point(|s| s.1 <= ts);
            spans
                .get(i)
                .is_some_and(|s| s.0 < ts && ts < s.1)
                .then_some(i)
        };
        if items.len() < 3
            || items
                .iter()
                .filter(|x| span_of(x.fix.ts_ms).is_some())
                .count()
                < 3
        {
            return;
        }
        sort_speed_items(items);
        let n = items.len();
        let (mut read, mut write) = (0, 0);
        while read < n {
            let span = span_of(items[read].fix.ts_ms);
            let mut end = read + 1;
            if span.is_some() {
                while end < n && span_of(items[end].fix.ts_ms) == span {
                    end += 1;
                }
            }
            if end - read >= 3 {
                let mut first = items[read];
                first.span_kmh = items[read..end]
                    .windows(2)
                    .map(|pair| pair[0].step_kmh(&pair[1]))
                    .fold(0.0_f64, f64::max);
                items[write] = first;
                items[write + 1] = items[end - 1];
                write += 2;
            } else {
                items.copy_within(read..end, write);
                write += end - read;
            }
            read = end;
        }
        items.truncate(write);
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
    /// Where states settle, for the kinds that can ([`SampleKind::settle`]).
    settled: Option<SettledSpans>,
}

impl<K: SampleKind> Default for SampleList<K> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            settled: None,
        }
    }
}

/// The intervals to settle states in now, if any.
fn settle_in(settled: Option<&SettledSpans>) -> Option<Spans> {
    settled.map(SettledSpans::get).filter(|s| !s.is_empty())
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
            for i in list_range(list, row) {
                K::merge_item(&cols, i, &mut self.items);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        if let Some(spans) = settle_in(self.settled.as_ref()) {
            K::settle(&mut self.items, &spans);
        }
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
    /// Where states settle, for the kinds that can ([`SampleKind::settle`]).
    settled: Option<SettledSpans>,
}

impl<K: SampleKind> Default for SampleGroups<K> {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            items: 0,
            settled: None,
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
                self.items += K::merge_item(&cols, i, group);
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
        let mut groups = self.take(emit_to);
        if let Some(spans) = settle_in(self.settled.as_ref()) {
            for g in &mut groups {
                K::settle(g, &spans);
            }
        }
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
    let offsets = OffsetBuffer::from_lengths(groups.iter().map(|g| K::state_len(g)));
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

// The seeded generator of the integration tests, so failures replay.
#[cfg(test)]
#[path = "../../tests/support/splitmix.rs"]
mod splitmix;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use splitmix::SplitMix;

    const GROUPS: usize = 3;

    /// A settling groups accumulator's partial state of `rows` (`(group, fix)`).
    fn partial(rows: &[(usize, Fix)]) -> Vec<ArrayRef> {
        let mut acc = SampleGroups::<SpeedFixes>::default();
        let values: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.1.ts_ms).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.1.lat).collect::<Float64Array>()),
            Arc::new(rows.iter().map(|r| r.1.lon).collect::<Float64Array>()),
            Arc::new(
                rows.iter()
                    .map(|r| r.1.accuracy_m)
                    .collect::<Float64Array>(),
            ),
        ];
        let groups: Vec<usize> = rows.iter().map(|r| r.0).collect();
        acc.update_batch(&values, &groups, None, GROUPS).unwrap();
        acc.state(EmitTo::All).unwrap()
    }

    /// Merges `parts` (each a state with one row per group) settling outside `occupied`:
    /// the merged state, and the items it holds.
    fn merge(parts: &[Vec<ArrayRef>], occupied: Vec<(i64, i64)>) -> (Vec<ArrayRef>, usize) {
        let cell = SettledSpans::default();
        let mut acc = SampleGroups::<SpeedFixes> {
            settled: Some(cell.clone()),
            ..SampleGroups::default()
        };
        let rows: Vec<usize> = (0..GROUPS).collect();
        for p in parts {
            acc.merge_batch(p, &rows, GROUPS).unwrap();
        }
        cell.set_outside(occupied);
        let state = acc.state(EmitTo::All).unwrap();
        let items = state[0].as_list::<i32>().values().len();
        (state, items)
    }

    /// Pings of three devices arrive a little out of order, in batches; late ones are
    /// dropped as the engine drops them. Parts merge in random sets, settling outside the
    /// times the other parts span and those from the watermark on, as the engine's
    /// compactions do. The end result is bit for bit the one of the whole list, and the
    /// states stay short.
    #[test]
    fn settled_states_give_the_whole_lists_result() {
        for seed in 1..=60u64 {
            let mut rng = SplitMix(seed);
            let bound = 120_000; // the watermark's lateness bound, ms
            let mut t = 1_000_000_i64;
            let mut pings = Vec::new();
            for _ in 0..600 {
                t += [0, 1, 500, 2_000, 30_000][rng.below(5) as usize];
                let g = rng.below(GROUPS as u64) as usize;
                // Now and then a jump of hundreds of kilometres: an impossible step.
                let far = if rng.below(20) == 0 { 5.0 } else { 0.01 };
                let fix = Fix::new(
                    t - rng.below(bound as u64 + 30_000) as i64,
                    45.0 + far * rng.uniform(0.0, 1.0),
                    7.0 + far * rng.uniform(0.0, 1.0),
                    [0.0, 5.0, 150.0][rng.below(3) as usize],
                )
                .unwrap();
                pings.push((g, fix));
            }
            let mut max_ts = i64::MIN;
            let mut on_time: Vec<Vec<Fix>> = vec![Vec::new(); GROUPS];
            // (state, (earliest, latest) fix time it may hold)
            let mut parts: Vec<(Vec<ArrayRef>, (i64, i64))> = Vec::new();
            let mut held = 0;
            for batch in pings.chunks(7) {
                let wm_before = max_ts.saturating_sub(bound);
                let mut rows = Vec::new();
                for &(g, fix) in batch {
                    let wm = max_ts.saturating_sub(bound);
                    max_ts = max_ts.max(fix.ts_ms);
                    if fix.ts_ms >= wm {
                        rows.push((g, fix));
                        on_time[g].push(fix);
                    }
                }
                if !rows.is_empty() {
                    let floor = rows.iter().map(|r| r.1.ts_ms).min().unwrap();
                    let ceil = rows.iter().map(|r| r.1.ts_ms).max().unwrap();
                    assert!(floor >= wm_before);
                    parts.push((partial(&rows), (floor, ceil)));
                }
                let wm = max_ts.saturating_sub(bound);
                if parts.len() >= 4 {
                    let n = 2 + rng.below(3) as usize;
                    let mut taken = Vec::new();
                    for _ in 0..n {
                        taken.push(parts.remove(rng.below(parts.len() as u64) as usize));
                    }
                    let mut occupied: Vec<_> = parts.iter().map(|p| p.1).collect();
                    occupied.push((wm, i64::MAX));
                    let states: Vec<_> = taken.iter().map(|p| p.0.clone()).collect();
                    let (state, items) = merge(&states, occupied);
                    held = items;
                    let floor = taken.iter().map(|p| p.1.0).min().unwrap();
                    let ceil = taken.iter().map(|p| p.1.1).max().unwrap();
                    parts.push((state, (floor, ceil)));
                }
            }
            let states: Vec<_> = parts.iter().map(|p| p.0.clone()).collect();
            let (state, _) = merge(&states, vec![(i64::MIN, i64::MAX)]);
            let mut fin = SampleGroups::<SpeedFixes>::default();
            fin.merge_batch(&state, &(0..GROUPS).collect::<Vec<_>>(), GROUPS)
                .unwrap();
            let got = fin.evaluate(EmitTo::All).unwrap();
            let got = got.as_primitive::<Float64Type>();
            for (g, fixes) in on_time.iter_mut().enumerate() {
                let want = geo::max_speed_kmh(fixes);
                let have = got.is_valid(g).then(|| got.value(g));
                assert_eq!(
                    have.map(f64::to_bits),
                    want.map(f64::to_bits),
                    "seed {seed}, group {g}: {have:?} != {want:?}"
                );
            }
            let total: usize = on_time.iter().map(Vec::len).sum();
            assert!(
                held * 3 < total,
                "seed {seed}: a merged state held {held} of {total} fixes"
            );
        }
    }

    #[test]
    fn settled_spans_are_the_gaps_between_occupied_times() {
        let s = SettledSpans::default();
        s.set_outside(vec![(50, 60), (10, 20), (15, 30), (90, i64::MAX)]);
        assert_eq!(&*s.get(), &[(i64::MIN, 10), (30, 50), (60, 90)]);
        s.set_outside(vec![]);
        assert_eq!(&*s.get(), &[(i64::MIN, i64::MAX)]);
        // Another thread sees its own intervals, none here.
        let other = s.clone();
        std::thread::spawn(move || {
            assert!(other.get().is_empty());
            other.set(vec![(1, 2)]);
            assert_eq!(&*other.get(), &[(1, 2)]);
        })
        .join()
        .unwrap();
        assert_eq!(&*s.get(), &[(i64::MIN, i64::MAX)]);
        s.clear();
        assert!(s.get().is_empty());
        // A run inside the middle span settles; the fixes around it stay.
        let item = |ts: i64| SpeedItem {
            fix: Fix::new(ts, ts as f64 / 1_000.0, 0.0, 0.0).unwrap(),
            span_kmh: f64::NAN,
        };
        let mut items: Vec<SpeedItem> = [5, 12, 31, 35, 40, 49, 55].map(item).to_vec();
        let mut all: Vec<Fix> = items.iter().map(|x| x.fix).collect();
        SpeedFixes::settle(&mut items, &[(i64::MIN, 10), (30, 50), (60, 90)]);
        let ts: Vec<i64> = items.iter().map(|x| x.fix.ts_ms).collect();
        assert_eq!(ts, [5, 12, 31, 49, 55]);
        assert_eq!(
            SpeedFixes::evaluate(&mut items),
            geo::max_speed_kmh(&mut all)
        );
    }

    /// Settling keeps both ends of a run and the fixes outside it, and leaves a run of
    /// fewer than three settled fixes as it is.
    #[test]
    fn settle_keeps_both_ends_of_the_run() {
        let fix = |ts, lat| Fix::new(ts, lat, 0.0, 0.0).unwrap();
        let item = |fix| SpeedItem {
            fix,
            span_kmh: f64::NAN,
        };
        let mut items: Vec<SpeedItem> = [3_000, 0, 1_000, 2_000, 9_000]
            .iter()
            .zip([0.3, 0.0, 0.1, 0.2, 0.9])
            .map(|(&ts, lat)| item(fix(ts, lat)))
            .collect();
        let mut all: Vec<Fix> = items.iter().map(|x| x.fix).collect();
        let want = geo::max_speed_kmh(&mut all);
        let mut two = items[..2].to_vec();
        SpeedFixes::settle(&mut two, &[(i64::MIN, i64::MAX)]);
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|x| x.span_kmh.is_nan()));
        SpeedFixes::settle(&mut items, &[(i64::MIN, 2_500)]);
        let ts: Vec<i64> = items.iter().map(|x| x.fix.ts_ms).collect();
        assert_eq!(ts, [0, 2_000, 3_000, 9_000]);
        assert!(!items[0].span_kmh.is_nan() && items[1].span_kmh.is_nan());
        assert_eq!(SpeedFixes::evaluate(&mut items), want);
        SpeedFixes::settle(&mut items, &[(i64::MIN, i64::MAX)]);
        assert_eq!(items.len(), 2);
        assert_eq!(SpeedFixes::evaluate(&mut items), want);
    }
}
