//! A TTL cache of decoded lookup rows, bounded by bytes and entries.
//!
//! A value is kept as the row of the Arrow batch it was decoded into (the lookup's state
//! schema: key, then the value columns), so a hit is read in place ([`LookupCache::probe`])
//! and the lookup gathers hits with `interleave` instead of decoding their JSON again. Every
//! row decoded in one batch shares that batch; the batch is freed when the last of its rows
//! leaves the cache. Misses are cached too ("negative" entries) with their own, shorter
//! TTL. An expired entry stays until the value fetched again replaces it, or eviction
//! takes it.
//!
//! A found value is due for a refresh before it expires: between five and seven eighths
//! of its TTL, by a hash of its key (`refresh_after`). A due value is still served; the
//! lookup fetches it again with the next misses, or once a batch holds
//! [`REFRESH_AT_ONCE`] due keys (a refresh alone is tried once: while Redis is away, the
//! values are served until they expire). A fleet's state is fetched within seconds of a
//! start: with one lifetime and nothing ahead of it, all of it expired within the same
//! seconds a TTL later, and again every TTL after that, each time a burst of fetches and
//! decodes in the way of the pings. Spread and coalesced, the same fetches come a few
//! round trips a second, never one per batch.
//!
//! Eviction is oldest-inserted first: every entry expires after its TTL anyway, so the
//! insertion order is the age order, and a FIFO needs no bookkeeping on the read path.

use super::config::CacheConfig;
use arrow::array::RecordBatch;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fixed bytes charged per entry on top of key and value (map slot, queue slot, Arcs).
pub const ENTRY_OVERHEAD: usize = 96;

/// One decoded value: row `row` of `batch`.
#[derive(Debug, Clone)]
pub struct CachedRow {
    /// The batch the value was decoded into, shared by every row decoded with it.
    pub batch: Arc<RecordBatch>,
    /// The value's row in `batch`.
    pub row: u32,
    /// Bytes charged for the row: its share of the batch's buffers.
    pub bytes: usize,
}

impl PartialEq for CachedRow {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.batch, &other.batch) && self.row == other.row
    }
}

impl Eq for CachedRow {}

/// Due keys a batch fetches again by themselves (with misses, any number goes).
pub const REFRESH_AT_ONCE: usize = 1024;

#[derive(Debug)]
struct Entry {
    value: Option<CachedRow>,
    /// When a found value is due for a refresh (see the module docs).
    refresh: Instant,
    expires: Instant,
    seq: u64,
    size: usize,
}

/// The cache. Not synchronised: the lookup keeps it behind a mutex held only briefly.
#[derive(Debug)]
pub struct LookupCache {
    map: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    order: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
    seq: u64,
    max_bytes: usize,
    max_entries: usize,
    ttl: Duration,
    negative_ttl: Duration,
}

impl LookupCache {
    /// An empty cache with `config`'s bounds.
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            seq: 0,
            max_bytes: config.max_bytes,
            max_entries: config.max_entries,
            ttl: Duration::from_millis(config.ttl_ms),
            negative_ttl: Duration::from_millis(config.negative_ttl_ms),
        }
    }

    fn enabled(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0 && !self.ttl.is_zero()
    }

    /// What the cache holds for `key` at `now`, without a copy: `Some(Some(row))` found,
    /// `Some(None)` known missing, `None` not cached; and whether a found value is due for
    /// a refresh. An expired entry reads as not cached and stays until the value fetched
    /// again replaces it.
    pub fn probe(&self, key: &str, now: Instant) -> Option<(Option<&CachedRow>, bool)> {
        let entry = self.map.get(key)?;
        (entry.expires > now).then_some((entry.value.as_ref(), entry.refresh <= now))
    }

    /// Caches `value` (`None`: a miss) for `key` from `now`.
    pub fn insert(&mut self, key: &str, value: Option<CachedRow>, now: Instant) {
        if !self.enabled() {
            return;
        }
        let ttl = if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if ttl.is_zero() {
            self.remove(key);
            return;
        }
        let size = ENTRY_OVERHEAD + key.len() + value.as_ref().map_or(0, |v| v.bytes);
        if size > self.max_bytes {
            self.remove(key);
            return;
        }
        // A miss is not refreshed ahead: it is cheap to ask again, and rarely asked.
        let refresh = if value.is_some() {
            refresh_after(ttl, key)
        } else {
            ttl
        };
        self.remove(key);
        self.seq += 1;
        let k: Arc<str> = Arc::from(key);
        self.map.insert(
            Arc::clone(&k),
            Entry {
                refresh: now + refresh,
                value,
                expires: now + ttl,
                seq: self.seq,
                size,
            },
        );
        self.order.push_back((k, self.seq));
        self.bytes += size;
        while self.bytes > self.max_bytes || self.map.len() > self.max_entries {
            let Some((k, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.seq == seq) {
                self.remove(&k);
            }
        }
        // Re-inserted keys leave stale queue slots behind: compact now and then.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.size;
        }
    }

    /// Entries held (some may have expired and not been noticed yet).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// When a value cached for `ttl` is due for a refresh: between five and seven eighths of
