//! Every Prometheus metric of LeaseWatch, declared once ([`DEFS`]) and served on
//! `/metrics` by the ingest server.
//!
//! Names follow `leasewatch_<stage>_<thing>_<unit|total>` with base units (seconds, bytes);
//! label names come from a fixed set (`status`, `result`, `reason`, `sink`, `query`,
//! `table`, `signal`, `grade`, `queue`, `group`, `from`, `dpd`), each with bounded values
//! (`sink`, `query` and `table` take one value per table or query of the SQL). Two kinds
//! of metric:
//!
//! - **updated** ones (ingest requests, rows, bytes and rejects, checkpoint duration, queue
//!   and state samples) are ordinary `prometheus` metrics changed by cheap calls on
//!   [`Metrics`];
//! - **sampled** ones are read at scrape time from the stats the stages already keep
//!   ([`crate::wal::WalStats`], [`LookupStats`], [`SinkStats`], the engine's counters as
//!   last recorded by [`Metrics::record_engine`]) by a custom collector, so hot paths only
//!   bump their own atomics. Latency histograms on hot paths are [`AtomicHistogram`]s,
//!   lock-free bucket counters exported the same way.
//!
//! Per query (`leasewatch_engine_query_rows_{in,out}_total{query}`, from
//! [`EngineStats::queries`]): every `INSERT INTO`, as `insert_into_{sink}@{file}:{line}`,
//! and every view the engine computes once as a stage of its own (windowed, with a lookup
//! join, or reading such a view), by name. A plain per-ping view (a filter or projection
//! of the pings) is inlined into the queries that read it and has no series of its own.
//! A query appears with its first run.
//!
//! Wiring (`leasewatch run`): build one `Registry`, `Metrics::new(&registry)`, hand the
//! registry to [`crate::ingest::IngestState::new`] and the metrics to
//! [`crate::ingest::IngestState::with_metrics`]; then [`Metrics::with_wal`],
//! [`Metrics::with_lag_probe`], [`Metrics::add_lookup`] / [`Metrics::add_sink`] for each
//! Redis table and sink, call [`Metrics::record_engine`] and [`Metrics::batch_processed`]
//! after each WAL batch, [`Metrics::checkpoint_saved`] after each checkpoint, and start
//! [`Metrics::spawn_redis_sampler`] for queue lengths and the DPD distribution.

use crate::engine::{Engine, EngineStats, QueryCounts};
use crate::ingest::{LagProbe, RowRejection};
use crate::lookup::LookupStats;
use crate::redis_client::{RedisConn, Request, RetryCounters};
use crate::sink::redis::SinkStats;
use crate::wal::Wal;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;
use leasewatch_schemas::{Grade, Keys, ProblemKind, Queue, QueueMessage, SignalKind, col};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What kind of Prometheus metric a definition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// One metric: name, help, kind and label names.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        help,
        kind,
        labels,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

// Updated metrics.
const INGEST_REQUESTS: MetricDef = def(
    "leasewatch_ingest_requests_total",
    C,
    &["status"],
    "Ping requests answered, by HTTP status code.",
);
const INGEST_ROWS: MetricDef = def(
    "leasewatch_ingest_rows_total",
    C,
    &["result"],
    "Pings received: accepted (durable in the WAL) or rejected.",
);
const INGEST_BYTES: MetricDef = def(
    "leasewatch_ingest_received_bytes_total",
    C,
    &[],
    "Request body bytes read, as sent (compressed when gzip).",
);
const INGEST_REJECTS: MetricDef = def(
    "leasewatch_ingest_rejects_total",
    C,
    &["reason"],
    "Problems found in rejected pings, by kind (a ping may have several).",
);
const INGEST_DURATION: MetricDef = def(
    "leasewatch_ingest_request_duration_seconds",
    H,
    &[],
    "Time from request start to reply (including the WAL fsync for 202).",
);
const CHECKPOINT_DURATION: MetricDef = def(
    "leasewatch_wal_checkpoint_duration_seconds",
    H,
    &[],
    "Time from the snapshot of engine state to the checkpoint being durable (written in the background while the engine goes on).",
);
const QUEUE_MESSAGES: MetricDef = def(
    "leasewatch_queue_messages",
    G,
    &["queue"],
    "Messages in each collection queue stream (XLEN), sampled.",
);
const QUEUE_LAG: MetricDef = def(
    "leasewatch_queue_consumer_lag_messages",
    G,
    &["queue", "group"],
    "Entries of a queue not yet delivered to a consumer group (XINFO GROUPS lag), sampled.",
);
const QUEUE_PENDING: MetricDef = def(
    "leasewatch_queue_pending_messages",
    G,
    &["queue", "group"],
    "Entries delivered to a consumer group but not acknowledged, sampled.",
);
const STATE_LEASES: MetricDef = def(
    "leasewatch_state_leases",
    G,
    &["dpd"],
    "Leases in Redis by days-past-due bucket (collection ladder steps), sampled.",
);
const SAMPLER_ERRORS: MetricDef = def(
    "leasewatch_state_sampler_errors_total",
    C,
    &[],
    "Failed samples of queue lengths or lease state from Redis.",
);

