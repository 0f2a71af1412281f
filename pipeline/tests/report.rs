//! `leasewatch report` end to end: the real binary over an archive of Parquet files
//! written here (every signal, grade and queue; repeated alert ids; an empty file; a
//! hostile device id), the numbers in the HTML checked against counts made here, then
//! the page opened in headless Chromium (Debian package `chromium`, installed by
//! `scripts/test`): it must render, without console errors, with every section, and its
//! screenshot is kept under the target directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use leasewatch_schemas::{Grade, Queue, SignalKind, alert_archive_schema};
use parquet::arrow::ArrowWriter;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// One archive row (the columns the report reads, plus the ones it does not).
#[derive(Debug, Clone)]
struct Row {
    alert_id: String,
    signal: String,
    grade: String,
    queue: String,
    device_id: String,
    lease_id: Option<String>,
    event_time: i64,
    days_past_due: Option<i32>,
    lat: Option<f64>,
    lon: Option<f64>,
}

/// Positions: four cities and one impossible latitude (no H3 cell).
const PLACES: &[(f64, f64)] = &[
    (-1.2921, 36.8219), // Nairobi
    (-4.0435, 39.6682), // Mombasa
    (-0.0917, 34.7680), // Kisumu
    (6.5244, 3.3792),   // Lagos
    (95.0, 10.0),       // invalid
];

const HOSTILE_DEVICE: &str = "<img src=x onerror=alert(1)>&\"'";

/// Days past due the rows carry: mostly current, a tail into every bucket.
const DPD: &[i32] = &[0, 0, 0, 0, 0, 1, 2, 3, 5, 8, 12, 20, 40, 75, -2];

/// `i` spread over `0..k` unevenly: `j` gets `j + 1` of every `k (k + 1) / 2` values, so
/// every category has a different count.
fn skewed(i: usize, k: usize) -> usize {
    let mut r = i % (k * (k + 1) / 2);
    for j in 0..k {
        if r <= j {
            return j;
        }
        r -= j + 1;
    }
    k - 1
}

/// `n` deterministic alerts covering every signal, grade and queue.
fn rows(n: usize) -> Vec<Row> {
    let t0 = 1_767_225_600_000i64; // 2026-01-01 00:00 UTC
    (0..n)
        .map(|i| {
            // Skewed device choice so the top devices are distinct: low numbers often.
            let device = (i * i + 3 * i) % 53 % (1 + i % 41);
            // The device with most alerts has a hostile id (escaping is checked).
            let device_id = if i % 9 == 4 {
                HOSTILE_DEVICE.to_string()
            } else {
                format!("35{:013}", 4_200_000 + device)
            };
            let place = PLACES[(i / 3) % PLACES.len()];
            Row {
                alert_id: format!("A-{i:05}"),
                signal: SignalKind::ALL[skewed(i, SignalKind::ALL.len())]
                    .as_str()
                    .into(),
                grade: Grade::ALL[skewed(i / 7, Grade::ALL.len())].as_str().into(),
                queue: Queue::ALL[skewed(i / 3, Queue::ALL.len())].as_str().into(),
                lease_id: (i % 29 != 0).then(|| format!("L-{device}")),
                event_time: t0 + i as i64 * 61_000,
                days_past_due: (i % 11 != 0).then_some(DPD[(i * 7 + device) % DPD.len()]),
                device_id,
                lat: (i % 17 != 0).then_some(place.0),
                lon: (i % 17 != 0).then_some(place.1),
            }
        })
        .collect()
}

