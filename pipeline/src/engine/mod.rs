//! The streaming engine: event time, watermarks, windows and SQL on DataFusion.
//!
//! The engine owns time; DataFusion does the relational work. A pipeline is a folder of
//! SQL files ([`sql`]): one ping source table (`connector = 'leasewatch'`, with
//! `WATERMARK FOR`), sinks, views and `INSERT INTO sink SELECT ...` queries. Each query is
//! compiled once ([`plan`]) into physical plans that read slots ([`slot`]):
//!
//! - per-batch queries (filters, projections, UDF calls) run on every ping batch, late
//!   pings included;
//! - windowed queries (`tumble`/`hop`/`session` in `GROUP BY`, [`window`]) run their
//!   pre-window part per batch on on-time pings, keep per-slide partial aggregates (or
//!   session rows) as state, and emit a window through the `Final` aggregate and the
//!   post-window part once the watermark passes its end.
//!
//! The watermark is `max event time seen - bound` (the source's `WATERMARK FOR`),
//! evaluated row by row, so results do not depend on how input is cut into batches.
//! Late pings (event time below the watermark) are counted, still run the per-batch
//! queries, and go to the configured late sink; they never enter window state.
//!
//! A view holding a windowed aggregate is compiled once as a *stage*: its emitted windows
//! form a stream of their own that later views and queries read like a table (so one
//! grading query can take the `UNION ALL` of several windowed signal views). Queries that
//! read a stage run on each emission. Joins with `connector = 'redis'` lookup tables run
//! as [`lookup_join`] nodes: one lookup of the distinct keys per batch.

pub mod checkpoint;
pub mod lookup_join;
pub mod plan;
pub mod projection;
pub mod slot;
pub mod sql;
pub mod window;

use crate::sink::{self, MemorySink, Sink, SinkError};
use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray};
use arrow::compute::{filter_record_batch, not};
use arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::AggregateUDF;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};
use leasewatch_schemas::{col, ping_schema};
use leasewatch_udfs::datafusion::{MaxSpeedKmh, SettledSpans};
use lookup_join::LookupTable;
use plan::{Output, PINGS, QueryKind, SWEEP, SourceBinding, SweepBinding, WindowState, Windowed};
use sql::{LoadError, Pos, Program, SqlError, TableKind};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use window::WindowSpec;

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The user: SQL, configuration or input data.
    User,
    /// An outside system (disk, stdout, Redis): retrying may help.
    Outside,
    /// A bug in LeaseWatch.
    Internal,
}

/// Engine errors, split by who must act ([`EngineError::blame`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SQL is wrong or uses something the embedded engine does not support.
    #[error("SQL: {0}")]
    Sql(#[from] SqlError),
    /// The SQL folder could not be read.
    #[error("{0}")]
    Load(LoadError),
    /// A query failed on the data (e.g. a UDF rejected a value).
    #[error("query at {pos}: {message}")]
    Query {
        /// The query.
        pos: Pos,
        /// DataFusion's message.
        message: String,
    },
    /// A checkpoint that does not fit this pipeline (other SQL, corrupt bytes).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The lease sweep could not list the leases (Redis unreachable or refusing).
    #[error("lease sweep: {0}")]
    Sweep(String),
    /// A bug.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl EngineError {
    /// Who must act.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Sql(_) | Self::Query { .. } | Self::Checkpoint(_) => Blame::User,
            Self::Load(LoadError::Io { .. }) | Self::Sink(_) | Self::Sweep(_) => Blame::Outside,
            Self::Load(_) => Blame::User,
            Self::Internal(_) => Blame::Internal,
        }
    }
}

impl From<LoadError> for EngineError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Sql(s) => Self::Sql(s),
            e => Self::Load(e),
        }
    }
}

/// How to build an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Replace every sink by an in-memory capture (tests, golden files).
    pub capture_sinks: bool,
    /// Sink table that receives late pings (source rows), if any.
    pub late_sink: Option<String>,
    /// GeoJSON geofence file for `geofence_match` / `geofence_kind`.
    pub geofences: Option<std::path::PathBuf>,
    /// Redis URL for every `connector = 'redis'` table, replacing their `address` option
    /// (one pipeline, many environments).
    pub redis_url: Option<String>,
    /// Run the compactions of window state on a thread of their own (`leasewatch run`):
    /// the engine goes on with the next batches meanwhile, the parts being compacted
    /// still in place. The engine's thread compacts level 0 only when that thread falls
    /// far behind (`BACKSTOP_FANIN`). Off, compactions run between batches on the
    /// engine's thread, every one due at level 0 and at most
    /// `UPPER_COMPACTIONS_PER_BATCH` above it per batch (replay and tests: the same
    /// input then always gives the same parts).
    pub background_compaction: bool,
    /// Which of the pipeline's queries this engine runs ([`Lane`]).
    pub lane: Lane,
}

/// Which queries an engine runs. `leasewatch run` follows the WAL with two engines built
/// from the same SQL, each on a thread of its own: the per-ping rules must answer within
/// a fraction of a second, and the windows' merges and emissions (seconds, at times) must
/// not hold them up. Queries downstream of both (grading) run in each lane on that lane's
/// rows, so the two lanes together write what one engine running everything would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Every query (replay, tests).
    #[default]
    All,
    /// Every query but the windowed ones: per-ping rules, the lease sweep, the late sink,
    /// and what reads their output.
    PerPing,
    /// The windowed queries and what reads their output. It counts no pings (the
    /// per-ping lane does), writes no late pings and runs no sweep; its file sinks write
    /// files of their own (see [`Lane::file_tag`]).
    Windowed,
}

impl Lane {
    /// Its name, in logs and checkpoints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::PerPing => "per_ping",
            Self::Windowed => "windowed",
        }
    }

    /// What its file sinks add to their file names, so that two lanes never write (or
    /// rewind) the same file.
    pub fn file_tag(self) -> Option<&'static str> {
        (self == Self::Windowed).then_some("windowed")
    }

    /// How much lower than the engine's thread its compaction thread runs (nice).
    fn compaction_nice(self) -> i32 {
        if self == Self::Windowed {
            0
        } else {
            COMPACTION_NICE
        }
    }

    /// Whether it runs the windowed queries.
    fn windows(self) -> bool {
        self != Self::PerPing
    }

    /// Whether it runs the queries that read the pings or the sweep directly (other than
    /// windows), and counts the pings.
    fn per_ping(self) -> bool {
        self != Self::Windowed
    }
}

/// Counters and gauges of an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    /// Pings processed.
    pub pings_in: u64,
    /// Pings that arrived behind the watermark.
    pub late: u64,
    /// Rows written per sink table.
    pub rows_out: BTreeMap<String, u64>,
    /// Windows emitted (per query and window).
    pub windows_emitted: u64,
    /// Rows in and out per query (views computed once and `INSERT INTO`s), by
    /// [`plan::Query::name`].
    #[serde(default)]
    pub queries: BTreeMap<String, QueryCounts>,
}

/// Rows a query read and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueryCounts {
    /// Rows it ran on (pings, a stage's rows, or on-time pings for a window).
    pub rows_in: u64,
    /// Rows it produced (for a window: when windows are emitted).
    pub rows_out: u64,
}

