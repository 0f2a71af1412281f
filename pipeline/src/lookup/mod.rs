//! Redis lookup join source: state for the distinct keys of a batch, one `MGET` per batch.
//!
//! Design decision 3. For each Arrow batch the engine hands the key column (device ids,
//! customer ids) to [`RedisLookup`]:
//!
//! 1. the distinct non-null keys are collected;
//! 2. what the bounded TTL cache ([`cache`]) knows is served from it, misses included: a
//!    hit is an already decoded row, never JSON to parse again;
//! 3. the rest is fetched with **one** `MGET {key_prefix}{key} ...` round trip (none when
//!    everything was cached), together with the cached values due for a refresh when
//!    there is a round trip anyway or enough of them are due (see [`cache`]);
//! 4. the fetched JSON values are decoded with arrow-json into the lookup table's Arrow
//!    schema (e.g. [`leasewatch_schemas::lease_schema`]), one decoder for all of them, and
//!    the decoded rows are cached.
//!
//! Two result shapes, pick what the join needs:
//!
//! * [`RedisLookup::lookup`]: a batch **aligned with the input rows** (row `i` is the state
//!   of key `i`, or all nulls when there is none). Appending its columns to the input batch
//!   *is* the `LEFT JOIN ... ON key` (the key is the table's primary key, so the join is a
//!   gather): no DataFusion join needed, no row ever dropped.
//! * [`RedisLookup::lookup_distinct`]: where the state of each distinct key is, and per
//!   input row the index of its key's state (null: none). [`DistinctLookup::state`] builds
//!   one row per distinct key that has state (a key column plus the state columns), for
//!   registering the state as a table; [`DistinctLookup::aligned_column`] gathers one
//!   column straight into the first shape (what the engine's join does, for the columns
//!   its query declares).
//!
//! Missing keys and null keys give null state. A value that is not one JSON object of the
//! schema (malformed) gives null state too, is logged with its key and counted in
//! [`LookupStats::malformed`]; it never fails the batch. While Redis is unreachable the call
//! waits and retries (see [`crate::redis_client`]): the batch is held, not dropped, until
//! Redis is back or the give-up deadline passes (then a retryable [`LookupError`]).

pub mod cache;
pub mod config;

pub use cache::{CachedRow, LookupCache};
pub use config::{CacheConfig, LookupConfig};

use crate::redis_client::{RedisConn, RedisError, Request, RetryCounters};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::compute::interleave;
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
    /// Keys sent in `MGET`s: the cache's misses, and values it refreshed ahead of their
    /// expiry.
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

impl LookupStatsSnapshot {
    /// Adds `other`'s counts (two lookups of one table, e.g. one per engine lane).
    pub fn add(&mut self, other: &Self) {
        self.batches += other.batches;
        self.round_trips += other.round_trips;
        self.keys_fetched += other.keys_fetched;
        self.keys_found += other.keys_found;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.malformed += other.malformed;
        self.held += other.held;
        self.retries += other.retries;
        self.errors += other.errors;
    }
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
///
/// The state rows are not copied into one batch: each is a row of a decoded batch (cached
/// or just fetched), gathered only for the columns asked for.
#[derive(Debug, Clone)]
pub struct DistinctLookup {
    /// The lookup's state schema: the key column, then the value columns (all nullable).
    schema: SchemaRef,
    /// The batches the state rows come from, each of `schema`.
    sources: Vec<Arc<RecordBatch>>,
    /// One per distinct key that has state: its (source, row).
    rows: Vec<(usize, usize)>,
    /// One entry per input row: the index into the state rows ([`Self::state`]'s row) of
    /// its key, null when it has none (null key, no such key, malformed value).
    pub indices: UInt32Array,
    /// Per input row, where [`Self::aligned_column`] gathers from: its (source, row), or
    /// `(sources.len(), 0)`, the one-row null array appended for rows without state.
    /// Worked out once, shared by every column gathered.
    picks: Vec<(usize, usize)>,
}

impl DistinctLookup {
    fn new(
        schema: SchemaRef,
        sources: Vec<Arc<RecordBatch>>,
        rows: Vec<(usize, usize)>,
        indices: UInt32Array,
    ) -> Self {
        let null_source = (sources.len(), 0);
        let picks = indices
            .iter()
            .map(|r| {
                r.and_then(|r| rows.get(r as usize).copied())
                    .unwrap_or(null_source)
            })
            .collect();
        Self {
            schema,
            sources,
            rows,
            indices,
            picks,
        }
    }

