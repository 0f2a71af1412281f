//! `leasewatch run`: HTTP ingest into the WAL, the engine following the WAL, checkpoints.
//!
//! Start-up: open the WAL (`wal.dir`) and the checkpoint store (`<wal.dir>/checkpoints`:
//! the WAL only looks at its own segment files, and its directory lock keeps a second
//! process away from both), build the engine from `engine.sql_dir`, restore the newest
//! checkpoint and continue after its lsn (with none yet, save one of the initial state
//! first, so that even a crash before the first periodic checkpoint cuts the file sinks
//! back). A checkpoint ahead of the WAL head means the WAL was lost (or `wal.dir` points
//! elsewhere): that is an error, not a fresh start.
//!
//! Ingest (HTTP) runs on a multi-threaded runtime of its own, so that it keeps answering
//! while the engine's thread is busy or blocked (queries, a Redis sink waiting out an
//! outage, a checkpoint's fsync).
//!
//! While running, the engine processes every WAL entry after the one it consumed last,
//! flushes its sinks, and reports its progress to ingest (backpressure) and metrics.
//! Every `engine.checkpoint_interval_secs` (also in the middle of a long backlog) it
//! flushes the sinks and takes a snapshot of its state at the consumed lsn, which a
//! thread of its own writes to the checkpoint store while the engine goes on (the state
//! batches are shared, not copied: the engine pauses only for the snapshot). Once that
//! checkpoint is durable, WAL segments the *previous* checkpoint no longer needs are
//! deleted (so the fallback checkpoint the store keeps stays usable). One checkpoint is
//! written at a time. A checkpoint the disk refuses (full) is retried at the next
//! interval instead of stopping the pipeline.
//!
//! SIGTERM / SIGINT: ingest stops accepting and finishes the requests in flight (each
//! acknowledged only once durable in the WAL), the engine processes what is left, and a
//! final checkpoint is saved; the process exits 0.
//!
//! Delivery to sinks: a clean stop ends with a checkpoint at the WAL head, so a restart
//! after it replays nothing and sinks see every acknowledged ping once. After a crash the
//! engine restarts from the last checkpoint: file sinks are cut back to where they ended
//! at that checkpoint and the WAL entries after it are replayed, so their output equals
//! an uninterrupted run's; the Redis queues skip alert ids already written. Sink output
//! is committed before each checkpoint is saved, so nothing a checkpoint covers is lost
//! with the process (file sinks do not fsync: a power loss may still lose file-sink rows
//! the OS had not written).

