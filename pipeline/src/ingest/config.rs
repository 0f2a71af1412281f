//! Configuration of HTTP ingest.

use super::decode::JsonDecoder;
use leasewatch_schemas::Limits;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// How the HTTP ingest server listens, whom it lets in and how much it takes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the HTTP server listens on (`POST /v1/pings`, `/healthz`, `/readyz`,
    /// `/metrics`).
    pub listen: SocketAddr,
    /// Bearer tokens accepted in `Authorization: Bearer <token>`; any of them lets a
    /// request in (several allow rotation). Empty: every ping request is refused (401).
    pub tokens: Vec<String>,
    /// Largest request body accepted as sent (compressed, if gzip), in bytes; 413 above.
    pub max_body_bytes: u64,
    /// Largest body accepted after gunzip, in bytes; 413 above. Inflating stops at this
    /// bound, so a zip bomb costs at most this much memory.
    pub max_decompressed_bytes: u64,
    /// Most pings in one request; 413 above.
    pub max_rows_per_request: usize,
    /// Most WAL batches the engine may be behind the head before ingest answers 429
    /// with `Retry-After`. 0: no bound.
    pub max_lag_batches: u64,
    /// Most pings the engine may be behind before ingest answers 429. 0: no bound.
    pub max_lag_rows: u64,
    /// Seconds sent in `Retry-After` with 429 and 503.
    pub retry_after_secs: u64,
    /// Seconds a client has to send a whole request body; a slower one gets 408 and its
    /// connection is closed (a client trickling bytes must not hold memory and a
    /// connection forever). 0: no limit.
    pub body_timeout_secs: u64,
    /// How far (ms) a ping's event time may lie ahead of the server clock (phone clock
    /// skew); later pings are rejected as `in_future`.
    pub max_future_ms: i64,
    /// Earliest plausible event time (ms since epoch); older pings are rejected as
    /// `too_old` (a phone that lost its clock).
    pub min_event_time_ms: i64,
    /// How NDJSON bodies are decoded: `ping-lines` (the default: the decoder
    /// specialised to ping lines, arrow-json for any line it declines) or `arrow-json`
    /// (arrow-json alone).
    pub ndjson_decoder: JsonDecoder,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
            tokens: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            max_decompressed_bytes: 64 * 1024 * 1024,
            max_rows_per_request: 100_000,
            max_lag_batches: 100_000,
            max_lag_rows: 10_000_000,
            retry_after_secs: 1,
            body_timeout_secs: 30,
            max_future_ms: limits.max_future_ms,
            min_event_time_ms: limits.min_event_time_ms,
            ndjson_decoder: JsonDecoder::default(),
        }
    }
}

// Tokens are secrets: never print them.
impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_decompressed_bytes", &self.max_decompressed_bytes)
            .field("max_rows_per_request", &self.max_rows_per_request)
            .field("max_lag_batches", &self.max_lag_batches)
            .field("max_lag_rows", &self.max_lag_rows)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("body_timeout_secs", &self.body_timeout_secs)
            .field("max_future_ms", &self.max_future_ms)
            .field("min_event_time_ms", &self.min_event_time_ms)
            .field("ndjson_decoder", &self.ndjson_decoder)
            .finish()
    }
}

impl IngestConfig {
    /// The validation limits for pings.
    pub fn limits(&self) -> Limits {
        Limits {
            max_future_ms: self.max_future_ms,
            min_event_time_ms: self.min_event_time_ms,
        }
    }

    /// Every problem of this configuration (empty when it is usable).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tokens.is_empty() {
            out.push("ingest.tokens is empty: no client could send pings".to_string());
        }
        if self.tokens.iter().any(|t| t.trim().len() < 16) {
            out.push("ingest.tokens: every token must have at least 16 characters".to_string());
        }
        if self.max_body_bytes == 0 {
            out.push("ingest.max_body_bytes must be > 0".to_string());
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            out.push(format!(
                "ingest.max_decompressed_bytes ({}) must be >= ingest.max_body_bytes ({})",
                self.max_decompressed_bytes, self.max_body_bytes
            ));
        }
        if self.max_rows_per_request == 0 {
            out.push("ingest.max_rows_per_request must be > 0".to_string());
        }
        if self.max_future_ms < 0 {
            out.push("ingest.max_future_ms must be >= 0".to_string());
        }
        out
    }
}
