//! `leasewatch-load score` through the real binary, on a hand-made fleet whose right
//! answer is known: hits, a miss, false alerts, alerts on tricky episodes, duplicated
//! alert ids, the wrong kind on the right device, and both edges of the slack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use leasewatch_schemas::{alert_archive_schema, timestamp_type};
use parquet::arrow::ArrowWriter;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_leasewatch-load");
/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const MIN: i64 = 60_000;

fn t(minutes: i64) -> i64 {
    T0 + minutes * MIN
}

/// One archive row: id, signal, device, event time, window.
struct Row(
    &'static str,
    &'static str,
    &'static str,
    i64,
    Option<(i64, i64)>,
);

fn write_archive(path: &Path, rows: &[Row]) {
    let n = rows.len();
    let strs = |f: &dyn Fn(&Row) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(v).with_timezone("+00:00"))
    };
    assert_eq!(
        alert_archive_schema().field(7).data_type(),
        &timestamp_type()
    );
    let cols: Vec<ArrayRef> = vec![
        strs(&|r| r.0),
        strs(&|r| r.1),
        strs(&|_| "high"),
        strs(&|_| "review"),
        strs(&|r| r.2),
        Arc::new(StringArray::from(vec![Some("lease-1"); n])),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        ts(rows.iter().map(|r| Some(r.3)).collect()),
        ts(rows.iter().map(|r| r.4.map(|w| w.0)).collect()),
        ts(rows.iter().map(|r| r.4.map(|w| w.1)).collect()),
        Arc::new(Int32Array::from(vec![Some(0); n])),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(Float64Array::from(vec![None; n])),
        Arc::new(Float64Array::from(vec![None; n])),
        strs(&|_| "[]"),
    ];
    let batch = RecordBatch::try_new(alert_archive_schema(), cols).unwrap();
    write_batch(path, &batch);
}

fn write_batch(path: &Path, batch: &RecordBatch) {
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// The fleet: devices A, B and C; the right answer is spelled out in the tests.
fn fleet(dir: &Path) {
    let truth = [
        "incident_id,kind,device_id,start_ms,end_ms".to_string(),
        // Hit by a tamper alert inside the span.
        format!("inc-1,tamper,A,{},{}", t(60), t(70)),
        // Missed: no alert.
        format!("inc-2,device_dark,B,{},{}", t(100), t(500)),
        // Hit by a window that overlaps the span.
        format!("inc-3,sim_swap_frequent,A,{},{}", t(600), t(700)),
        // Hit by an alert exactly at end + 15 min (out_of_area's slack).
        format!("inc-4,out_of_area,C,{},{}", t(1000), t(1010)),
        format!("inc-5,overdue,B,{},{}", t(0), t(2880)),
        // The true mismatch before a registered new SIM arrives.
        format!("inc-6,sim_mismatch,B,{},{}", t(1900), t(2000)),
    ];
    std::fs::write(dir.join("truth.csv"), truth.join("\n") + "\n").unwrap();
    let tricky = [
        "episode_id,kind,device_id,start_ms,end_ms".to_string(),
        format!("epi-1,registered_new_sim,B,{},{}", t(2000), t(2120)),
        format!("epi-2,domestic_flight,C,{},{}", t(3000), t(3100)),
        format!("epi-3,night_switch_off,A,{},{}", t(4000), t(4400)),
        format!("epi-4,poor_accuracy_jump,C,{},{}", t(5000), t(5010)),
    ];
    std::fs::write(dir.join("tricky.csv"), tricky.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"generator":"leasewatch-load","params":{"devices":4,"days":2,"seed":1}}"#,
    )
    .unwrap();

    let arch = dir.join("alerts");
    std::fs::create_dir_all(arch.join("date=2026-06-02")).unwrap();
    std::fs::write(arch.join("_SUCCESS"), "").unwrap();
    write_archive(
        &arch.join("part-0.parquet"),
        &[
            // a1 true (tamper, inc-1), routed to two queues: two rows.
            Row("a1", "tamper", "A", t(65), None),
            Row("a1", "tamper", "A", t(65), None),
            // a2: the right device and time, the wrong kind: false.
            Row("a2", "cross_border", "A", t(65), None),
            // a3 true: window [300, 660] overlaps inc-3 [600, 700].
            Row(
                "a3",
                "sim_swap_frequent",
                "A",
                t(660),
                Some((t(300), t(660))),
            ),
            // a4 true: exactly end + slack; a5 one millisecond later: false.
            Row("a4", "out_of_area", "C", t(1025), None),
            Row("a5", "out_of_area", "C", t(1025) + 1, None),
            // a6 true (overdue, inc-5).
            Row("a6", "overdue", "B", t(1440), None),
        ],
    );
    write_archive(
        &arch.join("date=2026-06-02").join("part-1.parquet"),
        &[
            // a1 once more, in another file.
            Row("a1", "tamper", "A", t(65), None),
            // a7 false, on a night switch-off, but overdue is never a tricky false alert.
            Row("a7", "overdue", "A", t(4200), None),
            // a8 true: 5 min after inc-6 ends, though inside registered_new_sim.
            Row("a8", "sim_mismatch", "B", t(2005), None),
            // a9 false on registered_new_sim (50 min after inc-6: beyond the slack).
            Row("a9", "sim_mismatch", "B", t(2050), None),
            // a10 false on domestic_flight.
            Row(
                "a10",
                "impossible_travel",
                "C",
                t(3070),
                Some((t(3040), t(3070))),
            ),
            // a11 false: 20 min after poor_accuracy_jump, beyond out_of_area's slack.
            Row("a11", "out_of_area", "C", t(5030), None),
            // a12 false on poor_accuracy_jump: exactly end + tamper's slack.
            Row("a12", "tamper", "C", t(5025), None),
        ],
    );
}

