//! Redis lookup join source: state for the distinct keys of a batch, one `MGET` per batch.
//!
//! Design decision 3. For each Arrow batch the engine hands the key column (device ids,
//! customer ids) to [`RedisLookup`]:
//!
//! 1. the distinct non-null keys are collected;
//! 2. what the bounded TTL cache ([`cache`]) knows is served from it, misses included;
//! 3. the rest is fetched with **one** `MGET {key_prefix}{key} ...` round trip (none when
//!    everything was cached);
//! 4. the JSON values are decoded with arrow-json into the lookup table's Arrow schema
//!    (e.g. [`leasewatch_schemas::lease_schema`]), once per batch for all distinct keys.
//!
//! Two result shapes, pick what the join needs:
//!
//! * [`RedisLookup::lookup`]: a batch **aligned with the input rows** (row `i` is the state
//!   of key `i`, or all nulls when there is none). Appending its columns to the input batch
//!   *is* the `LEFT JOIN ... ON key` (the key is the table's primary key, so the join is a
//!   gather): no DataFusion join needed, no row ever dropped.
//! * [`RedisLookup::lookup_distinct`]: one row per distinct key that has state (a key column
//!   plus the state columns) and, per input row, the index of its state row (null: none).
//!   For registering the state as a table and letting DataFusion plan the join;
//!   [`DistinctLookup::aligned`] turns it into the first shape.
//!
//! Missing keys and null keys give null state. A value that is not one JSON object of the
//! schema (malformed) gives null state too, is logged with its key and counted in
//! [`LookupStats::malformed`]; it never fails the batch. While Redis is unreachable the call
//! waits and retries (see [`crate::redis_client`]): the batch is held, not dropped, until
//! Redis is back or the give-up deadline passes (then a retryable [`LookupError`]).

pub mod cache;
pub mod config;

pub use cache::{Cached, LookupCache};
pub use config::{CacheConfig, LookupConfig};

use crate::redis_client::{RedisConn, RedisError, Request, RetryCounters};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A lookup failed as a whole (individual bad values never fail it).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Redis: bad configuration, unavailable (retryable), refused, or a reply bug.
    #[error("lookup: {0}")]
    Redis(#[from] RedisError),
    /// Bad input: the key column is not a string column.
    #[error("lookup: key column has type {0}, expected a string column")]
    KeyType(DataType),
    /// Bad input: the lookup settings.
    #[error("lookup configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A bug: building the state batch failed.
    #[error("lookup: internal error building the state batch: {0}")]
    Internal(String),
}

impl LookupError {
    /// Whether the same call may succeed later (Redis was down): the engine should hold the
    /// batch and retry, not drop it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_retryable())
    }
}

/// Counters of one lookup table (plain atomics; the metrics module exports them).
#[derive(Debug, Default)]
pub struct LookupStats {
    /// Batches looked up.
    pub batches: AtomicU64,
    /// Round trips to Redis (`MGET`s sent, retries not counted).
    pub round_trips: AtomicU64,
    /// Keys sent in `MGET`s.
    pub keys_fetched: AtomicU64,
    /// Keys fetched that had a value.
    pub keys_found: AtomicU64,
    /// Distinct keys served by the cache (found or known missing).
    pub cache_hits: AtomicU64,
    /// Distinct keys the cache could not serve.
    pub cache_misses: AtomicU64,
    /// Values that were not one JSON object of the schema (their rows are null).
    pub malformed: AtomicU64,
    /// Times a batch was held because Redis stayed unreachable past the retry deadline
    /// (the lookup join then waits and tries again: the batch is never dropped).
    pub held: AtomicU64,
    /// Connection-level retries and errors.
    pub redis: RetryCounters,
}

/// A copy of [`LookupStats`] at one moment (also the per-table part of the replay
/// summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LookupStatsSnapshot {
    /// See [`LookupStats::batches`].
    pub batches: u64,
    /// See [`LookupStats::round_trips`].
    pub round_trips: u64,
    /// See [`LookupStats::keys_fetched`].
    pub keys_fetched: u64,
    /// See [`LookupStats::keys_found`].
    pub keys_found: u64,
    /// See [`LookupStats::cache_hits`].
    pub cache_hits: u64,
    /// See [`LookupStats::cache_misses`].
    pub cache_misses: u64,
    /// See [`LookupStats::malformed`].
    pub malformed: u64,
    /// See [`LookupStats::held`].
    pub held: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Failed attempts of any kind.
    pub errors: u64,
}

impl LookupStats {
    /// The counters now.
    pub fn snapshot(&self) -> LookupStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LookupStatsSnapshot {
            batches: g(&self.batches),
            round_trips: g(&self.round_trips),
            keys_fetched: g(&self.keys_fetched),
            keys_found: g(&self.keys_found),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            malformed: g(&self.malformed),
            held: g(&self.held),
            retries: g(&self.redis.retries),
            errors: g(&self.redis.errors),
        }
    }
}

