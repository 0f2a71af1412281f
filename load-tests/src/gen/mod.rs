//! The synthetic fleet generator: phones with realistic days, planted incidents with
//! exact ground truth, and tricky-but-normal episodes that must not alert.
//!
//! Flow: risky places (seed only) -> device profiles -> roles (which device gets which
//! incident) -> a plan per device -> lease and credit state, truth and tricky spans
//! (written first) -> pings, emitted hour by hour across the fleet, sorted by receive
//! time and written as they go. Only one hour of pings (plus late uploads still
//! waiting) is in memory at a time.

pub mod device;
pub mod geo;
pub mod incidents;
pub mod places;
pub mod rng;
pub mod state;
pub mod writer;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use leasewatch_schemas::SignalKind;
use serde::Serialize;

use device::{DAY, Emitter, HOUR, Ping, Run, Span};

/// Output format of the pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `pings.ndjson`: one `DevicePing` JSON object per line.
    Ndjson,
    /// `pings.parquet`: `ping_schema()` columns, Snappy-compressed.
    Parquet,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Parquet => "parquet",
        }
    }
}

/// Default first day of a run (a Monday).
pub const DEFAULT_START: &str = "2026-06-01";
/// Most devices one run may have (IMEI serials are unique per device below this).
pub const MAX_DEVICES: u32 = 1_000_000;
/// Most days one run may have.
pub const MAX_DAYS: u32 = 366;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub devices: u32,
    pub days: u32,
    pub seed: u64,
    pub out: PathBuf,
    pub format: Format,
    /// First day, `YYYY-MM-DD` (UTC midnight).
    pub start: String,
    /// No progress bar.
    pub quiet: bool,
}

/// Why generation failed, split by who must act.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The caller's arguments are wrong.
    #[error("invalid argument: {0}")]
    BadInput(String),
    /// The file system refused (permissions, disk full, ...).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Parquet writer failed.
    #[error("writing {0}: {1}")]
    Parquet(String, String),
    /// A bug in the generator.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GenError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the caller's input is at fault (exit code 2 in the CLI).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::BadInput(_))
    }
}

/// Parameters as recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub devices: u32,
    pub days: u32,
    pub seed: u64,
    pub start: String,
    pub format: &'static str,
}

/// File name and record count.
#[derive(Debug, Clone, Serialize)]
pub struct FileCount {
    pub file: String,
    pub records: u64,
}

/// `manifest.json`: what was generated, with which parameters. Deterministic.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub generator: &'static str,
    pub version: &'static str,
    pub params: Params,
    pub start_ms: i64,
    pub end_ms: i64,
    pub files: BTreeMap<&'static str, FileCount>,
    pub pings_bytes: u64,
    pub truth_by_kind: BTreeMap<&'static str, u64>,
    pub tricky_by_kind: BTreeMap<&'static str, u64>,
}

/// How long generation took (not in the manifest, which must be deterministic).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Profiles, plans, state, truth: everything before the first ping.
    pub plan_s: f64,
    /// Emitting, sorting and writing the pings.
    pub pings_s: f64,
}

/// Checks the configuration; returns the run window.
pub fn validate(cfg: &GenConfig) -> Result<Run, GenError> {
    let mut problems = Vec::new();
    if cfg.devices == 0 {
        problems.push("--devices must be at least 1".to_string());
    }
    if cfg.devices > MAX_DEVICES {
        problems.push(format!("--devices must be at most {MAX_DEVICES}"));
    }
    if cfg.days == 0 {
        problems.push("--days must be at least 1".to_string());
    }
    if cfg.days > MAX_DAYS {
        problems.push(format!("--days must be at most {MAX_DAYS}"));
    }
    let start_day = state::parse_date(&cfg.start);
    match start_day {
        None => problems.push(format!(
            "--start {:?} is not a date of the form YYYY-MM-DD",
            cfg.start
        )),
        // Pings must be after 2015-01-01 (schema limit) even with clock skew.
        Some(d) if !(16_437..=47_482).contains(&d) => problems.push(format!(
            "--start {} must be between 2015-01-02 and 2099-12-31",
            cfg.start
        )),
        Some(_) => {}
    }
    if !problems.is_empty() {
        return Err(GenError::BadInput(problems.join("; ")));
    }
    let start_ms = start_day.unwrap_or_default() * DAY;
    Ok(Run {
        seed: cfg.seed,
        start_ms,
        end_ms: start_ms + i64::from(cfg.days) * DAY,
        days: cfg.days,
    })
}

fn sort_spans(spans: &mut [Span]) {
    spans.sort_by(|a, b| {
        (a.start, a.end, a.device, a.kind).cmp(&(b.start, b.end, b.device, b.kind))
    });
}

/// Generates a fleet into `cfg.out`.
pub fn generate(cfg: &GenConfig) -> Result<Manifest, GenError> {
    generate_timed(cfg).map(|(m, _)| m)
}

