//! A real, private `redis-server` for one test: free port, temp dir, no persistence unless
//! asked (`SAVE`), killed on drop. It can be killed and restarted on the same port to test
//! outages. Missing `redis-server` fails the test: `scripts/test` installs it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` (or a stopped one that can be restarted).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis.conf` lines (e.g. ACL `user NAME on >PASS ...`).
    pub fn start_with(config_lines: &[&str]) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let mut s = Self {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                extra: config_lines.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.path().join("redis.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let conf = self.dir.path().join("redis.conf");
        std::fs::write(&conf, self.extra.join("\n") + "\n").map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: the Redis tests need a real server. \
                 Run scripts/test (it installs redis-server), or `apt-get install -y redis-server`."
            ),
            Err(e) => return Err(format!("spawn redis-server: {e}")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited ({status}): {}", self.log()));
            }
            if ping(self.port, self.auth_password()) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "redis-server did not answer PING within 10 s: {}",
            self.log()
        ))
    }

    fn auth_password(&self) -> Option<(String, String)> {
        // `user NAME on >PASS ...`: PING needs auth when the default user is off.
        let spec = self
            .extra
            .iter()
            .find(|l| l.starts_with("user ") && !l.starts_with("user default"))?;
        let mut parts = spec.split_whitespace().skip(1);
        let user = parts.next()?.to_string();
        let pass = parts.find_map(|p| p.strip_prefix('>'))?.to_string();
        Some((user, pass))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's directory (where `SAVE` writes `dump.rdb`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server cleanly (`SHUTDOWN SAVE`: it writes `dump.rdb` first, so a
    /// [`RedisServer::restart`] comes back with the same data) and waits for it to exit.
    pub fn shutdown_save(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server closes the connection instead of answering.
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("SAVE").query(&mut self.conn());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server did not exit after SHUTDOWN SAVE: {}",
            self.log()
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open and requests get no answer,
    /// as with a hung host. [`RedisServer::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a [`RedisServer::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([format!("-{name}"), c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{name} redis-server failed");
        }
    }

    /// Starts the server again on the same port and directory (it loads `dump.rdb` if a
    /// `SAVE` wrote one).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A synchronous connection for test setup and assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection()
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16, auth: Option<(String, String)>) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut req = String::new();
    if let Some((u, p)) = auth {
        req.push_str(&format!("AUTH {u} {p}\r\n"));
    }
    req.push_str("PING\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(5).any(|w| w == b"+PONG") {
                    return true;
                }
                if got.starts_with(b"-") {
                    return false;
                }
            }
        }
    }
    false
}
