//! The axum server: `POST /v1/pings`, `/healthz`, `/readyz`, `/metrics`.

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use leasewatch_schemas::Limits;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::IngestConfig;
use super::decode::{
    DecodeError, Decoded, RowRejection, cut, decode_arrow_ipc, decode_json_array,
    decode_ndjson_with, gunzip_limited,
};
use super::validate::validate_batch;
use crate::wal::{Lsn, Wal, WalError};

/// How far the engine is behind the WAL head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// WAL batches appended but not yet consumed.
    pub batches: u64,
    /// Pings in those batches (may be a lower bound, see [`Wal::backlog`]).
    pub rows: u64,
}

/// Tells ingest how far the engine is behind; called on every ping request and by
/// `/readyz`, so it must be cheap.
pub type LagProbe = Arc<dyn Fn() -> Lag + Send + Sync>;

/// What the ingest server shares between requests. Cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    config: IngestConfig,
    limits: Limits,
    tokens: Vec<Vec<u8>>,
    wal: Wal,
    registry: prometheus::Registry,
    lag: LagProbe,
    metrics: Option<crate::metrics::Metrics>,
}

impl std::fmt::Debug for IngestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestState")
            .field("config", &self.inner.config)
            .field("wal", &self.inner.wal)
            .finish_non_exhaustive()
    }
}

impl IngestState {
    /// State for a server that appends to `wal` and serves `registry` on `/metrics`.
    /// Until a lag probe is set, the engine is taken to be caught up.
    pub fn new(config: IngestConfig, wal: Wal, registry: prometheus::Registry) -> Self {
        let tokens = config
            .tokens
            .iter()
            .map(|t| t.trim().as_bytes().to_vec())
            .filter(|t| !t.is_empty())
            .collect();
        Self {
            inner: Arc::new(Inner {
                limits: config.limits(),
                config,
                tokens,
                wal,
                registry,
                lag: Arc::new(Lag::default),
                metrics: None,
            }),
        }
    }

    /// Uses `probe` to learn the engine's lag.
    pub fn with_lag_probe(mut self, probe: LagProbe) -> Self {
        Arc::make_mut(&mut self.inner).lag = probe;
        self
    }