fn count(stats: &mut EngineStats, name: &str, rows_in: usize, out: &[RecordBatch]) {
    let c = stats.queries.entry(name.to_string()).or_default();
    c.rows_in += rows_in as u64;
    c.rows_out += out.iter().map(|b| b.num_rows() as u64).sum::<u64>();
}

/// The event-time clock: watermark = max event time seen - bound.
#[derive(Debug, Clone, Copy)]
struct Clock {
    bound_ms: i64,
    max_ts: i64,
    flushed: bool,
}

impl Clock {
    fn watermark(&self) -> i64 {
        if self.flushed {
            i64::MAX
        } else if self.max_ts == i64::MIN {
            i64::MIN
        } else {
            self.max_ts.saturating_sub(self.bound_ms)
        }
    }

    /// Marks late rows (event time below the running watermark) and advances.
    fn observe(&mut self, ts: &TimestampMillisecondArray) -> (BooleanArray, u64) {
        let mut late = 0u64;
        let mut max = self.max_ts;
        let bound = self.bound_ms;
        let mask: BooleanArray = ts
            .values()
            .iter()
            .map(|&t| {
                let wm = if max == i64::MIN {
                    i64::MIN
                } else {
                    max.saturating_sub(bound)
                };
                let is_late = t < wm;
                late += u64::from(is_late);
                max = max.max(t);
                Some(is_late)
            })
            .collect();
        self.max_ts = max;
        (mask, late)
    }
}

/// One compiled pipeline with its state.
pub struct Engine {
    ctx: SessionContext,
    task: Arc<TaskContext>,
    /// `task` with no bound on the batch size, for compactions: DataFusion's aggregate
    /// materialises its whole output once and hands it out in slices of the batch size,
    /// and joining those slices into one part again would copy the bucket's state.
    whole: Arc<TaskContext>,
    source: Option<SourceBinding>,
    sweep: Option<SweepBinding>,
    queries: Vec<plan::Query>,
    /// Indices of the windowed queries in `queries`.
    windowed: Vec<usize>,
    stage_slots: Vec<slot::Slot>,
    lookups: Vec<(String, Arc<crate::lookup::RedisLookup>)>,
    sink_names: Vec<String>,
    watermark_cell: window::WatermarkCell,
    /// Where `max_speed_kmh` settles its fixes, set around compactions.
    settle: SettledSpans,
    sinks: Vec<Box<dyn Sink>>,
    captures: BTreeMap<String, MemorySink>,
    late_sink: Option<usize>,
    clock: Clock,
    stats: EngineStats,
    fingerprint: u64,
    /// The last [`Engine::process`] failed before anything changed.
    failed_without_effect: bool,
    /// Which windowed query is offered the batch's compaction budget first (upper levels;
    /// with the compaction thread, any level).
    compaction_turn: usize,
    /// The compaction thread, with [`EngineOptions::background_compaction`].
    compactor: Option<Compactor>,
    lane: Lane,
    /// When window state was last described in the debug log.
    state_logged: Instant,
}

/// A compaction for the compaction thread.
struct Job {
    /// Its reduce plan over the parts taken.
    plan: Arc<dyn ExecutionPlan>,
    /// Where its rows may still be joined by others (see [`SettledSpans::set_outside`]),
    /// when its fixes may settle.
    occupied: Option<Vec<(i64, i64)>>,
    pos: Pos,
}

/// A compaction's result, from the compaction thread.
struct Done {
    result: Result<Vec<RecordBatch>, EngineError>,
    ms: u128,
}

/// How much lower than the engine thread the compaction thread runs (nice), as ingest,
/// when the engine also runs the per-ping rules. The windowed lane's compactions are
/// window work like the rest of that lane, which already runs below ingest: its
/// compaction thread runs at the lane's priority ([`Lane::compaction_nice`]).
const COMPACTION_NICE: i32 = 5;

/// The thread that runs compactions, one at a time.
struct Compactor {
    jobs: std::sync::mpsc::Sender<Job>,
    done: std::sync::mpsc::Receiver<Done>,
    /// The compaction running: its query, and what it took (parts marked busy).
    in_flight: Option<(usize, window::Compaction)>,
    /// Compactions whose results were filed.
    filed: u64,
}

impl Compactor {
    /// `nice_by`: how much lower than the calling thread the compactions run.
    fn spawn(
        task: Arc<TaskContext>,
        settle: SettledSpans,
        nice_by: i32,
    ) -> Result<Self, EngineError> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (outbox, done) = std::sync::mpsc::channel::<Done>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(internal)?;
        std::thread::Builder::new()
            .name("lw-compaction".into())
            .spawn(move || {
                // Below an engine thread with per-ping rules, as ingest is: a long merge
                // here must not take the core their batches need. On Linux a nice value is
                // per thread (inherited from the caller); failing to set it only costs
                // latency.
                let nice = rustix::process::getpriority_process(None).unwrap_or(0);
                if let Err(e) = rustix::process::setpriority_process(None, (nice + nice_by).min(19))
                {
                    tracing::debug!(error = %e, "could not lower the compaction thread's priority");
                }
                for job in inbox {
                    let started = std::time::Instant::now();
                    if let Some(occupied) = job.occupied {
                        settle.set_outside(occupied);
                    }
                    let result = runtime.block_on(run(&job.plan, &task, &job.pos));
                    settle.clear();
                    let ms = started.elapsed().as_millis();
                    if outbox.send(Done { result, ms }).is_err() {
                        break;
                    }
                }
            })
            .map_err(internal)?;
        Ok(Self {
            jobs,
            done,
            in_flight: None,
            filed: 0,
        })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("source", &self.source.as_ref().map(|s| &s.name))
            .field("queries", &self.queries.len())
            .field("sinks", &self.sink_names)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Compaction fan-in: this many partial-state batches of one level in a slide bucket are
/// reduced to one (DataFusion `PartialReduce`), bounding state and final-merge work
/// (`HopState::take_compaction`).
///
/// Level 0 merges 32 batches: a part of level 1 then holds most of the devices of its
/// bucket at the drive's rates, and each level above it re-merges fewer rows per ping
/// (16 took 30% more CPU on the compaction thread at 300,000 pings/s).
const COMPACT_FANIN: window::Fanin = window::Fanin {
    first: 32,
    upper: 4,
};

/// With the compaction thread, the engine's thread compacts level 0 itself only when a
/// bucket holds this many parts of it: the thread runs one compaction at a time, at a
/// lower priority, and may fall behind under load; state stays bounded meanwhile.
const BACKSTOP_FANIN: window::Fanin = window::Fanin {
    first: 4 * COMPACT_FANIN.first,
    upper: COMPACT_FANIN.upper,
};

/// Compactions of level 1 and up, per batch processed, across every windowed query.
/// They merge parts that each hold most of the devices: every query reaches them on
/// the same batch, and doing them all at once paused the engine for seconds (2-3 s of
/// ping-to-queue latency at 50,000 pings/s). The others wait for the next batches; the
/// windowed queries take turns at being offered it first.
const UPPER_COMPACTIONS_PER_BATCH: usize = 1;

/// How often window state is described in the debug log.
const STATE_LOG_EVERY: Duration = Duration::from_secs(15);

/// The highest level of the parts a compaction merges into one part of the next level.
/// A part of level 5 holds 32·4⁴ = 8,192 batches and, at any volume where compaction
/// matters, nearly every device of its bucket. Parts of level 5, the top, merge with
/// each other into one of level 5 again ([`window::HopState::take_compaction`]). In
/// the query with `max_speed_kmh`, the parts above level 0 go into the top only once
/// behind the watermark, when its fixes settle: merging unsettled fixes is long (7.5 s
/// and 2 GB for four parts at 100,000 pings/s) and reduces them not at all.
const MAX_COMPACTION_LEVEL: u8 = 4;

impl Engine {
    /// Builds the pipeline of every `.sql` file in `dir` (sorted by name).
    pub async fn from_dir(dir: &Path, options: &EngineOptions) -> Result<Self, EngineError> {
        let files = read_sql_files(dir)?;
        Self::from_files(&files, options).await
    }

