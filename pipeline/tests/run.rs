//! `leasewatch run` end to end: the real binary, HTTP ingest, WAL, engine, file sinks,
//! checkpoints, restarts.
//!
//! Delivery semantics checked here (see `leasewatch::run`):
//! - clean stop (SIGTERM) and restart: every acknowledged ping reaches the per-ping sink
//!   exactly once, because the stop ends with a checkpoint at the WAL head;
//! - crash (SIGKILL) during ingest and restart: the per-ping and the window outputs are
//!   exactly those of an uninterrupted run over the same pings (the restore cuts file
//!   output back to the checkpoint and replays the WAL after it); every acknowledged
//!   ping is in them once, and nothing that was not sent.
//!
//! `filesystem` sinks append across restarts; the outputs are read at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "run-test-token-0123456789";

/// A valid IMEI (Luhn check digit) for ping number `n`: one device per ping, so the
/// device id identifies the ping in the sink output.
fn imei(n: u64) -> String {
    let base = format!("{:014}", 35_000_000_000_000 + n);
    (0..10)
        .map(|d| format!("{base}{d}"))
        .find(|s| leasewatch_schemas::luhn_valid(s))
        .unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const SQL: &str = "
CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  battery_pct INT,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '1' SECOND)
) WITH (connector = 'leasewatch');

CREATE TABLE every_ping (device_id TEXT, event_time TIMESTAMP, battery_pct INT)
  WITH (connector = 'filesystem', path = 'OUT/every_ping.jsonl');
CREATE TABLE per_second (window_end TIMESTAMP, pings BIGINT)
  WITH (connector = 'filesystem', path = 'OUT', format = 'json');

INSERT INTO every_ping SELECT device_id, event_time, battery_pct FROM pings;

INSERT INTO per_second
SELECT window.end, pings
FROM (
  SELECT tumble(INTERVAL '1' SECOND) AS window, count(*) AS pings
  FROM pings
  GROUP BY window
);
";

/// The file of the `per_second` sink: the windowed lane's file sinks (`engine.split_lanes`,
/// on by default) tag their file names.
const WINDOWS_FILE: &str = "per_second.windowed.jsonl";