fn score(dir: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("score")
        .arg("--truth")
        .arg(dir.join("truth.csv"))
        .arg("--alerts")
        .arg(dir.join("alerts"))
        .args(extra)
        .output()
        .expect("run leasewatch-load")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn sig(
    incidents: u64,
    detected: u64,
    recall: Option<f64>,
    alerts: u64,
    true_alerts: u64,
    precision: Option<f64>,
) -> Value {
    json!({
        "incidents": incidents, "detected": detected, "recall": recall,
        "alerts": alerts, "true_alerts": true_alerts, "precision": precision,
    })
}

#[test]
fn json_report_has_the_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let out = score(dir.path(), &["--json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();

    let inputs = &v["inputs"];
    assert_eq!(inputs["parquet_files"], 2);
    assert_eq!(inputs["alert_rows"], 14);
    assert_eq!(inputs["distinct_alerts"], 12);
    assert_eq!(inputs["conflicting_duplicates"], 0);
    assert!(inputs["tricky"].as_str().unwrap().ends_with("tricky.csv"));
    assert!(
        inputs["manifest"]
            .as_str()
            .unwrap()
            .ends_with("manifest.json")
    );

    let s = &v["signals"];
    assert_eq!(s["sim_mismatch"], sig(1, 1, Some(1.0), 2, 1, Some(0.5)));
    assert_eq!(
        s["sim_swap_frequent"],
        sig(1, 1, Some(1.0), 1, 1, Some(1.0))
    );
    assert_eq!(
        s["out_of_area"],
        sig(1, 1, Some(1.0), 3, 1, Some(1.0 / 3.0))
    );
    assert_eq!(s["risky_place_dwell"], sig(0, 0, None, 0, 0, None));
    assert_eq!(s["abnormal_dwell"], sig(0, 0, None, 0, 0, None));
    assert_eq!(s["impossible_travel"], sig(0, 0, None, 1, 0, Some(0.0)));
    assert_eq!(s["cross_border"], sig(0, 0, None, 1, 0, Some(0.0)));
    assert_eq!(s["device_dark"], sig(1, 0, Some(0.0), 0, 0, None));
    assert_eq!(s["tamper"], sig(1, 1, Some(1.0), 2, 1, Some(0.5)));
    assert_eq!(s["overdue"], sig(1, 1, Some(1.0), 2, 1, Some(0.5)));
    assert_eq!(s.as_object().unwrap().len(), 10);
    assert_eq!(
        v["totals"],
        sig(6, 5, Some(5.0 / 6.0), 12, 5, Some(5.0 / 12.0))
    );

    assert_eq!(
        v["tricky"],
        json!({
            "episodes": {"domestic_flight": 1, "registered_new_sim": 1,
                         "poor_accuracy_jump": 1, "night_switch_off": 1},
            "false_alerts": {"domestic_flight": 1, "registered_new_sim": 1,
                             "poor_accuracy_jump": 1, "night_switch_off": 0},
            "total": 3,
            "device_days": 8,
            "per_1000_device_days": 375.0,
        })
    );
    assert_eq!(v["slack_minutes"]["sim_swap_frequent"], 360);
    assert_eq!(v["slack_minutes"]["out_of_area"], 15);
    assert_eq!(v["slack_minutes"]["overdue"], 1440);
}

#[test]
fn table_report_has_the_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let text = stdout(&score(dir.path(), &[]));
    let lines: Vec<&str> = text.lines().collect();
    let row = |first: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no {first} row in\n{text}"))
            .split_whitespace()
            .collect()
    };
    // signal, slack (value unit), incidents, detected, recall, alerts, true, precision
    assert_eq!(
        row("sim_mismatch"),
        [
            "sim_mismatch",
            "15",
            "min",
            "1",
            "1",
            "100.0%",
            "2",
            "1",
            "50.0%"
        ]
    );
    assert_eq!(
        row("sim_swap_frequent"),
        [
            "sim_swap_frequent",
            "6",
            "h",
            "1",
            "1",
            "100.0%",
            "1",
            "1",
            "100.0%"
        ]
    );
    assert_eq!(
        row("out_of_area"),
        [
            "out_of_area",
            "15",
            "min",
            "1",
            "1",
            "100.0%",
            "3",
            "1",
            "33.3%"
        ]
    );
    assert_eq!(
        row("risky_place_dwell"),
        ["risky_place_dwell", "2", "h", "0", "0", "-", "0", "0", "-"]
    );
    assert_eq!(
        row("cross_border"),
        ["cross_border", "15", "min", "0", "0", "-", "1", "0", "0.0%"]
    );
    assert_eq!(
        row("device_dark"),
        ["device_dark", "1", "h", "1", "0", "0.0%", "0", "0", "-"]
    );
    assert_eq!(
        row("overdue"),
        ["overdue", "24", "h", "1", "1", "100.0%", "2", "1", "50.0%"]
    );
    assert_eq!(
        row("total"),
        ["total", "6", "5", "83.3%", "12", "5", "41.7%"]
    );
    assert_eq!(row("domestic_flight"), ["domestic_flight", "1", "1"]);
    assert_eq!(row("registered_new_sim"), ["registered_new_sim", "1", "1"]);
    assert_eq!(row("poor_accuracy_jump"), ["poor_accuracy_jump", "1", "1"]);
    assert_eq!(row("night_switch_off"), ["night_switch_off", "1", "0"]);
    assert!(
        text.contains(
            "false alerts on tricky episodes per 1,000 device-days: 375.00 (8 device-days"
        ),
        "{text}"
    );
    assert!(
        text.contains("2 Parquet files, 14 rows, 12 distinct alerts"),
        "{text}"
    );
    // Columns line up: every signal row has the same length.
    let widths: std::collections::BTreeSet<usize> = lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| leasewatch_schemas::SignalKind::parse(w).is_some())
        })
        .map(|l| l.len())
        .collect();
    assert_eq!(widths.len(), 1, "{text}");
}

