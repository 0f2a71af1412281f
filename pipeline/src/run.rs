//! `leasewatch run`: HTTP ingest into the WAL, engines following the WAL, checkpoints.
//!
//! Lanes: with `engine.split_lanes` (the default) two engines built from the same SQL
//! follow the WAL, each on a thread of its own ([`Lane`]): the per-ping lane (per-ping
//! rules, the lease sweep, late pings, and the grading of their signals) on the thread
//! that runs `run`, and the windowed lane (the windows and the grading of their signals)
//! on a thread below ingest's priority. A window's merge or emission takes seconds at
//! times; in one engine every per-ping alert waited for it. Each lane reads every WAL
//! entry, has its own consumed lsn and its own checkpoints (`<wal.dir>/checkpoints`,
//! `<wal.dir>/checkpoints-windowed`); ingest's backpressure goes by the lane furthest
//! behind, and the WAL keeps every entry either lane's kept checkpoints may replay
//! (`Positions`). Without the split, one engine runs every query on this thread.
//!
//! Start-up: open the WAL (`wal.dir`) and the checkpoint stores (the WAL only looks at its
//! own segment files, and its directory lock keeps a second process away from all of
//! them), build each lane's engine from `engine.sql_dir`, restore its newest checkpoint
//! and continue after its lsn (with none yet, save one of the initial state first, so
//! that even a crash before the first periodic checkpoint cuts the file sinks back). A
//! checkpoint ahead of the WAL head means the WAL was lost (or `wal.dir` points
//! elsewhere): that is an error, not a fresh start.
//!
//! Ingest (HTTP) runs on a multi-threaded runtime of its own, so that it keeps answering
//! while the lanes are busy or blocked (queries, a Redis sink waiting out an outage, a
//! checkpoint's fsync).
//!
//! While running, each lane processes every WAL entry after the one it consumed last,
//! flushes its sinks, and reports its progress to ingest (backpressure) and metrics.
//! Every `engine.checkpoint_interval_secs` (also in the middle of a long backlog) it
//! flushes the sinks and takes a snapshot of its state at the consumed lsn, which a
//! thread of its own writes to the checkpoint store while the lane goes on (the state
//! batches are shared, not copied: the lane pauses only for the snapshot). Once that
//! checkpoint is durable, WAL segments no lane's *previous* checkpoint needs any more
//! are deleted (so the fallback checkpoint each store keeps stays usable). A lane writes
//! one checkpoint at a time. A checkpoint the disk refuses (full) is retried at the next
//! interval instead of stopping the pipeline.
//!
//! SIGTERM / SIGINT: ingest stops accepting and finishes the requests in flight (each
//! acknowledged only once durable in the WAL), the per-ping lane processes what is left
//! and saves a final checkpoint, then the windowed lane does; the process exits 0. An
//! error in the windowed lane stops the process the same way, and exits with it.
//!
//! Delivery to sinks: a clean stop ends with checkpoints at the WAL head, so a restart
//! after it replays nothing and sinks see every acknowledged ping once. After a crash
//! each lane restarts from its last checkpoint: file sinks are cut back to where they
//! ended at that checkpoint (each lane's files apart: the windowed lane's carry
//! `.windowed` in their names) and the WAL entries after it are replayed, so their output
//! equals an uninterrupted run's; the Redis queues skip alert ids already written. Sink
//! output is committed before each checkpoint is saved, so nothing a checkpoint covers
//! is lost with the process (file sinks do not fsync: a power loss may still lose
//! file-sink rows the OS had not written).

use crate::config::{Config, ConfigError};
use crate::engine::checkpoint::Snapshot;
use crate::engine::{Blame, Engine, EngineError, EngineOptions, Lane};
use crate::ingest::{IngestState, Lag, router, serve};
use crate::metrics::Metrics;
use crate::wal::{CheckpointStore, Lsn, Wal, WalConfig, WalError, WalErrorDomain};
use arrow::array::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Where the windowed lane keeps its checkpoints (`engine.split_lanes`):
/// `<wal.dir>/checkpoints-windowed`.
pub fn windowed_checkpoint_dir(wal: &WalConfig) -> PathBuf {
    wal.dir.join("checkpoints-windowed")
}