/// A temporary pipeline: SQL folder, WAL, sink folder, config.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new() -> Self {
        Self::with_sql(SQL)
    }

    fn with_sql(sql_text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("sql");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&sql).unwrap();
        let out_text = out.to_str().unwrap().replace('\\', "/");
        std::fs::write(sql.join("pipeline.sql"), sql_text.replace("OUT", &out_text)).unwrap();
        let config = dir.path().join("leasewatch.toml");
        std::fs::write(
            &config,
            format!(
                "[engine]\nsql_dir = {:?}\ncheckpoint_interval_secs = 1\n\
                 [ingest]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{TOKEN}\"]\n\
                 [wal]\ndir = {:?}\n",
                sql.to_str().unwrap(),
                dir.path().join("wal").to_str().unwrap(),
            ),
        )
        .unwrap();
        Self { dir, config, out }
    }

    fn start(&self) -> Pipeline {
        Pipeline::start(&self.config)
    }

    /// Runs `leasewatch run`, which must refuse to start (exit 2): its stderr.
    fn refused(&self) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_leasewatch"))
            .args(["run", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{err}");
        err
    }

    /// Device ids in the per-ping sink file (written by the last process).
    fn sink_ids(&self) -> Vec<String> {
        read_lines(&self.out.join("every_ping.jsonl"))
            .iter()
            .map(|v| v["device_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Pings counted by the window sink (written by the last process).
    fn window_pings(&self) -> u64 {
        read_lines(&self.out.join(WINDOWS_FILE))
            .iter()
            .map(|v| v["pings"].as_u64().unwrap())
            .sum()
    }
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A running `leasewatch run` process.
struct Pipeline {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Pipeline {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leasewatch"))
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().unwrap());
                }
                let mut l = thread_log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line:\n{}", log.lock().unwrap());
            }
        };
        Self { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the stderr reader take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then expects exit code 0.
    fn stop(&mut self) {
        self.signal("TERM");
        let s = self.wait();
        assert!(s.success(), "exit {s}:\n{}", self.log());
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs pings `first..first + n` as NDJSON; returns the HTTP status and body.
/// Ping `k`'s event time: a fixed start plus 20 ms per ping, so the same pings posted
/// again (a reference run) carry the same times.
fn event_time(k: u64) -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| now_ms() - 60_000) + 20 * k as i64
}

fn post_pings(addr: SocketAddr, first: u64, n: u64) -> std::io::Result<(u16, String)> {
    let body: String = (first..first + n)
        .map(|k| {
            format!(
                r#"{{"device_id":"{}","event_time":{},"battery_pct":{},"event_kind":"heartbeat"}}"#,
                imei(k),
                event_time(k),
                k % 100
            ) + "\n"
        })
        .collect();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /v1/pings HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad reply {reply:?}")))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// POSTs `n` pings starting at `*next`, expecting them all acknowledged.
fn post_acked(p: &Pipeline, next: &mut u64, n: u64, acked: &mut BTreeSet<String>) {
    let (status, body) = post_pings(p.addr, *next, n).unwrap();
    assert_eq!(status, 202, "{body}\n{}", p.log());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"].as_u64(), Some(n), "{body}");
    acked.extend((*next..*next + n).map(imei));
    *next += n;
}

fn counts(ids: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.as_str()).or_insert(0) += 1;
    }
    m
}

#[test]
fn clean_restart_delivers_every_acknowledged_ping_once() {
    let setup = Setup::new();
    let mut acked = BTreeSet::new();
    let mut next = 0u64;
    let mut out = Vec::new();
    let mut window_pings = 0;

    let mut p = setup.start();
    for _ in 0..6 {
        post_acked(&p, &mut next, 20, &mut acked);
        std::thread::sleep(Duration::from_millis(300));
    }
    p.stop();
    assert!(!p.log().contains("restored checkpoint"), "{}", p.log());
    // Sink files are appended to across restarts: read them once, at the end.

    let mut p = setup.start();
    assert!(
        p.log().contains("restored checkpoint at lsn 6;"),
        "{}",
        p.log()
    );
    for _ in 0..4 {
        post_acked(&p, &mut next, 20, &mut acked);
        std::thread::sleep(Duration::from_millis(300));
    }
    p.stop();
    out.extend(setup.sink_ids());
    window_pings += setup.window_pings();

    let c = counts(&out);
    let missing: Vec<_> = acked
        .iter()
        .filter(|a| !c.contains_key(a.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in the sink: {missing:?}");
    let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "in the sink more than once: {twice:?}");
    assert_eq!(c.len(), acked.len(), "pings in the sink that were not sent");
    // Closed one-second windows counted some of the pings, none twice.
    assert!(window_pings > 0 && window_pings <= acked.len() as u64);

    // The WAL segments are lost but the checkpoints are not: refuse to start (exit 2,
    // naming the WAL directory) instead of silently starting over.
    let wal = setup.dir.path().join("wal");
    for e in std::fs::read_dir(&wal).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "arrows") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let err = setup.refused();
    assert!(
        err.contains("WAL was lost") && err.contains(wal.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn crash_restart_outputs_equal_an_uninterrupted_run() {
    let setup = Setup::new();
    let mut out = Vec::new();

    let mut p = setup.start();
    let addr = p.addr;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let poster = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut next = 0u64;
            while !done.load(Ordering::SeqCst) {
                match post_pings(addr, next, 25) {
                    Ok((202, _)) => acked.lock().unwrap().extend((next..next + 25).map(imei)),
                    Ok((429 | 503, _)) => {}
                    Ok((status, body)) => panic!("{status}: {body}"),
                    Err(_) => {
                        next += 25; // may be in the WAL without an answer
                        break; // the process is gone
                    }
                }
                next += 25;
                std::thread::sleep(Duration::from_millis(20));
            }
            next
        })
    };
    // Long enough for a few checkpoints (every second), then kill it mid-ingest.
    std::thread::sleep(Duration::from_millis(2600));
    p.signal("KILL");
    let s = p.wait();
    assert!(!s.success());
    done.store(true, Ordering::SeqCst);
    let sent = poster.join().unwrap();

    let mut p = setup.start();
    assert!(p.log().contains("restored checkpoint"), "{}", p.log());
    p.stop();
    out.extend(setup.sink_ids());

    let acked = acked.lock().unwrap();
    assert!(
        acked.len() >= 100,
        "only {} pings acknowledged",
        acked.len()
    );
    let c = counts(&out);
    let missing: Vec<_> = acked
        .iter()
        .filter(|a| !c.contains_key(a.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in the sink: {missing:?}");
    let sent_ids: BTreeSet<String> = (0..sent).map(imei).collect();
    let unknown: Vec<_> = c.keys().filter(|id| !sent_ids.contains(**id)).collect();
    assert!(
        unknown.is_empty(),
        "in the sink but never sent: {unknown:?}"
    );
    let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "in the sink more than once: {twice:?}");

    // An uninterrupted run over the same pings (the blocks of 25 that reached the WAL,
    // in the order they were sent) writes exactly the same outputs, windows included.
    let crashed_pings = sorted_lines(&setup.out.join("every_ping.jsonl"));
    let crashed_windows = sorted_lines(&setup.out.join(WINDOWS_FILE));
    assert!(!crashed_windows.is_empty(), "no window was written");
    let reference = Setup::new();
    let p = reference.start();
    let mut first = 0u64;
    while first < sent {
        if c.contains_key(imei(first).as_str()) {
            let (status, body) = post_pings(p.addr, first, 25).unwrap();
            assert_eq!(status, 202, "{body}");
        }
        first += 25;
    }
    let mut p = p;
    p.stop();
    assert_eq!(
        crashed_pings,
        sorted_lines(&reference.out.join("every_ping.jsonl")),
        "per-ping output differs from an uninterrupted run"
    );
    assert_eq!(
        crashed_windows,
        sorted_lines(&reference.out.join(WINDOWS_FILE)),
        "window output differs from an uninterrupted run"
    );
    eprintln!(
        "acknowledged {}, sent {}, in the sink {} (each once), {} windows, as uninterrupted",
        acked.len(),
        sent,
        c.len(),
        crashed_windows.len()
    );
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A batch a query fails on (integer division by zero) is set aside in the dead-letter
/// folder with its error; the pipeline keeps running and processes later batches, and a
/// restart does not trip over it again.
#[test]
fn a_batch_a_query_fails_on_goes_to_the_dead_letter_folder() {
    let setup = Setup::with_sql(
        "CREATE TABLE pings (
           device_id TEXT NOT NULL, event_time TIMESTAMP NOT NULL, battery_pct INT,
           event_kind TEXT NOT NULL,
           WATERMARK FOR event_time AS (event_time - INTERVAL '1' SECOND)
         ) WITH (connector = 'leasewatch');
         CREATE TABLE every_ping (device_id TEXT, per_pct INT)
           WITH (connector = 'filesystem', path = 'OUT/every_ping.jsonl');
         INSERT INTO every_ping SELECT device_id, 100 / battery_pct FROM pings;",
    );
    let mut acked = BTreeSet::new();
    let mut next = 1u64; // ping 0 has battery_pct 0 (k % 100)
    let mut p = setup.start();
    post_acked(&p, &mut next, 20, &mut acked);
    let (status, body) = post_pings(p.addr, 100, 1).unwrap(); // battery_pct 0
    assert_eq!(status, 202, "{body}");
    let mut next = 101;
    post_acked(&p, &mut next, 20, &mut acked);
    std::thread::sleep(Duration::from_millis(500));
    p.stop();
    let dead = setup.dir.path().join("wal").join("dead-letter");
    let files: Vec<String> = std::fs::read_dir(&dead)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", dead.display(), p.log()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".arrows")), "{files:?}");
    let error = files.iter().find(|f| f.ends_with(".error.txt")).unwrap();
    let text = std::fs::read_to_string(dead.join(error)).unwrap();
    assert!(text.to_lowercase().contains("divide by zero"), "{text}");
    let ids = setup.sink_ids();
    for a in &acked {
        assert!(ids.contains(a), "{a} missing after the bad batch");
    }
    // Restart: resumes after it.
    let mut p = setup.start();
    p.stop();
    assert!(!p.log().contains("query failed"), "{}", p.log());
}

/// With `engine.split_lanes = false` one engine runs every query: the windows' file
/// keeps its plain name, a restart restores its checkpoint, and a later start with the
/// lanes split refuses that checkpoint (it holds both lanes' state) with a clear error
/// instead of starting over.
#[test]
fn one_engine_without_split_lanes_and_its_checkpoint_stays_its_own() {
    let setup = Setup::new();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let one = text.replace("[engine]\n", "[engine]\nsplit_lanes = false\n");
    std::fs::write(&setup.config, &one).unwrap();
    let (mut acked, mut next) = (BTreeSet::new(), 0u64);
    let mut p = setup.start();
    // 160 pings 20 ms apart in event time: the watermark (1 s behind the newest) passes
    // the end of at least one one-second window.
    for _ in 0..8 {
        post_acked(&p, &mut next, 20, &mut acked);
        std::thread::sleep(Duration::from_millis(200));
    }
    p.stop();
    let mut p = setup.start();
    assert!(
        p.log().contains("all lane: restored checkpoint"),
        "{}",
        p.log()
    );
    p.stop();
    let ids: BTreeSet<String> = setup.sink_ids().into_iter().collect();
    assert_eq!(ids, acked);
    assert!(!read_lines(&setup.out.join("per_second.jsonl")).is_empty());
    assert!(!setup.out.join(WINDOWS_FILE).exists());

    std::fs::write(&setup.config, text).unwrap();
    let err = setup.refused();
    assert!(err.contains("engine.split_lanes"), "{err}");
}