    /// Distinct keys that have state (rows of [`Self::state`]).
    pub fn state_rows(&self) -> usize {
        self.rows.len()
    }

    /// One row per distinct key that has state: the key column
    /// ([`LookupConfig::key_column`], the key without prefix) then the state columns (all
    /// nullable). Row `r` is the state of the input rows whose [`Self::indices`] is `r`.
    pub fn state(&self) -> Result<RecordBatch, ArrowError> {
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    self.sources.iter().map(|b| b.column(c).as_ref()).collect();
                if arrays.is_empty() {
                    Ok(arrow::array::new_empty_array(
                        self.schema.field(c).data_type(),
                    ))
                } else {
                    interleave(&arrays, &self.rows)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }

    /// Column `column` of the state schema (0 is the key) aligned with the input rows: row
    /// `i` is input row `i`'s value, or null when it has no state. One gather.
    pub fn aligned_column(&self, column: usize) -> Result<ArrayRef, ArrowError> {
        let field = self.schema.fields().get(column).ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!(
                "lookup state has {} columns, asked for column {column}",
                self.schema.fields().len()
            ))
        })?;
        let n = self.indices.len();
        if self.rows.is_empty() {
            return Ok(arrow::array::new_null_array(field.data_type(), n));
        }
        let null = arrow::array::new_null_array(field.data_type(), 1);
        let mut arrays: Vec<&dyn Array> = self
            .sources
            .iter()
            .map(|b| b.column(column).as_ref())
            .collect();
        arrays.push(null.as_ref());
        interleave(&arrays, &self.picks)
    }

    /// The state aligned with the input rows, without the key column (`schema`: the value
    /// columns, all nullable): row `i` is input row `i`'s state or nulls.
    pub fn aligned(&self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let columns = (1..self.schema.fields().len())
            .map(|c| self.aligned_column(c))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(self.indices.len())),
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
    /// After a refresh that Redis did not answer, none is tried before this.
    refresh_paused_until: Mutex<Option<Instant>>,
}