    /// Builds the pipeline of `(file name, SQL text)` files, in order.
    pub async fn from_files(
        files: &[(String, String)],
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let program = sql::parse_files(files)?;
        let fingerprint = fnv1a(files.iter().flat_map(|(n, t)| [n.as_bytes(), t.as_bytes()]));
        Self::from_program(&program, options, fingerprint).await
    }

    async fn from_program(
        program: &Program,
        options: &EngineOptions,
        fingerprint: u64,
    ) -> Result<Self, EngineError> {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192)
            .with_information_schema(false);
        let lookups = lookup_tables(program, options)?;
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_query_planner(Arc::new(lookup_join::QueryPlanner::new(Arc::clone(
                &lookups,
            ))))
            .build();
        let ctx = SessionContext::new_with_state(state);
        for udf in window::window_udfs() {
            ctx.register_udf(udf);
        }
        let watermark_cell = window::WatermarkCell::default();
        watermark_cell.set(i64::MIN);
        ctx.register_udf(window::event_watermark_udf(watermark_cell.clone()));
        let geofences = match &options.geofences {
            Some(path) => Some(Arc::new(leasewatch_udfs::load_geofences(path).map_err(
                |e| {
                    EngineError::Sql(SqlError::new(
                        &Pos {
                            file: Arc::from("config"),
                            line: 0,
                            column: 0,
                        },
                        "engine.geofences",
                        e.to_string(),
                    ))
                },
            )?)),
            None => None,
        };
        let functions = leasewatch_udfs::datafusion::functions(geofences);
        for udf in &functions.scalar {
            ctx.register_udf(udf.as_ref().clone());
        }
        for udaf in &functions.aggregate {
            ctx.register_udaf(udaf.as_ref().clone());
        }
        // In place of the default: compactions settle its fixes (see `accumulate`).
        let settle = SettledSpans::default();
        ctx.register_udaf(AggregateUDF::from(MaxSpeedKmh::settling(settle.clone())));
        let (source, sweep) = plan::bind_tables(&ctx, program, options.redis_url.as_deref())?;
        let mut streams: HashMap<String, usize> = HashMap::new();
        if let Some(s) = &source {
            streams.insert(s.name.clone(), PINGS);
        }
        if let Some(s) = &sweep {
            streams.insert(s.name.clone(), SWEEP);
        }
        let mut queries = Vec::new();
        let mut stage_slots = Vec::new();
        for v in view_order(&ctx, program)? {
            let env = plan::Env {
                ctx: &ctx,
                program,
                source: source.as_ref(),
                lookups: &lookups,
                streams: &streams,
            };
            match plan::compile_view(&env, v, stage_slots.len(), queries.len()).await? {
                Some((q, schema)) => {
                    let slot = slot::Slot::default();
                    ctx.register_table(
                        v.name.as_str(),
                        Arc::new(slot::SlotTable::new(schema, slot.clone())),
                    )
                    .map_err(|e| {
                        EngineError::Sql(SqlError::new(
                            &v.pos,
                            format!("CREATE VIEW {}", v.name),
                            e.to_string(),
                        ))
                    })?;
                    streams.insert(v.name.clone(), 1 + stage_slots.len());
                    stage_slots.push(slot);
                    queries.push(q);
                }
                None => {
                    ctx.sql(&v.sql).await.map_err(|e| {
                        EngineError::Sql(SqlError::new(
                            &v.pos,
                            format!("CREATE VIEW {}", v.name),
                            e.to_string(),
                        ))
                    })?;
                }
            }
        }
        let mut sink_names: Vec<String> = Vec::new();
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let mut captures = BTreeMap::new();
        let mut sink_index = |name: &str, pos: &Pos| -> Result<usize, EngineError> {
            let t = program.table(name).filter(|t| t.kind == TableKind::Sink).ok_or_else(|| {
                EngineError::Sql(SqlError::new(
                    pos,
                    format!("sink {name}"),
                    "no such sink table (declare it with CREATE TABLE ... WITH (connector = 'blackhole' | 'stdout' | 'filesystem' | 'redis'))",
                ))
            })?;
            if let Some(i) = sink_names.iter().position(|n| n == &t.name) {
                return Ok(i);
            }
            let s: Box<dyn Sink> = if options.capture_sinks {
                let m = MemorySink::default();
                captures.insert(t.name.clone(), m.clone());
                Box::new(m)
            } else {
                sink::open(t, options.redis_url.as_deref(), options.lane.file_tag())?
            };
            sink_names.push(t.name.clone());
            sinks.push(s);
            Ok(sink_names.len() - 1)
        };
        for ins in &program.inserts {
            let sink = sink_index(&ins.sink, &ins.pos)?;
            let env = plan::Env {
                ctx: &ctx,
                program,
                source: source.as_ref(),
                lookups: &lookups,
                streams: &streams,
            };
            let qn = queries.len();
            queries.push(plan::compile_insert(&env, ins, sink, qn).await?);
        }
        let late_sink = match options
            .late_sink
            .as_ref()
            .filter(|_| options.lane.per_ping())
        {
            Some(name) => {
                let pos = Pos {
                    file: Arc::from("config"),
                    line: 0,
                    column: 0,
                };
                Some(sink_index(name, &pos)?)
            }
            None => None,
        };
        let mut stats = EngineStats::default();
        for n in &sink_names {
            stats.rows_out.insert(n.clone(), 0);
        }
        let bound_ms = source.as_ref().map_or(0, |s| s.bound_ms);
        let windowed: Vec<usize> = (0..queries.len())
            .filter(|&i| {
                options.lane.windows() && matches!(queries[i].kind, QueryKind::Windowed(_))
            })
            .collect();
        let task = ctx.task_ctx();
        let whole = Arc::new(
            TaskContext::from(&ctx.state())
                .with_session_config(task.session_config().clone().with_batch_size(usize::MAX)),
        );
        let compactor = if options.background_compaction && !windowed.is_empty() {
            Some(Compactor::spawn(
                Arc::clone(&whole),
                settle.clone(),
                options.lane.compaction_nice(),
            )?)
        } else {
            None
        };
        Ok(Self {
            task,
            whole,
            ctx,
            source,
            // The sweep feeds per-ping queries only.
            sweep: sweep.filter(|_| options.lane.per_ping()),
            queries,
            windowed,
            stage_slots,
            lookups: lookups
                .iter()
                .map(|(n, t)| (n.clone(), Arc::clone(&t.lookup)))
                .collect(),
            sink_names,
            watermark_cell,
            settle,
            sinks,
            captures,
            late_sink,
            clock: Clock {
                bound_ms,
                max_ts: i64::MIN,
                flushed: false,
            },
            stats,
            fingerprint,
            failed_without_effect: false,
            compaction_turn: 0,
            compactor,
            lane: options.lane,
            state_logged: Instant::now(),
        })
    }