// Sampled metrics.
const WAL_APPENDS: MetricDef = def(
    "leasewatch_wal_appends_total",
    C,
    &[],
    "Batches appended to the WAL and made durable.",
);
const WAL_COMMITS: MetricDef = def(
    "leasewatch_wal_commits_total",
    C,
    &[],
    "WAL writes + fsyncs (group commit: fewer than appends).",
);
const WAL_BYTES: MetricDef = def(
    "leasewatch_wal_written_bytes_total",
    C,
    &[],
    "Record bytes written to the WAL.",
);
const WAL_RETAINED: MetricDef = def(
    "leasewatch_wal_retained_bytes",
    G,
    &[],
    "Bytes of WAL segments on disk.",
);
const WAL_FSYNC: MetricDef = def(
    "leasewatch_wal_fsync_duration_seconds",
    H,
    &[],
    "Duration of one WAL fsync.",
);
const CHECKPOINT_AGE: MetricDef = def(
    "leasewatch_wal_checkpoint_age_seconds",
    G,
    &[],
    "Seconds since the last durable checkpoint (since start before the first).",
);
const ENGINE_ROWS_IN: MetricDef = def(
    "leasewatch_engine_rows_in_total",
    C,
    &[],
    "Pings processed by the engine (every query reads them; windowed ones only on-time).",
);
const ENGINE_LATE: MetricDef = def(
    "leasewatch_engine_late_rows_total",
    C,
    &[],
    "Pings that arrived behind the watermark.",
);
const ENGINE_ROWS_OUT: MetricDef = def(
    "leasewatch_engine_rows_out_total",
    C,
    &["sink"],
    "Rows written by the queries, per sink table.",
);
const ENGINE_QUERY_ROWS_IN: MetricDef = def(
    "leasewatch_engine_query_rows_in_total",
    C,
    &["query"],
    "Rows each query ran on: pings, a view's rows, or on-time pings for a windowed one. \
     query: a view computed once, by name, or insert_into_{sink}@{file}:{line}.",
);
const ENGINE_QUERY_ROWS_OUT: MetricDef = def(
    "leasewatch_engine_query_rows_out_total",
    C,
    &["query"],
    "Rows each query produced (a windowed one when its windows are emitted). \
     query: a view computed once, by name, or insert_into_{sink}@{file}:{line}.",
);
const ENGINE_WINDOWS: MetricDef = def(
    "leasewatch_engine_windows_emitted_total",
    C,
    &[],
    "Windows emitted.",
);
const ENGINE_WM_LAG: MetricDef = def(
    "leasewatch_engine_watermark_lag_seconds",
    G,
    &[],
    "Wall clock minus the event-time watermark.",
);
const ENGINE_STATE_ROWS: MetricDef = def(
    "leasewatch_engine_state_rows",
    G,
    &[],
    "Rows held as window state.",
);
const ENGINE_STATE_BYTES: MetricDef = def(
    "leasewatch_engine_state_bytes",
    G,
    &[],
    "Bytes held as window state.",
);
const ENGINE_BACKLOG_BATCHES: MetricDef = def(
    "leasewatch_engine_backlog_batches",
    G,
    &[],
    "WAL batches appended but not yet processed by the engine.",
);
const ENGINE_BACKLOG_ROWS: MetricDef = def(
    "leasewatch_engine_backlog_rows",
    G,
    &[],
    "Pings in the WAL backlog (may be a lower bound).",
);
const ENGINE_ACTIVE_DEVICES: MetricDef = def(
    "leasewatch_engine_active_devices",
    G,
    &[],
    "Distinct devices with a ping processed in the last hour (estimated, within about 1%).",
);
const LOOKUP_HITS: MetricDef = def(
    "leasewatch_lookup_cache_hits_total",
    C,
    &["table"],
    "Distinct keys served by the lookup cache.",
);
const LOOKUP_MISSES: MetricDef = def(
    "leasewatch_lookup_cache_misses_total",
    C,
    &["table"],
    "Distinct keys the lookup cache could not serve.",
);
const LOOKUP_ROUND_TRIPS: MetricDef = def(
    "leasewatch_lookup_round_trips_total",
    C,
    &["table"],
    "MGET round trips to Redis.",
);
const LOOKUP_FETCHED: MetricDef = def(
    "leasewatch_lookup_keys_fetched_total",
    C,
    &["table"],
    "Keys sent to Redis.",
);
const LOOKUP_FOUND: MetricDef = def(
    "leasewatch_lookup_keys_found_total",
    C,
    &["table"],
    "Keys fetched that had a value.",
);
const LOOKUP_MALFORMED: MetricDef = def(
    "leasewatch_lookup_malformed_total",
    C,
    &["table"],
    "State values that did not fit the schema (their rows are null).",
);
const LOOKUP_HELD: MetricDef = def(
    "leasewatch_lookup_held_batches_total",
    C,
    &["table"],
    "Times a batch was held because Redis stayed unreachable past the retry deadline (it is retried, never dropped).",
);
const LOOKUP_ERRORS: MetricDef = def(
    "leasewatch_lookup_redis_errors_total",
    C,
    &["table"],
    "Failed Redis attempts of the lookup (retried or not).",
);
const LOOKUP_RETRIES: MetricDef = def(
    "leasewatch_lookup_redis_retries_total",
    C,
    &["table"],
    "Redis attempts of the lookup that were retried.",
);
const LOOKUP_RTT: MetricDef = def(
    "leasewatch_lookup_redis_round_trip_seconds",
    H,
    &["table"],
    "Duration of one successful Redis round trip of the lookup.",
);
const SINK_ALERTS: MetricDef = def(
    "leasewatch_sink_alerts_total",
    C,
    &["signal", "grade", "queue"],
    "Alerts written to a collection queue.",
);
const SINK_DUPLICATES: MetricDef = def(
    "leasewatch_sink_duplicates_total",
    C,
    &[],
    "Alerts skipped because their id was already written (replays).",
);
const SINK_HELD: MetricDef = def(
    "leasewatch_sink_held_batches_total",
    C,
    &[],
    "Times an alert batch was held because Redis stayed unreachable past the retry deadline (it is retried, never dropped).",
);
const SINK_SUPPRESSED: MetricDef = def(
    "leasewatch_sink_suppressed_total",
    C,
    &[],
    "Alerts suppressed (same device and signal within the cooldown, grade not higher).",
);
const SINK_ROUND_TRIPS: MetricDef = def(
    "leasewatch_sink_round_trips_total",
    C,
    &[],
    "Pipelines sent to Redis by the alert sink.",
);
const SINK_ERRORS: MetricDef = def(
    "leasewatch_sink_redis_errors_total",
    C,
    &[],
    "Failed Redis attempts of the alert sink (retried or not).",
);
const SINK_RETRIES: MetricDef = def(
    "leasewatch_sink_redis_retries_total",
    C,
    &[],
    "Redis attempts of the alert sink that were retried.",
);
const SINK_RTT: MetricDef = def(
    "leasewatch_sink_redis_round_trip_seconds",
    H,
    &[],
    "Duration of one successful Redis round trip of the alert sink.",
);
const SINK_E2E: MetricDef = def(
    "leasewatch_sink_end_to_end_seconds",
    H,
    &["from"],
    "Latency to the queue write: from=event_time per alert (ping or window time), \
     from=receive_time per WAL batch (newest receive time to the end of its processing).",
);
const SINK_ALERTING_DEVICES: MetricDef = def(
    "leasewatch_sink_alerting_devices",
    G,
    &[],
    "Distinct devices with an alert written in the last hour.",
);
const PROCESS_RSS: MetricDef = def(
    "leasewatch_process_resident_memory_bytes",
    G,
    &[],
    "Resident memory of the process (Linux: /proc/self/status VmRSS).",
);

