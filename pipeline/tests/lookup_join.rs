//! The Redis lookup join in SQL, through the real engine and a real `redis-server`: hit,
//! miss (LEFT keeps the row with nulls, INNER drops it), null key, malformed values, one
//! round trip per batch for the keys the cache lacks, and Redis killed and restarted
//! while a batch is in flight (the batch is held, nothing is lost).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use leasewatch::engine::{Engine, EngineOptions};
use leasewatch::lookup::LookupStatsSnapshot;
use leasewatch_schemas::{CreditBand, DevicePing};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::product::{
    HOUR, MIN, NAIROBI, T0, batches, credit, imei, lease, overdue, ping, put_state,
};
use support::redis::RedisServer;

/// Pings joined with lease state (LEFT), then credit state keyed by the lease's customer
/// (a null key when there is no lease), and the same pings joined INNER.
const SQL: &str = r#"
CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  iccid TEXT,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '2' MINUTE)
) WITH (connector = 'leasewatch');

CREATE TEMPORARY TABLE leases (
  key TEXT METADATA FROM 'key' PRIMARY KEY,
  lease_id TEXT,
  customer_id TEXT,
  registered_iccid TEXT,
  permitted_cells BIGINT[],
  days_past_due INT
) WITH (
  connector = 'redis',
  address = 'redis://127.0.0.1:1',
  format = 'json',
  'lookup.cache.max_bytes' = 1048576,
  'lookup.cache.ttl' = INTERVAL '60' SECOND
);

CREATE TEMPORARY TABLE credit (
  key TEXT METADATA FROM 'key' PRIMARY KEY,
  score INT,
  band TEXT
) WITH (
  connector = 'redis',
  address = 'redis://127.0.0.1:1',
  format = 'json',
  'lookup.cache.ttl' = INTERVAL '60' SECOND
);

CREATE TABLE left_out WITH (connector = 'blackhole');
CREATE TABLE inner_out WITH (connector = 'blackhole');

INSERT INTO left_out
SELECT p.device_id, l.key AS lease_key, l.lease_id, l.customer_id, l.days_past_due,
       l.permitted_cells, c.key AS credit_key, c.band
FROM pings p
LEFT JOIN leases l ON l.key = concat('lw:lease:', p.device_id)
LEFT JOIN credit c ON c.key = 'lw:credit:' || l.customer_id;

INSERT INTO inner_out
SELECT p.device_id, l.lease_id, l.days_past_due
FROM pings p
JOIN leases l ON l.key = concat('lw:lease:', p.device_id);
"#;

async fn engine(server: &RedisServer) -> Engine {
    let options = EngineOptions {
        capture_sinks: true,
        redis_url: Some(server.url()),
        ..EngineOptions::default()
    };
    Engine::from_files(&[("lookup.sql".to_string(), SQL.to_string())], &options)
        .await
        .expect("the lookup SQL loads")
}

fn stats(engine: &Engine, table: &str) -> LookupStatsSnapshot {
    engine
        .lookups()
        .iter()
        .find(|(n, _)| n == table)
        .map(|(_, l)| l.stats().snapshot())
        .unwrap_or_else(|| panic!("no lookup table {table}"))
}

/// One joined row, as the tests read it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    device: String,
    lease_key: Option<String>,
    lease_id: Option<String>,
    customer: Option<String>,
    dpd: Option<i32>,
    cells: Option<usize>,
    credit_key: Option<String>,
    band: Option<String>,
}

fn string(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
    let c = b.column_by_name(name).unwrap();
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
    let c = c.as_string::<i32>();
    c.is_valid(i).then(|| c.value(i).to_string())
}

fn int(b: &RecordBatch, name: &str, i: usize) -> Option<i32> {
    let c = b.column_by_name(name).unwrap();
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int32).unwrap();
    let c = c.as_primitive::<Int32Type>();
    c.is_valid(i).then(|| c.value(i))
}

fn left_rows(engine: &Engine) -> Vec<Row> {
    let mut out = Vec::new();
    for b in engine.take_captured("left_out") {
        let cells = b
            .column_by_name("permitted_cells")
            .unwrap()
            .as_list::<i32>();
        for i in 0..b.num_rows() {
            out.push(Row {
                device: string(&b, "device_id", i).unwrap(),
                lease_key: string(&b, "lease_key", i),
                lease_id: string(&b, "lease_id", i),
                customer: string(&b, "customer_id", i),
                dpd: int(&b, "days_past_due", i),
                cells: cells.is_valid(i).then(|| cells.value(i).len()),
                credit_key: string(&b, "credit_key", i),
                band: string(&b, "band", i),
            });
        }
    }
    out
}

fn inner_rows(engine: &Engine) -> Vec<(String, Option<String>, Option<i32>)> {
    let mut out = Vec::new();
    for b in engine.take_captured("inner_out") {
        for i in 0..b.num_rows() {
            out.push((
                string(&b, "device_id", i).unwrap(),
                string(&b, "lease_id", i),
                int(&b, "days_past_due", i),
            ));
        }
    }
    out
}

