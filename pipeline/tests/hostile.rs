//! Hostile input against the real HTTP ingest (issue #7): every request here gets a
//! clear 4xx with a JSON body naming the problem (and, for per-row problems, the
//! row), the valid rows of the same request are durable in the WAL (read back through
//! the WAL reader), and the server answers the next request.
//!
//! Also checks that the seed corpora of the fuzz targets in `fuzz/` stay valid
//! inputs; a crash a fuzz target finds gets its regression test here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Only the ingest helpers (`support/mod.rs` also brings the Redis, run and product
// helpers, which this file does not need).
#[path = "support/ingest.rs"]
mod ingest_support;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use hyper::StatusCode;
use ingest_support::{
    ARROW, AUTH, GZIP, IngestServer, JSON, NDJSON, Reply, gzip, now_ms, ping, ping_at, small_limits,
};
use leasewatch::ingest::IngestConfig;
use serde_json::Value;
use std::sync::Arc;

async fn server() -> IngestServer {
    IngestServer::start(small_limits()).await
}

/// A reply's `rejected` entry for `row`.
fn rejection(r: &Reply, row: u64) -> Value {
    r.json()["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["row"] == row)
        .cloned()
        .unwrap_or_else(|| panic!("row {row} not rejected: {}", r.text()))
}

/// The fields named by the problems of rejected row `row`.
fn problem_fields(r: &Reply, row: u64) -> Vec<String> {
    rejection(r, row)["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts a 4xx with a JSON `error` that contains `needle`.
fn assert_refused(r: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let error = r.error();
    assert!(
        error.to_lowercase().contains(&needle.to_lowercase()),
        "error {error:?} should mention {needle:?}"
    );
    assert_eq!(r.json()["accepted"], 0);
}

/// Interleaves valid pings (seq 1000 + i) with `bad` rows: valid, bad, valid, bad, ...,
/// valid. Returns the NDJSON lines and the valid seqs.
fn mixed(bad: &[String]) -> (Vec<String>, Vec<u64>) {
    let mut lines = Vec::new();
    let mut good = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        good.push(1000 + i as u64);
        lines.push(ping(1000 + i as u64));
        lines.push(b.clone());
    }
    good.push(1000 + bad.len() as u64);
    lines.push(ping(1000 + bad.len() as u64));
    (lines, good)
}

/// Sends `bad` rows mixed with valid ones as NDJSON and as a JSON array; checks that
/// exactly the bad rows are rejected (by request index, each with at least one
/// problem), the valid rows are in the WAL, and the server still serves. Returns the
/// NDJSON reply.
async fn mixed_request(s: &IngestServer, bad: &[String]) -> Reply {
    let (lines, good) = mixed(bad);
    let bad_rows: Vec<u64> = (0..bad.len() as u64).map(|i| 2 * i + 1).collect();
    let before = s.wal_seqs().len();
    let ndjson = s.post(&[AUTH, NDJSON], lines.join("\n")).await;
    assert_eq!(ndjson.status, StatusCode::ACCEPTED, "{}", ndjson.text());
    assert_eq!(ndjson.rejected_rows(), bad_rows, "{}", ndjson.text());
    assert_eq!(ndjson.json()["accepted"], good.len());
    let array = s
        .post(&[AUTH, JSON], format!("[{}]", lines.join(",")))
        .await;
    assert_eq!(array.status, StatusCode::ACCEPTED, "{}", array.text());
    assert_eq!(array.rejected_rows(), bad_rows, "{}", array.text());
    for r in [&ndjson, &array] {
        for row in &bad_rows {
            let problems = rejection(r, *row)["problems"].as_array().unwrap().clone();
            assert!(!problems.is_empty());
            for p in problems {
                for key in ["field", "kind", "value", "message"] {
                    assert!(p[key].is_string(), "{p}");
                }
            }
        }
    }
    let seqs = s.wal_seqs();
    let want: Vec<u64> = good.iter().chain(&good).copied().collect();
    assert_eq!(&seqs[before..], &want[..]);
    s.assert_still_serving(1).await;
    ndjson
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_401_before_the_body_is_read() {
    let s = server().await;
    let long = format!("Bearer {}", "x".repeat(64 * 1024));
    for auth in [
        None,
        Some(""),
        Some("Bearer "),
        Some("Bearer wrong-token-0123456789abcdef"),
        Some("Bearer test-token-0123456789abcdeF"),
        Some("Bearer test-token-0123456789abcdef0"),
        Some("Token test-token-0123456789abcdef"),
        Some(long.as_str()),
    ] {
        let mut headers = vec![NDJSON];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = s.post(&headers, ping(0)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert!(r.error().contains("unauthorized"), "{}", r.text());
    }
    // A wrong token with a huge declared body is refused without reading it.
    let wrong = ("authorization", "Bearer nope-nope-nope-nope");
    let r = s.post_declared(&[wrong, NDJSON], 1 << 40, b"{").await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "invalid token");
    assert!(s.wal_seqs().is_empty());
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_413_declared_or_streamed() {
    let s = server().await;
    // Declared: refused on the Content-Length alone, without waiting for the body.
    let r = s.post_declared(&[AUTH, NDJSON], 256 * 1024 + 1, b"{").await;
    assert_refused(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than 262144 bytes",
    );
    // Streamed in chunks without a length, and never ending: refused as soon as the
    // limit is passed; the valid rows in the part already read are not written.
    let line = Bytes::from(ping(5) + "\n");
    let mut chunks: Vec<Bytes> = (0..(256 * 1024 / line.len()))
        .map(|_| line.clone())
        .collect();
    chunks.push(line.clone());
    let r = s.post_chunked_unending(&[AUTH, NDJSON], chunks).await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than 262144");
    // The same with large chunks, gzip on the wire.
    let big = Bytes::from(vec![b' '; 128 * 1024]);
    let r = s
        .post_chunked_unending(&[AUTH, NDJSON, GZIP], vec![big.clone(), big, "x".into()])
        .await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than 262144");
    // Chunked and within the limit is fine.
    let r = s
        .post_chunked(&[AUTH, NDJSON], vec![line.clone(), line.clone()])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(s.wal_seqs(), vec![5, 5]);
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_finish_are_408_within_the_body_timeout() {
    let s = IngestServer::start(IngestConfig {
        body_timeout_secs: 1,
        ..small_limits()
    })
    .await;
    let started = std::time::Instant::now();
    // A declared length the client never sends in full.
    let r = s.post_declared(&[AUTH, NDJSON], 1_000, b"{\"seq\":").await;
    assert_refused(&r, StatusCode::REQUEST_TIMEOUT, "did not arrive within 1 s");
    assert_eq!(r.header("connection"), Some("close"));
    // A chunked body that stops part-way through a row.
    let line = ping(7);
    let half = Bytes::from(line[..line.len() / 2].to_string());
    let r = s.post_chunked_unending(&[AUTH, NDJSON], vec![half]).await;
    assert_refused(&r, StatusCode::REQUEST_TIMEOUT, "did not arrive within 1 s");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(
        s.wal_seqs().is_empty(),
        "nothing of a timed-out body is written"
    );
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_rejected_not_a_crash() {
    let s = IngestServer::start(IngestConfig {
        max_body_bytes: 4 * 1024 * 1024,
        max_decompressed_bytes: 4 * 1024 * 1024,
        ..small_limits()
    })
    .await;
    const DEPTH: usize = 100_000;
    let open = "[".repeat(DEPTH);
    let close = "]".repeat(DEPTH);
    let objects = "{\"a\":".repeat(DEPTH) + "1" + &"}".repeat(DEPTH);
    // As a row of its own, as a field value, and as an unknown field's value.
    let bad = vec![
        format!("{open}{close}"),
        objects.clone(),
        format!(r#"{{"device_id":{open}{close},"event_time":1,"event_kind":"boot"}}"#),
        format!(r#"{{"device_id":"490154203237518","x":{objects}}}"#),
    ];
    let r = mixed_request(&s, &bad).await;
    for row in [1, 3, 5, 7] {
        let p = &rejection(&r, row)["problems"][0];
        assert_eq!(p["kind"], "bad_json", "{p}");
        assert!(
            p["message"]
                .as_str()
                .unwrap()
                .contains("nested deeper than 32"),
            "{p}"
        );
    }
    // Unbalanced: 100k '[' and nothing else.
    for body in [
        open.clone(),
        format!("[{open}"),
        format!("[{}]", "{".repeat(DEPTH)),
    ] {
        let r = s.post(&[AUTH, JSON], body).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "not a JSON array");
    }
    let r = s.post(&[AUTH, NDJSON], open).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.rejected_rows(), vec![0]);
    s.assert_still_serving(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_strings_are_rejected_with_a_short_reply() {
    let s = IngestServer::start(IngestConfig {
        max_body_bytes: 16 * 1024 * 1024,
        max_decompressed_bytes: 16 * 1024 * 1024,
        ..small_limits()
    })
    .await;
    let huge = "4".repeat(10 * 1024 * 1024);
    let big = "\u{e9}".repeat(256 * 1024);
    let bad = vec![
        // A 10 MB device_id.
        ping(0).replace("490154203237518", &huge),
        // 512 KB strings (multi-byte characters) where short names belong.
        ping(0).replace("\"01\"", &format!("\"{big}\"")),
        ping(0).replace("\"heartbeat\"", &format!("\"{big}\"")),
        // An unknown field with a long name, and a long number.
        ping(0).replace("\"seq\"", &format!("\"{big}\"")),
        ping(0).replace("52.52", &"4".repeat(512 * 1024)),
    ];
    let (lines, good) = mixed(&bad);
    let r = s.post(&[AUTH, NDJSON], lines.join("\n")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.rejected_rows(), vec![1, 3, 5, 7, 9]);
    // The reply names each problem but does not echo the 10 MB back.
    assert!(r.body.len() < 16 * 1024, "reply of {} bytes", r.body.len());
    assert_eq!(problem_fields(&r, 1), vec!["device_id"]);
    assert_eq!(problem_fields(&r, 3), vec!["mnc"]);
    assert_eq!(problem_fields(&r, 5), vec!["event_kind"]);
    assert_eq!(rejection(&r, 7)["problems"][0]["kind"], "unknown_field");
    assert_eq!(problem_fields(&r, 9), vec!["lat"]);
    assert_eq!(s.wal_seqs(), good);

    // A long column name in an Arrow IPC stream is not echoed back whole either.
    let name = "c".repeat(1024 * 1024);
    let body = ipc_body(vec![(name.as_str(), strings(&["x"]))], 1);
    let r = s.post(&[AUTH, ARROW], body).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "is not a ping field");
    assert!(r.body.len() < 1024, "reply of {} bytes", r.body.len());

    // Over the limit as sent with the default limits (8 MiB): 413 before decoding.
    let d = IngestServer::start(IngestConfig {
        tokens: vec![ingest_support::TOKEN.into()],
        ..Default::default()
    })
    .await;
    let r = d
        .post_declared(
            &[AUTH, NDJSON],
            bad[0].len() as u64,
            &bad[0].as_bytes()[..1024],
        )
        .await;
    assert_refused(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than 8388608 bytes",
    );
    d.assert_still_serving(1).await;
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_infinity_and_overflowing_coordinates_are_rejected() {
    let s = server().await;
    let with_lat = |v: &str| ping(0).replace("52.52", v);
    let with_lon = |v: &str| ping(0).replace("13.405", v);
    let bad = vec![
        with_lat("NaN"),
        with_lon("Infinity"),
        with_lat("-Infinity"),
        with_lat("\"NaN\""),
        with_lon("\"Infinity\""),
        with_lat("\"-inf\""),
        with_lat("1e400"),
        with_lon("-1e400"),
        ping(0).replace("\"mcc\"", "\"accuracy_m\":\"NaN\",\"mcc\""),
        ping(0).replace("\"mcc\"", "\"accuracy_m\":1e60,\"mcc\""),
    ];
    let r = mixed_request(&s, &bad).await;
    // Strings and overflowing numbers name the field; bare NaN/Infinity are not JSON.
    assert_eq!(rejection(&r, 1)["problems"][0]["kind"], "bad_json");
    assert_eq!(rejection(&r, 3)["problems"][0]["kind"], "bad_json");
    for (row, field) in [
        (7, "lat"),
        (9, "lon"),
        (11, "lat"),
        (13, "lat"),
        (15, "lon"),
    ] {
        assert_eq!(problem_fields(&r, row), vec![field], "{}", r.text());
    }
    assert_eq!(problem_fields(&r, 17), vec!["accuracy_m"]);
    assert_eq!(problem_fields(&r, 19), vec!["accuracy_m"]);

    // The same values in an Arrow IPC stream.
    let lat = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 52.5, f64::MAX];
    let body = ipc_body(
        vec![
            ("device_id", strings(&["490154203237518"; 5])),
            (
                "event_time",
                Arc::new(Int64Array::from(vec![now_ms() - 1000; 5])),
            ),
            (
                "seq",
                Arc::new(arrow::array::UInt64Array::from(vec![0, 1, 2, 3, 4])),
            ),
            ("lat", Arc::new(Float64Array::from(lat.to_vec()))),
            ("lon", Arc::new(Float64Array::from(vec![13.4; 5]))),
            ("event_kind", strings(&["heartbeat"; 5])),
        ],
        1,
    );
    let before = s.wal_seqs().len();
    let r = s.post(&[AUTH, ARROW], body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.rejected_rows(), vec![0, 1, 2, 4]);
    assert_eq!(rejection(&r, 0)["problems"][0]["kind"], "not_finite");
    assert_eq!(s.wal_seqs()[before..], [3]);
    s.assert_still_serving(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_in_1970_and_9999_are_rejected() {
    let s = server().await;
    let at = |t: &str| ping_at(0, 1).replace("\"event_time\":1,", &format!("\"event_time\":{t},"));
    let bad = vec![
        at("0"),
        at("-1"),
        at("\"1970-01-01T00:00:00Z\""),
        at("253402300799999"), // 9999-12-31T23:59:59.999Z
        at("\"9999-12-31T23:59:59Z\""),
        at(&i64::MAX.to_string()),
        at(&i64::MIN.to_string()),
        at("18446744073709551615"),
        at("1e30"),
        at("\"yesterday\""),
        at("null"),
    ];
    let r = mixed_request(&s, &bad).await;
    for (i, kind) in [
        "too_old",
        "too_old",
        "too_old",
        "in_future",
        "in_future",
        "in_future",
        "too_old",
    ]
    .iter()
    .enumerate()
    {
        let row = 2 * i as u64 + 1;
        assert_eq!(problem_fields(&r, row), vec!["event_time"], "{}", r.text());
        assert_eq!(
            rejection(&r, row)["problems"][0]["kind"],
            *kind,
            "row {row}"
        );
    }
    for row in [15, 17, 19, 21] {
        assert_eq!(problem_fields(&r, row), vec!["event_time"], "{}", r.text());
    }
    s.assert_still_serving(2).await;
}

/// Pings carry `seq` so that consumers can de-duplicate retried uploads, but ingest
/// is at-least-once by design: a client that lost a 202 must be able to send the same
/// rows again, and the WAL keeps what was acknowledged. The rules are duplicate-proof
/// (distinct counts, speeds with a floored time step, deterministic alert ids that
/// the queue sink skips). So a duplicate is accepted, within a request and across
/// requests, and stored as sent; it is never a reason to reject the other rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_pings_are_accepted_at_least_once() {
    let s = server().await;
    let t = now_ms() - 5000;
    let a = ping_at(7, t);
    let b = ping_at(8, t);
    let r = s
        .post(&[AUTH, NDJSON], format!("{a}\n{a}\n{b}\n{a}\n"))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["accepted"], 4);
    assert_eq!(r.rejected_rows(), Vec::<u64>::new());
    // The retry of the whole request, as a JSON array.
    let r = s.post(&[AUTH, JSON], format!("[{a},{a},{b},{a}]")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["accepted"], 4);
    assert_eq!(s.wal_seqs(), vec![7, 7, 8, 7, 7, 7, 8, 7]);
    assert_eq!(s.wal.head(), 2);
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_wrong_types_name_the_field() {
    let s = server().await;
    let p = ping(0);
    let bad = vec![
        p.replace("\"seq\"", "\"colour\":\"red\",\"seq\""),
        p.replace("\"490154203237518\"", "490154203237518"),
        p.replace("52.52", "\"north\""),
        p.replace("\"seq\":0", "\"seq\":-1"),
        p.replace("\"seq\":0", "\"seq\":\"one\""),
        p.replace("262", "70000"),
        p.replace("\"mcc\"", "\"battery_pct\":300,\"mcc\""),
        p.replace("\"mcc\"", "\"charging\":\"yes\",\"mcc\""),
        p.replace("\"heartbeat\"", "{\"kind\":\"heartbeat\"}"),
        p.replace("\"heartbeat\"", "[\"heartbeat\"]"),
        p.replace("\"heartbeat\"", "null"),
        "42".to_string(),
        "\"a string\"".to_string(),
        "null".to_string(),
        "true".to_string(),
        "[]".to_string(),
        "{}".to_string(),
    ];
    let r = mixed_request(&s, &bad).await;
    let expect = [
        "colour",
        "device_id",
        "lat",
        "seq",
        "seq",
        "mcc",
        "battery_pct",
        "charging",
        "event_kind",
        "event_kind",
        "event_kind",
    ];
    for (i, field) in expect.iter().enumerate() {
        let row = 2 * i as u64 + 1;
        assert_eq!(
            problem_fields(&r, row)[0],
            *field,
            "row {row}: {}",
            r.text()
        );
    }
    assert_eq!(rejection(&r, 1)["problems"][0]["kind"], "unknown_field");

    // Known leniency of arrow-json, pinned so that a change is deliberate: a number
    // with a fraction in an integer field is truncated (JSON has one number type).
    let r = s
        .post(&[AUTH, NDJSON], p.replace("\"seq\":0", "\"seq\":3.9"))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(s.wal_seqs().last(), Some(&3));
    s.assert_still_serving(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_a_row_problem() {
    let s = server().await;
    let p = ping(0);
    let mut body: Vec<u8> = Vec::new();
    let bad: Vec<Vec<u8>> = vec![
        p.replace("490154203237518", "49015420323751\u{1}")
            .into_bytes()
            .iter()
            .map(|b| if *b == 1 { 0xff } else { *b })
            .collect(),
        // Overlong '/' and a lone continuation byte, in a value and in a key.
        p.replace("\"01\"", "\"0\u{1}\u{2}\"")
            .bytes()
            .map(|b| match b {
                1 => 0xc0,
                2 => 0xaf,
                b => b,
            })
            .collect(),
        p.replace("\"mnc\"", "\"m\u{1}c\"")
            .bytes()
            .map(|b| if b == 1 { 0x80 } else { b })
            .collect(),
        // A lone surrogate escape.
        p.replace("\"01\"", "\"\\ud800\"").into_bytes(),
    ];
    for (i, b) in bad.iter().enumerate() {
        body.extend_from_slice(ping(100 + i as u64).as_bytes());
        body.push(b'\n');
        body.extend_from_slice(b);
        body.push(b'\n');
    }
    body.extend_from_slice(ping(200).as_bytes());
    let r = s.post(&[AUTH, NDJSON], body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.rejected_rows(), vec![1, 3, 5, 7], "{}", r.text());
    assert_eq!(s.wal_seqs(), vec![100, 101, 102, 103, 200]);

    // Invalid UTF-8 in an Arrow IPC string column: the stream is malformed.
    let mut body = ipc_body(
        vec![
            (
                "device_id",
                strings(&["490154203237518", "49015420323751\u{7f}"]),
            ),
            ("event_time", Arc::new(Int64Array::from(vec![now_ms(); 2]))),
            ("event_kind", strings(&["boot", "boot"])),
        ],
        1,
    );
    let at = body.iter().position(|b| *b == 0x7f).unwrap();
    body[at] = 0xff;
    let r = s.post(&[AUTH, ARROW], body).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "utf-8");
    s.assert_still_serving(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_bombs_and_broken_gzip_are_refused() {
    let s = server().await;
    // 64 MiB of spaces in about 64 KiB: refused once 1 MiB is inflated.
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 256 * 1024);
    let r = s.post(&[AUTH, NDJSON, GZIP], bomb.clone()).await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "after decompression");
    // Many small members that add up past the limit.
    let member = gzip(&vec![b'\n'; 512 * 1024]);
    let r = s.post(&[AUTH, NDJSON, GZIP], member.repeat(3)).await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "after decompression");
    // A bomb inside a valid prefix: the valid rows before it are not written either
    // (the request is one unit: refused as a whole).
    let mut rows = (0..3)
        .map(|i| ping(i) + "\n")
        .collect::<String>()
        .into_bytes();
    rows.extend(vec![b' '; 2 * 1024 * 1024]);
    let r = s.post(&[AUTH, NDJSON, GZIP], gzip(&rows)).await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "after decompression");
    assert!(s.wal_seqs().is_empty());

    let good = gzip((ping(1) + "\n" + &ping(2)).as_bytes());
    // Truncated anywhere: in the header, in the deflate data, in the trailer.
    for cut in [1, 5, 12, good.len() / 2, good.len() - 5, good.len() - 1] {
        let r = s.post(&[AUTH, NDJSON, GZIP], good[..cut].to_vec()).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "gzip");
    }
    // A wrong CRC, and garbage after a valid member.
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let r = s.post(&[AUTH, NDJSON, GZIP], bad_crc).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "gzip");
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    let r = s.post(&[AUTH, NDJSON, GZIP], trailing).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "gzip");
    // Not gzip at all.
    let r = s.post(&[AUTH, JSON, GZIP], "[]").await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "gzip");
    assert!(s.wal_seqs().is_empty());
    let r = s.post(&[AUTH, NDJSON, GZIP], good).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(s.wal_seqs(), vec![1, 2]);
    s.assert_still_serving(3).await;
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// An Arrow IPC stream of `columns` (all nullable), written as `batches` copies.
fn ipc_body(columns: Vec<(&str, ArrayRef)>, batches: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|c| c.1).collect(),
    )
    .unwrap();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
    for _ in 0..batches {
        w.write(&batch).unwrap();
    }
    w.finish().unwrap();
    w.into_inner().unwrap()
}

fn valid_ipc(seqs: &[u64]) -> Vec<u8> {
    let n = seqs.len();
    ipc_body(
        vec![
            ("device_id", strings(&vec!["490154203237518"; n])),
            (
                "event_time",
                Arc::new(Int64Array::from(vec![now_ms() - 1000; n])),
            ),
            (
                "seq",
                Arc::new(arrow::array::UInt64Array::from(seqs.to_vec())),
            ),
            ("event_kind", strings(&vec!["heartbeat"; n])),
        ],
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_ipc_garbage_and_wrong_schemas_are_400() {
    let s = server().await;
    let good = valid_ipc(&[1, 2]);
    // arrow-ipc panics on some malformed streams (caught per request, see
    // `decode_arrow_ipc`); as in the binary, those stay off stderr and are counted.
    leasewatch::ingest::quiet_contained_panics();
    let panics_before = leasewatch::ingest::contained_panics();
    let mut garbage: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("text".into(), b"device_id,event_time\n1,2\n".to_vec()),
        ("json".into(), ping(0).into_bytes()),
        ("zeros".into(), vec![0; 4096]),
        ("ones".into(), vec![0xff; 4096]),
        // A continuation marker announcing a 2 GiB message.
        (
            "huge length".into(),
            b"\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(),
        ),
        ("truncated".into(), good[..good.len() / 2].to_vec()),
        ("schema only, cut".into(), good[..good.len() - 9].to_vec()),
    ];
    // Every byte flipped in turn (a cheap local fuzz of one valid stream).
    for i in (0..good.len()).step_by(7) {
        let mut g = good.clone();
        g[i] ^= 0x5a;
        garbage.push((format!("flip {i}"), g));
    }
    for (what, body) in &garbage {
        let before = s.wal_seqs().len();
        let r = s.post(&[AUTH, ARROW], body.clone()).await;
        assert!(
            r.status.is_client_error() || r.status == StatusCode::ACCEPTED,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        if r.status.is_client_error() {
            assert!(r.json()["error"].is_string(), "{what}: {}", r.text());
            assert_eq!(s.wal_seqs().len(), before, "{what}");
        }
    }
    assert!(
        leasewatch::ingest::contained_panics() > panics_before,
        "no flipped byte made arrow-ipc panic: the containment is not exercised"
    );
    // A flipped byte may still be a valid stream (a changed value): start afresh.
    let s = server().await;
    // The first few are plainly not Arrow.
    for (what, body) in &garbage[..8] {
        let r = s.post(&[AUTH, ARROW], body.clone()).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "arrow ipc");
        let _ = what;
    }

    // Well-formed streams with the wrong schema.
    let n = 2;
    let t = Arc::new(Int64Array::from(vec![now_ms(); n])) as ArrayRef;
    let wrong: Vec<(&str, Vec<(&str, ArrayRef)>)> = vec![
        (
            "\"colour\" is not a ping field",
            vec![
                ("device_id", strings(&["490154203237518"; 2])),
                ("event_time", Arc::clone(&t)),
                ("event_kind", strings(&["boot"; 2])),
                ("colour", strings(&["red"; 2])),
            ],
        ),
        (
            "required column \"device_id\" is missing",
            vec![
                ("event_time", Arc::clone(&t)),
                ("event_kind", strings(&["boot"; 2])),
            ],
        ),
        (
            "column \"lat\" of type Utf8",
            vec![
                ("device_id", strings(&["490154203237518"; 2])),
                ("event_time", Arc::clone(&t)),
                ("event_kind", strings(&["boot"; 2])),
                ("lat", strings(&["north", "south"])),
            ],
        ),
        (
            "column \"mcc\" of type Int32",
            vec![
                ("device_id", strings(&["490154203237518"; 2])),
                ("event_time", Arc::clone(&t)),
                ("event_kind", strings(&["boot"; 2])),
                ("mcc", Arc::new(Int32Array::from(vec![262, 70_000]))),
            ],
        ),
        (
            "column \"event_time\" of type Utf8",
            vec![
                ("device_id", strings(&["490154203237518"; 2])),
                ("event_time", strings(&["now", "later"])),
                ("event_kind", strings(&["boot"; 2])),
            ],
        ),
    ];
    for (needle, columns) in wrong {
        let r = s.post(&[AUTH, ARROW], ipc_body(columns, 1)).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, needle);
    }
    // A struct where a string belongs.
    let nested = arrow::array::StructArray::from(vec![(
        Arc::new(Field::new("x", DataType::Utf8, true)),
        strings(&["a", "b"]),
    )]);
    let r = s
        .post(
            &[AUTH, ARROW],
            ipc_body(
                vec![
                    ("device_id", Arc::new(nested) as ArrayRef),
                    ("event_time", Arc::clone(&t)),
                    ("event_kind", strings(&["boot"; 2])),
                ],
                1,
            ),
        )
        .await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "device_id");
    // Too many rows across batches.
    let r = s
        .post(
            &[AUTH, ARROW],
            ipc_body(
                vec![
                    ("device_id", strings(&["490154203237518"; 30])),
                    ("event_time", Arc::new(Int64Array::from(vec![now_ms(); 30]))),
                    ("event_kind", strings(&["boot"; 30])),
                ],
                4,
            ),
        )
        .await;
    assert_refused(&r, StatusCode::PAYLOAD_TOO_LARGE, "100 rows");
    assert!(s.wal_seqs().is_empty());
    let r = s.post(&[AUTH, ARROW], good).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(s.wal_seqs(), vec![1, 2]);
    s.assert_still_serving(3).await;
}

/// Everything at once: one request that mixes valid rows with one of each hostile
/// row, in both JSON formats and gzipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mixed_request_keeps_exactly_the_valid_rows() {
    let s = server().await;
    let p = ping(0);
    let bad = vec![
        "{not json".to_string(),
        "[".repeat(10_000),
        p.replace("52.52", "NaN"),
        p.replace("52.52", "\"Infinity\""),
        p.replace("\"seq\"", "\"colour\":1,\"seq\""),
        p.replace("262", "\"262\"x"),
        ping_at(0, 0),
        ping_at(0, 253_402_300_799_999),
        p.replace("490154203237518", &"9".repeat(5000)),
        String::new() + "\u{0}",
    ];
    let (lines, good) = mixed(&bad);
    let body = lines.join("\n");
    let r = s.post(&[AUTH, NDJSON, GZIP], gzip(body.as_bytes())).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let want: Vec<u64> = (0..bad.len() as u64).map(|i| 2 * i + 1).collect();
    assert_eq!(r.rejected_rows(), want, "{}", r.text());
    assert_eq!(s.wal_seqs(), good);
    s.assert_still_serving(1).await;
}