/// Every metric LeaseWatch exports.
pub const DEFS: &[MetricDef] = &[
    INGEST_REQUESTS,
    INGEST_ROWS,
    INGEST_BYTES,
    INGEST_REJECTS,
    INGEST_DURATION,
    CHECKPOINT_DURATION,
    QUEUE_MESSAGES,
    QUEUE_LAG,
    QUEUE_PENDING,
    STATE_LEASES,
    SAMPLER_ERRORS,
    // Sampled from here on (REGISTERED counts the ones above).
    WAL_APPENDS,
    WAL_COMMITS,
    WAL_BYTES,
    WAL_RETAINED,
    WAL_FSYNC,
    CHECKPOINT_AGE,
    ENGINE_ROWS_IN,
    ENGINE_LATE,
    ENGINE_ROWS_OUT,
    ENGINE_QUERY_ROWS_IN,
    ENGINE_QUERY_ROWS_OUT,
    ENGINE_WINDOWS,
    ENGINE_WM_LAG,
    ENGINE_STATE_ROWS,
    ENGINE_STATE_BYTES,
    ENGINE_BACKLOG_BATCHES,
    ENGINE_BACKLOG_ROWS,
    ENGINE_ACTIVE_DEVICES,
    LOOKUP_HITS,
    LOOKUP_MISSES,
    LOOKUP_ROUND_TRIPS,
    LOOKUP_FETCHED,
    LOOKUP_FOUND,
    LOOKUP_MALFORMED,
    LOOKUP_HELD,
    LOOKUP_ERRORS,
    LOOKUP_RETRIES,
    LOOKUP_RTT,
    SINK_ALERTS,
    SINK_DUPLICATES,
    SINK_HELD,
    SINK_SUPPRESSED,
    SINK_ROUND_TRIPS,
    SINK_ERRORS,
    SINK_RETRIES,
    SINK_RTT,
    SINK_E2E,
    SINK_ALERTING_DEVICES,
    PROCESS_RSS,
];

/// How many of [`DEFS`] are registered one by one; the rest, from `WAL_APPENDS` on,
/// are sampled at scrape time by the collector.
const REGISTERED: usize = 11;

/// The sampled metrics (exported by the collector rather than registered one by one).
const SAMPLED: &[MetricDef] = DEFS.split_at(REGISTERED).1;

/// The name of every metric, in [`DEFS`] order.
pub fn names() -> impl Iterator<Item = &'static str> {
    DEFS.iter().map(|d| d.name)
}

/// Bucket bounds (seconds) of local latencies: fsync, Redis round trips, requests.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds (seconds) of end-to-end latencies, which include phones uploading late.
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    21600.0, 86400.0,
];

/// HTTP statuses `POST /v1/pings` answers (pre-initialised so rates start at 0).
const STATUSES: &[&str] = &["202", "400", "401", "413", "415", "429", "500", "503"];

/// Reject reasons besides [`ProblemKind`]'s: what the decoders report.
const DECODE_REASONS: &[&str] = &["bad_json", "unknown_field", "internal"];

const PROBLEM_KINDS: [ProblemKind; 8] = [
    ProblemKind::Missing,
    ProblemKind::NotFinite,
    ProblemKind::OutOfRange,
    ProblemKind::BadFormat,
    ProblemKind::BadCheckDigit,
    ProblemKind::InFuture,
    ProblemKind::TooOld,
    ProblemKind::Incomplete,
];

/// Days-past-due buckets of [`Metrics::sample_redis`], following the collection ladder.
const DPD_BUCKETS: &[(&str, i32)] = &[
    ("0", 0),
    ("1-2", 2),
    ("3-6", 6),
    ("7-14", 14),
    ("15-29", 29),
    ("30+", i32::MAX),
];

/// Window of the distinct-device gauges.
const DEVICE_WINDOW_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A lock-free histogram with fixed buckets, for hot paths (one atomic add per bucket hit
/// and one for the sum); exported at scrape time.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Default for AtomicHistogram {
    /// A histogram with [`LATENCY_BUCKETS`].
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation of `seconds` (negative and NaN count as 0).
    pub fn observe(&self, seconds: f64) {
        let s = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let i = self.bounds.partition_point(|b| *b < s);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add((s * 1e9) as u64, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A copy of an [`AtomicHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds.
    pub bounds: &'static [f64],
    /// Per-bucket counts, `+Inf` last.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other` (same bounds) into `self`.
    fn merge(&mut self, other: &HistogramSnapshot) {
        if self.bounds == other.bounds {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
            self.sum += other.sum;
        }
    }

    fn empty(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn to_proto(&self) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        let mut cum = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(*b);
            bucket.set_cumulative_count(cum);
            buckets.push(bucket);
        }
        h.set_bucket(buckets);
        h.set_sample_count(self.count());
        h.set_sample_sum(self.sum);
        h
    }
}

/// Tally of the alerts a sink wrote: per (signal, grade, queue), the end-to-end latency
/// from event time, and which devices alerted lately. Part of [`SinkStats`].
#[derive(Debug)]
pub struct AlertTally {
    written: Box<[AtomicU64]>,
    /// Queue write time minus the alert's event time.
    pub end_to_end: AtomicHistogram,
    devices: Mutex<DeviceMap>,
}

impl Default for AlertTally {
    fn default() -> Self {
        let n = SignalKind::ALL.len() * Grade::ALL.len() * Queue::ALL.len();
        Self {
            written: (0..n).map(|_| AtomicU64::new(0)).collect(),
            end_to_end: AtomicHistogram::new(END_TO_END_BUCKETS),
            devices: Mutex::new(DeviceMap::default()),
        }
    }
}

fn alert_index(signal: SignalKind, grade: Grade, queue: Queue) -> usize {
    let s = SignalKind::ALL
        .iter()
        .position(|k| *k == signal)
        .unwrap_or(0);
    let g = Grade::ALL.iter().position(|k| *k == grade).unwrap_or(0);
    let q = Queue::ALL.iter().position(|k| *k == queue).unwrap_or(0);
    (s * Grade::ALL.len() + g) * Queue::ALL.len() + q
}

/// Last ping time (ms) by device hash.
type DeviceMap = HashMap<u64, i64, foldhash::fast::RandomState>;

/// A device id's 64-bit hash: the active-device count keeps hashes, not ids. Fast (this
/// runs for every ping on the engine thread); a collision only undercounts by one.
fn device_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x1ea5_e0a7).hash_one(id)
}

/// Drops entries older than the device window (when the map has grown since last time).
fn prune(map: &mut DeviceMap, now: i64) {
    map.retain(|_, t| *t >= now - DEVICE_WINDOW_MS);
}

/// Registers of one [`ActiveDevices`] sketch: 2^14, a standard error of 0.8%.
const SKETCH_BITS: u32 = 14;
const SKETCH_REGISTERS: usize = 1 << SKETCH_BITS;
/// Minutes of one [`ActiveDevices`] sketch.
const SKETCH_MS: i64 = 60_000;

