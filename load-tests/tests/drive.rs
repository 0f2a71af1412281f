//! `leasewatch-load drive` against the real pipeline: a private `redis-server`, lease and
//! credit state loaded by the driver, `leasewatch run` with the product rules (`sql/`),
//! a few seconds of traffic at a low rate. Checks that pings were accepted, that the
//! alerts of the devices driven to trip a rule were read from the queues, and that
//! their latency was recorded. A smoke test, not a benchmark: no timing is asserted.
//!
//! The `leasewatch` binary is looked up next to this test's target directory (e.g.
//! `target/debug/leasewatch`); it is not built here: `scripts/test` builds the whole
//! workspace before running the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const LOAD: &str = env!("CARGO_BIN_EXE_leasewatch-load");
const TOKEN: &str = "drive-smoke-test-token-0123456789";

/// `target/<profile>/leasewatch`, beside the directory of this test executable
/// (`target/<profile>/deps/`). `LEASEWATCH_BIN` overrides it.
fn leasewatch_bin() -> PathBuf {
    let bin = match std::env::var_os("LEASEWATCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps/<test>");
            profile_dir.join(format!("leasewatch{}", std::env::consts::EXE_SUFFIX))
        }
    };
    assert!(
        bin.is_file(),
        "the leasewatch binary is not at {}: build it first (`cargo build -p leasewatch`, \
         or run scripts/test, which builds the whole workspace before the tests), or set \
         LEASEWATCH_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn start_redis(dir: &Path) -> (Killed, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => Killed(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed: this test needs a real server. Run scripts/test \
             (it installs redis-server), or `apt-get install -y redis-server`."
        ),
        Err(e) => panic!("spawn redis-server: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_ping(port) {
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("redis://127.0.0.1:{port}"))
}

/// Starts `leasewatch run` and waits for its `listening on http://ADDR` line.
fn start_pipeline(config: &Path, cwd: &Path) -> (Killed, SocketAddr, Arc<Mutex<String>>) {
    let mut child = Command::new(leasewatch_bin())
        .args(["run", "--config"])
        .arg(config)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leasewatch run");
    let stderr = child.stderr.take().expect("stderr");
    let child = Killed(child);
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let thread_log = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("listening on http://")
                && let Ok(a) = a.trim().parse::<SocketAddr>()
            {
                let _ = tx.send(a);
            }
            if let Ok(mut l) = thread_log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => (child, addr, log),
        Err(_) => {
            drop(child);
            std::thread::sleep(Duration::from_millis(50));
            panic!(
                "leasewatch run printed no `listening on` line:\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    }
}

fn run_load(args: &[&str]) -> std::process::Output {
    Command::new(LOAD)
        .arg("drive")
        .args(args)
        .output()
        .expect("run leasewatch-load drive")
}

#[test]
fn drives_the_pipeline_and_times_alerts() {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let sql = sql.canonicalize().expect("the product sql/ folder");
    leasewatch_bin(); // fails first, with the fix, when the binary is missing
    let dir = tempfile::tempdir().expect("temp dir");
    let (_redis, redis_url) = start_redis(dir.path());

    // State of the driven devices: into Redis, and places.geojson for the geofences.
    let state_dir = dir.path().join("state");
    let devices = "1000";
    let out = run_load(&[
        "--devices",
        devices,
        "--duration",
        "5",
        "--alert-fraction",
        "0.1",
        "--redis",
        &redis_url,
        "--load-state",
        "--write-state",
        state_dir.to_str().unwrap(),
        "--state-only",
    ]);
    assert!(
        out.status.success(),
        "drive --state-only failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = std::fs::read_to_string(state_dir.join("leases.ndjson")).unwrap();
    assert_eq!(leases.lines().count(), 1000);

    let config = dir.path().join("leasewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nsql_dir = {:?}\ngeofences = {:?}\nredis_url = {:?}\n\
             sweep_interval_secs = 0\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{TOKEN}\"]\n\
             [wal]\ndir = {:?}\n",
            sql.to_str().unwrap(),
            state_dir.join("places.geojson").to_str().unwrap(),
            redis_url,
            dir.path().join("wal").to_str().unwrap(),
        ),
    )
    .unwrap();
    let (mut pipeline, addr, log) = start_pipeline(&config, dir.path());
    let pid = pipeline.0.id().to_string();

    let url = format!("http://{addr}");
    let out = run_load(&[
        "--url",
        &url,
        "--token",
        TOKEN,
        "--devices",
        devices,
        "--rate",
        "400",
        "--duration",
        "5",
        "--batch",
        "1-20:0.3,50-200:0.7",
        "--connections",
        "4",
        "--alert-fraction",
        "0.1",
        "--redis",
        &redis_url,
        "--pid",
        &pid,
        "--report-every",
        "1",
        "--alert-wait",
        "30",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pipeline_log = || log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        out.status.success(),
        "drive failed: {stderr}\npipeline:\n{}",
        pipeline_log()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let ctx = || {
        format!(
            "report: {r:#}\ndriver: {stderr}\npipeline:\n{}",
            pipeline_log()
        )
    };

    // Pings were sent and accepted, none rejected or dropped.
    let n = |path: &[&str]| {
        let mut v = &r;
        for p in path {
            v = &v[*p];
        }
        v.as_u64()
            .unwrap_or_else(|| panic!("{path:?} missing\n{}", ctx()))
    };
    assert!(n(&["pings", "accepted"]) > 1000, "{}", ctx());
    assert_eq!(
        n(&["pings", "accepted"]),
        n(&["pings", "sent"]),
        "{}",
        ctx()
    );
    assert_eq!(n(&["pings", "rejected"]), 0, "{}", ctx());
    assert_eq!(n(&["pings", "abandoned"]), 0, "{}", ctx());
    assert!(n(&["requests", "by_status", "202"]) > 0, "{}", ctx());

    // Alerts of the driven devices were read from the queues and timed.
    assert!(n(&["alerts", "expected"]) > 0, "{}", ctx());
    assert_eq!(
        n(&["alerts", "matched"]),
        n(&["alerts", "expected"]),
        "{}",
        ctx()
    );
    assert!(n(&["alerts", "ping_to_queue", "count"]) > 0, "{}", ctx());
    assert!(
        r["alerts"]["ping_to_queue"]["p99_ms"].as_f64().is_some(),
        "{}",
        ctx()
    );
    assert!(
        n(&["alerts", "emitted_minus_event", "count"]) > 0,
        "{}",
        ctx()
    );
    let signals = &r["alerts"]["read_by_signal"];
    assert!(
        signals["tamper"].as_u64().is_some() || signals["sim_mismatch"].as_u64().is_some(),
        "{}",
        ctx()
    );

    // The pipeline's memory was sampled.
    assert!(
        r["pipeline_rss_mib"]["max"]
            .as_f64()
            .is_some_and(|m| m > 0.0),
        "{}",
        ctx()
    );
    assert!(!r["samples"].as_array().unwrap().is_empty(), "{}", ctx());

    // A clean stop.
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pipeline.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "leasewatch run did not stop:\n{}",
            pipeline_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
