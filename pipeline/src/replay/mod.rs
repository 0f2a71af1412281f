//! Replay: the pipeline fed from NDJSON or Parquet ping files as fast as it can go.
//!
//! A reader thread decodes (arrow-json's `Decoder` straight into `ping_schema()` batches,
//! or Parquet) and validates columnar with the contract's `check_*` rules; the engine
//! runs on the calling task. Rejected rows are counted with reasons and samples, never
//! dropped silently. At the end the watermark goes to +infinity so every window emits.

pub mod validate;

use crate::engine::{Engine, EngineError};
use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use leasewatch_schemas::{Limits, col, ping_schema};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
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
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            batch_rows: 8192,
            progress: true,
            limits: Limits::default(),
            now_ms: None,
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
    /// Peak window state (rows) sampled during the run.
    pub window_state_rows_peak: u64,
    /// Peak window state (bytes) sampled during the run.
    pub window_state_bytes_peak: u64,
    /// Peak window state bytes / devices.
    pub window_state_bytes_per_device: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Valid pings per second.
    pub pings_per_second: f64,
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
            "window state peak: {} rows, {} bytes ({:.0} bytes/device)\n{:.2} s, {:.0} pings/s\n",
            self.window_state_rows_peak,
            self.window_state_bytes_peak,
            self.window_state_bytes_per_device,
            self.seconds,
            self.pings_per_second
        ));
        s
    }
}

/// One decoded, validated chunk.
struct Chunk {
    batch: RecordBatch,
    bytes: u64,
}

enum Msg {
    Chunk(Chunk),
    Done(Rejections, u64),
    Failed(ReplayError),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Replays `inputs` through `engine`, then flushes it.
pub async fn replay(
    engine: &mut Engine,
    inputs: &[PathBuf],
    opts: &ReplayOptions,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
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
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let (tx, rx) = mpsc::sync_channel::<Msg>(4);
    let files = inputs.to_vec();
    let o = opts.clone();
    let reader = std::thread::Builder::new()
        .name("replay-decode".into())
        .spawn(move || read_all(&files, &o, &tx))
        .map_err(|e| ReplayError::Internal(e.to_string()))?;
    let mut summary = Summary {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        ..Summary::default()
    };
    let mut rejections = Rejections::default();
    let mut n = 0u64;
    let mut failure = None;
    for msg in rx.iter() {
        match msg {
            Msg::Chunk(c) => {
                summary.bytes_read += c.bytes;
                bar.inc(c.bytes);
                if let Err(e) = engine.process(&c.batch).await {
                    failure = Some(ReplayError::Engine(e));
                    break;
                }
                n += 1;
                if n.is_multiple_of(16) {
                    let (rows, bytes) = engine.state_size();
                    summary.window_state_rows_peak =
                        summary.window_state_rows_peak.max(rows as u64);
                    summary.window_state_bytes_peak =
                        summary.window_state_bytes_peak.max(bytes as u64);
                    bar.set_message(format!("{} pings", engine.stats().pings_in));
                }
            }
            Msg::Done(r, devices) => {
                rejections = r;
                summary.devices = devices;
            }
            Msg::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(rx);
    let _ = reader.join();
    if let Some(e) = failure {
        bar.abandon();
        return Err(e);
    }
    let (rows, bytes) = engine.state_size();
    summary.window_state_rows_peak = summary.window_state_rows_peak.max(rows as u64);
    summary.window_state_bytes_peak = summary.window_state_bytes_peak.max(bytes as u64);
    // The lease sweep (overdue ladder) once, at the last event time the data reached.
    if engine.has_sweep()
        && let Some(at) = engine.max_event_time()
    {
        let n = engine.sweep_leases(at).await?;
        tracing::info!(devices = n, "lease sweep at the end of the input");
    }
    engine.finish().await?;
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
    Ok(summary)
}

type Devices = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// The device-id hashes are already hashes: no second hashing.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

fn read_all(files: &[PathBuf], opts: &ReplayOptions, tx: &mpsc::SyncSender<Msg>) {
    let mut rej = Rejections::default();
    let mut devices = Devices::default();
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let now = opts.now_ms.unwrap_or_else(now_ms);
    for f in files {
        let mut row_base = 0u64;
        let mut send = |batch: RecordBatch,
                        bytes: u64,
                        rows_read: u64,
                        rej: &mut Rejections,
                        first_line: u64|
         -> bool {
            // Valid-JSON rows are numbered from 1 per file (malformed lines carry their line).
            let _ = first_line;
            let base = row_base;
            row_base += batch.num_rows() as u64;
            let place = |i: usize| format!("{} row {}", f.display(), base + i as u64 + 1);
            let valid = match validate::validate_batch(&batch, &opts.limits, now, rej, &place) {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Msg::Failed(ReplayError::Internal(e.to_string())));
                    return false;
                }
            };
            if let Some(ids) = valid
                .column(col::DEVICE_ID)
                .as_any()
                .downcast_ref::<StringArray>()
            {
                for id in ids.iter().flatten() {
                    devices.insert(hasher.hash_one(id));
                }
            }
            let _ = rows_read;
            tx.send(Msg::Chunk(Chunk {
                batch: valid,
                bytes,
            }))
            .is_ok()
        };
        let is_parquet = f.extension().is_some_and(|e| e == "parquet");
        let res = if is_parquet {
            read_parquet(
                f,
                opts.batch_rows,
                &mut |b, bytes, rows, r| send(b, bytes, rows, r, 0),
                &mut rej,
            )
        } else {
            read_ndjson(
                f,
                opts.batch_rows,
                &mut |b, bytes, rows, r, line| send(b, bytes, rows, r, line),
                &mut rej,
            )
        };
        match res {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Msg::Failed(e));
                return;
            }
        }
    }
    let _ = tx.send(Msg::Done(rej, devices.len() as u64));
}