/// `ttl`, by a hash of `key` (FNV-1a, then a multiply to mix the high bits). Keys fetched
/// together come due spread over a quarter of the TTL, and a key's refresh comes at the
/// same point of every life.
fn refresh_after(ttl: Duration, key: &str) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let frac = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u32; // 24 bits
    ttl * 5 / 8 + (ttl / 4).mul_f64(f64::from(frac) / f64::from(1u32 << 24))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    impl LookupCache {
        /// [`LookupCache::probe`] without the refresh flag.
        fn peek(&self, key: &str, now: Instant) -> Option<Option<&CachedRow>> {
            self.probe(key, now).map(|(value, _)| value)
        }
    }
    use arrow::array::Int64Array;

    /// Row `row` of a shared one-column batch, charged `bytes`.
    fn row(batch: &Arc<RecordBatch>, row: u32, bytes: usize) -> CachedRow {
        CachedRow {
            batch: Arc::clone(batch),
            row,
            bytes,
        }
    }

    fn batch(n: i64) -> Arc<RecordBatch> {
        Arc::new(
            RecordBatch::try_from_iter([(
                "v",
                Arc::new(Int64Array::from_iter_values(0..n)) as arrow::array::ArrayRef,
            )])
            .unwrap(),
        )
    }

    fn cfg(max_bytes: usize, max_entries: usize) -> CacheConfig {
        CacheConfig {
            max_bytes,
            max_entries,
            ttl_ms: 1_000,
            negative_ttl_ms: 100,
        }
    }

    #[test]
    fn hit_miss_and_ttl() {
        let mut c = LookupCache::new(&cfg(1 << 20, 100));
        let t0 = Instant::now();
        let b = batch(1);
        c.insert("a", Some(row(&b, 0, 8)), t0);
        c.insert("b", None, t0);
        assert_eq!(c.peek("a", t0), Some(Some(&row(&b, 0, 8))));
        assert_eq!(c.peek("b", t0), Some(None));
        assert_eq!(c.peek("z", t0), None);
        // negative entries expire first
        let t1 = t0 + Duration::from_millis(150);
        assert_eq!(c.peek("b", t1), None);
        assert!(c.peek("a", t1).is_some());
        let t2 = t0 + Duration::from_millis(1_001);
        assert_eq!(c.peek("a", t2), None);
        // Expired entries stay until refetched: the new value replaces the old one, and
        // its bytes.
        assert_eq!(c.len(), 2);
        let bytes = c.bytes();
        let b2 = batch(1);
        c.insert("a", Some(row(&b2, 0, 8)), t2);
        assert_eq!(c.peek("a", t2), Some(Some(&row(&b2, 0, 8))));
        assert_eq!(c.bytes(), bytes);
    }

    #[test]
    fn found_values_come_due_spread_over_a_quarter_of_the_ttl_and_stay_served() {
        let ttl = Duration::from_secs(60);
        let due: Vec<Duration> = (0..10_000)
            .map(|i| refresh_after(ttl, &format!("lw:lease:{i:015}")))
            .collect();
        assert!(due.iter().all(|d| *d >= ttl * 5 / 8 && *d < ttl * 7 / 8));
        // Every 1.5 s of the 15 s holds about a tenth of them.
        let mut tenths = [0usize; 10];
        for d in &due {
            let into = (*d - ttl * 5 / 8).as_secs_f64() / (ttl / 4).as_secs_f64();
            tenths[((into * 10.0) as usize).min(9)] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (800..1_200).contains(&n)),
            "{tenths:?}"
        );
        assert_eq!(refresh_after(ttl, "k"), refresh_after(ttl, "k"));

        let mut c = LookupCache::new(&cfg(1 << 20, 100));
        let t0 = Instant::now();
        let b = batch(1);
        c.insert("a", Some(row(&b, 0, 8)), t0);
        c.insert("gone", None, t0);
        let at = t0 + refresh_after(Duration::from_millis(1_000), "a");
        let tick = Duration::from_millis(1);
        assert_eq!(c.probe("a", at - tick), Some((Some(&row(&b, 0, 8)), false)));
        assert_eq!(c.probe("a", at), Some((Some(&row(&b, 0, 8)), true)));
        let expires = t0 + Duration::from_millis(1_000);
        assert_eq!(
            c.probe("a", expires - tick),
            Some((Some(&row(&b, 0, 8)), true))
        );
        assert_eq!(c.probe("a", expires), None, "expired at its TTL");
        // A miss is never due: it expires at its own TTL (100 ms here).
        assert_eq!(
            c.probe("gone", t0 + Duration::from_millis(99)),
            Some((None, false))
        );
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let t = Instant::now();
        let b = batch(4);
        let mut c = LookupCache::new(&cfg(1 << 20, 3));
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            c.insert(k, Some(row(&b, i as u32, 8)), t);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.peek("a", t), None, "oldest evicted");
        assert!(c.peek("d", t).is_some());

        let per = ENTRY_OVERHEAD + 1 + 10;
        let mut c = LookupCache::new(&cfg(per * 2, 100));
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            c.insert(k, Some(row(&b, i as u32, 10)), t);
        }
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= per * 2);
        // a value larger than the whole cache is not cached
        c.insert("big", Some(row(&b, 3, per * 3)), t);
        assert_eq!(c.peek("big", t), None);
    }

    #[test]
    fn reinsert_replaces_and_compacts() {
        let t = Instant::now();
        let b = batch(5_000);
        let mut c = LookupCache::new(&cfg(1 << 30, 10));
        for i in 0..5_000 {
            c.insert("k", Some(row(&b, i, 8)), t);
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() < 2_100);
        assert_eq!(c.peek("k", t), Some(Some(&row(&b, 4_999, 8))));
    }

    #[test]
    fn a_decoded_batch_lives_as_long_as_its_rows() {
        let t = Instant::now();
        let b = batch(2);
        let mut c = LookupCache::new(&cfg(1 << 20, 10));
        c.insert("a", Some(row(&b, 0, 8)), t);
        c.insert("b", Some(row(&b, 1, 8)), t);
        assert_eq!(Arc::strong_count(&b), 3, "both rows share the batch");
        let later = t + Duration::from_millis(1_001);
        assert_eq!(c.peek("a", later), None);
        // Refetched into another batch, the expired row lets go of its own.
        c.insert("a", Some(row(&batch(1), 0, 8)), later);
        assert_eq!(Arc::strong_count(&b), 2);
        c.clear();
        assert_eq!(Arc::strong_count(&b), 1, "freed with its last row");
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let t = Instant::now();
        let mut c = LookupCache::new(&CacheConfig {
            ttl_ms: 0,
            ..cfg(1 << 20, 10)
        });
        c.insert("a", None, t);
        assert!(c.is_empty());
    }
}
