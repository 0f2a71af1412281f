//! An in-process HTTP ingest server on 127.0.0.1 with its WAL in a temp dir, and
//! clients that send what real clients (and hostile ones) send: whole bodies, chunked
//! streams without a length, and raw bytes over TCP.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use leasewatch::ingest::{IngestConfig, IngestState, router, serve};
use leasewatch::wal::{Wal, WalConfig};
use leasewatch_schemas::col;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token the test server accepts.
pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789abcdef");
pub const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
pub const JSON: (&str, &str) = ("content-type", "application/json");
pub const ARROW: (&str, &str) = ("content-type", "application/vnd.apache.arrow.stream");
pub const GZIP: (&str, &str) = ("content-encoding", "gzip");

/// A request that takes longer than this is a hang, and fails the test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running ingest server; stops when dropped.
pub struct IngestServer {
    pub addr: SocketAddr,
    pub wal: Wal,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// The test limits: small enough to hit quickly.
pub fn small_limits() -> IngestConfig {
    IngestConfig {
        tokens: vec![TOKEN.into()],
        max_body_bytes: 256 * 1024,
        max_decompressed_bytes: 1024 * 1024,
        max_rows_per_request: 100,
        ..IngestConfig::default()
    }
}

impl IngestServer {
    /// A server with `config`, its WAL (no fsync) in a fresh temp dir.
    pub async fn start(config: IngestConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wc = WalConfig::in_dir(dir.path().join("wal"));
        wc.fsync = false;
        let wal = Wal::open(&wc).expect("open WAL");
        let state = IngestState::new(config, wal.clone(), prometheus::Registry::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router(state), async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            wal,
            _stop: stop,
            _dir: dir,
        }
    }

    /// `POST /v1/pings` with a body of known length.
    pub async fn post(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let body = Full::new(body.into());
        with_timeout(send(self.addr, headers, body)).await
    }

    /// `POST /v1/pings` with a chunked body (no Content-Length) of `chunks`.
    pub async fn post_chunked(&self, headers: &[(&str, &str)], chunks: Vec<Bytes>) -> Reply {
        let stream = futures::stream::iter(chunks.into_iter().map(data_frame));
        with_timeout(send(self.addr, headers, StreamBody::new(stream))).await
    }

    /// `POST /v1/pings` with a chunked body that sends `chunks` and then neither ends
    /// nor sends more: the reply must come from what was sent (a body over the limit
    /// is refused without waiting for its end). Sending no more than the server reads
    /// also keeps its close from resetting the connection under the reply.
    pub async fn post_chunked_unending(
        &self,
        headers: &[(&str, &str)],
        chunks: Vec<Bytes>,
    ) -> Reply {
        use futures::StreamExt;
        let stream = futures::stream::iter(chunks.into_iter().map(data_frame))
            .chain(futures::stream::pending());
        with_timeout(send(self.addr, headers, StreamBody::new(stream))).await
    }

    /// `POST /v1/pings` that declares a `Content-Length` of `declared` but sends only
    /// `prefix` of the body: what a server that checks the length first refuses
    /// without reading on.
    pub async fn post_declared(
        &self,
        headers: &[(&str, &str)],
        declared: u64,
        prefix: &[u8],
    ) -> Reply {
        let mut raw = b"POST /v1/pings HTTP/1.1\r\nhost: test\r\n".to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(format!("content-length: {declared}\r\n\r\n").as_bytes());
        raw.extend_from_slice(prefix);
        self.raw(&raw).await
    }

    /// Writes `raw` (a whole HTTP/1.1 request head, maybe some body) to a fresh
    /// connection without finishing the body, and reads the reply.
    pub async fn raw(&self, raw: &[u8]) -> Reply {
        with_timeout(raw_request(self.addr, raw)).await
    }

    /// Every batch in the WAL, read back through the WAL reader.
    pub fn wal_batches(&self) -> Vec<arrow::array::RecordBatch> {
        self.wal
            .reader(0)
            .expect("WAL reader")
            .map(|e| e.expect("WAL entry").1)
            .collect()
    }

    /// The `seq` of every row in the WAL, in order (`u64::MAX` for a null).
    pub fn wal_seqs(&self) -> Vec<u64> {
        use arrow::array::{Array, UInt64Array};
        let mut out = Vec::new();
        for b in self.wal_batches() {
            let seq = b
                .column(col::SEQ)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("seq column");
            out.extend((0..b.num_rows()).map(|i| {
                if seq.is_null(i) {
                    u64::MAX
                } else {
                    seq.value(i)
                }
            }));
        }
        out
    }

    /// Posts one valid ping with `seq` and checks that it is acknowledged and in the
    /// WAL: the server survived whatever came before.
    pub async fn assert_still_serving(&self, seq: u64) {
        let r = self.post(&[AUTH, NDJSON], ping(seq)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        assert_eq!(r.json()["accepted"], 1);
        assert_eq!(self.wal_seqs().last(), Some(&seq));
    }
}

fn data_frame(chunk: Bytes) -> Result<Frame<Bytes>, std::convert::Infallible> {
    Ok(Frame::data(chunk))
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .expect("the server did not answer in time")
}

async fn send<B>(addr: SocketAddr, headers: &[(&str, &str)], body: B) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/pings")
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(body).expect("request"))
        .await
        .expect("the server answered");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("reply body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn raw_request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(reply) = parse_reply(&buf) {
            return reply;
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a full reply: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole HTTP/1.1 reply with a Content-Length body, once `buf` holds one.
fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).expect("reply head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = hyper::HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.append(
            hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            hyper::header::HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    let len: usize = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = buf.get(end..end + len)?;
    Some(Reply {
        status: StatusCode::from_u16(code).ok()?,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// What the server answered.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }

    /// The body as text, cut to 2000 characters, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(2000)
            .collect()
    }

    /// The `error` of the reply.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rejected rows' indices.
    pub fn rejected_rows(&self) -> Vec<u64> {
        self.json()["rejected"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["row"].as_u64()).collect())
            .unwrap_or_default()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Now, ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A valid ping object (one line, no newline) with sequence number `seq`.
pub fn ping(seq: u64) -> String {
    ping_at(seq, now_ms() - 1000)
}

/// A valid ping object at `event_time` (ms).
pub fn ping_at(seq: u64, event_time: i64) -> String {
    format!(
        r#"{{"device_id":"490154203237518","event_time":{event_time},"seq":{seq},"lat":52.52,"lon":13.405,"mcc":262,"mnc":"01","event_kind":"heartbeat"}}"#
    )
}

/// Gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}
