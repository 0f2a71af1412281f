//! Window functions (`tumble`, `hop`, `session` in `GROUP BY`) and window state.
//!
//! The functions only mark the window in a query: the planner replaces them by a
//! window key column the engine fills in ([`key_type`]; the query sees a `window` struct
//! `{start, end}`, timestamps, ms, UTC). Hop/tumble state is per-slide partial
//! aggregates (DataFusion `AggregateMode::Partial` output) keyed by slide bucket and
//! compacted tiered; a window is emitted by feeding the partials of its buckets to the
//! `Final` aggregate. Session state is the windowed query's input rows, sessionized per
//! key when the watermark may have closed one.

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StructArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Fields, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Names of the window functions.
pub const WINDOW_FUNCTIONS: [&str; 3] = ["tumble", "hop", "session"];

/// Arroyo caps session gaps at 24 h; so do we, so a pipeline moves unchanged.
pub const MAX_SESSION_GAP_MS: i64 = 24 * 3_600_000;

/// Time zone of every engine timestamp: the ping contract's.
pub const TZ: &str = "+00:00";

/// The type of the `window` column: `struct<start: timestamp, end: timestamp>`.
pub fn window_type() -> DataType {
    let ts = leasewatch_schemas::timestamp_type();
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), false),
        Field::new("end", ts, false),
    ]))
}

/// The type of the window key in the aggregate's input and partial state.
///
/// A hop or tumble window is known by its start, a millisecond timestamp: a slide
/// bucket's start in the partial state, the window's start in the final aggregate, so
/// DataFusion groups by a primitive column (a struct key goes through the row format,
/// which cost about a third of the window merges). The `window` struct is built from
/// it after the final aggregate ([`hop_window_column`]). A session has no fixed width,
/// so its key is the struct itself.
pub fn key_type(spec: WindowSpec) -> DataType {
    match spec {
        WindowSpec::Hop { .. } => leasewatch_schemas::timestamp_type(),
        WindowSpec::Session { .. } => window_type(),
    }
}

/// A hop key column: window (or slide) starts, ms.
pub fn hop_keys(starts: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(starts).with_timezone(TZ))
}

/// A hop key column of `rows` copies of `start`.
pub fn hop_key(start: i64, rows: usize) -> ArrayRef {
    hop_keys(vec![start; rows])
}

/// The `window` column of hop windows `width` wide from their key column (starts).
pub fn hop_window_column(key: &dyn Array, width: i64) -> Result<ArrayRef, String> {
    let starts = key
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or("a hop window key is not a millisecond timestamp")?;
    let ends = starts
        .values()
        .iter()
        .map(|s| s.saturating_add(width))
        .collect();
    Ok(window_array(starts.values().to_vec(), ends))
}

/// Builds a `window` column from starts and ends (ms).
pub fn window_array(starts: Vec<i64>, ends: Vec<i64>) -> ArrayRef {
    let fields = match window_type() {
        DataType::Struct(f) => f,
        _ => Fields::empty(),
    };
    let s: ArrayRef = Arc::new(TimestampMillisecondArray::from(starts).with_timezone(TZ));
    let e: ArrayRef = Arc::new(TimestampMillisecondArray::from(ends).with_timezone(TZ));
    Arc::new(StructArray::new(fields, vec![s, e], None))
}

/// A window function as a DataFusion UDF: plans as `window_type()`, never executes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowUdf {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        exec_err!(
            "{}() is only valid in the GROUP BY of a windowed aggregate (e.g. GROUP BY {}(...), device_id)",
            self.name,
            self.name
        )
    }
}

/// The UDFs `tumble(width)`, `hop(slide, width)`, `session(gap)`.
pub fn window_udfs() -> Vec<ScalarUDF> {
    // Volatile: keeps the optimizer from constant-folding the call away.
    vec![
        ScalarUDF::new_from_impl(WindowUdf {
            name: "tumble",
            signature: Signature::variadic_any(Volatility::Volatile),
        }),
        ScalarUDF::new_from_impl(WindowUdf {
            name: "hop",
            signature: Signature::variadic_any(Volatility::Volatile),
        }),
        ScalarUDF::new_from_impl(WindowUdf {
            name: "session",
            signature: Signature::variadic_any(Volatility::Volatile),
        }),
    ]
}

/// A window, as declared in the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Sliding window of `width` every `slide` (tumble: `slide == width`).
    Hop {
        /// Slide, ms.
        slide_ms: i64,
        /// Width, ms (a multiple of the slide).
        width_ms: i64,
    },
    /// Session window closing after `gap` without events for its key.
    Session {
        /// Gap, ms.
        gap_ms: i64,
    },
}

