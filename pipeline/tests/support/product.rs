//! The product pipeline (`sql/`) for integration tests: its SQL copied with the archive
//! path moved into a temp dir, pings and lease/credit state built from the contracts,
//! places in and around Nairobi, and readers for captured alerts and queue streams.

use super::redis::RedisServer;
use arrow::array::RecordBatch;
use leasewatch::engine::{Engine, EngineOptions, Lane};
use leasewatch::sink::redis::{alerts_from_batch, message_from_fields};
use leasewatch_schemas::{
    Alert, CreditBand, CreditState, DevicePing, EventKind, Keys, LeaseState, LeaseStatus, Queue,
    QueueMessage,
};
use std::path::{Path, PathBuf};

/// 2026-03-02T00:00:00Z, ms: the start of every test timeline.
pub const T0: i64 = 1_772_409_600_000;
/// One minute, ms.
pub const MIN: i64 = 60_000;
/// One hour, ms.
pub const HOUR: i64 = 3_600_000;

/// A named place, degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub lat: f64,
    pub lon: f64,
}

/// Westlands, Nairobi: homes are around here (each device a little apart).
pub const NAIROBI: Place = Place {
    lat: -1.2676,
    lon: 36.8108,
};
/// Nairobi CBD: the pawn shop of [`write_geofences`] (about 2 km from the homes).
pub const PAWN_SHOP: Place = Place {
    lat: -1.2864,
    lon: 36.8172,
};
/// Nakuru, about 140 km north-west of Nairobi: outside every Nairobi permitted area.
pub const NAKURU: Place = Place {
    lat: -0.3031,
    lon: 36.0800,
};
/// Lodwar, about 500 km north of Nairobi.
pub const LODWAR: Place = Place {
    lat: 3.1191,
    lon: 35.5973,
};

/// Kenya's MCC (the lease country of every test lease).
pub const MCC_KE: u16 = 639;
/// Uganda's MCC.
pub const MCC_UG: u16 = 641;

/// The home of device number `n`: Westlands plus `n` × ~100 m east.
pub fn home(n: u32) -> Place {
    Place {
        lat: NAIROBI.lat,
        lon: NAIROBI.lon + 0.001 * f64::from(n),
    }
}

/// The H3 cell of `p` at `res`.
pub fn cell(p: Place, res: u8) -> i64 {
    let r = leasewatch_udfs::core::h3::resolution(i64::from(res)).expect("resolution");
    leasewatch_udfs::core::h3::cell(p.lat, p.lon, r).expect("cell")
}

/// `digits` followed by its Luhn check digit.
pub fn with_luhn(digits: &str) -> String {
    let sum: u32 = digits
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).expect("decimal digits");
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// A valid IMEI for device number `n` of test `test` (so ids never collide across tests).
pub fn imei(test: u32, n: u32) -> String {
    with_luhn(&format!("35{test:04}{n:08}"))
}

/// A valid ICCID (19 digits) number `n`.
pub fn iccid(n: u32) -> String {
    with_luhn(&format!("896390{n:012}"))
}

/// A healthy heartbeat of `device` at `t` at `p`, with SIM `sim`, on the Kenyan network.
pub fn ping(device: &str, t: i64, p: Place, sim: &str) -> DevicePing {
    DevicePing {
        device_id: device.to_string(),
        event_time: t,
        receive_time: None,
        seq: None,
        lat: Some(p.lat),
        lon: Some(p.lon),
        accuracy_m: Some(15.0),
        iccid: Some(sim.to_string()),
        imsi: None,
        mcc: Some(MCC_KE),
        mnc: Some("02".into()),
        battery_pct: Some(80),
        charging: Some(false),
        network_type: None,
        agent_active: Some(true),
        mdm_active: Some(true),
        rooted: Some(false),
        mock_location: Some(false),
        event_kind: EventKind::Heartbeat,
    }
}

/// Heartbeats of `device` at `p` every `every` ms in `[from, to]`.
pub fn heartbeats(
    device: &str,
    from: i64,
    to: i64,
    every: i64,
    p: Place,
    sim: &str,
) -> Vec<DevicePing> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        out.push(ping(device, t, p, sim));
        t += every;
    }
    out
}

