//! `leasewatch-load drive`: realistic fleet traffic over HTTP at a target rate, with
//! ping-to-queue latency.
//!
//! Flow: the fleet (`fleet.rs`: the generator's device model, staying near home; a
//! fraction trips `tamper` or `sim_mismatch` mid-run) -> optional lease/credit state
//! into Redis or files (`state.rs`) -> an open-loop schedule of requests at the target
//! rate, sized by the batch mix (`mix.rs`), sent by a pool of `--connections` keep-alive
//! HTTP/1.1 connections, resending after 429/503 and errors (`http.rs`) -> the queue
//! reader timing each driven alert from its ping's send (`queues.rs`) -> progress lines
//! every few seconds with CPU and RSS from `/proc`, and the final report (`stats.rs`).

mod fleet;
mod http;
mod mix;
mod queues;
mod state;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet::{BodyFormat, Fleet};
use http::{Ctx, Target};
use mix::Mix;
use stats::{Clock, CpuTimes, Sample, Stats};

/// Arguments of `leasewatch-load drive`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct DriveArgs {
    /// Ingest base URL, `http://HOST:PORT` (path `/v1/pings` unless one is given).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Bearer token (one of the pipeline's `ingest.tokens`).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Devices driven (the generator's first N devices of --seed; at most 1,000,000).
    #[arg(long)]
    devices: u32,
    /// Target rate, pings per second over all connections.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Request sizes: `MIN-MAX:SHARE,...`, shares of pings; sizes up to 50 are phone
    /// uploads (one device's buffered pings), larger ones gateway batches.
    #[arg(long, default_value = mix::DEFAULT, value_name = "MIX")]
    batch: String,
    /// Body format.
    #[arg(long, value_enum, default_value_t = BodyFormat::Ndjson)]
    format: BodyFormat,
    /// Gzip every body (`Content-Encoding: gzip`).
    #[arg(long)]
    gzip: bool,
    /// Concurrent keep-alive connections: the pool that sends the scheduled requests
    /// (each builds its requests from its own 1/N of the devices).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Share of the devices that trip a per-ping rule mid-run (half tamper: rooted;
    /// half sim_mismatch: an unregistered SIM).
    #[arg(long, default_value_t = 0.01)]
    alert_fraction: f64,
    /// Seed of the fleet (the same devices as `gen --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Redis of the pipeline: read the collection queues (alert latency); with
    /// --load-state, write the devices' state there first.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Write lease and credit state of the driven devices to --redis first (and clear
    /// their tamper/sim_mismatch suppression).
    #[arg(long)]
    load_state: bool,
    /// Write `leases.ndjson`, `credit.ndjson` (for `leasewatch state load`) and
    /// `places.geojson` (for `engine.geofences`) of the driven devices into DIR.
    #[arg(long, value_name = "DIR")]
    write_state: Option<PathBuf>,
    /// Only write/load the state, send nothing.
    #[arg(long)]
    state_only: bool,
    /// Pipeline process id: sample its RSS (`VmRSS`) and CPU from /proc.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Seconds between progress lines (and samples).
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,
    /// Seconds after the schedule ends that requests still being retried may take.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Seconds to wait after the last request for alerts still due from the queues.
    #[arg(long, default_value_t = 15.0)]
    alert_wait: f64,
    /// Seconds one request may wait for its reply before it is resent.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

const AFTER_HELP: &str = "\
Pacing is open-loop: requests are due at fixed times whatever the replies (once their
pings have accumulated at --rate); a due request waits for a free connection, so when
replies are slow the run falls behind schedule. Latencies are measured from the time a
request was due, so they include time spent behind. 429 and 503 are resent after
Retry-After (counted as retries), connection errors and timeouts after a short backoff;
what is still unanswered --drain-timeout seconds after the end is counted as abandoned,
what was due but not sent within a second of the end as unsent. Nothing is dropped
silently.

Alert latency (with --redis): the reader starts after the last entry of every
lw:queue:* stream present at the start, and records, for each alerting device, the
time from the send of its first tripping ping to the read of its first message,
and emitted_at - event_time of that message.

Exit codes: 0 when the report was printed (a run that could not keep up says so in
it), 2 on bad arguments, 1 on a fatal error (401, Redis unreachable).";