fn batch(rows: &[Row]) -> RecordBatch {
    let s = |f: &dyn Fn(&Row) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ts = |f: &dyn Fn(&Row) -> Option<i64>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(f)
                .collect::<TimestampMillisecondArray>()
                .with_timezone("+00:00"),
        )
    };
    let cols: Vec<ArrayRef> = vec![
        s(&|r| Some(r.alert_id.clone())),
        s(&|r| Some(r.signal.clone())),
        s(&|r| Some(r.grade.clone())),
        s(&|r| Some(r.queue.clone())),
        s(&|r| Some(r.device_id.clone())),
        s(&|r| r.lease_id.clone()),
        s(&|r| r.lease_id.as_ref().map(|l| l.replace("L-", "C-"))),
        ts(&|r| Some(r.event_time)),
        ts(&|_| None),
        ts(&|_| None),
        Arc::new(rows.iter().map(|r| r.days_past_due).collect::<Int32Array>()),
        s(&|r| Some(["A", "B", "C", "D", "E"][r.event_time as usize % 5].to_string())),
        Arc::new(rows.iter().map(|r| r.lat).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.lon).collect::<Float64Array>()),
        s(&|r| {
            Some(format!(
                r#"[{{"rule":"{}","value":1.0,"threshold":0.5}}]"#,
                r.signal
            ))
        }),
    ];
    RecordBatch::try_new(alert_archive_schema(), cols).unwrap()
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn leasewatch(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leasewatch"))
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

fn report(archive: &Path, out: &Path) -> Output {
    leasewatch(&[
        "--archive".as_ref(),
        archive.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A table row as the page writes it: `<th scope="row">key</th>` then numeric cells.
fn row_html(key: &str, nums: &[u64]) -> String {
    let mut s = format!("<tr><th scope=\"row\">{key}</th>");
    for n in nums {
        s.push_str(&format!("<td class=\"num\">{n}</td>"));
    }
    s
}

fn dpd_bucket(d: i32) -> &'static str {
    match d {
        ..=0 => "0",
        1..=2 => "1-2",
        3..=6 => "3-6",
        7..=14 => "7-14",
        15..=59 => "15-59",
        _ => "60+",
    }
}

fn count_by<'a>(rows: &'a [Row], key: impl Fn(&'a Row) -> &'a str) -> BTreeMap<&'a str, u64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(key(r)).or_insert(0) += 1;
    }
    m
}

#[test]
fn report_numbers_match_the_archive_and_the_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let all = rows(360);
    // Three files in day folders, 12 rows written twice (an at-least-once replay), an
    // empty file, and files the report must ignore.
    write_parquet(
        &archive.join("day=2026-01-01/part-0.parquet"),
        &batch(&all[..150]),
    );
    write_parquet(
        &archive.join("day=2026-01-02/part-0.parquet"),
        &batch(&all[150..]),
    );
    write_parquet(
        &archive.join("day=2026-01-02/part-1-replayed.parquet"),
        &batch(&all[140..152]),
    );
    write_parquet(&archive.join("empty.parquet"), &batch(&[]));
    std::fs::write(archive.join("_SUCCESS"), "").unwrap();
    std::fs::write(archive.join("day=2026-01-01/notes.txt"), "not data").unwrap();

    let out = dir.path().join("report.html");
    let o = report(&archive, &out);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "report: 372 alert rows (360 distinct alerts) from 4 Parquet files -> {}",
            out.display()
        ),
        "{stderr}"
    );
    let html = std::fs::read_to_string(&out).unwrap();

    // Every figure against counts made here.
    for id in [
        "summary",
        "by-signal",
        "by-grade",
        "by-area",
        "overdue",
        "funnel",
        "top-devices",
        "definitions",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{id}\">")),
            "no section {id}"
        );
    }
    assert!(html.contains("<dt>Alerts</dt><dd>360</dd>"), "{html}");
    assert!(
        html.contains("372 alert rows read; 12 repeated an alert id"),
        "duplicates"
    );
    let devices: BTreeSet<&str> = all.iter().map(|r| r.device_id.as_str()).collect();
    assert!(html.contains(&format!("<dt>Devices</dt><dd>{}</dd>", devices.len())));

    let by_signal = count_by(&all, |r| &r.signal);
    assert_eq!(by_signal.len(), SignalKind::ALL.len());
    for (sig, n) in &by_signal {
        assert!(
            html.contains(&row_html(sig, &[*n])),
            "signal {sig}: {n} alerts not in the page"
        );
    }
    let by_grade = count_by(&all, |r| &r.grade);
    assert_eq!(by_grade.len(), Grade::ALL.len());
    for (g, n) in &by_grade {
        assert!(html.contains(&row_html(g, &[*n])), "grade {g}: {n}");
    }
    for q in Queue::ALL {
        let qr: Vec<&Row> = all.iter().filter(|r| r.queue == q.as_str()).collect();
        assert!(!qr.is_empty(), "the test data misses queue {q:?}");
        let devices: BTreeSet<_> = qr.iter().map(|r| &r.device_id).collect();
        let leases: BTreeSet<_> = qr.iter().filter_map(|r| r.lease_id.as_ref()).collect();
        let want = row_html(
            q.as_str(),
            &[qr.len() as u64, devices.len() as u64, leases.len() as u64],
        );
        assert!(html.contains(&want), "queue {q:?}: {want}");
    }
    // The funnel: leases whose furthest ladder step is at least this one.
    let ladder = ["sms", "call", "field", "legal"];
    let mut furthest: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &all {
        if let Some(l) = &r.lease_id {
            let step = ladder
                .iter()
                .position(|q| *q == r.queue)
                .map_or(0, |p| p + 1);
            let e = furthest.entry(l).or_insert(0);
            *e = (*e).max(step);
        }
    }
    for (k, q) in ladder.iter().enumerate() {
        let reached = furthest.values().filter(|s| **s > k).count();
        let start = html
            .find(&format!("<tr><th scope=\"row\">{q}</th>"))
            .unwrap();
        let line = &html[start..start + html[start..].find("</tr>").unwrap()];
        assert!(
            line.contains(&format!("<td class=\"num\">{reached}</td>")),
            "funnel {q}: {reached} in {line}"
        );
    }
    // Overdue by DPD bucket: each lease's latest known DPD.
    let mut latest: BTreeMap<&str, (i64, i32)> = BTreeMap::new();
    let mut leases = BTreeSet::new();
    for r in &all {
        let Some(l) = &r.lease_id else { continue };
        leases.insert(l.as_str());
        if let Some(d) = r.days_past_due {
            let e = latest.entry(l).or_insert((i64::MIN, i32::MIN));
            if (r.event_time, d) > *e {
                *e = (r.event_time, d);
            }
        }
    }
    let mut buckets: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, d) in latest.values() {
        *buckets.entry(dpd_bucket(*d)).or_insert(0) += 1;
    }
    let known = latest.len() as u64;
    for b in ["0", "1-2", "3-6", "7-14", "15-59", "60+"] {
        let n = buckets.get(b).copied().unwrap_or(0);
        let want = format!(
            "<tr><th scope=\"row\">{b}</th><td class=\"num\">{n}</td><td class=\"num\">{:.1}%</td></tr>",
            n as f64 * 100.0 / known as f64
        );
        assert!(html.contains(&want), "DPD bucket {b}: {want}");
    }
    let unknown = leases.len() as u64 - known;
    assert!(html.contains(&format!(
        "<tr><th scope=\"row\">unknown</th><td class=\"num\">{unknown}</td>"
    )));
    let overdue = buckets
        .iter()
        .filter(|(b, _)| **b != "0")
        .map(|(_, n)| n)
        .sum::<u64>();
    assert!(html.contains(&format!(
        "Overdue rate: <strong>{:.1}%</strong> of the {known} leases",
        overdue as f64 * 100.0 / known as f64
    )));
    // Areas: the invalid latitude and the missing positions are in no cell.
    let unplaced = all
        .iter()
        .filter(|r| r.lat.is_none_or(|lat| lat > 90.0))
        .count();
    assert!(
        html.contains(&format!(
            "4 cells hold alerts; the table lists up to 20. {unplaced} alerts have no valid position"
        )),
        "areas"
    );
    // Top device: most alerts, ties by id.
    let by_device = count_by(&all, |r| &r.device_id);
    let (top, n) = by_device
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .unwrap();
    assert_eq!(
        *top, HOSTILE_DEVICE,
        "the test data should make it the top device"
    );
    let top = "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#39;";
    let table_start = html.find("<table id=\"device-table\">").unwrap();
    let first_row = html[table_start..].find("<tr><th scope=\"row\">").unwrap() + table_start;
    assert!(
        html[first_row..].starts_with(&row_html(top, &[*n])),
        "top device {top} ({n}): {}",
        &html[first_row..first_row + 200]
    );
    // Data is escaped: the hostile device id never appears raw.
    assert!(!html.contains(HOSTILE_DEVICE));
    assert!(!html.contains("<img"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("onerror=alert(1)>"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#39;"));
    // Self-contained: nothing to fetch.
    for needle in ["src=\"http", "href=\"http", "url(", "@import", "<link"] {
        assert!(!html.contains(needle), "page references {needle}");
    }
    assert!(html.matches("<svg").count() >= 6, "charts");

    // The same archive gives the same bytes.
    let again = dir.path().join("again.html");
    assert!(report(&archive, &again).status.success());
    assert_eq!(html, std::fs::read_to_string(&again).unwrap());

    render_in_chromium(&out, "report");
}

#[test]
fn an_archive_of_empty_files_gives_a_report_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("a/empty.parquet"), &batch(&[]));
    let out = dir.path().join("r.html");
    let o = report(&dir.path().join("a"), &out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout)
            .starts_with("report: 0 alert rows (0 distinct alerts) from 1 Parquet file -> "),
        "{}",
        text(&o.stdout)
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<section id=\"empty\">"));
    assert!(html.contains("holds no alert rows"));
    render_in_chromium(&out, "report-empty");
}