/// Opens a checkpoint store (without fsync when the WAL has none).
fn open_store(dir: PathBuf, wal: &WalConfig) -> Result<CheckpointStore, RunError> {
    let store = CheckpointStore::open(dir)?;
    Ok(if wal.fsync {
        store
    } else {
        store.without_fsync()
    })
}

/// Builds the engine of `lane` and restores its newest checkpoint from `store`; with
/// none yet, saves one of the initial state first (file sinks at their current length),
/// so that a crash before the first periodic checkpoint restores it and cuts the file
/// sinks back, instead of replaying the WAL after what the crashed process had written
/// (every row twice). Returns the engine and the lsn it continues after.
async fn restored_engine(
    config: &Config,
    lane: Lane,
    wal: &Wal,
    store: &CheckpointStore,
) -> Result<(Engine, Lsn), RunError> {
    let options = EngineOptions {
        background_compaction: true,
        lane,
        ..crate::cli::engine_options(config)
    };
    let mut engine = Engine::from_dir(&config.engine.sql_dir, &options).await?;
    let Some((lsn, bytes)) = store.load_latest()? else {
        engine.commit()?;
        save_snapshot(store, 0, &engine.snapshot()?)?;
        return Ok((engine, 0));
    };
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
    eprintln!(
        "{} lane: restored checkpoint at lsn {lsn}; replaying WAL entries {}..={head}",
        lane.as_str(),
        lsn + 1
    );
    Ok((engine, lsn))
}

/// Where the lanes following the WAL are (slot 0: the lane with ingest, slot 1: the
/// windowed lane, if any): each one's consumed lsn and the older of the two checkpoints
/// it keeps. Ingest's backpressure goes by the lane furthest behind, and the WAL keeps
/// every entry a lane's kept checkpoints may replay.
struct Positions {
    consumed: [AtomicU64; 2],
    older: [AtomicU64; 2],
    /// The smallest consumed lsn, for ingest backpressure and the backlog metric.
    progress: watch::Sender<Lsn>,
}

impl Positions {
    /// Lane 0 at `consumed` (its older checkpoint too); lane 1 absent until
    /// [`Positions::consumed`] and [`Positions::kept`] place it.
    fn new(consumed: Lsn) -> Self {
        Self {
            consumed: [AtomicU64::new(consumed), AtomicU64::new(Lsn::MAX)],
            older: [AtomicU64::new(consumed), AtomicU64::new(Lsn::MAX)],
            progress: watch::channel(consumed).0,
        }
    }