/// Why a run failed, by who must act.
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs `leasewatch-load drive`.
pub fn main(a: &DriveArgs) -> ExitCode {
    match run(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DriveError::BadInput(e)) => {
            eprintln!("leasewatch-load drive: {e}");
            ExitCode::from(2)
        }
        Err(DriveError::Failed(e)) => {
            eprintln!("leasewatch-load drive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(a: &DriveArgs) -> Result<Mix, DriveError> {
    let mut problems = Vec::new();
    let max = leasewatch_load::r#gen::MAX_DEVICES;
    if a.devices == 0 || a.devices > max {
        problems.push(format!("--devices must be between 1 and {max}"));
    }
    if !(a.alert_fraction.is_finite() && (0.0..=1.0).contains(&a.alert_fraction)) {
        problems.push("--alert-fraction must be between 0 and 1".to_string());
    }
    if a.load_state && a.redis.is_none() {
        problems.push("--load-state needs --redis".to_string());
    }
    if a.state_only && !a.load_state && a.write_state.is_none() {
        problems.push("--state-only needs --load-state or --write-state".to_string());
    }
    if !a.state_only {
        if a.url.is_none() {
            problems.push("--url is required".to_string());
        }
        if a.token.as_deref().is_none_or(|t| t.trim().is_empty()) {
            problems.push("--token is required".to_string());
        }
        if !(a.rate.is_finite() && a.rate > 0.0) {
            problems.push("--rate must be > 0".to_string());
        }
        if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 86_400.0) {
            problems.push("--duration must be between 0 and 86400 seconds".to_string());
        }
        if a.connections == 0 || a.connections > 4096 {
            problems.push("--connections must be between 1 and 4096".to_string());
        }
        for (name, v) in [
            ("--report-every", a.report_every),
            ("--drain-timeout", a.drain_timeout),
            ("--alert-wait", a.alert_wait),
            ("--request-timeout", a.request_timeout),
        ] {
            if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
                problems.push(format!("{name} must be between 0 and 3600 seconds"));
            }
        }
        if a.report_every < 0.1 {
            problems.push("--report-every must be at least 0.1 seconds".to_string());
        }
        if let Some(pid) = a.pid
            && !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        {
            problems.push(format!("--pid {pid}: no such process"));
        }
    }
    let mix = Mix::parse(&a.batch);
    if let Err(e) = &mix {
        problems.push(e.clone());
    }
    if !problems.is_empty() {
        return Err(DriveError::BadInput(problems.join("; ")));
    }
    mix.map_err(DriveError::BadInput)
}

