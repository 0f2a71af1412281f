//! The Grafana dashboards against the code, a real `leasewatch run` and a real Prometheus.
//!
//! 1. Every metric a panel names is one `leasewatch::metrics` declares (a small PromQL
//!    identifier scanner reads each panel's `expr`).
//! 2. A real Prometheus (Debian package `prometheus`; installed when missing) scrapes the
//!    real `leasewatch run` binary every second while the test feeds it pings over HTTP,
//!    then evaluates every expression of every panel through `/api/v1/query`: each must
//!    parse, and the [`CORE`] panels must return data. Every metric a dashboard names
//!    must be among the series Prometheus actually scraped from it.
//! 3. `grafana/README.md` lists every metric declared.
//!
//! The process runs the product rules and grading (`sql/`, copied) with its Redis
//! connectors pointed at a private `redis-server` holding lease and credit state, so
//! every stage has data: some phones report a SIM other than their lease's
//! (`sim_mismatch`, per ping, then suppressed by the cooldown) or are rooted (`tamper`),
//! some leases are overdue (the lease sweep at start climbs the collection ladder), two
//! queues have a consumer group, and the lookups, the alert sink and the queue/lease
//! sampler are those `leasewatch run` wires itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leasewatch::metrics::{DEFS, Kind};
use leasewatch_schemas::{CreditBand, CreditState, Keys, LeaseState, LeaseStatus, Queue};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::redis::RedisServer;
use support::run::RunSetup;
use tokio::net::TcpStream;

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
    ("pipeline-health.json", "Rows in and out per query"),
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
fn readme_lists_every_metric() {
    let readme = std::fs::read_to_string(grafana_dir().join("README.md")).unwrap();
    let missing: Vec<&str> = DEFS
        .iter()
        .map(|d| d.name)
        .filter(|n| {
            let short = n.trim_start_matches("leasewatch_");
            !readme.contains(&format!("`{short}`")) && !readme.contains(&format!("`{short}{{"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "grafana/README.md (section Metrics) does not list {missing:?}"
    );
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
// A real Prometheus against a real `leasewatch run` under load.

/// The Prometheus job of the `leasewatch run` process.
const RUN_JOB: &str = "leasewatch";

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
    /// Scrapes `run` (job [`RUN_JOB`]) every second.
    fn start(run: SocketAddr) -> Self {
        ensure_prometheus();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n\
                 \x20 - job_name: {RUN_JOB}\n\
                 \x20   static_configs:\n\
                 \x20     - targets: [\"{run}\"]\n"
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

/// `digits` followed by their Luhn check digit (IMEIs, ICCIDs).
fn luhn(digits: &str) -> String {
    let sum: u32 = digits
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
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// The IMEI of device `n`: 14 digits and their check digit.
fn imei(n: u64) -> String {
    luhn(&format!("{:014}", 49_015_420_000_000 + n))
}

/// The ICCID of SIM number `sim` of device `n` (20 digits, a Kenyan issuer).
fn iccid(n: u64, sim: u64) -> String {
    luhn(&format!("89254{sim:02}{n:012}"))
}

const DEVICES: u64 = 200;
const TOKEN: &str = "dashboards-token-0123456789";
/// Westlands, Nairobi: where every phone is, inside its lease's permitted area.
const HOME: (f64, f64) = (-1.2676, 36.8108);
/// Kenya's MCC: the network country is the lease country (no `cross_border`).
const MCC_KE: u16 = 639;
/// H3 resolution of the permitted areas.
const AREA_RES: u8 = 7;

/// Device `n` reports a SIM other than its lease's: `sim_mismatch` on every ping.
fn swapped_sim(n: u64) -> bool {
    n % 7 == 3
}

/// Device `n` is rooted: `tamper` on every ping.
fn rooted(n: u64) -> bool {
    n.is_multiple_of(31)
}

/// Days past due of device `n`'s lease: one in five is overdue, across the ladder (sms,
/// call, field, legal, and 30+ for the lease gauge).
fn days_past_due(n: u64) -> i32 {
    if n.is_multiple_of(5) {
        [3, 8, 20, 35, 65, 1][(n / 5 % 6) as usize]
    } else {
        0
    }
}

fn lease(n: u64, permitted_cell: i64) -> LeaseState {
    let dpd = days_past_due(n);
    LeaseState {
        lease_id: format!("L-{n}"),
        device_id: imei(n),
        customer_id: format!("C-{n}"),
        registered_iccid: Some(iccid(n, 0)),
        registered_imsi: None,
        lease_country: "KE".into(),
        permitted_cells: vec![permitted_cell],
        area_res: AREA_RES,
        status: if dpd > 0 {
            LeaseStatus::Overdue
        } else {
            LeaseStatus::Active
        },
        due_date: "2026-01-31".into(),
        days_past_due: dpd,
        amount_due: if dpd > 0 { 2_500 } else { 0 },
        deposit: 5_000,
        monthly_rent: 2_500,
        currency: "KES".into(),
    }
}

fn credit(n: u64) -> CreditState {
    let low = n.is_multiple_of(3);
    CreditState {
        customer_id: format!("C-{n}"),
        score: if low { 480 } else { 700 },
        band: if low { CreditBand::D } else { CreditBand::B },
        prior_defaults: i32::from(low),
        flags: vec![],
    }
}

/// Loads lease and credit state of every device (JSON strings under `lw:lease:*` and
/// `lw:credit:*`, as `leasewatch state load` writes them) and creates a consumer group
/// on the `sms` and `lock` queues (so consumer lag has series).
fn load_state(redis: &RedisServer) {
    let keys = Keys::default();
    let res = leasewatch_udfs::core::h3::resolution(i64::from(AREA_RES)).unwrap();
    let home_cell = leasewatch_udfs::core::h3::cell(HOME.0, HOME.1, res).unwrap();
    let mut c = redis.conn();
    let mut p = ::redis::pipe();
    for n in 0..DEVICES {
        let l = lease(n, home_cell);
        p.cmd("SET")
            .arg(keys.lease(&l.device_id))
            .arg(serde_json::to_string(&l).unwrap())
            .ignore();
        let cr = credit(n);
        p.cmd("SET")
            .arg(keys.credit(&cr.customer_id))
            .arg(serde_json::to_string(&cr).unwrap())
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

/// A risky place (a pawn shop in Nairobi CBD, 2 km from [`HOME`]) for the geofence
/// functions the rules call.
const GEOFENCES: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"pawn-cbd-1","kind":"pawn_shop"},"geometry":{"type":"Polygon","coordinates":[[[36.8162,-1.2874],[36.8182,-1.2874],[36.8182,-1.2854],[36.8162,-1.2854],[36.8162,-1.2874]]]}}]}"#;

/// One NDJSON request of `rows` pings and how many of them ingest accepts. Round 0 is
/// 20 minutes old, so at least one 15-minute slide boundary lies between it and the
/// watermark of the later rounds (2 minutes behind now) whatever the wall clock says,
/// and windows close (12 minutes old left no boundary a third of the time); later
/// rounds are current except one ping in 17, 5 minutes old: behind the watermark
/// (2 minutes behind the newest ping), late. One in 23 has a bad IMEI and one in 29 a
/// battery level of 250 %: both rejected.
fn request(round: u64, rows: u64) -> (String, u64) {
    let now = now_ms();
    let mut valid = 0;
    let body = (0..rows)
        .map(|i| {
            let k = round * rows + i;
            let n = k % DEVICES;
            let t = if round == 0 {
                now - 20 * 60_000
            } else if k.is_multiple_of(17) {
                now - 5 * 60_000
            } else {
                now - 200
            };
            let bad_id = k.is_multiple_of(23);
            let device = if bad_id {
                "12345".to_string() // rejected: bad_format
            } else {
                imei(n)
            };
            let bad_battery = k.is_multiple_of(29);
            let battery = if bad_battery { 250 } else { 50 }; // 250: out_of_range
            if !bad_id && !bad_battery {
                valid += 1;
            }
            let sim = iccid(n, u64::from(swapped_sim(n)));
            let rooted = rooted(n);
            let (lat, lon) = HOME;
            format!(
                r#"{{"device_id":"{device}","event_time":{t},"seq":{k},"lat":{lat},"lon":{lon},"accuracy_m":20.0,"iccid":"{sim}","mcc":{MCC_KE},"battery_pct":{battery},"agent_active":true,"mdm_active":true,"rooted":{rooted},"mock_location":false,"event_kind":"heartbeat"}}"#
            ) + "\n"
        })
        .collect();
    (body, valid)
}

/// The product SQL folder.
fn product_sql() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_panel() {
    let started = Instant::now();
    let redis = RedisServer::start();
    load_state(&redis);

    // The real pipeline: the product SQL against that Redis, checkpointing every second,
    // in its temp dir (where the alert archive goes).
    let setup = RunSetup::from_sql_dir(
        &product_sql(),
        TOKEN,
        1,
        &format!(
            "redis_url = \"{}\"\ngeofences = \"places.geojson\"",
            redis.url()
        ),
        "",
    );
    std::fs::write(setup.dir.path().join("places.geojson"), GEOFENCES).unwrap();
    let mut run = setup.start_in_dir();
    let addr = run.addr;

    let prom = Prometheus::start(addr);
    prom.wait_ready().await;

    // ~10 s of load: 20 requests of 100 pings a second, one unauthorised in 25, while
    // Prometheus scrapes the process every second.
    let auth = format!("Bearer {TOKEN}");
    let load_until = Instant::now() + Duration::from_secs(10);
    let mut round = 0u64;
    let mut accepted = 0u64;
    while Instant::now() < load_until {
        let (body, valid) = request(round, 100);
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
                assert_eq!(n, valid, "{v}");
                accepted += n;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ingested = prom
            .value("sum(leasewatch_ingest_rows_total{result=\"accepted\"})")
            .await;
        let processed = prom.value("sum(leasewatch_engine_rows_in_total)").await;
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
    // `leasewatch run` samples the queues every 10 s: wait for a sample that saw the
    // alerts (the lease sweep's at start, the lock requests of the load).
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let lag = prom
            .value("sum(leasewatch_queue_consumer_lag_messages)")
            .await;
        let locks = prom
            .value("sum(leasewatch_queue_messages{queue=\"lock\"})")
            .await;
        if lag > 0.0 && locks > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no queue sample with the alerts: consumer lag {lag}, lock queue {locks}\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let up = prom.query(&format!("up{{job=\"{RUN_JOB}\"}}")).await;
    assert_eq!(
        up["data"]["result"][0]["value"][1],
        "1",
        "Prometheus did not scrape {RUN_JOB}: {up}\n{}",
        prom.log()
    );

    // Every metric a dashboard names was scraped from the process.
    let scraped = prom.names(RUN_JOB).await;
    let mut not_scraped = Vec::new();
    for (file, d) in dashboards() {
        for (title, expr) in exprs(&d) {
            for name in metric_names(&expr) {
                if !scraped.contains(&name) {
                    not_scraped.push(format!("{file} / {title}: {name}"));
                }
            }
        }
    }
    not_scraped.sort();
    not_scraped.dedup();
    assert!(
        not_scraped.is_empty(),
        "dashboards name metrics leasewatch run does not export:\n{}",
        not_scraped.join("\n")
    );

    // The load reached every stage: not just series, but counts.
    for expr in [
        "leasewatch_ingest_rows_total{result=\"accepted\"}",
        "leasewatch_ingest_rejects_total{reason=\"bad_format\"}",
        "leasewatch_ingest_rejects_total{reason=\"out_of_range\"}",
        "leasewatch_ingest_requests_total{status=\"401\"}",
        "leasewatch_engine_late_rows_total",
        "leasewatch_engine_rows_out_total{sink=\"alerts\"}",
        "leasewatch_engine_rows_out_total{sink=\"alert_archive\"}",
        "leasewatch_engine_query_rows_in_total",
        "leasewatch_engine_query_rows_out_total",
        "leasewatch_engine_windows_emitted_total",
        "leasewatch_engine_state_rows",
        "leasewatch_engine_active_devices",
        "leasewatch_wal_fsync_duration_seconds_count",
        "leasewatch_wal_checkpoint_duration_seconds_count",
        "leasewatch_lookup_cache_hits_total{table=\"leases\"}",
        "leasewatch_lookup_cache_misses_total{table=\"credit\"}",
        "leasewatch_lookup_redis_round_trip_seconds_count",
        "leasewatch_sink_alerts_total{signal=\"sim_mismatch\"}",
        "leasewatch_sink_alerts_total{signal=\"tamper\"}",
        "leasewatch_sink_alerts_total{signal=\"overdue\",queue=\"legal\"}",
        "leasewatch_sink_alerts_total{grade=\"critical\",queue=\"lock\"}",
        "leasewatch_sink_suppressed_total",
        "leasewatch_sink_alerting_devices",
        "leasewatch_sink_redis_round_trip_seconds_count",
        "leasewatch_sink_end_to_end_seconds_count{from=\"event_time\"}",
        "leasewatch_sink_end_to_end_seconds_count{from=\"receive_time\"}",
        "leasewatch_queue_messages{queue=\"lock\"}",
        "leasewatch_queue_consumer_lag_messages",
        "leasewatch_state_leases{dpd=\"30+\"}",
        "leasewatch_process_resident_memory_bytes",
    ] {
        let expr = format!("sum({expr})");
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
        "evaluated {evaluated} expressions against leasewatch run (pid {}) after {accepted} \
         pings in {:.1} s; non-core without data: {}",
        run.pid(),
        started.elapsed().as_secs_f64(),
        if empty_optional.is_empty() {
            "none".to_string()
        } else {
            empty_optional.join("; ")
        }
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // It stops cleanly after the load.
    let status = run.stop();
    assert!(status.success(), "exit {status}:\n{}", run.log());
}
