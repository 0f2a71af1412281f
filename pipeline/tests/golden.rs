//! Golden SQL tests: every folder of `sql/golden/` holds `query.sql` (a whole pipeline),
//! `input.jsonl` (ping rows) and `expected.jsonl` (sink rows, each with a `_sink` field,
//! then one `_stats` line), compared order-insensitively. Each case also runs through a
//! checkpoint-and-restore mid-stream and must give the same output.
//!
//! `LEASEWATCH_BLESS=1 cargo test -p leasewatch --test golden` rewrites the expected files;
//! review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arrow::array::RecordBatch;
use leasewatch::engine::{Engine, EngineOptions};
use leasewatch::replay::{Rejections, read_ndjson, validate::validate_batch};
use leasewatch_schemas::Limits;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Rows per batch fed to the engine (small, so cases span many batches).
const BATCH_ROWS: usize = 3;
/// Stand-in receive time: far in the future, so no golden ping is "in the future".
const NOW_MS: i64 = 4_102_444_800_000;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/golden")
}

fn input_batches(path: &Path) -> (Vec<RecordBatch>, Rejections) {
    let mut rej = Rejections::default();
    let mut out = Vec::new();
    let mut emit = |b: RecordBatch, _bytes: u64, _rows: u64, rej: &mut Rejections, line: u64| {
        let place = |i: usize| format!("{}:{}", path.display(), line + i as u64);
        out.push(validate_batch(&b, &Limits::default(), NOW_MS, rej, &place).unwrap());
        true
    };
    read_ndjson(path, BATCH_ROWS, &mut emit, &mut rej).unwrap();
    (out, rej)
}

fn options() -> EngineOptions {
    EngineOptions {
        capture_sinks: true,
        ..EngineOptions::default()
    }
}

fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                let r = (f * 1e6).round() / 1e6;
                if let Some(x) = serde_json::Number::from_f64(r) {
                    *v = Value::Number(x);
                }
            }
        }
        Value::Object(m) => m.values_mut().for_each(round_floats),
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        _ => {}
    }
}

fn lines(engine: &Engine, out: &mut Vec<String>) {
    for sink in engine.sink_names().to_vec() {
        for b in engine.take_captured(&sink) {
            let mut buf = Vec::new();
            {
                let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
                w.write(&b).unwrap();
                w.finish().unwrap();
            }
            for line in String::from_utf8(buf).unwrap().lines() {
                let mut row: Map<String, Value> = serde_json::from_str(line).unwrap();
                let mut obj = Map::new();
                obj.insert("_sink".into(), Value::String(sink.clone()));
                obj.append(&mut row);
                let mut v = Value::Object(obj);
                round_floats(&mut v);
                out.push(v.to_string());
            }
        }
    }
}

fn stats_line(engine: &Engine, rej: &Rejections) -> String {
    let s = engine.stats();
    serde_json::json!({"_stats": {
        "pings_in": s.pings_in,
        "late": s.late,
        "rejected": rej.rows,
        "rejected_reasons": rej.reasons,
        "windows_emitted": s.windows_emitted,
        "rows_out": s.rows_out,
    }})
    .to_string()
}

/// Runs a case, its batches fed `join` at a time (joined into one, as `leasewatch run`
/// joins the WAL entries waiting for the engine), with a checkpoint and restore before
/// (joined) batch `restore_at`.
async fn run_case(dir: &Path, restore_at: Option<usize>, join: usize) -> Vec<String> {
    let sql = std::fs::read_to_string(dir.join("query.sql")).unwrap();
    let files = vec![("query.sql".to_string(), sql)];
    let (batches, rej) = input_batches(&dir.join("input.jsonl"));
    let batches: Vec<RecordBatch> = batches
        .chunks(join)
        .map(|c| arrow::compute::concat_batches(&c[0].schema(), c).unwrap())
        .collect();
    let mut engine = Engine::from_files(&files, &options()).await.unwrap();
    let mut out = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        if restore_at == Some(i) {
            lines(&engine, &mut out);
            let bytes = engine.checkpoint().unwrap();
            engine = Engine::from_files(&files, &options()).await.unwrap();
            engine.restore(&bytes).unwrap();
        }
        engine.process(b).await.unwrap();
    }
    engine.finish().await.unwrap();
    lines(&engine, &mut out);
    out.sort();
    out.push(stats_line(&engine, &rej));
    out
}

#[tokio::test(flavor = "current_thread")]
async fn golden_cases() {
    let bless = std::env::var("LEASEWATCH_BLESS").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("query.sql").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let got = run_case(dir, None, 1).await;
        let n = input_batches(&dir.join("input.jsonl")).0.len();
        let restored = run_case(dir, Some(n / 2), 1).await;
        assert_eq!(
            got, restored,
            "{name}: checkpoint-restore mid-stream changed the output"
        );
        let joined = run_case(dir, Some(n / 8), 4).await;
        assert_eq!(
            got, joined,
            "{name}: feeding the batches four at a time changed the output"
        );
        let text = got.join("\n") + "\n";
        let expected_path = dir.join("expected.jsonl");
        if bless {
            std::fs::write(&expected_path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        let mut want: Vec<&str> = expected.lines().collect();
        let mut have: Vec<&str> = text.lines().collect();
        want.sort_unstable();
        have.sort_unstable();
        if want != have {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}\n--- got\n{text}"
            ));
        }
        println!("golden {name}: ok ({} lines)", got.len());
    }
    assert!(
        failures.is_empty(),
        "golden cases differ (LEASEWATCH_BLESS=1 to regenerate):\n{}",
        failures.join("\n")
    );
}

/// A per-ping query failing on a batch (integer division by zero) leaves the engine as
/// it was: no counter, clock or output changed, so `leasewatch run` can process the
/// WAL entries it had joined one by one and set aside only the one that fails.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_per_ping_query_changes_nothing() {
    let sql = "CREATE TABLE pings (
           device_id TEXT NOT NULL, event_time TIMESTAMP NOT NULL, battery_pct INT,
           event_kind TEXT NOT NULL,
           WATERMARK FOR event_time AS (event_time - INTERVAL '1' SECOND)
         ) WITH (connector = 'leasewatch');
         CREATE TABLE per_pct WITH (connector = 'blackhole');
         INSERT INTO per_pct SELECT device_id, 100 / battery_pct AS p FROM pings;";
    let files = vec![("query.sql".to_string(), sql.to_string())];
    let mut engine = Engine::from_files(&files, &options()).await.unwrap();
    let batch = |t: i64, pct: u8| {
        let line = format!(
            r#"{{"device_id":"352906112103645","event_time":{t},"battery_pct":{pct},"event_kind":"heartbeat"}}"#
        );
        leasewatch::ingest::decode_ndjson(line.as_bytes(), 10)
            .unwrap()
            .batch
    };
    engine.process(&batch(1_000_000, 50)).await.unwrap();
    let (stats, watermark) = (engine.stats().clone(), engine.watermark());
    let err = engine.process(&batch(9_000_000, 0)).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("divide by zero"),
        "{err}"
    );
    assert!(engine.failed_without_effect());
    assert_eq!(engine.stats(), &stats);
    assert_eq!(engine.watermark(), watermark);
    // A ping far older than the failed one is not late: the clock did not move.
    engine.process(&batch(2_000_000, 25)).await.unwrap();
    assert_eq!(engine.stats().late, 0);
    assert_eq!(engine.stats().pings_in, 2);
    assert_eq!(
        engine
            .take_captured("per_pct")
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        2
    );
}
