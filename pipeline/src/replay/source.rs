//! The replay source: ping files decoded and validated on worker threads, handed to the
//! engine in file order.
//!
//! A reader thread cuts each NDJSON file into regions of whole lines (a read of
//! `region_bytes`, up to its last newline) and hands them to the decode threads; each
//! decodes its region with the shared [`NdjsonDecoder`] and validates the rows
//! ([`super::validate`]). Parquet files are read and validated by the reader thread.
//! Every region (or Parquet batch) gets a sequence number and [`Source::next`] returns
//! them in that order, so the engine sees the same batches whatever the number of
//! threads: the regions depend only on the file and `region_bytes`. At most
//! `2 × threads + 2` regions are read and not yet handed out, however far the decode
//! threads run ahead of the engine.

use super::validate::{self, Place, RegionRejections, Rejections};
use super::{ReplayError, ReplayOptions, read_parquet};
use crate::ingest::NdjsonDecoder;
use arrow::array::{Array, RecordBatch, StringArray};
use leasewatch_schemas::{Limits, col};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Valid pings of one region (or Parquet batch), in order.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The valid rows, in batches of at most `batch_rows` rows.
    pub batches: Vec<RecordBatch>,
    /// Input bytes the chunk covers.
    pub bytes: u64,
}

/// A decoded region, before its rejections are placed in the file.
#[derive(Debug)]
struct Unit {
    file: usize,
    batches: Vec<RecordBatch>,
    bytes: u64,
    /// Lines in the region.
    lines: u64,
    /// Rows of the region that decoded (valid or not).
    decoded: u64,
    rej: RegionRejections,
}

enum Produced {
    Unit(u64, Unit),
    Failed(ReplayError),
    /// Every unit is sent: this many.
    End(u64),
}

struct Job {
    seq: u64,
    file: usize,
    text: Vec<u8>,
    /// The first region of its file (a byte-order mark is skipped).
    first: bool,
}

/// Distinct devices, by [`device_key`].
pub(crate) type Devices = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// Hashes a [`device_key`] with one multiplication (the keys are not random: IMEIs).
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
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

/// A device id as a number: its value when it is at most 18 digits (every valid IMEI),
/// otherwise an FNV-1a hash with the top bit set, apart from every number.
fn device_key(id: &str) -> u64 {
    let b = id.as_bytes();
    if !b.is_empty() && b.len() <= 18 && b.iter().all(u8::is_ascii_digit) {
        b.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'))
    } else {
        let h = b.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, x| {
            (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
        });
        h | 1 << 63
    }
}

fn count_devices(batch: &RecordBatch, devices: &mut Devices) {
    if let Some(ids) = batch
        .column(col::DEVICE_ID)
        .as_any()
        .downcast_ref::<StringArray>()
    {
        for id in ids.iter().flatten() {
            devices.insert(device_key(id));
        }
    }
}

/// Valid pings of the input files, in file order, decoded on worker threads.
#[derive(Debug)]
pub(crate) struct Source {
    rx: Receiver<Produced>,
    credits: SyncSender<()>,
    pending: BTreeMap<u64, Unit>,
    next: u64,
    end: Option<u64>,
    files: Vec<String>,
    /// Per file: lines and decoded rows handed out so far.
    bases: Vec<(u64, u64)>,
    rejections: Rejections,
    threads: Vec<JoinHandle<Devices>>,
}

impl std::fmt::Debug for Produced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unit(seq, _) => write!(f, "Unit({seq})"),
            Self::Failed(e) => write!(f, "Failed({e})"),
            Self::End(n) => write!(f, "End({n})"),
        }
    }
}

