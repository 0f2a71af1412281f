//! The Redis alert sink against a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use leasewatch::sink::Sink;
use leasewatch::sink::redis::{
    BlockingRedisSink, RedisAlertSink, RedisSinkConfig, Target, WriteReport, message_from_fields,
};
use leasewatch_schemas::{Alert, Grade, Keys, Queue, QueueMessage, Reason, SignalKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::redis::RedisServer;

fn alert(id: &str, device: &str, signal: SignalKind, grade: Grade, queue: Queue, t: i64) -> Alert {
    Alert {
        alert_id: id.to_string(),
        signal,
        grade,
        queue,
        device_id: device.to_string(),
        lease_id: Some(format!("L-{device}")),
        customer_id: Some(format!("C-{device}")),
        event_time: t,
        window_start: None,
        window_end: None,
        days_past_due: Some(4),
        credit_band: None,
        reasons: vec![Reason {
            rule: signal.as_str().to_string(),
            value: Some(3.0),
            threshold: Some(2.0),
            detail: Some("iccid=89... registered=89...".into()),
        }],
    }
}

fn sink(
    server: &RedisServer,
    prefix: &str,
    f: impl FnOnce(&mut RedisSinkConfig),
) -> RedisAlertSink {
    let mut c = RedisSinkConfig::new(server.url(), prefix);
    f(&mut c);
    RedisAlertSink::new(c).unwrap()
}

type Entry = (String, Vec<(String, String)>);

fn stream(server: &RedisServer, key: &str) -> Vec<QueueMessage> {
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut server.conn())
        .unwrap();
    entries
        .iter()
        .map(|(_, f)| message_from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap())
        .collect()
}

fn xlen(server: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

fn report(written: usize, duplicates: usize, suppressed: usize) -> WriteReport {
    WriteReport {
        written,
        duplicates,
        suppressed,
    }
}

#[tokio::test]
async fn writes_streams_once_per_alert_id() {
    let server = RedisServer::start();
    let keys = Keys::new("s1:lw:");
    let s = sink(&server, keys.prefix(), |_| {});
    let alerts = vec![
        alert(
            "a1",
            "d1",
            SignalKind::SimMismatch,
            Grade::High,
            Queue::Call,
            1_000,
        ),
        alert(
            "a2",
            "d2",
            SignalKind::Tamper,
            Grade::Critical,
            Queue::Lock,
            2_000,
        ),
        alert(
            "a3",
            "d3",
            SignalKind::Overdue,
            Grade::Low,
            Queue::Call,
            3_000,
        ),
    ];
    assert_eq!(s.write_alerts(&alerts).await.unwrap(), report(3, 0, 0));
    assert_eq!(xlen(&server, &keys.queue(Queue::Call)), 2);
    assert_eq!(xlen(&server, &keys.queue(Queue::Lock)), 1);

    // the same alerts again (a replay after a crash): nothing new
    assert_eq!(s.write_alerts(&alerts).await.unwrap(), report(0, 3, 0));
    // and mixed with a new one
    let mut more = alerts.clone();
    more.push(alert(
        "a4",
        "d4",
        SignalKind::CrossBorder,
        Grade::Medium,
        Queue::Review,
        4_000,
    ));
    assert_eq!(s.write_alerts(&more).await.unwrap(), report(1, 3, 0));
    assert_eq!(xlen(&server, &keys.queue(Queue::Call)), 2);
    assert_eq!(xlen(&server, &keys.queue(Queue::Review)), 1);

    // entries read back as the QueueMessage that was meant
    let call = stream(&server, &keys.queue(Queue::Call));
    assert_eq!(call[0].alert_id, "a1");
    let want = QueueMessage::from_alert(&alerts[0], call[0].emitted_at);
    assert_eq!(call[0], want);
    assert!(call[0].emitted_at > 1_600_000_000_000);

    let st = s.stats();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (g(&st.round_trips), g(&st.written), g(&st.duplicates)),
        (3, 4, 6)
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.alert_seen("a1"))
        .query(&mut server.conn())
        .unwrap();
    assert!(ttl > 0, "alert marks expire");
}

