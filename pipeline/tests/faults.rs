//! Faults (issue #7): the real `leasewatch run` binary with the product SQL (a copy of
//! `sql/` plus one per-ping file sink) against a private `redis-server`, under load, while
//! something breaks:
//!
//! 1. SIGKILL at random moments, restart, several times;
//! 2. Redis stopped under load, then started again;
//! 3. the WAL's disk full (the WAL on a tiny tmpfs, filled up), then space freed;
//! 4. a burst of 10x the sustained rate against an engine that cannot keep up, with small
//!    lag bounds.
//!
//! Each test then checks that nothing was lost or doubled: every acknowledged ping is in
//! the per-ping sink exactly once (and nothing that was never sent), and the collection
//! queues (Redis Streams `lw:queue:*`) hold exactly the alerts the processed pings imply,
//! each once. The expected alerts are computed from the pings: ping `k` of a test is a
//! heartbeat, a rooted phone (`tamper`) or a foreign SIM (`sim_mismatch`) of a known
//! device, and the first alert of each device and signal in processing order (the order
//! of the per-ping sink's file, which a restore keeps equal to the WAL's) is queued, the
//! later ones suppressed by the cooldown; overdue leases add one `overdue` alert each from
//! the lease sweep at every start (the queues skip the repeats).
//!
//! The shortened variants keep the whole file under 90 s; `LEASEWATCH_FAULTS_FULL=1` runs
//! the full-length ones (20 kills, a 30 s Redis outage, 10 s of full disk, a 30 s burst):
//! see the "Faults" section of `load-tests/README.md`. The tests take a lock so that they
//! run one at a time: each wants both cores, and the burst test measures memory. One more,
//! ignored, measures memory under a steady load (it fails until the engine stops leaking
//! DataFusion metrics: see [`memory_levels_off_under_sustained_load`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use leasewatch_schemas::{CreditBand, CreditState, DevicePing, LeaseState, Queue};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::product::{
    all_queues, credit, home, iccid, imei, lease, overdue, ping, product_sql, put_state,
    write_geofences,
};
use support::redis::RedisServer;
use support::run::{RunProcess, RunSetup};
use support::splitmix::SplitMix;

const TOKEN: &str = "faults-test-token-0123456789";

/// Event time between consecutive pings of a test, ms.
const STEP_MS: i64 = 10;
/// Pings per request.
const PER_REQUEST: u64 = 50;
/// Devices that only send heartbeats.
const HEARTBEAT_DEVICES: u64 = 97;
/// Alerting devices `j < OVERDUE_BELOW` with `j % 3 == 0` have an overdue lease.
const OVERDUE_BELOW: u64 = 600;

