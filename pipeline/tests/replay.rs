//! `leasewatch replay` with several decode threads: the same batches, in the same order,
//! as with one, so the same outputs and summary; and the shared NDJSON decoder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::RecordBatch;
use leasewatch::engine::{Engine, EngineOptions};
use leasewatch::ingest::{DecodeError, NdjsonDecoder};
use leasewatch::replay::{ReplayOptions, Summary, replay};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use support::splitmix::SplitMix;

/// Receive time stand-in: after every generated ping.
const NOW_MS: i64 = 1_790_000_000_000;
const START_MS: i64 = 1_780_000_000_000;

fn pipeline_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../load-tests/pipelines/replay")
}

/// A 15-digit IMEI with a valid Luhn check digit.
fn imei(n: u64) -> String {
    let body = format!("35{:012}", n);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// A fleet of `devices` pinging every 30 s for `minutes`, in upload order: some pings
/// uploaded hours late, some invalid, some lines not JSON, blank lines, a byte-order
/// mark. Returns the text and the 1-based line of the first malformed line.
fn fleet(devices: u64, minutes: i64, seed: u64) -> (String, usize) {
    let mut rng = SplitMix(seed);
    let mut rows: Vec<(i64, String)> = Vec::new();
    for d in 0..devices {
        let id = imei(d);
        let mut battery = 100i64;
        let mut t = START_MS + (rng.below(30_000) as i64);
        while t < START_MS + minutes * 60_000 {
            let late = rng.below(200) == 0;
            let receive = if late {
                t + 3_600_000 + rng.below(3_600_000) as i64
            } else {
                t + 500 + rng.below(5_000) as i64
            };
            battery = (battery - (rng.below(3) as i64)).max(1);
            let bad = rng.below(500) == 0;
            let rooted = rng.below(300) == 0;
            let line = format!(
                r#"{{"device_id":"{id}","event_time":{t},"receive_time":{receive},"seq":{},"lat":{:.6},"lon":{:.6},"battery_pct":{},"network_type":"lte","agent_active":true,"rooted":{rooted},"mock_location":false,"event_kind":"heartbeat"}}"#,
                rng.below(1_000_000),
                40.0 + (rng.below(1_000_000) as f64) / 1e6,
                -3.0 + (rng.below(1_000_000) as f64) / 1e6,
                if bad { 101 } else { battery },
            );
            rows.push((receive, line));
            t += 30_000;
        }
    }
    rows.sort_by_key(|r| r.0);
    let mut text = String::from("\u{feff}");
    let mut first_malformed = 0;
    for (i, (_, line)) in rows.iter().enumerate() {
        text.push_str(line);
        text.push('\n');
        match i % 997 {
            500 => {
                if first_malformed == 0 {
                    first_malformed = text.matches('\n').count() + 1;
                }
                text.push_str("{\"device_id\": not json\n");
            }
            700 => text.push_str("\n  \r\n"),
            900 => {
                let _ = writeln!(text, "{line} {line}");
            }
            _ => {}
        }
    }
    (text, first_malformed)
}

fn write_fleet(dir: &Path, devices: u64, minutes: i64, seed: u64) -> (PathBuf, usize) {
    let (text, malformed) = fleet(devices, minutes, seed);
    let path = dir.join("pings.ndjson");
    std::fs::write(&path, text).unwrap();
    (path, malformed)
}

/// Every captured sink row, in order, as JSON lines.
fn captured(engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    for sink in engine.sink_names().to_vec() {
        let batches: Vec<RecordBatch> = engine.take_captured(&sink);
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            for b in &batches {
                w.write(b).unwrap();
            }
            w.finish().unwrap();
        }
        for line in String::from_utf8(buf).unwrap().lines() {
            out.push(format!("{sink} {line}"));
        }
    }
    out
}

async fn run(input: &Path, threads: usize, region_bytes: usize) -> (Summary, Vec<String>) {
    run_with(input, threads, region_bytes, false).await
}

