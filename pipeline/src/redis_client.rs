//! The Redis connection shared by the lookup join, the alert sink and `state load`.
//!
//! One multiplexed connection per [`RedisConn`]; every request is a single round trip (a
//! command or a pipeline). When Redis is unreachable the request is retried with capped
//! exponential backoff and the caller *waits* (backpressure) until Redis answers again or
//! [`ConnectionConfig::give_up_after_ms`] has passed, then gets
//! [`RedisError::Unavailable`], which is retryable. Nothing is dropped meanwhile.
//!
//! URLs: `redis://[user][:password@]host[:port][/db]` and `rediss://...` (TLS). ACL
//! credentials go in the URL; they never appear in logs or errors ([`RedisConn::addr`]
//! prints host, port and db only). TLS needs the crate feature `tls`
//! (`cargo build --features tls`); without it a `rediss://` URL fails with
//! [`RedisError::Config`] saying so.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, ServerErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// `redis://[user][:password@]host[:port][/db]` or `rediss://...` (TLS, feature `tls`).
    pub url: String,
    /// Timeout of one connection attempt, ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one request (command or pipeline) once connected, ms.
    pub response_timeout_ms: u64,
    /// First retry delay after a failure, ms; doubles on each further failure.
    pub backoff_initial_ms: u64,
    /// Cap of the retry delay, ms.
    pub backoff_max_ms: u64,
    /// How long one request keeps retrying while Redis is unreachable before it fails with a
    /// retryable [`RedisError::Unavailable`], ms. The caller (and so the pipeline) waits
    /// meanwhile: backpressure, not loss.
    pub give_up_after_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 2_000,
            give_up_after_ms: 60_000,
        }
    }
}

impl ConnectionConfig {
    /// The default settings for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Every problem with the settings, each prefixed with `path` (e.g. `lookup.redis`).
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if let Err(e) = parse_url(&self.url) {
            errors.push(format!("{path}.url: {e}"));
        }
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
        ] {
            if v == 0 {
                errors.push(format!("{path}.{name}: must be > 0"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            errors.push(format!(
                "{path}.backoff_max_ms: {} is below backoff_initial_ms {}",
                self.backoff_max_ms, self.backoff_initial_ms
            ));
        }
    }
}

/// A Redis request failed. Split by who must act.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Bad input: the configuration (URL, credentials, TLS without the feature). Fix the
    /// config; retrying does not help.
    #[error("redis configuration: {0}")]
    Config(String),
    /// Outside system, retryable: Redis did not answer within the give-up deadline.
    #[error(
        "redis {addr} unavailable: gave up after {waited_ms} ms and {attempts} attempts (last error: {last_error})"
    )]
    Unavailable {
        /// host:port/db (no credentials).
        addr: String,
        /// How long the request waited, ms.
        waited_ms: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last_error: String,
    },
    /// Outside system, not retryable as is: Redis answered with an error (ACL `NOPERM`,
    /// `WRONGTYPE` on a key someone else wrote, out of memory). An operator must act.
    #[error("redis {addr} refused {what}: {message}")]
    Refused {
        /// host:port/db.
        addr: String,
        /// The request (e.g. `MGET`, `alert script`).
        what: &'static str,
        /// Redis's answer.
        message: String,
    },
    /// A bug on our side: a reply did not have the shape our own request implies.
    #[error("internal error talking to redis: {0}")]
    Internal(String),
}