/// Runs the report expecting failure: exit code 2 (the user's to fix) and `needles` in
/// the one error line, no panic.
fn expect_user_error(archive: &Path, needles: &[&str]) {
    let out = archive.with_extension("html");
    let o = report(archive, &out);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("leasewatch: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert!(!out.exists(), "a report was written");
}

#[test]
fn bad_archives_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    expect_user_error(&missing, &["no such directory", "missing"]);

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("sub/readme.txt"), "hi").unwrap();
    expect_user_error(&empty, &["no *.parquet files"]);

    let not_parquet = dir.path().join("not-parquet");
    write_parquet(&not_parquet.join("good.parquet"), &batch(&rows(5)));
    std::fs::write(
        not_parquet.join("bad.parquet"),
        "alert_id,signal\nA,tamper\n",
    )
    .unwrap();
    expect_user_error(
        &not_parquet,
        &["bad.parquet", "not a readable Parquet file"],
    );

    let wrong = dir.path().join("wrong-schema");
    let b = batch(&rows(5));
    let keep: Vec<usize> = ["alert_id", "signal", "device_id", "event_time"]
        .iter()
        .map(|c| b.schema().index_of(c).unwrap())
        .collect();
    write_parquet(&wrong.join("pings.parquet"), &b.project(&keep).unwrap());
    expect_user_error(
        &wrong,
        &[
            "pings.parquet",
            "required column grade is missing",
            "required column queue is missing",
        ],
    );

    let typed = dir.path().join("wrong-type");
    let schema = arrow::datatypes::Schema::new(
        b.schema()
            .fields()
            .iter()
            .map(|f| {
                if f.name() == "lat" {
                    arrow::datatypes::Field::new("lat", arrow::datatypes::DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
    );
    let mut cols = b.columns().to_vec();
    let lat = b.schema().index_of("lat").unwrap();
    cols[lat] = Arc::new(StringArray::from(vec![Some("north"); b.num_rows()]));
    write_parquet(
        &typed.join("x.parquet"),
        &RecordBatch::try_new(Arc::new(schema), cols).unwrap(),
    );
    expect_user_error(
        &typed,
        &["x.parquet", "column lat is Utf8, expected Float64"],
    );
}

// ---------------------------------------------------------------------------------------
// Headless Chromium.

/// Runs Chromium with `args` on `page` with a fresh profile, killing it after a minute.
fn chromium(page: &Path, args: &[&str]) -> (bool, String, String) {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: the report test renders the page in headless Chromium. \
         Run scripts/test (it installs the Debian package `chromium`), or \
         `apt-get install -y chromium`."
    );
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Console messages (script errors, CSP violations) go to stderr only with
            // logging on.
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} did not finish in 60 s: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// Chromium's log lines that mean the page itself misbehaved: console messages, script
/// errors, blocked loads (the page's Content-Security-Policy refusing something it tried
/// to fetch), failed loads.
fn page_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Refused to")
                || l.contains("Content Security Policy")
                || l.contains("net::ERR_")
        })
        .collect()
}