/// When `expr` is a window function call, its spec (or why its arguments are wrong).
pub fn window_spec(expr: &Expr) -> Option<Result<WindowSpec, String>> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    let name = f.func.name();
    if !WINDOW_FUNCTIONS.contains(&name) {
        return None;
    }
    // The planner appends the event-time column as a last argument (a column).
    let args = match f.args.last() {
        Some(Expr::Column(_)) => &f.args[..f.args.len() - 1],
        _ => &f.args[..],
    };
    let ms: Vec<Option<i64>> = args.iter().map(interval_ms).collect();
    let positive = |v: Option<i64>| v.filter(|v| *v > 0);
    Some(match (name, ms.as_slice()) {
        ("tumble", [w]) => positive(*w)
            .map(|w| WindowSpec::Hop {
                slide_ms: w,
                width_ms: w,
            })
            .ok_or_else(|| "tumble(width) needs a positive interval without months".to_string()),
        ("hop", [s, w]) => match (positive(*s), positive(*w)) {
            (Some(s), Some(w)) if w % s == 0 => Ok(WindowSpec::Hop {
                slide_ms: s,
                width_ms: w,
            }),
            (Some(_), Some(_)) => {
                Err("hop(slide, width): width must be a multiple of slide".into())
            }
            _ => Err("hop(slide, width) needs positive intervals without months".into()),
        },
        ("session", [g]) => match positive(*g) {
            Some(g) if g <= MAX_SESSION_GAP_MS => Ok(WindowSpec::Session { gap_ms: g }),
            Some(_) => Err("session(gap): the gap is capped at 24 hours (as in Arroyo)".into()),
            None => Err("session(gap) needs a positive interval without months".into()),
        },
        _ => Err(format!("{name}() has the wrong number of arguments")),
    })
}

fn interval_ms(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        Expr::Cast(c) => interval_ms(&c.expr),
        Expr::TryCast(c) => interval_ms(&c.expr),
        _ => None,
    }
}

/// Replaces column `idx` of `batch` by `col`.
pub fn with_column(
    batch: &RecordBatch,
    idx: usize,
    col: ArrayRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut cols = batch.columns().to_vec();
    if let Some(c) = cols.get_mut(idx) {
        *c = col;
    }
    RecordBatch::try_new(batch.schema(), cols)
}

/// The level of the one part a bucket the watermark has passed is compacted into.
pub const CLOSED_LEVEL: u8 = u8::MAX;

/// The most parts one merge of a query that settles takes ([`HopState::take_compaction`]):
/// after a stall, those behind the watermark are merged sixteen at a time.
pub const SETTLE_MERGE_PARTS: usize = 16;

/// One partial-state batch of a slide bucket.
#[derive(Debug, Clone)]
pub struct Part {
    /// Partial-state rows.
    pub batch: RecordBatch,
    /// How many times its rows went through a compaction (0: straight from a batch).
    pub level: u8,
    /// No row of it has an event time before this (ms): the earliest time in the batch
    /// it came from, or in the parts it was compacted from.
    pub floor: i64,
    /// Nor after this: the latest such time.
    pub ceil: i64,
    /// Being compacted elsewhere (a [`Compaction`] taken with `in_place`): still part of
    /// the bucket, read by windows and checkpoints, until the result replaces it.
    pub busy: bool,
}

/// Parts of one bucket and level taken out for a compaction ([`HopState::take_compaction`]).
#[derive(Debug)]
pub struct Compaction {
    /// The slide bucket's start.
    pub bucket: i64,
    /// The parts' level (the top's, when parts of several levels go into the top: see
    /// [`HopState::take_compaction`]).
    pub level: u8,
    /// The parts taken.
    pub parts: Vec<Part>,
    /// `[floor, ceil]` of each of the bucket's other parts: the times of the rows the
    /// compacted part may later be merged with, besides rows yet to come.
    pub others: Vec<(i64, i64)>,
    /// The parts stayed in the bucket, marked busy (see [`HopState::take_compaction`]).
    pub in_place: bool,
    /// The level of the result: one up, or the same (closed, or the top).
    pub into: u8,
}

impl Compaction {
    /// A compaction of `taken` out of `bucket`, which holds `rest` (with `in_place`, the
    /// busy parts among them, `taken` included, are left out of `others`).
    fn of(
        bucket: i64,
        (level, into): (u8, u8),
        taken: Vec<Part>,
        rest: &[Part],
        in_place: bool,
    ) -> Self {
        Compaction {
            bucket,
            level,
            others: rest
                .iter()
                .filter(|p| !(in_place && p.busy))
                .map(|p| (p.floor, p.ceil))
                .collect(),
            parts: taken,
            in_place,
            into,
        }
    }

    /// The parts' batches.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.parts.iter().map(|p| p.batch.clone()).collect()
    }

    /// Where rows that the result may later be merged with can have their times: the
    /// other parts' `[floor, ceil]`, and from `watermark` on (no row behind it enters
    /// window state). Everything else is settled (`SettledSpans::set_outside`).
    pub fn occupied(&self, watermark: i64) -> Vec<(i64, i64)> {
        let mut o = self.others.clone();
        o.push((watermark, i64::MAX));
        o
    }

    /// Rows taken.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.batch.num_rows()).sum()
    }

    /// Bytes taken (Arrow buffers).
    pub fn bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.batch.get_array_memory_size())
            .sum()
    }
}