/// Pings as Arrow batches of `ping_schema()` (through the NDJSON decoder of ingest),
/// sorted by event time, `rows` per batch.
pub fn batches(pings: &[DevicePing], rows: usize) -> Vec<RecordBatch> {
    let mut sorted = pings.to_vec();
    sorted.sort_by(|a, b| {
        a.event_time
            .cmp(&b.event_time)
            .then_with(|| a.device_id.cmp(&b.device_id))
    });
    sorted
        .chunks(rows.max(1))
        .map(|chunk| {
            let text: String = chunk
                .iter()
                .map(|p| serde_json::to_string(p).expect("ping JSON") + "\n")
                .collect();
            let d = leasewatch::ingest::decode_ndjson(text.as_bytes(), chunk.len())
                .expect("decode pings");
            assert!(
                d.rejected.is_empty(),
                "test pings rejected: {:?}",
                d.rejected
            );
            d.batch
        })
        .collect()
}

/// A lease of `device` for customer `customer`, paid up, in Kenya, permitted around
/// `places` (H3 res 7), with `sim` registered (None: no SIM registered).
pub fn lease(device: &str, customer: &str, places: &[Place], sim: Option<&str>) -> LeaseState {
    LeaseState {
        lease_id: format!("L-{device}"),
        device_id: device.to_string(),
        customer_id: customer.to_string(),
        registered_iccid: sim.map(str::to_string),
        registered_imsi: None,
        lease_country: "KE".into(),
        permitted_cells: places.iter().map(|p| cell(*p, 7)).collect(),
        area_res: 7,
        status: LeaseStatus::Active,
        due_date: "2026-02-20".into(),
        days_past_due: 0,
        amount_due: 0,
        deposit: 5_000,
        monthly_rent: 2_500,
        currency: "KES".into(),
    }
}

/// `l` with `dpd` days past due (status and amount to match).
pub fn overdue(mut l: LeaseState, dpd: i32) -> LeaseState {
    l.days_past_due = dpd;
    if dpd > 0 {
        l.status = LeaseStatus::Overdue;
        l.amount_due = 2_500;
    }
    l
}

/// Credit state of `customer` in `band`.
pub fn credit(customer: &str, band: CreditBand) -> CreditState {
    CreditState {
        customer_id: customer.to_string(),
        score: match band {
            CreditBand::A => 780,
            CreditBand::B => 700,
            CreditBand::C => 620,
            CreditBand::D => 540,
            CreditBand::E => 450,
        },
        band,
        prior_defaults: 0,
        flags: vec!["kyc_passed".into()],
    }
}

/// Stores leases and credit under the default `lw:` layout.
pub fn put_state(server: &RedisServer, leases: &[LeaseState], credits: &[CreditState]) {
    let keys = Keys::default();
    let mut c = server.conn();
    let mut p = redis::pipe();
    for l in leases {
        p.cmd("SET")
            .arg(keys.lease(&l.device_id))
            .arg(serde_json::to_string(l).expect("lease JSON"))
            .ignore();
    }
    for cr in credits {
        p.cmd("SET")
            .arg(keys.credit(&cr.customer_id))
            .arg(serde_json::to_string(cr).expect("credit JSON"))
            .ignore();
    }
    p.exec(&mut c).expect("store state");
}

/// The product's SQL folder.
pub fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql")
}

/// The product's SQL files (`sql/*.sql`, sorted), with every filesystem sink's `path`
/// moved under `out` (so a test never writes into the checkout).
pub fn product_sql(out: &Path) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sql_dir())
        .expect("read sql/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no SQL files in sql/");
    files
        .iter()
        .map(|f| {
            let name = f.file_name().expect("name").to_string_lossy().to_string();
            let text = std::fs::read_to_string(f).expect("read SQL");
            (name, move_paths(&text, out))
        })
        .collect()
}