/// The console check above sees what it should: a page with a script error and a blocked
/// outside image is caught (so a Chromium that stops logging them fails here, not
/// silently).
#[test]
fn chromium_reports_page_errors() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>\
         <img src=\"https://example.invalid/x.png\"><script>throw new Error('bad')</script>\
         </body></html>",
    )
    .unwrap();
    let (ok, _, err) = chromium(&page, &["--dump-dom"]);
    assert!(ok, "{err}");
    let errors = page_errors(&err);
    assert!(
        errors.iter().any(|l| l.contains("Uncaught Error: bad")),
        "script error not seen: {errors:?}"
    );
    assert!(
        errors.iter().any(|l| l.contains("example.invalid")),
        "blocked load not seen: {errors:?}"
    );
}

/// Opens `page` in headless Chromium: the DOM must hold the sections, tables and charts
/// and no sign of a broken render, the log no page error; saves a screenshot
/// `<CARGO_TARGET_TMPDIR>/<name>.png` and a copy of the page next to it, and prints both
/// paths.
fn render_in_chromium(page: &Path, name: &str) {
    let html = std::fs::read_to_string(page).unwrap();
    let (ok, dom, err) = chromium(page, &["--dump-dom"]);
    assert!(ok, "chromium --dump-dom failed:\n{err}");
    assert!(
        page_errors(&err).is_empty(),
        "page errors: {:?}",
        page_errors(&err)
    );
    assert!(dom.contains("<h1>LeaseWatch risk report</h1>"), "{dom}");
    assert!(dom.trim_end().ends_with("</html>"), "truncated DOM");
    for bad in [
        "<parsererror",
        "NaN",
        "undefined",
        "Infinity",
        "<script",
        "<img",
    ] {
        assert!(!dom.contains(bad), "the rendered DOM contains {bad}");
    }
    // The browser parsed the same structure the file holds.
    for tag in ["<section", "<table", "<svg", "<rect", "<tr>"] {
        assert_eq!(
            dom.matches(tag).count(),
            html.matches(tag).count(),
            "{tag} elements in the DOM and the file differ"
        );
    }
    if html.contains("id=\"empty\"") {
        assert!(dom.contains("id=\"empty\""));
    } else {
        for id in [
            "by-signal",
            "by-grade",
            "by-area",
            "overdue",
            "funnel",
            "top-devices",
        ] {
            let start = dom
                .find(&format!("<section id=\"{id}\">"))
                .unwrap_or_else(|| panic!("no section {id} in the DOM"));
            let section = &dom[start..start + dom[start..].find("</section>").unwrap()];
            assert!(
                section.contains("<svg") && section.contains("<table"),
                "section {id} has no chart or no table"
            );
        }
    }

    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.html"));
    std::fs::copy(page, &kept).unwrap();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let (ok, _, err) = chromium(
        page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400",
            "--hide-scrollbars",
        ],
    );
    assert!(ok, "chromium --screenshot failed:\n{err}");
    assert!(
        page_errors(&err).is_empty(),
        "page errors: {:?}",
        page_errors(&err)
    );
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{err}", shot.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!((be(&png[16..20]), be(&png[20..24])), (1280, 2400), "size");
    // A blank page compresses to a few kB; text and charts do not.
    assert!(
        png.len() > 20_000,
        "screenshot of {} bytes: blank?",
        png.len()
    );
    eprintln!("screenshot: {} (page: {})", shot.display(), kept.display());
}