/// State of the distinct keys of a batch, and where each input row's state is.
#[derive(Debug, Clone)]
pub struct DistinctLookup {
    /// One row per distinct key that has state: the key column
    /// ([`LookupConfig::key_column`], the key without prefix) then the state columns (all
    /// nullable).
    pub state: RecordBatch,
    /// One entry per input row: the row of `state` holding its state, null when it has
    /// none (null key, no such key, malformed value).
    pub indices: UInt32Array,
}

impl DistinctLookup {
    /// State aligned with the input rows (without the key column): row `i` is input row
    /// `i`'s state or nulls.
    pub fn aligned(&self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let n = self.indices.len();
        let columns: Vec<ArrayRef> = if self.state.num_rows() == 0 {
            schema
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), n))
                .collect()
        } else {
            self.state.columns()[1..]
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &self.indices, None))
                .collect::<Result<_, _>>()?
        };
        RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )
    }
}

/// A Redis lookup table: cache + one `MGET` per batch + arrow-json decode.
#[derive(Debug)]
pub struct RedisLookup {
    conn: RedisConn,
    config: LookupConfig,
    value_schema: SchemaRef,
    aligned_schema: SchemaRef,
    state_schema: SchemaRef,
    cache: Mutex<LookupCache>,
    stats: Arc<LookupStats>,
}

/// `schema` with every top-level field nullable.
fn nullable(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect()
}

impl RedisLookup {
    /// A lookup of values decoded into `value_schema` (e.g. `lease_schema()`; fields not in
    /// the JSON must be nullable, JSON fields not in the schema are ignored). Connects on
    /// first use.
    pub fn new(config: LookupConfig, value_schema: SchemaRef) -> Result<Self, LookupError> {
        config.validate("lookup").map_err(LookupError::Config)?;
        let conn = RedisConn::new(&config.redis)?;
        let aligned_schema = Arc::new(Schema::new(nullable(&value_schema)));
        let mut state_fields = vec![Field::new(&config.key_column, DataType::Utf8, false)];
        state_fields.extend(nullable(&value_schema));
        let state_schema = Arc::new(Schema::new(state_fields));
        Ok(Self {
            conn,
            cache: Mutex::new(LookupCache::new(&config.cache)),
            config,
            value_schema,
            aligned_schema,
            state_schema,
            stats: Arc::new(LookupStats::default()),
        })
    }

    /// Schema of [`Self::lookup`]'s result: the value schema, every field nullable.
    pub fn aligned_schema(&self) -> SchemaRef {
        Arc::clone(&self.aligned_schema)
    }