    /// The DataFusion context (UDFs, views), e.g. to plan ad-hoc queries in tests.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Current watermark (ms), `None` before the first ping.
    pub fn watermark(&self) -> Option<i64> {
        let wm = self.clock.watermark();
        (wm != i64::MIN).then_some(wm)
    }

    /// Latest event time seen (ms), `None` before the first ping.
    pub fn max_event_time(&self) -> Option<i64> {
        (self.clock.max_ts != i64::MIN).then_some(self.clock.max_ts)
    }

    /// Compactions run on the compaction thread and filed so far (0 without one).
    pub fn background_compactions(&self) -> u64 {
        self.compactor.as_ref().map_or(0, |c| c.filed)
    }

    /// The queries it runs.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Rows and bytes held as window state.
    pub fn state_size(&self) -> (usize, usize) {
        self.queries
            .iter()
            .filter_map(|q| match &q.kind {
                QueryKind::Windowed(w) => Some(match &w.state {
                    WindowState::Hop(h) => h.size(),
                    WindowState::Session(s) => s.size(),
                }),
                QueryKind::PerBatch(_) => None,
            })
            .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2))
    }

    /// Rows captured for `sink` so far (only with [`EngineOptions::capture_sinks`]),
    /// taken out of the capture.
    pub fn take_captured(&self, sink: &str) -> Vec<RecordBatch> {
        self.captures
            .get(sink)
            .map(MemorySink::take)
            .unwrap_or_default()
    }

    /// Names of the sinks in use.
    pub fn sink_names(&self) -> &[String] {
        &self.sink_names
    }

    /// Whether the last [`Engine::process`] error left the engine as it was before the
    /// call (a per-ping query failed: no state, clock, counter or output changed), so
    /// that its pings may be processed again, e.g. in parts. Otherwise the queries
    /// that ran before the failing one kept their effect.
    pub fn failed_without_effect(&self) -> bool {
        self.failed_without_effect
    }

    /// Processes one batch of valid pings (schema: `ping_schema()`).
    pub async fn process(&mut self, pings: &RecordBatch) -> Result<(), EngineError> {
        self.failed_without_effect = false;
        if pings.num_rows() == 0 {
            return Ok(());
        }
        let Some(source) = self.source.as_ref() else {
            self.stats.pings_in += pings.num_rows() as u64;
            return Ok(());
        };
        if pings.schema().fields() != ping_schema().fields() {
            return Err(EngineError::Internal(
                "engine input must have the ping schema (ping_schema())".into(),
            ));
        }
        let ts = pings
            .column(col::EVENT_TIME)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| EngineError::Internal("event_time is not a ms timestamp".into()))?;
        let batch = pings
            .project(&source.projection)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let clock_before = self.clock;
        let (late_mask, n_late) = if self.clock.flushed {
            let n = pings.num_rows();
            (BooleanArray::from(vec![true; n]), n as u64)
        } else {
            self.clock.observe(ts)
        };
        let slot = source.slot.clone();

        // Per-batch queries see every ping, late ones included. Their output is
        // delivered after the windows took the batch; until then nothing has changed.
        slot.set(vec![batch.clone()]);
        let mut pending = Vec::new();
        for (i, q) in self.queries.iter().enumerate() {
            if let QueryKind::PerBatch(p) = &q.kind
                && q.inputs.contains(&PINGS)
                && self.lane.per_ping()
            {
                match run(p, &self.task, &q.pos).await {
                    Ok(out) => pending.push((i, out)),
                    Err(e) => {
                        slot.clear();
                        self.clock = clock_before;
                        self.failed_without_effect = true;
                        return Err(e);
                    }
                }
            }
        }
        if self.lane.per_ping() {
            self.stats.pings_in += pings.num_rows() as u64;
            self.stats.late += n_late;
        }
        for (i, out) in &pending {
            if let Some(q) = self.queries.get(*i) {
                count(&mut self.stats, &q.name, batch.num_rows(), out);
            }
        }
        let ontime = if n_late > 0 {
            if let Some(ls) = self.late_sink {
                let late = filter_record_batch(&batch, &late_mask).map_err(internal)?;
                emit(
                    &mut self.sinks,
                    &self.sink_names,
                    &mut self.stats,
                    ls,
                    None,
                    &[late],
                )?;
            }
            if self.windowed.is_empty() {
                batch
            } else {
                let keep = not(&late_mask).map_err(internal)?;
                filter_record_batch(&batch, &keep).map_err(internal)?
            }
        } else {
            batch
        };
        let windowed = self.windowed.len();
        if ontime.num_rows() > 0 && windowed > 0 {
            let n = ontime.num_rows();
            slot.set(vec![ontime]);
            self.collect_compaction(false)?;
            // In the background one compaction runs at a time.
            let mut upper = match &self.compactor {
                Some(c) => usize::from(c.in_flight.is_none()),
                None => UPPER_COMPACTIONS_PER_BATCH,
            };
            let settle = (&self.settle, self.clock.watermark());
            // The windowed queries, from a different one each batch: the first with a
            // compaction due gets the budget, so none waits behind the others.
            let first = self.compaction_turn % windowed;
            self.compaction_turn = self.compaction_turn.wrapping_add(1);
            for k in 0..windowed {
                let index = self.windowed[(first + k) % windowed];
                let q = &mut self.queries[index];
                if let QueryKind::Windowed(w) = &mut q.kind {
                    let background = self.compactor.as_mut().map(|c| (c, index));
                    accumulate(
                        w,
                        (&self.task, &self.whole),
                        &q.pos,
                        (&mut upper, background),
                        settle,
                    )
                    .await?;
                    count(&mut self.stats, &q.name, n, &[]);
                }
            }
        }
        slot.clear();
        self.deliver(pending).await?;
        self.log_state();
        self.advance().await
    }

    /// Every [`STATE_LOG_EVERY`], each windowed query's state by bucket and level (debug).
    fn log_state(&mut self) {
        if !tracing::enabled!(tracing::Level::DEBUG)
            || self.state_logged.elapsed() < STATE_LOG_EVERY
        {
            return;
        }
        self.state_logged = Instant::now();
        for q in &self.queries {
            if let QueryKind::Windowed(w) = &q.kind {
                let state = match &w.state {
                    WindowState::Hop(h) => h.describe(),
                    WindowState::Session(s) => {
                        let (rows, bytes) = s.size();
                        format!("{rows} rows, {bytes} bytes")
                    }
                };
                tracing::debug!(query = %q.name, watermark = self.clock.watermark(), %state, "window state");
            }
        }
    }

    /// Files the result of the background compaction, if it is done (`wait`: once it is).
    /// A failed one leaves its parts as they were, to be compacted later; a compaction
    /// thread that died leaves the engine compacting on its own thread from then on.
    fn collect_compaction(&mut self, wait: bool) -> Result<(), EngineError> {
        let Some(c) = self.compactor.as_mut() else {
            return Ok(());
        };
        if c.in_flight.is_none() {
            return Ok(());
        }
        let done = if wait {
            c.done.recv().map_err(|_| ())
        } else {
            match c.done.try_recv() {
                Ok(d) => Ok(d),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(()),
            }
        };
        let Some((index, comp)) = c.in_flight.take() else {
            return Ok(());
        };
        if done.is_err() {
            tracing::error!("the compaction thread stopped; compacting on the engine thread");
            self.compactor = None;
        }
        let Some(q) = self.queries.get_mut(index) else {
            return Ok(());
        };
        let QueryKind::Windowed(w) = &mut q.kind else {
            return Ok(());
        };
        let WindowState::Hop(h) = &mut w.state else {
            return Ok(());
        };
        match done {
            Ok(Done {
                result: Ok(reduced),
                ms,
            }) => {
                let one = match one_batch(&w.partial_schema, reduced) {
                    Ok(one) => one,
                    Err(e) => {
                        // The parts stay as they were, no longer marked.
                        h.put_back(comp);
                        return Err(e);
                    }
                };
                log_compaction(&q.pos, &comp, &one, ms, true);
                h.compacted(&comp, one);
                if let Some(c) = self.compactor.as_mut() {
                    c.filed += 1;
                }
            }
            Ok(Done { result: Err(e), .. }) => {
                tracing::error!(query = %q.pos, error = %e, "background compaction failed; its parts stay as they were");
                h.put_back(comp);
            }
            Err(()) => h.put_back(comp),
        }
        Ok(())
    }

    /// Waits for the compaction thread's compaction, if one is in flight, and files its
    /// result, so what happens next does not depend on how fast that thread is.
    pub fn wait_for_compaction(&mut self) -> Result<(), EngineError> {
        self.collect_compaction(true)
    }

    /// Between batches: files the compaction thread's result, if it is done, and hands
    /// it the next compaction due, the windowed queries taking turns. Whether one is in
    /// flight (false: none is due, or there is no compaction thread). A lane that waits
    /// for requests to gather calls it meanwhile, so its window state is compacted while
    /// it waits rather than one compaction per batch.
    pub fn compact_in_background(&mut self) -> Result<bool, EngineError> {
        self.collect_compaction(false)?;
        let Some(c) = self.compactor.as_mut() else {
            return Ok(false);
        };
        if c.in_flight.is_some() {
            return Ok(true);
        }
        let watermark = self.clock.watermark();
        let n = self.windowed.len();
        for k in 0..n {
            let index = self.windowed[(self.compaction_turn + k) % n];
            let Some(q) = self.queries.get_mut(index) else {
                continue;
            };
            if let QueryKind::Windowed(w) = &mut q.kind
                && dispatch(w, &q.pos, (c, index), watermark)?
            {
                self.compaction_turn = self.compaction_turn.wrapping_add(k + 1);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// End of input: the watermark jumps to +infinity, every open window is emitted,
    /// sinks are flushed. Later pings count as late.
    pub async fn finish(&mut self) -> Result<(), EngineError> {
        self.collect_compaction(true)?;
        self.clock.flushed = true;
        self.advance().await?;
        self.commit()
    }

    /// Flushes every sink.
    pub fn flush(&mut self) -> Result<(), EngineError> {
        for s in &mut self.sinks {
            s.flush()?;
        }
        Ok(())
    }

    /// Commits every sink (a Parquet archive finishes its file): before a checkpoint.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        for s in &mut self.sinks {
            s.commit()?;
        }
        Ok(())
    }

    async fn advance(&mut self) -> Result<(), EngineError> {
        let wm = self.clock.watermark();
        if wm == i64::MIN {
            return Ok(());
        }
        if !self.clock.flushed {
            self.watermark_cell.set(wm);
        }
        let mut pending = Vec::new();
        for &i in &self.windowed {
            let Some(q) = self.queries.get_mut(i) else {
                continue;
            };
            let QueryKind::Windowed(w) = &mut q.kind else {
                continue;
            };
            let (out, windows) = emit_due(w, wm, &self.task, &q.pos).await?;
            self.stats.windows_emitted += windows;
            count(&mut self.stats, &q.name, 0, &out);
            if !out.is_empty() {
                pending.push((i, out));
            }
        }
        self.deliver(pending).await
    }

    /// Hands query output on: to its sink, or (a stage's) to every per-batch query that
    /// reads the stage, one stage at a time so each query sees only the new rows.
    async fn deliver(
        &mut self,
        pending: Vec<(usize, Vec<RecordBatch>)>,
    ) -> Result<(), EngineError> {
        let mut work: VecDeque<(usize, Vec<RecordBatch>)> = pending.into();
        while let Some((qi, batches)) = work.pop_front() {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let Some(q) = self.queries.get(qi) else {
                return Err(EngineError::Internal(format!("no query #{qi}")));
            };
            match q.output {
                Output::Sink(s) => emit(
                    &mut self.sinks,
                    &self.sink_names,
                    &mut self.stats,
                    s,
                    q.sink_schema.as_ref(),
                    &batches,
                )?,
                Output::Stage(j) => {
                    let stream = 1 + j;
                    let Some(slot) = self.stage_slots.get(j) else {
                        return Err(EngineError::Internal(format!("no stage #{j}")));
                    };
                    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    slot.set(batches);
                    let mut result = Ok(());
                    for (k, c) in self.queries.iter().enumerate() {
                        if let QueryKind::PerBatch(p) = &c.kind
                            && c.inputs.contains(&stream)
                        {
                            match run(p, &self.task, &c.pos).await {
                                Ok(out) => {
                                    count(&mut self.stats, &c.name, rows, &out);
                                    work.push_back((k, out));
                                }
                                Err(e) => {
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                    }
                    slot.clear();
                    result?;
                }
            }
        }
        Ok(())
    }

    /// Whether the SQL declares a lease sweep table (`connector = 'lease_sweep'`).
    pub fn has_sweep(&self) -> bool {
        self.sweep.is_some()
    }

    /// Feeds the lease sweep: one row per leased device at event time `at_ms`. Queries
    /// reading the sweep table run on it (e.g. the overdue ladder), their output flows on
    /// like any other. Without a sweep table this does nothing.
    pub async fn sweep(&mut self, device_ids: Vec<String>, at_ms: i64) -> Result<(), EngineError> {
        let Some(sw) = &self.sweep else {
            return Ok(());
        };
        let mut pending = Vec::new();
        for chunk in device_ids.chunks(8192) {
            let n = chunk.len();
            let batch = RecordBatch::try_new(
                sw.schema.clone(),
                vec![
                    Arc::new(arrow::array::StringArray::from_iter_values(chunk)),
                    Arc::new(
                        TimestampMillisecondArray::from(vec![at_ms; n]).with_timezone(window::TZ),
                    ),
                ],
            )
            .map_err(internal)?;
            sw.slot.set(vec![batch]);
            for (i, q) in self.queries.iter().enumerate() {
                if let QueryKind::PerBatch(p) = &q.kind
                    && q.inputs.contains(&SWEEP)
                {
                    let out = run(p, &self.task, &q.pos).await;
                    match out {
                        Ok(out) => {
                            count(&mut self.stats, &q.name, n, &out);
                            pending.push((i, out));
                        }
                        Err(e) => {
                            sw.slot.clear();
                            return Err(e);
                        }
                    }
                }
            }
            sw.slot.clear();
        }
        self.deliver(pending).await?;
        self.flush()
    }

    /// The lease sweep from Redis: lists every lease key (`SCAN` under the sweep table's
    /// `'key_prefix'`, default `lw:lease:`) at the table's `address` (or the configured
    /// Redis URL) and feeds the device ids to [`Self::sweep`] at event time `at_ms`.
    /// Returns the number of devices swept (0 without a sweep table).
    pub async fn sweep_leases(&mut self, at_ms: i64) -> Result<usize, EngineError> {
        let Some(sw) = &self.sweep else {
            return Ok(0);
        };
        let devices = list_leases(&sw.url, &sw.key_prefix)
            .await
            .map_err(|e| EngineError::Sweep(format!("{}: {e}", sw.name)))?;
        let n = devices.len();
        self.sweep(devices, at_ms).await?;
        Ok(n)
    }

    /// The Redis the SQL's lookup tables read (the configured URL, else the first lookup
    /// table's `address`); `None` without lookup tables.
    pub fn redis_url(&self) -> Option<&str> {
        self.lookups
            .first()
            .map(|(_, l)| l.config().redis.url.as_str())
    }

    /// Counters of the Redis alert sinks in use.
    pub fn redis_sink_stats(&self) -> Vec<Arc<crate::sink::redis::SinkStats>> {
        self.sinks.iter().filter_map(|s| s.redis_stats()).collect()
    }

    /// Lookup tables in use and their counters.
    pub fn lookups(&self) -> &[(String, Arc<crate::lookup::RedisLookup>)] {
        &self.lookups
    }
}

/// Device ids of every key under `prefix` (one `SCAN` round trip per 1,000 keys).
async fn list_leases(
    url: &str,
    prefix: &str,
) -> Result<Vec<String>, crate::redis_client::RedisError> {
    let conn =
        crate::redis_client::RedisConn::new(&crate::redis_client::ConnectionConfig::new(url))?;
    let counters = crate::redis_client::RetryCounters::default();
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, keys): (u64, Vec<String>) = conn
            .query(
                crate::redis_client::Request::Cmd(&cmd),
                "SCAN lease keys",
                &counters,
            )
            .await?;
        out.extend(
            keys.into_iter()
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_string)),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `text` with Redis glob metacharacters escaped.
fn glob_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Views in an order where each comes after the views it reads (file order otherwise),
/// so a grading view may name signal views of files sorted after it.
fn view_order<'p>(
    ctx: &SessionContext,
    program: &'p Program,
) -> Result<Vec<&'p sql::ViewDef>, EngineError> {
    let state = ctx.state();
    let names: HashMap<&str, usize> = program
        .views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(program.views.len());
    for v in &program.views {
        let err = |e: datafusion::error::DataFusionError| {
            EngineError::Sql(SqlError::new(
                &v.pos,
                format!("CREATE VIEW {}", v.name),
                e.to_string(),
            ))
        };
        let stmt = state
            .sql_to_statement(&v.query, &datafusion::config::Dialect::Generic)
            .map_err(err)?;
        let refs = state.resolve_table_references(&stmt).map_err(err)?;
        deps.push(
            refs.iter()
                .filter_map(|r| names.get(r.table()).copied())
                .filter(|&d| program.views.get(d).is_some_and(|d| d.name != v.name))
                .collect(),
        );
    }
    let mut done = vec![false; program.views.len()];
    let mut order = Vec::with_capacity(program.views.len());
    while order.len() < program.views.len() {
        let next = (0..program.views.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        let Some(i) = next else {
            let stuck: Vec<&str> = (0..program.views.len())
                .filter(|&i| !done[i])
                .map(|i| program.views[i].name.as_str())
                .collect();
            let first = (0..program.views.len()).find(|&i| !done[i]).unwrap_or(0);
            return Err(EngineError::Sql(SqlError::new(
                &program.views[first].pos,
                "CREATE VIEW",
                format!("views read each other in a cycle: {}", stuck.join(", ")),
            )));
        };
        done[i] = true;
        order.push(&program.views[i]);
    }
    Ok(order)
}

/// The `connector = 'redis'` tables of `program`, connected (lazily) to Redis.
fn lookup_tables(
    program: &Program,
    options: &EngineOptions,
) -> Result<lookup_join::LookupTables, EngineError> {
    let mut out = HashMap::new();
    for t in program
        .tables
        .iter()
        .filter(|t| t.kind == TableKind::Lookup)
    {
        let err = |m: String| {
            EngineError::Sql(SqlError::new(&t.pos, format!("CREATE TABLE {}", t.name), m))
        };
        let key = t
            .columns
            .iter()
            .find(|c| c.metadata_from.as_deref() == Some("key"))
            .ok_or_else(|| {
                err("a Redis lookup table needs its key column: `key TEXT METADATA FROM 'key' PRIMARY KEY`".into())
            })?;
        let options_text: Vec<(String, String)> = t
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.as_text()))
            .collect();
        let mut config = crate::lookup::LookupConfig::from_sql_options(
            options_text.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| err(e.join("; ")))?;
        if let Some(url) = &options.redis_url {
            config.redis.url = url.clone();
        }
        config.key_column = key.name.clone();
        let values = arrow::datatypes::Schema::new(
            t.columns
                .iter()
                .filter(|c| c.name != key.name)
                .map(|c| arrow::datatypes::Field::new(&c.name, c.data_type.clone(), true))
                .collect::<Vec<_>>(),
        );
        let lookup = crate::lookup::RedisLookup::new(config, Arc::new(values))
            .map_err(|e| err(e.to_string()))?;
        out.insert(
            t.name.clone(),
            LookupTable {
                key_column: key.name.clone(),
                columns: t.columns.iter().map(|c| c.name.clone()).collect(),
                lookup: Arc::new(lookup),
            },
        );
    }
    Ok(Arc::new(out))
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// Runs a compiled plan once over what its slots hold now.
///
/// Each execution of a DataFusion plan registers fresh operator metrics in the plan's
/// nodes, and they are never freed: a plan executed for every batch would grow without
/// bound (hundreds of KB per batch). So every run executes a fresh copy of the plan
/// (`reset_plan_states`: new nodes over the same slots and expressions, no planning).
async fn run(
    plan: &Arc<dyn ExecutionPlan>,
    task: &Arc<TaskContext>,
    pos: &Pos,
) -> Result<Vec<RecordBatch>, EngineError> {
    let query = |e: datafusion::error::DataFusionError| EngineError::Query {
        pos: pos.clone(),
        message: e.to_string(),
    };
    let fresh = datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(plan))
        .map_err(query)?;
    collect(fresh, task.clone()).await.map_err(query)
}

