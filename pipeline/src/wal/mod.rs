//! Write-ahead log of ingested ping batches (Arrow IPC segments) and the checkpoint store.
//!
//! Ingest acknowledges a request only after [`Wal::append`] returned, which is after the
//! batch is written and fsynced. Concurrent appends share one write and one fsync
//! (group commit): a committer thread takes every append that is waiting, writes them
//! in order, fsyncs once, then completes them all. Each append gets the next [`Lsn`]
//! (1, 2, 3, ...). The engine reads from its checkpoint's lsn with [`Wal::reader`],
//! follows the head with [`Wal::subscribe`] and, once a newer checkpoint is durable,
//! frees space with [`Wal::truncate_before`]. The file format is in `segment.rs`.

mod checkpoint;
mod config;
mod error;
mod segment;

pub use checkpoint::CheckpointStore;
pub use config::WalConfig;
pub use error::{WalError, WalErrorDomain};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use segment::{Bad, BatchDecoder, Header, SegmentFile};

/// Log sequence number: the position of one appended batch. The first append is 1;
/// 0 means "before everything".
pub type Lsn = u64;

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files found.
    pub segments: usize,
    /// The head after recovery (the last complete entry).
    pub head: Lsn,
    /// Bytes cut from the end of the last segment (a torn write from a crash).
    pub truncated_bytes: u64,
    /// The last segment's header was torn and the (empty) segment was recreated.
    pub recreated_segment: bool,
}

/// Counters since the log was opened (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Appends made durable.
    pub appends: u64,
    /// Writes + fsyncs done for them (fewer than `appends` when group commit works).
    pub commits: u64,
    /// Record bytes written.
    pub bytes_written: u64,
}

/// The write-ahead log. Cheap to clone: clones share one log and one committer.
#[derive(Debug, Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    committer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the committer once it has finished what it holds;
        // joining it releases the directory lock before a re-open.
        self.tx.take();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: WalConfig,
    schema: SchemaRef,
    state: Mutex<State>,
    head_tx: watch::Sender<Lsn>,
    retained: AtomicU64,
    /// An append was refused for want of space, and nothing has been freed since.
    full: AtomicBool,
    appends: AtomicU64,
    commits: AtomicU64,
    bytes_written: AtomicU64,
    /// Duration of each fsync of an append (exported by `crate::metrics`).
    fsync_seconds: crate::metrics::AtomicHistogram,
    poisoned: Mutex<Option<String>>,
    recovery: Recovery,
    /// Held (flock) for the life of the log: one writer per directory.
    _lock: File,
}

#[derive(Debug)]
struct State {
    head: Lsn,
    /// Rows appended since open, up to and including `head`.
    rows_head: u64,
    /// Sorted by first lsn; the last is the one being written.
    segments: Vec<SegMeta>,
    ring: VecDeque<RingEntry>,
}

#[derive(Debug, Clone)]
struct SegMeta {
    first_lsn: Lsn,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct RingEntry {
    lsn: Lsn,
    batch: RecordBatch,
    /// Rows appended since open, up to and including this entry.
    rows_cum: u64,
}

#[derive(Debug)]
struct Request {
    payload: Vec<u8>,
    batch: RecordBatch,
    done: oneshot::Sender<Result<Lsn, WalError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave `State` half-updated in a way that
    // matters more than refusing all further work would, so keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wal {
    /// Opens (or creates) the log in `config.dir` for batches of
    /// [`leasewatch_schemas::ping_schema`], recovering it: a torn tail of the last
    /// segment is cut off, and the head is set to the last complete entry.
    ///
    /// An empty directory starts at lsn 1: a caller holding a checkpoint with a
    /// higher lsn must treat that as a lost log.
    pub fn open(config: &WalConfig) -> Result<Wal, WalError> {
        Self::open_with_schema(config, leasewatch_schemas::ping_schema())
    }