/// [`generate`], also returning how long each phase took.
pub fn generate_timed(cfg: &GenConfig) -> Result<(Manifest, Timings), GenError> {
    let t_plan = std::time::Instant::now();
    let run = validate(cfg)?;
    let dir = cfg.out.as_path();
    std::fs::create_dir_all(dir).map_err(|e| GenError::io(dir, e))?;

    let places = places::generate(cfg.seed);
    let mut profiles: Vec<device::Profile> = (0..cfg.devices)
        .map(|i| device::profile(&run, i, &places))
        .collect();
    let can_fly: Vec<bool> = profiles
        .iter()
        .map(|p| p.usual.is_some_and(|u| u.by_air))
        .collect();
    let roles = incidents::assign_roles(cfg.seed, &can_fly);
    let plans: Vec<device::Plan> = profiles
        .iter_mut()
        .zip(&roles)
        .map(|(p, r)| incidents::build_plan(&run, p, *r, &places))
        .collect();

    let mut leases = Vec::with_capacity(profiles.len());
    let mut credits = Vec::with_capacity(profiles.len());
    let mut truth: Vec<Span> = Vec::new();
    let mut tricky: Vec<Span> = Vec::new();
    for (prof, plan) in profiles.iter().zip(&plans) {
        let (lease, credit) = state::lease_and_credit(&run, prof, plan);
        if lease.days_past_due >= 3 {
            truth.push(Span {
                kind: SignalKind::Overdue.as_str(),
                device: prof.index,
                start: run.start_ms,
                end: run.end_ms,
            });
        }
        leases.push(lease);
        credits.push(credit);
        truth.extend(plan.truth.iter().cloned());
        tricky.extend(plan.tricky.iter().cloned());
    }
    sort_spans(&mut truth);
    sort_spans(&mut tricky);
    let texts: Vec<writer::DeviceText> = profiles
        .iter()
        .zip(&plans)
        .map(|(p, plan)| writer::DeviceText::new(p, plan.roaming))
        .collect();

    let mut files = BTreeMap::new();
    let mut count = |key: &'static str, file: &str, records: u64| {
        files.insert(
            key,
            FileCount {
                file: file.to_string(),
                records,
            },
        );
    };
    count(
        "leases",
        "leases.ndjson",
        writer::write_ndjson(dir, "leases.ndjson", &leases)?,
    );
    count(
        "credit",
        "credit.ndjson",
        writer::write_ndjson(dir, "credit.ndjson", &credits)?,
    );
    count(
        "places",
        "places.geojson",
        writer::write_places(dir, &places)?,
    );
    count(
        "truth",
        "truth.csv",
        writer::write_spans(
            dir,
            "truth.csv",
            "incident_id,kind,device_id,start_ms,end_ms",
            "inc",
            &truth,
            &texts,
        )?,
    );
    count(
        "tricky",
        "tricky.csv",
        writer::write_spans(
            dir,
            "tricky.csv",
            "episode_id,kind,device_id,start_ms,end_ms",
            "epi",
            &tricky,
            &texts,
        )?,
    );

    // Pings, hour by hour.
    let plan_s = t_plan.elapsed().as_secs_f64();
    let t_pings = std::time::Instant::now();
    let mut sink = match cfg.format {
        Format::Ndjson => writer::PingSink::ndjson(dir)?,
        Format::Parquet => writer::PingSink::parquet(dir)?,
    };
    let ping_file = sink
        .path()
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hours = u64::from(cfg.days) * 24;
    let bar = if cfg.quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(hours);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} simulated hours {pos}/{len} {wide_bar} {elapsed_precise} eta {eta} {msg}",
        ) {
            b.set_style(style);
        }
        b
    };
    let mut emitters: Vec<Emitter> = profiles
        .iter()
        .zip(&plans)
        .map(|(p, plan)| Emitter::new(&run, p, plan))
        .collect();
    let mut buf: Vec<Ping> = Vec::with_capacity(profiles.len() * 24);
    let mut pings: u64 = 0;
    let mut t = run.start_ms;
    while t < run.end_ms {
        let t_end = t + HOUR;
        for ((em, prof), plan) in emitters.iter_mut().zip(&profiles).zip(&plans) {
            em.emit_until(&run, prof, plan, t_end, &mut buf);
        }
        buf.sort_unstable_by_key(|p| (p.receive_time, p.device, p.seq));
        let cut = if t_end >= run.end_ms {
            buf.len()
        } else {
            buf.partition_point(|p| p.receive_time < t_end)
        };
        sink.write(&buf[..cut], &texts)?;
        pings += cut as u64;
        buf.drain(..cut);
        bar.inc(1);
        bar.set_message(format!("{pings} pings"));
        t = t_end;
    }
    let pings_bytes = sink.finish(&texts)?;
    let pings_s = t_pings.elapsed().as_secs_f64();
    bar.finish_and_clear();
    count("pings", &ping_file, pings);

    let mut truth_by_kind = BTreeMap::new();
    for s in &truth {
        *truth_by_kind.entry(s.kind).or_insert(0) += 1;
    }
    let mut tricky_by_kind = BTreeMap::new();
    for s in &tricky {
        *tricky_by_kind.entry(s.kind).or_insert(0) += 1;
    }
    let manifest = Manifest {
        generator: "leasewatch-load",
        version: env!("CARGO_PKG_VERSION"),
        params: Params {
            devices: cfg.devices,
            days: cfg.days,
            seed: cfg.seed,
            start: cfg.start.clone(),
            format: cfg.format.as_str(),
        },
        start_ms: run.start_ms,
        end_ms: run.end_ms,
        files,
        pings_bytes,
        truth_by_kind,
        tricky_by_kind,
    };
    let (mut w, path) = writer::create(dir, "manifest.json")?;
    serde_json::to_writer_pretty(&mut w, &manifest).map_err(|e| GenError::io(&path, e.into()))?;
    std::io::Write::write_all(&mut w, b"\n").map_err(|e| GenError::io(&path, e))?;
    std::io::Write::flush(&mut w).map_err(|e| GenError::io(&path, e))?;
    Ok((manifest, Timings { plan_s, pings_s }))
}