fn run(a: &DriveArgs) -> Result<(), DriveError> {
    let mix = validate(a)?;
    let t = Instant::now();
    let with_state = a.load_state || a.write_state.is_some();
    let duration_ms = (a.duration * 1000.0) as u64;
    let (fleet, state) = Fleet::build(a.devices, a.seed, duration_ms, a.alert_fraction, with_state);
    let (rooted, swap) = fleet.trigger_counts();
    if !a.quiet {
        eprintln!(
            "fleet: {} devices of seed {} ({rooted} turn rooted, {swap} get an unregistered SIM) in {:.1} s",
            fleet.len(),
            a.seed,
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(state) = &state {
        if let Some(dir) = &a.write_state {
            state::write(dir, &fleet, state).map_err(DriveError::Failed)?;
            if !a.quiet {
                eprintln!(
                    "state: wrote leases.ndjson, credit.ndjson, places.geojson to {}",
                    dir.display()
                );
            }
        }
        if a.load_state
            && let Some(url) = &a.redis
        {
            let t = Instant::now();
            let n = state::load(url, state).map_err(DriveError::Failed)?;
            if !a.quiet {
                eprintln!(
                    "state: {n} lease/credit keys written to {url} in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    drop(state);
    if a.state_only {
        return Ok(());
    }

    let url = a.url.clone().unwrap_or_default();
    let (addr, host, path) = http::parse_url(&url).map_err(DriveError::BadInput)?;
    let reader = match &a.redis {
        Some(u) => Some(queues::open(u).map_err(DriveError::Failed)?),
        None => None,
    };
    let connections = a.connections.min(a.devices).max(1);
    let stats = Stats::new().map_err(DriveError::Failed)?;
    let duration_us = (a.duration * 1e6) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| DriveError::Failed(format!("tokio runtime: {e}")))?;
    let ctx = Arc::new(Ctx {
        fleet,
        target: Target {
            addr,
            host,
            path,
            authorization: format!("Bearer {}", a.token.as_deref().unwrap_or("").trim()),
            format: a.format,
            gzip: a.gzip,
        },
        mix,
        stats,
        clock: Clock::new(),
        seed: a.seed,
        rate: a.rate,
        connections,
        duration_us,
        deadline_us: duration_us + (a.drain_timeout * 1e6) as u64,
        request_timeout: Duration::from_secs_f64(a.request_timeout.max(0.001)),
        abort: AtomicBool::new(false),
        fatal: std::sync::Mutex::new(None),
    });
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader_thread =
        reader.map(|r| queues::spawn(r, Arc::clone(&ctx), Arc::clone(&stop_reader)));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let mut sampler = Sampler::new(a.pid, a.redis.clone(), a.quiet);
    let cpu_start = sampler.cpu_now();
    let sampler_thread = {
        let (ctx, stop) = (Arc::clone(&ctx), Arc::clone(&stop_sampler));
        let every = Duration::from_secs_f64(a.report_every);
        std::thread::spawn(move || sampler.run(&ctx, every, &stop))
    };

    runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tickets: http::Tickets = Arc::new(tokio::sync::Mutex::new(rx));
        let pacer = tokio::spawn(http::pace(Arc::clone(&ctx), tx));
        let tasks: Vec<_> = (0..connections)
            .map(|i| tokio::spawn(http::run(Arc::clone(&ctx), i, Arc::clone(&tickets))))
            .collect();
        if let Err(e) = pacer.await {
            ctx.stats.error_sample(format!("schedule task: {e}"));
        }
        for t in tasks {
            if let Err(e) = t.await {
                ctx.stats.error_sample(format!("connection task: {e}"));
            }
        }
    });
    let sent_end = ctx.clock.elapsed_us();
    // Alerts still on their way.
    if reader_thread.is_some() && !ctx.abort.load(Ordering::Relaxed) {
        let until = Instant::now() + Duration::from_secs_f64(a.alert_wait);
        while Instant::now() < until {
            let (expected, matched) = ctx.stats.alert_progress();
            if matched >= expected {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop_reader.store(true, Ordering::Relaxed);
    if let Some(t) = reader_thread
        && t.join().is_err()
    {
        ctx.stats
            .error_sample("the queue reader panicked".to_string());
    }
    stop_sampler.store(true, Ordering::Relaxed);
    let (samples, rss, cpu_end) = sampler_thread.join().unwrap_or_default();
    let elapsed_us = ctx.clock.elapsed_us();
    runtime.shutdown_timeout(Duration::from_millis(100));

    let report = build_report(
        a,
        &ctx,
        ReportInputs {
            samples,
            rss,
            cpu_start,
            cpu_end,
            sent_end_us: sent_end,
            elapsed_us,
        },
    );
    if a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| DriveError::Failed(format!("report to JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.text());
    }
    let fatal = ctx.fatal.lock().ok().and_then(|f| f.clone());
    match fatal {
        Some(e) => Err(DriveError::Failed(e)),
        None => Ok(()),
    }
}

struct ReportInputs {
    samples: Vec<Sample>,
    rss: Vec<f64>,
    cpu_start: CpuTimes,
    cpu_end: CpuTimes,
    sent_end_us: u64,
    elapsed_us: u64,
}

fn build_report(a: &DriveArgs, ctx: &Ctx, r: ReportInputs) -> stats::Report {
    let s = &ctx.stats;
    let g = Stats::get;
    let active_us = g(&s.last_accept_us).max(1);
    let accepted = g(&s.pings_accepted);
    let unsent = g(&s.pings_unsent);
    let abandoned = g(&s.pings_abandoned);
    let max_behind_s = g(&s.max_behind_us) as f64 / 1e6;
    let alerts = a.redis.as_ref().map(|_| {
        let (expected, matched) = s.alert_progress();
        let q = s.queues.lock();
        let (ptq, eme, all, by_queue, by_signal, (repeats, other, exact, errors)) = match &q {
            Ok(q) => (
                q.ping_to_queue.summary(),
                q.emitted_minus_event.summary(),
                q.emitted_minus_event_all.summary(),
                q.by_queue.clone(),
                q.by_signal.clone(),
                (q.repeats, q.other, q.exact, q.errors),
            ),
            Err(_) => Default::default(),
        };
        stats::Alerts {
            expected,
            matched,
            missing: expected.saturating_sub(matched),
            ping_to_queue: ptq,
            emitted_minus_event: eme,
            emitted_minus_event_all: all,
            read_by_queue: by_queue,
            read_by_signal: by_signal,
            exact,
            repeats,
            other,
            read_errors: errors,
        }
    });
    let rss = (!r.rss.is_empty()).then(|| stats::Rss {
        first: r.rss.first().copied().unwrap_or(0.0),
        last: r.rss.last().copied().unwrap_or(0.0),
        min: r.rss.iter().copied().fold(f64::INFINITY, f64::min),
        max: r.rss.iter().copied().fold(0.0, f64::max),
    });
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let ack = s.ack.lock().map(|h| h.summary()).unwrap_or_default();
    stats::Report {
        target: stats::Target {
            url: a.url.clone().unwrap_or_default(),
            rate: a.rate,
            duration_s: a.duration,
            devices: a.devices,
            connections: ctx.connections,
            format: a.format.as_str(),
            gzip: a.gzip,
            batch: ctx.mix.describe(),
            mean_request_pings: ctx.mix.mean_request(),
            alert_devices: ctx.fleet.alerting.len() as u64,
        },
        elapsed_s: r.elapsed_us as f64 / 1e6,
        sending_s: r.sent_end_us as f64 / 1e6,
        active_s: active_us as f64 / 1e6,
        pings: stats::Pings {
            scheduled: g(&s.pings_scheduled),
            sent: g(&s.pings_sent),
            accepted,
            rejected: g(&s.pings_rejected),
            unsent,
            abandoned,
        },
        accepted_per_s: accepted as f64 / (active_us as f64 / 1e6),
        kept_up: unsent == 0 && abandoned == 0 && max_behind_s < 1.0,
        max_behind_s,
        requests: stats::Requests {
            total: g(&s.requests),
            by_status: s
                .statuses()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            retries: g(&s.retries),
            retry_wait_s: g(&s.retry_wait_ms) as f64 / 1e3,
            errors: g(&s.errors),
            timeouts: g(&s.timeouts),
            bytes_sent: g(&s.bytes_sent),
        },
        ack_latency: ack,
        alerts,
        pipeline_rss_mib: rss,
        cpu: stats::Cpu {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            driver_s: r.cpu_end.driver_s - r.cpu_start.driver_s,
            pipeline_s: diff(r.cpu_start.pipeline_s, r.cpu_end.pipeline_s),
            redis_s: diff(r.cpu_start.redis_s, r.cpu_end.redis_s),
        },
        samples: r.samples,
        error_samples: s
            .error_samples
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
        fatal: ctx.fatal.lock().ok().and_then(|f| f.clone()),
    }
}

/// Samples CPU and memory every interval and prints a progress line.
struct Sampler {
    pid: Option<u32>,
    redis: Option<redis::Connection>,
    /// Alerts are read (`--redis`).
    alerts: bool,
    quiet: bool,
}

impl Sampler {
    fn new(pid: Option<u32>, redis_url: Option<String>, quiet: bool) -> Self {
        let alerts = redis_url.is_some();
        let redis = redis_url.and_then(|u| {
            redis::Client::open(u)
                .ok()?
                .get_connection_with_timeout(Duration::from_secs(5))
                .ok()
        });
        Self {
            pid,
            redis,
            alerts,
            quiet,
        }
    }

    fn info(&mut self, section: &str, keys: &[&str]) -> Option<f64> {
        let conn = self.redis.as_mut()?;
        let text: String = redis::cmd("INFO").arg(section).query(conn).ok()?;
        let mut sum = 0.0;
        let mut found = false;
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':')
                && keys.contains(&k)
                && let Ok(x) = v.trim().parse::<f64>()
            {
                sum += x;
                found = true;
            }
        }
        found.then_some(sum)
    }

    fn cpu_now(&mut self) -> CpuTimes {
        CpuTimes {
            driver_s: stats::cpu_seconds("self").unwrap_or(0.0),
            pipeline_s: self.pid.and_then(|p| stats::cpu_seconds(&p.to_string())),
            redis_s: self.info("cpu", &["used_cpu_sys", "used_cpu_user"]),
        }
    }

    /// Samples until `stop`; returns the samples, the RSS series (MiB) and the final
    /// CPU times.
    fn run(
        mut self,
        ctx: &Ctx,
        every: Duration,
        stop: &AtomicBool,
    ) -> (Vec<Sample>, Vec<f64>, CpuTimes) {
        let s = &ctx.stats;
        let mut samples = Vec::new();
        let mut rss = Vec::new();
        if let Some(m) = self.pid.and_then(|p| stats::rss_kib(&p.to_string())) {
            rss.push(m as f64 / 1024.0);
        }
        let mut last_cpu = self.cpu_now();
        let mut last_t = Instant::now();
        let mut last_accepted = 0u64;
        let mut last_refused = 0u64;
        let mut next = Instant::now() + every;
        loop {
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) {
                    return (samples, rss, self.cpu_now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            next += every;
            let now = Instant::now();
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            last_t = now;
            let cpu = self.cpu_now();
            let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(x), Some(y)) => Some(100.0 * (y - x) / dt),
                _ => None,
            };
            let accepted = Stats::get(&s.pings_accepted);
            let statuses = s.statuses();
            let refused =
                statuses.get(&429).copied().unwrap_or(0) + statuses.get(&503).copied().unwrap_or(0);
            let rss_mib = self
                .pid
                .and_then(|p| stats::rss_kib(&p.to_string()))
                .map(|k| k as f64 / 1024.0);
            if let Some(m) = rss_mib {
                rss.push(m);
            }
            let (expected, matched, p99, interval_p99) = {
                let (e, m) = s.alert_progress();
                let (p, i) = match s.queues.lock() {
                    Ok(mut q) => {
                        let i = q.ping_to_queue_interval.summary().p99_ms;
                        q.ping_to_queue_interval.reset();
                        (q.ping_to_queue.summary().p99_ms, i)
                    }
                    Err(_) => (None, None),
                };
                (e, m, p, i)
            };
            let sample = Sample {
                t_s: ctx.clock.elapsed_us() as f64 / 1e6,
                accepted_per_s: (accepted - last_accepted) as f64 / dt,
                accepted,
                refused: refused - last_refused,
                alert_p99_ms: p99,
                interval_alert_p99_ms: interval_p99,
                pipeline_rss_mib: rss_mib,
                driver_rss_mib: stats::rss_kib("self").map(|k| k as f64 / 1024.0),
                driver_cpu_pct: 100.0 * (cpu.driver_s - last_cpu.driver_s) / dt,
                pipeline_cpu_pct: pct(last_cpu.pipeline_s, cpu.pipeline_s),
                redis_cpu_pct: pct(last_cpu.redis_s, cpu.redis_s),
                redis_used_mib: self
                    .info("memory", &["used_memory"])
                    .map(|b| b / 1_048_576.0),
            };
            last_cpu = cpu;
            last_accepted = accepted;
            last_refused = refused;
            if !self.quiet {
                let behind = Stats::get(&s.max_behind_us) as f64 / 1e6;
                let opt = |v: Option<f64>, unit: &str| {
                    v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"))
                };
                let alerts = if self.alerts {
                    format!(
                        "{matched}/{expected} p99 {} (interval {})",
                        opt(p99, " ms"),
                        opt(interval_p99, " ms")
                    )
                } else {
                    "-".to_string()
                };
                eprintln!(
                    "[{:6.1}s] {:>9.0} pings/s accepted (total {}) | 429/503 {} retries {} | max behind {:.1} s | alerts {} | rss {} | cpu driver {:.0}% pipeline {} redis {}",
                    sample.t_s,
                    sample.accepted_per_s,
                    accepted,
                    sample.refused,
                    Stats::get(&s.retries),
                    behind,
                    alerts,
                    opt(rss_mib, " MiB"),
                    sample.driver_cpu_pct,
                    opt(sample.pipeline_cpu_pct, "%"),
                    opt(sample.redis_cpu_pct, "%"),
                );
            }
            samples.push(sample);
        }
    }
}