fn full() -> bool {
    std::env::var("LEASEWATCH_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// One fault test at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// The fleet: which ping number `k` is, and which alerts it must cause.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A heartbeat of heartbeat device `m`: no alert.
    Heartbeat(u64),
    /// Alerting device `j`, rooted: one `tamper` alert.
    Tamper(u64),
    /// Alerting device `j` with a SIM its lease does not list: one `sim_mismatch` alert.
    Mismatch(u64),
}

/// The devices and pings of one test. Ping `k` has event time `base + k * STEP_MS`, so
/// it is identified by its event time in the sink, and the alert ids are known.
struct Fleet {
    /// Namespace of the device ids (so tests never share one).
    test: u32,
    base: i64,
    /// The senders stop before this many pings.
    max_pings: u64,
    /// `(n, every)`: alerting pings go to `n` devices in turn, a new set of `n` every
    /// `every` pings (their state stays in the lookup cache, so a batch may need no lookup
    /// from Redis at all, and all but each device's first alert per signal are suppressed
    /// by the cooldown). None: each alerting ping to a device of its own.
    pool: Option<(u64, u64)>,
}

impl Fleet {
    /// Each alerting ping on a fresh device.
    fn new(test: u32, max_pings: u64) -> Self {
        Self::with_pool(test, max_pings, None)
    }

    fn with_pool(test: u32, max_pings: u64, pool: Option<(u64, u64)>) -> Self {
        // Far enough in the past that the last ping is not in the future, near enough
        // that no session (4 h) closes: no `device_dark` alerts.
        let base = now_ms() - 2 * 3_600_000;
        assert!(max_pings as i64 * STEP_MS < 7_000_000);
        Self {
            test,
            base,
            max_pings,
            pool,
        }
    }

    fn kind(&self, k: u64) -> Kind {
        let j = match self.pool {
            Some((n, every)) => (k / 10) % n + n * (k / every),
            None => k / 10,
        };
        match k % 10 {
            3 => Kind::Tamper(j),
            7 => Kind::Mismatch(j),
            _ => Kind::Heartbeat(k % HEARTBEAT_DEVICES),
        }
    }

    fn alert_devices(&self) -> u64 {
        match self.pool {
            Some((n, every)) => n * (self.max_pings / every + 1),
            None => self.max_pings / 10 + 1,
        }
    }

    fn heartbeat_device(&self, m: u64) -> String {
        imei(self.test, m as u32)
    }

    fn alert_device(&self, j: u64) -> String {
        imei(self.test, 100_000 + j as u32)
    }

    fn is_overdue(j: u64) -> bool {
        j < OVERDUE_BELOW && j.is_multiple_of(3)
    }

    fn device(&self, k: u64) -> String {
        match self.kind(k) {
            Kind::Heartbeat(m) => self.heartbeat_device(m),
            Kind::Tamper(j) | Kind::Mismatch(j) => self.alert_device(j),
        }
    }

    fn event_time(&self, k: u64) -> i64 {
        self.base + k as i64 * STEP_MS
    }

    /// The ping number of an event time, if it is one of ours.
    fn ping_of(&self, t: i64) -> Option<u64> {
        let d = t - self.base;
        (d >= 0 && d % STEP_MS == 0).then_some((d / STEP_MS) as u64)
    }

    fn ping(&self, k: u64) -> DevicePing {
        let t = self.event_time(k);
        let mut p = match self.kind(k) {
            Kind::Heartbeat(m) => ping(
                &self.heartbeat_device(m),
                t,
                home((m % 50) as u32),
                &iccid(m as u32),
            ),
            Kind::Tamper(j) | Kind::Mismatch(j) => ping(
                &self.alert_device(j),
                t,
                home((j % 50) as u32),
                &iccid(100_000 + j as u32),
            ),
        };
        p.seq = Some(k);
        match self.kind(k) {
            Kind::Heartbeat(_) => {}
            Kind::Tamper(_) => p.rooted = Some(true),
            Kind::Mismatch(j) => p.iccid = Some(iccid(5_000_000 + j as u32)),
        }
        p
    }

    /// The NDJSON body of pings `first..first + n`.
    fn body(&self, first: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for k in first..first + n {
            serde_json::to_writer(&mut out, &self.ping(k)).unwrap();
            out.push(b'\n');
        }
        out
    }

    /// The alerting device and signal of ping `k` (None: a heartbeat).
    fn alert_key(&self, k: u64) -> Option<(u64, &'static str)> {
        match self.kind(k) {
            Kind::Heartbeat(_) => None,
            Kind::Tamper(j) => Some((j, "tamper")),
            Kind::Mismatch(j) => Some((j, "sim_mismatch")),
        }
    }

    /// The queue entries (queue, alert id) ping `k` causes when it is the first alert of
    /// its device and signal (later ones are suppressed by the cooldown).
    fn alerts_of(&self, k: u64) -> Vec<(Queue, String)> {
        let Some((j, signal)) = self.alert_key(k) else {
            return Vec::new();
        };
        let id = format!("{signal}:{}:{}", self.alert_device(j), self.event_time(k));
        if Self::is_overdue(j) {
            // SIM change or tamper on an overdue lease: a call and a lock request.
            vec![
                (Queue::Call, id.clone()),
                (Queue::Lock, format!("{id}:lock")),
            ]
        } else {
            vec![(Queue::Review, id)]
        }
    }

    /// The queue entries of the lease sweep: every overdue lease once.
    fn sweep_alerts(&self) -> Vec<(Queue, String)> {
        (0..self.alert_devices().min(OVERDUE_BELOW))
            .filter(|j| Self::is_overdue(*j))
            .map(|j| {
                (
                    Queue::Call,
                    format!("overdue:{}:call", self.alert_device(j)),
                )
            })
            .collect()
    }

    /// Lease and credit state of every device (8 days past due: `call` on both bands).
    fn load_state(&self, redis: &RedisServer) {
        let mut leases: Vec<LeaseState> = Vec::new();
        let mut credits: Vec<CreditState> = Vec::new();
        for m in 0..HEARTBEAT_DEVICES {
            let d = self.heartbeat_device(m);
            let c = format!("C-{d}");
            leases.push(lease(
                &d,
                &c,
                &[home((m % 50) as u32)],
                Some(&iccid(m as u32)),
            ));
            credits.push(credit(&c, CreditBand::B));
        }
        for j in 0..self.alert_devices() {
            let d = self.alert_device(j);
            let c = format!("C-{d}");
            let l = lease(
                &d,
                &c,
                &[home((j % 50) as u32)],
                Some(&iccid(100_000 + j as u32)),
            );
            leases.push(if Self::is_overdue(j) {
                overdue(l, 8)
            } else {
                l
            });
            let band = if j.is_multiple_of(5) {
                CreditBand::D
            } else {
                CreditBand::B
            };
            credits.push(credit(&c, band));
        }
        for chunk in leases.chunks(5_000) {
            put_state(redis, chunk, &[]);
        }
        for chunk in credits.chunks(5_000) {
            put_state(redis, &[], chunk);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pipeline under test.
// ---------------------------------------------------------------------------------------

/// The per-ping sink added to the product SQL: every processed ping's device and event
/// time, so the test can tell which pings were processed and how often.
const EVERY_PING_SQL: &str = "
CREATE TABLE faults_every_ping (device_id TEXT, t BIGINT)
  WITH (connector = 'filesystem', path = 'OUT/every_ping.jsonl');
INSERT INTO faults_every_ping SELECT device_id, CAST(event_time AS BIGINT) AS t FROM pings;
";

/// The product SQL (archive and per-ping sink under `out/`) with Redis and geofences, in
/// a temp dir.
struct Pipeline {
    _work: tempfile::TempDir,
    out: PathBuf,
    setup: RunSetup,
}

impl Pipeline {
    /// `wal_toml`: more `[wal]` keys; `ingest_toml`: more `[ingest]` keys.
    fn new(redis: &RedisServer, wal_toml: &str, ingest_toml: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        let sql = work.path().join("sql");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&sql).unwrap();
        for (name, text) in product_sql(&out) {
            std::fs::write(sql.join(name), text).unwrap();
        }
        std::fs::write(
            sql.join("zz_faults_every_ping.sql"),
            EVERY_PING_SQL.replace("OUT", out.to_str().unwrap()),
        )
        .unwrap();
        let geofences = write_geofences(work.path());
        let setup = RunSetup::from_sql_dir(
            &sql,
            TOKEN,
            1,
            &format!(
                "redis_url = \"{}\"\ngeofences = {:?}",
                redis.url(),
                geofences.to_str().unwrap()
            ),
            wal_toml,
        );
        if !ingest_toml.is_empty() {
            let text = std::fs::read_to_string(&setup.config).unwrap();
            let text = text.replacen("[ingest]\n", &format!("[ingest]\n{ingest_toml}\n"), 1);
            std::fs::write(&setup.config, text).unwrap();
        }
        Self {
            _work: work,
            out,
            setup,
        }
    }

    fn wal_dir(&self) -> PathBuf {
        self.setup.dir.path().join("wal")
    }

    fn start(&self) -> RunProcess {
        self.setup.start_in_dir()
    }

    /// Ping numbers in the per-ping sink, in file order (repeats kept).
    fn processed(&self, fleet: &Fleet) -> Vec<u64> {
        let text = std::fs::read_to_string(self.out.join("every_ping.jsonl")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                let t = v["t"].as_i64().unwrap_or_else(|| panic!("no t in {l}"));
                let k = fleet
                    .ping_of(t)
                    .unwrap_or_else(|| panic!("event time {t} is no ping of this test: {l}"));
                assert_eq!(
                    v["device_id"].as_str(),
                    Some(fleet.device(k).as_str()),
                    "{l}"
                );
                k
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

#[derive(Debug)]
enum HttpError {
    /// Nothing was sent: the connection was refused.
    Connect(std::io::Error),
    /// The request may have been (partly) received: no or no complete answer.
    Exchange(std::io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connecting: {e}"),
            Self::Exchange(e) => write!(f, "no complete answer: {e}"),
        }
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Reply, HttpError> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(HttpError::Connect)?;
    let exchange = |s: &mut TcpStream| -> std::io::Result<Reply> {
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
             connection: close\r\n"
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "content-type: application/x-ndjson\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        if let Some(b) = body {
            s.write_all(b)?;
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no complete reply: {text:?}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
        let retry_after = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().to_string())
        });
        Ok(Reply {
            status,
            retry_after,
            body: body.to_string(),
        })
    };
    exchange(&mut s).map_err(HttpError::Exchange)
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = http(addr, "GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

/// The sum of every series of metric `name` on `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = http(addr, "GET", "/metrics", None).unwrap_or_else(|e| panic!("/metrics: {e}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            (rest.starts_with('{') || rest.starts_with(' '))
                .then(|| l.rsplit(' ').next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `(wal_head, consumed)` from `/readyz`.
fn progress(addr: SocketAddr) -> (u64, u64) {
    let v = get_json(addr, "/readyz");
    let head = v["wal_head"].as_u64().unwrap();
    (head, head - v["lag_batches"].as_u64().unwrap())
}

/// Waits until the engine has processed every WAL entry up to `head` (the head now when
/// None); returns how long that took.
fn wait_processed(p: &RunProcess, head: Option<u64>, limit: Duration) -> Duration {
    let start = Instant::now();
    let head = head.unwrap_or_else(|| progress(p.addr).0);
    loop {
        let (_, consumed) = progress(p.addr);
        if consumed >= head {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the engine did not reach lsn {head} within {limit:?} (at {consumed})\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `VmRSS` and `VmHWM` (peak) of a process, bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

// ---------------------------------------------------------------------------------------
// Load: sender threads posting blocks of pings, recording what was acknowledged.
// ---------------------------------------------------------------------------------------

/// Where the senders post (None while the pipeline is down).
#[derive(Default)]
struct Target(Mutex<Option<SocketAddr>>);

impl Target {
    fn set(&self, addr: Option<SocketAddr>) {
        *self.0.lock().unwrap() = addr;
    }

    fn get(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap()
    }
}

/// What the senders saw.
#[derive(Default)]
struct LoadLog {
    /// First ping of each acknowledged block.
    acked: BTreeSet<u64>,
    /// First ping of each block whose request got no answer (the process died): it may
    /// or may not be in the WAL.
    maybe: BTreeSet<u64>,
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Every answer in time order: when, status.
    timeline: Vec<(Instant, u16)>,
    /// Unexpected answers (status and body).
    problems: Vec<String>,
}

impl LoadLog {
    fn acked_pings(&self) -> BTreeSet<u64> {
        self.acked
            .iter()
            .flat_map(|b| *b..*b + PER_REQUEST)
            .collect()
    }

    fn maybe_pings(&self) -> BTreeSet<u64> {
        self.maybe
            .iter()
            .flat_map(|b| *b..*b + PER_REQUEST)
            .collect()
    }

    fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// Sender threads; each posts its own blocks of `PER_REQUEST` pings (thread `i` of `n`
/// takes blocks `i, i + n, i + 2n, ...`), one request every `pause`. A 429 or 503 must
/// carry `Retry-After`; the block is sent again after `retry` (the refused rows are not
/// in the WAL). A request without an answer (the process was killed) is recorded as
/// "maybe" and the next block goes to the next process.
struct Load {
    log: Arc<Mutex<LoadLog>>,
    stop: Arc<AtomicBool>,
    /// Pause between requests; changed on the fly by the burst test.
    pause_us: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(
        fleet: &Arc<Fleet>,
        target: &Arc<Target>,
        senders: u64,
        first_block: u64,
        pause: Duration,
        retry: Duration,
    ) -> Self {
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let pause_us = Arc::new(std::sync::atomic::AtomicU64::new(pause.as_micros() as u64));
        let threads = (0..senders)
            .map(|i| {
                let (fleet, target, log, stop, pause_us) = (
                    Arc::clone(fleet),
                    Arc::clone(target),
                    Arc::clone(&log),
                    Arc::clone(&stop),
                    Arc::clone(&pause_us),
                );
                std::thread::spawn(move || {
                    let mut block = first_block + i;
                    while !stop.load(Ordering::SeqCst) {
                        let first = block * PER_REQUEST;
                        if first + PER_REQUEST > fleet.max_pings {
                            break;
                        }
                        if !send_block(&fleet, &target, &log, &stop, first, retry) {
                            break;
                        }
                        block += senders;
                        let pause = pause_us.load(Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(pause));
                    }
                })
            })
            .collect();
        Self {
            log,
            stop,
            pause_us,
            threads,
        }
    }

    fn set_pause(&self, pause: Duration) {
        self.pause_us
            .store(pause.as_micros() as u64, Ordering::Relaxed);
    }

    fn acked_count(&self) -> usize {
        self.log.lock().unwrap().acked.len() * PER_REQUEST as usize
    }

    /// Stops the senders (a block being retried is given up: it is not in the WAL).
    fn finish(mut self) -> LoadLog {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// Sends one block until it is acknowledged, given up (stop), or lost with its process.
/// False when the senders should stop.
fn send_block(
    fleet: &Fleet,
    target: &Target,
    log: &Mutex<LoadLog>,
    stop: &AtomicBool,
    first: u64,
    retry: Duration,
) -> bool {
    let body = fleet.body(first, PER_REQUEST);
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let Some(addr) = target.get() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let reply = match http(addr, "POST", "/v1/pings", Some(&body)) {
            Ok(r) => r,
            Err(HttpError::Connect(_)) => {
                // Not sent: the process is down. Try again (maybe at the next address).
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(HttpError::Exchange(_)) => {
                log.lock().unwrap().maybe.insert(first);
                // Wait for the process to be replaced before the next block.
                let until = Instant::now() + Duration::from_secs(30);
                while target.get() == Some(addr) && Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return true;
            }
        };
        let mut l = log.lock().unwrap();
        *l.statuses.entry(reply.status).or_insert(0) += 1;
        l.timeline.push((Instant::now(), reply.status));
        match reply.status {
            202 => {
                let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                if v["accepted"].as_u64() != Some(PER_REQUEST) {
                    l.problems.push(format!("202 with {}", reply.body));
                }
                l.acked.insert(first);
                return true;
            }
            429 | 503 => {
                if reply.retry_after.is_none() {
                    l.problems.push(format!(
                        "{} without Retry-After: {}",
                        reply.status, reply.body
                    ));
                }
                drop(l);
                std::thread::sleep(retry);
            }
            s => {
                // A 5xx other than 503 (or anything else): unexpected. The rows may or
                // may not be in the WAL.
                l.problems.push(format!("{s}: {}", reply.body));
                l.maybe.insert(first);
                return true;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The verdict.
// ---------------------------------------------------------------------------------------

/// What one test delivered.
#[derive(Debug)]
struct Delivery {
    acked: usize,
    processed: usize,
    lost: usize,
    duplicates: usize,
    alerts: usize,
}

/// Checks that every acknowledged ping was processed exactly once (nothing unsent), and
/// that the queues hold exactly the alerts of the processed pings and the sweep, each once.
/// The pipeline must be stopped (or caught up).
fn check_delivery(
    fleet: &Fleet,
    pipeline: &Pipeline,
    redis: &RedisServer,
    log: &LoadLog,
) -> Delivery {
    assert!(
        log.problems.is_empty(),
        "unexpected answers: {:?}",
        log.problems
    );
    let acked = log.acked_pings();
    let maybe = log.maybe_pings();
    let processed = pipeline.processed(fleet);
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for k in &processed {
        *times.entry(*k).or_insert(0) += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<_> = acked.iter().filter(|k| !times.contains_key(k)).collect();
    let unsent: Vec<_> = times
        .keys()
        .filter(|k| !acked.contains(k) && !maybe.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged pings were never processed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "{} pings processed more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert!(
        unsent.is_empty(),
        "{} pings processed that were never acknowledged nor sent to a dying process, e.g. {:?}",
        unsent.len(),
        &unsent[..unsent.len().min(10)]
    );

    // The first alert of each device and signal in processing order (the sink file's
    // order, which after a restore is the WAL's) is queued; later ones are suppressed.
    let mut expected: BTreeSet<(Queue, String)> = fleet.sweep_alerts().into_iter().collect();
    let mut alerted = BTreeSet::new();
    for k in &processed {
        if let Some(key) = fleet.alert_key(*k)
            && alerted.insert(key)
        {
            expected.extend(fleet.alerts_of(*k));
        }
    }
    let mut got: BTreeMap<(Queue, String), usize> = BTreeMap::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (q, entries) in all_queues(redis) {
        for (_, m) in entries {
            *ids.entry(m.alert_id.clone()).or_insert(0) += 1;
            *got.entry((q, m.alert_id)).or_insert(0) += 1;
        }
    }
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} alert ids queued more than once, e.g. {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(10)]
    );
    let missing: Vec<_> = expected.iter().filter(|e| !got.contains_key(e)).collect();
    let extra: Vec<_> = got.keys().filter(|e| !expected.contains(e)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "queues differ from the alerts the processed pings imply: {} missing (e.g. {:?}), \
         {} unexpected (e.g. {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    Delivery {
        acked: acked.len(),
        processed: processed.len(),
        lost: lost.len(),
        duplicates: twice.len() + doubled.len(),
        alerts: expected.len(),
    }
}

/// The generator of the kill moments: its seed is printed, and settable with
/// `LEASEWATCH_FAULTS_SEED` to repeat a run.
fn kill_rng() -> SplitMix {
    let seed = std::env::var("LEASEWATCH_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64);
    eprintln!("faults: seed {seed} (LEASEWATCH_FAULTS_SEED={seed} repeats it)");
    SplitMix(seed)
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL at random moments under load.
// ---------------------------------------------------------------------------------------

#[test]
fn sigkill_under_load_loses_nothing_and_queues_each_alert_once() {
    let _serial = serial();
    let started = Instant::now();
    let kills = if full() { 20 } else { 4 };
    let redis = RedisServer::start();
    let fleet = Arc::new(Fleet::with_pool(
        1,
        if full() { 500_000 } else { 100_000 },
        Some((100, 2_000)),
    ));
    fleet.load_state(&redis);
    let pipeline = Pipeline::new(&redis, "", "");
    let mut p = pipeline.start();
    let target = Arc::new(Target::default());
    target.set(Some(p.addr));
    let load = Load::start(
        &fleet,
        &target,
        1,
        0,
        Duration::from_millis(15),
        Duration::from_millis(100),
    );
    let mut rng = kill_rng();
    let mut restarts = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(2_200)));
        let before = load.acked_count();
        let s = p.kill();
        assert!(!s.success());
        target.set(None);
        let t = Instant::now();
        p = pipeline.start();
        target.set(Some(p.addr));
        let restored = p
            .log()
            .lines()
            .find(|l| l.starts_with("restored checkpoint"))
            .unwrap_or("no checkpoint")
            .to_string();
        eprintln!(
            "faults/sigkill: killed after {before} pings acknowledged; restarted in {:.2} s: {restored}",
            t.elapsed().as_secs_f64()
        );
        restarts.push(t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(1_000));
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(60));
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(&fleet, &pipeline, &redis, &log);
    eprintln!(
        "faults/sigkill: {kills} kills (restarts took {restarts:.2?}); \
         {} pings acknowledged, {} maybe (no answer), {} processed, lost {}, duplicates {}, \
         {} queue entries each once; answers {:?}; {:.1} s",
        d.acked,
        log.maybe_pings().len(),
        d.processed,
        d.lost,
        d.duplicates,
        d.alerts,
        log.statuses,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Redis stopped under load, then started again.
// ---------------------------------------------------------------------------------------

#[test]
fn redis_outage_under_load_is_absorbed_and_recovered() {
    let _serial = serial();
    let started = Instant::now();
    let outage = Duration::from_secs(if full() { 30 } else { 5 });
    let mut redis = RedisServer::start();
    let fleet = Arc::new(Fleet::with_pool(
        2,
        if full() { 300_000 } else { 100_000 },
        Some((20, 4_000)),
    ));
    fleet.load_state(&redis);
    let pipeline = Pipeline::new(&redis, "", "");
    let mut p = pipeline.start();
    let addr = p.addr;
    let target = Arc::new(Target::default());
    target.set(Some(addr));
    let load = Load::start(
        &fleet,
        &target,
        1,
        0,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(2));
    wait_processed(&p, None, Duration::from_secs(20));
    let lookup_errors = metric(addr, "leasewatch_lookup_redis_errors_total");
    let sink_errors = metric(addr, "leasewatch_sink_redis_errors_total");
    let held = metric(addr, "leasewatch_lookup_held_batches_total")
        + metric(addr, "leasewatch_sink_held_batches_total");
    let watermark_lag_before = metric(addr, "leasewatch_engine_watermark_lag_seconds");
    let acked_before = load.acked_count();

    // Redis goes away (a clean SHUTDOWN SAVE, so it comes back with its data: the
    // leases, the queues and the alert marks). Ingest keeps answering.
    redis.shutdown_save();
    let down = Instant::now();
    let mut max_backlog = 0.0f64;
    let mut max_watermark_lag = 0.0f64;
    while down.elapsed() < outage {
        assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
        max_backlog = max_backlog.max(metric(addr, "leasewatch_engine_backlog_batches"));
        max_watermark_lag =
            max_watermark_lag.max(metric(addr, "leasewatch_engine_watermark_lag_seconds"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let acked_during = load.acked_count() - acked_before;
    let errors_during = metric(addr, "leasewatch_lookup_redis_errors_total") - lookup_errors;
    let sink_errors_during = metric(addr, "leasewatch_sink_redis_errors_total") - sink_errors;
    let (head_at_restart, consumed_at_restart) = progress(addr);

    redis.restart();
    let up = Instant::now();
    let recovery = wait_processed(&p, Some(head_at_restart), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(30));
    let backlog_after = metric(addr, "leasewatch_engine_backlog_batches");
    let held_batches = metric(addr, "leasewatch_lookup_held_batches_total")
        + metric(addr, "leasewatch_sink_held_batches_total")
        - held;
    assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(&fleet, &pipeline, &redis, &log);

    // Ingest kept acknowledging (the WAL absorbed the backlog) or pushed back with 429/503;
    // nothing else (`check_delivery` failed on any other answer).
    assert!(
        acked_during > 0 || log.count(429) + log.count(503) > 0,
        "ingest neither acknowledged nor pushed back during the outage"
    );
    // The engine was held, not failing: its backlog grew, the lookups retried.
    assert!(
        head_at_restart > consumed_at_restart && max_backlog > 0.0,
        "no backlog during the outage (head {head_at_restart}, consumed {consumed_at_restart}, \
         max backlog metric {max_backlog})"
    );
    assert!(
        errors_during + sink_errors_during > 0.0,
        "neither leasewatch_lookup_redis_errors_total nor leasewatch_sink_redis_errors_total \
         moved during the outage"
    );
    assert!(
        max_watermark_lag - watermark_lag_before >= outage.as_secs_f64() / 2.0,
        "leasewatch_engine_watermark_lag_seconds went from {watermark_lag_before} to at most \
         {max_watermark_lag} during the outage"
    );
    assert_eq!(backlog_after, 0.0, "backlog metric after recovery");
    assert!(
        recovery < Duration::from_secs(if full() { 30 } else { 15 }),
        "the backlog of the outage took {recovery:?} to process after Redis came back"
    );
    eprintln!(
        "faults/redis: Redis down {:.1} s under load: {acked_during} pings acknowledged meanwhile \
         (WAL backlog up to {max_backlog} batches, watermark lag {watermark_lag_before:.1} s -> \
         {max_watermark_lag:.1} s, {errors_during} lookup and {sink_errors_during} sink Redis \
         errors, {held_batches} batches held past the client's give-up), backlog of {} batches processed {:.2} s after Redis \
         was back (up at +{:.1} s); {} pings acknowledged, {} processed, lost {}, duplicates {}, \
         {} queue entries each once; answers {:?}; {:.1} s",
        outage.as_secs_f64(),
        head_at_restart - consumed_at_restart,
        recovery.as_secs_f64(),
        (up - down).as_secs_f64(),
        d.acked,
        d.processed,
        d.lost,
        d.duplicates,
        d.alerts,
        log.statuses,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 3. The WAL's disk full.
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted for the test; unmounted (lazily) on drop.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `bytes` on `dir` (needs root and CAP_SYS_ADMIN).
    fn tmpfs(dir: &Path, bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if o.status.success() {
            Ok(Self(dir.to_path_buf()))
        } else {
            Err(format!(
                "mount -t tmpfs: {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` to the last byte with `dir/filler`.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 16, 1 << 12, 1 << 9, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

#[test]
fn wal_disk_full_answers_503_then_recovers_without_loss() {
    let _serial = serial();
    let started = Instant::now();
    let full_for = Duration::from_secs(if full() { 10 } else { 3 });
    let redis = RedisServer::start();
    let fleet = Arc::new(Fleet::new(3, 100_000));
    fleet.load_state(&redis);
    let pipeline = Pipeline::new(&redis, "segment_bytes = 262144\n", "");
    let wal_dir = pipeline.wal_dir();
    let mount = if std::env::var("LEASEWATCH_FAULTS_NO_MOUNT").is_ok_and(|v| v == "1") {
        Err("LEASEWATCH_FAULTS_NO_MOUNT=1".to_string())
    } else {
        Mount::tmpfs(&wal_dir, 16 << 20)
    };
    let _mount = match mount {
        Ok(m) => m,
        Err(e) => {
            // Containers without CAP_SYS_ADMIN: the closest real condition is the WAL's own
            // bound on retained bytes, reached while the engine is held.
            eprintln!("faults/disk-full: cannot mount a tmpfs ({e}); testing a full WAL instead");
            drop(pipeline);
            wal_quota_full(&redis, &fleet, full_for, started);
            return;
        }
    };
    let mut p = pipeline.start();
    let target = Arc::new(Target::default());
    target.set(Some(p.addr));
    let load = Load::start(
        &fleet,
        &target,
        1,
        0,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let acked_before = load.acked_count();

    let filler = fill_up(&wal_dir);
    let filled = Instant::now();
    while filled.elapsed() < full_for {
        assert!(
            p.try_wait().is_none(),
            "leasewatch run died with its disk full:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked_full = load.acked_count() - acked_before;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let recovered = loop {
        let l = load.log.lock().unwrap();
        if let Some((t, _)) = l.timeline.iter().find(|(t, s)| *t > freed && *s == 202) {
            break *t - freed;
        }
        drop(l);
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "ingest did not acknowledge again within 15 s after space was freed:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(1_000));
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(30));
    assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(&fleet, &pipeline, &redis, &log);

    // While the disk was full: refusals (503 + Retry-After, checked by the senders), and no
    // acknowledgement after the first refusal (a few requests may still have fitted in
    // the space the file system had left when the filler stopped).
    let first_503 = log
        .timeline
        .iter()
        .find(|(t, s)| *t > filled && *s == 503)
        .map(|(t, _)| *t);
    let Some(first_503) = first_503 else {
        panic!(
            "no 503 while the WAL's disk was full: {:?}\n{}",
            log.statuses,
            p.log()
        );
    };
    let acked_while_refusing = log
        .timeline
        .iter()
        .filter(|(t, s)| *t > first_503 && *t < freed && *s == 202)
        .count();
    assert_eq!(
        acked_while_refusing, 0,
        "acknowledged while the disk was full"
    );
    // The checkpoints (on the same disk) failed too, and the pipeline went on.
    assert!(p.log().contains("failed, trying again"), "{}", p.log());
    eprintln!(
        "faults/disk-full: WAL on a 16 MiB tmpfs filled for {:.1} s: {} answers 503 (first \
         after {:.2} s), {acked_full} pings acknowledged while it was filling up, \
         first 202 {:.2} s after space was freed; {} pings acknowledged, {} processed, lost {}, \
         duplicates {}, {} queue entries each once; answers {:?}; {:.1} s",
        full_for.as_secs_f64(),
        log.count(503),
        (first_503 - filled).as_secs_f64(),
        recovered.as_secs_f64(),
        d.acked,
        d.processed,
        d.lost,
        d.duplicates,
        d.alerts,
        log.statuses,
        started.elapsed().as_secs_f64()
    );
}

/// Where no tmpfs can be mounted: the WAL's own bound (`max_retained_bytes`) reached while
/// Redis is frozen (the engine is held, so no checkpoint frees segments); 503 with
/// Retry-After until Redis thaws, the engine catches up and a checkpoint frees space.
fn wal_quota_full(redis: &RedisServer, fleet: &Arc<Fleet>, full_for: Duration, started: Instant) {
    let pipeline = Pipeline::new(
        redis,
        "segment_bytes = 65536\nmax_retained_bytes = 524288\n",
        "",
    );
    let mut p = pipeline.start();
    let target = Arc::new(Target::default());
    target.set(Some(p.addr));
    let load = Load::start(
        fleet,
        &target,
        1,
        0,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    redis.pause();
    let paused = Instant::now();
    loop {
        let l = load.log.lock().unwrap();
        if l.count(503) > 0 {
            break;
        }
        drop(l);
        assert!(
            paused.elapsed() < Duration::from_secs(30),
            "the WAL did not fill up within 30 s:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(full_for);
    assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
    redis.resume();
    let resumed = Instant::now();
    let recovered = loop {
        let l = load.log.lock().unwrap();
        if let Some((t, _)) = l.timeline.iter().find(|(t, s)| *t > resumed && *s == 202) {
            break *t - resumed;
        }
        drop(l);
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "ingest did not acknowledge again within 30 s:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(1_000));
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(30));
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(fleet, &pipeline, redis, &log);
    eprintln!(
        "faults/wal-full: {} answers 503, first 202 {:.2} s after the engine could go on; {} \
         pings acknowledged, {} processed, lost {}, duplicates {}, {} queue entries each once; \
         answers {:?}; {:.1} s",
        log.count(503),
        recovered.as_secs_f64(),
        d.acked,
        d.processed,
        d.lost,
        d.duplicates,
        d.alerts,
        log.statuses,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 4. A burst of 10x the sustained rate against an engine that cannot keep up.
// ---------------------------------------------------------------------------------------

#[test]
fn burst_of_ten_times_the_rate_is_pushed_back_with_bounded_memory() {
    let _serial = serial();
    let started = Instant::now();
    let burst_for = Duration::from_secs(if full() { 30 } else { 4 });
    let redis = RedisServer::start();
    let fleet = Arc::new(Fleet::with_pool(
        4,
        if full() { 500_000 } else { 200_000 },
        Some((100, 2_000)),
    ));
    fleet.load_state(&redis);
    // Small lag bounds: 429 once the engine is 20 batches (1,000 pings) behind.
    let pipeline = Pipeline::new(&redis, "", "max_lag_batches = 20\nmax_lag_rows = 1000");
    // One request (50 pings) per engine batch: joined into batches of 8,192 (the
    // default), the slowed engine below keeps up with the burst.
    let text = std::fs::read_to_string(&pipeline.setup.config).unwrap();
    assert!(text.contains("[engine]\n"), "{text}");
    let text = text.replacen("[engine]\n", "[engine]\nmax_batch_rows = 50\n", 1);
    std::fs::write(&pipeline.setup.config, text).unwrap();
    // A deliberately slow engine: Redis is busy (a script spinning) 30 ms out of every
    // 50, so each lookup or alert write of a batch waits up to 30 ms.
    let slow = Arc::new(AtomicBool::new(true));
    let slower = {
        let slow = Arc::clone(&slow);
        let mut c = redis.conn();
        let spin = redis::Script::new(
            "local function us() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
             local start = us() \
             repeat until us() - start >= tonumber(ARGV[1]) \
             return 0",
        );
        std::thread::spawn(move || {
            while slow.load(Ordering::SeqCst) {
                let _: i64 = spin.arg(30_000).invoke(&mut c).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut p = pipeline.start();
    let addr = p.addr;
    let target = Arc::new(Target::default());
    target.set(Some(addr));
    // Sustained: 8 senders, one request (50 pings) each every 400 ms: ~1,000 pings/s.
    let senders = 8;
    let load = Load::start(
        &fleet,
        &target,
        senders,
        0,
        Duration::from_millis(400),
        Duration::from_millis(250),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (rss_before, _) = memory(p.pid());
    let refused_before = load.log.lock().unwrap().count(429);
    let acked_before = load.acked_count();

    // The burst: 10x (a request every 40 ms per sender); refused requests are retried
    // after 250 ms, sooner than the Retry-After asks.
    load.set_pause(Duration::from_millis(40));
    let burst = Instant::now();
    let mut max_lag = 0u64;
    while burst.elapsed() < burst_for {
        assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
        let (head, consumed) = progress(addr);
        max_lag = max_lag.max(head - consumed);
        std::thread::sleep(Duration::from_millis(100));
    }
    let burst_acked = load.acked_count() - acked_before;
    load.set_pause(Duration::from_millis(400));
    let caught_up = wait_processed(&p, None, Duration::from_secs(60));
    let (rss_after, peak) = memory(p.pid());
    std::thread::sleep(Duration::from_secs(1));
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(30));
    assert!(p.try_wait().is_none(), "leasewatch run died:\n{}", p.log());
    slow.store(false, Ordering::SeqCst);
    slower.join().unwrap();
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(&fleet, &pipeline, &redis, &log);

    let refused = log.count(429) - refused_before;
    assert!(
        refused > 0,
        "no 429 during the burst (max lag {max_lag} batches): the engine kept up"
    );
    // The lag bound holds (a few requests pass the check together before their appends).
    assert!(
        max_lag <= 20 + senders,
        "the engine fell {max_lag} batches behind, bound 20"
    );
    let growth = peak.saturating_sub(rss_before);
    assert!(
        growth < 256 << 20,
        "resident memory grew by {} MiB during the burst (from {} MiB)",
        growth >> 20,
        rss_before >> 20
    );
    eprintln!(
        "faults/burst: {:.0} s burst at 10x the sustained rate: {burst_acked} pings acknowledged \
         ({:.0}/s), {refused} answers 429 with Retry-After, lag at most {max_lag} batches, \
         caught up {:.2} s after the burst; RSS {} MiB before, peak {} MiB, {} MiB after; \
         {} pings acknowledged, {} processed, lost {}, duplicates {}, {} queue entries each \
         once; answers {:?}; {:.1} s",
        burst_for.as_secs_f64(),
        burst_acked as f64 / burst_for.as_secs_f64(),
        caught_up.as_secs_f64(),
        rss_before >> 20,
        peak >> 20,
        rss_after >> 20,
        d.acked,
        d.processed,
        d.lost,
        d.duplicates,
        d.alerts,
        log.statuses,
        started.elapsed().as_secs_f64()
    );
}

/// Memory under a steady load levels off once warm: resident memory may grow with window
/// state and the lookup cache, not with every batch processed. Ignored: it fails until
/// the engine stops re-executing the same DataFusion plans for every batch without
/// resetting them (each execution registers new operator metrics in the plan and they
/// are never freed: about 350 KB per batch with the product SQL). Run it with
/// `cargo test -p leasewatch --test faults -- --ignored`.
#[test]
#[ignore]
fn memory_levels_off_under_sustained_load() {
    let _serial = serial();
    let redis = RedisServer::start();
    let fleet = Arc::new(Fleet::with_pool(5, 600_000, Some((100, 2_000))));
    fleet.load_state(&redis);
    // A small in-memory WAL ring, so that what is left is the engine's own.
    let pipeline = Pipeline::new(&redis, "memory_ring_batches = 64\n", "");
    let mut p = pipeline.start();
    let target = Arc::new(Target::default());
    target.set(Some(p.addr));
    let load = Load::start(
        &fleet,
        &target,
        4,
        0,
        Duration::from_millis(20),
        Duration::from_millis(250),
    );
    std::thread::sleep(Duration::from_secs(5));
    let (rss_warm, _) = memory(p.pid());
    let (_, consumed_warm) = progress(p.addr);
    std::thread::sleep(Duration::from_secs(if full() { 60 } else { 20 }));
    let (rss_end, _) = memory(p.pid());
    let (_, consumed_end) = progress(p.addr);
    let log = load.finish();
    wait_processed(&p, None, Duration::from_secs(60));
    let s = p.stop();
    assert!(s.success(), "exit {s}:\n{}", p.log());
    let d = check_delivery(&fleet, &pipeline, &redis, &log);
    let batches = (consumed_end - consumed_warm).max(1);
    let per_batch = rss_end.saturating_sub(rss_warm) / batches;
    eprintln!(
        "faults/memory: RSS {} MiB when warm, {} MiB {batches} batches later: {} KiB per batch \
         of {PER_REQUEST} pings; {} pings acknowledged, lost {}, duplicates {}",
        rss_warm >> 20,
        rss_end >> 20,
        per_batch >> 10,
        d.acked,
        d.lost,
        d.duplicates
    );
    assert!(
        per_batch < 64 << 10,
        "resident memory grew by {} KiB per batch processed",
        per_batch >> 10
    );
}
