//! Redis alert sink: collection-queue messages (Streams or lists), idempotent by alert id,
//! with suppression and the customer risk profile, one round trip per batch.
//!
//! Each alert becomes a [`QueueMessage`] and one invocation of a small Lua script; all the
//! invocations of a batch go in one pipeline (`SCRIPT LOAD` first, then one `EVALSHA` per
//! alert), so a batch costs one round trip. The script runs atomically per alert:
//!
//! 1. `{prefix}alert:{alert_id}` exists: a duplicate (a replay): nothing is written.
//! 2. Suppression (`cooldown_ms > 0`): `{prefix}suppress:{device}:{signal}` holds
//!    `rank:event_ms` of the last alert written for that device and signal. An alert whose
//!    event time is within the cooldown of it (either side: late data) and whose grade is
//!    not higher is suppressed: the alert id is marked written (so a replay decides the
//!    same) and nothing else happens; the cooldown is *not* extended (a signal that keeps
//!    firing alerts again once per cooldown of event time, in a live run and in a replay
//!    alike). The key expires after the dedup TTL. Lock requests (queue `lock`) are
//!    tracked apart (`...:{signal}:lock`): the call that goes with them does not suppress them.
//! 3. Otherwise the message is written (`XADD {prefix}queue:{queue} [MAXLEN ~ n] * field
//!    value ...`, or `RPUSH {list_key_prefix}{queue} json`), then the alert id is marked
//!    (`SET ... PX dedup_ttl_ms`), the suppression key set, and the risk profile updated:
//!    `HINCRBY {prefix}risk:{customer} count:{signal} 1` and `HSET last_grade last_alert_ms`
//!    (the alert's event time; only when not older than the stored one).
//!
//! The queue write comes first because Redis does not roll a script back on error: a failed
//! write leaves nothing behind, and a retry of the batch writes each alert exactly once.
//! A crash between batches, or a retry after a lost reply, finds the ids already marked.
//! (Idempotence lasts as long as Redis keeps the marks: a Redis without persistence that
//! restarts forgets them.)
//!
//! Stream entry fields are the [`QueueMessage`] fields in order (`lease_id`/`customer_id`
//! omitted when unknown), numbers in decimal, `reasons` as a JSON array string;
//! [`message_from_fields`] reads one back. The list form holds the message as JSON.

pub mod config;

pub use config::{RedisSinkConfig, Target};

use crate::redis_client::{RedisConn, RedisError, Request, RetryCounters, now_ms};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit};
use leasewatch_schemas::{Alert, CreditBand, Grade, Keys, Queue, QueueMessage, Reason, SignalKind};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

/// The per-alert script (see the module docs). Returns 0 duplicate, 1 written, 2 suppressed.
const ALERT_SCRIPT: &str = r#"
-- KEYS: 1 alert mark, 2 suppression, 3 queue (stream or list), 4 risk profile (optional)
-- ARGV: 1 dedup ttl ms, 2 cooldown ms, 3 grade rank, 4 target, 5 signal, 6 grade,
--       7 event time ms, 8 stream maxlen (0: none), 9 list payload, 10.. stream fields
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local cooldown = tonumber(ARGV[2])
local event = tonumber(ARGV[7])
if cooldown > 0 then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    local sep = string.find(prev, ':', 1, true)
    local rank = tonumber(sep and string.sub(prev, 1, sep - 1) or prev)
    local at = sep and tonumber(string.sub(prev, sep + 1)) or event
    local dt = event - at
    if rank >= tonumber(ARGV[3]) and dt < cooldown and dt > -cooldown then
      redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
      return 2
    end
  end
end
if ARGV[4] == 'list' then
  redis.call('RPUSH', KEYS[3], ARGV[9])
else
  local maxlen = tonumber(ARGV[8])
  if maxlen > 0 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 10))
  else
    redis.call('XADD', KEYS[3], '*', unpack(ARGV, 10))
  end
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
if cooldown > 0 then
  redis.call('SET', KEYS[2], ARGV[3] .. ':' .. ARGV[7], 'PX', math.max(cooldown, tonumber(ARGV[1])))
