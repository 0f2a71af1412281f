//! The `leasewatch` command line: `replay`, `check`, `state load`, `run`, `report`.

use crate::config::Config;
use crate::engine::{Blame, Engine, EngineError, EngineOptions, Lane};
use crate::replay::{self, ReplayError, ReplayOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// LeaseWatch: real-time risk signals for phone-leasing businesses.
#[derive(Debug, Parser)]
#[command(name = "leasewatch", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline over NDJSON or Parquet ping files as fast as it goes, then print
    /// a summary (pings in, rejected, late, rows out per sink, seconds).
    Replay {
        /// Ping files (`.parquet`: Parquet; anything else: NDJSON).
        #[arg(long = "input", required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Configuration file (`leasewatch.toml`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of SQL files (overrides `engine.sql_dir`).
        #[arg(long)]
        sql: Option<PathBuf>,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Pings per batch (overrides `replay.batch_rows`).
        #[arg(long)]
        batch_rows: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Threads decoding NDJSON (default: one per available core).
        #[arg(long)]
        decode_threads: Option<usize>,
        /// First time a decode-only pass over the same inputs (decode with arrow-json
        /// alone and validate, no queries) and report its rate in the summary next to
        /// the run's.
        #[arg(long)]
        measure_decode: bool,
        /// Decode NDJSON with arrow-json alone. By default a decoder specialised to
        /// ping lines reads what it can (the same rows, several times faster) and
        /// arrow-json the rest.
        #[arg(long)]
        arrow_json: bool,
    },
    /// Load and plan the SQL folder, report problems, exit.
    Check {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of SQL files (overrides `engine.sql_dir`).
        #[arg(long)]
        sql: Option<PathBuf>,
    },
    /// Lease and credit state in Redis.
    State {
        /// What to do with state.
        #[command(subcommand)]
        action: StateCommand,
    },
    /// Serve HTTP ingest into the WAL and run the pipeline from it until SIGTERM/SIGINT:
    /// the per-ping rules and the windows follow the WAL on threads of their own
    /// (`engine.split_lanes`); each restores its newest checkpoint (`<wal.dir>/checkpoints`,
    /// `<wal.dir>/checkpoints-windowed`), replays the WAL after it, checkpoints every
    /// `engine.checkpoint_interval_secs` and once more on stop.
    /// Prints `listening on http://ADDR` to stderr (`ingest.listen` may use port 0).
    /// Sinks get every acknowledged ping exactly once, across clean stops and crashes.
    Run {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write an HTML risk report of an alert archive (Parquet files of alert rows, in
    /// ARCHIVE and its subfolders): risk by signal, grade and area, overdue rate by DPD
    /// bucket, the collection funnel and the top devices, as tables and inline SVG
    /// charts in one self-contained file. Prints a one-line summary.
    Report {
        /// The archive folder.
        #[arg(long)]
        archive: PathBuf,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `leasewatch state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Load lease and/or credit files (NDJSON, CSV or Parquet, by extension) into Redis as
    /// JSON strings under `{prefix}lease:{device_id}` / `{prefix}credit:{customer_id}`.
    /// Bad rows are reported with their line and reason; the rest is loaded.
    Load {
        /// Lease state file.
        #[arg(long)]
        leases: Option<PathBuf>,
        /// Credit state file.
        #[arg(long)]
        credit: Option<PathBuf>,
        /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` with feature `tls`).
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Key prefix.
        #[arg(long, default_value = leasewatch_schemas::DEFAULT_PREFIX)]
        prefix: String,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Also write the report (counts and rejected rows) as JSON to this file.
        #[arg(long)]
        report_json: Option<PathBuf>,
    },
}

/// A failure of a command, with the process exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Engine failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Replay failure.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Writing the summary failed.
    #[error("writing {path}: {message}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// `state load` failure.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// `run` failure.
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    /// `report` failure.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

impl CliError {
    /// 2: the user's to fix; 3: an outside system; 70: a bug.
    pub fn exit_code(&self) -> i32 {
        let blame = match self {
            Self::Config(_) => Blame::User,
            Self::Run(e) => e.blame(),
            Self::Report(e) => e.blame(),
            Self::State(e) => state_blame(e),
            Self::Engine(e) | Self::Replay(ReplayError::Engine(e)) => e.blame(),
            Self::Replay(ReplayError::Format { .. }) => Blame::User,
            Self::Replay(ReplayError::Read { .. }) | Self::Output { .. } => Blame::Outside,
            Self::Replay(ReplayError::Internal(_)) => Blame::Internal,
        };
        match blame {
            Blame::User => 2,
            Blame::Outside => 3,
            Blame::Internal => 70,
        }
    }
}

fn state_blame(e: &crate::state::StateError) -> Blame {
    use crate::redis_client::RedisError;
    use crate::state::StateError;
    match e {
        StateError::Input { .. } | StateError::NothingToLoad => Blame::User,
        StateError::Redis(RedisError::Config(_)) => Blame::User,
        StateError::Redis(RedisError::Unavailable { .. } | RedisError::Refused { .. }) => {
            Blame::Outside
        }
        StateError::Redis(RedisError::Internal(_)) => Blame::Internal,
    }
}

fn load_config(path: Option<&PathBuf>, sql: Option<&PathBuf>) -> Result<Config, CliError> {
    let mut c = Config::load(path.map(PathBuf::as_path), std::env::vars())?;
    if let Some(s) = sql {
        c.engine.sql_dir = s.clone();
    }
    Ok(c)
}

/// The engine options `c` sets (one engine running every query, compacting between
/// batches); `leasewatch run` changes the last two.
pub(crate) fn engine_options(c: &Config) -> EngineOptions {
    EngineOptions {
        capture_sinks: false,
        late_sink: c.engine.late_sink.clone(),
        geofences: c.engine.geofences.clone(),
        redis_url: c.engine.redis_url.clone(),
        background_compaction: false,
        lane: Lane::All,
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Replay {
            inputs,
            config,
            sql,
            summary_json,
            batch_rows,
            no_progress,
            decode_threads,
            measure_decode,
            arrow_json,
        } => {
            let c = load_config(config.as_ref(), sql.as_ref())?;
            let mut engine = Engine::from_dir(&c.engine.sql_dir, &engine_options(&c)).await?;
            let opts = ReplayOptions {
                batch_rows: batch_rows.unwrap_or(c.replay.batch_rows).max(1),
                progress: c.replay.progress && !no_progress,
                limits: c.limits(),
                now_ms: None,
                decode_threads: decode_threads.unwrap_or(0),
                measure_decode,
                arrow_json_only: arrow_json,
                ..ReplayOptions::default()
            };
            let summary = replay::replay(&mut engine, &inputs, &opts).await?;
            eprint!("{}", summary.to_text());
            for s in summary.rejected_samples.iter().take(5) {
                eprintln!("  rejected {s}");
            }
            if let Some(path) = summary_json {
                let out = |e: &dyn std::fmt::Display| CliError::Output {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let text = serde_json::to_string_pretty(&summary).map_err(|e| out(&e))?;
                std::fs::write(&path, text + "\n").map_err(|e| out(&e))?;
            }
            Ok(())
        }
        Command::Check { config, sql } => {
            let c = load_config(config.as_ref(), sql.as_ref())?;
            let engine = Engine::from_dir(
                &c.engine.sql_dir,
                &EngineOptions {
                    capture_sinks: true,
                    ..engine_options(&c)
                },
            )
            .await?;
            eprintln!(
                "{}: ok ({} sinks: {})",
                c.engine.sql_dir.display(),
                engine.sink_names().len(),
                engine.sink_names().join(", ")
            );
            Ok(())
        }
        Command::State {
            action:
                StateCommand::Load {
                    leases,
                    credit,
                    redis,
                    prefix,
                    no_progress,
                    report_json,
                },
        } => {
            let opts = crate::state::LoadOptions {
                leases,
                credit,
                redis: crate::redis_client::ConnectionConfig::new(redis),
                prefix,
                progress: !no_progress,
                ..crate::state::LoadOptions::default()
            };
            let report = crate::state::load_state(&opts).await?;
            for f in [&report.leases, &report.credit].into_iter().flatten() {
                eprintln!(
                    "{}: loaded {}, rejected {}",
                    f.path.display(),
                    f.loaded,
                    f.rejected
                );
                for r in f.rejects.iter().take(10) {
                    eprintln!("  line {}: {}", r.line, r.reason);
                }
            }
            if let Some(path) = report_json {
                let out = |e: &dyn std::fmt::Display| CliError::Output {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let text = serde_json::to_string_pretty(&report).map_err(|e| out(&e))?;
                std::fs::write(&path, text + "\n").map_err(|e| out(&e))?;
            }
            Ok(())
        }
        Command::Run { config } => {
            let c = load_config(config.as_ref(), None)?;
            crate::run::run(&c).await?;
            Ok(())
        }
        Command::Report { archive, out } => {
            let summary =
                crate::report::report(&crate::report::ReportOptions { archive, out }).await?;
            println!("{}", summary.to_line());
            Ok(())
        }
    }
}