/// How many parts of one level a slide bucket compacts into one part of the next.
#[derive(Debug, Clone, Copy)]
pub struct Fanin {
    /// Parts straight from batches (level 0), small and many.
    pub first: usize,
    /// Parts of level 1 and up. Each already holds most of the bucket's keys (at the
    /// drive's rates, every device), so merging many of them at once is one long pause
    /// that saves nothing later: fewer at a time keeps each compaction short.
    pub upper: usize,
}

impl Fanin {
    fn of(self, level: u8) -> usize {
        if level == 0 { self.first } else { self.upper }.max(2)
    }
}

/// The parts `pick` chooses, in order: with `in_place` marked busy and returned as
/// copies (their batches shared, not copied), else taken out of `parts`.
fn take_parts(
    parts: &mut Vec<Part>,
    in_place: bool,
    mut pick: impl FnMut(&Part) -> bool,
) -> Vec<Part> {
    if in_place {
        let mut taken = Vec::new();
        for p in parts.iter_mut() {
            if pick(p) {
                p.busy = true;
                taken.push(p.clone());
            }
        }
        taken
    } else {
        let (taken, kept) = std::mem::take(parts).into_iter().partition(|p| pick(p));
        *parts = kept;
        taken
    }
}

/// Per-slide partial aggregates of a hop/tumble window.
#[derive(Debug, Default)]
pub struct HopState {
    /// Partial-state batches per slide bucket start (ms), oldest first.
    pub buckets: BTreeMap<i64, Vec<Part>>,
    /// Start of the next window that may be emitted.
    pub next_start: Option<i64>,
}

impl HopState {
    /// Files partial-state rows by bucket (their window key: the slide's start). The rows
    /// they were aggregated from have event times in `[floor, ceil]`.
    pub fn insert(
        &mut self,
        partial: &RecordBatch,
        window_col: usize,
        (floor, ceil): (i64, i64),
    ) -> Result<(), String> {
        if partial.num_rows() == 0 {
            return Ok(());
        }
        let starts = partial
            .columns()
            .get(window_col)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            .ok_or("partial state has no window column")?;
        let first = starts.value(0);
        if starts.values().iter().all(|v| *v == first) {
            self.push(first, partial.clone(), floor, ceil);
            return Ok(());
        }
        let mut distinct: Vec<i64> = starts.values().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for b in distinct {
            let mask: BooleanArray = starts.values().iter().map(|v| Some(*v == b)).collect();
            let part = filter_record_batch(partial, &mask).map_err(|e| e.to_string())?;
            self.push(b, part, floor, ceil);
        }
        Ok(())
    }

    fn push(&mut self, bucket: i64, batch: RecordBatch, floor: i64, ceil: i64) {
        // A bucket holds no row before its start.
        let floor = floor.max(bucket);
        self.buckets.entry(bucket).or_default().push(Part {
            batch,
            level: 0,
            floor,
            ceil,
            busy: false,
        });
    }

