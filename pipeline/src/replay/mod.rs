//! Replay: the pipeline fed from NDJSON or Parquet ping files as fast as it can go.
//!
//! NDJSON files are cut into regions of whole lines, decoded (the shared
//! [`NdjsonDecoder`] straight into `ping_schema()`
//! batches: the decoder specialised to ping lines, arrow-json for any line it
//! declines, or arrow-json alone with `--arrow-json`) and validated columnar with the
//! contract's `check_*` rules on several threads, and handed to the engine in file
//! order (`source`); Parquet is read on one thread. The engine runs on the calling task. Rejected rows are counted
//! with reasons and samples, never dropped silently. At the end the watermark goes to
//! +infinity so every window emits.

mod source;
pub mod validate;

use crate::engine::{Engine, EngineError};
use crate::ingest::NdjsonDecoder;
use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use leasewatch_schemas::{Limits, col, ping_schema};
use source::Source;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use validate::Rejections;

/// Replay failures, by who must act.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An input file cannot be read (outside: the path, the disk).
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// An input file is not NDJSON or Parquet of pings (the user's).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bug.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Rows per batch.
    pub batch_rows: usize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Validation limits.
    pub limits: Limits,
    /// Stand-in receive time for rows without one (ms); `None`: the wall clock.
    pub now_ms: Option<i64>,
    /// Threads decoding NDJSON; 0: one per available core.
    pub decode_threads: usize,
    /// Bytes read per NDJSON region (one decode thread's unit of work). The batches the
    /// engine sees depend on it, never on the number of threads.
    pub region_bytes: usize,
    /// First time a decode-only pass (decode and validate, no queries) over the same
    /// inputs with arrow-json alone, and report its rate next to the run's.
    pub measure_decode: bool,
    /// Decode NDJSON with arrow-json alone, not the ping-line decoder first.
    pub arrow_json_only: bool,
}

/// Default bytes per NDJSON region.
pub const REGION_BYTES: usize = 4 << 20;

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            batch_rows: 8192,
            progress: true,
            limits: Limits::default(),
            now_ms: None,
            decode_threads: 0,
            region_bytes: REGION_BYTES,
            measure_decode: false,
            arrow_json_only: false,
        }
    }
}