    /// Schema of [`DistinctLookup::state`]: the key column, then the value fields (nullable).
    pub fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.state_schema)
    }

    /// The counters (shared: keep the `Arc` for the metrics exporter).
    pub fn stats(&self) -> Arc<LookupStats> {
        Arc::clone(&self.stats)
    }

    /// The settings.
    pub fn config(&self) -> &LookupConfig {
        &self.config
    }

    /// Empties the cache (e.g. after `state load`).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// State aligned with `keys` (LEFT JOIN semantics; see the module docs).
    pub async fn lookup(&self, keys: &StringArray) -> Result<RecordBatch, LookupError> {
        let d = self.lookup_distinct(keys).await?;
        d.aligned(&self.aligned_schema)
            .map_err(|e| LookupError::Internal(e.to_string()))
    }

    /// [`Self::lookup`] for any string column (`Utf8`, `LargeUtf8`, `Utf8View`, dictionary).
    pub async fn lookup_array(&self, keys: &dyn Array) -> Result<RecordBatch, LookupError> {
        if let Some(s) = keys.as_string_opt::<i32>() {
            return self.lookup(s).await;
        }
        let cast = arrow::compute::cast(keys, &DataType::Utf8)
            .map_err(|_| LookupError::KeyType(keys.data_type().clone()))?;
        match cast.as_string_opt::<i32>() {
            Some(s) => self.lookup(s).await,
            None => Err(LookupError::KeyType(keys.data_type().clone())),
        }
    }

    /// The distinct state rows of `keys` and an index per input row (see the module docs).
    pub async fn lookup_distinct(&self, keys: &StringArray) -> Result<DistinctLookup, LookupError> {
        let stats = &self.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);

        // 1. distinct keys
        let mut position: HashMap<&str, u32> = HashMap::with_capacity(keys.len().min(8192));
        let mut distinct: Vec<&str> = Vec::new();
        let mut row_distinct: Vec<u32> = Vec::with_capacity(keys.len());
        let mut row_valid: Vec<bool> = Vec::with_capacity(keys.len());
        for k in keys.iter() {
            match k {
                Some(k) => {
                    let next = distinct.len() as u32;
                    let i = *position.entry(k).or_insert_with(|| {
                        distinct.push(k);
                        next
                    });
                    row_distinct.push(i);
                    row_valid.push(true);
                }
                None => {
                    row_distinct.push(0);
                    row_valid.push(false);
                }
            }
        }

        // 2. cache
        let now = Instant::now();
        let mut values: Vec<Option<Bytes>> = vec![None; distinct.len()];
        let mut misses: Vec<u32> = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (i, k) in distinct.iter().enumerate() {
                match cache.get(k, now) {
                    Some(Cached::Found(v)) => values[i] = Some(v),
                    Some(Cached::Missing) => {}
                    None => misses.push(i as u32),
                }
            }
        }
        let hits = distinct.len() - misses.len();
        stats.cache_hits.fetch_add(hits as u64, Ordering::Relaxed);
        stats
            .cache_misses
            .fetch_add(misses.len() as u64, Ordering::Relaxed);

        // 3. one MGET for the misses
        if !misses.is_empty() {
            self.fetch(&distinct, &misses, &mut values).await?;
        }

        // 4. decode all present values at once
        let (decoded, state_row, malformed) =
            decode_values(&self.value_schema, &values).map_err(LookupError::Internal)?;
        for (i, reason) in &malformed {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            let key = distinct.get(*i).copied().unwrap_or_default();
            tracing::warn!(
                key = %format_args!("{}{key}", self.config.key_prefix),
                reason = %reason,
                "malformed lookup value: its rows get null state"
            );
        }

        // 5. cache what was fetched (malformed values as misses)
        if !misses.is_empty() || !malformed.is_empty() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for &i in &misses {
                let i = i as usize;
                let v = if state_row[i].is_some() {
                    values[i].clone()
                } else {
                    None
                };
                cache.insert(distinct[i], v, now);
            }
            for (i, _) in &malformed {
                cache.insert(distinct[*i], None, now);
            }
        }

        // 6. the state batch (key + values) and the per-row indices
        let mut state_keys: Vec<&str> = vec![""; decoded.num_rows()];
        for (i, r) in state_row.iter().enumerate() {
            if let Some(r) = r {
                state_keys[*r as usize] = distinct[i];
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(decoded.num_columns() + 1);
        columns.push(Arc::new(StringArray::from(state_keys)));
        columns.extend(decoded.columns().iter().cloned());
        let state = RecordBatch::try_new(Arc::clone(&self.state_schema), columns)
            .map_err(|e| LookupError::Internal(e.to_string()))?;

        let mut idx: Vec<u32> = Vec::with_capacity(row_distinct.len());
        let mut valid: Vec<bool> = Vec::with_capacity(row_distinct.len());
        for (d, ok) in row_distinct.iter().zip(&row_valid) {
            match (ok, state_row.get(*d as usize).copied().flatten()) {
                (true, Some(r)) => {
                    idx.push(r);
                    valid.push(true);
                }
                _ => {
                    idx.push(0);
                    valid.push(false);
                }
            }
        }
        let indices = UInt32Array::new(ScalarBuffer::from(idx), Some(NullBuffer::from(valid)));
        Ok(DistinctLookup { state, indices })
    }

    /// One `MGET` for `distinct[misses]`, results into `values`.
    async fn fetch(
        &self,
        distinct: &[&str],
        misses: &[u32],
        values: &mut [Option<Bytes>],
    ) -> Result<(), LookupError> {
        let prefix = &self.config.key_prefix;
        let mut cmd = redis::cmd("MGET");
        let mut key = String::with_capacity(prefix.len() + 32);
        for &i in misses {
            key.clear();
            key.push_str(prefix);
            key.push_str(distinct[i as usize]);
            cmd.arg(key.as_str());
        }
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats
            .keys_fetched
            .fetch_add(misses.len() as u64, Ordering::Relaxed);
        let reply: Vec<redis::Value> = self
            .conn
            .query(Request::Cmd(&cmd), "MGET", &self.stats.redis)
            .await?;
        if reply.len() != misses.len() {
            return Err(LookupError::Redis(RedisError::Internal(format!(
                "MGET of {} keys returned {} values",
                misses.len(),
                reply.len()
            ))));
        }
        let mut found = 0u64;
        for (&i, v) in misses.iter().zip(reply) {
            let v = match v {
                redis::Value::BulkString(b) => Some(Bytes::from(b)),
                redis::Value::SimpleString(s) => Some(Bytes::from(s)),
                _ => None,
            };
            found += u64::from(v.is_some());
            values[i as usize] = v;
        }
        self.stats.keys_found.fetch_add(found, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a value was rejected, as (index into `values`, reason).
type Malformed = Vec<(usize, String)>;

/// Decodes the present `values` (each must be exactly one JSON object of `schema`) into one
/// batch. Returns the batch, the batch row of each value (None: absent or malformed), and
/// the malformed ones. Fast path: one decoder for all values; only when that fails is each
/// value decoded alone to find the bad ones.
fn decode_values(
    schema: &SchemaRef,
    values: &[Option<Bytes>],
) -> Result<(RecordBatch, Vec<Option<u32>>, Malformed), String> {
    let present = values.iter().filter(|v| v.is_some()).count();
    if present == 0 {
        return Ok((
            RecordBatch::new_empty(Arc::clone(schema)),
            vec![None; values.len()],
            Vec::new(),
        ));
    }
    let builder = || {
        arrow_json::ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(present.max(1))
            .build_decoder()
    };
    // fast path
    let mut decoder = builder().map_err(|e| e.to_string())?;
    let mut ok = true;
    for v in values.iter().flatten() {
        let before = decoder.len();
        match decoder.decode(v) {
            Ok(n)
                if n == v.len() && !decoder.has_partial_record() && decoder.len() == before + 1 => {
            }
            _ => {
                ok = false;
                break;
            }
        }
    }
    if ok
        && let Ok(Some(batch)) = decoder.flush()
        && batch.num_rows() == present
    {
        let mut rows = Vec::with_capacity(values.len());
        let mut r = 0u32;
        for v in values {
            rows.push(v.as_ref().map(|_| {
                r += 1;
                r - 1
            }));
        }
        return Ok((batch, rows, Vec::new()));
    }

    // slow path: one value at a time
    let mut good: Vec<RecordBatch> = Vec::with_capacity(present);
    let mut rows = Vec::with_capacity(values.len());
    let mut malformed = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            rows.push(None);
            continue;
        };
        match decode_one(schema, v) {
            Ok(b) => {
                rows.push(Some(good.len() as u32));
                good.push(b);
            }
            Err(reason) => {
                rows.push(None);
                malformed.push((i, reason));
            }
        }
    }
    let batch = arrow::compute::concat_batches(schema, &good).map_err(|e| e.to_string())?;
    Ok((batch, rows, malformed))
}

/// Decodes one value that must be exactly one JSON object of `schema`.
fn decode_one(schema: &SchemaRef, v: &[u8]) -> Result<RecordBatch, String> {
    let mut d = arrow_json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(2)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let n = d.decode(v).map_err(|e| e.to_string())?;
    if n != v.len() || d.has_partial_record() {
        return Err("not a complete JSON object".into());
    }
    if d.len() != 1 {
        return Err(format!("expected one JSON object, found {}", d.len()));
    }
    match d.flush() {
        Ok(Some(b)) if b.num_rows() == 1 => Ok(b),
        Ok(_) => Err("expected one JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    fn vals(v: &[Option<&'static str>]) -> Vec<Option<Bytes>> {
        v.iter()
            .map(|s| s.map(|s| Bytes::from_static(s.as_bytes())))
            .collect()
    }

    #[test]
    fn decode_fast_path_aligns_rows() {
        let v = vals(&[
            Some(r#"{"a":1}"#),
            None,
            Some(r#" {"a":2,"b":"x","extra":true} "#),
        ]);
        let (b, rows, bad) = decode_values(&schema(), &v).unwrap();
        assert!(bad.is_empty());
        assert_eq!(rows, vec![Some(0), None, Some(1)]);
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(a.values(), &[1, 2]);
    }

    #[test]
    fn decode_isolates_malformed_values() {
        let v = vals(&[
            Some(r#"{"a":1}"#),
            Some(r#"{"a":"#),
            Some(r#"{"a":2}{"a":3}"#),
            Some(r#"{"b":"no a"}"#),
            Some(r#"{"a":"x"}"#),
            Some("   "),
            Some("[1]"),
            Some(r#"{"a":4}"#),
        ]);
        let (b, rows, bad) = decode_values(&schema(), &v).unwrap();
        assert_eq!(
            rows,
            vec![Some(0), None, None, None, None, None, None, Some(1)]
        );
        assert_eq!(
            bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(a.values(), &[1, 4]);
    }

    #[test]
    fn aligned_with_no_state_is_all_nulls() {
        let s = Arc::new(Schema::new(nullable(&schema())));
        let mut f = vec![Field::new("key", DataType::Utf8, false)];
        f.extend(nullable(&schema()));
        let d = DistinctLookup {
            state: RecordBatch::new_empty(Arc::new(Schema::new(f))),
            indices: UInt32Array::from(vec![None, None, None]),
        };
        let b = d.aligned(&s).unwrap();
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.column(0).null_count(), 3);
    }
}
