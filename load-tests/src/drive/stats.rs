//! Counters, latency histograms (HDR, microseconds), resource samples and the report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One time base for the whole run: a monotonic clock anchored to the wall clock once,
/// so that send times (from the schedule) and read times (of queue entries) compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix_us: i64,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        Self {
            start: Instant::now(),
            start_unix_us: wall,
        }
    }

    /// Microseconds since the start.
    pub fn elapsed_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Unix microseconds of `rel_us` after the start.
    pub fn unix_us(&self, rel_us: u64) -> i64 {
        self.start_unix_us
            .saturating_add(i64::try_from(rel_us).unwrap_or(i64::MAX))
    }

    /// Unix microseconds now, on this clock.
    pub fn now_unix_us(&self) -> i64 {
        self.unix_us(self.elapsed_us())
    }

    /// The instant `rel_us` after the start.
    pub fn instant(&self, rel_us: u64) -> Instant {
        self.start + std::time::Duration::from_micros(rel_us)
    }
}

/// Largest value a histogram holds: one hour in microseconds (larger values are
/// recorded as this and counted in `saturated`).
const HIST_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug)]
pub struct Latency {
    h: Histogram<u64>,
    saturated: u64,
}

impl Latency {
    pub fn new() -> Result<Self, String> {
        Histogram::new_with_bounds(1, HIST_MAX_US, 3)
            .map(|h| Self { h, saturated: 0 })
            .map_err(|e| format!("histogram: {e}"))
    }

    pub fn record_us(&mut self, us: i64) {
        let v = u64::try_from(us.max(1)).unwrap_or(1);
        if v > HIST_MAX_US {
            self.saturated += 1;
        }
        // Cannot fail: the value is clamped into the bounds.
        let _ = self.h.record(v.min(HIST_MAX_US));
    }

    /// Forgets every value (for a histogram of one interval).
    pub fn reset(&mut self) {
        self.h.reset();
        self.saturated = 0;
    }

    fn ms(&self, q: f64) -> Option<f64> {
        (!self.h.is_empty()).then(|| self.h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.h.len(),
            p50_ms: self.ms(0.5),
            p90_ms: self.ms(0.9),
            p99_ms: self.ms(0.99),
            p999_ms: self.ms(0.999),
            max_ms: (!self.h.is_empty()).then(|| self.h.max() as f64 / 1000.0),
            saturated: self.saturated,
        }
    }
}

/// Percentiles of a latency histogram, milliseconds (`null` when empty).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Values above one hour, recorded as one hour.
    pub saturated: u64,
}

impl LatencySummary {
    /// `p50 / p99 / p999 ms` for a progress line or the text report.
    pub fn short(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "p50 {} / p99 {} / p999 {} ms (n={})",
            f(self.p50_ms),
            f(self.p99_ms),
            f(self.p999_ms),
            self.count
        )
    }
}

/// An alerting device's first tripping ping, as sent.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// When the ping was scheduled to be sent (unix µs): latency starts here.
    pub sent_unix_us: i64,
    /// Its event time (ms).
    pub event_time: i64,
    /// Its request was acknowledged (202).
    pub accepted: bool,
    /// Its alert was read from a queue.
    pub matched: bool,
}

/// What the queue reader saw.
#[derive(Debug)]
pub struct QueueStats {
    /// Ping sent -> message read (µs), one per alerting device (its first message).
    pub ping_to_queue: Latency,
    /// The same since the last sample (the sampler resets it).
    pub ping_to_queue_interval: Latency,
    /// `emitted_at - event_time` of those messages (µs, from ms fields).
    pub emitted_minus_event: Latency,
    /// `emitted_at - event_time` of every message read (µs).
    pub emitted_minus_event_all: Latency,
    pub by_queue: BTreeMap<String, u64>,
    pub by_signal: BTreeMap<String, u64>,
    /// Messages of driven alerting devices after their first (lock requests beside a
    /// call, later signals).
    pub repeats: u64,
    /// Messages of other devices or signals (e.g. overdue from a sweep).
    pub other: u64,
    /// First messages whose `event_time` is exactly that of the tripping ping.
    pub exact: u64,
    /// Read errors (the reader reconnects).
    pub errors: u64,
}