/// The seed corpora of the fuzz targets (`fuzz/corpus/<target>/seed-*`) stay valid
/// inputs as the contract changes: each decodes, with at least one ping kept (the
/// empty array aside). The binary seeds (Arrow IPC, gzip) are written from here:
/// `LEASEWATCH_BLESS=1 cargo test -p leasewatch --test hostile fuzz_seeds`.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    use leasewatch::ingest::{
        decode_arrow_ipc, decode_json_array, decode_ndjson, gunzip_limited, validate_batch,
    };
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    // The fuzz targets validate against this clock (fuzz/fuzz_targets/common.rs).
    const NOW_MS: i64 = 1_780_000_000_000;
    let seed = |target: &str, name: &str| corpus.join(target).join(name);
    if std::env::var_os("LEASEWATCH_BLESS").is_some() {
        let ipc = |seqs: &[u64]| {
            let n = seqs.len();
            ipc_body(
                vec![
                    ("device_id", strings(&vec!["490154203237518"; n])),
                    (
                        "event_time",
                        Arc::new(Int64Array::from(vec![NOW_MS - 5000; n])),
                    ),
                    (
                        "seq",
                        Arc::new(arrow::array::UInt64Array::from(seqs.to_vec())),
                    ),
                    ("lat", Arc::new(Float64Array::from(vec![52.52; n]))),
                    ("lon", Arc::new(Float64Array::from(vec![13.405; n]))),
                    ("event_kind", strings(&vec!["location"; n])),
                ],
                2,
            )
        };
        let full = RecordBatch::new_empty(leasewatch_schemas::ping_schema());
        let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &full.schema()).unwrap();
        w.write(&full).unwrap();
        w.finish().unwrap();
        let writes = [
            (
                seed("arrow_ipc", "seed-client-columns.arrows"),
                ipc(&[1, 2]),
            ),
            (
                seed("arrow_ipc", "seed-ping-schema-empty.arrows"),
                w.into_inner().unwrap(),
            ),
        ];
        for (path, bytes) in &writes {
            std::fs::write(path, bytes).unwrap();
        }
        // gunzip seeds: a format byte (0 JSON array, 1 NDJSON, 2 Arrow IPC), then gzip.
        let prefixed = |format: u8, body: &[u8]| [vec![format], gzip(body)].concat();
        for (name, format, source) in [
            ("seed-array.gz", 0, seed("json_array", "seed-valid.json")),
            ("seed-ndjson.gz", 1, seed("ndjson", "seed-mixed.ndjson")),
            (
                "seed-ipc.gz",
                2,
                seed("arrow_ipc", "seed-client-columns.arrows"),
            ),
        ] {
            let body = std::fs::read(source).unwrap();
            std::fs::write(seed("gunzip", name), prefixed(format, &body)).unwrap();
        }
    }
    let limits = IngestConfig::default();
    let mut seen = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let dir = entry.unwrap().path();
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("seed-") {
                continue;
            }
            seen += 1;
            let bytes = std::fs::read(&path).unwrap();
            let rows = limits.max_rows_per_request;
            let (format, body) = match target.as_str() {
                "gunzip" => (
                    ["json_array", "ndjson", "arrow_ipc"][usize::from(bytes[0] % 3)],
                    gunzip_limited(&bytes[1..], limits.max_decompressed_bytes).unwrap(),
                ),
                "sql_loader" => {
                    let text = String::from_utf8(bytes).unwrap();
                    let files: Vec<(String, String)> = text
                        .split('\0')
                        .enumerate()
                        .map(|(i, t)| (format!("{i}.sql"), t.to_string()))
                        .collect();
                    let program = leasewatch::engine::sql::parse_files(&files)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        program.tables.len() + program.views.len() + program.inserts.len() > 0,
                        "{name}: no statement"
                    );
                    continue;
                }
                other => (
                    ["json_array", "ndjson", "arrow_ipc"]
                        .into_iter()
                        .find(|t| *t == other)
                        .unwrap_or_else(|| panic!("unknown fuzz target folder {other}")),
                    bytes,
                ),
            };
            let decoded = match format {
                "json_array" => decode_json_array(&body, rows),
                "ndjson" => decode_ndjson(&body, rows),
                _ => decode_arrow_ipc(&body, rows),
            }
            .unwrap_or_else(|e| panic!("{target}/{name}: {e}"));
            let (valid, _) = validate_batch(&decoded.batch, NOW_MS, &limits.limits()).unwrap();
            assert!(
                valid.num_rows() > 0 || name.contains("empty"),
                "{target}/{name}: no valid ping"
            );
        }
    }
    assert!(seen >= 10, "only {seen} seeds in {}", corpus.display());
}