#[tokio::test]
async fn suppression_within_cooldown_unless_the_grade_rises() {
    let server = RedisServer::start();
    let keys = Keys::new("s2:lw:");
    let s = sink(&server, keys.prefix(), |c| c.cooldown_ms = 400);
    let q = keys.queue(Queue::Call);
    let tamper = |id: &str, g: Grade| alert(id, "d1", SignalKind::Tamper, g, Queue::Call, 1);

    assert_eq!(
        s.write_alerts(&[tamper("x1", Grade::Medium)])
            .await
            .unwrap(),
        report(1, 0, 0)
    );
    // same device + signal, same or lower grade: suppressed
    assert_eq!(
        s.write_alerts(&[tamper("x2", Grade::Medium), tamper("x3", Grade::Low)])
            .await
            .unwrap(),
        report(0, 0, 2)
    );
    // another signal or another device is not affected
    let other = vec![
        alert(
            "x4",
            "d1",
            SignalKind::OutOfArea,
            Grade::Medium,
            Queue::Call,
            1,
        ),
        alert(
            "x5",
            "d2",
            SignalKind::Tamper,
            Grade::Medium,
            Queue::Call,
            1,
        ),
    ];
    assert_eq!(s.write_alerts(&other).await.unwrap(), report(2, 0, 0));
    // a higher grade passes, and raises the bar
    assert_eq!(
        s.write_alerts(&[tamper("x6", Grade::High)]).await.unwrap(),
        report(1, 0, 0)
    );
    assert_eq!(
        s.write_alerts(&[tamper("x7", Grade::Medium)])
            .await
            .unwrap(),
        report(0, 0, 1)
    );
    // a suppressed id replayed stays handled
    assert_eq!(
        s.write_alerts(&[tamper("x2", Grade::Medium)])
            .await
            .unwrap(),
        report(0, 1, 0)
    );
    assert_eq!(xlen(&server, &q), 4);
    assert_eq!(
        s.stats()
            .suppressed
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // the cooldown runs in event time: 500 ms of event time later (> 400) the same grade
    // alerts again, without waiting (a replay decides as the live run did)
    let later = alert(
        "x8",
        "d1",
        SignalKind::Tamper,
        Grade::Medium,
        Queue::Call,
        501,
    );
    assert_eq!(s.write_alerts(&[later]).await.unwrap(), report(1, 0, 0));
    let ids: Vec<String> = stream(&server, &q)
        .into_iter()
        .map(|m| m.alert_id)
        .collect();
    assert_eq!(ids, vec!["x1", "x4", "x5", "x6", "x8"]);

    // cooldown 0: no suppression
    let s = sink(&server, "s2b:lw:", |c| c.cooldown_ms = 0);
    let r = s
        .write_alerts(&[tamper("y1", Grade::Low), tamper("y2", Grade::Low)])
        .await
        .unwrap();
    assert_eq!(r, report(2, 0, 0));
}

#[tokio::test]
async fn list_form_holds_the_message_json() {
    let server = RedisServer::start();
    let keys = Keys::new("s3:lw:");
    let s = sink(&server, keys.prefix(), |c| c.target = Target::List);
    let a = vec![
        alert("l1", "d1", SignalKind::Overdue, Grade::Low, Queue::Sms, 5),
        alert("l2", "d2", SignalKind::Overdue, Grade::Low, Queue::Sms, 6),
    ];
    assert_eq!(s.write_alerts(&a).await.unwrap(), report(2, 0, 0));
    assert_eq!(s.write_alerts(&a).await.unwrap(), report(0, 2, 0));
    let key = "s3:lw:queue:sms";
    assert_eq!(s.queue_key(Queue::Sms), key);
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(items.len(), 2);
    let m: QueueMessage = serde_json::from_str(&items[1]).unwrap();
    assert_eq!(m, QueueMessage::from_alert(&a[1], m.emitted_at));

    // Arroyo's 'target.key_prefix'
    let s = sink(&server, keys.prefix(), |c| {
        c.target = Target::List;
        c.list_key_prefix = Some("arroyo:alerts:".into());
    });
    s.write_alerts(&[alert(
        "l3",
        "d3",
        SignalKind::Tamper,
        Grade::High,
        Queue::Lock,
        7,
    )])
    .await
    .unwrap();
    let n: usize = redis::cmd("LLEN")
        .arg("arroyo:alerts:lock")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn risk_profile_counts_by_signal() {
    let server = RedisServer::start();
    let keys = Keys::new("s4:lw:");
    let s = sink(&server, keys.prefix(), |c| c.cooldown_ms = 0);
    let mut a = vec![
        alert(
            "r1",
            "d1",
            SignalKind::Tamper,
            Grade::Medium,
            Queue::Call,
            1_000,
        ),
        alert(
            "r2",
            "d1",
            SignalKind::Tamper,
            Grade::High,
            Queue::Lock,
            3_000,
        ),
        alert(
            "r3",
            "d1",
            SignalKind::SimMismatch,
            Grade::Low,
            Queue::Sms,
            2_000,
        ),
    ];
    let mut no_customer = alert("r4", "d9", SignalKind::Tamper, Grade::Low, Queue::Review, 9);
    no_customer.customer_id = None;
    a.push(no_customer);
    assert_eq!(s.write_alerts(&a).await.unwrap(), report(4, 0, 0));
    s.write_alerts(&a).await.unwrap(); // replays do not count twice
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.risk("C-d1"))
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(h.get("count:tamper").map(String::as_str), Some("2"));
    assert_eq!(h.get("count:sim_mismatch").map(String::as_str), Some("1"));
    // the latest alert by event time, whatever the arrival order
    assert_eq!(h.get("last_grade").map(String::as_str), Some("high"));
    assert_eq!(h.get("last_alert_ms").map(String::as_str), Some("3000"));
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys.risk("C-d9"))
        .query(&mut server.conn())
        .unwrap();
    assert!(!exists);
}