use crate::config::{Config, ConfigError};
use crate::engine::checkpoint::Snapshot;
use crate::engine::{Blame, Engine, EngineError, EngineOptions};
use crate::ingest::{IngestState, Lag, router, serve};
use crate::metrics::Metrics;
use crate::wal::{CheckpointStore, Lsn, Wal, WalConfig, WalError, WalErrorDomain};
use arrow::array::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A failure of `leasewatch run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The WAL or the checkpoint store failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Building the engine or processing a batch failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The newest checkpoint cannot be restored into this pipeline.
    #[error("restoring the checkpoint at lsn {lsn} from {}: {source}", dir.display())]
    Restore {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The checkpoint's lsn.
        lsn: Lsn,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The checkpoint covers more of the WAL than the WAL holds.
    #[error(
        "the checkpoint in {} covers WAL entries up to lsn {checkpoint}, but the WAL in {} ends at lsn {head}: the WAL was lost or wal.dir points to another directory",
        checkpoints.display(),
        wal_dir.display()
    )]
    LostWal {
        /// The checkpoint directory.
        checkpoints: PathBuf,
        /// The WAL directory.
        wal_dir: PathBuf,
        /// The checkpoint's lsn.
        checkpoint: Lsn,
        /// The WAL head.
        head: Lsn,
    },
    /// Listening, signals or the HTTP server failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        message: String,
    },
    /// A bug (metrics registration, a task that panicked).
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl RunError {
    /// Who must act.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Config(_) | Self::LostWal { .. } => Blame::User,
            Self::Wal(e) => match e.domain() {
                WalErrorDomain::External => Blame::Outside,
                WalErrorDomain::Caller | WalErrorDomain::Internal => Blame::Internal,
            },
            Self::Engine(e) | Self::Restore { source: e, .. } => e.blame(),
            Self::Io { .. } => Blame::Outside,
            Self::Internal(_) => Blame::Internal,
        }
    }

    fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Io {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

/// Where `leasewatch run` keeps checkpoints: `<wal.dir>/checkpoints`.
pub fn checkpoint_dir(wal: &WalConfig) -> PathBuf {
    wal.dir.join("checkpoints")
}

/// Runs the pipeline until SIGTERM / SIGINT (see the module documentation).
pub async fn run(config: &Config) -> Result<(), RunError> {
    let problems = config.ingest.problems();
    if !problems.is_empty() {
        return Err(ConfigError(problems).into());
    }
    // Before anything is acknowledged: a signal must never hit the default handler.
    let stop = Arc::new(watch::channel(false).0);
    install_signals(&stop)?;

    let wal = Wal::open(&config.wal)?;
    let recovery = wal.recovery();
    if recovery.truncated_bytes > 0 || recovery.recreated_segment {
        eprintln!(
            "WAL {}: recovered a torn tail ({} bytes cut), head lsn {}",
            config.wal.dir.display(),
            recovery.truncated_bytes,
            recovery.head
        );
    }
    let mut store = CheckpointStore::open(checkpoint_dir(&config.wal))?;
    if !config.wal.fsync {
        store = store.without_fsync();
    }
    let options = EngineOptions {
        capture_sinks: false,
        late_sink: config.engine.late_sink.clone(),
        geofences: config.engine.geofences.clone(),
        redis_url: config.engine.redis_url.clone(),
        background_compaction: true,
    };
    let mut engine = Engine::from_dir(&config.engine.sql_dir, &options).await?;
    let mut consumed: Lsn = 0;
    if let Some((lsn, bytes)) = store.load_latest()? {
        let head = wal.head();
        if lsn > head {
            return Err(RunError::LostWal {
                checkpoints: store.dir().to_path_buf(),
                wal_dir: config.wal.dir.clone(),
                checkpoint: lsn,
                head,
            });
        }
        engine.restore(&bytes).map_err(|source| RunError::Restore {
            dir: store.dir().to_path_buf(),
            lsn,
            source,
        })?;
        consumed = lsn;
        eprintln!(
            "restored checkpoint at lsn {lsn}; replaying WAL entries {}..={head}",
            lsn + 1
        );
    } else {
        // No checkpoint yet: save one of the initial state (file sinks at their current
        // length) before anything is processed, so that a crash before the first periodic
        // checkpoint restores it and cuts the file sinks back, instead of replaying the WAL
        // after what the crashed process had written (every row twice).
        engine.commit()?;
        save_snapshot(&store, consumed, &engine.snapshot()?)?;
    }

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| RunError::Internal(e.to_string()))?;
    for (table, lookup) in engine.lookups() {
        metrics.add_lookup(table, lookup.stats());
    }
    for stats in engine.redis_sink_stats() {
        metrics.add_sink(stats);
    }
    // Queue lengths and the DPD distribution, sampled from the Redis the SQL uses.
    let sampler = match engine.redis_url() {
        Some(url) => {
            let conn = crate::redis_client::RedisConn::new(
                &crate::redis_client::ConnectionConfig::new(url),
            )
            .map_err(|e| RunError::Internal(format!("Redis sampler: {e}")))?;
            Some(metrics.spawn_redis_sampler(
                Arc::new(conn),
                leasewatch_schemas::Keys::default(),
                Duration::from_secs(10),
                10_000,
            ))
        }
        None => None,
    };
    let (progress, consumed_rx) = watch::channel(consumed);
    let probe_wal = wal.clone();
    let probe_consumed = consumed_rx.clone();
    metrics.with_wal(&wal).with_lag_probe(Arc::new(move || {
        let (batches, rows) = probe_wal.backlog(*probe_consumed.borrow());
        Lag { batches, rows }
    }));
    let state = IngestState::new(config.ingest.clone(), wal.clone(), registry)
        .with_engine_progress(consumed_rx)
        .with_metrics(metrics.clone());

    let listen = config.ingest.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| RunError::io(format!("listening on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::io(format!("listening on {listen}"), e))?;
    // Ingest runs on a runtime of its own: the engine blocks the thread it runs on at
    // times (a Redis sink waiting out an outage, file sinks, a checkpoint's fsync, the
    // queries themselves), and ingest must keep answering meanwhile (202 once in the WAL,
    // or 429/503), not hang with it.
    let ingest_runtime = IngestRuntime::new()?;
    let mut stopped = stop.subscribe();
    let server = ingest_runtime.spawn(async move {
        let listener = TcpListener::from_std(listener)?;
        serve(listener, router(state), async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    eprintln!("listening on http://{addr}");

    let mut side = EngineSide {
        engine,
        wal,
        store,
        metrics,
        consumed,
        progress,
        interval: Duration::from_secs(config.engine.checkpoint_interval_secs.max(1)),
        last_checkpoint: Instant::now(),
        dead_letter_dir: config.wal.dir.join("dead-letter"),
        sweep_every: (config.engine.sweep_interval_secs > 0)
            .then(|| Duration::from_secs(config.engine.sweep_interval_secs)),
        next_sweep: Instant::now(),
        saved: consumed,
        older: consumed,
        max_batch_rows: config.engine.max_batch_rows.max(1),
        writing: None,
    };
    let outcome = side.follow(&stop, server).await;
    if let Some(s) = sampler {
        s.abort();
    }
    match outcome {
        Err(e) => {
            eprintln!(
                "leasewatch: stopping after an error at lsn {}",
                side.consumed
            );
            Err(e)
        }
        Ok(()) => {
            // Ingest has stopped: everything acknowledged is in the WAL.
            side.drain().await?;
            side.finish_checkpoint(true)?;
            side.checkpoint()?;
            eprintln!("stopped; checkpoint at lsn {}", side.consumed);
            Ok(())
        }
    }
}

/// How much lower than the rest of the process the ingest threads run (nice).
///
/// The engine is one thread: every ping goes through it, so when the cores are busy it
/// sets the throughput. Ingest scales out and is held back anyway once the engine lags
/// (429/503), so under contention the engine should win. With +5 an ingest thread weighs
/// about a third of the engine thread in the kernel's scheduler.
const INGEST_NICE: i32 = 5;

/// How much lower than the rest of the process the thread writing a periodic checkpoint
/// runs (nice). Encoding the window state (gigabytes at 300,000 pings/s) takes seconds
/// of a core; at full priority on a busy machine it took them from the engine thread,
/// whose ping-to-queue latency rose by seconds at every checkpoint. A checkpoint that
/// takes longer only keeps more WAL.
const CHECKPOINT_NICE: i32 = 5;

/// Sets the calling thread's nice value to `nice`; on Linux a nice value is per thread.
/// The value is absolute, not relative: a thread that the pool starts from an ingest
/// thread has already inherited the lowered value. Failing (e.g. a sandbox that forbids
/// it) only costs throughput.
fn set_thread_nice(nice: i32, thread: &str) {
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!(error = %e, thread, "could not lower the thread's priority");
    }
}

/// The calling thread's nice value raised by `by` (the lowest priority at most).
fn lowered_nice(by: i32) -> i32 {
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    (nice + by).min(19)
}

/// The multi-threaded runtime the HTTP ingest server runs on, apart from the engine's.
/// Dropping it stops what still runs on it without waiting (the server has finished by
/// then, unless `run` is failing).
struct IngestRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl IngestRuntime {
    fn new() -> Result<Self, RunError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let ingest_nice = lowered_nice(INGEST_NICE);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Large bodies are decoded on the blocking pool: one thread per core is as
            // fast, and 64 concurrent decodes would crowd out the engine thread.
            .max_blocking_threads(cores)
            .thread_name("ingest")
            .on_thread_start(move || set_thread_nice(ingest_nice, "ingest"))
            .enable_all()
            .build()
            .map_err(|e| RunError::io("starting the ingest runtime", e))?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn spawn(
        &self,
        server: impl Future<Output = std::io::Result<()>> + Send + 'static,
    ) -> JoinHandle<std::io::Result<()>> {
        self.handle.spawn(server)
    }
}

impl Drop for IngestRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime may block, which an async context must not do.
            rt.shutdown_background();
        }
    }
}

/// Sets `stop` on SIGTERM or SIGINT.
fn install_signals(stop: &Arc<watch::Sender<bool>>) -> Result<(), RunError> {
    let stop = Arc::clone(stop);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| RunError::io("SIGTERM handler", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| RunError::io("SIGINT handler", e))?;
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            eprintln!("{name}: stopping (finishing requests in flight, then a checkpoint)");
            stop.send_replace(true);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: stopping (finishing requests in flight, then a checkpoint)");
            stop.send_replace(true);
        }
    });
    Ok(())
}

/// Why following the WAL ended.
enum Ended {
    /// `stop` was set.
    Stop,
    /// The HTTP server task ended (after `stop`, or on its own: an error), with its
    /// result.
    Server(Result<(), RunError>),
}

fn server_result(
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), RunError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::io("HTTP server", e)),
        Err(e) => Err(RunError::Internal(format!("HTTP server task: {e}"))),
    }
}

/// The engine following the WAL.
struct EngineSide {
    engine: Engine,
    wal: Wal,
    store: CheckpointStore,
    metrics: Metrics,
    /// The last WAL entry fully processed.
    consumed: Lsn,
    /// `consumed`, for ingest backpressure.
    progress: watch::Sender<Lsn>,
    interval: Duration,
    last_checkpoint: Instant,
    /// Where batches a query failed on are set aside.
    dead_letter_dir: PathBuf,
    /// How often the lease sweep runs (None: never; also when the SQL has no sweep table).
    sweep_every: Option<Duration>,
    /// When it runs next (at start, then every `sweep_every`).
    next_sweep: Instant,
    /// Lsn of the newest checkpoint on disk.
    saved: Lsn,
    /// Lsn of the checkpoint before it (the store keeps both).
    older: Lsn,
    /// Pings of consecutive WAL entries the engine processes as one batch, at most.
    max_batch_rows: usize,
    /// The checkpoint being written in the background, if any.
    writing: Option<Writing>,
}

/// A checkpoint a thread is writing: saving it, then (once saved) deleting the WAL
/// segments it makes unneeded, the outcome of which is the inner result.
struct Writing {
    lsn: Lsn,
    started: Instant,
    thread: std::thread::JoinHandle<Result<Result<(), WalError>, WalError>>,
}

impl EngineSide {
    /// Follows the WAL until `stop` is set and the server has finished the requests in
    /// flight. On an error, stops the server first.
    async fn follow(
        &mut self,
        stop: &watch::Sender<bool>,
        mut server: JoinHandle<std::io::Result<()>>,
    ) -> Result<(), RunError> {
        let result = self.follow_until_stop(stop, &mut server).await;
        stop.send_replace(true);
        match result {
            // The server task is finished already.
            Ok(Ended::Server(r)) => r,
            Ok(Ended::Stop) => server_result(server.await),
            Err(e) => {
                let _ = server.await;
                Err(e)
            }
        }
    }

    async fn follow_until_stop(
        &mut self,
        stop: &watch::Sender<bool>,
        server: &mut JoinHandle<std::io::Result<()>>,
    ) -> Result<Ended, RunError> {
        let mut head = self.wal.subscribe();
        let mut stopping = stop.subscribe();
        loop {
            head.borrow_and_update();
            self.drain().await?;
            self.finish_checkpoint(false)?;
            if self.last_checkpoint.elapsed() >= self.interval {
                self.periodic_checkpoint()?;
            }
            self.sweep_if_due().await?;
            let mut due = self.last_checkpoint + self.interval;
            if self.writing.is_some() {
                // Look again soon: its WAL truncation waits for it.
                due = due.min(Instant::now() + CHECKPOINT_POLL);
            }
            if self.sweep_every.is_some() && self.engine.has_sweep() {
                due = due.min(self.next_sweep);
            }
            let due = tokio::time::Instant::from_std(due);
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return Err(RunError::Internal("WAL head channel closed".into()));
                    }
                }
                _ = stopping.wait_for(|s| *s) => return Ok(Ended::Stop),
                () = tokio::time::sleep_until(due) => {}
                ended = &mut *server => {
                    // It ends by itself only after `stop` (graceful shutdown) or on error.
                    let r = server_result(ended).and_then(|()| {
                        if *stop.borrow() {
                            Ok(())
                        } else {
                            Err(RunError::io("HTTP server", "stopped unexpectedly"))
                        }
                    });
                    return Ok(Ended::Server(r));
                }
            }
        }
    }

    /// Runs the lease sweep (the overdue ladder for every lease, pinging or not) when it
    /// is due, at the wall-clock time. Redis unreachable: logged, tried again next time.
    async fn sweep_if_due(&mut self) -> Result<(), RunError> {
        let Some(every) = self.sweep_every else {
            return Ok(());
        };
        if !self.engine.has_sweep() || Instant::now() < self.next_sweep {
            return Ok(());
        }
        self.next_sweep = Instant::now() + every;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match self.engine.sweep_leases(now_ms).await {
            Ok(n) => tracing::info!(devices = n, "lease sweep"),
            Err(EngineError::Sweep(e)) => {
                tracing::warn!(error = %e, "lease sweep failed; trying again at the next interval");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Processes every WAL entry after `consumed` up to the current head, then flushes
    /// the sinks. Consecutive entries go to the engine together, up to
    /// `max_batch_rows` pings: the engine's cost is mostly per query run, and requests
    /// are small (a phone's upload is a few pings). Their order is kept, and the
    /// engine's clock marks late pings row by row, so the outputs are those of one
    /// entry at a time (windows may close a batch later).
    async fn drain(&mut self) -> Result<(), RunError> {
        let mut any = false;
        let mut group: Vec<(Lsn, RecordBatch)> = Vec::new();
        let mut rows = 0usize;
        let mut reader = self.wal.reader(self.consumed)?.peekable();
        while let Some(entry) = reader.next() {
            let (lsn, batch) = entry?;
            rows += batch.num_rows();
            group.push((lsn, batch));
            let next_fits = match reader.peek() {
                Some(Ok((_, next))) => rows + next.num_rows() <= self.max_batch_rows,
                // An error is returned by the next `next()`, after this group.
                Some(Err(_)) | None => false,
            };
            if next_fits {
                continue;
            }
            self.process_group(&group).await?;
            group.clear();
            rows = 0;
            any = true;
            // A long backlog (a restart, an outage caught up) is checkpointed as it goes,
            // so a crash does not replay all of it again and the WAL can be truncated.
            self.finish_checkpoint(false)?;
            if self.last_checkpoint.elapsed() >= self.interval {
                self.periodic_checkpoint()?;
            }
        }
        if any {
            self.engine.flush()?;
        }
        Ok(())
    }

    /// Runs consecutive WAL entries through the engine as one batch.
    async fn process_group(&mut self, group: &[(Lsn, RecordBatch)]) -> Result<(), RunError> {
        let Some(&(last, _)) = group.last() else {
            return Ok(());
        };
        let batch = match group {
            [(_, one)] => one.clone(),
            _ => {
                let parts: Vec<&RecordBatch> = group.iter().map(|(_, b)| b).collect();
                arrow::compute::concat_batches(&parts[0].schema(), parts)
                    .map_err(|e| RunError::Internal(format!("joining WAL entries: {e}")))?
            }
        };
        let result = self.engine.process(&batch).await;
        // When a query failed without effect, only the entries it fails on alone are
        // set aside.
        if matches!(result, Err(EngineError::Query { .. }))
            && group.len() > 1
            && self.engine.failed_without_effect()
        {
            for entry in group {
                let result = self.engine.process(&entry.1).await;
                self.set_aside_on_query_error(result, std::slice::from_ref(entry))?;
            }
        } else {
            self.set_aside_on_query_error(result, group)?;
        }
        self.metrics.record_engine(&self.engine);
        for (_, b) in group {
            self.metrics.batch_processed(b);
        }
        self.consumed = last;
        self.progress.send_replace(last);
        Ok(())
    }

    /// The outcome of processing `entries` (together): when a query failed on their
    /// data, they are set aside rather than stopping the pipeline (a restart would
    /// replay them and fail again, forever).
    fn set_aside_on_query_error(
        &mut self,
        result: Result<(), EngineError>,
        entries: &[(Lsn, RecordBatch)],
    ) -> Result<(), RunError> {
        match result {
            Ok(()) => Ok(()),
            Err(e @ EngineError::Query { .. }) => {
                for (lsn, b) in entries {
                    self.dead_letter(*lsn, b, &e)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a batch a query failed on to `<wal.dir>/dead-letter/lsn-<lsn>.arrows`
    /// (Arrow IPC, readable with any Arrow tool) with the error next to it, logs it and
    /// goes on. Queries that ran before the failing one kept their effect on this batch;
    /// when they did, WAL entries processed together are each set aside with the error.
    fn dead_letter(
        &mut self,
        lsn: Lsn,
        batch: &arrow::array::RecordBatch,
        error: &EngineError,
    ) -> Result<(), RunError> {
        let dir = self.dead_letter_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| RunError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("lsn-{lsn}.arrows"));
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let f = std::fs::File::create(&path)?;
            let mut w = arrow_ipc::writer::StreamWriter::try_new(f, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
            std::fs::write(path.with_extension("error.txt"), format!("{error}\n"))?;
            Ok(())
        };
        write().map_err(|e| RunError::io(format!("writing {}", path.display()), e.to_string()))?;
        tracing::error!(lsn, rows = batch.num_rows(), file = %path.display(), error = %error, "a query failed on a batch: set aside in the dead-letter folder");
        Ok(())
    }

    /// Starts a checkpoint at `consumed` in the background: flushes the sinks and takes
    /// a snapshot of the engine's state, which a thread writes to the store; the same
    /// thread then deletes the WAL segments neither kept checkpoint needs (see
    /// [`EngineSide::saved_checkpoint`]), which takes a few hundred milliseconds per
    /// gigabyte here. With one still being written, waits for the next call.
    fn periodic_checkpoint(&mut self) -> Result<(), RunError> {
        if self.writing.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        self.engine.commit()?;
        let snapshot = self.engine.snapshot()?;
        let (store, wal, lsn) = (self.store.clone(), self.wal.clone(), self.consumed);
        let (_, older) = self.kept_after(lsn);
        let nice = lowered_nice(CHECKPOINT_NICE);
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                set_thread_nice(nice, "checkpoint");
                save_snapshot(&store, lsn, &snapshot)?;
                Ok(wal.truncate_before(older + 1))
            })
            .map_err(|e| RunError::io("starting the checkpoint thread", e))?;
        self.writing = Some(Writing {
            lsn,
            started,
            thread,
        });
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Completes the background checkpoint once it is written (`wait`: waits for it):
    /// records it and truncates the WAL. A disk that refused it (full, I/O error) is
    /// not fatal: the checkpoint is tried again at the next interval. Nothing is lost
    /// meanwhile: the checkpoints already saved and every WAL entry after the older one
    /// stay, and ingest answers 503 by itself while the WAL cannot be written either.
    fn finish_checkpoint(&mut self, wait: bool) -> Result<(), RunError> {
        let Some(Writing {
            lsn,
            started,
            thread,
        }) = self.writing.take_if(|w| wait || w.thread.is_finished())
        else {
            return Ok(());
        };
        let result = thread
            .join()
            .map_err(|_| RunError::Internal("the checkpoint thread panicked".into()))?;
        match result {
            Ok(truncated) => {
                self.record_checkpoint(lsn, started);
                Ok(truncated?)
            }
            Err(e) if e.domain() == WalErrorDomain::External => {
                eprintln!(
                    "checkpoint at lsn {lsn} failed, trying again in {:?}: {e}",
                    self.interval
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Flushes the sinks and saves a checkpoint at `consumed` on this thread (at a
    /// stop: no background checkpoint may be in flight), then truncates the WAL.
    fn checkpoint(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        self.engine.commit()?;
        save_snapshot(&self.store, self.consumed, &self.engine.snapshot()?)?;
        self.last_checkpoint = Instant::now();
        self.saved_checkpoint(self.consumed, started)
    }

    /// Records the durable checkpoint at `lsn`, then deletes the WAL segments that
    /// neither kept checkpoint needs.
    fn saved_checkpoint(&mut self, lsn: Lsn, started: Instant) -> Result<(), RunError> {
        self.record_checkpoint(lsn, started);
        self.wal.truncate_before(self.older + 1)?;
        Ok(())
    }

    /// The newest two checkpoints once the one at `lsn` is saved: `(newest, older)`.
    /// The store keeps those two and falls back to the older one when the newest fails
    /// its checks: the WAL keeps the entries after the older.
    fn kept_after(&self, lsn: Lsn) -> (Lsn, Lsn) {
        if lsn == self.saved {
            (self.saved, self.older)
        } else {
            (lsn, self.saved)
        }
    }

    /// Records the durable checkpoint at `lsn`.
    fn record_checkpoint(&mut self, lsn: Lsn, started: Instant) {
        self.metrics.checkpoint_saved(started.elapsed());
        (self.saved, self.older) = self.kept_after(lsn);
    }
}

/// Durably saves `snapshot` as the checkpoint at `lsn`, encoded straight into the file.
fn save_snapshot(store: &CheckpointStore, lsn: Lsn, snapshot: &Snapshot) -> Result<(), WalError> {
    store
        .save_with(lsn, |w| snapshot.write(w).map_err(std::io::Error::other))
        .map(|_| ())
}

/// How often a running background checkpoint is looked at, while idle.
const CHECKPOINT_POLL: Duration = Duration::from_millis(200);