fn mget_calls(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
        .and_then(|r| r.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn count_by_device<T>(rows: &[T], device: impl Fn(&T) -> &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(device(r).to_string()).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn hit_miss_null_key_and_malformed_value_through_the_engine() {
    let server = RedisServer::start();
    let hit1 = imei(101, 1);
    let hit2 = imei(101, 2);
    let no_credit = imei(101, 3);
    let missing = imei(101, 4);
    let malformed = imei(101, 5);
    let wrong_type = imei(101, 6);
    put_state(
        &server,
        &[
            lease(&hit1, "C-1", &[NAIROBI], None),
            overdue(lease(&hit2, "C-2", &[NAIROBI], None), 9),
            lease(&no_credit, "C-none", &[NAIROBI], None),
        ],
        &[credit("C-1", CreditBand::A), credit("C-2", CreditBand::D)],
    );
    let mut c = server.conn();
    let _: () = redis::cmd("SET")
        .arg(format!("lw:lease:{malformed}"))
        .arg(r#"{"lease_id":"L-bad","customer_id":"#)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("lw:lease:{wrong_type}"))
        .arg(r#"{"lease_id":"L-wrong","days_past_due":"ten"}"#)
        .query(&mut c)
        .unwrap();

    let mut e = engine(&server).await;
    // Batch 1: every kind of key, some twice.
    let devices = [
        &hit1,
        &hit2,
        &no_credit,
        &missing,
        &malformed,
        &wrong_type,
        &hit1,
        &missing,
    ];
    let pings: Vec<DevicePing> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| ping(d, T0 + i as i64 * MIN, NAIROBI, "x"))
        .collect();
    let b1 = batches(&pings, 100);
    assert_eq!(b1.len(), 1);
    let first_lookup = Instant::now();
    e.process(&b1[0]).await.unwrap();

    let rows = left_rows(&e);
    assert_eq!(rows.len(), 8, "LEFT JOIN keeps every ping: {rows:#?}");
    let by = |d: &str| rows.iter().find(|r| r.device == d).unwrap().clone();
    // hit: every state column filled, the credit looked up by the lease's customer
    let r = by(&hit1);
    assert_eq!(
        r.lease_key.as_deref(),
        Some(format!("lw:lease:{hit1}").as_str())
    );
    assert_eq!(r.lease_id.as_deref(), Some(format!("L-{hit1}").as_str()));
    assert_eq!(r.customer.as_deref(), Some("C-1"));
    assert_eq!((r.dpd, r.cells), (Some(0), Some(1)));
    assert_eq!(
        (r.credit_key.as_deref(), r.band.as_deref()),
        (Some("lw:credit:C-1"), Some("A"))
    );
    let r = by(&hit2);
    assert_eq!((r.dpd, r.band.as_deref()), (Some(9), Some("D")));
    // a lease whose customer has no credit state: lease filled, credit null
    let r = by(&no_credit);
    assert_eq!(r.customer.as_deref(), Some("C-none"));
    assert_eq!((r.credit_key.as_deref(), r.band.as_deref()), (None, None));
    // missing key, and malformed values: the row is kept with null state; the credit key
    // is then null (`'lw:credit:' || NULL`) and gives null state too
    for d in [&missing, &malformed, &wrong_type] {
        let r = by(d);
        assert_eq!(
            r,
            Row {
                device: d.to_string(),
                lease_key: None,
                lease_id: None,
                customer: None,
                dpd: None,
                cells: None,
                credit_key: None,
                band: None,
            },
            "no state for {d}"
        );
    }
    // INNER drops the rows without state
    let inner = inner_rows(&e);
    let counts = count_by_device(&inner, |r| r.0.as_str());
    assert_eq!(
        counts,
        BTreeMap::from([(hit1.clone(), 2), (hit2.clone(), 1), (no_credit.clone(), 1)]),
        "{inner:?}"
    );
    assert!(inner.iter().all(|r| r.1.is_some() && r.2.is_some()));

    // one MGET per table for the batch (the INNER query is served by the cache)
    let l = stats(&e, "leases");
    assert_eq!(l.round_trips, 1, "{l:?}");
    assert_eq!(l.keys_fetched, 6, "the distinct lease keys: {l:?}");
    assert_eq!(l.keys_found, 5, "{l:?}");
    assert_eq!(l.malformed, 2, "{l:?}");
    let cr = stats(&e, "credit");
    assert_eq!(cr.round_trips, 1, "{cr:?}");
    assert_eq!(
        cr.keys_fetched, 3,
        "C-1, C-2, C-none; null keys are not fetched: {cr:?}"
    );
    assert_eq!(mget_calls(&server), 2);

    // Batch 2: the same keys: no round trip, every distinct key a cache hit
    let pings2: Vec<DevicePing> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| ping(d, T0 + HOUR + i as i64 * MIN, NAIROBI, "x"))
        .collect();
    let before = stats(&e, "leases");
    e.process(&batches(&pings2, 100)[0]).await.unwrap();
    assert_eq!(left_rows(&e).len(), 8);
    let l = stats(&e, "leases");
    // Misses and malformed values are cached for 1 s (the negative TTL): on a machine so
    // loaded that batch 2 came later than that, only those 3 keys may be fetched again.
    if first_lookup.elapsed() < Duration::from_millis(900) {
        assert_eq!(l.round_trips, 1, "no new MGET: {l:?}");
        assert_eq!(
            l.cache_hits - before.cache_hits,
            12,
            "6 distinct keys, hit by each of the 2 queries: {l:?}"
        );
        assert_eq!(l.cache_misses, before.cache_misses);
    } else {
        assert!(l.round_trips <= 2 && l.keys_fetched <= 6 + 3, "{l:?}");
        assert!(l.cache_hits - before.cache_hits >= 9, "{l:?}");
    }
    assert_eq!(stats(&e, "credit").round_trips, 1);

    // Batch 3: one new key among cached ones: one MGET of just that key
    let newcomer = imei(101, 7);
    put_state(&server, &[lease(&newcomer, "C-1", &[NAIROBI], None)], &[]);
    let pings3 = vec![
        ping(&hit1, T0 + 2 * HOUR, NAIROBI, "x"),
        ping(&newcomer, T0 + 2 * HOUR + MIN, NAIROBI, "x"),
        ping(&hit2, T0 + 2 * HOUR + 2 * MIN, NAIROBI, "x"),
    ];
    e.process(&batches(&pings3, 100)[0]).await.unwrap();
    let rows = left_rows(&e);
    let r = rows.iter().find(|r| r.device == newcomer).unwrap();
    assert_eq!(
        r.band.as_deref(),
        Some("A"),
        "credit C-1 served by the cache"
    );
    let l = stats(&e, "leases");
    assert_eq!((l.round_trips, l.keys_fetched), (2, 7), "{l:?}");
    assert_eq!(stats(&e, "credit").round_trips, 1);
    assert_eq!(mget_calls(&server), 3);
    e.finish().await.unwrap();
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_run_holds_the_batch_and_loses_nothing() {
    let mut server = RedisServer::start();
    let devices: Vec<String> = (1..=6).map(|n| imei(102, n)).collect();
    let leases: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| overdue(lease(d, &format!("C-{i}"), &[NAIROBI], None), i as i32))
        .collect();
    let credits: Vec<_> = (0..devices.len())
        .map(|i| credit(&format!("C-{i}"), CreditBand::B))
        .collect();
    put_state(&server, &leases, &credits);
    // persisted, so the restarted server has the state again
    let _: () = redis::cmd("SAVE").query(&mut server.conn()).unwrap();

    let mut e = engine(&server).await;
    // Batch 1 while Redis is up: devices 0-1 (now cached).
    let p1: Vec<DevicePing> = devices[..2]
        .iter()
        .enumerate()
        .map(|(i, d)| ping(d, T0 + i as i64 * MIN, NAIROBI, "x"))
        .collect();
    e.process(&batches(&p1, 100)[0]).await.unwrap();
    assert_eq!(left_rows(&e).len(), 2);
    let _ = inner_rows(&e);

    // Redis dies; batch 2 needs keys the cache does not hold.
    server.kill();
    let down = Duration::from_millis(1_500);
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(down);
        server.restart();
        server
    });
    let p2: Vec<DevicePing> = devices
        .iter()
        .cycle()
        .take(12)
        .enumerate()
        .map(|(i, d)| ping(d, T0 + HOUR + i as i64 * MIN, NAIROBI, "x"))
        .collect();
    let started = Instant::now();
    e.process(&batches(&p2, 100)[0]).await.unwrap();
    let held_for = started.elapsed();
    let server = restarter.join().unwrap();
    assert!(
        held_for >= down,
        "the batch waited for Redis ({held_for:?} < {down:?})"
    );

    // Nothing lost, and every row complete: the state came from the restarted server.
    let rows = left_rows(&e);
    assert_eq!(rows.len(), 12, "no ping lost: {rows:#?}");
    for r in &rows {
        let i = devices.iter().position(|d| *d == r.device).unwrap();
        assert_eq!(
            r.lease_id.as_deref(),
            Some(format!("L-{}", r.device).as_str())
        );
        assert_eq!(r.dpd, Some(i as i32));
        assert_eq!(r.band.as_deref(), Some("B"));
    }
    let inner = inner_rows(&e);
    assert_eq!(inner.len(), 12, "INNER lost nothing either");
    let l = stats(&e, "leases");
    assert!(
        l.retries >= 1 && l.errors >= 1,
        "the outage was retried: {l:?}"
    );
    assert_eq!(
        l.round_trips, 2,
        "one MGET per batch (retries not counted): {l:?}"
    );
    assert_eq!(
        l.keys_fetched,
        2 + 4,
        "batch 2 fetched only devices 2-5: {l:?}"
    );

    // And the pipeline carries on.
    let p3 = vec![ping(&devices[5], T0 + 2 * HOUR, NAIROBI, "x")];
    e.process(&batches(&p3, 100)[0]).await.unwrap();
    assert_eq!(left_rows(&e).len(), 1);
    e.finish().await.unwrap();
    drop(server);
}
