//! The Redis lookup join source against a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{Array, AsArray, StringArray};
use leasewatch::lookup::{CacheConfig, LookupConfig, LookupError, RedisLookup};
use leasewatch_schemas::{Keys, LeaseState, LeaseStatus, lease_schema};
use std::time::{Duration, Instant};
use support::redis::RedisServer;

fn lease(device: &str) -> LeaseState {
    LeaseState {
        lease_id: format!("L-{device}"),
        device_id: device.to_string(),
        customer_id: format!("C-{device}"),
        registered_iccid: Some("8961012345678901234".into()),
        registered_imsi: None,
        lease_country: "KE".into(),
        permitted_cells: vec![613196575453364223, 613196575455461375],
        area_res: 7,
        status: LeaseStatus::Active,
        due_date: "2026-01-31".into(),
        days_past_due: 0,
        amount_due: 0,
        deposit: 5_000,
        monthly_rent: 2_500,
        currency: "KES".into(),
    }
}

fn put_leases(server: &RedisServer, keys: &Keys, devices: &[&str]) {
    let mut c = server.conn();
    let mut p = redis::pipe();
    for d in devices {
        p.cmd("SET")
            .arg(keys.lease(d))
            .arg(serde_json::to_string(&lease(d)).unwrap())
            .ignore();
    }
    p.exec(&mut c).unwrap();
}

fn lookup(server: &RedisServer, keys: &Keys) -> RedisLookup {
    let mut cfg = LookupConfig::new(server.url(), keys.lease_prefix());
    cfg.redis.give_up_after_ms = 20_000;
    RedisLookup::new(cfg, lease_schema()).unwrap()
}

