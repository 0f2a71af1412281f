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
    /// The watermark when it was compacted (`i64::MIN`: straight from a batch, or
    /// restored): its rows from there on were kept whole (see [`HopState::take_resettle`]).
    pub settled_below: i64,
}

/// Parts of one bucket and level taken out for a compaction ([`HopState::take_compaction`]).
#[derive(Debug)]
pub struct Compaction {
    /// The slide bucket's start.
    pub bucket: i64,
    /// The parts' level.
    pub level: u8,
    /// The parts taken.
    pub parts: Vec<Part>,
    /// `[floor, ceil]` of each of the bucket's other parts: the times of the rows the
    /// compacted part may later be merged with, besides rows yet to come.
    pub others: Vec<(i64, i64)>,
    /// The parts stayed in the bucket, marked busy (see [`HopState::take_compaction`]).
    pub in_place: bool,
    /// One part compacted again at its own level ([`HopState::take_resettle`]).
    pub resettle: bool,
    /// The watermark the compaction settles under (set by its runner; `i64::MIN`:
    /// none), kept by the result as [`Part::settled_below`].
    pub watermark: i64,
}

impl Compaction {
    /// A compaction of `taken` out of `bucket`, which holds `rest` (with `in_place`, the
    /// busy parts among them, `taken` included, are left out of `others`).
    fn of(
        bucket: i64,
        level: u8,
        taken: Vec<Part>,
        rest: &[Part],
        in_place: bool,
        resettle: bool,
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
            resettle,
            watermark: i64::MIN,
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
            settled_below: i64::MIN,
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
    /// With `in_place` (a compaction run elsewhere while batches go on), the parts taken
    /// stay in the bucket, marked busy, and [`HopState::compacted`] replaces them. Busy
    /// parts are never taken again, and a closed bucket holding any waits.
    pub fn take_compaction(
        &mut self,
        fanin: Fanin,
        max_level: u8,
        closed_at: i64,
        in_place: bool,
    ) -> Option<Compaction> {
        for (&k, parts) in &mut self.buckets {
            let busy = parts.iter().any(|p| p.busy);
            let closed_once = matches!(parts.as_slice(), [p] if p.level == CLOSED_LEVEL);
            if k <= closed_at && max_level > 0 && !parts.is_empty() && !closed_once {
                if busy {
                    continue;
                }
                let taken = take_parts(parts, in_place, |_| true);
                return Some(Compaction::of(k, CLOSED_LEVEL, taken, &[], in_place, false));
            }
            let top = parts
                .iter()
                .map(|p| p.level)
                .max()
                .unwrap_or(0)
                .min(max_level);
            let mut count = vec![0usize; usize::from(top) + 1];
            for p in parts.iter().filter(|p| p.level <= top && !p.busy) {
                count[usize::from(p.level)] += 1;
            }
            let Some(level) = (0..=top).find(|&l| count[usize::from(l)] >= fanin.of(l)) else {
                continue;
            };
            let mut left = fanin.of(level);
            let taken = take_parts(parts, in_place, |p| {
                let take = left > 0 && p.level == level && !p.busy;
                left -= usize::from(take);
                take
            });
            return Some(Compaction::of(k, level, taken, parts, in_place, false));
        }
        None
    }

    /// A part of level 1 or up (not closed) whose rows have all fallen behind
    /// `watermark` since it was compacted, when some were at or after the watermark
    /// then, taken out to be compacted again on its own at its level.
    ///
    /// A compaction keeps the rows at or after the watermark whole (`max_speed_kmh`'s
    /// fixes: later rows may still fall between them). The upper levels are compacted
    /// minutes apart and parts of the top level not at all until their bucket closes,
    /// so at a steady rate nearly every fix stayed whole in them: window state grew with
    /// every ping (10 MB/s at 300,000 pings/s). Compacted again once behind the
    /// watermark, each part settles what it kept, once.
    pub fn take_resettle(&mut self, watermark: i64, in_place: bool) -> Option<Compaction> {
        for (&k, parts) in &mut self.buckets {
            let due = |p: &Part| {
                !p.busy
                    && p.level > 0
                    && p.level != CLOSED_LEVEL
                    && p.settled_below < p.ceil
                    && p.ceil < watermark
            };
            let Some(i) = parts.iter().position(due) else {
                continue;
            };
            let level = parts.get(i).map_or(0, |p| p.level);
            let mut j = 0;
            let taken = take_parts(parts, in_place, |_| {
                j += 1;
                j == i + 1
            });
            return Some(Compaction::of(k, level, taken, parts, in_place, true));
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

    /// Files `batch`, the result of compaction `c`, one level up (closed or resettled: at
    /// the same).
    /// An in-place compaction's result replaces its busy parts; when they are gone (a
    /// window emission dropped the bucket, a checkpoint was restored) it is dropped.
    pub fn compacted(&mut self, c: &Compaction, batch: RecordBatch) {
        let floor = c.parts.iter().map(|p| p.floor).min().unwrap_or(c.bucket);
        let ceil = c.parts.iter().map(|p| p.ceil).max().unwrap_or(i64::MAX);
        let part = Part {
            batch,
            level: if c.level == CLOSED_LEVEL || c.resettle {
                c.level
            } else {
                c.level.saturating_add(1)
            },
            floor,
            ceil,
            busy: false,
            settled_below: c.watermark,
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
            while let Some(c) = h.take_compaction(fanin, u8::MAX, i64::MIN, false) {
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
        assert!(h.take_compaction(fanin, u8::MAX, i64::MIN, false).is_none());
        // A failed compaction puts its parts back as they were.
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        let c = h.take_compaction(fanin, u8::MAX, i64::MIN, false).unwrap();
        h.put_back(c);
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 0, 0, 0, 0]);
        // Compactions above `max_level` wait; the parts stay where they are.
        let c = h.take_compaction(fanin, u8::MAX, i64::MIN, false).unwrap();
        h.compacted(&c, partial(&[0]));
        for _ in 0..8 {
            h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
            while let Some(c) = h.take_compaction(fanin, 0, i64::MIN, false) {
                assert_eq!(c.level, 0);
                h.compacted(&c, partial(&[0]));
            }
        }
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 1, 1, 1]);
        // Put off, they are still found once new parts sit after them.
        h.insert(&partial(&[0]), 0, (0, 0)).unwrap();
        let c = h.take_compaction(fanin, u8::MAX, i64::MIN, false).unwrap();
        assert_eq!((c.level, c.parts.len()), (1, 3));
        h.compacted(&c, partial(&[0]));
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![2, 0, 2]);
        // Two of level 2 (fan-in 3): nothing more is due.
        assert!(h.take_compaction(fanin, u8::MAX, i64::MIN, false).is_none());
    }