/// Bytes per read of an NDJSON file.
const REGION_BYTES: usize = 4 << 20;

/// Reads NDJSON pings; `emit(batch, bytes, rows_read, rejections, first line)` returns
/// false to stop. Returns false when stopped.
pub fn read_ndjson(
    path: &Path,
    batch_rows: usize,
    emit: &mut dyn FnMut(RecordBatch, u64, u64, &mut Rejections, u64) -> bool,
    rej: &mut Rejections,
) -> Result<bool, ReplayError> {
    let read_err = |e: std::io::Error| ReplayError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut buf: Vec<u8> = Vec::with_capacity(REGION_BYTES * 2);
    let mut line_no: u64 = 1;
    let mut eof = false;
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut pending_bytes = 0u64;
    let mut pending_line = 1u64;
    while !eof || !buf.is_empty() {
        if !eof {
            let old = buf.len();
            buf.resize(old + REGION_BYTES, 0);
            let got = read_full(&mut file, &mut buf[old..]).map_err(read_err)?;
            buf.truncate(old + got);
            eof = got == 0;
        }
        // A region of complete lines (the rest waits for the next read, unless at EOF).
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if eof => buf.len(),
            None => continue,
        };
        let region: Vec<u8> = buf.drain(..cut).collect();
        let lines = region.iter().filter(|b| **b == b'\n').count() as u64
            + u64::from(!region.ends_with(b"\n") && !region.is_empty());
        let (batches, bad) = decode_region(&region, batch_rows, line_no, path);
        rej.merge(bad);
        for b in batches {
            pending_rows += b.num_rows();
            pending.push(b);
        }
        pending_bytes += region.len() as u64;
        // Emit in batch_rows-sized batches.
        if pending_rows >= batch_rows || (eof && buf.is_empty()) {
            let schema = ping_schema();
            let all = arrow::compute::concat_batches(&schema, &pending)
                .map_err(|e| ReplayError::Internal(e.to_string()))?;
            pending.clear();
            let rows = all.num_rows();
            let mut off = 0;
            let mut first = true;
            while off < rows {
                let len = batch_rows.min(rows - off);
                let bytes = if first { pending_bytes } else { 0 };
                let rows_read = if first { pending_rows as u64 } else { 0 };
                first = false;
                if !emit(all.slice(off, len), bytes, rows_read, rej, pending_line) {
                    return Ok(false);
                }
                off += len;
            }
            pending_rows = 0;
            pending_bytes = 0;
            pending_line = line_no + lines;
        }
        line_no += lines;
        if eof && buf.is_empty() {
            break;
        }
    }
    Ok(true)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn decoder(batch_rows: usize) -> Result<arrow_json::reader::Decoder, arrow::error::ArrowError> {
    arrow_json::ReaderBuilder::new(ping_schema())
        .with_batch_size(batch_rows)
        .with_strict_mode(true)
        .build_decoder()
}

/// Decodes complete NDJSON lines; a region with a bad line is redone line by line so
/// that only the bad lines are rejected.
fn decode_region(
    region: &[u8],
    batch_rows: usize,
    first_line: u64,
    path: &Path,
) -> (Vec<RecordBatch>, Rejections) {
    let mut rej = Rejections::default();
    let fast = (|| -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        let mut d = decoder(batch_rows)?;
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < region.len() {
            let used = d.decode(&region[pos..])?;
            pos += used;
            if used == 0 || d.len() >= batch_rows {
                if let Some(b) = d.flush()? {
                    out.push(b);
                }
                if used == 0 && d.is_empty() && pos < region.len() {
                    // the decoder wants no more input yet has nothing: avoid spinning
                    return Err(arrow::error::ArrowError::JsonError(
                        "decoder made no progress".into(),
                    ));
                }
            }
        }
        if let Some(b) = d.flush()? {
            out.push(b);
        }
        Ok(out)
    })();
    match fast {
        Ok(b) => (b, rej),
        Err(_) => {
            let mut out = Vec::new();
            for (i, line) in region.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let one = (|| -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
                    let mut d = decoder(1)?;
                    d.decode(line)?;
                    d.decode(b"\n")?;
                    d.flush()
                })();
                match one {
                    Ok(Some(b)) if b.num_rows() == 1 => out.push(b),
                    Ok(_) => rej.add_malformed(
                        format!("{}:{}", path.display(), first_line + i as u64),
                        "not exactly one JSON object",
                    ),
                    Err(e) => rej.add_malformed(
                        format!("{}:{}", path.display(), first_line + i as u64),
                        &e.to_string(),
                    ),
                }
            }
            (out, rej)
        }
    }
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