/// A compaction's result as one batch (it comes as one: see `Engine::whole`).
fn one_batch(
    schema: &SchemaRef,
    mut reduced: Vec<RecordBatch>,
) -> Result<RecordBatch, EngineError> {
    match reduced.len() {
        1 => Ok(reduced.remove(0)),
        _ => arrow::compute::concat_batches(schema, &reduced).map_err(internal),
    }
}

/// Logs compaction `c` of query `pos`, which gave `out` in `ms` (on the compaction
/// thread: `background`), at debug: the bytes in and out show what it settled.
fn log_compaction(
    pos: &Pos,
    c: &window::Compaction,
    out: &RecordBatch,
    ms: u128,
    background: bool,
) {
    tracing::debug!(
        query = %pos,
        bucket = c.bucket,
        level = c.level,
        into = c.into,
        rows = c.rows(),
        bytes = c.bytes(),
        rows_out = out.num_rows(),
        bytes_out = out.get_array_memory_size(),
        ms,
        background,
        "compaction"
    );
}

/// Runs the pre-window plan on the on-time batch in the source slot and files the
/// result as window state, then compacts its slide buckets: every compaction due at
/// level 0, and at most `upper` of higher levels (counted down). With `background` (the
/// compaction thread and this query's index), at most `upper` compactions of any level
/// go to the thread instead, their parts left in place until
/// [`Engine::collect_compaction`] files the result; level 0 is compacted here only past
/// [`BACKSTOP_FANIN`].
///
/// `settle` is the engine's [`SettledSpans`] and the watermark after this batch. No row
/// older than the watermark enters window state from now on, and the rows of each part
/// lie between its floor and ceiling, so a compaction's result will only ever be merged
/// with rows at or after the watermark or inside the other parts' `[floor, ceil]`:
/// `max_speed_kmh` settles its fixes everywhere else (in queries where
/// [`Windowed::settles`]).
async fn accumulate(
    w: &mut Windowed,
    (task, whole): (&Arc<TaskContext>, &Arc<TaskContext>),
    pos: &Pos,
    (upper, mut background): (&mut usize, Option<(&mut Compactor, usize)>),
    (settled, watermark): (&SettledSpans, i64),
) -> Result<(), EngineError> {
    let pre = run(&w.pre, task, pos).await?;
    let mut with_window = Vec::with_capacity(pre.len());
    for b in pre.into_iter().filter(|b| b.num_rows() > 0) {
        let ts = window::ts_values(b.column(w.ts_index).as_ref()).map_err(internal)?;
        let key = match w.spec {
            // The slide bucket's start (see `window::key_type`).
            WindowSpec::Hop { slide_ms, .. } => window::hop_keys(
                ts.iter()
                    .map(|t| t.div_euclid(slide_ms) * slide_ms)
                    .collect(),
            ),
            // Filled in when the session closes.
            WindowSpec::Session { .. } => window::window_array(ts.clone(), ts.clone()),
        };
        let min_ts = ts.iter().copied().min().unwrap_or(i64::MAX);
        let max_ts = ts.iter().copied().max().unwrap_or(i64::MIN);
        let mut cols = b.columns().to_vec();
        cols.push(key);
        let rb = RecordBatch::try_new(w.agg_in_schema.clone(), cols).map_err(internal)?;
        with_window.push((rb, (min_ts, max_ts)));
    }
    match (&mut w.state, w.spec) {
        (WindowState::Hop(h), _) => {
            if with_window.is_empty() {
                return Ok(());
            }
            let floor = with_window
                .iter()
                .map(|(_, t)| t.0)
                .min()
                .unwrap_or(i64::MIN);
            let ceil = with_window
                .iter()
                .map(|(_, t)| t.1)
                .max()
                .unwrap_or(i64::MAX);
            w.agg_in_slot
                .set(with_window.into_iter().map(|(b, _)| b).collect());
            // Unbounded batch size: one part per bucket, not one per 8,192 rows of it.
            let partial = run(&w.partial, whole, pos).await;
            w.agg_in_slot.clear();
            for p in partial? {
                h.insert(&p, w.window_index, (floor, ceil))
                    .map_err(internal)?;
            }
            let closed_at = match w.spec {
                WindowSpec::Hop { slide_ms, .. } => watermark.saturating_sub(slide_ms),
                WindowSpec::Session { .. } => i64::MIN,
            };
            let settle_at = w.settles.then_some(watermark);
            loop {
                let (fanin, max_level) = match (&background, *upper > 0) {
                    (None, true) => (COMPACT_FANIN, MAX_COMPACTION_LEVEL),
                    (None, false) => (COMPACT_FANIN, 0),
                    (Some(_), _) => (BACKSTOP_FANIN, 0),
                };
                let Some(c) = h.take_compaction(fanin, max_level, closed_at, false, settle_at)
                else {
                    break;
                };
                if c.level > 0 {
                    *upper -= 1;
                }
                let started = std::time::Instant::now();
                w.final_slot.set(c.batches());
                if w.settles {
                    settled.set_outside(c.occupied(watermark));
                }
                let reduced = run(&w.reduce, whole, pos).await;
                settled.clear();
                w.final_slot.clear();
                let reduced = match reduced.and_then(|r| one_batch(&w.partial_schema, r)) {
                    Ok(r) => r,
                    Err(e) => {
                        // The parts stay as they were: state is never dropped.
                        h.put_back(c);
                        return Err(e);
                    }
                };
                log_compaction(pos, &c, &reduced, started.elapsed().as_millis(), false);
                h.compacted(&c, reduced);
            }
            if *upper > 0
                && let Some((compactor, index)) = background.as_mut()
                && dispatch(w, pos, (compactor, *index), watermark)?
            {
                *upper -= 1;
            }
        }
        (WindowState::Session(s), WindowSpec::Session { gap_ms }) => {
            for (b, (min_ts, _)) in with_window {
                s.insert(b, min_ts, gap_ms);
            }
        }
        (WindowState::Session(_), WindowSpec::Hop { .. }) => {
            return Err(EngineError::Internal(
                "session state on a hop window".into(),
            ));
        }
    }
    Ok(())
}