#[test]
fn slack_minutes_overrides_every_signal() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let v: Value = serde_json::from_str(&stdout(&score(
        dir.path(),
        &["--json", "--slack-minutes", "0"],
    )))
    .unwrap();
    let s = &v["signals"];
    // a4 at end + 15 min no longer reaches inc-4.
    assert_eq!(s["out_of_area"], sig(1, 0, Some(0.0), 3, 0, Some(0.0)));
    // a8, 5 min after inc-6, is now a false alert on registered_new_sim (with a9);
    // a12 at end + 15 min no longer reaches poor_accuracy_jump.
    assert_eq!(s["sim_mismatch"], sig(1, 0, Some(0.0), 2, 0, Some(0.0)));
    assert_eq!(v["tricky"]["false_alerts"]["registered_new_sim"], 2);
    assert_eq!(v["tricky"]["false_alerts"]["poor_accuracy_jump"], 0);
    assert_eq!(v["tricky"]["total"], 3);
    // Windows still count: a3's window overlaps inc-3 itself.
    assert_eq!(s["sim_swap_frequent"]["true_alerts"], 1);
    assert_eq!(v["slack_minutes"]["overdue"], 0);
}

#[test]
fn single_file_and_no_tricky_or_manifest() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    std::fs::remove_file(dir.path().join("tricky.csv")).unwrap();
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let out = Command::new(BIN)
        .arg("score")
        .arg("--truth")
        .arg(dir.path().join("truth.csv"))
        .arg("--alerts")
        .arg(dir.path().join("alerts").join("part-0.parquet"))
        .arg("--json")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["inputs"]["parquet_files"], 1);
    assert_eq!(v["inputs"]["distinct_alerts"], 6);
    assert_eq!(v["tricky"], Value::Null);
    assert_eq!(v["inputs"]["manifest"], Value::Null);

    // With tricky.csv but no manifest, the rate is unknown and the table says so.
    fleet(dir.path());
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let text = stdout(&score(dir.path(), &[]));
    assert!(
        text.contains("per 1,000 device-days: unknown (no manifest.json"),
        "{text}"
    );
}

