//! The generator end to end: the done-when command through the real binary, the
//! contracts of every file, determinism, and that planted incidents can be seen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use leasewatch_load::r#gen::geo::{Pos, cell_of, haversine_m};
use leasewatch_load::r#gen::{Format, GenConfig, generate};
use leasewatch_schemas::{
    CreditState, DevicePing, EventKind, LeaseState, Limits, ping_schema, validate_ping,
};

const BIN: &str = env!("CARGO_BIN_EXE_leasewatch-load");
const FILES: [&str; 7] = [
    "pings.ndjson",
    "leases.ndjson",
    "credit.ndjson",
    "places.geojson",
    "truth.csv",
    "tricky.csv",
    "manifest.json",
];

fn gen_bin(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("gen")
        .args(args)
        .arg("--out")
        .arg(dir)
        .arg("--quiet")
        .output()
        .expect("run leasewatch-load")
}

#[derive(Debug)]
struct Row {
    kind: String,
    device: String,
    start: i64,
    end: i64,
}

fn read_spans(path: &Path, header: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            Row {
                kind: f[1].to_string(),
                device: f[2].to_string(),
                start: f[3].parse().unwrap(),
                end: f[4].parse().unwrap(),
            }
        })
        .collect()
}

fn inside(ring: &[(f64, f64)], p: (f64, f64)) -> bool {
    let (x, y) = p;
    let mut c = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let (xi, yi) = ring[i];
        let (xj, yj) = ring[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            c = !c;
        }
        j = i;
    }
    c
}

fn pings_by_device(pings: &[DevicePing]) -> BTreeMap<&str, Vec<&DevicePing>> {
    let mut m: BTreeMap<&str, Vec<&DevicePing>> = BTreeMap::new();
    for p in pings {
        m.entry(p.device_id.as_str()).or_default().push(p);
    }
    for v in m.values_mut() {
        v.sort_by_key(|p| p.event_time);
    }
    m
}