fn alert_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("signal", DataType::Utf8, false),
        Field::new("grade", DataType::Utf8, false),
        Field::new("queue", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("event_time", DataType::Int64, false),
        Field::new("reasons", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["b1", "b2", "b3"])),
            Arc::new(StringArray::from(vec!["tamper", "overdue", "cross_border"])),
            Arc::new(StringArray::from(vec!["high", "low", "medium"])),
            Arc::new(StringArray::from(vec!["lock", "sms", "review"])),
            Arc::new(StringArray::from(vec!["d1", "d2", "d3"])),
            Arc::new(StringArray::from(vec![Some("C1"), None, Some("C3")])),
            Arc::new(Int64Array::from(vec![10, 20, 30])),
            Arc::new(StringArray::from(vec![
                Some(r#"[{"rule":"tamper"}]"#),
                None,
                None,
            ])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn arrow_batches_and_the_engine_sink_trait() {
    let server = RedisServer::start();
    let keys = Keys::new("s5:lw:");
    let s = sink(&server, keys.prefix(), |_| {});
    assert_eq!(
        s.write_batch(&alert_batch()).await.unwrap(),
        report(3, 0, 0)
    );
    let lock = stream(&server, &keys.queue(Queue::Lock));
    assert_eq!(lock[0].reasons[0].rule, "tamper");
    assert_eq!(lock[0].event_time, 10);

    // the engine's synchronous Sink, called from inside a runtime
    let mut b =
        BlockingRedisSink::new("alerts", RedisSinkConfig::new(server.url(), "s5b:lw:")).unwrap();
    b.write(&alert_batch()).unwrap();
    b.write(&alert_batch()).unwrap();
    b.flush().unwrap();
    let st = b.stats();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (g(&st.written), g(&st.duplicates), g(&st.round_trips)),
        (3, 3, 2)
    );
    assert_eq!(xlen(&server, "s5b:lw:queue:sms"), 1);
}

#[tokio::test]
async fn redis_down_then_back_the_batch_is_written_once() {
    let mut server = RedisServer::start();
    let keys = Keys::new("s6:lw:");
    let s = Arc::new(sink(&server, keys.prefix(), |c| {
        c.redis.backoff_max_ms = 200
    }));
    s.write_alerts(&[alert(
        "w0",
        "d0",
        SignalKind::Tamper,
        Grade::Low,
        Queue::Sms,
        1,
    )])
    .await
    .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut server.conn()).unwrap();
    server.kill();
    let s2 = Arc::clone(&s);
    let task = tokio::spawn(async move {
        s2.write_alerts(&[
            alert("w0", "d0", SignalKind::Tamper, Grade::Low, Queue::Sms, 1),
            alert("w1", "d1", SignalKind::Tamper, Grade::Low, Queue::Sms, 2),
        ])
        .await
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!task.is_finished());
    server.restart();
    assert_eq!(task.await.unwrap().unwrap(), report(1, 1, 0));
    assert_eq!(xlen(&server, &keys.queue(Queue::Sms)), 2);
}