/// Distinct devices of the last hour, estimated: one HyperLogLog sketch per minute
/// (16 KiB each), merged when scraped. A ping costs a register update in a sketch that
/// stays in the CPU cache; an exact count kept a map entry per device, a cache miss per
/// ping on the engine thread (3% of it at 200,000 pings/s). Small counts are exact in
/// practice (linear counting); large ones are within about 1%.
#[derive(Debug)]
struct ActiveDevices {
    /// `(minute, registers)`, the minute's slot at `minute % len`.
    sketches: Vec<(i64, Box<[u8]>)>,
}

impl Default for ActiveDevices {
    fn default() -> Self {
        let n = (DEVICE_WINDOW_MS / SKETCH_MS) as usize + 1;
        Self {
            sketches: (0..n)
                .map(|_| (i64::MIN, vec![0u8; SKETCH_REGISTERS].into_boxed_slice()))
                .collect(),
        }
    }
}

impl ActiveDevices {
    /// The sketch of the minute of `now`, cleared when it last held an older minute.
    fn sketch(&mut self, now: i64) -> &mut [u8] {
        let minute = now.div_euclid(SKETCH_MS);
        let len = self.sketches.len() as i64;
        let (m, registers) = &mut self.sketches[minute.rem_euclid(len) as usize];
        if *m != minute {
            *m = minute;
            registers.fill(0);
        }
        registers
    }

    /// Adds devices (their [`device_hash`]) seen at `now`.
    fn add(&mut self, hashes: impl Iterator<Item = u64>, now: i64) {
        let registers = self.sketch(now);
        for h in hashes {
            let j = (h >> (64 - SKETCH_BITS)) as usize;
            // Position of the first one bit in the other 50 bits (51 when all are zero).
            let rank = ((h << SKETCH_BITS) | (1 << (SKETCH_BITS - 1))).leading_zeros() as u8 + 1;
            if let Some(r) = registers.get_mut(j)
                && *r < rank
            {
                *r = rank;
            }
        }
    }

    /// Distinct devices seen within the window before `now`.
    fn estimate(&self, now: i64) -> f64 {
        let minute = now.div_euclid(SKETCH_MS);
        let first = minute - DEVICE_WINDOW_MS / SKETCH_MS + 1;
        let mut merged = vec![0u8; SKETCH_REGISTERS];
        for (m, registers) in &self.sketches {
            if (first..=minute).contains(m) {
                for (a, b) in merged.iter_mut().zip(registers.iter()) {
                    *a = (*a).max(*b);
                }
            }
        }
        // Ertl's improved estimator ("New cardinality estimation algorithms for
        // HyperLogLog sketches", 2017): unbiased across the range without the tables of
        // HyperLogLog++, and exact enough for small counts.
        const Q: usize = 64 - SKETCH_BITS as usize;
        let mut counts = [0u32; Q + 2];
        for r in &merged {
            counts[usize::from(*r).min(Q + 1)] += 1;
        }
        let m = SKETCH_REGISTERS as f64;
        let mut z = m * tau((m - f64::from(counts[Q + 1])) / m);
        for c in counts[1..=Q].iter().rev() {
            z = 0.5 * (z + f64::from(*c));
        }
        z += m * sigma(f64::from(counts[0]) / m);
        if z.is_infinite() {
            return 0.0;
        }
        m * m / (2.0 * std::f64::consts::LN_2) / z
    }
}

/// Ertl's σ(x) = x + Σ_k≥1 x^(2^k)·2^(k-1), infinite at 1 (an empty sketch).
fn sigma(x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// Ertl's τ(x) = (1 - x - Σ_k≥1 (1 - x^(2^-k))²·2^-k) / 3.
fn tau(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

impl AlertTally {
    /// Records messages written to a queue at `written_at` (ms since epoch).
    pub fn record<'a>(&self, written: impl IntoIterator<Item = &'a QueueMessage>, written_at: i64) {
        let mut devices = lock(&self.devices);
        for m in written {
            if let Some(c) = self.written.get(alert_index(m.signal, m.grade, m.queue)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            self.end_to_end
                .observe(written_at.saturating_sub(m.event_time) as f64 / 1000.0);
            devices.insert(device_hash(&m.device_id), written_at);
        }
        if devices.len() > 4096 && devices.len().is_power_of_two() {
            prune(&mut devices, written_at);
        }
    }

    fn alerting_devices(&self, now: i64) -> usize {
        let mut d = lock(&self.devices);
        prune(&mut d, now);
        d.len()
    }
}

/// An engine's counters as last recorded.
#[derive(Debug, Default)]
struct EngineSample {
    stats: EngineStats,
    watermark_ms: Option<i64>,
    state_rows: u64,
    state_bytes: u64,
}

impl EngineSample {
    /// The lanes' samples as one engine's: counters and state summed (a lane counts
    /// only what it ran), the watermark of the lane furthest behind.
    fn merged<'a>(lanes: impl IntoIterator<Item = &'a EngineSample>) -> Option<EngineSample> {
        let mut lanes = lanes.into_iter().peekable();
        lanes.peek()?;
        let mut m = EngineSample::default();
        for l in lanes {
            m.stats.pings_in += l.stats.pings_in;
            m.stats.late += l.stats.late;
            m.stats.windows_emitted += l.stats.windows_emitted;
            for (sink, n) in &l.stats.rows_out {
                *m.stats.rows_out.entry(sink.clone()).or_default() += n;
            }
            for (q, c) in &l.stats.queries {
                let e = m.stats.queries.entry(q.clone()).or_default();
                e.rows_in += c.rows_in;
                e.rows_out += c.rows_out;
            }
            m.watermark_ms = match (m.watermark_ms, l.watermark_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            m.state_rows += l.state_rows;
            m.state_bytes += l.state_bytes;
        }
        Some(m)
    }
}

/// What the collector reads at scrape time.
#[derive(Default)]
struct Sources {
    wal: Option<Wal>,
    lag: Option<LagProbe>,
    lookups: Vec<(String, Arc<LookupStats>)>,
    sinks: Vec<Arc<SinkStats>>,
}

struct Inner {
    ingest_requests: IntCounterVec,
    ingest_rows: IntCounterVec,
    ingest_bytes: IntCounter,
    ingest_rejects: IntCounterVec,
    ingest_duration: Histogram,
    checkpoint_duration: Histogram,
    queue_messages: IntGaugeVec,
    queue_lag: IntGaugeVec,
    queue_pending: IntGaugeVec,
    state_leases: IntGaugeVec,
    sampler_errors: IntCounter,
    sources: Mutex<Sources>,
    /// Per lane (`crate::engine::Lane`), once recorded.
    engine: Mutex<BTreeMap<&'static str, EngineSample>>,
    active_devices: Mutex<ActiveDevices>,
    receive_to_done: AtomicHistogram,
    last_checkpoint_ms: AtomicI64,
    descs: Vec<Desc>,
}

/// Every metric of one pipeline. Cheap to clone (clones share the metrics).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn opts(d: &MetricDef) -> Opts {
    Opts::new(d.name, d.help)
}

fn counter_vec(d: &MetricDef) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(opts(d), d.labels)
}