    fn min(values: &[AtomicU64; 2]) -> Lsn {
        values
            .iter()
            .map(|v| v.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// Lane `lane` has processed every entry up to `lsn`.
    fn consumed(&self, lane: usize, lsn: Lsn) {
        if let Some(c) = self.consumed.get(lane) {
            c.store(lsn, Ordering::SeqCst);
        }
        let min = Self::min(&self.consumed);
        self.progress
            .send_if_modified(|p| std::mem::replace(p, min) != min);
    }

    /// The older checkpoint lane `lane` keeps is at `lsn`.
    fn kept(&self, lane: usize, lsn: Lsn) {
        if let Some(o) = self.older.get(lane) {
            o.store(lsn, Ordering::SeqCst);
        }
    }

    /// Truncates the WAL before the first entry some lane's kept checkpoints may replay.
    fn truncate(&self, wal: &Wal) -> Result<(), WalError> {
        wal.truncate_before(Self::min(&self.older).saturating_add(1))
    }
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
    let split = config.engine.split_lanes;
    let main_lane = if split { Lane::PerPing } else { Lane::All };
    let store = open_store(checkpoint_dir(&config.wal), &config.wal)?;
    let (engine, consumed) = restored_engine(config, main_lane, &wal, &store).await?;
    let positions = Arc::new(Positions::new(consumed));

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| RunError::Internal(e.to_string()))?;
    register_engine(&metrics, &engine);
    let windowed = if split {
        Some(WindowedLane::start(
            config, &wal, &metrics, &positions, &stop,
        )?)
    } else {
        None
    };
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
    let consumed_rx = positions.progress.subscribe();
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
    let mut side = EngineSide::new(config, engine, (wal, store), metrics, (0, positions));
    side.sweep_every = (config.engine.sweep_interval_secs > 0)
        .then(|| Duration::from_secs(config.engine.sweep_interval_secs));
    // After the windowed lane and the checkpoint threads' nice values (relative to the
    // process); the ingest runtime's are relative to this lane.
    let lane_nice = raise_lane_priority(config.engine.per_ping_nice);
    // Ingest runs on a runtime of its own: the engine blocks the thread it runs on at
    // times (a Redis sink waiting out an outage, file sinks, a checkpoint's fsync, the
    // queries themselves), and ingest must keep answering meanwhile (202 once in the WAL,
    // or 429/503), not hang with it.
    let ingest_runtime = IngestRuntime::new(lane_nice)?;
    let mut stopped = stop.subscribe();
    let server = ingest_runtime.spawn(async move {
        let listener = TcpListener::from_std(listener)?;
        serve(listener, router(state), async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    eprintln!("listening on http://{addr}");

    let outcome = side.follow(&stop, server).await;
    if let Some(s) = sampler {
        s.abort();
    }
    let outcome = match outcome {
        Err(e) => {
            eprintln!(
                "leasewatch: stopping after an error at lsn {}",
                side.consumed
            );
            Err(e)
        }
        Ok(()) => {
            // Ingest has stopped: everything acknowledged is in the WAL.
            async {
                side.drain().await?;
                side.finish_checkpoint(true)?;
                side.checkpoint()?;
                eprintln!("stopped; checkpoint at lsn {}", side.consumed);
                Ok(())
            }
            .await
        }
    };
    // The windowed lane finishes the WAL too (with a checkpoint) once this lane did, or
    // stops at once after an error; its own error, if any, is the run's.
    let lane = match windowed {
        Some(w) => w.stop(outcome.is_ok()),
        None => Ok(()),
    };
    outcome.and(lane)
}

/// Exports the engine's lookup and alert-sink counters.
fn register_engine(metrics: &Metrics, engine: &Engine) {
    for (table, lookup) in engine.lookups() {
        metrics.add_lookup(table, lookup.stats());
    }
    for stats in engine.redis_sink_stats() {
        metrics.add_sink(stats);
    }
}

/// How often a lingering windowed lane looks whether its compaction thread is done.
const COMPACTION_POLL: Duration = Duration::from_millis(5);

/// What the thread of the windowed lane is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneCommand {
    Run,
    /// Ingest has stopped: process the WAL to its head, checkpoint, end.
    Finish,
    /// End now (the other lane failed); the checkpoints saved so far stay.
    Abort,
}

/// How much lower than the rest of the process the windowed lane's thread and its
/// compaction thread run (nice): below ingest ([`INGEST_NICE`]) too, since every ping an
/// alert is waiting for passes through ingest first. When the cores are busy, a per-ping
/// alert should wait neither for a window's merge nor for ingest starved by one. Its
/// checkpoint thread runs lower still, relative to it. A windowed lane that falls behind
/// only delays windows (and, past `ingest.max_lag_batches` or `max_lag_rows`, ingest).
const WINDOWED_LANE_NICE: i32 = 8;

/// The windowed lane's slot in [`Positions`] (the lane with ingest has slot 0).
const WINDOWED_SLOT: usize = 1;

/// The windowed lane: an engine running the windowed queries on a thread of its own,
/// following the WAL apart from the lane with ingest.
struct WindowedLane {
    /// Taken by [`WindowedLane::stop`].
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
    command: watch::Sender<LaneCommand>,
}

impl Drop for WindowedLane {
    /// Not stopped (`run` failed before following the WAL): the lane ends at once.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.command.send_replace(LaneCommand::Abort);
        }
    }
}

impl WindowedLane {
    /// Starts the lane's thread, which builds its engine, restores its checkpoint and
    /// places it in `positions` before this returns (so that nothing it still needs is
    /// truncated), then follows the WAL. An error of the lane later sets `stop`.
    fn start(
        config: &Config,
        wal: &Wal,
        metrics: &Metrics,
        positions: &Arc<Positions>,
        stop: &Arc<watch::Sender<bool>>,
    ) -> Result<Self, RunError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), RunError>>();
        let (command, commands) = watch::channel(LaneCommand::Run);
        let (config, wal, metrics) = (config.clone(), wal.clone(), metrics.clone());
        let (positions, stop) = (Arc::clone(positions), Arc::clone(stop));
        let nice = lowered_nice(WINDOWED_LANE_NICE);
        let thread = std::thread::Builder::new()
            .name("lw-windowed".into())
            .spawn(move || {
                set_thread_nice(nice, "windowed lane");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| RunError::io("starting the windowed lane's runtime", e))?;
                let result = runtime.block_on(async {
                    let started = async {
                        let store = open_store(windowed_checkpoint_dir(&config.wal), &config.wal)?;
                        let (engine, consumed) =
                            restored_engine(&config, Lane::Windowed, &wal, &store).await?;
                        register_engine(&metrics, &engine);
                        positions.kept(WINDOWED_SLOT, consumed);
                        positions.consumed(WINDOWED_SLOT, consumed);
                        Ok(EngineSide::new(
                            &config,
                            engine,
                            (wal, store),
                            metrics,
                            (WINDOWED_SLOT, positions),
                        ))
                    }
                    .await;
                    let mut side = match started {
                        Ok(side) => {
                            let _ = ready_tx.send(Ok(()));
                            side
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    side.follow_lane(commands).await
                });
                if let Err(e) = &result {
                    eprintln!("leasewatch: the windowed lane failed: {e}");
                    stop.send_replace(true);
                }
                result
            })
            .map_err(|e| RunError::io("starting the windowed lane", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                thread: Some(thread),
                command,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => RunError::Internal("the windowed lane ended while starting".into()),
            }),
        }
    }

    /// Tells the lane to finish the WAL (`finish`) or to end now, and waits for it.
    fn stop(mut self, finish: bool) -> Result<(), RunError> {
        self.command.send_replace(if finish {
            LaneCommand::Finish
        } else {
            LaneCommand::Abort
        });
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| RunError::Internal("the windowed lane panicked".into()))?,
            None => Ok(()),
        }
    }
}