fn in_span<'a>(v: &'a [&'a DevicePing], lo: i64, hi: i64) -> Vec<&'a DevicePing> {
    v.iter()
        .copied()
        .filter(|p| p.event_time >= lo && p.event_time <= hi)
        .collect()
}

const SKEW: i64 = 31_000;

/// The done-when command, through the real binary; then every file is checked.
#[test]
fn done_when_command_produces_a_checked_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    let out = gen_bin(&dir, &["--devices", "1000", "--days", "2", "--seed", "7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in FILES {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // Truth and tricky spans: every kind present.
    let truth = read_spans(
        &dir.join("truth.csv"),
        "incident_id,kind,device_id,start_ms,end_ms",
    );
    let kinds: BTreeSet<&str> = truth.iter().map(|r| r.kind.as_str()).collect();
    for k in [
        "sim_mismatch",
        "sim_swap_frequent",
        "out_of_area",
        "risky_place_dwell",
        "abnormal_dwell",
        "impossible_travel",
        "cross_border",
        "device_dark",
        "tamper",
        "overdue",
    ] {
        assert!(kinds.contains(k), "truth.csv lacks {k}");
    }
    let tricky = read_spans(
        &dir.join("tricky.csv"),
        "episode_id,kind,device_id,start_ms,end_ms",
    );
    let tkinds: BTreeSet<&str> = tricky.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        tkinds,
        BTreeSet::from([
            "domestic_flight",
            "night_switch_off",
            "poor_accuracy_jump",
            "registered_new_sim"
        ])
    );

    // Manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["params"]["devices"], 1000);
    assert_eq!(manifest["params"]["seed"], 7);
    assert_eq!(manifest["params"]["format"], "ndjson");
    let start_ms = manifest["start_ms"].as_i64().unwrap();
    let end_ms = manifest["end_ms"].as_i64().unwrap();
    assert_eq!(end_ms - start_ms, 2 * 86_400_000);

    // Leases and credit.
    let leases: Vec<LeaseState> = std::fs::read_to_string(dir.join("leases.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let credit: Vec<CreditState> = std::fs::read_to_string(dir.join("credit.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(leases.len(), 1000);
    assert_eq!(credit.len(), 1000);
    let countries: BTreeSet<&str> = leases.iter().map(|l| l.lease_country.as_str()).collect();
    assert!(countries.len() >= 3);
    for l in &leases {
        assert!(!l.permitted_cells.is_empty() && l.permitted_cells.len() < 400);
        assert_eq!(l.area_res, 7);
    }
    for c in &credit {
        assert!((300..=850).contains(&c.score));
    }
    let lease_of: BTreeMap<&str, &LeaseState> =
        leases.iter().map(|l| (l.device_id.as_str(), l)).collect();
    let overdue: BTreeSet<&str> = truth
        .iter()
        .filter(|r| r.kind == "overdue")
        .map(|r| r.device.as_str())
        .collect();
    for l in &leases {
        assert_eq!(overdue.contains(l.device_id.as_str()), l.days_past_due >= 3);
    }

    // Pings: serde, validation, order, arrow-json decoding.
    let text = std::fs::read_to_string(dir.join("pings.ndjson")).unwrap();
    let pings: Vec<DevicePing> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        manifest["files"]["pings"]["records"].as_u64(),
        Some(pings.len() as u64)
    );
    let limits = Limits::default();
    let mut last_rt = i64::MIN;
    let mut late = 0;
    for p in &pings {
        let rt = p.receive_time.unwrap();
        let problems = validate_ping(p, rt, &limits);
        assert!(problems.is_empty(), "{p:?}: {problems:?}");
        assert!(rt >= last_rt, "file not in receive-time order");
        last_rt = rt;
        if rt - p.event_time > 10 * 60_000 {
            late += 1;
        }
        assert!(lease_of.contains_key(p.device_id.as_str()));
    }
    assert!(late > 100, "too few late uploads: {late}");
    let mut decoder = arrow_json::ReaderBuilder::new(ping_schema())
        .with_strict_mode(true)
        .with_batch_size(65_536)
        .build_decoder()
        .unwrap();
    let mut rows = 0;
    let bytes = text.as_bytes();
    let mut off = 0;
    while off < bytes.len() {
        let n = decoder.decode(&bytes[off..]).unwrap();
        off += n;
        if let Some(b) = decoder.flush().unwrap() {
            assert_eq!(b.schema(), ping_schema());
            rows += b.num_rows();
        }
    }
    if let Some(b) = decoder.flush().unwrap() {
        rows += b.num_rows();
    }
    assert_eq!(rows, pings.len());

    // Places.
    let places: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("places.geojson")).unwrap())
            .unwrap();
    assert_eq!(places["type"], "FeatureCollection");
    let mut risky: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut pkinds = BTreeSet::new();
    for f in places["features"].as_array().unwrap() {
        assert_eq!(f["geometry"]["type"], "Polygon");
        let kind = f["properties"]["kind"].as_str().unwrap().to_string();
        assert!(f["properties"]["id"].is_string() && f["properties"]["name"].is_string());
        let ring: Vec<(f64, f64)> = f["geometry"]["coordinates"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap()))
            .collect();
        assert_eq!(ring.first(), ring.last());
        if kind != "border_crossing" {
            risky.push(ring);
        }
        pkinds.insert(kind);
    }
    assert_eq!(pkinds.len(), 3);

    // Incidents are observable in the pings.
    let by_dev = pings_by_device(&pings);
    let empty = Vec::new();
    let mut checked: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &truth {
        let v = by_dev.get(r.device.as_str()).unwrap_or(&empty);
        let lease = lease_of[r.device.as_str()];
        let span = in_span(v, r.start - SKEW, r.end + SKEW);
        let inner = in_span(v, r.start + SKEW, r.end - SKEW);
        if r.end == end_ms && span.is_empty() {
            // Cut by the end of the run before anything could be seen.
            continue;
        }
        match r.kind.as_str() {
            "tamper" => assert!(
                span.iter().any(|p| p.agent_active == Some(false)
                    || p.rooted == Some(true)
                    || p.mock_location == Some(true)
                    || p.mdm_active == Some(false)
                    || matches!(
                        p.event_kind,
                        EventKind::AgentRemoved | EventKind::FactoryReset
                    )),
                "{r:?}"
            ),
            "device_dark" => {
                assert!(r.end - r.start >= 6 * 3_600_000, "{r:?}");
                assert!(
                    v.iter()
                        .all(|p| p.event_time <= r.start || p.event_time >= r.end),
                    "{r:?}"
                );
            }
            "sim_mismatch" => {
                assert!(!inner.is_empty() || r.end - r.start < 5 * 60_000, "{r:?}");
                for p in &inner {
                    assert_ne!(p.iccid, lease.registered_iccid, "{r:?}");
                }
            }
            "sim_swap_frequent" => {
                let ids: BTreeSet<_> = in_span(v, r.start - 60_000, r.end + 10 * 60_000)
                    .iter()
                    .filter_map(|p| p.iccid.clone())
                    .collect();
                assert!(ids.len() >= 3, "{r:?}");
            }
            "risky_place_dwell" => {
                assert!(r.end - r.start >= 45 * 60_000 || r.end == end_ms);
                let fixes: Vec<_> = inner.iter().filter(|p| p.lat.is_some()).collect();
                let ins = fixes
                    .iter()
                    .filter(|p| {
                        let pt = (p.lon.unwrap(), p.lat.unwrap());
                        risky.iter().any(|ring| inside(ring, pt))
                    })
                    .count();
                assert!(
                    fixes.len() >= 5 && ins * 10 >= fixes.len() * 9,
                    "{r:?} {ins}/{}",
                    fixes.len()
                );
            }
            "cross_border" => {
                let home_mcc = v.first().and_then(|p| p.mcc);
                let abroad = span.iter().any(|p| p.mcc.is_some() && p.mcc != home_mcc);
                let far = span.iter().any(|p| p.lat.is_some());
                assert!(abroad || far, "{r:?}");
            }
            "impossible_travel" => {
                let mut fast = false;
                for w in v.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    if b.event_time < r.start - SKEW || b.event_time > r.end + SKEW {
                        continue;
                    }
                    if let (Some(la), Some(lo), Some(lb), Some(ob)) = (a.lat, a.lon, b.lat, b.lon) {
                        let d = haversine_m(Pos::new(la, lo), Pos::new(lb, ob));
                        let h = (b.event_time - a.event_time).max(1) as f64 / 3.6e6;
                        if d / 1000.0 / h > 1500.0 {
                            fast = true;
                        }
                    }
                }
                assert!(fast, "{r:?}");
            }
            "out_of_area" | "abnormal_dwell" => {
                let fixes: Vec<_> = inner.iter().filter(|p| p.lat.is_some()).collect();
                let outside = fixes
                    .iter()
                    .filter(|p| {
                        let c = cell_of(Pos::new(p.lat.unwrap(), p.lon.unwrap())).unwrap();
                        lease.permitted_cells.binary_search(&c).is_err()
                    })
                    .count();
                // Span edges are sampled each minute on the true track; a fix or
                // two at the edge may still fall inside.
                assert!(
                    !fixes.is_empty() && outside * 4 >= fixes.len() * 3,
                    "{r:?} {outside}/{}",
                    fixes.len()
                );
                if r.kind == "abnormal_dwell" && r.end < end_ms {
                    assert!(r.end - r.start >= 6 * 3_600_000, "{r:?}");
                }
            }
            "overdue" => assert!(lease.days_past_due >= 3),
            k => panic!("unexpected kind {k}"),
        }
        *checked.entry(r.kind.as_str()).or_default() += 1;
    }
    assert_eq!(checked.len(), 10);

    // Devices without a location incident never leave their permitted area for long.
    let located: BTreeSet<&str> = truth
        .iter()
        .filter(|r| r.kind == "out_of_area")
        .map(|r| r.device.as_str())
        .collect();
    let mut outside_pings = 0usize;
    let mut examples = Vec::new();
    let mut fixes = 0usize;
    for (dev, v) in &by_dev {
        if located.contains(dev) {
            continue;
        }
        let lease = lease_of[dev];
        for p in v {
            let (Some(la), Some(lo), Some(acc)) = (p.lat, p.lon, p.accuracy_m) else {
                continue;
            };
            if acc > 400.0 {
                continue;
            }
            fixes += 1;
            let c = cell_of(Pos::new(la, lo)).unwrap();
            if lease.permitted_cells.binary_search(&c).is_err() {
                outside_pings += 1;
                if examples.len() < 5 {
                    examples.push(format!("{dev}@{}", p.event_time));
                }
            }
        }
    }
    assert!(
        outside_pings * 10_000 < fixes,
        "{outside_pings} of {fixes} ordinary fixes are outside the permitted area, e.g. {examples:?}"
    );

    // Tricky episodes look as intended.
    for r in &tricky {
        let v = by_dev.get(r.device.as_str()).unwrap_or(&empty);
        let lease = lease_of[r.device.as_str()];
        match r.kind.as_str() {
            "registered_new_sim" => {
                let after = in_span(v, r.start + SKEW, r.end);
                assert!(!after.is_empty());
                assert!(after.iter().all(|p| p.iccid == lease.registered_iccid));
                assert!(v.iter().any(|p| p.iccid != lease.registered_iccid));
            }
            "night_switch_off" => {
                let s = in_span(v, r.start - SKEW, r.end + SKEW);
                let down = s.iter().position(|p| p.event_kind == EventKind::Shutdown);
                let up = s.iter().rposition(|p| p.event_kind == EventKind::Boot);
                let (Some(down), Some(up)) = (down, up) else {
                    panic!("{r:?}: no shutdown and boot")
                };
                assert_eq!(up, down + 1, "{r:?}: pings while switched off");
                assert!(r.end - r.start >= 6 * 3_600_000);
            }
            "poor_accuracy_jump" => {
                let s = in_span(v, r.start - SKEW, r.end + SKEW);
                assert!(s.iter().any(|p| p.accuracy_m.is_some_and(|a| a >= 500.0)));
            }
            "domestic_flight" => {
                // The flight is the longest silence in the episode.
                let s = in_span(v, r.start - SKEW, r.end + SKEW);
                let (a, b) = s
                    .windows(2)
                    .map(|w| (w[0], w[1]))
                    .max_by_key(|(a, b)| b.event_time - a.event_time)
                    .unwrap();
                assert!(b.event_time - a.event_time > 30 * 60_000, "{r:?}");
                let d = haversine_m(
                    Pos::new(a.lat.unwrap(), a.lon.unwrap()),
                    Pos::new(b.lat.unwrap(), b.lon.unwrap()),
                );
                let h = (b.event_time - a.event_time) as f64 / 3.6e6;
                let kmh = d / 1000.0 / h;
                assert!((300.0..1000.0).contains(&kmh), "{r:?} {kmh} km/h");
            }
            k => panic!("unexpected tricky kind {k}"),
        }
    }
}