fn lease_ids(b: &arrow::array::RecordBatch) -> Vec<Option<String>> {
    let c = b.column_by_name("lease_id").unwrap().as_string::<i32>();
    c.iter().map(|v| v.map(str::to_string)).collect()
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

#[tokio::test]
async fn hit_miss_and_null_keys_keep_every_row() {
    let server = RedisServer::start();
    let keys = Keys::new("t1:lw:");
    put_leases(&server, &keys, &["d1", "d2"]);
    let l = lookup(&server, &keys);
    let input = StringArray::from(vec![Some("d1"), Some("d2"), Some("d3"), None, Some("d1")]);

    let out = l.lookup(&input).await.unwrap();
    assert_eq!(out.num_rows(), 5, "LEFT JOIN: never drop a row");
    assert_eq!(out.schema(), l.aligned_schema());
    assert_eq!(
        lease_ids(&out),
        vec![
            Some("L-d1".into()),
            Some("L-d2".into()),
            None,
            None,
            Some("L-d1".into())
        ]
    );
    let dpd = out.column_by_name("days_past_due").unwrap();
    assert_eq!(dpd.null_count(), 2);
    let cells = out
        .column_by_name("permitted_cells")
        .unwrap()
        .as_list::<i32>();
    assert_eq!(cells.value(0).len(), 2);

    let s = l.stats().snapshot();
    assert_eq!(
        (s.batches, s.round_trips, s.keys_fetched, s.keys_found),
        (1, 1, 3, 2)
    );
    assert_eq!(mget_calls(&server), 1);

    // the distinct form: one state row per key with state, an index per input row
    let l2 = lookup(&server, &keys);
    let d = l2.lookup_distinct(&input).await.unwrap();
    let state = d.state().unwrap();
    assert_eq!((state.num_rows(), d.state_rows()), (2, 2));
    assert_eq!(state.schema().field(0).name(), "key");
    let idx: Vec<Option<u32>> = d.indices.iter().collect();
    assert_eq!(idx[0], idx[4]);
    assert!(idx[0].is_some() && idx[1].is_some() && idx[2].is_none() && idx[3].is_none());
    let k = state.column(0).as_string::<i32>();
    assert_eq!(k.value(idx[1].unwrap() as usize), "d2");
}

#[tokio::test]
async fn malformed_values_give_null_rows_and_are_counted() {
    let server = RedisServer::start();
    let keys = Keys::new("t2:lw:");
    put_leases(&server, &keys, &["good"]);
    let mut c = server.conn();
    let _: () = redis::cmd("SET")
        .arg(keys.lease("truncated"))
        .arg(r#"{"lease_id":"x","#)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(keys.lease("wrongtype"))
        .arg(r#"{"lease_id":5}"#)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(keys.lease("two"))
        .arg("{}{}")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(keys.lease("alist"))
        .arg("x")
        .query(&mut c)
        .unwrap();
    let l = lookup(&server, &keys);
    let input = StringArray::from(vec![
        "truncated",
        "good",
        "wrongtype",
        "two",
        "alist",
        "good",
    ]);
    let out = l.lookup(&input).await.unwrap();
    assert_eq!(
        lease_ids(&out),
        vec![
            None,
            Some("L-good".into()),
            None,
            None,
            None,
            Some("L-good".into())
        ]
    );
    assert_eq!(
        l.stats().snapshot().malformed,
        3,
        "a non-string key reads as missing"
    );

    // the malformed keys are cached as misses: a second batch needs no round trip
    let out = l.lookup(&input).await.unwrap();
    assert_eq!(out.num_rows(), 6);
    assert_eq!(l.stats().snapshot().round_trips, 1);
}

#[tokio::test]
async fn one_mget_per_batch_and_none_when_cached() {
    let server = RedisServer::start();
    let keys = Keys::new("t3:lw:");
    put_leases(&server, &keys, &["a", "b", "c"]);
    let mut cfg = LookupConfig::new(server.url(), keys.lease_prefix());
    cfg.cache = CacheConfig {
        ttl_ms: 400,
        negative_ttl_ms: 150,
        ..CacheConfig::default()
    };
    let l = RedisLookup::new(cfg, lease_schema()).unwrap();
    let b1 = StringArray::from(vec!["a", "b", "a", "zz", "b"]);

    l.lookup(&b1).await.unwrap();
    let s = l.stats().snapshot();
    assert_eq!(
        (s.round_trips, s.keys_fetched, s.cache_misses, s.cache_hits),
        (1, 3, 3, 0)
    );

    // all cached (the miss too): zero round trips
    let out = l.lookup(&b1).await.unwrap();
    assert_eq!(lease_ids(&out)[0].as_deref(), Some("L-a"));
    let s = l.stats().snapshot();
    assert_eq!((s.round_trips, s.cache_hits), (1, 3));

    // one new key: one MGET of just that key
    l.lookup(&StringArray::from(vec!["a", "c", "b"]))
        .await
        .unwrap();
    let s = l.stats().snapshot();
    assert_eq!((s.round_trips, s.keys_fetched), (2, 4));
    assert_eq!(mget_calls(&server), 2);

    // the negative entry expires first: state loaded meanwhile shows up
    put_leases(&server, &keys, &["zz"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = l.lookup(&StringArray::from(vec!["zz", "a"])).await.unwrap();
    assert_eq!(
        lease_ids(&out),
        vec![Some("L-zz".into()), Some("L-a".into())]
    );
    let s = l.stats().snapshot();
    assert_eq!((s.round_trips, s.keys_fetched), (3, 5), "only zz refetched");

    // after the TTL everything is fetched again
    tokio::time::sleep(Duration::from_millis(450)).await;
    l.lookup(&b1).await.unwrap();
    let s = l.stats().snapshot();
    assert_eq!((s.round_trips, s.keys_fetched), (4, 8));
}

/// `n` leases (`d0000`, ...) in Redis and a lookup (patient for 30 s) whose cache, TTL
/// 4 s, took all of them at the returned instant: every value comes due by 3.5 s and
/// expires at 4 s ([`until_all_due`]).
async fn cached_fleet(
    server: &RedisServer,
    keys: &Keys,
    n: usize,
) -> (RedisLookup, Vec<String>, Instant) {
    let devices: Vec<String> = (0..n).map(|i| format!("d{i:04}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    put_leases(server, keys, &names);
    let mut cfg = LookupConfig::new(server.url(), keys.lease_prefix());
    cfg.redis.give_up_after_ms = 30_000;
    cfg.cache = CacheConfig {
        ttl_ms: 4_000,
        negative_ttl_ms: 1_000,
        ..CacheConfig::default()
    };
    let l = RedisLookup::new(cfg, lease_schema()).unwrap();
    let loaded = Instant::now();
    l.lookup(&StringArray::from(names)).await.unwrap();
    (l, devices, loaded)
}

/// Sleeps until every value [`cached_fleet`] cached at `loaded` is due, none expired.
async fn until_all_due(loaded: Instant) {
    tokio::time::sleep(Duration::from_millis(3_600).saturating_sub(loaded.elapsed())).await;
}

/// Values come due for a refresh before they expire (5/8 to 7/8 of the TTL, by key) and
/// are still served: they are fetched again with the next misses, or once a batch holds
/// `REFRESH_AT_ONCE` of them, never one round trip per batch.
#[tokio::test]
async fn values_due_are_refreshed_with_misses_or_many_at_once_and_served_meanwhile() {
    let server = RedisServer::start();
    let keys = Keys::new("t9:lw:");
    let (l, devices, loaded) = cached_fleet(&server, &keys, 2_000).await;
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    let all = StringArray::from(names.clone());
    assert_eq!(l.stats().snapshot().round_trips, 1);

    // Changed in Redis; every value comes due by 3.5 s and expires at 4 s.
    let mut changed = lease("d0000");
    changed.lease_id = "L-changed".into();
    let _: () = redis::cmd("SET")
        .arg(keys.lease("d0000"))
        .arg(serde_json::to_string(&changed).unwrap())
        .query(&mut server.conn())
        .unwrap();
    until_all_due(loaded).await;

    // Due values alone, fewer than REFRESH_AT_ONCE: served as they are, no round trip.
    let few = StringArray::from(names[..100].to_vec());
    let out = l.lookup(&few).await.unwrap();
    assert_eq!(lease_ids(&out)[0].as_deref(), Some("L-d0000"));
    assert_eq!(l.stats().snapshot().round_trips, 1);

    // With a miss, the due values of the batch go in the same MGET.
    let mut with_miss = names[..10].to_vec();
    with_miss.push("unknown");
    let out = l.lookup(&StringArray::from(with_miss)).await.unwrap();
    assert_eq!(lease_ids(&out)[0].as_deref(), Some("L-changed"));
    let s = l.stats().snapshot();
    assert_eq!(
        (s.round_trips, s.keys_fetched, s.cache_misses),
        (2, 2_011, 2_001)
    );

    // Enough of them due: one MGET of every due value of the batch, no miss counted.
    let out = l.lookup(&all).await.unwrap();
    assert_eq!(out.num_rows(), 2_000);
    let s = l.stats().snapshot();
    assert_eq!(
        (s.round_trips, s.keys_fetched, s.cache_misses),
        (3, 4_001, 2_001)
    );
    assert!(
        loaded.elapsed() < Duration::from_millis(4_000),
        "the refreshes must come before the values expire for this test to mean anything"
    );
    // Refreshed, nothing is due any more.
    l.lookup(&all).await.unwrap();
    assert_eq!(l.stats().snapshot().round_trips, 3);
    assert_eq!(mget_calls(&server), 3);
}

/// A refresh alone is tried once: with Redis gone, the values due (not expired) are served
/// at once instead of the batch waiting out the outage, and no refresh is tried again for
/// a second.
#[tokio::test]
async fn a_refresh_redis_does_not_answer_serves_the_cached_values_at_once() {
    let mut server = RedisServer::start();
    let keys = Keys::new("t10:lw:");
    let (l, devices, loaded) = cached_fleet(&server, &keys, 1_500).await;
    let all = StringArray::from(devices);
    until_all_due(loaded).await;
    server.kill();

    let started = Instant::now();
    let out = l.lookup(&all).await.unwrap();
    assert_eq!(lease_ids(&out)[0].as_deref(), Some("L-d0000"));
    assert_eq!(out.num_rows(), 1_500);
    let errors = l.stats().snapshot().errors;
    assert!(errors >= 1, "the refresh was tried: {errors} errors");
    // Paused: served again without trying.
    l.lookup(&all).await.unwrap();
    assert_eq!(l.stats().snapshot().errors, errors);
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "served at once, not after the outage: {:?}",
        started.elapsed()
    );
    assert!(
        loaded.elapsed() < Duration::from_millis(4_000),
        "still within the TTL"
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_run_the_call_waits_then_succeeds() {
    let mut server = RedisServer::start();
    let keys = Keys::new("t4:lw:");
    put_leases(&server, &keys, &["d1", "d2"]);
    let _: () = redis::cmd("SAVE").query(&mut server.conn()).unwrap();
    let mut cfg = LookupConfig::new(server.url(), keys.lease_prefix());
    cfg.redis.give_up_after_ms = 30_000;
    cfg.redis.backoff_max_ms = 200;
    let l = std::sync::Arc::new(RedisLookup::new(cfg, lease_schema()).unwrap());

    // connected and working
    let out = l.lookup(&StringArray::from(vec!["d1"])).await.unwrap();
    assert_eq!(lease_ids(&out), vec![Some("L-d1".into())]);

    server.kill();
    let l2 = std::sync::Arc::clone(&l);
    let started = Instant::now();
    let task = tokio::spawn(async move {
        l2.lookup(&StringArray::from(vec!["d2", "d1", "nope"]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!task.is_finished(), "the batch is held while Redis is down");
    server.restart(); // loads the dump: the state is back
    let out = task.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(out.num_rows(), 3, "nothing dropped");
    assert_eq!(
        lease_ids(&out),
        vec![Some("L-d2".into()), Some("L-d1".into()), None]
    );
    let s = l.stats().snapshot();
    assert!(s.retries >= 1 && s.errors >= 1, "{s:?}");
}

#[tokio::test]
async fn gives_up_with_a_retryable_error_after_the_deadline() {
    let mut server = RedisServer::start();
    let mut cfg = LookupConfig::new(server.url(), "t5:lw:lease:");
    cfg.redis.give_up_after_ms = 300;
    let l = RedisLookup::new(cfg, lease_schema()).unwrap();
    server.kill();
    let e = l.lookup(&StringArray::from(vec!["d1"])).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(e, LookupError::Redis(_)));
    assert!(e.to_string().contains("unavailable"), "{e}");
}

#[tokio::test]
async fn acl_credentials_in_the_url() {
    let server = RedisServer::start_with(&["user lw on >s3cret ~* &* +@all", "user default off"]);
    let keys = Keys::new("t6:lw:");
    {
        let mut c = redis::Client::open(format!("redis://lw:s3cret@127.0.0.1:{}", server.port()))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(keys.lease("d1"))
            .arg(serde_json::to_string(&lease("d1")).unwrap())
            .query(&mut c)
            .unwrap();
    }
    let url = format!("redis://lw:s3cret@127.0.0.1:{}", server.port());
    let l = RedisLookup::new(LookupConfig::new(url, keys.lease_prefix()), lease_schema()).unwrap();
    let out = l.lookup(&StringArray::from(vec!["d1"])).await.unwrap();
    assert_eq!(lease_ids(&out), vec![Some("L-d1".into())]);

    let bad = format!("redis://lw:wrong@127.0.0.1:{}", server.port());
    let l = RedisLookup::new(LookupConfig::new(bad, keys.lease_prefix()), lease_schema()).unwrap();
    let e = l.lookup(&StringArray::from(vec!["d1"])).await.unwrap_err();
    assert!(
        !e.is_retryable(),
        "bad credentials are the user's to fix: {e}"
    );
    assert!(
        !e.to_string().contains("wrong"),
        "no password in errors: {e}"
    );
}

/// Not a timed assertion: prints the cost of a batch, cold and warm, for the report.
#[tokio::test]
async fn batch_of_8192_rows_with_2000_distinct_keys() {
    let server = RedisServer::start();
    let keys = Keys::new("t7:lw:");
    let devices: Vec<String> = (0..2000).map(|i| format!("35{i:013}")).collect();
    let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
    put_leases(&server, &keys, &refs);
    let rows: Vec<&str> = (0..8192).map(|i| refs[(i * 7919) % 2000]).collect();
    let input = StringArray::from(rows);
    let l = lookup(&server, &keys);
    let t = Instant::now();
    let out = l.lookup(&input).await.unwrap();
    let cold = t.elapsed();
    assert_eq!(out.num_rows(), 8192);
    assert_eq!(out.column_by_name("lease_id").unwrap().null_count(), 0);
    let t = Instant::now();
    let warm_n = 20;
    for _ in 0..warm_n {
        l.lookup(&input).await.unwrap();
    }
    let warm = t.elapsed() / warm_n;
    let s = l.stats().snapshot();
    assert_eq!(s.round_trips, 1);
    eprintln!("lookup 8192 rows / 2000 distinct keys: cold {cold:?}, warm {warm:?} per batch");
}