/// How much lower than the per-ping lane the ingest threads run (nice): with the default
/// `engine.per_ping_nice` (-5) at the process's priority, and 5 below it where the lane
/// may not be raised ([`raise_lane_priority`]).
///
/// The per-ping lane (or the one engine) is one thread: every ping goes through it, so
/// when the cores are busy it sets the throughput. Ingest scales out and is held back
/// anyway once the engine lags (429/503), so under contention the engine should win. Five
/// levels below it, an ingest thread weighs about a third of the engine thread in the
/// kernel's scheduler; and six times the windowed lane ([`WINDOWED_LANE_NICE`]) with the
/// lane raised, twice without.
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

/// `nice` lowered by `by` levels (the lowest priority, 19, at most).
fn nice_below(nice: i32, by: i32) -> i32 {
    (nice + by).min(19)
}

/// The calling thread's nice value lowered by `by` levels ([`nice_below`]).
fn lowered_nice(by: i32) -> i32 {
    nice_below(rustix::process::getpriority_process(None).unwrap_or(0), by)
}

/// Raises the calling thread, the per-ping lane (or the one engine), to `nice` above the
/// process (`engine.per_ping_nice`: 0 or below). The lane is one thread that every alert
/// within a second waits for; lowering the process's other threads
/// ([`WINDOWED_LANE_NICE`]) does not help it against other processes on a busy machine (a
/// co-located Redis, a load driver), which would each take as large a share as it.
/// Ingest, which every ping passes first, starts after it and runs [`INGEST_NICE`] below
/// it, so that both win against other processes while the lane still wins against ingest:
/// with the lane raised alone, ingest starved on a saturated machine and acknowledged
/// later than before. When the process may not (no root, `CAP_SYS_NICE` nor
/// `RLIMIT_NICE`), it says so once and the lane runs at the process's priority.
/// Returns the lane's nice value.
fn raise_lane_priority(nice: i32) -> i32 {
    let base = rustix::process::getpriority_process(None).unwrap_or(0);
    if nice >= 0 {
        return base;
    }
    let want = (base + nice).max(-20);
    match rustix::process::setpriority_process(None, want) {
        Ok(()) => {
            tracing::debug!(nice = want, "per-ping lane priority raised");
            want
        }
        Err(e) => {
            tracing::info!(
                error = %e,
                nice = want,
                "the per-ping lane runs at the process's priority: raising it needs root, \
                 CAP_SYS_NICE or RLIMIT_NICE (engine.per_ping_nice = 0 does not try)"
            );
            base
        }
    }
}