impl Source {
    /// Starts reading `files` with `threads` decode threads.
    pub(crate) fn start(
        files: &[PathBuf],
        opts: &ReplayOptions,
        threads: usize,
    ) -> Result<Self, ReplayError> {
        let threads = threads.max(1);
        let in_flight = 2 * threads + 2;
        let internal = |e: &dyn std::fmt::Display| ReplayError::Internal(e.to_string());
        let (credits, credits_rx) = mpsc::sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            credits.send(()).map_err(|e| internal(&e))?;
        }
        let (out, rx) = mpsc::channel::<Produced>();
        let (jobs, jobs_rx) = mpsc::sync_channel::<Job>(in_flight);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (pool, pool_rx) = mpsc::channel::<Vec<u8>>();
        let now = opts.now_ms.unwrap_or_else(super::now_ms);
        let mut handles = Vec::with_capacity(threads + 1);
        for i in 0..threads {
            let (jobs_rx, out, pool) = (Arc::clone(&jobs_rx), out.clone(), pool.clone());
            let (limits, decoder) = (opts.limits, decoder(opts));
            let h = std::thread::Builder::new()
                .name(format!("replay-decode-{i}"))
                .spawn(move || decode_worker(&jobs_rx, &out, &pool, decoder, &limits, now))
                .map_err(|e| internal(&e))?;
            handles.push(h);
        }
        drop(pool);
        let reader = Reader {
            files: files.to_vec(),
            jobs,
            out,
            credits: credits_rx,
            pool: pool_rx,
            batch_rows: opts.batch_rows,
            region_bytes: opts.region_bytes.max(1),
            limits: opts.limits,
            now,
        };
        let h = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn(move || reader.run())
            .map_err(|e| internal(&e))?;
        handles.push(h);
        Ok(Self {
            rx,
            credits,
            pending: BTreeMap::new(),
            next: 0,
            end: None,
            files: files.iter().map(|p| p.display().to_string()).collect(),
            bases: vec![(0, 0); files.len()],
            rejections: Rejections::default(),
            threads: handles,
        })
    }

    /// The next chunk in file order; `None` after the last.
    pub(crate) fn next(&mut self) -> Result<Option<Chunk>, ReplayError> {
        loop {
            if let Some(unit) = self.pending.remove(&self.next) {
                self.next += 1;
                // The reader may be done: a credit nobody takes is fine.
                let _ = self.credits.send(());
                let name = self.files.get(unit.file).map_or("", String::as_str);
                let Some((lines, rows)) = self.bases.get_mut(unit.file) else {
                    return Err(ReplayError::Internal("region of an unknown file".into()));
                };
                unit.rej.settle(&mut self.rejections, name, *lines, *rows);
                *lines += unit.lines;
                *rows += unit.decoded;
                return Ok(Some(Chunk {
                    batches: unit.batches,
                    bytes: unit.bytes,
                }));
            }
            if self.end.is_some_and(|end| self.next >= end) {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Produced::Unit(seq, unit)) => {
                    self.pending.insert(seq, unit);
                }
                Ok(Produced::Failed(e)) => return Err(e),
                Ok(Produced::End(n)) => self.end = Some(n),
                Err(_) => {
                    return Err(ReplayError::Internal(
                        "the decode threads stopped early".into(),
                    ));
                }
            }
        }
    }

    /// After the last chunk: the rejections and the number of distinct devices.
    pub(crate) fn finish(self) -> (Rejections, u64) {
        let Self {
            rx,
            credits,
            threads,
            rejections,
            ..
        } = self;
        drop((rx, credits));
        let mut devices = Devices::default();
        for t in threads {
            if let Ok(d) = t.join() {
                devices.extend(d);
            }
        }
        (rejections, devices.len() as u64)
    }
}

/// The NDJSON decoder of one decode thread.
fn decoder(opts: &super::ReplayOptions) -> NdjsonDecoder {
    if opts.arrow_json_only {
        NdjsonDecoder::new(opts.batch_rows)
    } else {
        NdjsonDecoder::with_ping_lines(opts.batch_rows)
    }
}

fn decode_worker(
    jobs: &Mutex<Receiver<Job>>,
    out: &Sender<Produced>,
    pool: &Sender<Vec<u8>>,
    mut decoder: NdjsonDecoder,
    limits: &Limits,
    now_ms: i64,
) -> Devices {
    let mut devices = Devices::default();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Err(_) => break,
        };
        let unit = decode_region(&mut decoder, &job, limits, now_ms, &mut devices);
        let _ = pool.send(job.text);
        let sent = match unit {
            Ok(u) => out.send(Produced::Unit(job.seq, u)),
            Err(e) => out.send(Produced::Failed(e)),
        };
        if sent.is_err() {
            break;
        }
    }
    devices
}

fn strip_bom(s: &[u8]) -> &[u8] {
    s.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(s)
}

/// The message of an NDJSON row that did not decode.
fn malformed_message(r: &crate::ingest::NdjsonRejection) -> &str {
    r.rejection
        .problems
        .first()
        .map_or("malformed", |p| p.message.as_str())
}

fn decode_region(
    decoder: &mut NdjsonDecoder,
    job: &Job,
    limits: &Limits,
    now_ms: i64,
    devices: &mut Devices,
) -> Result<Unit, ReplayError> {
    let text = if job.first {
        strip_bom(&job.text)
    } else {
        &job.text
    };
    let decoded = decoder
        .decode(text, usize::MAX)
        .map_err(|e| ReplayError::Internal(e.to_string()))?;
    let mut rej = RegionRejections::default();
    for r in &decoded.rejected {
        rej.add_malformed(Place::Line(r.line as u64), malformed_message(r));
    }
    let mut batches = Vec::with_capacity(decoded.batches.len());
    let mut row = 0u64;
    for b in &decoded.batches {
        let valid = validate::validate_region_batch(b, limits, now_ms, &mut rej, row)
            .map_err(|e| ReplayError::Internal(e.to_string()))?;
        row += b.num_rows() as u64;
        count_devices(&valid, devices);
        if valid.num_rows() > 0 {
            batches.push(valid);
        }
    }
    Ok(Unit {
        file: job.file,
        batches,
        bytes: job.text.len() as u64,
        lines: decoded.lines as u64,
        decoded: row,
        rej,
    })
}