/// Hands the next compaction due of `w` to the compaction thread, which is idle, as
/// query `index`: whether there was one. Its parts stay in place, marked busy, until
/// [`Engine::collect_compaction`] files the result.
fn dispatch(
    w: &mut Windowed,
    pos: &Pos,
    (compactor, index): (&mut Compactor, usize),
    watermark: i64,
) -> Result<bool, EngineError> {
    let (WindowState::Hop(h), WindowSpec::Hop { slide_ms, .. }) = (&mut w.state, w.spec) else {
        return Ok(false);
    };
    let closed_at = watermark.saturating_sub(slide_ms);
    let settle_at = w.settles.then_some(watermark);
    let Some(c) = h.take_compaction(
        COMPACT_FANIN,
        MAX_COMPACTION_LEVEL,
        closed_at,
        true,
        settle_at,
    ) else {
        return Ok(false);
    };
    let slot = slot::Slot::default();
    slot.set(c.batches());
    let plan = slot::SlotExec::new(Arc::clone(&w.partial_schema), None, slot).and_then(|input| {
        Arc::clone(&w.reduce).replace_children(
            vec![Arc::new(input)],
            datafusion::physical_plan::ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    });
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            // The parts stay as they were, no longer marked.
            h.put_back(c);
            return Err(internal(e));
        }
    };
    let occupied = w.settles.then(|| c.occupied(watermark));
    let job = Job {
        plan,
        occupied,
        pos: pos.clone(),
    };
    if compactor.jobs.send(job).is_ok() {
        compactor.in_flight = Some((index, c));
        Ok(true)
    } else {
        h.put_back(c);
        Ok(false)
    }
}

