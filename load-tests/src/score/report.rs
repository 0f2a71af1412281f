//! The report: an aligned table for people, or one JSON object (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use leasewatch_schemas::SignalKind;
use serde::Serialize;

use super::archive::Archive;
use super::matching::{Score, SignalScore, Slack, ratio, signal_index, tricky_names};

/// What was scored, for the report's header.
#[derive(Debug)]
pub struct Context<'a> {
    pub truth: &'a Path,
    pub tricky: Option<&'a Path>,
    pub manifest: Option<&'a Path>,
    pub alerts: &'a Path,
    pub archive: &'a Archive,
    pub slack: &'a Slack,
    /// `--slack-minutes` was given.
    pub uniform_slack: bool,
    /// `params.devices * params.days` of the manifest, when known.
    pub device_days: Option<u64>,
}

impl Context<'_> {
    /// False alerts on tricky episodes per 1,000 device-days.
    fn per_1000(&self, score: &Score) -> Option<f64> {
        ratio(score.tricky_false_total, self.device_days?).map(|r| r * 1000.0)
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn minutes(ms: i64) -> String {
    let m = ms / 60_000;
    if m >= 60 && m % 60 == 0 {
        format!("{} h", m / 60)
    } else {
        format!("{m} min")
    }
}

fn signal_row(out: &mut String, name: &str, slack: &str, s: &SignalScore) {
    let _ = writeln!(
        out,
        "{name:<19} {slack:>7} {:>10} {:>9} {:>7} {:>7} {:>6} {:>10}",
        s.incidents,
        s.detected,
        pct(s.recall()),
        s.alerts,
        s.true_alerts,
        pct(s.precision()),
    );
}

/// The aligned table.
pub fn table(ctx: &Context<'_>, score: &Score) -> String {
    let mut out = String::new();
    let totals = score.totals();
    let a = ctx.archive;
    let _ = writeln!(
        out,
        "truth    {}: {} incidents",
        ctx.truth.display(),
        totals.incidents
    );
    match (ctx.tricky, score.tricky_episodes) {
        (Some(p), Some(eps)) => {
            let n: u64 = eps.iter().sum();
            let _ = writeln!(out, "tricky   {}: {n} episodes", p.display());
        }
        _ => {
            let _ = writeln!(
                out,
                "tricky   none (no tricky.csv beside truth.csv; --tricky)"
            );
        }
    }
    let _ = writeln!(
        out,
        "alerts   {}: {} Parquet files, {} rows, {} distinct alerts",
        ctx.alerts.display(),
        a.files,
        a.rows,
        a.alerts.len()
    );
    let slack = if ctx.uniform_slack {
        format!(
            "{} for every signal (--slack-minutes)",
            minutes(ctx.slack.ms(SignalKind::Tamper))
        )
    } else {
        "per signal, its detection window (--help lists them)".to_string()
    };
    let _ = writeln!(out, "slack    {slack}");
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<19} {:>7} {:>10} {:>9} {:>7} {:>7} {:>6} {:>10}",
        "signal", "slack", "incidents", "detected", "recall", "alerts", "true", "precision"
    );
    for k in SignalKind::ALL {
        signal_row(
            &mut out,
            k.as_str(),
            &minutes(ctx.slack.ms(k)),
            &score.signals[signal_index(k)],
        );
    }
    signal_row(&mut out, "total", "", &totals);
    out.push('\n');

    let Some(eps) = score.tricky_episodes else {
        let _ = writeln!(
            out,
            "false alerts on tricky episodes: not scored (no tricky episodes file)"
        );
        return out;
    };
    let _ = writeln!(
        out,
        "{:<19} {:>9} {:>13}",
        "tricky episode", "episodes", "false alerts"
    );
    for ((name, n), f) in tricky_names().iter().zip(eps).zip(score.tricky_false) {
        let _ = writeln!(out, "{name:<19} {n:>9} {f:>13}");
    }
    let _ = writeln!(
        out,
        "{:<19} {:>9} {:>13}",
        "total",
        eps.iter().sum::<u64>(),
        score.tricky_false_total
    );
    match (ctx.per_1000(score), ctx.device_days, ctx.manifest) {
        (Some(r), Some(dd), Some(m)) => {
            let _ = writeln!(
                out,
                "false alerts on tricky episodes per 1,000 device-days: {r:.2} ({dd} device-days, {})",
                m.display()
            );
        }
        (_, Some(0), _) => {
            let _ = writeln!(
                out,
                "false alerts on tricky episodes per 1,000 device-days: unknown (the manifest has 0 device-days)"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "false alerts on tricky episodes per 1,000 device-days: unknown (no manifest.json beside truth.csv; --manifest)"
            );
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct JsonInputs {
    truth: String,
    tricky: Option<String>,
    manifest: Option<String>,
    alerts: String,
    parquet_files: usize,
    alert_rows: u64,
    distinct_alerts: usize,
    conflicting_duplicates: u64,
}

#[derive(Debug, Serialize)]
struct JsonSignal {
    incidents: u64,
    detected: u64,
    recall: Option<f64>,
    alerts: u64,
    true_alerts: u64,
    precision: Option<f64>,
}

impl From<&SignalScore> for JsonSignal {
    fn from(s: &SignalScore) -> Self {
        Self {
            incidents: s.incidents,
            detected: s.detected,
            recall: s.recall(),
            alerts: s.alerts,
            true_alerts: s.true_alerts,
            precision: s.precision(),
        }
    }
}

#[derive(Debug, Serialize)]
struct JsonTricky {
    episodes: BTreeMap<&'static str, u64>,
    false_alerts: BTreeMap<&'static str, u64>,
    total: u64,
    device_days: Option<u64>,
    per_1000_device_days: Option<f64>,
}

#[derive(Debug, Serialize)]
struct JsonReport {
    inputs: JsonInputs,
    slack_minutes: BTreeMap<&'static str, i64>,
    signals: BTreeMap<&'static str, JsonSignal>,
    tricky: Option<JsonTricky>,
    totals: JsonSignal,
}

/// One JSON object (pretty-printed, with a final newline). Ratios are fractions,
/// `null` when undefined; `tricky` is `null` without a tricky episodes file.
pub fn json(ctx: &Context<'_>, score: &Score) -> Result<String, serde_json::Error> {
    let a = ctx.archive;
    let names = tricky_names();
    let report = JsonReport {
        inputs: JsonInputs {
            truth: ctx.truth.display().to_string(),
            tricky: ctx.tricky.map(|p| p.display().to_string()),
            manifest: ctx.manifest.map(|p| p.display().to_string()),
            alerts: ctx.alerts.display().to_string(),
            parquet_files: a.files,
            alert_rows: a.rows,
            distinct_alerts: a.alerts.len(),
            conflicting_duplicates: a.conflicting,
        },
        slack_minutes: SignalKind::ALL
            .iter()
            .map(|k| (k.as_str(), ctx.slack.ms(*k) / 60_000))
            .collect(),
        signals: SignalKind::ALL
            .iter()
            .map(|k| (k.as_str(), (&score.signals[signal_index(*k)]).into()))
            .collect(),
        tricky: score.tricky_episodes.map(|eps| JsonTricky {
            episodes: names.into_iter().zip(eps).collect(),
            false_alerts: names.into_iter().zip(score.tricky_false).collect(),
            total: score.tricky_false_total,
            device_days: ctx.device_days,
            per_1000_device_days: ctx.per_1000(score),
        }),
        totals: (&score.totals()).into(),
    };
    let mut s = serde_json::to_string_pretty(&report)?;
    s.push('\n');
    Ok(s)
}