fn gauge_vec(d: &MetricDef) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(opts(d), d.labels)
}

fn histogram(d: &MetricDef, buckets: &[f64]) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(d.name, d.help).buckets(buckets.to_vec()))
}

/// The collector of the sampled metrics.
struct Sampled(Arc<Inner>);

impl Metrics {
    /// Creates every metric and registers it with `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let descs = SAMPLED
            .iter()
            .map(|d| {
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    d.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        let inner = Arc::new(Inner {
            ingest_requests: counter_vec(&INGEST_REQUESTS)?,
            ingest_rows: counter_vec(&INGEST_ROWS)?,
            ingest_bytes: IntCounter::with_opts(opts(&INGEST_BYTES))?,
            ingest_rejects: counter_vec(&INGEST_REJECTS)?,
            ingest_duration: histogram(&INGEST_DURATION, LATENCY_BUCKETS)?,
            checkpoint_duration: histogram(&CHECKPOINT_DURATION, LATENCY_BUCKETS)?,
            queue_messages: gauge_vec(&QUEUE_MESSAGES)?,
            queue_lag: gauge_vec(&QUEUE_LAG)?,
            queue_pending: gauge_vec(&QUEUE_PENDING)?,
            state_leases: gauge_vec(&STATE_LEASES)?,
            sampler_errors: IntCounter::with_opts(opts(&SAMPLER_ERRORS))?,
            sources: Mutex::new(Sources::default()),
            engine: Mutex::new(BTreeMap::new()),
            active_devices: Mutex::default(),
            receive_to_done: AtomicHistogram::new(END_TO_END_BUCKETS),
            last_checkpoint_ms: AtomicI64::new(now_ms()),
            descs,
        });
        for s in STATUSES {
            inner.ingest_requests.with_label_values(&[*s]);
        }
        for r in ["accepted", "rejected"] {
            inner.ingest_rows.with_label_values(&[r]);
        }
        for k in PROBLEM_KINDS.iter().map(|k| k.as_str()).chain(
            DECODE_REASONS
                .iter()
                .copied()
                .chain(std::iter::once("other")),
        ) {
            inner.ingest_rejects.with_label_values(&[k]);
        }
        for q in Queue::ALL {
            inner.queue_messages.with_label_values(&[q.as_str()]);
        }
        for (b, _) in DPD_BUCKETS {
            inner.state_leases.with_label_values(&[*b]);
        }
        registry.register(Box::new(inner.ingest_requests.clone()))?;
        registry.register(Box::new(inner.ingest_rows.clone()))?;
        registry.register(Box::new(inner.ingest_bytes.clone()))?;
        registry.register(Box::new(inner.ingest_rejects.clone()))?;
        registry.register(Box::new(inner.ingest_duration.clone()))?;
        registry.register(Box::new(inner.checkpoint_duration.clone()))?;
        registry.register(Box::new(inner.queue_messages.clone()))?;
        registry.register(Box::new(inner.queue_lag.clone()))?;
        registry.register(Box::new(inner.queue_pending.clone()))?;
        registry.register(Box::new(inner.state_leases.clone()))?;
        registry.register(Box::new(inner.sampler_errors.clone()))?;
        registry.register(Box::new(Sampled(inner.clone())))?;
        Ok(Self { inner })
    }

    // ---- sources sampled at scrape time ----

    /// Exports the WAL's counters, retained bytes and fsync latency.
    pub fn with_wal(&self, wal: &Wal) -> &Self {
        lock(&self.inner.sources).wal = Some(wal.clone());
        self
    }

    /// Exports the engine's backlog behind the WAL head.
    pub fn with_lag_probe(&self, probe: LagProbe) -> &Self {
        lock(&self.inner.sources).lag = Some(probe);
        self
    }

    /// Exports a Redis lookup table's counters under `table`.
    pub fn add_lookup(&self, table: &str, stats: Arc<LookupStats>) -> &Self {
        lock(&self.inner.sources)
            .lookups
            .push((table.to_string(), stats));
        self
    }

    /// Exports an alert sink's counters (summed over every sink added).
    pub fn add_sink(&self, stats: Arc<SinkStats>) -> &Self {
        lock(&self.inner.sources).sinks.push(stats);
        self
    }

    // ---- updates ----

    /// One `POST /v1/pings` request answered with `status` after `elapsed`.
    pub fn ingest_request(&self, status: u16, elapsed: Duration) {
        self.inner
            .ingest_requests
            .with_label_values(&[status.to_string().as_str()])
            .inc();
        self.inner.ingest_duration.observe(elapsed.as_secs_f64());
    }

    /// A request body of `bytes` was read.
    pub fn ingest_bytes(&self, bytes: usize) {
        self.inner.ingest_bytes.inc_by(bytes as u64);
    }

    /// A request's rows: `accepted` durable, `rejected` with their problems.
    pub fn ingest_rows(&self, accepted: usize, rejected: &[RowRejection]) {
        let i = &self.inner;
        if accepted > 0 {
            i.ingest_rows
                .with_label_values(&["accepted"])
                .inc_by(accepted as u64);
        }
        if rejected.is_empty() {
            return;
        }
        i.ingest_rows
            .with_label_values(&["rejected"])
            .inc_by(rejected.len() as u64);
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for p in rejected.iter().flat_map(|r| &r.problems) {
            *by_kind.entry(reject_reason(&p.kind)).or_default() += 1;
        }
        for (k, n) in by_kind {
            i.ingest_rejects.with_label_values(&[k]).inc_by(n);
        }
    }

    /// Records an engine's counters, watermark and state size (after each batch). The
    /// lanes of `leasewatch run` each record theirs; they are exported as one engine's.
    pub fn record_engine(&self, engine: &Engine) {
        let (rows, bytes) = engine.state_size();
        let mut lanes = lock(&self.inner.engine);
        let e = lanes.entry(engine.lane().as_str()).or_default();
        e.stats.clone_from(engine.stats());
        e.watermark_ms = engine.watermark();
        e.state_rows = rows as u64;
        e.state_bytes = bytes as u64;
    }

    /// A WAL batch of pings went through the engine and its sinks: records its devices
    /// as active and the latency from its newest receive time to now.
    pub fn batch_processed(&self, pings: &RecordBatch) {
        let now = now_ms();
        if let Some(rt) = pings
            .columns()
            .get(col::RECEIVE_TIME)
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            && let Some(newest) = arrow::compute::max(rt)
        {
            self.inner
                .receive_to_done
                .observe(now.saturating_sub(newest) as f64 / 1000.0);
        }
        let Some(ids) = pings
            .columns()
            .get(col::DEVICE_ID)
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return;
        };
        lock(&self.inner.active_devices).add(ids.iter().flatten().map(device_hash), now);
    }