/// Shared counters of one run.
#[derive(Debug)]
pub struct Stats {
    pub pings_scheduled: AtomicU64,
    /// Pings in requests sent at least once.
    pub pings_sent: AtomicU64,
    /// Pings the server accepted (`accepted` of 202 replies).
    pub pings_accepted: AtomicU64,
    /// Pings the server rejected (rows listed in `rejected`, or whole 4xx requests).
    pub pings_rejected: AtomicU64,
    /// Pings not sent because the connection fell behind schedule past the end.
    pub pings_unsent: AtomicU64,
    /// Pings given up after retrying past the drain deadline.
    pub pings_abandoned: AtomicU64,
    pub requests: AtomicU64,
    /// Resends after 429/503 (Retry-After honoured).
    pub retries: AtomicU64,
    /// Connection or protocol errors (reconnected and resent).
    pub errors: AtomicU64,
    /// Requests without a reply in time (reconnected and resent).
    pub timeouts: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Most a connection was behind its schedule when it sent (µs).
    pub max_behind_us: AtomicU64,
    /// Elapsed µs at the last 202.
    pub last_accept_us: AtomicU64,
    /// Seconds spent waiting on Retry-After (ms).
    pub retry_wait_ms: AtomicU64,
    pub by_status: Mutex<BTreeMap<u16, u64>>,
    /// Scheduled send -> 202 (µs), per request.
    pub ack: Mutex<Latency>,
    /// Alerting devices' first tripping pings, by device index.
    pub pending: Mutex<HashMap<u32, Pending>>,
    pub queues: Mutex<QueueStats>,
    /// First few server error replies, to show the user.
    pub error_samples: Mutex<Vec<String>>,
}

impl Stats {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            pings_scheduled: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            pings_accepted: AtomicU64::new(0),
            pings_rejected: AtomicU64::new(0),
            pings_unsent: AtomicU64::new(0),
            pings_abandoned: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            max_behind_us: AtomicU64::new(0),
            last_accept_us: AtomicU64::new(0),
            retry_wait_ms: AtomicU64::new(0),
            by_status: Mutex::new(BTreeMap::new()),
            ack: Mutex::new(Latency::new()?),
            pending: Mutex::new(HashMap::new()),
            queues: Mutex::new(QueueStats {
                ping_to_queue: Latency::new()?,
                ping_to_queue_interval: Latency::new()?,
                emitted_minus_event: Latency::new()?,
                emitted_minus_event_all: Latency::new()?,
                by_queue: BTreeMap::new(),
                by_signal: BTreeMap::new(),
                repeats: 0,
                other: 0,
                exact: 0,
                errors: 0,
            }),
            error_samples: Mutex::new(Vec::new()),
        })
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn status(&self, code: u16) {
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(code).or_insert(0) += 1;
        }
    }

    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        self.by_status.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn error_sample(&self, s: String) {
        if let Ok(mut v) = self.error_samples.lock()
            && v.len() < 5
        {
            v.push(s);
        }
    }

    /// Alerting devices whose tripping ping was accepted, and how many of those were
    /// read from a queue.
    pub fn alert_progress(&self) -> (u64, u64) {
        let Ok(p) = self.pending.lock() else {
            return (0, 0);
        };
        let expected = p.values().filter(|x| x.accepted).count() as u64;
        let matched = p.values().filter(|x| x.accepted && x.matched).count() as u64;
        (expected, matched)
    }
}

/// CPU and memory of the processes on the box, from `/proc` (and Redis `INFO`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Seconds of CPU (user + system).
    pub driver_s: f64,
    pub pipeline_s: Option<f64>,
    pub redis_s: Option<f64>,
}

/// `VmRSS` of a process (a pid, or `self`) in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat` (clock ticks of
/// 1/100 s: `USER_HZ` is 100 on Linux).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// One sample of the run, every report interval.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Pings accepted per second over the interval.
    pub accepted_per_s: f64,
    /// Pings accepted so far.
    pub accepted: u64,
    /// Requests answered 429 or 503 in the interval.
    pub refused: u64,
    /// Ping-to-queue p99 so far, ms.
    pub alert_p99_ms: Option<f64>,
    /// Ping-to-queue p99 of the alerts read in this interval, ms.
    pub interval_alert_p99_ms: Option<f64>,
    pub pipeline_rss_mib: Option<f64>,
    pub driver_rss_mib: Option<f64>,
    /// CPU of each process over the interval, % of one core.
    pub driver_cpu_pct: f64,
    pub pipeline_cpu_pct: Option<f64>,
    pub redis_cpu_pct: Option<f64>,
    pub redis_used_mib: Option<f64>,
}