impl RedisError {
    /// Whether retrying the same request later may succeed (Redis was down).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Counters a request updates (part of each component's stats).
#[derive(Debug, Default)]
pub struct RetryCounters {
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Failed attempts of any kind (retried or not).
    pub errors: AtomicU64,
    /// Duration of each successful round trip (exported by `crate::metrics`).
    pub round_trip_seconds: crate::metrics::AtomicHistogram,
}

/// One request: a single command or a pipeline, sent as one round trip.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A single command.
    Cmd(&'a redis::Cmd),
    /// A pipeline of commands.
    Pipe(&'a redis::Pipeline),
}

/// A lazily connected, self-healing connection to one Redis.
pub struct RedisConn {
    client: redis::Client,
    addr: String,
    config: ConnectionConfig,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Checks the URL and returns the client and its printable address (no credentials).
fn parse_url(url: &str) -> Result<(redis::Client, String), String> {
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "redis" => {}
        "rediss" if cfg!(feature = "tls") => {}
        "rediss" => {
            return Err(
                "rediss:// (TLS) needs leasewatch built with the `tls` feature \
                 (`cargo build --features tls`)"
                    .into(),
            );
        }
        _ => {
            return Err(format!(
                "expected redis://[user][:password@]host[:port][/db] or rediss://..., got scheme {scheme:?}"
            ));
        }
    }
    let client = redis::Client::open(url).map_err(|e| {
        // redis's message may quote the URL: never echo credentials.
        format!("not a valid Redis URL ({})", e.category())
    })?;
    let info = client.get_connection_info();
    let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
    Ok((client, addr))
}

impl RedisConn {
    /// A connection to `config.url`. Connects on first use; fails only on a bad URL.
    pub fn new(config: &ConnectionConfig) -> Result<Self, RedisError> {
        let (client, addr) = parse_url(&config.url).map_err(RedisError::Config)?;
        Ok(Self {
            client,
            addr,
            config: config.clone(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `host:port/db`, without credentials (for logs and errors).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The settings.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(self.config.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(self.config.response_timeout_ms)));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Sends `req` as one round trip and parses the reply as `T`, retrying while Redis is
    /// unreachable (see the module docs). `what` names the request in errors.
    pub async fn query<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        what: &'static str,
        counters: &RetryCounters,
    ) -> Result<T, RedisError> {
        let give_up = Duration::from_millis(self.config.give_up_after_ms);
        self.query_within(req, what, counters, give_up).await
    }

    /// [`Self::query`], giving up once retrying would take longer than `give_up` (zero:
    /// one attempt, for a request that can do without an answer).
    pub async fn query_within<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        what: &'static str,
        counters: &RetryCounters,
        give_up: Duration,
    ) -> Result<T, RedisError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(self.config.backoff_initial_ms.max(1));
        let backoff_max = Duration::from_millis(self.config.backoff_max_ms.max(1));
        let mut attempts: u32 = 0;
        loop {
            attempts = attempts.saturating_add(1);
            let attempt_start = Instant::now();
            let result = match self.connection().await {
                Ok(mut c) => match req {
                    Request::Cmd(cmd) => cmd.query_async::<T>(&mut c).await,
                    Request::Pipe(p) => p.query_async::<T>(&mut c).await,
                },
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => {
                    counters
                        .round_trip_seconds
                        .observe_duration(attempt_start.elapsed());
                    return Ok(v);
                }
                Err(e) => e,
            };
            counters.errors.fetch_add(1, Ordering::Relaxed);
            match classify(&err) {
                Class::Retry => {}
                Class::Config => {
                    return Err(RedisError::Config(format!(
                        "{}: {} (check the URL's ACL user and password)",
                        self.addr,
                        err.category()
                    )));
                }
                Class::Refused => {
                    return Err(RedisError::Refused {
                        addr: self.addr.clone(),
                        what,
                        message: err.to_string(),
                    });
                }
                Class::Internal => return Err(RedisError::Internal(format!("{what}: {err}"))),
            }
            // The connection may be broken: the next attempt reconnects.
            self.drop_connection().await;
            let waited = start.elapsed();
            if waited + backoff > give_up {
                if give_up.is_zero() {
                    tracing::debug!(addr = %self.addr, request = what, error = %err, "redis unavailable, not retried");
                } else {
                    tracing::error!(addr = %self.addr, request = what, attempts, error = %err, "redis unavailable, giving up");
                }
                return Err(RedisError::Unavailable {
                    addr: self.addr.clone(),
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    attempts,
                    last_error: err.to_string(),
                });
            }
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(addr = %self.addr, request = what, attempt = attempts, retry_in_ms = backoff.as_millis() as u64, error = %err, "redis request failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(backoff_max);
        }
    }
}

enum Class {
    Retry,
    Config,
    Refused,
    Internal,
}

fn classify(e: &redis::RedisError) -> Class {
    match e.kind() {
        ErrorKind::Io => Class::Retry,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly,
        ) => Class::Retry,
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => Class::Config,
        ErrorKind::Server(_) | ErrorKind::Extension => Class::Refused,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::Client => Class::Internal,
        _ if e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() => {
            Class::Retry
        }
        _ => Class::Refused,
    }
}

/// Wall-clock now, ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (_, addr) = parse_url("redis://user:secret@localhost:6390/2").unwrap();
        assert_eq!(addr, "localhost:6390/2");
        assert!(!addr.contains("secret"));
        let e = parse_url("http://localhost").unwrap_err();
        assert!(e.contains("scheme"), "{e}");
        if !cfg!(feature = "tls") {
            let e = parse_url("rediss://localhost").unwrap_err();
            assert!(e.contains("`tls` feature"), "{e}");
        }
    }

    #[test]
    fn config_validation_reports_everything() {
        let c = ConnectionConfig {
            url: "nope".into(),
            backoff_initial_ms: 10,
            backoff_max_ms: 5,
            connect_timeout_ms: 0,
            ..ConnectionConfig::default()
        };
        let mut errs = Vec::new();
        c.validate("lookup.redis", &mut errs);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs.iter().all(|e| e.starts_with("lookup.redis.")));
    }
}