async fn run_with(
    input: &Path,
    threads: usize,
    region_bytes: usize,
    arrow_json_only: bool,
) -> (Summary, Vec<String>) {
    let options = EngineOptions {
        capture_sinks: true,
        ..EngineOptions::default()
    };
    let mut engine = Engine::from_dir(&pipeline_dir(), &options).await.unwrap();
    let opts = ReplayOptions {
        progress: false,
        now_ms: Some(NOW_MS),
        decode_threads: threads,
        region_bytes,
        arrow_json_only,
        ..ReplayOptions::default()
    };
    let summary = replay(&mut engine, &[input.to_path_buf()], &opts)
        .await
        .unwrap();
    (summary, captured(&engine))
}

/// The summary without what depends on the machine and the thread count.
fn comparable(s: &Summary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    let m = v.as_object_mut().unwrap();
    for k in [
        "seconds",
        "pings_per_second",
        "decode_threads",
        "decode_only_seconds",
        "decode_only_pings_per_second",
        "peak_rss_bytes",
        "json_decoder",
    ] {
        m.remove(k);
    }
    v
}

#[tokio::test(flavor = "current_thread")]
async fn decode_threads_change_nothing_but_speed() {
    let dir = tempfile::tempdir().unwrap();
    let (input, malformed_line) = write_fleet(dir.path(), 60, 240, 7);
    let size = std::fs::metadata(&input).unwrap().len() as usize;
    let region = 16 << 10;
    assert!(size > 100 * region, "{size} bytes: too few regions");

    let (one, out_one) = run(&input, 1, region).await;
    assert!(one.pings_in > 20_000, "{}", one.pings_in);
    assert!(
        one.late > 0,
        "no late pings: the test would not see ordering"
    );
    assert!(one.rejected > 0);
    assert!(one.rejected_reasons["row:malformed"] > 0);
    assert!(one.rejected_reasons["battery_pct:out_of_range"] > 0);
    assert_eq!(one.devices, 60);
    assert_eq!(one.bytes_read as usize, size);
    assert!(one.window_state_bytes_per_device > 0.0);
    assert!(one.rows_out.values().all(|n| *n > 0), "{:?}", one.rows_out);
    let first = format!("{}:{malformed_line}: ", input.display());
    assert!(
        one.rejected_samples.iter().any(|s| s.starts_with(&first)),
        "no sample at line {malformed_line}: {:?}",
        one.rejected_samples
    );
    assert!(
        one.rejected_samples
            .iter()
            .any(|s| s.contains(" row ") && s.contains("battery_pct")),
        "{:?}",
        one.rejected_samples
    );

    for threads in [2, 3, 8] {
        let (many, out_many) = run(&input, threads, region).await;
        assert_eq!(many.decode_threads, threads);
        assert_eq!(comparable(&many), comparable(&one), "{threads} threads");
        assert_eq!(out_many.len(), out_one.len(), "{threads} threads");
        assert!(out_many == out_one, "{threads} threads: different outputs");
    }
}

/// The ping-line decoder (with arrow-json for regions it declines: those holding a
/// malformed line) and arrow-json alone replay the same rows into the same outputs.
#[tokio::test(flavor = "current_thread")]
async fn ping_lines_and_arrow_json_replay_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_fleet(dir.path(), 30, 180, 11);
    let region = 16 << 10;
    let (ours, out_ours) = run_with(&input, 2, region, false).await;
    let (arrow, out_arrow) = run_with(&input, 2, region, true).await;
    assert_eq!(ours.json_decoder, "ping-lines");
    assert_eq!(arrow.json_decoder, "arrow-json");
    assert!(ours.pings_in > 5_000 && ours.rejected > 0, "{ours:?}");
    assert_eq!(comparable(&ours), comparable(&arrow));
    assert_eq!(out_ours.len(), out_arrow.len());
    assert!(out_ours == out_arrow, "different outputs");
}