fn fails(o: &Output, wanted: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(wanted), "wanted {wanted:?} in: {err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_input_exits_2_naming_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);

    // Missing file.
    let o = Command::new(BIN)
        .args(["score", "--truth"])
        .arg(d.join("nope.csv"))
        .arg("--alerts")
        .arg(d.join("alerts"))
        .output()
        .unwrap();
    fails(&o, "nope.csv: cannot read");

    // Missing archive.
    std::fs::rename(d.join("alerts"), d.join("moved")).unwrap();
    fails(&score(d, &[]), "cannot read the alert archive");
    std::fs::rename(d.join("moved"), d.join("alerts")).unwrap();

    // Unknown kind, with line and column.
    let truth = std::fs::read_to_string(d.join("truth.csv")).unwrap();
    std::fs::write(
        d.join("truth.csv"),
        truth.replacen("device_dark", "teleport", 1),
    )
    .unwrap();
    fails(
        &score(d, &[]),
        "truth.csv: line 3, column 2 (kind): unknown kind \"teleport\"",
    );

    // Bad header.
    std::fs::write(d.join("truth.csv"), "id,kind,device,start,end\n").unwrap();
    fails(&score(d, &[]), "truth.csv: line 1: bad header");
    std::fs::write(d.join("truth.csv"), truth).unwrap();

    // Unknown tricky kind.
    std::fs::write(
        d.join("tricky.csv"),
        "episode_id,kind,device_id,start_ms,end_ms\nepi-1,moon_landing,A,1,2\n",
    )
    .unwrap();
    fails(
        &score(d, &[]),
        "tricky.csv: line 2, column 2 (kind): unknown kind \"moon_landing\"",
    );
    fleet(d);

    // A Parquet file missing required columns.
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("alert_id", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("signal", arrow::datatypes::DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(StringArray::from(vec!["tamper"])),
        ],
    )
    .unwrap();
    let bad = d
        .join("alerts")
        .join("date=2026-06-02")
        .join("part-2.parquet");
    write_batch(&bad, &batch);
    fails(
        &score(d, &[]),
        "part-2.parquet: missing required column(s) device_id, event_time, window_start, window_end",
    );

    // An unknown signal, with the row.
    write_archive(
        &bad,
        &[
            Row("b1", "tamper", "A", t(1), None),
            Row("b2", "levitation", "A", t(1), None),
        ],
    );
    fails(
        &score(d, &[]),
        "part-2.parquet: row 2, column signal: unknown signal \"levitation\"",
    );

    // Not Parquet at all.
    std::fs::write(&bad, "not parquet").unwrap();
    fails(
        &score(d, &[]),
        "part-2.parquet: not a readable Parquet file",
    );

    // A manifest without params.
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(d.join("manifest.json"), "{}").unwrap();
    fails(&score(d, &[]), "manifest.json: params.devices missing");
}