impl ReplayOptions {
    /// The number of decode threads: `decode_threads`, or the available cores.
    pub fn threads(&self) -> usize {
        if self.decode_threads > 0 {
            self.decode_threads
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Input files.
    pub inputs: Vec<String>,
    /// Bytes read.
    pub bytes_read: u64,
    /// Rows read: valid pings plus rejected rows.
    pub rows_read: u64,
    /// Valid pings fed to the engine.
    pub pings_in: u64,
    /// Rejected rows.
    pub rejected: u64,
    /// Problems of rejected rows by `field:kind`.
    pub rejected_reasons: BTreeMap<String, u64>,
    /// The first rejected rows, with file and line.
    pub rejected_samples: Vec<String>,
    /// Pings behind the watermark (counted, per-ping queries still ran, never windowed).
    pub late: u64,
    /// Rows written per sink.
    pub rows_out: BTreeMap<String, u64>,
    /// Windows emitted.
    pub windows_emitted: u64,
    /// Distinct devices seen.
    pub devices: u64,
    /// Peak window state (rows), sampled after every batch.
    pub window_state_rows_peak: u64,
    /// Peak window state (bytes), sampled after every batch.
    pub window_state_bytes_peak: u64,
    /// Peak window state bytes / devices.
    pub window_state_bytes_per_device: f64,
    /// Threads that decoded NDJSON.
    pub decode_threads: usize,
    /// Wall time of the run, seconds (without the decode-only pass).
    pub seconds: f64,
    /// Valid pings per second.
    pub pings_per_second: f64,
    /// NDJSON decoder: `ping-lines` (arrow-json for what it declines) or `arrow-json`.
    pub json_decoder: String,
    /// With `--measure-decode`: seconds of the decode-only pass (decode with arrow-json
    /// alone and validate, with the same threads, no queries) over the same inputs, run
    /// first: the yardstick, whatever decoder the run itself uses.
    pub decode_only_seconds: Option<f64>,
    /// With `--measure-decode`: valid pings per second of the decode-only pass.
    pub decode_only_pings_per_second: Option<f64>,
    /// Peak resident memory of the process (`VmHWM`, Linux only), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Per Redis lookup table: batches looked up, round trips, cache hits and misses.
    pub lookups: BTreeMap<String, crate::lookup::LookupStatsSnapshot>,
}

impl Summary {
    /// Human-readable lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "pings in: {}  rejected: {}  late: {}  windows: {}  devices: {}\n",
            self.pings_in, self.rejected, self.late, self.windows_emitted, self.devices
        );
        for (k, v) in &self.rejected_reasons {
            s.push_str(&format!("  rejected {k}: {v}\n"));
        }
        for (k, v) in &self.rows_out {
            s.push_str(&format!("rows out {k}: {v}\n"));
        }
        s.push_str(&format!(
            "window state peak: {} rows, {} bytes ({:.0} bytes/device)\n{:.2} s, {:.0} pings/s ({} decode threads, {})\n",
            self.window_state_rows_peak,
            self.window_state_bytes_peak,
            self.window_state_bytes_per_device,
            self.seconds,
            self.pings_per_second,
            self.decode_threads,
            self.json_decoder
        ));
        if let (Some(secs), Some(rate)) =
            (self.decode_only_seconds, self.decode_only_pings_per_second)
        {
            s.push_str(&format!(
                "decode only (arrow-json): {secs:.2} s, {rate:.0} pings/s (the run at {:.2}x of it)\n",
                self.pings_per_second / rate.max(1e-9)
            ));
        }
        for (t, l) in &self.lookups {
            let distinct = (l.cache_hits + l.cache_misses).max(1);
            s.push_str(&format!(
                "lookup {t}: {} batches, {} round trips ({:.2} per batch), cache hit rate {:.1}% ({} keys fetched)\n",
                l.batches,
                l.round_trips,
                l.round_trips as f64 / l.batches.max(1) as f64,
                100.0 * l.cache_hits as f64 / distinct as f64,
                l.keys_fetched
            ));
        }
        if let Some(b) = self.peak_rss_bytes {
            s.push_str(&format!(
                "peak RSS: {:.1} MiB\n",
                b as f64 / (1 << 20) as f64
            ));
        }
        s
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

fn progress_bar(total: u64, opts: &ReplayOptions) -> ProgressBar {
    if opts.progress && std::io::stderr().is_terminal() {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    }
}

/// Decodes and validates `inputs` without running queries: (valid pings, seconds).
fn decode_only(
    inputs: &[PathBuf],
    opts: &ReplayOptions,
    total: u64,
) -> Result<(u64, f64), ReplayError> {
    let started = Instant::now();
    let bar = progress_bar(total, opts);
    bar.set_message("decode-only pass");
    let mut source = Source::start(inputs, opts, opts.threads())?;
    let mut pings = 0u64;
    while let Some(chunk) = source.next()? {
        bar.inc(chunk.bytes);
        pings += chunk
            .batches
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>();
    }
    source.finish();
    bar.finish_and_clear();
    Ok((pings, started.elapsed().as_secs_f64()))
}

/// Replays `inputs` through `engine`, then flushes it.
pub async fn replay(
    engine: &mut Engine,
    inputs: &[PathBuf],
    opts: &ReplayOptions,
) -> Result<Summary, ReplayError> {
    let total: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReplayError::Read {
            path: inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: e.to_string(),
        })?
        .iter()
        .sum();
    let threads = opts.threads();
    let mut summary = Summary {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        decode_threads: threads,
        json_decoder: if opts.arrow_json_only {
            "arrow-json"
        } else {
            "ping-lines"
        }
        .to_string(),
        ..Summary::default()
    };
    if opts.measure_decode {
        let arrow = ReplayOptions {
            arrow_json_only: true,
            ..opts.clone()
        };
        let (pings, seconds) = decode_only(inputs, &arrow, total)?;
        summary.decode_only_seconds = Some(seconds);
        summary.decode_only_pings_per_second = Some(pings as f64 / seconds.max(1e-9));
    }
    let started = Instant::now();
    let bar = progress_bar(total, opts);
    let mut source = Source::start(inputs, opts, threads)?;
    let mut batches = 0u64;
    let mut failure = None;
    'chunks: loop {
        let chunk = match source.next() {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        summary.bytes_read += chunk.bytes;
        bar.inc(chunk.bytes);
        for batch in &chunk.batches {
            if let Err(e) = engine.process(batch).await {
                failure = Some(ReplayError::Engine(e));
                break 'chunks;
            }
            let (rows, bytes) = engine.state_size();
            summary.window_state_rows_peak = summary.window_state_rows_peak.max(rows as u64);
            summary.window_state_bytes_peak = summary.window_state_bytes_peak.max(bytes as u64);
            batches += 1;
            if batches.is_multiple_of(16) {
                bar.set_message(format!(
                    "{} pings, window state {:.1} MB",
                    engine.stats().pings_in,
                    bytes as f64 / 1e6
                ));
            }
            if batches.is_multiple_of(64) {
                tracing::debug!(
                    pings = engine.stats().pings_in,
                    watermark_ms = engine.watermark(),
                    state_rows = rows,
                    state_bytes = bytes,
                    "replay progress"
                );
            }
        }
    }
    if let Some(e) = failure {
        bar.abandon();
        return Err(e);
    }
    let (rejections, devices) = source.finish();
    summary.devices = devices;
    // The lease sweep (overdue ladder) once, at the last event time the data reached.
    if engine.has_sweep()
        && let Some(at) = engine.max_event_time()
    {
        let n = engine.sweep_leases(at).await?;
        tracing::info!(devices = n, "lease sweep at the end of the input");
    }
    engine.finish().await?;
    for (table, lookup) in engine.lookups() {
        summary
            .lookups
            .insert(table.clone(), lookup.stats().snapshot());
    }
    bar.finish_and_clear();
    let stats = engine.stats();
    summary.pings_in = stats.pings_in;
    summary.late = stats.late;
    summary.rows_out = stats.rows_out.clone();
    summary.windows_emitted = stats.windows_emitted;
    summary.rejected = rejections.rows;
    summary.rejected_reasons = rejections.reasons;
    summary.rejected_samples = rejections.samples;
    summary.rows_read = summary.pings_in + summary.rejected;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.pings_per_second = summary.pings_in as f64 / summary.seconds.max(1e-9);
    summary.window_state_bytes_per_device = if summary.devices > 0 {
        summary.window_state_bytes_peak as f64 / summary.devices as f64
    } else {
        0.0
    };
    summary.peak_rss_bytes = peak_rss_bytes();
    Ok(summary)
}

/// Reads NDJSON pings on the calling thread, region by region ([`REGION_BYTES`]) with
/// the shared decoder (ping lines first, as replay); `emit(batch, bytes, rows_read, rejections, first line of the
/// region)` returns false to stop. Returns false when stopped. Rows that do not decode
/// are counted in `rej` as `file:line`; validation is the caller's.
pub fn read_ndjson(
    path: &Path,
    batch_rows: usize,
    emit: &mut dyn FnMut(RecordBatch, u64, u64, &mut Rejections, u64) -> bool,
    rej: &mut Rejections,
) -> Result<bool, ReplayError> {
    let mut regions = source::Regions::open(path, REGION_BYTES)?;
    let mut decoder = NdjsonDecoder::with_ping_lines(batch_rows);
    let mut buf = Vec::new();
    let mut line = 1u64;
    let mut first = true;
    while regions.next_into(&mut buf)? {
        let text = match buf.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) if first => rest,
            _ => &buf[..],
        };
        first = false;
        let decoded = decoder
            .decode(text, usize::MAX)
            .map_err(|e| ReplayError::Internal(e.to_string()))?;
        for r in &decoded.rejected {
            let message = r
                .rejection
                .problems
                .first()
                .map_or("malformed", |p| p.message.as_str());
            rej.add_malformed(
                format!("{}:{}", path.display(), line + r.line as u64),
                message,
            );
        }
        let mut bytes = buf.len() as u64;
        let mut rows_read = decoded.rows as u64;
        for b in decoded.batches {
            if !emit(b, bytes, rows_read, rej, line) {
                return Ok(false);
            }
            bytes = 0;
            rows_read = 0;
        }
        line += decoded.lines as u64;
    }
    Ok(true)
}

