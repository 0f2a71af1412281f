//! HTTP ingest against a real server on 127.0.0.1 and a real HTTP/1 client: every
//! status code `POST /v1/pings` answers with, and the probes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use leasewatch::ingest::{IngestConfig, IngestState, Lag, router, serve};
use leasewatch::wal::{Lsn, Wal, WalConfig};
use leasewatch_schemas::col;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "test-token-0123456789abcdef";
const OTHER_TOKEN: &str = "second-token-0123456789abcdef";

struct Server {
    addr: SocketAddr,
    wal: Wal,
    lag: Arc<AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn ingest_config() -> IngestConfig {
    IngestConfig {
        tokens: vec![TOKEN.into(), OTHER_TOKEN.into()],
        max_body_bytes: 256 * 1024,
        max_decompressed_bytes: 1024 * 1024,
        max_rows_per_request: 100,
        max_lag_batches: 1000,
        retry_after_secs: 7,
        ..IngestConfig::default()
    }
}

impl Server {
    async fn start() -> Self {
        Self::start_with(ingest_config(), |_| {}).await
    }

    async fn start_with(config: IngestConfig, wal_cfg: impl FnOnce(&mut WalConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut wc = WalConfig::in_dir(dir.path().join("wal"));
        wc.fsync = false;
        wal_cfg(&mut wc);
        let wal = Wal::open(&wc).unwrap();
        let registry = prometheus::Registry::new();
        let counter =
            prometheus::IntCounter::new("leasewatch_test_total", "a test counter").unwrap();
        counter.inc();
        registry.register(Box::new(counter)).unwrap();
        let lag = Arc::new(AtomicU64::new(0));
        let probe_lag = Arc::clone(&lag);
        let state =
            IngestState::new(config, wal.clone(), registry).with_lag_probe(Arc::new(move || Lag {
                batches: probe_lag.load(Ordering::SeqCst),
                rows: 0,
            }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router(state), async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            wal,
            lag,
            _stop: stop,
            _dir: dir,
        }
    }

    async fn post(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        request(self.addr, "POST", "/v1/pings", headers, body.into()).await
    }

    async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], Bytes::new()).await
    }

    /// Every row in the WAL, as (seq, receive_time) pairs.
    fn wal_rows(&self) -> Vec<(Option<u64>, Option<i64>)> {
        let mut out = Vec::new();
        for entry in self.wal.reader(0).unwrap() {
            let (_, b) = entry.unwrap();
            let seq = b
                .column(col::SEQ)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap();
            let rt = b
                .column(col::RECEIVE_TIME)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    (!seq.is_null(i)).then(|| seq.value(i)),
                    (!rt.is_null(i)).then(|| rt.value(i)),
                ));
            }
        }
        out
    }
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
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
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A valid ping object with sequence number `seq`.
fn ping(seq: u64) -> String {
    ping_at(seq, now_ms() - 1000)
}

fn ping_at(seq: u64, event_time: i64) -> String {
    format!(
        r#"{{"device_id":"490154203237518","event_time":{event_time},"seq":{seq},"lat":52.52,"lon":13.405,"mcc":262,"mnc":"01","event_kind":"heartbeat"}}"#
    )
}

fn ndjson(seqs: impl IntoIterator<Item = u64>) -> String {
    seqs.into_iter().map(|s| ping(s) + "\n").collect()
}

fn json_array(seqs: impl IntoIterator<Item = u64>) -> String {
    let items: Vec<String> = seqs.into_iter().map(ping).collect();
    format!("[{}]", items.join(","))
}

const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789abcdef");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
const JSON: (&str, &str) = ("content-type", "application/json");
const ARROW: (&str, &str) = ("content-type", "application/vnd.apache.arrow.stream");
const GZIP: (&str, &str) = ("content-encoding", "gzip");

fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn seqs(rows: &[(Option<u64>, Option<i64>)]) -> Vec<u64> {
    rows.iter().map(|r| r.0.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_a_json_array() {
    let s = Server::start().await;
    let before = now_ms();
    let r = s.post(&[AUTH, JSON], json_array(0..3)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["rejected"], serde_json::json!([]));
    assert_eq!(v["lsn"], 1);
    assert_eq!(s.wal.head(), 1);
    let rows = s.wal_rows();
    assert_eq!(seqs(&rows), vec![0, 1, 2]);
    // receive_time is the server's clock, on every row.
    assert!(
        rows.iter()
            .all(|r| r.1.unwrap() >= before && r.1.unwrap() <= now_ms())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_ndjson_with_either_token() {
    let s = Server::start().await;
    let r = s.post(&[AUTH, NDJSON], ndjson(10..15)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["accepted"], 5);
    let other = format!("Bearer {OTHER_TOKEN}");
    let r = s
        .post(&[("authorization", &other), NDJSON], ndjson(15..16))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(seqs(&s.wal_rows()), (10..16).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_an_arrow_ipc_stream() {
    let s = Server::start().await;
    // A client-side schema: only some columns, event_time as plain Int64 ms.
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("event_time", DataType::Int64, false),
        Field::new("seq", DataType::UInt64, true),
        Field::new("event_kind", DataType::Utf8, false),
    ]));
    let t = now_ms();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["490154203237518"; 4])) as ArrayRef,
            Arc::new(Int64Array::from(vec![t, t, t, t])),
            Arc::new(UInt64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec![
                "boot",
                "heartbeat",
                "nonsense",
                "location",
            ])),
        ],
    )
    .unwrap();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
    w.write(&batch).unwrap();
    w.write(&batch.slice(0, 1)).unwrap();
    w.finish().unwrap();
    let body = w.into_inner().unwrap();
    let r = s.post(&[AUTH, ARROW], body).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["accepted"], 4);
    assert_eq!(v["rejected"][0]["row"], 2);
    assert_eq!(v["rejected"][0]["problems"][0]["field"], "event_kind");
    assert_eq!(seqs(&s.wal_rows()), vec![1, 2, 4, 1]);

    // A stream that is not Arrow at all.
    let r = s.post(&[AUTH, ARROW], &b"definitely not arrow"[..]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("Arrow IPC"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_gzip() {
    let s = Server::start().await;
    let r = s
        .post(&[AUTH, NDJSON, GZIP], gzip(ndjson(0..50).as_bytes()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["accepted"], 50);
    let r = s
        .post(&[AUTH, JSON, GZIP], gzip(json_array(50..60).as_bytes()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(seqs(&s.wal_rows()), (0..60).collect::<Vec<_>>());
    // Not actually gzip.
    let r = s.post(&[AUTH, NDJSON, GZIP], ndjson(0..1)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_are_reported_and_valid_ones_kept() {
    let s = Server::start().await;
    let mut lines = vec![ping(0)];
    lines.push(ping(1).replace("490154203237518", "490154203237519")); // Luhn
    lines.push("{this is not json".to_string());
    lines.push(
        ping(3)
            .replace("52.52", "91.5")
            .replace("\"mcc\":262", "\"mcc\":12"),
    );
    lines.push(ping(4));
    lines.push(ping(5).replace("\"heartbeat\"", "\"heartbeat\",\"colour\":\"red\""));
    let r = s.post(&[AUTH, NDJSON], lines.join("\n")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let v = r.json();
    assert_eq!(v["accepted"], 2);
    let rejected = v["rejected"].as_array().unwrap();
    let rows: Vec<u64> = rejected
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![1, 2, 3, 5]);
    let p = &rejected[0]["problems"][0];
    assert_eq!(p["field"], "device_id");
    assert_eq!(p["kind"], "bad_check_digit");
    assert_eq!(p["value"], "490154203237519");
    assert!(p["message"].as_str().unwrap().contains("Luhn"));
    assert_eq!(rejected[1]["problems"][0]["kind"], "bad_json");
    let fields: Vec<&str> = rejected[2]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["lat", "mcc"]);
    assert_eq!(rejected[3]["problems"][0]["field"], "colour");
    // The valid rows of the same request are durable.
    assert_eq!(seqs(&s.wal_rows()), vec![0, 4]);

    // Same in a JSON array: row indices are array positions.
    let body = format!(
        "[{},{},{}]",
        ping(10),
        "42",
        ping(12).replace("\"lon\":13.405,", "")
    );
    let r = s.post(&[AUTH, JSON], body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let v = r.json();
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"][0]["row"], 1);
    assert_eq!(v["rejected"][1]["row"], 2);
    assert_eq!(v["rejected"][1]["problems"][0]["kind"], "incomplete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rows_invalid_is_400_with_reasons() {
    let s = Server::start().await;
    let future = ping_at(0, now_ms() + 3_600_000);
    let body = format!(
        "{}\n{}\n",
        ping(1).replace("\"heartbeat\"", "\"reboot\""),
        future
    );
    let r = s.post(&[AUTH, NDJSON], body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json();
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 2);
    assert_eq!(v["rejected"][0]["problems"][0]["field"], "event_kind");
    assert_eq!(v["rejected"][1]["problems"][0]["field"], "event_time");
    assert_eq!(s.wal.head(), 0);

    for bad in ["{\"not\":\"an array\"}", "[", "[1,2"] {
        let r = s.post(&[AUTH, JSON], bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("JSON array"),
            "{bad}"
        );
    }
    // An empty request is fine and writes nothing.
    let r = s.post(&[AUTH, JSON], "[]").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["accepted"], 0);
    assert_eq!(s.wal.head(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_401() {
    let s = Server::start().await;
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789abcdef"),
        Some("Bearer test-token-0123456789abcde"),
        Some("Basic dGVzdDp0ZXN0"),
        Some("Bearer"),
    ] {
        let mut headers = vec![NDJSON];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = s.post(&headers, ndjson(0..1)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    assert_eq!(s.wal.head(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_too_many_rows_and_zip_bombs_are_413() {
    let s = Server::start().await;
    // Larger than max_body_bytes as sent.
    let big = ndjson(0..1).repeat(300 * 1024 / 150);
    assert!(big.len() > 256 * 1024);
    let r = s.post(&[AUTH, NDJSON], big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // More rows than max_rows_per_request, in each format.
    let r = s.post(&[AUTH, NDJSON], ndjson(0..101)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = s.post(&[AUTH, JSON], json_array(0..101)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["error"].as_str().unwrap().contains("100 rows"));
    // Exactly at the limit is fine.
    let r = s.post(&[AUTH, NDJSON], ndjson(0..100)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A gzip bomb: small on the wire, 64 MiB inflated; refused after 1 MiB.
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 256 * 1024);
    let r = s.post(&[AUTH, NDJSON, GZIP], bomb).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("decompression")
    );
    assert_eq!(s.wal.head(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_type_or_encoding_is_415() {
    let s = Server::start().await;
    for headers in [
        vec![AUTH, ("content-type", "text/csv")],
        vec![AUTH],
        vec![AUTH, NDJSON, ("content-encoding", "br")],
    ] {
        let r = s.post(&headers, ndjson(0..1)).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
    }
    // Parameters and case do not matter.
    let r = s
        .post(
            &[
                AUTH,
                ("content-type", "Application/X-NDJSON; charset=utf-8"),
            ],
            ndjson(0..1),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_lag_is_429_with_retry_after() {
    let s = Server::start().await;
    assert_eq!(s.get("/readyz").await.status, StatusCode::OK);
    s.lag.store(1001, Ordering::SeqCst);
    let r = s.post(&[AUTH, NDJSON], ndjson(0..1)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("7"));
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["engine_caught_up"], false);
    assert_eq!(s.wal.head(), 0);
    s.lag.store(1000, Ordering::SeqCst);
    let r = s.post(&[AUTH, NDJSON], ndjson(0..1)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

/// The lag hook fed by the engine's consumed lsn over a watch channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_progress_channel_drives_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(&WalConfig {
        fsync: false,
        ..WalConfig::in_dir(dir.path())
    })
    .unwrap();
    let (consumed_tx, consumed_rx) = tokio::sync::watch::channel::<Lsn>(0);
    let config = IngestConfig {
        max_lag_batches: 2,
        ..ingest_config()
    };
    let state = IngestState::new(config, wal.clone(), prometheus::Registry::new())
        .with_engine_progress(consumed_rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router(state), std::future::pending()));
    let post = || {
        request(
            addr,
            "POST",
            "/v1/pings",
            &[AUTH, NDJSON],
            Bytes::from(ndjson(0..2)),
        )
    };
    for _ in 0..3 {
        assert_eq!(post().await.status, StatusCode::ACCEPTED);
    }
    let r = post().await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    consumed_tx.send(wal.head()).unwrap();
    assert_eq!(post().await.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_wal_is_503_with_retry_after_never_202() {
    let s = Server::start_with(ingest_config(), |w| {
        w.segment_bytes = 4 * 1024;
        w.max_retained_bytes = 16 * 1024;
    })
    .await;
    let mut acked = 0u64;
    let mut refused = None;
    for k in 0..100u64 {
        let r = s.post(&[AUTH, NDJSON], ndjson(k * 10..k * 10 + 10)).await;
        match r.status {
            StatusCode::ACCEPTED => acked += 10,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let r = refused.expect("a full WAL must refuse");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(r.json()["error"].as_str().unwrap().contains("full"));
    assert_eq!(s.wal_rows().len() as u64, acked);
    assert_eq!(
        s.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Once the engine has checkpointed, space frees up and ingest resumes.
    s.wal.truncate_before(s.wal.head()).unwrap();
    let r = s.post(&[AUTH, NDJSON], ndjson(0..1)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_wal_directory_is_503() {
    let s = Server::start_with(ingest_config(), |w| {
        // Every append starts a new segment file.
        w.segment_bytes = 1;
    })
    .await;
    assert_eq!(
        s.post(&[AUTH, NDJSON], ndjson(0..1)).await.status,
        StatusCode::ACCEPTED
    );
    // The directory disappears (an unmounted or broken volume): the next segment
    // cannot be created. (Permission bits would not stop root, who runs CI.)
    std::fs::remove_dir_all(&s.wal.config().dir).unwrap();
    let r = s.post(&[AUTH, NDJSON], ndjson(1..2)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("write-ahead log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let s = Server::start().await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["wal_writable"], true);
    let r = s.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&r.body).contains("leasewatch_test_total 1"));
    // Wrong method on the ingest path.
    let r = s.get("/v1/pings").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