    /// The next compaction due of a level up to `max_level`: the lowest level of a
    /// bucket with at least its fan-in of parts, with that many of them taken out (put
    /// the result back with [`HopState::compacted`]).
    ///
    /// Compaction is tiered, as in a log-structured merge: a fan-in of parts of one
    /// level become one part of the next, so a bucket holds fewer than a fan-in of
    /// each level once its compactions are done (those `max_level` put off wait for a
    /// later call). Each row is re-aggregated once per level, about log_fanin(batches)
    /// times, whereas reducing a whole bucket whenever it grew by `fanin` batches made
    /// the work per batch grow with the devices already in it. Parts are merged in
    /// any order: where they sit in the bucket does not matter.
    ///
    /// A bucket starting at or before `closed_at` gets no more rows (the watermark has
    /// passed its end): when `max_level` allows more than level 0, all its parts are
    /// compacted into one of [`CLOSED_LEVEL`], once, which is all the bucket holds until
    /// its last window is emitted.
    ///
    /// Parts one level above `max_level` (the top, when it is above 0) are merged with
    /// each other, a fan-in of them into one of the top again. Each holds nearly every
    /// key of its bucket: merged, they shrink by the fan-in. Before, they waited for
    /// their bucket to close, and a bucket gained one every minute or so of a busy
    /// stream, its state growing with them.
    ///
    /// In a query that settles (`settle_at`: the watermark), the parts above level 0
    /// are merged otherwise: those whose rows are all behind the watermark (up to
    /// [`SETTLE_MERGE_PARTS`]) go into one of the top, once there are two of them and
    /// the ones below the top hold at least as many bytes as the top's. The merge
    /// settles their list-valued state (`max_speed_kmh`'s fixes) but where the parts
    /// left out may hold rows: those still ahead of the watermark, whose earliest rows
    /// (a phone's upload) reach some 20 s before the rest. So the top's part keeps the
    /// fixes of those seconds whole and is read again by each merge; the bytes rule
    /// keeps that from being most of the work (at 300,000 pings/s, merging each new part
    /// at once kept the compaction thread busy and level 0 waiting). Tiered, the fixes
    /// of the last two minutes were copied whole from level to level (the longest
    /// compactions of all, 4 s for four parts), and parts next to each other in time,
    /// each reaching into the other's seconds, settled almost nothing in a merge of a
    /// few.
    ///
    /// With `in_place` (a compaction run elsewhere while batches go on), the parts taken
    /// stay in the bucket, marked busy, and [`HopState::compacted`] replaces them. Busy
    /// parts are never taken again, and a closed bucket holding any waits.
    pub fn take_compaction(
        &mut self,
        fanin: Fanin,
        max_level: u8,
        closed_at: i64,
        in_place: bool,
        settle_at: Option<i64>,
    ) -> Option<Compaction> {
        for (&k, parts) in &mut self.buckets {
            let busy = parts.iter().any(|p| p.busy);
            let closed_once = matches!(parts.as_slice(), [p] if p.level == CLOSED_LEVEL);
            if k <= closed_at && max_level > 0 && !parts.is_empty() && !closed_once {
                if busy {
                    continue;
                }
                let taken = take_parts(parts, in_place, |_| true);
                let levels = (CLOSED_LEVEL, CLOSED_LEVEL);
                return Some(Compaction::of(k, levels, taken, &[], in_place));
            }
            // Levels compacted into the next, and the top (merged into itself), if any.
            let top = max_level
                .checked_add(1)
                .filter(|&t| max_level > 0 && t != CLOSED_LEVEL);
            if let (Some(top), Some(watermark)) = (top, settle_at) {
                let behind =
                    |p: &Part| !p.busy && p.level > 0 && p.level <= top && p.ceil < watermark;
                let (mut n, mut new_bytes, mut top_bytes) = (0, 0, 0);
                for p in parts.iter().filter(|p| behind(p)) {
                    n += 1;
                    let bytes = p.batch.get_array_memory_size();
                    if p.level == top {
                        top_bytes += bytes;
                    } else {
                        new_bytes += bytes;
                    }
                }
                if n >= 2 && new_bytes >= top_bytes {
                    let mut left = SETTLE_MERGE_PARTS;
                    let taken = take_parts(parts, in_place, |p| {
                        let take = left > 0 && behind(p);
                        left -= usize::from(take);
                        take
                    });
                    return Some(Compaction::of(k, (top, top), taken, parts, in_place));
                }
            }
            let ready = |p: &Part| {
                !p.busy
                    && (p.level <= max_level || Some(p.level) == top)
                    && (p.level == 0 || settle_at.is_none())
            };
            let levels = top.unwrap_or(max_level);
            let mut count = vec![0usize; usize::from(levels) + 1];
            for p in parts.iter().filter(|p| ready(p)) {
                count[usize::from(p.level)] += 1;
            }
            let Some(level) = (0..=levels).find(|&l| count[usize::from(l)] >= fanin.of(l)) else {
                continue;
            };
            let mut left = fanin.of(level);
            let taken = take_parts(parts, in_place, |p| {
                let take = left > 0 && p.level == level && ready(p);
                left -= usize::from(take);
                take
            });
            let into = if Some(level) == top { level } else { level + 1 };
            return Some(Compaction::of(k, (level, into), taken, parts, in_place));
        }
        None
    }

    /// Returns the parts of a compaction that failed.
    pub fn put_back(&mut self, c: Compaction) {
        if c.in_place {
            for p in self.buckets.get_mut(&c.bucket).into_iter().flatten() {
                p.busy = false;
            }
        } else {
            self.buckets.entry(c.bucket).or_default().extend(c.parts);
        }
    }

    /// Files `batch`, the result of compaction `c`, at level [`Compaction::into`].
    /// An in-place compaction's result replaces its busy parts; when they are gone (a
    /// window emission dropped the bucket, a checkpoint was restored) it is dropped.
    pub fn compacted(&mut self, c: &Compaction, batch: RecordBatch) {
        let floor = c.parts.iter().map(|p| p.floor).min().unwrap_or(c.bucket);
        let ceil = c.parts.iter().map(|p| p.ceil).max().unwrap_or(i64::MAX);
        let part = Part {
            batch,
            level: c.into,
            floor,
            ceil,
            busy: false,
        };
        if c.in_place {
            if let Some(parts) = self.buckets.get_mut(&c.bucket)
                && parts.iter().any(|p| p.busy)
            {
                parts.retain(|p| !p.busy);
                parts.push(part);
            }
        } else {
            self.buckets.entry(c.bucket).or_default().push(part);
        }
    }