    /// A checkpoint was made durable in `took`.
    pub fn checkpoint_saved(&self, took: Duration) {
        self.inner.checkpoint_duration.observe(took.as_secs_f64());
        self.inner
            .last_checkpoint_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Samples queue lengths and consumer-group lag of every collection queue, and the
    /// days-past-due distribution of at most `max_leases` leases, from Redis.
    pub async fn sample_redis(
        &self,
        conn: &RedisConn,
        keys: &Keys,
        max_leases: usize,
    ) -> Result<(), crate::redis_client::RedisError> {
        let counters = RetryCounters::default();
        let i = &self.inner;
        let mut lag = Vec::new();
        for q in Queue::ALL {
            let key = keys.queue(q);
            let mut pipe = ::redis::pipe();
            pipe.cmd("TYPE").arg(&key).cmd("XLEN").arg(&key);
            let (kind, len): (String, i64) = conn
                .query(Request::Pipe(&pipe), "queue length", &counters)
                .await?;
            i.queue_messages.with_label_values(&[q.as_str()]).set(len);
            if kind != "stream" {
                continue;
            }
            let mut cmd = ::redis::cmd("XINFO");
            cmd.arg("GROUPS").arg(&key);
            let groups: ::redis::Value = conn
                .query(Request::Cmd(&cmd), "queue groups", &counters)
                .await?;
            for g in parse_groups(&groups) {
                lag.push((q, g));
            }
        }
        i.queue_lag.reset();
        i.queue_pending.reset();
        for (q, g) in lag {
            let labels = [q.as_str(), g.name.as_str()];
            if let Some(l) = g.lag {
                i.queue_lag.with_label_values(&labels).set(l);
            }
            i.queue_pending.with_label_values(&labels).set(g.pending);
        }
        let dpd = sample_dpd(conn, keys, max_leases, &counters).await?;
        for ((b, _), n) in DPD_BUCKETS.iter().zip(dpd) {
            i.state_leases.with_label_values(&[*b]).set(n);
        }
        Ok(())
    }

    /// Runs [`Metrics::sample_redis`] every `every` until the task is aborted.
    pub fn spawn_redis_sampler(
        &self,
        conn: Arc<RedisConn>,
        keys: Keys,
        every: Duration,
        max_leases: usize,
    ) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = m.sample_redis(&conn, &keys, max_leases).await {
                    m.inner.sampler_errors.inc();
                    tracing::warn!(error = %e, "sampling queues and lease state failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}

/// The label of a problem kind: a known one, else `other` (bounded label values).
fn reject_reason(kind: &str) -> &'static str {
    PROBLEM_KINDS
        .iter()
        .map(|k| k.as_str())
        .chain(DECODE_REASONS.iter().copied())
        .find(|k| *k == kind)
        .unwrap_or("other")
}

struct GroupInfo {
    name: String,
    pending: i64,
    lag: Option<i64>,
}

/// Reads `XINFO GROUPS` (RESP2 flat arrays or RESP3 maps).
fn parse_groups(v: &::redis::Value) -> Vec<GroupInfo> {
    use ::redis::Value;
    let Value::Array(groups) = v else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    groups
        .iter()
        .filter_map(|g| {
            let pairs: Vec<(&Value, &Value)> = match g {
                Value::Array(kv) => kv.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
                Value::Map(kv) => kv.iter().map(|(k, v)| (k, v)).collect(),
                _ => return None,
            };
            let mut info = GroupInfo {
                name: String::new(),
                pending: 0,
                lag: None,
            };
            for (k, v) in pairs {
                match text(k).as_deref() {
                    Some("name") => info.name = text(v).unwrap_or_default(),
                    Some("pending") => info.pending = int(v).unwrap_or(0),
                    Some("lag") => info.lag = int(v),
                    _ => {}
                }
            }
            (!info.name.is_empty()).then_some(info)
        })
        .collect()
}

/// Counts leases per [`DPD_BUCKETS`] entry: `SCAN` over `{prefix}lease:*`, one `MGET` per
/// scanned page, stopping after `max_leases` keys.
async fn sample_dpd(
    conn: &RedisConn,
    keys: &Keys,
    max_leases: usize,
    counters: &RetryCounters,
) -> Result<Vec<i64>, crate::redis_client::RedisError> {
    #[derive(serde::Deserialize)]
    struct Dpd {
        days_past_due: Option<i32>,
    }
    let mut out = vec![0i64; DPD_BUCKETS.len()];
    let pattern = format!("{}*", keys.lease_prefix());
    let mut cursor: u64 = 0;
    let mut seen = 0usize;
    loop {
        let mut scan = ::redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, page): (u64, Vec<String>) = conn
            .query(Request::Cmd(&scan), "scan leases", counters)
            .await?;
        if !page.is_empty() {
            let mut mget = ::redis::cmd("MGET");
            mget.arg(&page);
            let values: Vec<Option<String>> = conn
                .query(Request::Cmd(&mget), "read leases", counters)
                .await?;
            for v in values.into_iter().flatten() {
                let Ok(Dpd {
                    days_past_due: Some(d),
                }) = serde_json::from_str::<Dpd>(&v)
                else {
                    continue;
                };
                let b = DPD_BUCKETS
                    .iter()
                    .position(|(_, max)| d <= *max)
                    .unwrap_or(0);
                if let Some(n) = out.get_mut(b) {
                    *n += 1;
                }
            }
            seen += page.len();
        }
        cursor = next;
        if cursor == 0 || seen >= max_leases {
            return Ok(out);
        }
    }
}

// ---- the collector ----

fn family(d: &MetricDef, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(d.name.to_string());
    f.set_help(d.help.to_string());
    f.set_field_type(match d.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    f.set_metric(metrics);
    f
}

fn labels(d: &MetricDef, values: &[&str]) -> Vec<proto::LabelPair> {
    d.labels
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn value(d: &MetricDef, label_values: &[&str], v: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(d, label_values));
    match d.kind {
        Kind::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(v);
            m.set_counter(c);
        }
        _ => {
            let mut g = proto::Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
    }
    m
}

fn hist(d: &MetricDef, label_values: &[&str], h: &HistogramSnapshot) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(d, label_values));
    m.set_histogram(h.to_proto());
    m
}

fn one(d: &MetricDef, v: f64) -> MetricFamily {
    family(d, vec![value(d, &[], v)])
}

/// Resident memory (bytes) from `/proc/self/status`; `None` elsewhere.
fn resident_memory_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let i = &self.0;
        let now = now_ms();
        let mut out = Vec::new();
        let (wal, lag, lookups, sinks) = {
            let s = lock(&i.sources);
            (
                s.wal.clone(),
                s.lag.clone(),
                s.lookups.clone(),
                s.sinks.clone(),
            )
        };
        if let Some(wal) = &wal {
            let st = wal.stats();
            out.push(one(&WAL_APPENDS, st.appends as f64));
            out.push(one(&WAL_COMMITS, st.commits as f64));
            out.push(one(&WAL_BYTES, st.bytes_written as f64));
            out.push(one(&WAL_RETAINED, wal.retained_bytes() as f64));
            out.push(family(
                &WAL_FSYNC,
                vec![hist(&WAL_FSYNC, &[], &wal.fsync_histogram())],
            ));
        }
        let last = i.last_checkpoint_ms.load(Ordering::Relaxed);
        out.push(one(
            &CHECKPOINT_AGE,
            now.saturating_sub(last) as f64 / 1000.0,
        ));
        {
            let merged = EngineSample::merged(lock(&i.engine).values());
            if let Some(e) = merged {
                out.push(one(&ENGINE_ROWS_IN, e.stats.pings_in as f64));
                out.push(one(&ENGINE_LATE, e.stats.late as f64));
                out.push(one(&ENGINE_WINDOWS, e.stats.windows_emitted as f64));
                out.push(family(
                    &ENGINE_ROWS_OUT,
                    e.stats
                        .rows_out
                        .iter()
                        .map(|(s, n)| value(&ENGINE_ROWS_OUT, &[s], *n as f64))
                        .collect(),
                ));
                let per_query = |d: &MetricDef, rows: fn(&QueryCounts) -> u64| {
                    family(
                        d,
                        e.stats
                            .queries
                            .iter()
                            .map(|(q, c)| value(d, &[q], rows(c) as f64))
                            .collect(),
                    )
                };
                out.push(per_query(&ENGINE_QUERY_ROWS_IN, |c| c.rows_in));
                out.push(per_query(&ENGINE_QUERY_ROWS_OUT, |c| c.rows_out));
                if let Some(wm) = e.watermark_ms.filter(|w| *w != i64::MAX) {
                    out.push(one(&ENGINE_WM_LAG, now.saturating_sub(wm) as f64 / 1000.0));
                }
                out.push(one(&ENGINE_STATE_ROWS, e.state_rows as f64));
                out.push(one(&ENGINE_STATE_BYTES, e.state_bytes as f64));
            }
        }
        if let Some(lag) = &lag {
            let l = lag();
            out.push(one(&ENGINE_BACKLOG_BATCHES, l.batches as f64));
            out.push(one(&ENGINE_BACKLOG_ROWS, l.rows as f64));
        }
        let active = lock(&i.active_devices).estimate(now).round();
        out.push(one(&ENGINE_ACTIVE_DEVICES, active));
        if !lookups.is_empty() {
            // One series per table: each lane of `leasewatch run` has its own lookups.
            let mut snaps: Vec<(&str, crate::lookup::LookupStatsSnapshot, HistogramSnapshot)> =
                Vec::new();
            for (t, s) in &lookups {
                let (counts, rtt) = (s.snapshot(), s.redis.round_trip_seconds.snapshot());
                match snaps.iter_mut().find(|(name, _, _)| name == t) {
                    Some((_, c, h)) => {
                        c.add(&counts);
                        h.merge(&rtt);
                    }
                    None => snaps.push((t.as_str(), counts, rtt)),
                }
            }
            let per = |d: &MetricDef, f: &dyn Fn(&crate::lookup::LookupStatsSnapshot) -> u64| {
                family(
                    d,
                    snaps
                        .iter()
                        .map(|(t, s, _)| value(d, &[t], f(s) as f64))
                        .collect(),
                )
            };
            out.push(per(&LOOKUP_HITS, &|s| s.cache_hits));
            out.push(per(&LOOKUP_MISSES, &|s| s.cache_misses));
            out.push(per(&LOOKUP_ROUND_TRIPS, &|s| s.round_trips));
            out.push(per(&LOOKUP_FETCHED, &|s| s.keys_fetched));
            out.push(per(&LOOKUP_FOUND, &|s| s.keys_found));
            out.push(per(&LOOKUP_MALFORMED, &|s| s.malformed));
            out.push(per(&LOOKUP_HELD, &|s| s.held));
            out.push(per(&LOOKUP_ERRORS, &|s| s.errors));
            out.push(per(&LOOKUP_RETRIES, &|s| s.retries));
            out.push(family(
                &LOOKUP_RTT,
                snaps
                    .iter()
                    .map(|(t, _, h)| hist(&LOOKUP_RTT, &[t], h))
                    .collect(),
            ));
        }
        let mut from_event = HistogramSnapshot::empty(END_TO_END_BUCKETS);
        if !sinks.is_empty() {
            let load = |f: &dyn Fn(&SinkStats) -> &AtomicU64| -> f64 {
                sinks
                    .iter()
                    .map(|s| f(s).load(Ordering::Relaxed))
                    .sum::<u64>() as f64
            };
            out.push(one(&SINK_DUPLICATES, load(&|s| &s.duplicates)));
            out.push(one(&SINK_HELD, load(&|s| &s.held)));
            out.push(one(&SINK_SUPPRESSED, load(&|s| &s.suppressed)));
            out.push(one(&SINK_ROUND_TRIPS, load(&|s| &s.round_trips)));
            out.push(one(&SINK_ERRORS, load(&|s| &s.redis.errors)));
            out.push(one(&SINK_RETRIES, load(&|s| &s.redis.retries)));
            let mut rtt = HistogramSnapshot::empty(LATENCY_BUCKETS);
            for s in &sinks {
                rtt.merge(&s.redis.round_trip_seconds.snapshot());
                from_event.merge(&s.alerts.end_to_end.snapshot());
            }
            out.push(family(&SINK_RTT, vec![hist(&SINK_RTT, &[], &rtt)]));
            let mut alerts = Vec::with_capacity(SignalKind::ALL.len() * 30);
            for sig in SignalKind::ALL {
                for g in Grade::ALL {
                    for q in Queue::ALL {
                        let idx = alert_index(sig, g, q);
                        let n: u64 = sinks
                            .iter()
                            .filter_map(|s| s.alerts.written.get(idx))
                            .map(|c| c.load(Ordering::Relaxed))
                            .sum();
                        alerts.push(value(
                            &SINK_ALERTS,
                            &[sig.as_str(), g.as_str(), q.as_str()],
                            n as f64,
                        ));
                    }
                }
            }
            out.push(family(&SINK_ALERTS, alerts));
            let devices: usize = sinks.iter().map(|s| s.alerts.alerting_devices(now)).sum();
            out.push(one(&SINK_ALERTING_DEVICES, devices as f64));
        }
        out.push(family(
            &SINK_E2E,
            vec![
                hist(&SINK_E2E, &["event_time"], &from_event),
                hist(&SINK_E2E, &["receive_time"], &i.receive_to_done.snapshot()),
            ],
        ));
        if let Some(rss) = resident_memory_bytes() {
            out.push(one(&PROCESS_RSS, rss));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ids(range: std::ops::Range<u32>) -> impl Iterator<Item = u64> {
        range.map(|i| device_hash(&format!("dev-{i:08}")))
    }

    #[test]
    fn active_devices_are_counted_within_two_percent() {
        let now = 1_800_000_000_000;
        for n in [1u32, 10, 1_000, 10_000, 40_000, 100_000, 1_000_000] {
            let mut a = ActiveDevices::default();
            // Each device pings three times, in different minutes of the hour.
            for minute in [0, 20, 59] {
                a.add(ids(0..n), now - minute * SKETCH_MS);
            }
            let e = a.estimate(now);
            let error = (e - f64::from(n)).abs() / f64::from(n);
            let bound = if n <= 1_000 { 0.005 } else { 0.02 };
            assert!(error <= bound, "{n} devices estimated as {e}");
        }
        assert_eq!(ActiveDevices::default().estimate(0), 0.0);
    }

    #[test]
    fn active_devices_leave_the_count_after_an_hour() {
        let start = 1_800_000_000_000;
        let mut a = ActiveDevices::default();
        a.add(ids(0..500), start);
        a.add(ids(500..600), start + 30 * SKETCH_MS);
        let near = |e: f64, n: f64| (e - n).abs() <= n / 100.0;
        assert!(near(a.estimate(start + 59 * SKETCH_MS), 600.0));
        assert!(near(a.estimate(start + 60 * SKETCH_MS), 100.0));
        // A sketch's slot comes round again: it holds only its new minute.
        a.add(ids(1000..1010), start + 61 * SKETCH_MS);
        assert!(near(a.estimate(start + 61 * SKETCH_MS), 110.0));
        assert_eq!(a.estimate(start + 200 * SKETCH_MS), 0.0);
    }

    #[test]
    fn names_follow_the_convention() {
        let allowed_labels = [
            "status", "result", "reason", "sink", "query", "table", "signal", "grade", "queue",
            "group", "from", "dpd",
        ];
        let mut seen = HashSet::new();
        for d in DEFS {
            assert!(seen.insert(d.name), "{} declared twice", d.name);
            assert!(d.name.starts_with("leasewatch_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            if d.kind == Kind::Histogram {
                assert!(d.name.ends_with("_seconds"), "{}", d.name);
            }
            assert!(
                !d.name.contains("millis") && !d.name.contains("_ms"),
                "{}",
                d.name
            );
            for l in d.labels {
                assert!(allowed_labels.contains(l), "{}: label {l}", d.name);
            }
        }
        assert_eq!(SAMPLED[0].name, WAL_APPENDS.name, "REGISTERED is off");
        assert_eq!(SAMPLED.len(), DEFS.len() - REGISTERED);
    }

    #[test]
    fn histogram_buckets() {
        let h = AtomicHistogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.1);
        h.observe(0.5);
        h.observe(7.0);
        h.observe(f64::NAN);
        let s = h.snapshot();
        assert_eq!(s.counts, vec![3, 1, 1]);
        assert_eq!(s.count(), 5);
        assert!((s.sum - 7.65).abs() < 1e-6);
        let p = s.to_proto();
        let cum: Vec<u64> = p
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cum, vec![3, 4]);
    }