fn read_all(dir: &Path, files: &[&str]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
}

fn config(dir: &Path, seed: u64, format: Format) -> GenConfig {
    GenConfig {
        devices: 150,
        days: 2,
        seed,
        out: dir.to_path_buf(),
        format,
        start: "2026-06-01".into(),
        quiet: true,
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    generate(&config(&a, 11, Format::Ndjson)).unwrap();
    generate(&config(&b, 11, Format::Ndjson)).unwrap();
    generate(&config(&c, 12, Format::Ndjson)).unwrap();
    let (fa, fb, fc) = (
        read_all(&a, &FILES),
        read_all(&b, &FILES),
        read_all(&c, &FILES),
    );
    for (i, f) in FILES.iter().enumerate() {
        assert!(
            fa[i] == fb[i],
            "{f} differs between two runs with the same seed"
        );
        if *f != "manifest.json" {
            assert!(fa[i] != fc[i], "{f} is the same for different seeds");
        }
    }
}

#[test]
fn parquet_reads_back_with_the_ping_schema_and_the_same_rows() {
    use arrow::array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("nd"), tmp.path().join("pq"));
    let m1 = generate(&config(&a, 5, Format::Ndjson)).unwrap();
    let m2 = generate(&config(&b, 5, Format::Parquet)).unwrap();
    assert!(b.join("pings.parquet").is_file());
    assert!(!b.join("pings.ndjson").exists());
    let f = std::fs::File::open(b.join("pings.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = 0;
    let mut first_ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        assert_eq!(batch.schema().fields(), ping_schema().fields());
        if first_ids.is_empty() {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            first_ids = (0..3.min(ids.len()))
                .map(|i| ids.value(i).to_string())
                .collect();
        }
        rows += batch.num_rows();
    }
    let n1 = m1.files["pings"].records;
    assert_eq!(rows as u64, m2.files["pings"].records);
    assert_eq!(n1, m2.files["pings"].records);
    // Same pings in the same order as the NDJSON of the same seed.
    let text = std::fs::read_to_string(a.join("pings.ndjson")).unwrap();
    let nd_ids: Vec<String> = text
        .lines()
        .take(3)
        .map(|l| serde_json::from_str::<DevicePing>(l).unwrap().device_id)
        .collect();
    assert_eq!(first_ids, nd_ids);
    // The other files do not depend on the format.
    for f in ["truth.csv", "leases.ndjson", "tricky.csv"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn bad_arguments_fail_clearly_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    for (args, needle) in [
        (vec!["--devices", "0", "--days", "1"], "--devices"),
        (vec!["--devices", "5", "--days", "0"], "--days"),
        (
            vec!["--devices", "5", "--days", "1", "--start", "2026-13-01"],
            "--start",
        ),
    ] {
        let out = gen_bin(&dir, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A directory that cannot be created: below a regular file.
    let file = tmp.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let out = gen_bin(&file.join("sub"), &["--devices", "5", "--days", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sub") && !err.contains("panicked"), "{err}");
}