    /// [`Wal::open`] for batches of another schema.
    pub fn open_with_schema(config: &WalConfig, schema: SchemaRef) -> Result<Wal, WalError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(WalError::InvalidConfig(problems.join("; ")));
        }
        segment::check_schema(&schema)?;
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| WalError::io("create dir", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WalError::io("open", &lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(WalError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(WalError::io("lock", &lock_path, e)),
        }
        let schema_bytes = segment::encode_schema(&schema)?;

        let found = segment::list_segments(&dir)?;
        let mut recovery = Recovery {
            segments: found.len(),
            ..Recovery::default()
        };
        let mut segments = Vec::with_capacity(found.len() + 1);
        for (first_lsn, path) in &found {
            let bytes = fs::metadata(path)
                .map_err(|e| WalError::io("stat", path, e))?
                .len();
            segments.push(SegMeta {
                first_lsn: *first_lsn,
                path: path.clone(),
                bytes,
            });
        }

        // Recover the last segment: the only one a crash can have left torn.
        let mut head: Lsn = 0;
        let mut active: Option<Active> = None;
        if let Some(last) = segments.pop() {
            head = last.first_lsn.saturating_sub(1);
            match recover_last(&last, config.fsync)? {
                LastSegment::Torn => {
                    // Its header was never fsynced, so it never held an entry.
                    recovery.recreated_segment = true;
                }
                LastSegment::Ok {
                    last_lsn,
                    len,
                    truncated,
                    schema_bytes: stored,
                } => {
                    recovery.truncated_bytes = truncated;
                    if let Some(l) = last_lsn {
                        head = l;
                    }
                    let reuse = stored == schema_bytes;
                    if reuse || last_lsn.is_some() {
                        segments.push(SegMeta {
                            first_lsn: last.first_lsn,
                            path: last.path.clone(),
                            bytes: len,
                        });
                    }
                    if reuse {
                        let mut file = OpenOptions::new()
                            .write(true)
                            .open(&last.path)
                            .map_err(|e| WalError::io("open", &last.path, e))?;
                        file.seek(SeekFrom::Start(len))
                            .map_err(|e| WalError::io("seek", &last.path, e))?;
                        active = Some(Active {
                            file,
                            path: last.path.clone(),
                            bytes: len,
                            records: last_lsn.map_or(0, |l| l + 1 - last.first_lsn),
                        });
                    }
                }
            }
        }
        recovery.head = head;
        let retained = segments.iter().map(|s| s.bytes).sum();
        let (head_tx, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            config: config.clone(),
            schema,
            state: Mutex::new(State {
                head,
                rows_head: 0,
                segments,
                ring: VecDeque::new(),
            }),
            head_tx,
            retained: AtomicU64::new(retained),
            full: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            fsync_seconds: crate::metrics::AtomicHistogram::default(),
            poisoned: Mutex::new(None),
            recovery,
            _lock: lock_file,
        });
        let mut committer = Committer {
            shared: Arc::clone(&shared),
            schema_bytes,
            next_lsn: head + 1,
            active,
        };
        if committer.active.is_none() {
            committer.roll()?;
        }
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("wal-committer".to_string())
            .spawn(move || committer.run(rx))
            .map_err(|e| WalError::io("spawn committer", &dir, e))?;
        if shared.recovery.truncated_bytes > 0 || shared.recovery.recreated_segment {
            tracing::warn!(
                dir = %dir.display(),
                head,
                truncated_bytes = shared.recovery.truncated_bytes,
                recreated_segment = shared.recovery.recreated_segment,
                "WAL recovered a torn tail"
            );
        }
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                committer: Some(handle),
            }),
        })
    }

    /// Appends `batch`; returns its lsn once it is durable (written and, unless the
    /// config turned it off, fsynced). The batch must have the log's schema (field
    /// names, types, nullability; metadata is ignored).
    pub async fn append(&self, batch: RecordBatch) -> Result<Lsn, WalError> {
        let shared = &self.inner.shared;
        if batch.schema().fields() != shared.schema.fields() {
            return Err(WalError::SchemaMismatch(format!(
                "expected {:?}, got {:?}",
                shared.schema.fields(),
                batch.schema().fields()
            )));
        }
        if let Some(msg) = lock(&shared.poisoned).clone() {
            return Err(WalError::Poisoned(msg));
        }
        let batch = RecordBatch::try_new(Arc::clone(&shared.schema), batch.columns().to_vec())?;
        let payload = segment::encode_batch(&shared.schema, &batch)?;
        let (done, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(WalError::Closed)?;
        tx.send(Request {
            payload,
            batch,
            done,
        })
        .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// The lsn of the last durable entry (0 when the log is empty).
    pub fn head(&self) -> Lsn {
        lock(&self.inner.shared.state).head
    }

    /// Notifications of the head: the value is the head lsn, changed after every
    /// group commit.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.inner.shared.head_tx.subscribe()
    }

    /// The entries with lsn > `from`, up to the head at the time of the call. Recent
    /// entries come from memory; older ones are read from the segments.
    pub fn reader(&self, from: Lsn) -> Result<WalReader, WalError> {
        let st = lock(&self.inner.shared.state);
        let head = st.head;
        let start = st.ring.partition_point(|e| e.lsn <= from);
        let ring: Vec<(Lsn, RecordBatch)> = st
            .ring
            .iter()
            .skip(start)
            .map(|e| (e.lsn, e.batch.clone()))
            .collect();
        let disk_upto = match ring.first() {
            Some((first, _)) if *first == from + 1 => None,
            Some((first, _)) => Some(first - 1),
            None if head > from => Some(head),
            None => None,
        };
        let mut disk = VecDeque::new();
        let oldest = st.segments.first().map_or(head + 1, |s| s.first_lsn);
        // Deleted entries are an error even while the ring still holds them, so that
        // a reader behaves the same whether or not the process restarted.
        if from + 1 < oldest && from < head {
            return Err(WalError::Truncated {
                requested: from + 1,
                oldest,
            });
        }
        if let Some(upto) = disk_upto {
            for (i, seg) in st.segments.iter().enumerate() {
                let next_first = st.segments.get(i + 1).map_or(Lsn::MAX, |s| s.first_lsn);
                if next_first > from + 1 && seg.first_lsn <= upto {
                    disk.push_back(seg.path.clone());
                }
            }
        }
        Ok(WalReader {
            from,
            next: from + 1,
            disk_upto: disk_upto.unwrap_or(from),
            disk,
            current: None,
            ring: ring.into_iter(),
            oldest,
            done: false,
        })
    }

    /// Deletes every whole segment all of whose entries have lsn < `lsn` (call it with
    /// a durable checkpoint's lsn + 1, or its lsn). The segment being written is kept.
    ///
    /// The files are deleted after the segments leave the log's state, outside its lock:
    /// deleting a segment of a gigabyte takes a few hundred milliseconds here (ext4
    /// mounted with `discard`), which appends and reads held on the lock used to wait
    /// for. A file that cannot be deleted puts its segment back, with those after it.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let shared = &self.inner.shared;
        let doomed: Vec<SegMeta> = {
            let mut st = lock(&shared.state);
            let n = st
                .segments
                .iter()
                .skip(1)
                .take_while(|s| s.first_lsn <= lsn)
                .count();
            st.segments.drain(..n).collect()
        };
        let removed = !doomed.is_empty();
        for (i, seg) in doomed.iter().enumerate() {
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let mut st = lock(&shared.state);
                    let kept = st.segments.split_off(0);
                    st.segments = doomed[i..].iter().cloned().chain(kept).collect();
                    return Err(WalError::io("delete", &seg.path, e));
                }
            }
            shared.retained.fetch_sub(seg.bytes, Ordering::SeqCst);
        }
        if removed {
            shared.full.store(false, Ordering::SeqCst);
        }
        if removed && shared.config.fsync {
            segment::sync_dir(&shared.config.dir)?;
        }
        Ok(())
    }

    /// How far a consumer that has processed everything up to `consumed` is behind the
    /// head: `(batches, rows)`. Rows are counted from the in-memory ring, so for a
    /// consumer further behind than the ring they are a lower bound.
    pub fn backlog(&self, consumed: Lsn) -> (u64, u64) {
        let st = lock(&self.inner.shared.state);
        let batches = st.head.saturating_sub(consumed);
        if batches == 0 {
            return (0, 0);
        }
        let rows = match st.ring.front() {
            Some(front) if consumed >= front.lsn => {
                let idx = (consumed - front.lsn) as usize;
                let at = st.ring.get(idx).map_or(st.rows_head, |e| e.rows_cum);
                st.rows_head.saturating_sub(at)
            }
            Some(front) => st
                .rows_head
                .saturating_sub(front.rows_cum.saturating_sub(front.batch.num_rows() as u64)),
            None => 0,
        };
        (batches, rows)
    }

    /// False once a failed fsync made the log refuse writes (until a restart).
    pub fn is_writable(&self) -> bool {
        lock(&self.inner.shared.poisoned).is_none()
    }

    /// False once an append was refused for want of space (`max_retained_bytes`),
    /// until `truncate_before` frees some.
    pub fn has_room(&self) -> bool {
        !self.inner.shared.full.load(Ordering::SeqCst)
            && self.retained_bytes() < self.inner.shared.config.max_retained_bytes
    }

    /// Bytes of all retained segment files.
    pub fn retained_bytes(&self) -> u64 {
        self.inner.shared.retained.load(Ordering::SeqCst)
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let s = &self.inner.shared;
        WalStats {
            appends: s.appends.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Durations of the fsyncs of appends since open.
    pub fn fsync_histogram(&self) -> crate::metrics::HistogramSnapshot {
        self.inner.shared.fsync_seconds.snapshot()
    }

    /// What opening the log found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.shared.recovery
    }

    /// The schema of the batches in the log.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.inner.shared.schema)
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.inner.shared.config
    }
}