/// The multi-threaded runtime the HTTP ingest server runs on, apart from the engine's.
/// Dropping it stops what still runs on it without waiting (the server has finished by
/// then, unless `run` is failing).
struct IngestRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl IngestRuntime {
    /// Its threads run [`INGEST_NICE`] below `lane_nice`, the per-ping lane's.
    fn new(lane_nice: i32) -> Result<Self, RunError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let ingest_nice = nice_below(lane_nice, INGEST_NICE);
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
    /// This lane's slot in `positions`.
    lane: usize,
    /// Where every lane is, for ingest backpressure and WAL truncation.
    positions: Arc<Positions>,
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
    /// The windowed lane starts a pass over the WAL at most once per this long
    /// (`engine.windowed_linger_ms`; zero for the per-ping lane).
    linger: Duration,
    /// The checkpoint being written in the background, if any.
    writing: Option<Writing>,
    /// The nice value of the thread writing it ([`CHECKPOINT_NICE`] below the lane as
    /// it started, before the per-ping lane's priority was raised).
    checkpoint_nice: i32,
}

/// A checkpoint a thread is writing: saving it, then (once saved) deleting the WAL
/// segments it makes unneeded, the outcome of which is the inner result.
struct Writing {
    lsn: Lsn,
    started: Instant,
    thread: std::thread::JoinHandle<Result<Result<(), WalError>, WalError>>,
}

impl EngineSide {
    /// The side of `engine`, in slot `lane` of `positions`, at the lsn `positions` holds
    /// for it; no lease sweep.
    fn new(
        config: &Config,
        engine: Engine,
        (wal, store): (Wal, CheckpointStore),
        metrics: Metrics,
        (lane, positions): (usize, Arc<Positions>),
    ) -> Self {
        let consumed = positions
            .consumed
            .get(lane)
            .map_or(0, |c| c.load(Ordering::SeqCst));
        Self {
            engine,
            wal,
            store,
            metrics,
            consumed,
            lane,
            positions,
            interval: Duration::from_secs(config.engine.checkpoint_interval_secs.max(1)),
            last_checkpoint: Instant::now(),
            dead_letter_dir: config.wal.dir.join("dead-letter"),
            sweep_every: None,
            next_sweep: Instant::now(),
            saved: consumed,
            older: consumed,
            max_batch_rows: if lane == WINDOWED_SLOT {
                config.engine.windowed_max_batch_rows
            } else {
                config.engine.max_batch_rows
            }
            .max(1),
            linger: if lane == WINDOWED_SLOT {
                Duration::from_millis(config.engine.windowed_linger_ms)
            } else {
                Duration::ZERO
            },
            writing: None,
            checkpoint_nice: lowered_nice(CHECKPOINT_NICE),
        }
    }