    /// Windows whose end is at or before `watermark`: `(start, partial batches)`, oldest
    /// first. Buckets no later window needs are dropped.
    pub fn due(&mut self, watermark: i64, slide: i64, width: i64) -> Vec<(i64, Vec<RecordBatch>)> {
        let mut out = Vec::new();
        while let Some(&b0) = self.buckets.keys().next() {
            let earliest = b0.saturating_sub(width).saturating_add(slide);
            let s = self.next_start.map_or(earliest, |n| n.max(earliest));
            let Some(end) = s.checked_add(width) else {
                break;
            };
            if end > watermark {
                break;
            }
            let batches: Vec<RecordBatch> = self
                .buckets
                .range(s..end)
                .flat_map(|(_, v)| v.iter().map(|p| p.batch.clone()))
                .collect();
            if !batches.is_empty() {
                out.push((s, batches));
            }
            let next = s.saturating_add(slide);
            self.next_start = Some(next);
            let keep = self.buckets.split_off(&next);
            self.buckets = keep;
        }
        out
    }

    /// Parts, rows and bytes held per bucket and level, e.g.
    /// `1764979200000[L0 3/24000/1.2MB L1 1/90000/4.1MB]`, for debug logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (start, parts) in &self.buckets {
            let mut levels: BTreeMap<u8, (usize, usize, usize)> = BTreeMap::new();
            for p in parts {
                let e = levels.entry(p.level).or_default();
                e.0 += 1;
                e.1 += p.batch.num_rows();
                e.2 += p.batch.get_array_memory_size();
            }
            out.push_str(&format!("{start}["));
            for (i, (level, (n, rows, bytes))) in levels.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                let mb = *bytes as f64 / 1e6;
                out.push_str(&format!("{sep}L{level} {n}/{rows}/{mb:.1}MB"));
            }
            out.push_str("] ");
        }
        out
    }

    /// Rows and bytes held.
    pub fn size(&self) -> (usize, usize) {
        self.buckets.values().flatten().fold((0, 0), |(r, b), p| {
            (r + p.batch.num_rows(), b + p.batch.get_array_memory_size())
        })
    }
}

/// Rows of a session-windowed query, waiting for their sessions to close.
#[derive(Debug)]
pub struct SessionState {
    /// Buffered rows (schema: the aggregate input, `window` column last).
    pub rows: Vec<RecordBatch>,
    /// No session can close before this watermark.
    pub next_close: i64,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            next_close: i64::MAX,
        }
    }
}

impl SessionState {
    /// Buffers rows whose event times (ms) are `ts`.
    pub fn insert(&mut self, batch: RecordBatch, min_ts: i64, gap: i64) {
        if batch.num_rows() == 0 {
            return;
        }
        self.next_close = self.next_close.min(min_ts.saturating_add(gap));
        self.rows.push(batch);
    }