end
if #KEYS >= 4 then
  redis.call('HINCRBY', KEYS[4], 'count:' .. ARGV[5], 1)
  local last = tonumber(redis.call('HGET', KEYS[4], 'last_alert_ms'))
  if (not last) or tonumber(ARGV[7]) >= last then
    redis.call('HSET', KEYS[4], 'last_grade', ARGV[6], 'last_alert_ms', ARGV[7])
  end
end
return 1
"#;

/// The sink failed for a batch.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// Bad input: a row of the alert batch (which row, which column, what was wrong).
    #[error("redis sink: row {row}, column {column}: {message}")]
    BadRow {
        /// Row in the batch.
        row: usize,
        /// Column name.
        column: String,
        /// What was wrong.
        message: String,
    },
    /// Bad input: the sink settings (every problem).
    #[error("redis sink configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Redis: bad URL/credentials, unavailable (retryable), refused, or a reply bug.
    #[error("redis sink: {0}")]
    Redis(#[from] RedisError),
}

impl RedisSinkError {
    /// Whether writing the same batch again later may succeed (Redis was down). Rewriting
    /// is always safe: alerts already written are skipped.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_retryable())
    }
}

/// Counters of the sink (plain atomics; the metrics module exports them).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Batches written.
    pub batches: AtomicU64,
    /// Round trips (pipelines sent, retries not counted).
    pub round_trips: AtomicU64,
    /// Alerts written to a queue.
    pub written: AtomicU64,
    /// Alerts skipped because their id was already written.
    pub duplicates: AtomicU64,
    /// Alerts suppressed (same device + signal within the cooldown, grade not higher).
    pub suppressed: AtomicU64,
    /// Times a batch was held because Redis stayed unreachable past the retry deadline.
    pub held: AtomicU64,
    /// Connection-level retries and errors.
    pub redis: RetryCounters,
    /// Alerts written per signal, grade and queue, their end-to-end latency and the
    /// devices that alerted lately (exported by `crate::metrics`).
    pub alerts: crate::metrics::AlertTally,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Alerts written to a queue.
    pub written: usize,
    /// Alerts already written before (skipped).
    pub duplicates: usize,
    /// Alerts suppressed.
    pub suppressed: usize,
}

/// Writes alerts to Redis (see the module docs).
#[derive(Debug)]
pub struct RedisAlertSink {
    conn: RedisConn,
    config: RedisSinkConfig,
    keys: Keys,
    list_prefix: String,
    script: ::redis::Script,
    stats: Arc<SinkStats>,
}

impl RedisAlertSink {
    /// A sink with `config`. Connects on first use; fails only on bad settings.
    pub fn new(config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        config
            .validate("sink.redis")
            .map_err(RedisSinkError::Config)?;
        let conn = RedisConn::new(&config.redis)?;
        Ok(Self {
            conn,
            keys: Keys::new(config.prefix.clone()),
            list_prefix: config.list_key_prefix(),
            config,
            script: ::redis::Script::new(ALERT_SCRIPT),
            stats: Arc::new(SinkStats::default()),
        })
    }

    /// The counters (shared: keep the `Arc` for the metrics exporter).
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// The settings.
    pub fn config(&self) -> &RedisSinkConfig {
        &self.config
    }

    /// Key of the suppression state of a device and signal.
    pub fn suppress_key(&self, device_id: &str, signal: SignalKind) -> String {
        self.keys.suppress(device_id, signal)
    }

    /// Key a message for `queue` goes to (a stream, or a list with `target = list`).
    pub fn queue_key(&self, queue: Queue) -> String {
        match self.config.target {
            Target::Stream => self.keys.queue(queue),
            Target::List => format!("{}{}", self.list_prefix, queue.as_str()),
        }
    }

    /// Writes `alerts` (emitted now) in one round trip.
    pub async fn write_alerts(&self, alerts: &[Alert]) -> Result<WriteReport, RedisSinkError> {
        let now = now_ms();
        let msgs: Vec<QueueMessage> = alerts
            .iter()
            .map(|a| QueueMessage::from_alert(a, now))
            .collect();
        self.write_messages(&msgs).await
    }