/// Emits every window the watermark has passed: `(rows, windows emitted)`.
async fn emit_due(
    w: &mut Windowed,
    wm: i64,
    task: &Arc<TaskContext>,
    pos: &Pos,
) -> Result<(Vec<RecordBatch>, u64), EngineError> {
    let (final_in, windows) = match (&mut w.state, w.spec) {
        (WindowState::Hop(h), WindowSpec::Hop { slide_ms, width_ms }) => {
            let due = h.due(wm, slide_ms, width_ms);
            if due.is_empty() {
                return Ok((vec![], 0));
            }
            let n = due.len() as u64;
            let mut batches = Vec::new();
            for (start, parts) in due {
                for p in parts {
                    let col = window::hop_key(start, p.num_rows());
                    batches.push(window::with_column(&p, w.window_index, col).map_err(internal)?);
                }
            }
            (batches, n)
        }
        (WindowState::Session(s), WindowSpec::Session { gap_ms }) => {
            let window_col = w.agg_in_schema.fields().len() - 1;
            let Some((rows, sessions)) = s
                .due(wm, gap_ms, w.ts_index, window_col, &w.keys)
                .map_err(internal)?
            else {
                return Ok((vec![], 0));
            };
            w.agg_in_slot.set(vec![rows]);
            let partial = run(&w.partial, task, pos).await;
            w.agg_in_slot.clear();
            (partial?, sessions)
        }
        _ => {
            return Err(EngineError::Internal(
                "window state does not match its spec".into(),
            ));
        }
    };
    let started = std::time::Instant::now();
    let rows_in: usize = final_in.iter().map(RecordBatch::num_rows).sum();
    w.final_slot.set(final_in);
    let finals = run(&w.final_agg, task, pos).await;
    w.final_slot.clear();
    tracing::debug!(
        query = %pos,
        windows,
        rows = rows_in,
        ms = started.elapsed().as_millis(),
        "windows emitted"
    );
    let mut renamed = Vec::new();
    for b in finals? {
        if b.num_rows() > 0 {
            let mut cols = b.columns().to_vec();
            if let (WindowSpec::Hop { width_ms, .. }, Some(key)) =
                (w.spec, cols.get_mut(w.window_index))
            {
                *key = window::hop_window_column(key.as_ref(), width_ms).map_err(internal)?;
            }
            renamed.push(RecordBatch::try_new(w.post_schema.clone(), cols).map_err(internal)?);
        }
    }
    if renamed.is_empty() {
        return Ok((vec![], windows));
    }
    w.post_slot.set(renamed);
    let out = run(&w.post, task, pos).await;
    w.post_slot.clear();
    Ok((out?, windows))
}