/// An NDJSON file cut into regions of whole lines.
#[derive(Debug)]
pub(crate) struct Regions {
    file: File,
    path: PathBuf,
    region_bytes: usize,
    /// The start of a line read with the previous region.
    carry: Vec<u8>,
    eof: bool,
}

impl Regions {
    pub(crate) fn open(path: &Path, region_bytes: usize) -> Result<Self, ReplayError> {
        let file = File::open(path).map_err(|e| read_error(path, &e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            region_bytes: region_bytes.max(1),
            carry: Vec::new(),
            eof: false,
        })
    }

    /// Reads the next region into `buf` (replacing its content): `region_bytes` more
    /// of the file, up to the last newline (more, when a line is longer); the rest of
    /// the file at the end. False when the file is done.
    pub(crate) fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, ReplayError> {
        buf.clear();
        buf.append(&mut self.carry);
        loop {
            if !self.eof {
                buf.reserve(self.region_bytes);
                let got = (&mut self.file)
                    .take(self.region_bytes as u64)
                    .read_to_end(buf)
                    .map_err(|e| read_error(&self.path, &e))?;
                self.eof = got < self.region_bytes;
            }
            if self.eof {
                return Ok(!buf.is_empty());
            }
            if let Some(nl) = buf.iter().rposition(|b| *b == b'\n') {
                self.carry.extend_from_slice(&buf[nl + 1..]);
                buf.truncate(nl + 1);
                return Ok(true);
            }
        }
    }
}

fn read_error(path: &Path, e: &std::io::Error) -> ReplayError {
    ReplayError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The reader thread: regions of NDJSON files to the decode threads, Parquet batches
/// decoded here.
struct Reader {
    files: Vec<PathBuf>,
    jobs: SyncSender<Job>,
    out: Sender<Produced>,
    credits: Receiver<()>,
    pool: Receiver<Vec<u8>>,
    batch_rows: usize,
    region_bytes: usize,
    limits: Limits,
    now: i64,
}

impl Reader {
    fn run(self) -> Devices {
        let mut devices = Devices::default();
        let mut seq = 0u64;
        for (i, f) in self.files.iter().enumerate() {
            let res = if f.extension().is_some_and(|e| e == "parquet") {
                self.parquet(i, f, &mut seq, &mut devices)
            } else {
                self.ndjson(i, f, &mut seq)
            };
            match res {
                Ok(true) => {}
                // The consumer is gone.
                Ok(false) => return devices,
                Err(e) => {
                    let _ = self.out.send(Produced::Failed(e));
                    return devices;
                }
            }
        }
        let _ = self.out.send(Produced::End(seq));
        devices
    }

    fn ndjson(&self, file: usize, path: &Path, seq: &mut u64) -> Result<bool, ReplayError> {
        let mut regions = Regions::open(path, self.region_bytes)?;
        let mut first = true;
        loop {
            let mut text = self.pool.try_recv().unwrap_or_default();
            if !regions.next_into(&mut text)? {
                return Ok(true);
            }
            if self.credits.recv().is_err() {
                return Ok(false);
            }
            let job = Job {
                seq: *seq,
                file,
                text,
                first,
            };
            if self.jobs.send(job).is_err() {
                return Ok(false);
            }
            *seq += 1;
            first = false;
        }
    }

    fn parquet(
        &self,
        file: usize,
        path: &Path,
        seq: &mut u64,
        devices: &mut Devices,
    ) -> Result<bool, ReplayError> {
        let mut failed = None;
        let mut emit = |batch: RecordBatch, bytes: u64, _rows: u64, malformed: &mut Rejections| {
            if self.credits.recv().is_err() {
                return false;
            }
            let mut rej = RegionRejections::default();
            rej.add_fixed(std::mem::take(malformed));
            let valid = match validate::validate_region_batch(
                &batch,
                &self.limits,
                self.now,
                &mut rej,
                0,
            ) {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(ReplayError::Internal(e.to_string()));
                    return false;
                }
            };
            count_devices(&valid, devices);
            let unit = Unit {
                file,
                batches: if valid.num_rows() > 0 {
                    vec![valid]
                } else {
                    Vec::new()
                },
                bytes,
                lines: 0,
                decoded: batch.num_rows() as u64,
                rej,
            };
            let sent = self.out.send(Produced::Unit(*seq, unit)).is_ok();
            *seq += 1;
            sent
        };
        let mut malformed = Rejections::default();
        let done = read_parquet(path, self.batch_rows, &mut emit, &mut malformed)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}
