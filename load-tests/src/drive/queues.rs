//! The collection-queue reader: `XREAD` on every `lw:queue:{queue}` stream, from the
//! last entry present at the start on (what `$` means, without missing entries between
//! two calls), timing each driven alert from the send of the ping that tripped it.
//!
//! Runs on its own thread with a blocking Redis connection (`XREAD BLOCK`), so a slow
//! read never stalls the connections sending pings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leasewatch_schemas::{Keys, Queue};
use redis::Value;

use super::fleet::Fleet;
use super::stats::{Clock, Stats};

/// How long one `XREAD` blocks, ms.
const BLOCK_MS: u64 = 100;
/// Most entries per stream and call.
const COUNT: u64 = 5_000;

/// The reader's connection and its position in every stream.
pub struct Reader {
    conn: redis::Connection,
    client: redis::Client,
    keys: Vec<String>,
    ids: Vec<String>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("keys", &self.keys)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

/// Connects and notes the last entry of every queue stream (`0-0` for a stream that
/// does not exist yet): the reader starts after them.
pub fn open(url: &str) -> Result<Reader, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| format!("connecting to Redis at {url}: {e}"))?;
    let keys = Keys::default();
    let names: Vec<String> = Queue::ALL.iter().map(|q| keys.queue(*q)).collect();
    let mut ids = Vec::with_capacity(names.len());
    for k in &names {
        let v: Value = redis::cmd("XREVRANGE")
            .arg(k)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut conn)
            .map_err(|e| format!("XREVRANGE {k}: {e}"))?;
        let last = match &v {
            Value::Array(entries) => entries.first().and_then(entry_id),
            _ => None,
        };
        ids.push(last.unwrap_or_else(|| "0-0".to_string()));
    }
    Ok(Reader {
        conn,
        client,
        keys: names,
        ids,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn entry_id(entry: &Value) -> Option<String> {
    match entry {
        Value::Array(parts) => parts.first().and_then(text),
        _ => None,
    }
}

/// The fields of a stream entry the reader uses.
#[derive(Debug, Default)]
struct Message {
    queue: String,
    signal: String,
    device_id: String,
    event_time: Option<i64>,
    emitted_at: Option<i64>,
}

fn message(fields: &Value) -> Message {
    let mut m = Message::default();
    let pairs: Vec<(String, String)> = match fields {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
            .collect(),
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "queue" => m.queue = v,
            "signal" => m.signal = v,
            "device_id" => m.device_id = v,
            "event_time" => m.event_time = v.parse().ok(),
            "emitted_at" => m.emitted_at = v.parse().ok(),
            _ => {}
        }
    }
    m
}

/// `[stream, [[id, fields], ...]]` pairs of an `XREAD` reply (RESP2 array or RESP3 map).
fn streams(reply: &Value) -> Vec<(String, &Vec<Value>)> {
    let mut out = Vec::new();
    match reply {
        Value::Array(items) => {
            for s in items {
                if let Value::Array(kv) = s
                    && let (Some(k), Some(Value::Array(entries))) =
                        (kv.first().and_then(text), kv.get(1))
                {
                    out.push((k, entries));
                }
            }
        }
        Value::Map(kv) => {
            for (k, v) in kv {
                if let (Some(k), Value::Array(entries)) = (text(k), v) {
                    out.push((k, entries));
                }
            }
        }
        _ => {}
    }
    out
}

impl Reader {
    /// Reads until `stop` is set, recording every message in `stats`.
    pub fn run(mut self, fleet: &Fleet, stats: &Stats, clock: Clock, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.keys)
                .arg(&self.ids);
            let reply: Value = match cmd.query(&mut self.conn) {
                Ok(v) => v,
                Err(e) => {
                    if let Ok(mut q) = stats.queues.lock() {
                        q.errors += 1;
                    }
                    stats.error_sample(format!("XREAD: {e}"));
                    std::thread::sleep(Duration::from_millis(500));
                    if let Ok(c) = self
                        .client
                        .get_connection_with_timeout(Duration::from_secs(5))
                    {
                        self.conn = c;
                    }
                    continue;
                }
            };
            let read_us = clock.now_unix_us();
            for (key, entries) in streams(&reply) {
                let Some(pos) = self.keys.iter().position(|k| *k == key) else {
                    continue;
                };
                for e in entries {
                    let Value::Array(parts) = e else { continue };
                    if let Some(id) = parts.first().and_then(text)
                        && let Some(slot) = self.ids.get_mut(pos)
                    {
                        *slot = id;
                    }
                    if let Some(fields) = parts.get(1) {
                        record(fleet, stats, &message(fields), read_us);
                    }
                }
            }
        }
    }
}

fn record(fleet: &Fleet, stats: &Stats, m: &Message, read_us: i64) {
    let emitted = match (m.emitted_at, m.event_time) {
        (Some(a), Some(e)) => Some((a - e).saturating_mul(1000)),
        _ => None,
    };
    // The first message of a driven alerting device, for the signal it was driven to
    // trip, is its alert; later ones (the lock request beside a call) are repeats.
    let mut first_of: Option<(i64, bool)> = None;
    let mut repeat = false;
    let driven = matches!(m.signal.as_str(), "tamper" | "sim_mismatch");
    if driven
        && let Some(&device) = fleet.alerting.get(&m.device_id)
        && let Ok(mut p) = stats.pending.lock()
        && let Some(x) = p.get_mut(&device)
    {
        if x.matched {
            repeat = true;
        } else {
            x.matched = true;
            first_of = Some((x.sent_unix_us, m.event_time == Some(x.event_time)));
        }
    }
    let Ok(mut q) = stats.queues.lock() else {
        return;
    };
    *q.by_queue.entry(m.queue.clone()).or_insert(0) += 1;
    *q.by_signal.entry(m.signal.clone()).or_insert(0) += 1;
    if let Some(us) = emitted {
        q.emitted_minus_event_all.record_us(us);
    }
    match first_of {
        Some((sent, exact)) => {
            q.ping_to_queue.record_us(read_us - sent);
            q.ping_to_queue_interval.record_us(read_us - sent);
            q.exact += u64::from(exact);
            if let Some(us) = emitted {
                q.emitted_minus_event.record_us(us);
            }
        }
        None if repeat => q.repeats += 1,
        None => q.other += 1,
    }
}

/// Starts the reader on its own thread; it stops when `stop` is set.
pub fn spawn(
    reader: Reader,
    ctx: Arc<super::http::Ctx>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let clock = ctx.clock;
        reader.run(&ctx.fleet, &ctx.stats, clock, &stop);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_xread_replies() {
        let fields = Value::Array(vec![
            bulk("queue"),
            bulk("call"),
            bulk("signal"),
            bulk("tamper"),
            bulk("device_id"),
            bulk("356938035643809"),
            bulk("event_time"),
            bulk("1000"),
            bulk("emitted_at"),
            bulk("1250"),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("lw:queue:call"),
            Value::Array(vec![Value::Array(vec![bulk("5-0"), fields])]),
        ])]);
        let s = streams(&reply);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "lw:queue:call");
        let Value::Array(parts) = &s[0].1[0] else {
            panic!("entry")
        };
        assert_eq!(entry_id(&s[0].1[0]).as_deref(), Some("5-0"));
        let m = message(&parts[1]);
        assert_eq!(m.queue, "call");
        assert_eq!(m.signal, "tamper");
        assert_eq!(m.device_id, "356938035643809");
        assert_eq!(m.event_time, Some(1000));
        assert_eq!(m.emitted_at, Some(1250));
    }
}