enum LastSegment {
    /// The header is torn; the file was deleted.
    Torn,
    Ok {
        last_lsn: Option<Lsn>,
        len: u64,
        truncated: u64,
        schema_bytes: Vec<u8>,
    },
}

/// Checks every record of the last segment and cuts it at the first one that is
/// incomplete, fails its checksum or does not carry the next lsn.
fn recover_last(seg: &SegMeta, fsync: bool) -> Result<LastSegment, WalError> {
    let mut file = match SegmentFile::open(&seg.path)? {
        Header::Ok(f) => f,
        Header::Bad(reason) => {
            tracing::warn!(path = %seg.path.display(), reason, "WAL segment header torn; recreating it");
            fs::remove_file(&seg.path).map_err(|e| WalError::io("delete", &seg.path, e))?;
            return Ok(LastSegment::Torn);
        }
    };
    let mut expected = seg.first_lsn;
    let cut = loop {
        let at = file.offset();
        match file.next_record(&|_| true)? {
            Ok((lsn, _)) if lsn == expected => expected += 1,
            Ok((lsn, _)) => {
                tracing::warn!(path = %seg.path.display(), at, lsn, expected, "WAL record out of sequence");
                break Some(at);
            }
            Err(Bad::Eof) => break None,
            Err(Bad::Short) => break Some(at),
            Err(Bad::Invalid(reason)) => {
                tracing::warn!(path = %seg.path.display(), at, reason, "WAL record invalid");
                break Some(at);
            }
        }
    };
    let schema_bytes = file.schema_bytes().to_vec();
    let mut truncated = 0;
    let len = match cut {
        Some(at) => {
            truncated = seg.bytes.saturating_sub(at);
            let f = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(|e| WalError::io("open", &seg.path, e))?;
            f.set_len(at)
                .map_err(|e| WalError::io("truncate", &seg.path, e))?;
            if fsync {
                f.sync_all()
                    .map_err(|e| WalError::io("fsync", &seg.path, e))?;
            }
            at
        }
        None => file.offset(),
    };
    let last_lsn = (expected > seg.first_lsn).then(|| expected - 1);
    Ok(LastSegment::Ok {
        last_lsn,
        len,
        truncated,
        schema_bytes,
    })
}