/// The final report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: Target,
    /// Seconds from the start to the last reply (drain included).
    pub elapsed_s: f64,
    /// Seconds from the start to the end of the last request (before waiting for
    /// alerts still due).
    pub sending_s: f64,
    /// Seconds from the start to the last 202.
    pub active_s: f64,
    pub pings: Pings,
    /// Accepted pings per second over `active_s`.
    pub accepted_per_s: f64,
    /// The connections sent every scheduled ping on time (none behind by more than a
    /// second, none unsent).
    pub kept_up: bool,
    /// Most a connection was behind its schedule, seconds.
    pub max_behind_s: f64,
    pub requests: Requests,
    /// Scheduled send -> 202, per request.
    pub ack_latency: LatencySummary,
    /// `null` without `--redis`.
    pub alerts: Option<Alerts>,
    pub pipeline_rss_mib: Option<Rss>,
    /// CPU seconds of each process during the run, and its share of the box.
    pub cpu: Cpu,
    pub samples: Vec<Sample>,
    pub error_samples: Vec<String>,
    /// Why the run stopped early (e.g. 401), if it did.
    pub fatal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub url: String,
    pub rate: f64,
    pub duration_s: f64,
    pub devices: u32,
    pub connections: u32,
    pub format: &'static str,
    pub gzip: bool,
    pub batch: String,
    pub mean_request_pings: f64,
    pub alert_devices: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pings {
    pub scheduled: u64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub unsent: u64,
    pub abandoned: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub retries: u64,
    pub retry_wait_s: f64,
    pub errors: u64,
    pub timeouts: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    /// Alerting devices whose tripping ping was accepted.
    pub expected: u64,
    /// Of those, read from a queue.
    pub matched: u64,
    pub missing: u64,
    /// Ping sent (scheduled) -> message read.
    pub ping_to_queue: LatencySummary,
    /// `emitted_at - event_time` of the matched messages.
    pub emitted_minus_event: LatencySummary,
    /// `emitted_at - event_time` of every message read.
    pub emitted_minus_event_all: LatencySummary,
    pub read_by_queue: BTreeMap<String, u64>,
    pub read_by_signal: BTreeMap<String, u64>,
    /// Of `matched`, messages whose `event_time` is the tripping ping's.
    pub exact: u64,
    pub repeats: u64,
    pub other: u64,
    pub read_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub cores: usize,
    pub driver_s: f64,
    pub pipeline_s: Option<f64>,
    pub redis_s: Option<f64>,
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let t = &self.target;
        let _ = writeln!(
            o,
            "target    {:.0} pings/s for {:.0} s, {} devices, {} connections, {}{}, batches {} (mean {:.0} pings/request)",
            t.rate,
            t.duration_s,
            t.devices,
            t.connections,
            t.format,
            if t.gzip { "+gzip" } else { "" },
            t.batch,
            t.mean_request_pings
        );
        let p = &self.pings;
        let _ = writeln!(
            o,
            "pings     scheduled {}  sent {}  accepted {}  rejected {}  unsent {}  abandoned {}",
            p.scheduled, p.sent, p.accepted, p.rejected, p.unsent, p.abandoned
        );
        let _ = writeln!(
            o,
            "rate      {:.0} pings/s accepted over {:.1} s{}",
            self.accepted_per_s,
            self.active_s,
            if let Some(f) = &self.fatal {
                format!("  -- STOPPED: {f}")
            } else if self.kept_up {
                String::new()
            } else {
                format!(
                    "  -- COULD NOT KEEP UP: behind schedule by up to {:.1} s, {} pings unsent",
                    self.max_behind_s, p.unsent
                )
            }
        );
        let r = &self.requests;
        let statuses: Vec<String> = r
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            o,
            "requests  {} ({})  retries {} ({:.1} s waiting)  errors {}  timeouts {}  {:.1} MB sent",
            r.total,
            statuses.join(", "),
            r.retries,
            r.retry_wait_s,
            r.errors,
            r.timeouts,
            r.bytes_sent as f64 / 1e6
        );
        let _ = writeln!(o, "ack       {}", self.ack_latency.short());
        match &self.alerts {
            Some(a) => {
                let _ = writeln!(
                    o,
                    "alerts    {} of {} alerting devices read from the queues ({} missing); {} other messages, {} repeats",
                    a.matched, a.expected, a.missing, a.other, a.repeats
                );
                let _ = writeln!(
                    o,
                    "latency   ping -> queue       {}",
                    a.ping_to_queue.short()
                );
                let _ = writeln!(
                    o,
                    "          emitted_at - event  {}",
                    a.emitted_minus_event.short()
                );
                let q: Vec<String> = a
                    .read_by_queue
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let s: Vec<String> = a
                    .read_by_signal
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let _ = writeln!(o, "queues    {}", q.join(", "));
                let _ = writeln!(o, "signals   {}", s.join(", "));
            }
            None => {
                let _ = writeln!(o, "alerts    not read (no --redis)");
            }
        }
        if let Some(m) = &self.pipeline_rss_mib {
            let _ = writeln!(
                o,
                "rss       pipeline {:.0} MiB at start, {:.0} MiB at the end (min {:.0}, max {:.0})",
                m.first, m.last, m.min, m.max
            );
        }
        let c = &self.cpu;
        let share = |s: f64| 100.0 * s / (self.elapsed_s.max(1e-9) * c.cores as f64);
        let mut cpu = format!(
            "cpu       driver {:.1} s ({:.0}% of {} cores)",
            c.driver_s,
            share(c.driver_s),
            c.cores
        );
        if let Some(s) = c.pipeline_s {
            let _ = write!(cpu, ", pipeline {s:.1} s ({:.0}%)", share(s));
        }
        if let Some(s) = c.redis_s {
            let _ = write!(cpu, ", redis {s:.1} s ({:.0}%)", share(s));
        }
        let _ = writeln!(o, "{cpu}");
        for e in &self.error_samples {
            let _ = writeln!(o, "error     {e}");
        }
        o
    }
}
