//! `leasewatch-load`: synthetic fleets, load driving and scoring for LeaseWatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use leasewatch_load::r#gen::{self, DEFAULT_START, Format, GenConfig};

mod drive;
mod score;

#[derive(Debug, Parser)]
#[command(name = "leasewatch-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a synthetic fleet: pings, lease and credit state, risky places,
    /// ground truth and tricky episodes.
    Gen(GenArgs),
    /// Score an alert archive against the ground truth: recall and precision per
    /// signal, false alerts on tricky episodes.
    Score(score::ScoreArgs),
    /// Drive a running pipeline with realistic fleet traffic over HTTP at a target rate;
    /// report accepted pings/s, statuses, retries, ping-to-queue latency, RSS and CPU.
    Drive(drive::DriveArgs),
}

#[derive(Debug, Args)]
struct GenArgs {
    /// Number of devices (one lease and customer each).
    #[arg(long)]
    devices: u32,
    /// Number of days to simulate.
    #[arg(long)]
    days: u32,
    /// Seed: the same seed gives the same bytes in every file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Ping file format.
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    format: Format,
    /// First day of the run (UTC), YYYY-MM-DD.
    #[arg(long, default_value = DEFAULT_START)]
    start: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Score(a) => score::main(&a),
        Command::Drive(a) => drive::main(&a),
        Command::Gen(a) => {
            let cfg = GenConfig {
                devices: a.devices,
                days: a.days,
                seed: a.seed,
                out: a.out,
                format: a.format,
                start: a.start,
                quiet: a.quiet,
            };
            match r#gen::generate_timed(&cfg) {
                Ok((m, t)) => {
                    let pings = m.files.get("pings").map_or(0, |f| f.records);
                    let truth = m.files.get("truth").map_or(0, |f| f.records);
                    let tricky = m.files.get("tricky").map_or(0, |f| f.records);
                    if !cfg.quiet {
                        eprintln!(
                            "wrote {pings} pings ({} bytes), {truth} truth spans, {tricky} tricky episodes to {}",
                            m.pings_bytes,
                            cfg.out.display()
                        );
                        eprintln!(
                            "planning {:.2} s; pings {:.2} s ({:.0} pings/s)",
                            t.plan_s,
                            t.pings_s,
                            pings as f64 / t.pings_s.max(1e-9)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leasewatch-load gen: {e}");
                    if e.is_bad_input() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
