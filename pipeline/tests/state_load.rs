//! `state load` (NDJSON, CSV, Parquet) against a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{AsArray, StringArray};
use leasewatch::lookup::{LookupConfig, RedisLookup};
use leasewatch::redis_client::ConnectionConfig;
use leasewatch::state::{LoadOptions, StateError, load_state};
use leasewatch_schemas::{CreditBand, CreditState, Keys, LeaseState, LeaseStatus, lease_schema};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::redis::RedisServer;

/// `body` followed by its Luhn check digit.
fn luhn(body: &str) -> String {
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

/// A Luhn-valid IMEI.
fn imei(n: u64) -> String {
    luhn(&format!("35{n:012}"))
}

fn lease(n: u64) -> LeaseState {
    LeaseState {
        lease_id: format!("L{n}"),
        device_id: imei(n),
        customer_id: format!("C{n}"),
        registered_iccid: None,
        registered_imsi: Some("639021234567890".into()),
        lease_country: "KE".into(),
        permitted_cells: vec![613196575453364223, 613196575455461375],
        area_res: 7,
        status: LeaseStatus::Active,
        due_date: "2026-02-28".into(),
        days_past_due: n as i32,
        amount_due: 0,
        deposit: 5_000,
        monthly_rent: 2_500,
        currency: "KES".into(),
    }
}

fn opts(server: &RedisServer, prefix: &str) -> LoadOptions {
    LoadOptions {
        redis: ConnectionConfig::new(server.url()),
        prefix: prefix.into(),
        chunk_size: 2,
        progress: false,
        ..LoadOptions::default()
    }
}

fn get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn ndjson_leases_and_credit_with_rejects() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new("st1:lw:");
    let mut bad_imei = lease(9);
    bad_imei.device_id = "123".into();
    let lines = [
        serde_json::to_string(&lease(1)).unwrap(),
        "{\"lease_id\": ".to_string(),
        serde_json::to_string(&lease(2)).unwrap(),
        String::new(),
        serde_json::to_string(&bad_imei).unwrap(),
        serde_json::to_string(&lease(3)).unwrap(),
        r#"{"lease_id":"x","unknown":1}"#.to_string(),
    ];
    let leases = write(dir.path(), "leases.ndjson", &(lines.join("\n") + "\n"));
    let credit = CreditState {
        customer_id: "C1".into(),
        score: 640,
        band: CreditBand::C,
        prior_defaults: 0,
        flags: vec!["kyc_passed".into()],
    };
    let credit_lines = [
        serde_json::to_string(&credit).unwrap(),
        r#"{"customer_id":"C2","score":100,"band":"A","prior_defaults":0}"#.to_string(),
    ];
    let credit_path = write(dir.path(), "credit.jsonl", &credit_lines.join("\n"));

    let o = LoadOptions {
        leases: Some(leases),
        credit: Some(credit_path),
        ..opts(&server, keys.prefix())
    };
    let r = load_state(&o).await.unwrap();
    let l = r.leases.unwrap();
    assert_eq!((l.loaded, l.rejected), (3, 3));
    let lines: Vec<u64> = l.rejects.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 5, 7]);
    assert!(
        l.rejects[1].reason.starts_with("device_id"),
        "{:?}",
        l.rejects[1]
    );
    assert!(
        l.rejects[2].reason.contains("unknown field"),
        "{:?}",
        l.rejects[2]
    );
    let c = r.credit.unwrap();
    assert_eq!((c.loaded, c.rejected), (1, 1));
    assert!(c.rejects[0].reason.contains("score"), "{:?}", c.rejects[0]);
    assert_eq!(r.round_trips, 3, "2 chunks of leases, 1 of credit");

    let stored: LeaseState =
        serde_json::from_str(&get(&server, &keys.lease(&imei(2))).unwrap()).unwrap();
    assert_eq!(stored, lease(2));
    let stored: CreditState =
        serde_json::from_str(&get(&server, &keys.credit("C1")).unwrap()).unwrap();
    assert_eq!(stored, credit);
    assert_eq!(get(&server, &keys.credit("C2")), None);

    // what was loaded is what the lookup reads
    let lk = RedisLookup::new(
        LookupConfig::new(server.url(), keys.lease_prefix()),
        lease_schema(),
    )
    .unwrap();
    let ids = StringArray::from(vec![imei(3), imei(9), imei(1)]);
    let out = lk.lookup(&ids).await.unwrap();
    let lease_id = out.column_by_name("lease_id").unwrap().as_string::<i32>();
    assert_eq!(
        lease_id.iter().collect::<Vec<_>>(),
        vec![Some("L3"), None, Some("L1")]
    );
}