/// The segment being written.
#[derive(Debug)]
struct Active {
    file: File,
    path: PathBuf,
    /// Bytes durable in the file (header included).
    bytes: u64,
    /// Entries in the file.
    records: u64,
}

struct Committer {
    shared: Arc<Shared>,
    schema_bytes: Vec<u8>,
    next_lsn: Lsn,
    active: Option<Active>,
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let max_batch = self.shared.config.group_commit_max_batch.max(1);
        let max_delay = Duration::from_micros(self.shared.config.group_commit_max_delay_us);
        // Waiting for company pays only when appends overlap: after a group of one (a
        // lone writer, a quiet stream) the next commits at once.
        let mut shared_last = false;
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let wait = if shared_last {
                max_delay
            } else {
                Duration::ZERO
            };
            let deadline = Instant::now() + wait;
            while group.len() < max_batch {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                }
            }
            shared_last = group.len() > 1;
            self.commit(group);
        }
    }

    fn poisoned(&self) -> Option<String> {
        lock(&self.shared.poisoned).clone()
    }

    fn poison(&self, why: String) {
        tracing::error!(reason = %why, "WAL poisoned: refusing writes until restart");
        *lock(&self.shared.poisoned) = Some(why);
    }

    /// Writes a group of appends; completes every request.
    fn commit(&mut self, group: Vec<Request>) {
        let cfg = &self.shared.config;
        let segment_bytes = cfg.segment_bytes;
        let max_retained = cfg.max_retained_bytes;
        let header_len = segment::SEGMENT_HEADER_FIXED + self.schema_bytes.len() as u64;
        let mut run: Vec<(Request, Lsn)> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut failed: Option<WalError> = None;
        for req in group {
            if let Some(e) = &failed {
                let _ = req.done.send(Err(e.clone()));
                continue;
            }
            if let Some(msg) = self.poisoned() {
                let e = WalError::Poisoned(msg);
                let _ = req.done.send(Err(e.clone()));
                failed = Some(e);
                continue;
            }
            let need = segment::framed_len(req.payload.len());
            let (active_bytes, active_records) = self
                .active
                .as_ref()
                .map_or((0, 0), |a| (a.bytes, a.records));
            let roll = active_records + run.len() as u64 > 0
                && active_bytes + buf.len() as u64 + need > segment_bytes;
            let header = if roll { header_len } else { 0 };
            let retained = self.shared.retained.load(Ordering::SeqCst) + buf.len() as u64;
            if retained + header + need > max_retained {
                self.shared.full.store(true, Ordering::SeqCst);
                let _ = req.done.send(Err(WalError::Full {
                    retained,
                    limit: max_retained,
                }));
                continue;
            }
            if roll {
                let rolled = self.flush(&mut run, &mut buf).and_then(|()| self.roll());
                if let Err(e) = rolled {
                    let _ = req.done.send(Err(e.clone()));
                    failed = Some(e);
                    continue;
                }
            }
            let lsn = self.next_lsn + run.len() as u64;
            if let Err(e) = segment::frame_record(lsn, &req.payload, &mut buf) {
                let _ = req.done.send(Err(e));
                continue;
            }
            run.push((req, lsn));
        }
        if failed.is_none() {
            let _ = self.flush(&mut run, &mut buf);
        }
    }

    /// Writes and fsyncs `buf` (the framed records of `run`), then publishes the
    /// entries and completes their requests. On error every request of the run fails.
    fn flush(&mut self, run: &mut Vec<(Request, Lsn)>, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if run.is_empty() {
            return Ok(());
        }
        let result = self.write_durably(buf);
        let entries = std::mem::take(run);
        buf.clear();
        if let Err(e) = result {
            for (req, _) in entries {
                let _ = req.done.send(Err(e.clone()));
            }
            return Err(e);
        }
        let written: u64 = entries.len() as u64;
        let Some(active) = self.active.as_mut() else {
            return Err(WalError::Closed);
        };
        let bytes = active.bytes;
        active.records += written;
        self.next_lsn += written;
        let last_lsn = self.next_lsn - 1;
        let ring_cap = self.shared.config.memory_ring_batches;
        {
            let mut st = lock(&self.shared.state);
            if let Some(seg) = st.segments.last_mut() {
                seg.bytes = bytes;
            }
            for (req, lsn) in &entries {
                st.rows_head += req.batch.num_rows() as u64;
                if ring_cap > 0 {
                    let rows_cum = st.rows_head;
                    st.ring.push_back(RingEntry {
                        lsn: *lsn,
                        batch: req.batch.clone(),
                        rows_cum,
                    });
                }
            }
            while st.ring.len() > ring_cap {
                st.ring.pop_front();
            }
            st.head = last_lsn;
        }
        self.shared.appends.fetch_add(written, Ordering::Relaxed);
        self.shared.head_tx.send_replace(last_lsn);
        for (req, lsn) in entries {
            let _ = req.done.send(Ok(lsn));
        }
        Ok(())
    }

    fn write_durably(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let fsync = self.shared.config.fsync;
        let Some(active) = self.active.as_mut() else {
            return Err(WalError::Closed);
        };
        if let Err(e) = active.file.write_all(buf) {
            // Cut the partial write so the next append starts at a record boundary.
            let undo = active
                .file
                .set_len(active.bytes)
                .and_then(|()| active.file.seek(SeekFrom::Start(active.bytes)).map(|_| ()));
            let err = WalError::io("write", &active.path, e);
            if let Err(undo) = undo {
                self.poison(format!("{err}; undoing the partial write failed: {undo}"));
            }
            return Err(err);
        }
        let fsync_start = std::time::Instant::now();
        if fsync && let Err(e) = active.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: what is
            // on disk is unknown, so no later write may be acknowledged (fsyncgate).
            let err = WalError::io("fsync", &active.path, e);
            self.poison(err.to_string());
            return Err(err);
        }
        if fsync {
            self.shared
                .fsync_seconds
                .observe_duration(fsync_start.elapsed());
        }
        active.bytes += buf.len() as u64;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.shared
            .retained
            .fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a new segment whose first entry is `next_lsn`.
    fn roll(&mut self) -> Result<(), WalError> {
        let cfg = &self.shared.config;
        let first_lsn = self.next_lsn;
        let path = cfg.dir.join(segment::segment_name(first_lsn));
        let header = segment::segment_header(&self.schema_bytes)?;
        let retained = self.shared.retained.load(Ordering::SeqCst);
        if retained + header.len() as u64 > cfg.max_retained_bytes {
            return Err(WalError::Full {
                retained,
                limit: cfg.max_retained_bytes,
            });
        }
        let file = match create_segment(&path, &header, cfg.fsync) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let bytes = header.len() as u64;
        self.shared.retained.fetch_add(bytes, Ordering::SeqCst);
        {
            let mut st = lock(&self.shared.state);
            if st.segments.last().is_some_and(|s| s.first_lsn == first_lsn) {
                st.segments.pop();
            }
            st.segments.push(SegMeta {
                first_lsn,
                path: path.clone(),
                bytes,
            });
        }
        self.active = Some(Active {
            file,
            path,
            bytes,
            records: 0,
        });
        Ok(())
    }
}