/// How long refreshes wait after one that Redis did not answer: the values due are
/// served meanwhile (they have not expired), and each try may cost a connect timeout.
const REFRESH_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

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
            refresh_paused_until: Mutex::new(None),
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
        let mut position: HashMap<&str, u32, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(keys.len().min(8192), Default::default());
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

        // 2. cache: decoded rows for hits, each batch they sit in taken once (by pointer)
        let now = Instant::now();
        let mut sources: Vec<Arc<RecordBatch>> = Vec::new();
        let mut found: Vec<Option<(usize, u32)>> = vec![None; distinct.len()];
        let mut misses: Vec<u32> = Vec::new();
        let mut due: Vec<u32> = Vec::new();
        {
            let mut source_of: HashMap<*const RecordBatch, usize, foldhash::fast::RandomState> =
                HashMap::default();
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (i, k) in distinct.iter().enumerate() {
                match cache.probe(k, now) {
                    Some((Some(r), refresh)) => {
                        let source = *source_of.entry(Arc::as_ptr(&r.batch)).or_insert_with(|| {
                            sources.push(Arc::clone(&r.batch));
                            sources.len() - 1
                        });
                        found[i] = Some((source, r.row));
                        if refresh {
                            due.push(i as u32);
                        }
                    }
                    Some((None, _)) => {}
                    None => misses.push(i as u32),
                }
            }
        }
        let hits = distinct.len() - misses.len();
        stats.cache_hits.fetch_add(hits as u64, Ordering::Relaxed);
        stats
            .cache_misses
            .fetch_add(misses.len() as u64, Ordering::Relaxed);

        // 3. one MGET for the misses and the values due for a refresh (with misses, or
        // enough of them: see `cache`), 4. one decode for what it returned, 5. cached.
        // A refreshed value replaces the cached one in this batch's rows too.
        // A refresh alone is tried once: while Redis is away, the values due are served
        // as they are (they have not expired), and the batch goes on.
        let refresh_only = misses.is_empty();
        let mut fetch = misses;
        if !refresh_only || (due.len() >= cache::REFRESH_AT_ONCE && self.may_refresh(now)) {
            fetch.append(&mut due);
        }
        let fetched = if fetch.is_empty() {
            None
        } else if refresh_only {
            match self.fetch_and_decode(&distinct, &fetch, now, false).await {
                Ok(f) => Some(f),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, keys = fetch.len(), "lookup refresh failed; serving the cached values, which have not expired");
                    *self
                        .refresh_paused_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(now + REFRESH_PAUSE);
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            Some(self.fetch_and_decode(&distinct, &fetch, now, true).await?)
        };
        if let Some((batch, decoded_row)) = fetched {
            let source = sources.len();
            sources.push(batch);
            for (&i, r) in fetch.iter().zip(&decoded_row) {
                found[i as usize] = r.map(|r| (source, r));
            }
        }

        // 6. each distinct key's state row, and each input row's
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(distinct.len());
        let mut state_row: Vec<Option<u32>> = Vec::with_capacity(distinct.len());
        for f in found {
            match f {
                Some((source, row)) => {
                    state_row.push(Some(rows.len() as u32));
                    rows.push((source, row as usize));
                }
                None => state_row.push(None),
            }
        }
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
        Ok(DistinctLookup::new(
            Arc::clone(&self.state_schema),
            sources,
            rows,
            indices,
        ))
    }

    /// Whether a refresh alone may be tried at `now` (none since one failed, for
    /// [`REFRESH_PAUSE`]).
    fn may_refresh(&self, now: Instant) -> bool {
        let paused = self
            .refresh_paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        paused.is_none_or(|until| now >= until)
    }

    /// Fetches `distinct[misses]` (misses and refreshes) with one `MGET`, decodes the values
    /// into one batch of the state schema and caches each key's row (or its absence).
    /// Returns the batch and, per key fetched, its row there (`None`: absent or malformed).
    /// `patient`: retry while Redis is unreachable (see [`crate::redis_client`]); else one
    /// attempt.
    async fn fetch_and_decode(
        &self,
        distinct: &[&str],
        misses: &[u32],
        now: Instant,
        patient: bool,
    ) -> Result<(Arc<RecordBatch>, Vec<Option<u32>>), LookupError> {
        let values = self.fetch(distinct, misses, patient).await?;
        let (decoded, decoded_row, malformed) =
            decode_values(&self.value_schema, &values).map_err(LookupError::Internal)?;
        for (j, reason) in &malformed {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            let key = misses
                .get(*j)
                .and_then(|&i| distinct.get(i as usize))
                .copied()
                .unwrap_or_default();
            tracing::warn!(
                key = %format_args!("{}{key}", self.config.key_prefix),
                reason = %reason,
                "malformed lookup value: its rows get null state"
            );
        }

        // the state batch: the keys, in decoded row order, then the values
        let mut keys: Vec<&str> = vec![""; decoded.num_rows()];
        for (&i, r) in misses.iter().zip(&decoded_row) {
            if let Some(r) = r {
                keys[*r as usize] = distinct[i as usize];
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(decoded.num_columns() + 1);
        columns.push(Arc::new(StringArray::from(keys)));
        columns.extend(decoded.columns().iter().cloned());
        let batch = Arc::new(
            RecordBatch::try_new(Arc::clone(&self.state_schema), columns)
                .map_err(|e| LookupError::Internal(e.to_string()))?,
        );
        let row_bytes = batch.get_array_memory_size() / batch.num_rows().max(1);

        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (&i, r) in misses.iter().zip(&decoded_row) {
            let i = i as usize;
            let row = r.map(|row| CachedRow {
                batch: Arc::clone(&batch),
                row,
                bytes: row_bytes,
            });
            // absent and malformed values are cached as misses
            cache.insert(distinct[i], row, now);
        }
        Ok((batch, decoded_row))
    }

    /// One `MGET` for `distinct[misses]`: the values in the order of `misses`.
    async fn fetch(
        &self,
        distinct: &[&str],
        misses: &[u32],
        patient: bool,
    ) -> Result<Vec<Option<Bytes>>, LookupError> {
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
        let reply: Vec<redis::Value> = if patient {
            self.conn
                .query(Request::Cmd(&cmd), "MGET", &self.stats.redis)
                .await?
        } else {
            self.conn
                .query_within(
                    Request::Cmd(&cmd),
                    "MGET",
                    &self.stats.redis,
                    std::time::Duration::ZERO,
                )
                .await?
        };
        if reply.len() != misses.len() {
            return Err(LookupError::Redis(RedisError::Internal(format!(
                "MGET of {} keys returned {} values",
                misses.len(),
                reply.len()
            ))));
        }
        let values: Vec<Option<Bytes>> = reply
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => Some(Bytes::from(b)),
                redis::Value::SimpleString(s) => Some(Bytes::from(s)),
                _ => None,
            })
            .collect();
        let found = values.iter().filter(|v| v.is_some()).count();
        self.stats
            .keys_found
            .fetch_add(found as u64, Ordering::Relaxed);
        Ok(values)
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
        let d = DistinctLookup::new(
            Arc::new(Schema::new(f)),
            Vec::new(),
            Vec::new(),
            UInt32Array::from(vec![None, None, None]),
        );
        let b = d.aligned(&s).unwrap();
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.column(0).null_count(), 3);
        assert_eq!(d.state().unwrap().num_rows(), 0);
        assert!(d.aligned_column(3).is_err());
    }

    /// State rows from two decoded batches (say one cached, one just fetched): the
    /// distinct state and the aligned columns gather the right rows, nulls included.
    #[test]
    fn state_rows_gather_across_batches() {
        let mut f = vec![Field::new("key", DataType::Utf8, false)];
        f.extend(nullable(&schema()));
        let state_schema = Arc::new(Schema::new(f));
        let batch = |keys: Vec<&str>, a: Vec<i64>| {
            Arc::new(
                RecordBatch::try_new(
                    Arc::clone(&state_schema),
                    vec![
                        Arc::new(StringArray::from(keys)) as ArrayRef,
                        Arc::new(Int64Array::from(a)),
                        Arc::new(StringArray::from(vec![None::<&str>; 2])),
                    ],
                )
                .unwrap(),
            )
        };
        let old = batch(vec!["x", "y"], vec![10, 20]);
        let new = batch(vec!["z", "w"], vec![30, 40]);
        let d = DistinctLookup::new(
            Arc::clone(&state_schema),
            vec![old, new],
            // state rows: y (old 1), z (new 0)
            vec![(0, 1), (1, 0)],
            UInt32Array::from(vec![Some(1), None, Some(0), Some(1)]),
        );
        let state = d.state().unwrap();
        assert_eq!(state.num_rows(), 2);
        assert_eq!(
            state
                .column(0)
                .as_string::<i32>()
                .iter()
                .collect::<Vec<_>>(),
            vec![Some("y"), Some("z")]
        );
        let a = d.aligned_column(1).unwrap();
        let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![Some(30), None, Some(20), Some(30)]
        );
        let aligned = d
            .aligned(&Arc::new(Schema::new(nullable(&schema()))))
            .unwrap();
        assert_eq!(aligned.num_rows(), 4);
        assert_eq!(aligned.column(1).null_count(), 4);
    }
}