    /// Writes an Arrow batch of alerts (columns named as [`Alert`]'s fields; see
    /// [`alerts_from_batch`]) in one round trip.
    pub async fn write_batch(&self, batch: &RecordBatch) -> Result<WriteReport, RedisSinkError> {
        let alerts = alerts_from_batch(batch)?;
        self.write_alerts(&alerts).await
    }

    /// Writes `msgs` in one round trip.
    pub async fn write_messages(
        &self,
        msgs: &[QueueMessage],
    ) -> Result<WriteReport, RedisSinkError> {
        if msgs.is_empty() {
            return Ok(WriteReport::default());
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(ALERT_SCRIPT);
        let target = match self.config.target {
            Target::Stream => "stream",
            Target::List => "list",
        };
        for m in msgs {
            let reasons = serde_json::to_string(&m.reasons)
                .map_err(|e| RedisError::Internal(format!("reasons to JSON: {e}")))?;
            let list_payload = match self.config.target {
                Target::List => serde_json::to_string(m)
                    .map_err(|e| RedisError::Internal(format!("message to JSON: {e}")))?,
                Target::Stream => String::new(),
            };
            let risk = match (&m.customer_id, self.config.risk_profile) {
                (Some(c), true) => Some(self.keys.risk(c)),
                _ => None,
            };
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(if risk.is_some() { 4 } else { 3 })
                .arg(self.keys.alert_seen(&m.alert_id))
                .arg(if m.queue == Queue::Lock {
                    // A lock request rides along with the call of the same signal: it has
                    // its own suppression so the call does not suppress it.
                    format!("{}:lock", self.suppress_key(&m.device_id, m.signal))
                } else {
                    self.suppress_key(&m.device_id, m.signal)
                })
                .arg(self.queue_key(m.queue));
            if let Some(r) = &risk {
                cmd.arg(r);
            }
            cmd.arg(self.config.dedup_ttl_ms)
                .arg(self.config.cooldown_ms)
                .arg(grade_rank(m.grade))
                .arg(target)
                .arg(m.signal.as_str())
                .arg(m.grade.as_str())
                .arg(m.event_time)
                .arg(self.config.stream_maxlen)
                .arg(list_payload);
            if self.config.target == Target::Stream {
                cmd.arg("v")
                    .arg(m.v)
                    .arg("alert_id")
                    .arg(&m.alert_id)
                    .arg("queue")
                    .arg(m.queue.as_str())
                    .arg("grade")
                    .arg(m.grade.as_str())
                    .arg("signal")
                    .arg(m.signal.as_str())
                    .arg("device_id")
                    .arg(&m.device_id);
                if let Some(l) = &m.lease_id {
                    cmd.arg("lease_id").arg(l);
                }
                if let Some(c) = &m.customer_id {
                    cmd.arg("customer_id").arg(c);
                }
                cmd.arg("event_time")
                    .arg(m.event_time)
                    .arg("emitted_at")
                    .arg(m.emitted_at)
                    .arg("reasons")
                    .arg(reasons);
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let reply: Vec<::redis::Value> = self
            .conn
            .query(Request::Pipe(&pipe), "alert script", &self.stats.redis)
            .await?;
        if reply.len() != msgs.len() + 1 {
            return Err(RedisError::Internal(format!(
                "pipeline of {} commands returned {} replies",
                msgs.len() + 1,
                reply.len()
            ))
            .into());
        }
        let mut report = WriteReport::default();
        let mut written = Vec::with_capacity(msgs.len());
        for (m, v) in msgs.iter().zip(&reply[1..]) {
            match v {
                ::redis::Value::Int(0) => report.duplicates += 1,
                ::redis::Value::Int(1) => {
                    report.written += 1;
                    written.push(m);
                }
                ::redis::Value::Int(2) => {
                    report.suppressed += 1;
                    tracing::debug!(alert_id = %m.alert_id, device_id = %m.device_id, signal = m.signal.as_str(), grade = m.grade.as_str(), "alert suppressed");
                }
                other => {
                    return Err(RedisError::Internal(format!(
                        "alert script for {} returned {other:?}",
                        m.alert_id
                    ))
                    .into());
                }
            }
        }
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.stats.written, report.written);
        add(&self.stats.duplicates, report.duplicates);
        add(&self.stats.suppressed, report.suppressed);
        self.stats.alerts.record(written, now_ms());
        Ok(report)
    }
}

fn grade_rank(g: Grade) -> u8 {
    match g {
        Grade::Info => 0,
        Grade::Low => 1,
        Grade::Medium => 2,
        Grade::High => 3,
        Grade::Critical => 4,
    }
}

/// A [`QueueMessage`] from the fields of a stream entry (as the sink writes them).
pub fn message_from_fields<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<QueueMessage, String> {
    let mut obj = serde_json::Map::new();
    for (k, v) in fields {
        let value = match k {
            "v" | "event_time" | "emitted_at" => serde_json::Value::Number(
                v.parse::<i64>()
                    .map_err(|_| format!("field {k}: {v:?} is not an integer"))?
                    .into(),
            ),
            "reasons" => serde_json::from_str(v).map_err(|e| format!("field reasons: {e}"))?,
            _ => serde_json::Value::String(v.to_string()),
        };
        obj.insert(k.to_string(), value);
    }
    serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| e.to_string())
}

/// Reads alerts from an Arrow batch whose columns are named as [`Alert`]'s fields.
///
/// Required: `alert_id`, `signal`, `grade`, `queue`, `device_id` (strings) and `event_time`
/// (Int64 ms or any Timestamp). Optional: `lease_id`, `customer_id`, `credit_band`
/// (strings), `window_start`, `window_end` (like `event_time`), `days_past_due` (integer),
/// `reasons` (a JSON array string of `{rule, value?, threshold?, detail?}`). Other columns
/// are ignored. A bad value fails the batch with its row and column.
pub fn alerts_from_batch(batch: &RecordBatch) -> Result<Vec<Alert>, RedisSinkError> {
    let n = batch.num_rows();
    let bad = |row: usize, column: &str, message: String| RedisSinkError::BadRow {
        row,
        column: column.to_string(),
        message,
    };
    let col = |name: &str, required: bool| -> Result<Option<ArrayRef>, RedisSinkError> {
        match batch.schema().index_of(name) {
            Ok(i) => Ok(Some(Arc::clone(batch.column(i)))),
            Err(_) if required => Err(bad(0, name, "required column is missing".into())),
            Err(_) => Ok(None),
        }
    };
    let strings = |name: &str, required: bool| -> Result<Option<ArrayRef>, RedisSinkError> {
        match col(name, required)? {
            None => Ok(None),
            Some(a) => arrow::compute::cast(&a, &DataType::Utf8)
                .map(Some)
                .map_err(|e| bad(0, name, format!("not a string column: {e}"))),
        }
    };
    let millis = |name: &str, required: bool| -> Result<Option<ArrayRef>, RedisSinkError> {
        let Some(a) = col(name, required)? else {
            return Ok(None);
        };
        let a = match a.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => a,
            DataType::Timestamp(_, tz) => {
                arrow::compute::cast(&a, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))
                    .map_err(|e| bad(0, name, e.to_string()))?
            }
            t => {
                return Err(bad(
                    0,
                    name,
                    format!("expected Int64 ms or a timestamp, got {t}"),
                ));
            }
        };
        arrow::compute::cast(&a, &DataType::Int64)
            .map(Some)
            .map_err(|e| bad(0, name, e.to_string()))
    };
    let alert_id = strings("alert_id", true)?;
    let signal = strings("signal", true)?;
    let grade = strings("grade", true)?;
    let queue = strings("queue", true)?;
    let device_id = strings("device_id", true)?;
    let lease_id = strings("lease_id", false)?;
    let customer_id = strings("customer_id", false)?;
    let credit_band = strings("credit_band", false)?;
    let reasons = strings("reasons", false)?;
    let event_time = millis("event_time", true)?;
    let window_start = millis("window_start", false)?;
    let window_end = millis("window_end", false)?;
    let dpd = match col("days_past_due", false)? {
        None => None,
        Some(a) => Some(
            arrow::compute::cast(&a, &DataType::Int32)
                .map_err(|e| bad(0, "days_past_due", e.to_string()))?,
        ),
    };

    let s = |a: &Option<ArrayRef>, row: usize| -> Option<String> {
        a.as_ref().and_then(|a| {
            let a = a.as_string::<i32>();
            a.is_valid(row).then(|| a.value(row).to_string())
        })
    };
    let i = |a: &Option<ArrayRef>, row: usize| -> Option<i64> {
        a.as_ref().and_then(|a| {
            let a = a.as_primitive::<Int64Type>();
            a.is_valid(row).then(|| a.value(row))
        })
    };
    let req = |a: &Option<ArrayRef>, name: &str, row: usize| -> Result<String, RedisSinkError> {
        s(a, row).ok_or_else(|| bad(row, name, "null in a required column".into()))
    };

    let mut out = Vec::with_capacity(n);
    for row in 0..n {
        let sig = req(&signal, "signal", row)?;
        let gr = req(&grade, "grade", row)?;
        let q = req(&queue, "queue", row)?;
        // Lease and credit text comes from Redis, which other writers share: a value the
        // contract does not know never costs the alert. An unknown band is dropped, and
        // reasons with raw control characters (from state text) are repaired.
        let band = s(&credit_band, row).and_then(|b| match b.trim().to_ascii_uppercase().as_str() {
            "A" => Some(CreditBand::A),
            "B" => Some(CreditBand::B),
            "C" => Some(CreditBand::C),
            "D" => Some(CreditBand::D),
            "E" => Some(CreditBand::E),
            _ => {
                tracing::warn!(row, band = %b.escape_debug(), "credit band outside A-E: dropped from the alert");
                None
            }
        });
        let reasons: Vec<Reason> = match s(&reasons, row) {
            None => Vec::new(),
            Some(r) => match serde_json::from_str(&r) {
                Ok(v) => v,
                Err(first) => serde_json::from_str(&escape_controls(&r)).map_err(|_| {
                    bad(
                        row,
                        "reasons",
                        format!("not a JSON array of reasons: {first}"),
                    )
                })?,
            },
        };
        out.push(Alert {
            alert_id: req(&alert_id, "alert_id", row)?,
            signal: SignalKind::parse(&sig)
                .ok_or_else(|| bad(row, "signal", format!("{sig:?} is not a signal")))?,
            grade: Grade::parse(&gr)
                .ok_or_else(|| bad(row, "grade", format!("{gr:?} is not a grade")))?,
            queue: Queue::parse(&q)
                .ok_or_else(|| bad(row, "queue", format!("{q:?} is not a queue")))?,
            device_id: req(&device_id, "device_id", row)?,
            lease_id: s(&lease_id, row),
            customer_id: s(&customer_id, row),
            event_time: i(&event_time, row)
                .ok_or_else(|| bad(row, "event_time", "null in a required column".into()))?,
            window_start: i(&window_start, row),
            window_end: i(&window_end, row),
            days_past_due: dpd.as_ref().and_then(|a| {
                let a = a.as_primitive::<Int32Type>();
                a.is_valid(row).then(|| a.value(row))
            }),
            credit_band: band,
            reasons,
        });
    }
    Ok(out)
}