#[tokio::test(flavor = "current_thread")]
async fn one_region_or_many_read_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_fleet(dir.path(), 20, 120, 3);
    let (small, _) = run(&input, 2, 4 << 10).await;
    let (whole, _) = run(&input, 2, 64 << 20).await;
    for (a, b) in [
        (small.pings_in, whole.pings_in),
        (small.rejected, whole.rejected),
        (small.devices, whole.devices),
        (small.bytes_read, whole.bytes_read),
    ] {
        assert_eq!(a, b);
    }
    assert_eq!(small.rejected_reasons, whole.rejected_reasons);
    // Within a region, rows that do not decode are listed before rows that fail
    // validation: the order of samples depends on the regions, the samples do not.
    assert!(
        small.rejected_samples.len() < 20,
        "samples cut: compare fewer"
    );
    let sorted = |s: &Summary| {
        let mut v = s.rejected_samples.clone();
        v.sort();
        v
    };
    assert_eq!(sorted(&small), sorted(&whole));
}

#[tokio::test(flavor = "current_thread")]
async fn measure_decode_reports_both_rates() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_fleet(dir.path(), 5, 60, 1);
    let mut engine = Engine::from_dir(
        &pipeline_dir(),
        &EngineOptions {
            capture_sinks: true,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    let opts = ReplayOptions {
        progress: false,
        now_ms: Some(NOW_MS),
        measure_decode: true,
        ..ReplayOptions::default()
    };
    let s = replay(&mut engine, &[input], &opts).await.unwrap();
    assert!(s.decode_only_pings_per_second.unwrap() > 0.0);
    assert!(s.decode_only_seconds.unwrap() > 0.0);
    assert!(s.decode_threads >= 1);
    if cfg!(target_os = "linux") {
        assert!(s.peak_rss_bytes.unwrap() > 1 << 20);
    }
    let text = s.to_text();
    assert!(text.contains("decode only (arrow-json):"), "{text}");
    assert!(text.contains("peak RSS:"), "{text}");
}

const GOOD: &str = r#"{"device_id":"490154203237518","event_time":1780000000000,"event_kind":"heartbeat","lat":1.5,"lon":2.5}"#;

#[test]
fn shared_decoder_batches_and_places_rejections() {
    let mut text = String::new();
    for i in 0..10 {
        match i {
            4 => text.push_str("{\"device_id\":[1]}"),
            6 => text.push('\n'),
            _ => text.push_str(GOOD),
        }
        text.push('\n');
    }
    let mut d = NdjsonDecoder::new(3);
    let out = d.decode(text.as_bytes(), usize::MAX).unwrap();
    assert_eq!(out.lines, 11);
    assert_eq!(out.rows, 9);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].line, 4);
    assert_eq!(out.rejected[0].rejection.row, 4);
    assert!(out.batches.iter().all(|b| b.num_rows() <= 3));
    assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 8);

    // The same decoder again, on clean text: batches of 3 and a last one.
    let clean = format!("{GOOD}\n").repeat(7);
    let out = d.decode(clean.as_bytes(), usize::MAX).unwrap();
    let sizes: Vec<usize> = out.batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    assert!(out.rejected.is_empty());

    assert_eq!(
        d.decode(clean.as_bytes(), 6).unwrap_err(),
        DecodeError::TooManyRows { limit: 6 }
    );
}

#[test]
fn shared_decoder_rejects_deep_nesting_across_lines() {
    // One `{` per line, each line a field value of the one before: not flat objects,
    // so the nesting pass runs and the rows are rejected, not decoded.
    let mut text = String::new();
    for _ in 0..5_000 {
        text.push_str("{\"device_id\":\n");
    }
    text.push_str(GOOD);
    text.push('\n');
    let out = NdjsonDecoder::new(8192)
        .decode(text.as_bytes(), usize::MAX)
        .unwrap();
    assert_eq!(out.rows, 5_001);
    assert_eq!(out.rejected.len(), 5_000);
    assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let deep = "[".repeat(100_000);
    let text = format!("{GOOD}\n{{\"device_id\":{deep}}}\n{GOOD}\n");
    let out = NdjsonDecoder::new(8192)
        .decode(text.as_bytes(), usize::MAX)
        .unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].line, 1);
}