#[tokio::test]
async fn csv_with_lists_in_both_spellings_and_rejects() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new("st2:lw:");
    let header = "lease_id,device_id,customer_id,registered_iccid,registered_imsi,lease_country,permitted_cells,area_res,status,due_date,days_past_due,amount_due,deposit,monthly_rent,currency";
    let rows = [
        format!(
            "L1,{},C1,,639021234567890,KE,613196575453364223;613196575455461375,7,active,2026-02-28,0,0,5000,2500,KES",
            imei(1)
        ),
        format!(
            "L2,{},C2,{},,KE,\"[613196575453364223, 613196575455461375]\",7,overdue,2026-02-28,12,2500,5000,2500,KES",
            imei(2),
            luhn("8925402123456789012")
        ),
        format!(
            "L3,{},C3,,,KE,,seven,active,2026-02-28,0,0,0,2500,KES",
            imei(3)
        ),
        format!("L4,{},C4,,,KE,", imei(4)),
        format!("L5,{},C5,,,KE,,7,stolen,2026-02-28,0,0,0,2500,KES", imei(5)),
        format!("L6,{},C6,,,KE,,7,closed,2026-02-28,0,0,0,2500,KES", imei(6)),
    ];
    let path = write(
        dir.path(),
        "leases.csv",
        &format!("{header}\n{}\n", rows.join("\n")),
    );
    let r = load_state(&LoadOptions {
        leases: Some(path),
        ..opts(&server, keys.prefix())
    })
    .await
    .unwrap();
    let l = r.leases.unwrap();
    assert_eq!((l.loaded, l.rejected), (3, 3), "{:?}", l.rejects);
    let lines: Vec<u64> = l.rejects.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![4, 5, 6]);
    assert!(
        l.rejects[0].reason.starts_with("area_res: not an integer"),
        "{:?}",
        l.rejects[0]
    );
    assert!(l.rejects[2].reason.contains("stolen"), "{:?}", l.rejects[2]);

    let l1: LeaseState =
        serde_json::from_str(&get(&server, &keys.lease(&imei(1))).unwrap()).unwrap();
    assert_eq!(
        l1.permitted_cells,
        vec![613196575453364223, 613196575455461375]
    );
    assert_eq!(l1.registered_iccid, None);
    let l2: LeaseState =
        serde_json::from_str(&get(&server, &keys.lease(&imei(2))).unwrap()).unwrap();
    assert_eq!(l2.permitted_cells.len(), 2);
    assert_eq!(l2.days_past_due, 12);
    assert_eq!(
        l2.registered_iccid.as_deref(),
        Some(luhn("8925402123456789012").as_str())
    );
    let l6: LeaseState =
        serde_json::from_str(&get(&server, &keys.lease(&imei(6))).unwrap()).unwrap();
    assert!(l6.permitted_cells.is_empty());

    // a header with a typo stops the load with the column named
    let bad = write(dir.path(), "bad.csv", "lease_id,devise_id\nL1,1\n");
    let e = load_state(&LoadOptions {
        leases: Some(bad),
        ..opts(&server, keys.prefix())
    })
    .await
    .unwrap_err();
    assert!(matches!(e, StateError::Input { .. }));
    assert!(e.to_string().contains("devise_id"), "{e}");
}

#[tokio::test]
async fn parquet_through_the_arrow_schema() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new("st3:lw:");
    let mut bad = lease(3);
    bad.currency = "shillings".into();
    let rows = vec![lease(1), lease(2), bad, lease(4), lease(5)];
    let mut dec = arrow_json::ReaderBuilder::new(lease_schema())
        .build_decoder()
        .unwrap();
    dec.serialize(&rows).unwrap();
    let batch = dec.flush().unwrap().unwrap();
    // an extra column is ignored
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        "note",
        arrow::datatypes::DataType::Utf8,
        true,
    )));
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec![Some("x"); 5])));
    let batch =
        arrow::array::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols)
            .unwrap();
    let path = dir.path().join("leases.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let r = load_state(&LoadOptions {
        leases: Some(path),
        ..opts(&server, keys.prefix())
    })
    .await
    .unwrap();
    let l = r.leases.unwrap();
    assert_eq!((l.loaded, l.rejected), (4, 1));
    assert_eq!(l.rejects[0].line, 3);
    assert!(
        l.rejects[0].reason.starts_with("currency"),
        "{:?}",
        l.rejects[0]
    );
    let l5: LeaseState =
        serde_json::from_str(&get(&server, &keys.lease(&imei(5))).unwrap()).unwrap();
    assert_eq!(l5, lease(5));
}

#[tokio::test]
async fn input_and_redis_failures() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let e = load_state(&opts(&server, "st4:")).await.unwrap_err();
    assert!(matches!(e, StateError::NothingToLoad));
    let e = load_state(&LoadOptions {
        leases: Some(write(dir.path(), "leases.xml", "<x/>")),
        ..opts(&server, "st4:")
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("unknown extension"), "{e}");

    let path = write(
        dir.path(),
        "leases.ndjson",
        &serde_json::to_string(&lease(1)).unwrap(),
    );
    server.kill();
    let mut o = LoadOptions {
        leases: Some(path),
        ..opts(&server, "st4:")
    };
    o.redis.give_up_after_ms = 300;
    match load_state(&o).await.unwrap_err() {
        StateError::Redis(e) => assert!(e.is_retryable(), "{e}"),
        e => panic!("expected a Redis error, got {e}"),
    }
}