    /// Rows of the sessions closed at `watermark`, their `window` column filled in
    /// (column `window_col`), and the number of sessions; `None` when none closed.
    pub fn due(
        &mut self,
        watermark: i64,
        gap: i64,
        ts_col: usize,
        window_col: usize,
        keys: &[Arc<dyn PhysicalExpr>],
    ) -> Result<Option<(RecordBatch, u64)>, String> {
        if watermark < self.next_close || self.rows.is_empty() {
            return Ok(None);
        }
        let schema: SchemaRef = self.rows[0].schema();
        let all = arrow::compute::concat_batches(&schema, &self.rows).map_err(|e| e.to_string())?;
        let ts = ts_values(all.column(ts_col).as_ref())?;
        let key_cols: Vec<ArrayRef> = keys
            .iter()
            .map(|k| k.evaluate(&all).and_then(|v| v.into_array(all.num_rows())))
            .collect::<DfResult<_>>()
            .map_err(|e| e.to_string())?;
        let converter = RowConverter::new(
            key_cols
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        let rows = converter
            .convert_columns(&key_cols)
            .map_err(|e| e.to_string())?;
        let n = all.num_rows();
        let mut idx: Vec<u32> = (0..n as u32).collect();
        idx.sort_unstable_by(|&a, &b| {
            rows.row(a as usize)
                .cmp(&rows.row(b as usize))
                .then(ts[a as usize].cmp(&ts[b as usize]))
        });
        let (mut closed, mut starts, mut ends, mut open) = (vec![], vec![], vec![], vec![]);
        let mut next_close = i64::MAX;
        let mut sessions = 0u64;
        let mut i = 0;
        while i < n {
            // one session: idx[i..j]
            let first = idx[i] as usize;
            let mut last_ts = ts[first];
            let mut j = i + 1;
            while j < n {
                let r = idx[j] as usize;
                if rows.row(r) != rows.row(first) || ts[r] >= last_ts.saturating_add(gap) {
                    break;
                }
                last_ts = ts[r];
                j += 1;
            }
            let end = last_ts.saturating_add(gap);
            if end <= watermark {
                sessions += 1;
                for &r in &idx[i..j] {
                    closed.push(r);
                    starts.push(ts[first]);
                    ends.push(end);
                }
            } else {
                open.extend_from_slice(&idx[i..j]);
                next_close = next_close.min(end);
            }
            i = j;
        }
        self.next_close = next_close;
        let keep = take_record_batch(&all, &UInt32Array::from(open)).map_err(|e| e.to_string())?;
        self.rows = if keep.num_rows() > 0 {
            vec![keep]
        } else {
            vec![]
        };
        if closed.is_empty() {
            return Ok(None);
        }
        let done =
            take_record_batch(&all, &UInt32Array::from(closed)).map_err(|e| e.to_string())?;
        let done = with_column(&done, window_col, window_array(starts, ends))
            .map_err(|e| e.to_string())?;
        Ok(Some((done, sessions)))
    }

    /// Rows and bytes held.
    pub fn size(&self) -> (usize, usize) {
        self.rows.iter().fold((0, 0), |(r, b), batch| {
            (r + batch.num_rows(), b + batch.get_array_memory_size())
        })
    }
}

/// Event-time values (ms) of a timestamp column of any unit.
pub fn ts_values(col: &dyn Array) -> Result<Vec<i64>, String> {
    let ms = arrow::compute::cast(
        col,
        &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    )
    .map_err(|e| e.to_string())?;
    let a = ms
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or("event time is not a timestamp")?;
    Ok(a.values().to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;

    fn partial(starts: &[i64]) -> RecordBatch {
        let w = hop_keys(starts.to_vec());
        let schema = Arc::new(Schema::new(vec![Field::new(
            "w",
            leasewatch_schemas::timestamp_type(),
            false,
        )]));
        RecordBatch::try_new(schema, vec![w]).unwrap()
    }

    #[test]
    fn hop_emits_each_window_once_with_its_buckets() {
        let mut h = HopState::default();
        let (slide, width) = (60_000, 180_000);
        h.insert(&partial(&[0, 60_000, 60_000, 240_000]), 0, (0, 0))
            .unwrap();
        assert_eq!(h.buckets.len(), 3);
        // window [-120000, 60000) ends at 60000
        let due = h.due(60_000, slide, width);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, -120_000);
        let due = h.due(i64::MAX, slide, width);
        let starts: Vec<i64> = due.iter().map(|d| d.0).collect();
        // windows containing bucket 0, 60000 or 240000
        assert_eq!(starts, vec![-60_000, 0, 60_000, 120_000, 180_000, 240_000]);
        let rows: Vec<usize> = due
            .iter()
            .map(|d| d.1.iter().map(|b| b.num_rows()).sum())
            .collect();
        assert_eq!(rows, vec![3, 3, 2, 1, 1, 1]);
        assert!(h.buckets.is_empty());
    }

    #[test]
    fn compaction_is_tiered_by_level() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 4, upper: 3 };
        let mut reductions = Vec::new();
        // 4 * 3 + 2 batches into one bucket, each compaction "reducing" to one row.
        for _ in 0..14 {
            h.insert(&partial(&[0, 0]), 0, (0, 0)).unwrap();
            while let Some(c) = h.take_compaction(fanin, u8::MAX, i64::MIN, false, None) {
                assert_eq!(c.bucket, 0);
                assert_eq!(c.parts.len(), fanin.of(c.level));
                reductions.push(c.level);
                h.compacted(&c, partial(&[0]));
            }
        }
        // Three compactions of level 0 (4 parts each) and, after the third, one of
        // level 1 (3 parts): not one per batch once the bucket is big.
        assert_eq!(reductions, vec![0, 0, 0, 1]);
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 0, 0]);
        assert!(
            h.take_compaction(fanin, u8::MAX, i64::MIN, false, None)
                .is_none()
        );
        // A failed compaction puts its parts back as they were.
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        let c = h
            .take_compaction(fanin, u8::MAX, i64::MIN, false, None)
            .unwrap();
        h.put_back(c);
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 0, 0, 0, 0]);
        // Compactions above `max_level` wait; the parts stay where they are.
        let c = h
            .take_compaction(fanin, u8::MAX, i64::MIN, false, None)
            .unwrap();
        h.compacted(&c, partial(&[0]));
        for _ in 0..8 {
            h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
            while let Some(c) = h.take_compaction(fanin, 0, i64::MIN, false, None) {
                assert_eq!(c.level, 0);
                h.compacted(&c, partial(&[0]));
            }
        }
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 1, 1, 1]);
        // Put off, they are still found once new parts sit after them.
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        let c = h
            .take_compaction(fanin, u8::MAX, i64::MIN, false, None)
            .unwrap();
        assert_eq!((c.level, c.parts.len()), (1, 3));
        h.compacted(&c, partial(&[0]));
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 0, 2]);
        // Two of level 2 (fan-in 3): nothing more is due.
        assert!(
            h.take_compaction(fanin, u8::MAX, i64::MIN, false, None)
                .is_none()
        );
    }

    #[test]
    fn a_closed_bucket_is_compacted_into_one_part_once() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 4, upper: 3 };
        h.insert(&partial(&[0]), 0, (10, 20)).unwrap();
        h.insert(&partial(&[0]), 0, (15, 40)).unwrap();
        h.insert(&partial(&[60_000]), 0, (60_010, 60_020)).unwrap();
        // Not yet closed, or only level 0 allowed: nothing due.
        assert!(h.take_compaction(fanin, u8::MAX, -1, false, None).is_none());
        assert!(h.take_compaction(fanin, 0, 0, false, None).is_none());
        // Closed (start <= closed_at): all its parts, with nothing else to settle around.
        let c = h.take_compaction(fanin, u8::MAX, 0, false, None).unwrap();
        assert_eq!((c.bucket, c.level, c.parts.len()), (0, CLOSED_LEVEL, 2));
        assert!(c.others.is_empty());
        // A failed compaction puts the parts back as they were; it is due again.
        h.put_back(c);
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![0, 0]);
        let c = h.take_compaction(fanin, u8::MAX, 0, false, None).unwrap();
        h.compacted(&c, partial(&[0]));
        let closed = &h.buckets[&0];
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].level, closed[0].floor, closed[0].ceil),
            (CLOSED_LEVEL, 10, 40)
        );
        // Once: the one closed part is not compacted again; the open bucket waits.
        assert!(h.take_compaction(fanin, u8::MAX, 0, false, None).is_none());
    }

    fn part(level: u8, floor: i64, ceil: i64) -> Part {
        Part {
            batch: partial(&[0]),
            level,
            floor,
            ceil,
            busy: false,
        }
    }

    fn levels_and_spans(h: &HopState) -> Vec<(u8, i64, i64)> {
        h.buckets[&0]
            .iter()
            .map(|p| (p.level, p.floor, p.ceil))
            .collect()
    }

    /// Parts of the level above `max_level` merge with each other, into that level
    /// again; with `max_level` 0 (level 0 only) they do not.
    #[test]
    fn parts_of_the_top_level_merge_into_it() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 2, upper: 2 };
        h.buckets.insert(0, vec![part(2, 10, 40), part(2, 50, 70)]);
        assert!(h.take_compaction(fanin, 0, i64::MIN, false, None).is_none());
        let c = h.take_compaction(fanin, 1, i64::MIN, true, None).unwrap();
        assert_eq!((c.level, c.into, c.parts.len()), (2, 2, 2));
        h.compacted(&c, partial(&[0]));
        assert_eq!(levels_and_spans(&h), vec![(2, 10, 70)]);
        assert!(h.take_compaction(fanin, 1, i64::MIN, false, None).is_none());
    }

    /// In a query that settles, the parts above level 0 whose rows are all behind the
    /// watermark merge, a fan-in of them or more, into one of the top; level 0 goes on
    /// as before.
    #[test]
    fn in_a_query_that_settles_parts_merge_into_the_top_once_behind_the_watermark() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 2, upper: 2 };
        h.buckets.insert(
            0,
            vec![
                part(1, 10, 40),
                part(1, 50, 70),
                part(2, 0, 8),
                part(0, 60, 80),
            ],
        );
        // Watermark 45: the first part and the top's; the rest may hold rows around them.
        let c = h
            .take_compaction(fanin, 1, i64::MIN, false, Some(45))
            .unwrap();
        assert_eq!((c.level, c.into, c.parts.len()), (2, 2, 2));
        assert_eq!(c.others, vec![(50, 70), (60, 80)]);
        h.compacted(&c, partial(&[0]));
        assert_eq!(
            levels_and_spans(&h),
            vec![(1, 50, 70), (0, 60, 80), (2, 0, 40)]
        );
        // One part behind watermark 60 is fewer than the fan-in; level 0 needs two.
        assert!(
            h.take_compaction(fanin, 1, i64::MIN, false, Some(60))
                .is_none()
        );
        let c = h
            .take_compaction(fanin, 1, i64::MIN, false, Some(71))
            .unwrap();
        assert_eq!((c.level, c.into, c.parts.len()), (2, 2, 2));
        h.compacted(&c, partial(&[0]));
        assert_eq!(levels_and_spans(&h), vec![(0, 60, 80), (2, 0, 70)]);
        // Level 0 waits for no watermark.
        h.insert(&partial(&[0]), 0, (90, 95)).unwrap();
        let c = h
            .take_compaction(fanin, 1, i64::MIN, false, Some(0))
            .unwrap();
        assert_eq!((c.level, c.into), (0, 1));
        // A top part holding more bytes than those below it waits for more of them.
        let mut h = HopState::default();
        let mut big = part(2, 0, 8);
        big.batch = partial(&[0; 64]);
        h.buckets
            .insert(0, vec![big, part(1, 10, 20), part(1, 20, 30)]);
        assert!(
            h.take_compaction(fanin, 1, i64::MIN, false, Some(100))
                .is_none()
        );
        let mut more = part(1, 30, 40);
        more.batch = partial(&[0; 64]);
        h.buckets.entry(0).or_default().push(more);
        let c = h
            .take_compaction(fanin, 1, i64::MIN, false, Some(100))
            .unwrap();
        assert_eq!((c.level, c.into, c.parts.len()), (2, 2, 4));
        // After a stall, at most SETTLE_MERGE_PARTS at once.
        let mut h = HopState::default();
        h.buckets
            .insert(0, (0..20).map(|i| part(1, i * 10, i * 10 + 5)).collect());
        let c = h
            .take_compaction(fanin, 1, i64::MIN, false, Some(1_000))
            .unwrap();
        assert_eq!(c.parts.len(), SETTLE_MERGE_PARTS);
    }

    /// Compactions run elsewhere: the parts stay, busy, until the result replaces them.
    #[test]
    fn an_in_place_compaction_leaves_its_parts_until_its_result_comes() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 2, upper: 2 };
        for t in [10, 20, 30] {
            h.insert(&partial(&[0]), 0, (t, t + 5)).unwrap();
        }
        let c = h
            .take_compaction(fanin, u8::MAX, i64::MIN, true, None)
            .unwrap();
        assert_eq!(
            (c.level, c.parts.len(), c.others.clone()),
            (0, 2, vec![(30, 35)])
        );
        let busy: Vec<bool> = h.buckets[&0].iter().map(|p| p.busy).collect();
        assert_eq!(busy, vec![true, true, false]);
        // Windows and checkpoints still see all three; no busy part is taken again.
        assert_eq!(h.size().0, 3);
        h.insert(&partial(&[0]), 0, (40, 45)).unwrap();
        let d = h
            .take_compaction(fanin, u8::MAX, i64::MIN, false, None)
            .unwrap();
        assert_eq!(
            d.parts.iter().map(|p| p.floor).collect::<Vec<_>>(),
            vec![30, 40]
        );
        h.compacted(&d, partial(&[0]));
        // Closed now, but a bucket with busy parts waits for them.
        assert!(h.take_compaction(fanin, u8::MAX, 0, true, None).is_none());
        h.compacted(&c, partial(&[0]));
        let parts: Vec<(u8, i64, i64, bool)> = h.buckets[&0]
            .iter()
            .map(|p| (p.level, p.floor, p.ceil, p.busy))
            .collect();
        assert_eq!(parts, vec![(1, 30, 45, false), (1, 10, 25, false)]);
        // A failed one clears the marks; a result whose bucket was emitted and dropped
        // meanwhile, or restored from a checkpoint without marks, is dropped.
        let c = h.take_compaction(fanin, u8::MAX, 0, true, None).unwrap();
        assert_eq!((c.level, c.parts.len()), (CLOSED_LEVEL, 2));
        h.put_back(c);
        assert!(h.buckets[&0].iter().all(|p| !p.busy));
        let c = h.take_compaction(fanin, u8::MAX, 0, true, None).unwrap();
        for p in h.buckets.get_mut(&0).unwrap() {
            p.busy = false;
        }
        h.compacted(&c, partial(&[0]));
        assert_eq!(h.buckets[&0].len(), 2);
        h.buckets.clear();
        h.compacted(&c, partial(&[0]));
        assert!(h.buckets.is_empty());
    }
}

