//! `leasewatch-load score`: detection quality of an alert archive against a fleet's
//! ground truth (recall and precision per signal, false alerts on tricky episodes).
//!
//! Flow: `truth.csv`, `tricky.csv`, `manifest.json` (`input.rs`) and the Parquet alert
//! archive, de-duplicated by `alert_id` (`archive.rs`) -> matching alerts to incidents
//! and tricky episodes (`matching.rs`) -> an aligned table or one JSON object
//! (`report.rs`).

mod archive;
mod input;
mod matching;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use matching::Slack;

/// The default slacks, as shown by `--help` (kept in step with
/// [`matching::DEFAULT_SLACK_MIN`] by a test).
pub const SLACK_HELP: &str = "\
Matching: an alert matches an incident of the same kind on the same device when the
alert interval [window_start or event_time, window_end or event_time] overlaps the
incident span [start_ms - slack, end_ms + slack] (bounds included). Alerts are
de-duplicated by alert_id first. A false alert on a tricky episode is an alert (any
signal but overdue) that matches no incident and overlaps a tricky episode span
(+ the alert signal's slack) on the same device.

Default slack per signal (its detection window; --slack-minutes sets one for all):
  sim_mismatch          15 min   per ping
  sim_swap_frequent    360 min   hop window 6 h
  out_of_area           15 min   per ping
  risky_place_dwell    120 min   hop window 2 h
  abnormal_dwell        60 min   stay of 6 h, reported while it lasts
  impossible_travel     30 min   hop window 30 min
  cross_border          15 min   per ping
  device_dark           60 min   gap, reported when it is seen
  tamper                15 min   per ping
  overdue             1440 min   daily sweep

Exit codes: 0 when the report was printed (targets are judged by the reader), 2 on bad
input (the message names the file and the line, row or column), 1 otherwise.";

/// Arguments of `leasewatch-load score`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = SLACK_HELP)]
pub struct ScoreArgs {
    /// Planted incidents: `truth.csv` written by `gen`.
    #[arg(long, value_name = "FILE")]
    truth: PathBuf,
    /// The alert archive: a Parquet file, or a directory searched recursively for
    /// `*.parquet`, in `alert_archive_schema()`.
    #[arg(long, value_name = "ARCHIVE")]
    alerts: PathBuf,
    /// Tricky episodes [default: tricky.csv next to --truth, when present].
    #[arg(long, value_name = "FILE")]
    tricky: Option<PathBuf>,
    /// The fleet's manifest, for device-days [default: manifest.json next to --truth,
    /// when present].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Slack in minutes for every signal, instead of the per-signal defaults (see
    /// --help).
    #[arg(long, value_name = "M")]
    slack_minutes: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Why scoring failed, split by who must act.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A file is missing, unreadable or malformed (the message names it).
    #[error("{0}")]
    BadInput(String),
    /// Writing the report failed (e.g. a closed pipe).
    #[error("writing the report: {0}")]
    Output(std::io::Error),
}

impl ScoreError {
    /// Bad input in `path`.
    pub fn bad(path: &Path, msg: impl std::fmt::Display) -> Self {
        Self::BadInput(format!("{}: {msg}", path.display()))
    }
}

/// Runs `score` and returns the process exit code (0, 1, or 2 on bad input).
pub fn main(args: &ScoreArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leasewatch-load score: {e}");
            match e {
                ScoreError::BadInput(_) => ExitCode::from(2),
                ScoreError::Output(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// `path` when given, else `name` next to `truth` when that exists.
fn beside(given: Option<&Path>, truth: &Path, name: &str) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let p = truth.parent().unwrap_or(Path::new(".")).join(name);
    p.is_file().then_some(p)
}

fn run(args: &ScoreArgs) -> Result<(), ScoreError> {
    let slack = match args.slack_minutes {
        Some(m) => Slack::uniform(m),
        None => Slack::default(),
    };
    let incidents = input::read_truth(&args.truth)?;
    let tricky_path = beside(args.tricky.as_deref(), &args.truth, "tricky.csv");
    let episodes = match &tricky_path {
        Some(p) => Some(input::read_tricky(p)?),
        None => None,
    };
    let manifest_path = beside(args.manifest.as_deref(), &args.truth, "manifest.json");
    let device_days = match &manifest_path {
        Some(p) => Some(input::read_device_days(p)?),
        None => None,
    };
    let archive = archive::read(&args.alerts)?;
    if archive.files == 0 {
        eprintln!(
            "leasewatch-load score: no *.parquet files under {}; scoring zero alerts",
            args.alerts.display()
        );
    }
    if archive.conflicting > 0 {
        eprintln!(
            "leasewatch-load score: {} rows repeat an alert_id with a different signal, \
             device or time; the first row of each alert_id was kept",
            archive.conflicting
        );
    }
    let score = matching::score(&incidents, episodes.as_deref(), &archive.alerts, &slack);
    let ctx = report::Context {
        truth: &args.truth,
        tricky: tricky_path.as_deref(),
        manifest: manifest_path.as_deref(),
        alerts: &args.alerts,
        archive: &archive,
        slack: &slack,
        uniform_slack: args.slack_minutes.is_some(),
        device_days,
    };
    let text = if args.json {
        report::json(&ctx, &score).map_err(|e| ScoreError::Output(std::io::Error::other(e)))?
    } else {
        report::table(&ctx, &score)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ScoreError::Output)
}