/// `text` with every control character written as a JSON `\u00XX` escape (valid inside
/// JSON strings, where SQL-built reasons put state text).
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && (c as u32) < 0x20 {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The alert sink behind the engine's synchronous [`crate::sink::Sink`] trait.
///
/// The async sink runs on a dedicated thread with its own single-threaded tokio runtime;
/// `write` hands it the batch and waits for the result, so it is safe to call from inside
/// the engine's runtime (it blocks the calling thread like the file sinks do). While Redis
/// is down, `write` waits (backpressure) up to the give-up deadline.
pub struct BlockingRedisSink {
    name: String,
    tx: Option<mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    stats: Arc<SinkStats>,
}

type Job = (
    RecordBatch,
    mpsc::Sender<Result<WriteReport, RedisSinkError>>,
);

impl fmt::Debug for BlockingRedisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingRedisSink")
            .field("name", &self.name)
            .finish()
    }
}

impl BlockingRedisSink {
    /// Starts the sink `name` (the SQL table) with `config`.
    pub fn new(name: &str, config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let sink = RedisAlertSink::new(config)?;
        let stats = sink.stats();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RedisError::Internal(format!("starting the sink runtime: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name(format!("redis-sink-{name}"))
            .spawn(move || {
                while let Ok((batch, reply)) = rx.recv() {
                    let r = rt.block_on(sink.write_batch(&batch));
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| RedisError::Internal(format!("starting the sink thread: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            tx: Some(tx),
            worker: Some(worker),
            stats,
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// Writes `batch` and waits for the result.
    pub fn write_blocking(&self, batch: &RecordBatch) -> Result<WriteReport, RedisSinkError> {
        let gone = || RedisError::Internal("the sink thread has stopped".into());
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send((batch.clone(), reply_tx))
            .map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }
}

impl crate::sink::Sink for BlockingRedisSink {
    /// Writes the alerts; while Redis stays unreachable past the client's give-up
    /// deadline, waits and tries again (backpressure on the engine), never dropping them.
    /// Ids already written are skipped, so a retried batch is not written twice.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), crate::sink::SinkError> {
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match self.write_blocking(batch) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    self.stats
                        .held
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(sink = %self.name, error = %e, retry_in_ms = wait.as_millis() as u64, "Redis sink write failed; holding the batch and retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(crate::sink::SinkError {
                        sink: self.name.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), crate::sink::SinkError> {
        // Every write is acknowledged by Redis before it returns.
        Ok(())
    }

    fn redis_stats(&self) -> Option<Arc<SinkStats>> {
        Some(self.stats())
    }
}

impl Drop for BlockingRedisSink {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn alerts_from_an_arrow_batch() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("alert_id", DataType::Utf8, false),
            Field::new("signal", DataType::Utf8, false),
            Field::new("grade", DataType::Utf8, false),
            Field::new("queue", DataType::Utf8, false),
            Field::new("device_id", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, true),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("reasons", DataType::Utf8, true),
        ]));
        let ts = arrow::array::TimestampMicrosecondArray::from(vec![5_000_000, 6_000]);
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a1", "a2"])),
                Arc::new(StringArray::from(vec!["tamper", "sim_mismatch"])),
                Arc::new(StringArray::from(vec!["high", "low"])),
                Arc::new(StringArray::from(vec!["lock", "sms"])),
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(StringArray::from(vec![Some("c1"), None])),
                Arc::new(ts),
                Arc::new(StringArray::from(vec![
                    Some(r#"[{"rule":"tamper","value":1.0}]"#),
                    None,
                ])),
            ],
        )
        .unwrap();
        let a = alerts_from_batch(&b).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].event_time, 5_000);
        assert_eq!(a[1].event_time, 6);
        assert_eq!(a[0].queue, Queue::Lock);
        assert_eq!(a[0].reasons[0].rule, "tamper");
        assert_eq!(a[1].customer_id, None);

        let bad = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("alert_id", DataType::Utf8, false),
                Field::new("signal", DataType::Utf8, false),
                Field::new("grade", DataType::Utf8, false),
                Field::new("queue", DataType::Utf8, false),
                Field::new("device_id", DataType::Utf8, false),
                Field::new("event_time", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a1", "a2"])),
                Arc::new(StringArray::from(vec!["tamper", "nope"])),
                Arc::new(StringArray::from(vec!["high", "low"])),
                Arc::new(StringArray::from(vec!["lock", "sms"])),
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let e = alerts_from_batch(&bad).unwrap_err();
        assert!(
            matches!(&e, RedisSinkError::BadRow { row: 1, column, .. } if column == "signal"),
            "{e}"
        );
    }

    #[test]
    fn stream_fields_round_trip() {
        let m = message_from_fields([
            ("v", "1"),
            ("alert_id", "x"),
            ("queue", "call"),
            ("grade", "medium"),
            ("signal", "overdue"),
            ("device_id", "d"),
            ("event_time", "10"),
            ("emitted_at", "11"),
            ("reasons", "[]"),
        ])
        .unwrap();
        assert_eq!(m.queue, Queue::Call);
        assert_eq!(m.customer_id, None);
    }
}