/// The engine's event-time watermark as SQL sees it: `event_watermark()`.
///
/// Holds the last watermark reached by data (ms): at the end of a replay the engine
/// closes every window, but this stays where the pings left it, so a query can tell a
/// window closed by time (`window_end <= event_watermark()`) from one closed because the
/// input ended (e.g. a device that seems dark only because the file stopped).
#[derive(Debug, Clone, Default)]
pub struct WatermarkCell(Arc<std::sync::atomic::AtomicI64>);

impl WatermarkCell {
    /// Records the watermark (ms).
    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The watermark (ms).
    pub fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl PartialEq for WatermarkCell {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for WatermarkCell {}

impl std::hash::Hash for WatermarkCell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct EventWatermark {
    cell: WatermarkCell,
    signature: Signature,
}

impl ScalarUDFImpl for EventWatermark {
    fn name(&self) -> &str {
        "event_watermark"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(leasewatch_schemas::timestamp_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ms = self.cell.get();
        let v = (ms != i64::MIN).then_some(ms);
        Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::TimestampMillisecond(v, Some(TZ.into())),
        ))
    }
}

/// `event_watermark()` reading `cell` (volatile: evaluated at each run, never folded).
pub fn event_watermark_udf(cell: WatermarkCell) -> ScalarUDF {
    ScalarUDF::new_from_impl(EventWatermark {
        cell,
        signature: Signature::nullary(Volatility::Volatile),
    })
}