    /// The windowed lane's loop: follows the WAL until told to finish (then processes it
    /// to the head and checkpoints) or to abort.
    async fn follow_lane(
        &mut self,
        mut commands: watch::Receiver<LaneCommand>,
    ) -> Result<(), RunError> {
        let mut head = self.wal.subscribe();
        let mut gathered = Instant::now();
        loop {
            // Requests gather in the WAL meanwhile, to be processed in one pass; the
            // compaction thread is kept busy.
            let gather_until = gathered + self.linger;
            while *commands.borrow_and_update() == LaneCommand::Run {
                let compacting = self.engine.compact_in_background()?;
                let Some(left) = gather_until.checked_duration_since(Instant::now()) else {
                    break;
                };
                if left.is_zero() {
                    break;
                }
                let nap = if compacting {
                    left.min(COMPACTION_POLL)
                } else {
                    left
                };
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    changed = commands.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            head.borrow_and_update();
            let command = *commands.borrow_and_update();
            if command == LaneCommand::Abort {
                return Ok(());
            }
            gathered = Instant::now();
            self.drain().await?;
            self.finish_checkpoint(false)?;
            if command == LaneCommand::Finish {
                // The other lane had stopped ingest and drained: the drain above went
                // to the final head.
                self.finish_checkpoint(true)?;
                self.checkpoint()?;
                return Ok(());
            }
            if self.last_checkpoint.elapsed() >= self.interval {
                self.periodic_checkpoint()?;
            }
            let mut due = self.last_checkpoint + self.interval;
            if self.writing.is_some() {
                due = due.min(Instant::now() + CHECKPOINT_POLL);
            }
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return Err(RunError::Internal("WAL head channel closed".into()));
                    }
                }
                changed = commands.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
            }
        }
    }

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
        if self.lane == 0 {
            for (_, b) in group {
                self.metrics.batch_processed(b);
            }
        }
        self.consumed = last;
        self.positions.consumed(self.lane, last);
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
        let path = match self.engine.lane().file_tag() {
            Some(tag) => dir.join(format!("lsn-{lsn}.{tag}.arrows")),
            None => dir.join(format!("lsn-{lsn}.arrows")),
        };
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
        let (positions, lane) = (Arc::clone(&self.positions), self.lane);
        let nice = self.checkpoint_nice;
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                set_thread_nice(nice, "checkpoint");
                save_snapshot(&store, lsn, &snapshot)?;
                positions.kept(lane, older);
                Ok(positions.truncate(&wal))
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
        self.positions.truncate(&self.wal)?;
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
        self.positions.kept(self.lane, self.older);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// On a thread of its own: a nice value is per thread on Linux.
    fn nice_after(raise: i32, base: i32) -> (i32, i32) {
        std::thread::spawn(move || {
            set_thread_nice(base, "test");
            let before = rustix::process::getpriority_process(None).unwrap();
            let lane = raise_lane_priority(raise);
            let after = rustix::process::getpriority_process(None).unwrap();
            // What the ingest runtime's threads are set below.
            assert_eq!(lane, after);
            (before, after)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_lane_is_raised_relative_to_the_process_where_it_may_be() {
        // From nice 3, so that an unprivileged process may go back down to it.
        let (before, after) = nice_after(-5, 3);
        assert_eq!(before, 3);
        // Whether this process may raise a thread at all (root with CAP_SYS_NICE may; a
        // plain user may not go below the nice it had).
        let may = std::thread::spawn(|| {
            set_thread_nice(3, "test");
            rustix::process::setpriority_process(None, -2).is_ok()
        })
        .join()
        .unwrap();
        assert_eq!(after, if may { -2 } else { 3 }, "may raise: {may}");
        // 0 leaves it alone.
        assert_eq!(nice_after(0, 3), (3, 3));
    }
}