/// Rewrites `path = '<p>'` options to `'<out>/<p>'`.
fn move_paths(sql: &str, out: &Path) -> String {
    let mut result = String::with_capacity(sql.len());
    for line in sql.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_path = trimmed.starts_with("path") && {
            let rest = trimmed["path".len()..].trim_start();
            rest.starts_with('=')
        };
        match (is_path, line.find('\''), line.rfind('\'')) {
            (true, Some(a), Some(b)) if b > a => {
                let old = &line[a + 1..b];
                let new = out.join(old);
                result.push_str(&line[..=a]);
                result.push_str(new.to_str().expect("utf-8 temp path"));
                result.push_str(&line[b..]);
            }
            _ => result.push_str(line),
        }
    }
    result
}

/// Writes a GeoJSON FeatureCollection with one pawn shop (a ~200 m square around
/// [`PAWN_SHOP`]) as `places.geojson` in `dir`, the way `leasewatch-load gen` writes it.
pub fn write_geofences(dir: &Path) -> PathBuf {
    let d = 0.001;
    let (lat, lon) = (PAWN_SHOP.lat, PAWN_SHOP.lon);
    let ring = [
        [lon - d, lat - d],
        [lon + d, lat - d],
        [lon + d, lat + d],
        [lon - d, lat + d],
        [lon - d, lat - d],
    ];
    let doc = serde_json::json!({"type": "FeatureCollection", "features": [{
        "type": "Feature",
        "properties": {"id": "pawn-cbd-1", "kind": "pawn_shop", "name": "CBD pawn shop"},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }]});
    let path = dir.join("places.geojson");
    std::fs::write(&path, doc.to_string()).expect("write geofences");
    path
}

/// An engine over the product SQL (archive under `out`), reading state from `server`.
pub async fn product_engine(
    out: &Path,
    server: &RedisServer,
    geofences: Option<PathBuf>,
    capture_sinks: bool,
) -> Engine {
    lane_engine(out, server, geofences, capture_sinks, Lane::All).await
}

/// [`product_engine`] running the queries of `lane` only.
pub async fn lane_engine(
    out: &Path,
    server: &RedisServer,
    geofences: Option<PathBuf>,
    capture_sinks: bool,
    lane: Lane,
) -> Engine {
    let options = EngineOptions {
        capture_sinks,
        late_sink: None,
        geofences,
        redis_url: Some(server.url()),
        background_compaction: false,
        lane,
    };
    Engine::from_files(&product_sql(out), &options)
        .await
        .unwrap_or_else(|e| panic!("the product SQL does not load: {e}"))
}

/// Feeds `pings` in event-time order (`rows` per batch), sweeps the leases at the last
/// event time (as `leasewatch replay` does at the end of its input) and finishes.
pub async fn run_to_end(engine: &mut Engine, pings: &[DevicePing], rows: usize) {
    for b in batches(pings, rows) {
        engine.process(&b).await.expect("process");
    }
    if let Some(at) = engine.max_event_time() {
        engine.sweep_leases(at).await.expect("sweep");
    }
    engine.finish().await.expect("finish");
}

/// The alerts captured for sink `sink` (with `capture_sinks`).
pub fn captured_alerts(engine: &Engine, sink: &str) -> Vec<Alert> {
    engine
        .take_captured(sink)
        .iter()
        .flat_map(|b| alerts_from_batch(b).expect("captured rows are alerts"))
        .collect()
}

/// A stream entry: its id and message.
pub type StreamEntry = (String, QueueMessage);

/// Every entry of stream `key`, oldest first.
pub fn stream(server: &RedisServer, key: &str) -> Vec<StreamEntry> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut server.conn())
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, f)| {
            let m = message_from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .unwrap_or_else(|e| panic!("stream {key} entry {id}: {e}"));
            (id, m)
        })
        .collect()
}

/// `XLEN key`.
pub fn xlen(server: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut server.conn())
        .expect("XLEN")
}

/// Every queue stream's entries, by queue.
pub fn all_queues(server: &RedisServer) -> Vec<(Queue, Vec<StreamEntry>)> {
    let keys = Keys::default();
    Queue::ALL
        .into_iter()
        .map(|q| (q, stream(server, &keys.queue(q))))
        .collect()
}
