//! The Grafana dashboards against the code, a real `leasewatch run` and a real Prometheus.
//!
//! 1. Every metric a panel names is one `leasewatch::metrics` declares (a small PromQL
//!    identifier scanner reads each panel's `expr`).
//! 2. A real Prometheus (Debian package `prometheus`; installed when missing) scrapes the
//!    real `leasewatch run` binary every second while the test feeds it pings over HTTP,
//!    then evaluates every expression of every panel through `/api/v1/query`: each must
//!    parse, and the [`CORE`] panels must return data. Every metric a dashboard names
//!    must be among the series Prometheus actually scraped.
//!
//! `leasewatch run` does not yet wire the Redis stages (the lease lookup, the alert sink
//! and the queue/lease sampler: their `leasewatch_lookup_*`, `leasewatch_sink_*` and
//! `leasewatch_queue_*`/`leasewatch_state_*` series), so those come from a second scrape
//! target: the real lookup, sink and sampler driven in-process from the same pings,
//! against a private `redis-server` ([`StandIn`]). Prometheus takes exactly those series
//! from it and every other one from the real process ([`from_stand_in`]); a check on the
//! real process's `/metrics` fails as soon as it produces one of them itself, so the
//! stand-in shrinks as `run` grows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::Int32Type;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leasewatch::lookup::{LookupConfig, RedisLookup};
use leasewatch::metrics::{DEFS, Kind, Metrics};
use leasewatch::redis_client::{ConnectionConfig, RedisConn};
use leasewatch::sink::redis::{RedisAlertSink, RedisSinkConfig};
use leasewatch_schemas::{
    Alert, Grade, Keys, LeaseState, LeaseStatus, Queue, Reason, SignalKind, lease_schema,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::redis::RedisServer;
use support::run::RunSetup;
use tokio::net::{TcpListener, TcpStream};

/// Panels that must return data against a pipeline under load (by dashboard file and
/// title). Every other panel must still parse.
const CORE: &[(&str, &str)] = &[
    ("pipeline-health.json", "Ingested pings per second"),
    ("pipeline-health.json", "Requests by status"),
    ("pipeline-health.json", "Rejects by reason"),
    ("pipeline-health.json", "Reject ratio"),
    ("pipeline-health.json", "Ingest request latency"),
    ("pipeline-health.json", "Engine rows in and late"),
    ("pipeline-health.json", "Rows out per sink"),
    ("pipeline-health.json", "Watermark lag"),
    ("pipeline-health.json", "Engine backlog"),
    ("pipeline-health.json", "Window state"),
    ("pipeline-health.json", "Checkpoint age"),
    ("pipeline-health.json", "Checkpoint duration"),
    ("pipeline-health.json", "WAL fsync latency"),
    ("pipeline-health.json", "WAL write rate and size"),
    ("pipeline-health.json", "End-to-end latency to the queue"),
    ("pipeline-health.json", "Lookup cache hit ratio"),
    ("pipeline-health.json", "Redis round trip"),
    ("pipeline-health.json", "Redis errors and retries"),
    ("pipeline-health.json", "Resident memory"),
    ("risk-overview.json", "Alerts by signal"),
    ("risk-overview.json", "Alerts by grade"),
    ("risk-overview.json", "Alerts by queue"),
    ("risk-overview.json", "Share of devices alerting"),
    ("risk-overview.json", "Suppressed and duplicate alerts"),
    ("risk-overview.json", "Leases by days past due"),
    ("risk-overview.json", "Queue depth"),
    ("risk-overview.json", "Consumer lag"),
];

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

/// `(file name, dashboard)` of every dashboard.
fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana_dir().join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 2,
        "expected the dashboards in {}",
        dir.display()
    );
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(panel title, expr)` of every query of every panel.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let e = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                (title.clone(), e.to_string())
            })
        })
        .collect()
}

/// PromQL words that are not metric names: aggregations, keywords, literals.
const NOT_METRICS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
];

/// Metric names in a PromQL expression: identifiers that are not function calls,
/// keywords, label names (inside `{}` or `by (...)`), strings, numbers or durations.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |mut i: usize, close: char| -> usize {
        // From an opening bracket to after its closing one, skipping quoted strings.
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' {
                let q = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (5m, 1e-9, 0.99).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // A label list follows (optional for group_left/right).
                if call {
                    i = skip_to(j, ')');
                }
            } else if !call && !NOT_METRICS.contains(&word.as_str()) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric a series name belongs to (`_bucket`/`_sum`/`_count` of a histogram).
fn declared(series: &str) -> bool {
    DEFS.iter().any(|d| {
        d.name == series
            || (d.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_suffix(s) == Some(d.name)))
    })
}

#[test]
fn scanner_reads_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, from) (rate(leasewatch_sink_end_to_end_seconds_bucket{from="a}"}[5m])))"#
        ),
        vec!["leasewatch_sink_end_to_end_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum(rate(a_total[1m])) / clamp_min(sum without (x) (b_bytes), 1e-9) * 60 + max by(q) (c) offset 5m"
        ),
        vec!["a_total", "b_bytes", "c"]
    );
    assert_eq!(
        metric_names("x_total > bool 0 and on (job) group_left (i) y unless z"),
        vec!["x_total", "y", "z"]
    );
    assert!(declared("leasewatch_wal_fsync_duration_seconds_bucket"));
    assert!(!declared("leasewatch_wal_appends_total_bucket"));
    assert!(!declared("leasewatch_nothing_total"));
}

#[test]
fn every_dashboard_metric_is_exported() {
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (file, d) in dashboards() {
        for (title, expr) in exprs(&d) {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "{file} / {title}: no metric in {expr}");
            for n in names {
                if !declared(&n) {
                    missing.push(format!("{file} / {title}: {n}"));
                }
                used.insert(n);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards name metrics the code does not export:\n{}",
        missing.join("\n")
    );
    assert!(used.len() > 30, "only {} metrics used", used.len());
}

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards();
    let mut uids = BTreeSet::new();
    for (file, d) in &all {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: uid"
        );
        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: id of {title}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file} / {title}");
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{file} / {title}: no description"
            );
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{file} / {title}: no query"
            );
        }
    }
    for (file, title) in CORE {
        let (_, d) = all
            .iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("no dashboard {file}"));
        assert!(
            panels(d).iter().any(|p| p["title"] == *title),
            "core panel {file} / {title} does not exist"
        );
    }
    for f in [
        "provisioning/datasources/prometheus.yml",
        "provisioning/dashboards/leasewatch.yml",
        "prometheus.yml",
        "README.md",
    ] {
        assert!(grafana_dir().join(f).is_file(), "grafana/{f} is missing");
    }
}

// ---------------------------------------------------------------------------------------
// Where each series comes from.

/// The Prometheus job of the real `leasewatch run` process.
const RUN_JOB: &str = "leasewatch";
/// The Prometheus job of the in-process stand-in for the Redis stages.
const STAND_IN_JOB: &str = "redis-stages";

/// Metric name prefixes of the Redis stages `leasewatch run` does not wire yet.
const STAND_IN_PREFIXES: &[&str] = &[
    "leasewatch_lookup_",
    "leasewatch_queue_",
    "leasewatch_state_",
];
/// The alert sink's prefix: all its series except the receive-to-done latency
/// (`leasewatch_sink_end_to_end_seconds{from="receive_time"}`), which `run` measures.
const SINK_PREFIX: &str = "leasewatch_sink_";

/// Whether the series `name` (with label `from`, or "" without) is taken from the
/// stand-in rather than from `leasewatch run`. [`stand_in_regex`] says the same to
/// Prometheus.
fn from_stand_in(name: &str, from: &str) -> bool {
    STAND_IN_PREFIXES.iter().any(|p| name.starts_with(p))
        || (name.starts_with(SINK_PREFIX) && (from.is_empty() || from == "event_time"))
}

/// [`from_stand_in`] as a Prometheus relabel regex over `__name__;from` (anchored).
fn stand_in_regex() -> String {
    format!(
        "({})[^;]*;.*|{SINK_PREFIX}[^;]*;(event_time)?",
        STAND_IN_PREFIXES.join("|")
    )
}

/// The jobs a dashboard metric (a series name) must come from: the end-to-end latency
/// from both (its `from` label tells them apart), any other from one.
fn sources(name: &str) -> Vec<&'static str> {
    if name.starts_with("leasewatch_sink_end_to_end_seconds") {
        vec![STAND_IN_JOB, RUN_JOB]
    } else if from_stand_in(name, "") {
        vec![STAND_IN_JOB]
    } else {
        vec![RUN_JOB]
    }
}

/// `(series name, from label, value)` of every sample of a text exposition.
fn samples(exposition: &str) -> Vec<(String, String, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let end = l.find(['{', ' '])?;
            let name = l[..end].to_string();
            let from = l
                .find("from=\"")
                .map(|i| {
                    let rest = &l[i + 6..];
                    rest[..rest.find('"').unwrap_or(0)].to_string()
                })
                .unwrap_or_default();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((name, from, value))
        })
        .collect()
}

#[test]
fn stand_in_split() {
    assert!(from_stand_in("leasewatch_lookup_cache_hits_total", ""));
    assert!(from_stand_in("leasewatch_sink_alerts_total", ""));
    assert!(from_stand_in(
        "leasewatch_sink_end_to_end_seconds_bucket",
        "event_time"
    ));
    assert!(!from_stand_in(
        "leasewatch_sink_end_to_end_seconds_bucket",
        "receive_time"
    ));
    assert!(!from_stand_in("leasewatch_engine_rows_in_total", ""));
    assert_eq!(
        sources("leasewatch_sink_end_to_end_seconds_count"),
        vec![STAND_IN_JOB, RUN_JOB]
    );
    assert_eq!(sources("leasewatch_wal_commits_total"), vec![RUN_JOB]);
    assert_eq!(sources("leasewatch_sink_alerts_total"), vec![STAND_IN_JOB]);
    assert_eq!(
        stand_in_regex(),
        "(leasewatch_lookup_|leasewatch_queue_|leasewatch_state_)[^;]*;.*|leasewatch_sink_[^;]*;(event_time)?"
    );
    assert_eq!(
        samples("# HELP x\nx_total 3\ny_bucket{from=\"a\",le=\"+Inf\"} 2.5\n"),
        vec![
            ("x_total".to_string(), String::new(), 3.0),
            ("y_bucket".to_string(), "a".to_string(), 2.5)
        ]
    );
}

// ---------------------------------------------------------------------------------------
// A real Prometheus against a real `leasewatch run` under load.

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A running `prometheus`, killed on drop.
struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ensure_prometheus() {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return;
    }
    // scripts/test installs it; this covers a bare `cargo test` as root on Debian.
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null && \
             apt-get install -y -qq --no-install-recommends prometheus >/dev/null",
        )
        .status()
        .expect("run apt-get");
    assert!(
        status.success(),
        "prometheus is not on PATH and apt-get install prometheus failed"
    );
}

impl Prometheus {
    /// Scrapes `run` (job [`RUN_JOB`], the stand-in's series dropped) and `stand_in`
    /// (job [`STAND_IN_JOB`], only those series kept) every second.
    fn start(run: SocketAddr, stand_in: SocketAddr) -> Self {
        ensure_prometheus();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let regex = stand_in_regex();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n\
                 \x20 - job_name: {RUN_JOB}\n\
                 \x20   static_configs:\n\
                 \x20     - targets: [\"{run}\"]\n\
                 \x20   metric_relabel_configs:\n\
                 \x20     - source_labels: [__name__, from]\n\
                 \x20       regex: '{regex}'\n\
                 \x20       action: drop\n\
                 \x20 - job_name: {STAND_IN_JOB}\n\
                 \x20   static_configs:\n\
                 \x20     - targets: [\"{stand_in}\"]\n\
                 \x20   metric_relabel_configs:\n\
                 \x20     - source_labels: [__name__, from]\n\
                 \x20       regex: '{regex}'\n\
                 \x20       action: keep\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn query(&self, expr: &str) -> Value {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let (_, body) = http(addr, "GET", &path, &[], Bytes::new()).await;
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{expr}: {e}: {}", String::from_utf8_lossy(&body)))
    }

    /// The value of a one-sample expression (0 when it has no sample).
    async fn value(&self, expr: &str) -> f64 {
        let v = self.query(expr).await;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0)
    }

    /// Metric names Prometheus holds from `job`.
    async fn names(&self, job: &str) -> BTreeSet<String> {
        let v = self
            .query(&format!("count by (__name__) ({{job=\"{job}\"}})"))
            .await;
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["__name__"].as_str().map(str::to_string))
            .collect()
    }

    async fn wait_ready(&self) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(addr).await {
                drop(s);
                let (status, _) = http(addr, "GET", "/-/ready", &[], Bytes::new()).await;
                if status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

/// A valid IMEI: 14 digits and their Luhn check digit.
fn imei(n: u64) -> String {
    let base = format!("{:014}", 49_015_420_000_000 + n);
    let sum: u32 = base
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).unwrap();
            if i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{base}{}", (10 - sum % 10) % 10)
}

const DEVICES: u64 = 200;
const TOKEN: &str = "dashboards-token-0123456789";
const PREFIX: &str = "lw:";

const SQL: &str = "
CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  battery_pct INT,
  rooted BOOLEAN,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '1' SECOND)
) WITH (connector = 'leasewatch');

CREATE TABLE rooted_pings (device_id TEXT, event_time TIMESTAMP)
  WITH (connector = 'blackhole');
CREATE TABLE per_device (device_id TEXT, window_end TIMESTAMP, pings BIGINT)
  WITH (connector = 'blackhole');

INSERT INTO rooted_pings SELECT device_id, event_time FROM pings WHERE rooted;

INSERT INTO per_device
SELECT device_id, window.end, pings
FROM (
  SELECT device_id, tumble(INTERVAL '2' SECOND) AS window, count(*) AS pings
  FROM pings
  GROUP BY device_id, window
);
";

fn lease(n: u64) -> LeaseState {
    let device = imei(n);
    LeaseState {
        lease_id: format!("L-{n}"),
        device_id: device,
        customer_id: format!("C-{n}"),
        registered_iccid: None,
        registered_imsi: None,
        lease_country: "KE".into(),
        permitted_cells: vec![],
        area_res: 7,
        status: if n.is_multiple_of(5) {
            LeaseStatus::Overdue
        } else {
            LeaseStatus::Active
        },
        due_date: "2026-01-31".into(),
        days_past_due: if n.is_multiple_of(5) {
            (n % 40) as i32
        } else {
            0
        },
        amount_due: 0,
        deposit: 5_000,
        monthly_rent: 2_500,
        currency: "KES".into(),
    }
}

/// One ping of a request, as the stand-in needs it.
struct Ping {
    device: String,
    event_time: i64,
    rooted: bool,
    /// Ingest accepts it (the others have a bad IMEI or battery level).
    valid: bool,
}

/// One NDJSON request of `rows` pings, some late, some rooted, some invalid; and the
/// pings.
fn request(round: u64, rows: u64) -> (String, Vec<Ping>) {
    let now = now_ms();
    let mut pings = Vec::with_capacity(rows as usize);
    let body = (0..rows)
        .map(|i| {
            let k = round * rows + i;
            let n = k % DEVICES;
            let late = k.is_multiple_of(17);
            let t = if late { now - 30_000 } else { now - 200 };
            let bad_id = k.is_multiple_of(23);
            let device = if bad_id {
                "12345".to_string() // rejected: bad_format
            } else {
                imei(n)
            };
            let bad_battery = k.is_multiple_of(29);
            let battery = if bad_battery { 250 } else { 50 }; // 250: out_of_range
            let rooted = n.is_multiple_of(31);
            pings.push(Ping {
                device: device.clone(),
                event_time: t,
                rooted,
                valid: !bad_id && !bad_battery,
            });
            format!(
                r#"{{"device_id":"{device}","event_time":{t},"seq":{k},"lat":-1.29,"lon":36.82,"battery_pct":{battery},"rooted":{rooted},"event_kind":"heartbeat"}}"#
            ) + "\n"
        })
        .collect();
    (body, pings)
}

/// The Redis stages `leasewatch run` does not wire yet, in-process: the lease lookup and
/// the alert sink against a private `redis-server`, fed the pings `run` accepted, and
/// the queue/lease sampler, reporting into their own registry served on `/metrics`.
struct StandIn {
    lookup: RedisLookup,
    sink: RedisAlertSink,
}

impl StandIn {
    /// Stand-in grading (the SQL grading is not wired to the Redis sink yet): rooted
    /// pings are tamper alerts; pings of overdue leases climb the collection ladder.
    async fn process(&self, pings: &[Ping]) {
        let pings: Vec<&Ping> = pings.iter().filter(|p| p.valid).collect();
        let ids: StringArray = pings.iter().map(|p| Some(p.device.as_str())).collect();
        let state = self.lookup.lookup(&ids).await.unwrap();
        let dpd = state
            .column_by_name("days_past_due")
            .unwrap()
            .as_primitive::<Int32Type>();
        let mut alerts = Vec::new();
        for (i, p) in pings.iter().enumerate() {
            let minute = p.event_time / 60_000;
            let d = (!dpd.is_null(i)).then(|| dpd.value(i));
            let (signal, grade, queue) = if p.rooted {
                (SignalKind::Tamper, Grade::High, Queue::Lock)
            } else if let Some(d @ 3..) = d {
                match d {
                    3..=6 => (SignalKind::Overdue, Grade::Low, Queue::Sms),
                    7..=14 => (SignalKind::Overdue, Grade::Medium, Queue::Call),
                    15..=29 => (SignalKind::Overdue, Grade::High, Queue::Field),
                    _ => (SignalKind::Overdue, Grade::Critical, Queue::Legal),
                }
            } else {
                continue;
            };
            alerts.push(Alert {
                alert_id: format!("{}:{}:{minute}:{}", signal.as_str(), p.device, i % 3),
                signal,
                grade,
                queue,
                device_id: p.device.clone(),
                lease_id: None,
                customer_id: None,
                event_time: p.event_time,
                window_start: None,
                window_end: None,
                days_past_due: d,
                credit_band: None,
                reasons: vec![Reason {
                    rule: signal.as_str().to_string(),
                    value: d.map(f64::from),
                    threshold: Some(3.0),
                    detail: None,
                }],
            });
        }
        self.sink.write_alerts(&alerts).await.unwrap();
    }
}

/// Serves `registry` on `GET /metrics` until `stop` fires.
async fn serve_metrics(
    registry: prometheus::Registry,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = registry.clone();
            async move {
                prometheus::TextEncoder::new()
                    .encode_to_string(&r.gather())
                    .unwrap()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    (addr, stop)
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http(addr, "GET", path, &[], Bytes::new()).await;
    assert_eq!(status, 200, "GET {path} on {addr}");
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_panel() {
    let started = Instant::now();
    // The real pipeline: `leasewatch run`, checkpointing every second.
    let setup = RunSetup::new(SQL, TOKEN, 1, "");
    let mut run = setup.start();
    let addr = run.addr;

    // The stand-in for the Redis stages.
    let redis = RedisServer::start();
    let keys = Keys::new(PREFIX);
    {
        let mut c = redis.conn();
        let mut p = ::redis::pipe();
        for n in 0..DEVICES {
            let l = lease(n);
            p.cmd("SET")
                .arg(keys.lease(&l.device_id))
                .arg(serde_json::to_string(&l).unwrap())
                .ignore();
        }
        for q in [Queue::Sms, Queue::Lock] {
            p.cmd("XGROUP")
                .arg("CREATE")
                .arg(keys.queue(q))
                .arg("collectors")
                .arg("$")
                .arg("MKSTREAM")
                .ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let lookup = RedisLookup::new(
        LookupConfig::new(redis.url(), keys.lease_prefix()),
        lease_schema(),
    )
    .unwrap();
    metrics.add_lookup("lease", lookup.stats());
    let mut sink_config = RedisSinkConfig::new(redis.url(), PREFIX);
    sink_config.cooldown_ms = 1_000;
    let sink = RedisAlertSink::new(sink_config).unwrap();
    metrics.add_sink(sink.stats());
    let sampler = metrics.spawn_redis_sampler(
        Arc::new(RedisConn::new(&ConnectionConfig::new(redis.url())).unwrap()),
        keys.clone(),
        Duration::from_secs(1),
        100_000,
    );
    let stand_in = StandIn { lookup, sink };
    let (stand_in_addr, stop_stand_in) = serve_metrics(registry).await;

    let prom = Prometheus::start(addr, stand_in_addr);
    prom.wait_ready().await;

    // ~10 s of load on the real process: 20 requests of 100 pings a second, one
    // unauthorised in 25, while Prometheus scrapes it every second.
    let auth = format!("Bearer {TOKEN}");
    let load_until = Instant::now() + Duration::from_secs(10);
    let mut round = 0u64;
    let mut accepted = 0u64;
    while Instant::now() < load_until {
        let (body, pings) = request(round, 100);
        let token = if round % 25 == 7 {
            "Bearer wrong-token-0123456789"
        } else {
            auth.as_str()
        };
        let (status, reply) = http(
            addr,
            "POST",
            "/v1/pings",
            &[
                ("authorization", token),
                ("content-type", "application/x-ndjson"),
            ],
            Bytes::from(body),
        )
        .await;
        match status {
            202 => {
                let v: Value = serde_json::from_slice(&reply).unwrap();
                let n = v["accepted"].as_u64().unwrap();
                assert_eq!(n, pings.iter().filter(|p| p.valid).count() as u64, "{v}");
                accepted += n;
                stand_in.process(&pings).await;
            }
            401 => assert_eq!(round % 25, 7),
            429 | 503 => {} // backpressure: fine under load, retried by real clients
            s => panic!(
                "POST /v1/pings: {s} {}\n{}",
                String::from_utf8_lossy(&reply),
                run.log()
            ),
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted > 1000, "only {accepted} pings accepted");

    // The engine catches up and Prometheus scrapes the final state.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ingested = prom
            .value(&format!(
                "sum(leasewatch_ingest_rows_total{{job=\"{RUN_JOB}\",result=\"accepted\"}})"
            ))
            .await;
        let processed = prom
            .value(&format!(
                "sum(leasewatch_engine_rows_in_total{{job=\"{RUN_JOB}\"}})"
            ))
            .await;
        if ingested == accepted as f64 && processed == accepted as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the load Prometheus sees {ingested} pings ingested and {processed} \
             processed by leasewatch run, the test had {accepted} accepted\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    for job in [RUN_JOB, STAND_IN_JOB] {
        let up = prom.query(&format!("up{{job=\"{job}\"}}")).await;
        assert_eq!(
            up["data"]["result"][0]["value"][1],
            "1",
            "Prometheus did not scrape {job}: {up}\n{}",
            prom.log()
        );
    }

    // The real process produces none of the stand-in's series itself (only their
    // zero-valued placeholders): when it does, the stand-in must give them up.
    let run_exposition = get_text(addr, "/metrics").await;
    let taken_over: BTreeSet<String> = samples(&run_exposition)
        .into_iter()
        .filter(|(name, from, v)| from_stand_in(name, from) && *v != 0.0)
        .map(|(name, from, _)| format!("{name}{{from={from:?}}}"))
        .collect();
    assert!(
        taken_over.is_empty(),
        "leasewatch run now produces series the test takes from its stand-in for the Redis \
         stages: {taken_over:?}. Narrow STAND_IN_PREFIXES / from_stand_in in \
         pipeline/tests/dashboards.rs so Prometheus reads them from the real process."
    );

    // Every metric a dashboard names was scraped from where it must come from.
    let scraped: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        (RUN_JOB, prom.names(RUN_JOB).await),
        (STAND_IN_JOB, prom.names(STAND_IN_JOB).await),
    ]);
    let mut not_scraped = Vec::new();
    for (file, d) in dashboards() {
        for (title, expr) in exprs(&d) {
            for name in metric_names(&expr) {
                for job in sources(&name) {
                    if !scraped[job].contains(&name) {
                        not_scraped.push(format!("{file} / {title}: {name} (job {job})"));
                    }
                }
            }
        }
    }
    not_scraped.sort();
    not_scraped.dedup();
    assert!(
        not_scraped.is_empty(),
        "dashboards name metrics the pipeline does not export:\n{}",
        not_scraped.join("\n")
    );

    // The load reached every stage: not just series, but counts.
    for (job, expr) in [
        (RUN_JOB, "leasewatch_ingest_rows_total{result=\"accepted\"}"),
        (
            RUN_JOB,
            "leasewatch_ingest_rejects_total{reason=\"bad_format\"}",
        ),
        (
            RUN_JOB,
            "leasewatch_ingest_rejects_total{reason=\"out_of_range\"}",
        ),
        (RUN_JOB, "leasewatch_ingest_requests_total{status=\"401\"}"),
        (RUN_JOB, "leasewatch_engine_late_rows_total"),
        (
            RUN_JOB,
            "leasewatch_engine_rows_out_total{sink=\"rooted_pings\"}",
        ),
        (RUN_JOB, "leasewatch_engine_windows_emitted_total"),
        (RUN_JOB, "leasewatch_engine_active_devices"),
        (RUN_JOB, "leasewatch_wal_fsync_duration_seconds_count"),
        (RUN_JOB, "leasewatch_wal_checkpoint_duration_seconds_count"),
        (
            RUN_JOB,
            "leasewatch_sink_end_to_end_seconds_count{from=\"receive_time\"}",
        ),
        (RUN_JOB, "leasewatch_process_resident_memory_bytes"),
        (STAND_IN_JOB, "leasewatch_lookup_cache_hits_total"),
        (
            STAND_IN_JOB,
            "leasewatch_sink_alerts_total{signal=\"tamper\"}",
        ),
        (
            STAND_IN_JOB,
            "leasewatch_sink_alerts_total{queue=\"legal\"}",
        ),
        (STAND_IN_JOB, "leasewatch_sink_suppressed_total"),
        (STAND_IN_JOB, "leasewatch_sink_alerting_devices"),
        (
            STAND_IN_JOB,
            "leasewatch_sink_end_to_end_seconds_count{from=\"event_time\"}",
        ),
        (STAND_IN_JOB, "leasewatch_queue_consumer_lag_messages"),
        (STAND_IN_JOB, "leasewatch_state_leases{dpd=\"30+\"}"),
    ] {
        let selector = match expr.split_once('{') {
            Some((name, rest)) => format!("{name}{{job=\"{job}\",{rest}"),
            None => format!("{expr}{{job=\"{job}\"}}"),
        };
        let expr = format!("sum({selector})");
        let n = prom.value(&expr).await;
        assert!(n > 0.0, "{expr} = {n}: {}", prom.query(&expr).await);
    }

    let mut failures = Vec::new();
    let mut empty_optional = Vec::new();
    let mut evaluated = 0;
    for (file, d) in dashboards() {
        for (title, expr) in exprs(&d) {
            let v = prom.query(&expr).await;
            evaluated += 1;
            if v["status"] != "success" {
                failures.push(format!("{file} / {title}: does not evaluate: {expr}: {v}"));
                continue;
            }
            let empty = v["data"]["result"].as_array().is_none_or(Vec::is_empty);
            if empty {
                if CORE.contains(&(file.as_str(), title.as_str())) {
                    failures.push(format!("{file} / {title}: core panel without data: {expr}"));
                } else {
                    empty_optional.push(format!("{file} / {title}: {expr}"));
                }
            }
        }
    }
    eprintln!(
        "evaluated {evaluated} expressions against leasewatch run (pid {}) and the Redis \
         stand-in after {accepted} pings in {:.1} s; non-core without data: {}",
        run.pid(),
        started.elapsed().as_secs_f64(),
        if empty_optional.is_empty() {
            "none".to_string()
        } else {
            empty_optional.join("; ")
        }
    );
    sampler.abort();
    let _ = stop_stand_in.send(());
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // It stops cleanly after the load.
    let status = run.stop();
    assert!(status.success(), "exit {status}:\n{}", run.log());
}
