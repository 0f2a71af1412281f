//! A real `leasewatch run` process for one test: its SQL folder, WAL and config in a temp
//! dir, the address it listens on read from its `listening on http://ADDR` line, its
//! stderr kept for failure messages, SIGTERM to stop it, killed on drop. The SQL is one
//! file given as text ([`RunSetup::new`]) or a copy of a folder such as the product `sql/`
//! ([`RunSetup::from_sql_dir`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A temp dir with `sql/*.sql`, `wal/` and `leasewatch.toml` for `leasewatch run`.
pub struct RunSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl RunSetup {
    /// `sql` as the only SQL file (`sql/pipeline.sql`); ingest on a free port with bearer
    /// `token`; a checkpoint every `checkpoint_secs`; `extra_toml` appended to the config
    /// (more sections).
    pub fn new(sql: &str, token: &str, checkpoint_secs: u64, extra_toml: &str) -> Self {
        Self::with_files(
            &[("pipeline.sql".to_string(), sql.to_string())],
            token,
            checkpoint_secs,
            "",
            extra_toml,
        )
    }

    /// The `.sql` files of `sql_dir` (not its subfolders) copied to `sql/`; `engine_toml`
    /// appended to the `[engine]` section (e.g. `redis_url = "..."`); otherwise as
    /// [`RunSetup::new`]. Relative paths in the SQL (a filesystem sink's `path`) resolve
    /// against the working directory: start it with [`RunSetup::start_in_dir`] to keep
    /// them in the temp dir.
    pub fn from_sql_dir(
        sql_dir: &Path,
        token: &str,
        checkpoint_secs: u64,
        engine_toml: &str,
        extra_toml: &str,
    ) -> Self {
        let mut files: Vec<(String, String)> = std::fs::read_dir(sql_dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", sql_dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "sql"))
            .map(|p| {
                let name = p
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                (name, text)
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .sql file in {}", sql_dir.display());
        Self::with_files(&files, token, checkpoint_secs, engine_toml, extra_toml)
    }

    fn with_files(
        files: &[(String, String)],
        token: &str,
        checkpoint_secs: u64,
        engine_toml: &str,
        extra_toml: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir).expect("sql dir");
        for (name, text) in files {
            std::fs::write(sql_dir.join(name), text).expect("write SQL");
        }
        let config = dir.path().join("leasewatch.toml");
        let engine_toml = engine_toml.trim_end();
        std::fs::write(
            &config,
            format!(
                "[engine]\nsql_dir = {:?}\ncheckpoint_interval_secs = {checkpoint_secs}\n\
                 {engine_toml}{}\
                 [ingest]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{token}\"]\n\
                 [wal]\ndir = {:?}\n{extra_toml}",
                sql_dir.to_str().expect("utf-8 temp path"),
                if engine_toml.is_empty() { "" } else { "\n" },
                dir.path().join("wal").to_str().expect("utf-8 temp path"),
            ),
        )
        .expect("write config");
        Self { dir, config }
    }

    /// Starts `leasewatch run --config` on it (in the test's working directory).
    pub fn start(&self) -> RunProcess {
        RunProcess::start(&self.config)
    }

    /// Starts `leasewatch run --config` on it with the temp dir as working directory.
    pub fn start_in_dir(&self) -> RunProcess {
        RunProcess::start_in(&self.config, Some(self.dir.path()))
    }
}

/// A running `leasewatch run`.
pub struct RunProcess {
    child: Child,
    /// Where it serves ingest and `/metrics`.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl RunProcess {
    /// Starts `leasewatch run --config <config>` and waits (20 s at most) for its
    /// `listening on` line.
    pub fn start(config: &Path) -> Self {
        Self::start_in(config, None)
    }

    /// [`RunProcess::start`] in working directory `cwd` (None: the test's).
    pub fn start_in(config: &Path, cwd: Option<&Path>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasewatch"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leasewatch run");
        let stderr = child.stderr.take().expect("stderr");
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
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Self { child, addr, log },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "leasewatch run printed no `listening on` line:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL (a crash: no handler runs) and waits for it to exit.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait after SIGKILL");
        std::thread::sleep(Duration::from_millis(50)); // the last log lines
        s
    }

    /// Its exit status if it has exited (None: still running).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Sends SIGTERM and waits (15 s at most) for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(50)); // the last log lines
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("leasewatch run did not exit after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