    #[test]
    fn a_closed_bucket_is_compacted_into_one_part_once() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 4, upper: 3 };
        h.insert(&partial(&[0]), 0, (10, 20)).unwrap();
        h.insert(&partial(&[0]), 0, (15, 40)).unwrap();
        h.insert(&partial(&[60_000]), 0, (60_010, 60_020)).unwrap();
        // Not yet closed, or only level 0 allowed: nothing due.
        assert!(h.take_compaction(fanin, u8::MAX, -1, false).is_none());
        assert!(h.take_compaction(fanin, 0, 0, false).is_none());
        // Closed (start <= closed_at): all its parts, with nothing else to settle around.
        let c = h.take_compaction(fanin, u8::MAX, 0, false).unwrap();
        assert_eq!((c.bucket, c.level, c.parts.len()), (0, CLOSED_LEVEL, 2));
        assert!(c.others.is_empty());
        // A failed compaction puts the parts back as they were; it is due again.
        h.put_back(c);
        let levels: Vec<u8> = h.buckets[&0].iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![0, 0]);
        let c = h.take_compaction(fanin, u8::MAX, 0, false).unwrap();
        h.compacted(&c, partial(&[0]));
        let closed = &h.buckets[&0];
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].level, closed[0].floor, closed[0].ceil),
            (CLOSED_LEVEL, 10, 40)
        );
        // Once: the one closed part is not compacted again; the open bucket waits.
        assert!(h.take_compaction(fanin, u8::MAX, 0, false).is_none());
    }

    /// A compacted part is compacted again, alone and at its level, once every row it
    /// kept whole has fallen behind the watermark; then never again.
    #[test]
    fn a_part_is_resettled_once_its_rows_are_behind_the_watermark() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 2, upper: 2 };
        h.insert(&partial(&[0]), 0, (10, 20)).unwrap();
        h.insert(&partial(&[0]), 0, (15, 40)).unwrap();
        // Level 0 is never resettled: it is compacted as it is.
        assert!(h.take_resettle(1_000, false).is_none());
        let mut c = h.take_compaction(fanin, u8::MAX, i64::MIN, false).unwrap();
        c.watermark = 30;
        h.compacted(&c, partial(&[0]));
        h.insert(&partial(&[0]), 0, (50, 60)).unwrap();
        let part = &h.buckets[&0][0];
        assert_eq!((part.level, part.settled_below), (1, 30));
        // Rows up to 40 were at or after the watermark (30): due once it passes 40.
        assert!(h.take_resettle(40, false).is_none());
        let mut c = h.take_resettle(41, true).unwrap();
        assert!(c.resettle && c.in_place);
        assert_eq!(
            (c.level, c.parts.len(), c.others.clone()),
            (1, 1, vec![(50, 60)])
        );
        // Busy, it is not taken twice.
        assert!(h.take_resettle(41, true).is_none());
        c.watermark = 41;
        h.compacted(&c, partial(&[0]));
        let parts: Vec<(u8, i64, i64, i64)> = h.buckets[&0]
            .iter()
            .map(|p| (p.level, p.floor, p.ceil, p.settled_below))
            .collect();
        assert_eq!(parts, vec![(0, 50, 60, i64::MIN), (1, 10, 40, 41)]);
        // Settled below 41 now, after its last row: never again.
        assert!(h.take_resettle(i64::MAX, false).is_none());
    }

    /// Compactions run elsewhere: the parts stay, busy, until the result replaces them.
    #[test]
    fn an_in_place_compaction_leaves_its_parts_until_its_result_comes() {
        let mut h = HopState::default();
        let fanin = Fanin { first: 2, upper: 2 };
        for t in [10, 20, 30] {
            h.insert(&partial(&[0]), 0, (t, t + 5)).unwrap();
        }
        let c = h.take_compaction(fanin, u8::MAX, i64::MIN, true).unwrap();
        assert_eq!(
            (c.level, c.parts.len(), c.others.clone()),
            (0, 2, vec![(30, 35)])
        );
        let busy: Vec<bool> = h.buckets[&0].iter().map(|p| p.busy).collect();
        assert_eq!(busy, vec![true, true, false]);
        // Windows and checkpoints still see all three; no busy part is taken again.
        assert_eq!(h.size().0, 3);
        h.insert(&partial(&[0]), 0, (40, 45)).unwrap();
        let d = h.take_compaction(fanin, u8::MAX, i64::MIN, false).unwrap();
        assert_eq!(
            d.parts.iter().map(|p| p.floor).collect::<Vec<_>>(),
            vec![30, 40]
        );
        h.compacted(&d, partial(&[0]));
        // Closed now, but a bucket with busy parts waits for them.
        assert!(h.take_compaction(fanin, u8::MAX, 0, true).is_none());
        h.compacted(&c, partial(&[0]));
        let parts: Vec<(u8, i64, i64, bool)> = h.buckets[&0]
            .iter()
            .map(|p| (p.level, p.floor, p.ceil, p.busy))
            .collect();
        assert_eq!(parts, vec![(1, 30, 45, false), (1, 10, 25, false)]);
        // A failed one clears the marks; a result whose bucket was emitted and dropped
        // meanwhile, or restored from a checkpoint without marks, is dropped.
        let c = h.take_compaction(fanin, u8::MAX, 0, true).unwrap();
        assert_eq!((c.level, c.parts.len()), (CLOSED_LEVEL, 2));
        h.put_back(c);
        assert!(h.buckets[&0].iter().all(|p| !p.busy));
        let c = h.take_compaction(fanin, u8::MAX, 0, true).unwrap();
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