/// Writes query output to its sink, renamed/cast to the sink's declared columns.
fn emit(
    sinks: &mut [Box<dyn Sink>],
    names: &[String],
    stats: &mut EngineStats,
    sink: usize,
    schema: Option<&SchemaRef>,
    batches: &[RecordBatch],
) -> Result<(), EngineError> {
    let (Some(s), Some(name)) = (sinks.get_mut(sink), names.get(sink)) else {
        return Err(EngineError::Internal(format!("no sink #{sink}")));
    };
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let b = match schema {
            Some(schema) => {
                let cols: Vec<ArrayRef> = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| {
                        if c.data_type() == f.data_type() {
                            Ok(c.clone())
                        } else {
                            arrow::compute::cast(c, f.data_type())
                        }
                    })
                    .collect::<Result<_, _>>()
                    .map_err(internal)?;
                RecordBatch::try_new(schema.clone(), cols).map_err(internal)?
            }
            None => b.clone(),
        };
        s.write(&b)?;
        *stats.rows_out.entry(name.clone()).or_default() += b.num_rows() as u64;
    }
    Ok(())
}

fn read_sql_files(dir: &Path) -> Result<Vec<(String, String)>, EngineError> {
    let io = |path: &Path, source| {
        EngineError::Load(LoadError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::Load(LoadError::Empty(
            dir.display().to_string(),
        )));
    }
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| io(f, e))?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, text))
        })
        .collect()
}

/// FNV-1a over byte slices: a stable fingerprint of the SQL a checkpoint belongs to.
fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::physical_plan::execution_plan::reset_plan_states;

    /// Names of the nodes of `before` whose properties `after` (its reset) recomputed.
    fn recomputed(
        before: &Arc<dyn ExecutionPlan>,
        after: &Arc<dyn ExecutionPlan>,
        out: &mut Vec<String>,
    ) {
        if !Arc::ptr_eq(before.properties(), after.properties()) {
            out.push(before.name().to_string());
        }
        for (b, a) in before.children().into_iter().zip(after.children()) {
            recomputed(b, a, out);
        }
    }

    /// Every physical plan of the product's `sql/`, with its query's name.
    async fn product_plans() -> Vec<(String, Arc<dyn ExecutionPlan>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let options = EngineOptions {
            capture_sinks: true,
            ..EngineOptions::default()
        };
        let engine = Engine::from_dir(&dir, &options).await.unwrap();
        let mut plans = Vec::new();
        for q in &engine.queries {
            match &q.kind {
                QueryKind::PerBatch(p) => plans.push((q.name.clone(), Arc::clone(p))),
                QueryKind::Windowed(w) => {
                    for p in [&w.pre, &w.partial, &w.reduce, &w.final_agg, &w.post] {
                        plans.push((q.name.clone(), Arc::clone(p)));
                    }
                }
            }
        }
        assert!(plans.len() > 20, "{}", plans.len());
        plans
    }

    /// `run` resets every plan before each run. A node whose properties are recomputed
    /// makes every node above it recompute its own, which cost the engine thread more
    /// than the product's per-ping rules' projections themselves did.
    #[tokio::test(flavor = "current_thread")]
    async fn resetting_the_product_plans_recomputes_no_properties() {
        let plans = product_plans().await;
        let mut bad = Vec::new();
        for (name, plan) in &plans {
            let fresh = reset_plan_states(Arc::clone(plan)).unwrap();
            let mut nodes = Vec::new();
            recomputed(plan, &fresh, &mut nodes);
            if !nodes.is_empty() {
                bad.push(format!("{name}: {nodes:?}"));
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    }

    /// Only the product's query with a `max_speed_kmh` settles: the others have nothing
    /// to settle, and their parts need not wait for the watermark to be merged.
    #[tokio::test(flavor = "current_thread")]
    async fn only_the_speed_query_settles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let engine = Engine::from_dir(&dir, &EngineOptions::default())
            .await
            .unwrap();
        let mut windowed = Vec::new();
        for q in &engine.queries {
            if let QueryKind::Windowed(w) = &q.kind {
                windowed.push((q.name.clone(), w.settles));
            }
        }
        assert!(windowed.len() > 3, "{windowed:?}");
        let settling: Vec<&str> = windowed
            .iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(settling, ["impossible_travel_signals"], "{windowed:?}");
    }

    fn names(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
        out.push(plan.name().to_string());
        for c in plan.children() {
            names(c, out);
        }
    }

    /// Every projection of the product plans is a `LeanProjectionExec`: a
    /// `ProjectionExec` formats each of its expressions as SQL on every run.
    #[tokio::test(flavor = "current_thread")]
    async fn the_product_plans_project_without_metrics() {
        let mut all = Vec::new();
        for (_, plan) in product_plans().await {
            names(&plan, &mut all);
        }
        assert!(all.iter().any(|n| n == "LeanProjectionExec"), "{all:?}");
        assert!(!all.iter().any(|n| n == "ProjectionExec"), "{all:?}");
    }
}