    #[test]
    fn every_declared_metric_is_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let wal = Wal::open(&crate::wal::WalConfig {
            dir: dir.path().join("wal"),
            ..crate::wal::WalConfig::default()
        })
        .unwrap();
        m.with_wal(&wal)
            .with_lag_probe(Arc::new(crate::ingest::Lag::default))
            .add_lookup("lease", Arc::new(LookupStats::default()))
            .add_sink(Arc::new(SinkStats::default()));
        let mut engine = rt
            .block_on(Engine::from_files(
                &[(
                    "p.sql".to_string(),
                    "CREATE TABLE pings (device_id TEXT, event_time TIMESTAMP, \
                     WATERMARK FOR event_time AS (event_time - INTERVAL '5' SECOND)) \
                     WITH (connector = 'leasewatch'); \
                     CREATE TABLE out (device_id TEXT) WITH (connector = 'blackhole'); \
                     INSERT INTO out SELECT device_id FROM pings;"
                        .to_string(),
                )],
                &crate::engine::EngineOptions::default(),
            ))
            .unwrap();
        let ping = br#"{"device_id":"490154203237518","event_time":1772409600000,"event_kind":"heartbeat"}"#;
        let batch = crate::ingest::decode_ndjson(ping, 1).unwrap().batch;
        rt.block_on(engine.process(&batch)).unwrap();
        m.record_engine(&engine);
        // One series per query, named after it (an INSERT INTO by sink, file and line).
        let query = |name: &str| -> Vec<(String, f64)> {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().to_vec())
                .map(|m| {
                    let q = m.get_label().iter().find(|l| l.name() == "query");
                    (
                        q.map(|l| l.value().to_string()).unwrap_or_default(),
                        m.get_counter().get_value(),
                    )
                })
                .collect()
        };
        let want = vec![("insert_into_out@p.sql:1".to_string(), 1.0)];
        for d in [&ENGINE_QUERY_ROWS_IN, &ENGINE_QUERY_ROWS_OUT] {
            assert_eq!(
                query(d.name),
                want,
                "{}: one series per query, labelled with the engine's query name \
                 (plan::Query::name)",
                d.name
            );
        }
        let gathered: HashSet<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        // The watermark lag appears with the first ping, consumer-group gauges once a
        // group exists; the rest from the start.
        let later = [ENGINE_WM_LAG.name, QUEUE_LAG.name, QUEUE_PENDING.name];
        for name in names().filter(|n| !later.contains(n)) {
            assert!(gathered.contains(name), "{name} not gathered");
        }
        for g in &gathered {
            assert!(names().any(|n| n == g), "{g} gathered but not declared");
        }
    }
}