/// Reads Parquet pings, matching columns by name (missing optional columns are null).
pub fn read_parquet(
    path: &Path,
    batch_rows: usize,
    emit: &mut dyn FnMut(RecordBatch, u64, u64, &mut Rejections) -> bool,
    rej: &mut Rejections,
) -> Result<bool, ReplayError> {
    let fmt = |m: String| ReplayError::Format {
        path: path.display().to_string(),
        message: m,
    };
    let file = File::open(path).map_err(|e| ReplayError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| fmt(e.to_string()))?
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| fmt(e.to_string()))?;
    let schema = ping_schema();
    let mut rows_total = 0u64;
    let mut batches = 0u64;
    for b in reader {
        let b = b.map_err(|e| fmt(e.to_string()))?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let c = match b.schema().index_of(f.name()) {
                Ok(i) => arrow::compute::cast(b.column(i), f.data_type())
                    .map_err(|e| fmt(format!("column {}: {e}", f.name())))?,
                Err(_) if f.is_nullable() => new_null_array(f.data_type(), b.num_rows()),
                Err(_) => return Err(fmt(format!("required column {} is missing", f.name()))),
            };
            cols.push(c);
        }
        let relaxed = std::sync::Arc::new(arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batch = match RecordBatch::try_new(schema.clone(), cols.clone()) {
            Ok(b) => b,
            Err(_) => {
                // Required columns with nulls: count those rows as rejected, keep the rest.
                let loose = RecordBatch::try_new(relaxed, cols).map_err(|e| fmt(e.to_string()))?;
                let mut keep = vec![true; loose.num_rows()];
                for i in [col::DEVICE_ID, col::EVENT_TIME, col::EVENT_KIND] {
                    let c = loose.column(i);
                    for (r, k) in keep.iter_mut().enumerate() {
                        if c.is_null(r) && *k {
                            *k = false;
                            rej.add_malformed(
                                format!("{} row {}", path.display(), rows_total + r as u64),
                                "required field is null",
                            );
                        }
                    }
                }
                let kept = arrow::compute::filter_record_batch(
                    &loose,
                    &arrow::array::BooleanArray::from(keep),
                )
                .map_err(|e| fmt(e.to_string()))?;
                RecordBatch::try_new(schema.clone(), kept.columns().to_vec())
                    .map_err(|e| fmt(e.to_string()))?
            }
        };
        let n = b.num_rows() as u64;
        rows_total += n;
        batches += 1;
        let bytes = if batches == 1 { size } else { 0 };
        if !emit(batch, bytes, n, rej) {
            return Ok(false);
        }
    }
    Ok(true)
}