fn create_segment(path: &Path, header: &[u8], fsync: bool) -> Result<File, WalError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("create", path, e))?;
    file.write_all(header)
        .map_err(|e| WalError::io("write", path, e))?;
    if fsync {
        file.sync_all()
            .map_err(|e| WalError::io("fsync", path, e))?;
        if let Some(dir) = path.parent() {
            segment::sync_dir(dir)?;
        }
    }
    Ok(file)
}

/// Entries of the log with lsn > `from`, in lsn order, up to the head when the reader
/// was made. Yields an error (and then ends) on corrupt data or deleted segments.
#[derive(Debug)]
pub struct WalReader {
    from: Lsn,
    next: Lsn,
    disk_upto: Lsn,
    disk: VecDeque<PathBuf>,
    current: Option<(SegmentFile, BatchDecoder)>,
    ring: std::vec::IntoIter<(Lsn, RecordBatch)>,
    oldest: Lsn,
    done: bool,
}

impl WalReader {
    /// The lsn this reader started after.
    pub fn from_lsn(&self) -> Lsn {
        self.from
    }

    fn next_from_disk(&mut self) -> Result<Option<(Lsn, RecordBatch)>, WalError> {
        while self.next <= self.disk_upto {
            if self.current.is_none() {
                let Some(path) = self.disk.pop_front() else {
                    return Err(WalError::Corrupt {
                        path: PathBuf::new(),
                        offset: 0,
                        reason: format!("entry {} is missing from every segment", self.next),
                    });
                };
                let file = SegmentFile::open_checked(&path)
                    .map_err(|e| segment::not_found_is_truncated(e, self.next, self.oldest))?;
                let decoder = BatchDecoder::new(file.schema_bytes())?;
                self.current = Some((file, decoder));
            }
            let Some((file, decoder)) = self.current.as_mut() else {
                continue;
            };
            let (from, upto) = (self.from, self.disk_upto);
            let at = file.offset();
            match file.next_record(&|lsn| lsn > from && lsn <= upto)? {
                Ok((_, None)) => {}
                Ok((lsn, Some(payload))) => {
                    if lsn != self.next {
                        return Err(WalError::Corrupt {
                            path: file.path().to_path_buf(),
                            offset: at,
                            reason: format!("expected entry {}, found {lsn}", self.next),
                        });
                    }
                    let batch = decoder.decode(payload)?;
                    self.next += 1;
                    return Ok(Some((lsn, batch)));
                }
                Err(Bad::Eof) => self.current = None,
                Err(Bad::Short) => {
                    return Err(WalError::Corrupt {
                        path: file.path().to_path_buf(),
                        offset: at,
                        reason: "record cut short".to_string(),
                    });
                }
                Err(Bad::Invalid(reason)) => {
                    return Err(WalError::Corrupt {
                        path: file.path().to_path_buf(),
                        offset: at,
                        reason,
                    });
                }
            }
        }
        self.current = None;
        Ok(None)
    }
}

impl Iterator for WalReader {
    type Item = Result<(Lsn, RecordBatch), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_from_disk() {
            Ok(Some(entry)) => return Some(Ok(entry)),
            Ok(None) => {}
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        }
        let entry = self.ring.next()?;
        self.next = entry.0 + 1;
        Some(Ok(entry))
    }
}