    /// Counts requests, rows, bytes and rejects in `metrics` (registered with the
    /// registry this server serves, see [`crate::metrics`]).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        Arc::make_mut(&mut self.inner).metrics = Some(metrics);
        self
    }

    /// Computes the lag from the engine's consumed lsn (the engine sends the lsn of
    /// the last batch it has fully processed) against the WAL head.
    pub fn with_engine_progress(self, consumed: watch::Receiver<Lsn>) -> Self {
        let wal = self.inner.wal.clone();
        self.with_lag_probe(Arc::new(move || {
            let (batches, rows) = wal.backlog(*consumed.borrow());
            Lag { batches, rows }
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &IngestConfig {
        &self.inner.config
    }

    /// The WAL the server appends to.
    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }

    fn lag_exceeded(&self) -> Option<Lag> {
        let lag = (self.inner.lag)();
        let c = &self.inner.config;
        let over = (c.max_lag_batches > 0 && lag.batches > c.max_lag_batches)
            || (c.max_lag_rows > 0 && lag.rows > c.max_lag_rows);
        over.then_some(lag)
    }

    /// Constant-time in the token's content: every configured token is compared in
    /// full, whatever matched before.
    fn authorized(&self, headers: &HeaderMap) -> Result<(), IngestError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(IngestError::Unauthorized("missing Authorization header"));
        };
        let value = value.as_bytes();
        let token = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => trim(&value[7..]),
            _ => return Err(IngestError::Unauthorized("expected a Bearer token")),
        };
        let mut ok = false;
        for t in &self.inner.tokens {
            ok |= constant_time_eq(t, token);
        }
        if ok {
            Ok(())
        } else {
            Err(IngestError::Unauthorized("invalid token"))
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Compares without an early exit on the first differing byte (the length is not
/// secret: tokens are long random strings).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Why a ping request failed, by who must act.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No or a wrong bearer token (client). 401.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The Content-Type or Content-Encoding is not one we read (client). 415.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the limit as sent (client). 413.
    #[error("body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body could not be read as a whole (client). 400, or 413 for limits.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The connection failed while the body was read (client or network). 400.
    #[error("reading the body failed: {0}")]
    BodyRead(String),
    /// The body did not arrive within `ingest.body_timeout_secs` (client). 408.
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout {
        /// The limit, seconds.
        secs: u64,
    },
    /// The engine is behind by more than the configured bound (retry). 429.
    #[error("engine is behind by {} batches / {} rows; retry later", .0.batches, .0.rows)]
    Lagging(Lag),
    /// The WAL cannot take the rows (disk, full, failed fsync: retry; an operator may
    /// have to act). 503.
    #[error("write-ahead log unavailable: {0}")]
    WalUnavailable(WalError),
    /// A bug. 500.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Reply<'a> {
    accepted: usize,
    rejected: &'a [RowRejection],
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<Lsn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// Longest `error` sent back, in characters: decoders quote what they could not read
/// (a column name, a value), and a hostile body must not be echoed back whole.
const MAX_ERROR_CHARS: usize = 500;

impl IngestError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge { .. }
            | Self::Decode(DecodeError::TooLarge { .. } | DecodeError::TooManyRows { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Decode(DecodeError::Malformed(_)) | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Lagging(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::WalUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response_with(self, retry_after_secs: u64) -> Response {
        let status = self.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(status = status.as_u16(), error = %self, "ping request refused");
        }
        let reply = Reply {
            accepted: 0,
            rejected: &[],
            lsn: None,
            error: Some(cut(&self.to_string(), MAX_ERROR_CHARS)),
        };
        let mut response = json(status, &reply);
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(why) => {
                let v = if *why == "invalid token" {
                    "Bearer realm=\"leasewatch\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"leasewatch\""
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
            Self::Lagging(_) | Self::WalUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The rest of the body may still come: the connection cannot be reused.
            Self::BodyTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// The body formats `POST /v1/pings` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonArray,
    Ndjson,
    ArrowIpc,
}

fn format_of(headers: &HeaderMap) -> Result<Format, IngestError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::JsonArray),
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => {
            Ok(Format::Ndjson)
        }
        "application/vnd.apache.arrow.stream" => Ok(Format::ArrowIpc),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "Content-Type {raw:?}; send application/json (an array), application/x-ndjson or \
             application/vnd.apache.arrow.stream"
        ))),
    }
}

fn gzipped(headers: &HeaderMap) -> Result<bool, IngestError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "Content-Encoding {v:?}; only gzip is supported"
        ))),
    }
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(mut body: Body, limit: u64) -> Result<Vec<u8>, IngestError> {
    let hint = body.size_hint().lower().min(limit) as usize;
    let mut out = Vec::with_capacity(hint);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| IngestError::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(IngestError::BodyTooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Decodes and validates a whole body: CPU work, run off the async workers when big.
fn decode_and_validate(
    body: Vec<u8>,
    gzip: bool,
    format: Format,
    config: &IngestConfig,
    limits: &Limits,
    receive_time: i64,
) -> Result<(arrow::array::RecordBatch, Vec<RowRejection>, usize), IngestError> {
    let body = if gzip {
        gunzip_limited(&body, config.max_decompressed_bytes)?
    } else if body.len() as u64 > config.max_decompressed_bytes {
        return Err(DecodeError::TooLarge {
            limit: config.max_decompressed_bytes,
        }
        .into());
    } else {
        body
    };
    let max_rows = config.max_rows_per_request;
    let decoded: Decoded = match format {
        Format::JsonArray => decode_json_array(&body, max_rows)?,
        Format::Ndjson => decode_ndjson_with(&body, max_rows, config.ndjson_decoder)?,
        Format::ArrowIpc => decode_arrow_ipc(&body, max_rows)?,
    };
    drop(body);
    let (valid, invalid) = validate_batch(&decoded.batch, receive_time, limits)
        .map_err(|e| IngestError::Internal(e.to_string()))?;
    let mut rejected = decoded.rejected;
    rejected.extend(invalid.into_iter().map(|mut r| {
        r.row = decoded.request_rows.get(r.row).copied().unwrap_or(r.row);
        r
    }));
    rejected.sort_by_key(|r| r.row);
    Ok((valid, rejected, decoded.total_rows))
}

/// Bodies above this size are decoded on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

async fn post_pings(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let start = std::time::Instant::now();
    let retry = state.inner.config.retry_after_secs;
    let response = match ingest(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response_with(retry),
    };
    if let Some(m) = &state.inner.metrics {
        m.ingest_request(response.status().as_u16(), start.elapsed());
    }
    response
}

async fn ingest(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    state.authorized(headers)?;
    let format = format_of(headers)?;
    let gzip = gzipped(headers)?;
    if let Some(lag) = state.lag_exceeded() {
        return Err(IngestError::Lagging(lag));
    }
    let wal = &state.inner.wal;
    if !wal.is_writable() {
        return Err(IngestError::WalUnavailable(WalError::Poisoned(
            "an earlier fsync failed".to_string(),
        )));
    }
    if !wal.has_room() {
        return Err(IngestError::WalUnavailable(WalError::Full {
            retained: wal.retained_bytes(),
            limit: wal.config().max_retained_bytes,
        }));
    }
    let limit = state.inner.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    let secs = state.inner.config.body_timeout_secs;
    let bytes = if secs == 0 {
        read_limited(body, limit).await?
    } else {
        tokio::time::timeout(Duration::from_secs(secs), read_limited(body, limit))
            .await
            .map_err(|_| IngestError::BodyTimeout { secs })??
    };
    if let Some(m) = &state.inner.metrics {
        m.ingest_bytes(bytes.len());
    }
    let receive_time = now_ms();
    let (valid, rejected, total) = if bytes.len() > INLINE_DECODE_BYTES {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            decode_and_validate(
                bytes,
                gzip,
                format,
                &st.inner.config,
                &st.inner.limits,
                receive_time,
            )
        })
        .await
        .map_err(|e| IngestError::Internal(format!("decoder task failed: {e}")))??
    } else {
        decode_and_validate(
            bytes,
            gzip,
            format,
            &state.inner.config,
            &state.inner.limits,
            receive_time,
        )?
    };
    let accepted = valid.num_rows();
    let lsn = if accepted > 0 {
        let lsn = wal.append(valid).await.map_err(|e| {
            if e.is_retryable() {
                IngestError::WalUnavailable(e)
            } else {
                IngestError::Internal(e.to_string())
            }
        })?;
        Some(lsn)
    } else {
        None
    };
    if let Some(m) = &state.inner.metrics {
        m.ingest_rows(accepted, &rejected);
    }
    // 202 when at least one row is now durable (or the request held no rows at all);
    // 400 when every row was rejected. Either way `rejected` says why, row by row.
    let status = if accepted == 0 && total > 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    let error = (status == StatusCode::BAD_REQUEST).then(|| "every row was rejected".to_string());
    Ok(json(
        status,
        &Reply {
            accepted,
            rejected: &rejected,
            lsn,
            error,
        },
    ))
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    wal_writable: bool,
    wal_has_room: bool,
    wal_head: Lsn,
    lag_batches: u64,
    lag_rows: u64,
    engine_caught_up: bool,
}

async fn readyz(State(state): State<IngestState>) -> Response {
    let wal = &state.inner.wal;
    let lag = (state.inner.lag)();
    let engine_caught_up = state.lag_exceeded().is_none();
    let r = Readiness {
        wal_writable: wal.is_writable(),
        wal_has_room: wal.has_room(),
        wal_head: wal.head(),
        lag_batches: lag.batches,
        lag_rows: lag.rows,
        engine_caught_up,
        ready: false,
    };
    let ready = r.wal_writable && r.wal_has_room && r.engine_caught_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &Readiness { ready, ..r })
}

async fn metrics(State(state): State<IngestState>) -> Response {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&state.inner.registry.gather(), &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The ingest routes: `POST /v1/pings`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/pings", post(post_pings))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the
/// requests in flight (each of which is acknowledged only once durable).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(format_of(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(format_of(&h).unwrap(), Format::JsonArray);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        assert!(format_of(&h).is_err());
    }
}
