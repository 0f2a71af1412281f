//! Settings of a Redis lookup table.

use crate::redis_client::ConnectionConfig;
use serde::{Deserialize, Serialize};

/// One Redis lookup table (e.g. lease state keyed by device id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Where Redis is and how long to wait for it.
    pub redis: ConnectionConfig,
    /// Prepended to each key of the batch to form the Redis key, e.g. `lw:lease:`
    /// ([`leasewatch_schemas::Keys::lease_prefix`]). Empty when the SQL passes full keys
    /// (Arroyo's lookup connector has no prefix: its key column holds the whole Redis key).
    pub key_prefix: String,
    /// Name of the key column in [`super::DistinctLookup::state`].
    pub key_column: String,
    /// The bounded TTL cache in front of Redis.
    pub cache: CacheConfig,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            redis: ConnectionConfig::default(),
            key_prefix: String::new(),
            key_column: "key".into(),
            cache: CacheConfig::default(),
        }
    }
}

/// Bounds and lifetimes of the lookup cache. `ttl_ms = 0` or `max_entries = 0` disables it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Upper bound of the cache's size: keys + decoded values (each row's share of the
    /// Arrow batch it was decoded into) + a fixed per-entry overhead, bytes (Arroyo's
    /// `lookup.cache.max_bytes`).
    pub max_bytes: usize,
    /// Upper bound of the number of cached keys.
    pub max_entries: usize,
    /// How long a found value is served from the cache, ms (Arroyo's `lookup.cache.ttl`).
    /// It is fetched again ahead of that, from five eighths of it on (see
    /// [`super::cache`]), so that keys fetched together do not expire together.
    pub ttl_ms: u64,
    /// How long a miss (no such key, or a malformed value) is served from the cache, ms;
    /// shorter, so newly loaded state shows up soon.
    pub negative_ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entries: 200_000,
            ttl_ms: 5_000,
            negative_ttl_ms: 1_000,
        }
    }
}

impl LookupConfig {
    /// The default settings for Redis at `url` with keys under `key_prefix`.
    pub fn new(url: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        Self {
            redis: ConnectionConfig::new(url),
            key_prefix: key_prefix.into(),
            ..Self::default()
        }
    }

    /// Every problem with the settings at once, each prefixed with `path`.
    pub fn validate(&self, path: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.redis.validate(&format!("{path}.redis"), &mut errors);
        if self.key_column.is_empty() {
            errors.push(format!("{path}.key_column: must not be empty"));
        }
        if self.cache.negative_ttl_ms > self.cache.ttl_ms && self.cache.ttl_ms > 0 {
            errors.push(format!(
                "{path}.cache.negative_ttl_ms: {} exceeds ttl_ms {}",
                self.cache.negative_ttl_ms, self.cache.ttl_ms
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Settings from a lookup table's SQL `WITH (...)` options, as text (Arroyo's names):
    /// `address`, `'lookup.cache.max_bytes'`, `'lookup.cache.ttl'` (an interval as text,
    /// e.g. `5 seconds` or `5000 ms`). `connector`, `format` and `type` are accepted and
    /// ignored; any other option is reported. The key prefix is not an Arroyo option: set
    /// [`Self::key_prefix`] from the pipeline config when the SQL joins on bare ids.
    pub fn from_sql_options<'a>(
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<String>> {
        let mut c = Self::default();
        let mut errors = Vec::new();
        for (k, v) in options {
            match k {
                "address" => c.redis.url = v.to_string(),
                "lookup.cache.max_bytes" => match v.trim().parse() {
                    Ok(n) => c.cache.max_bytes = n,
                    Err(_) => errors.push(format!(
                        "'lookup.cache.max_bytes' = {v:?}: not a byte count"
                    )),
                },
                "lookup.cache.ttl" => match parse_duration_ms(v) {
                    Some(ms) => {
                        c.cache.ttl_ms = ms;
                        c.cache.negative_ttl_ms = c.cache.negative_ttl_ms.min(ms);
                    }
                    None => errors.push(format!("'lookup.cache.ttl' = {v:?}: not an interval")),
                },
                "connector" | "format" | "type" => {}
                other => errors.push(format!(
                    "option '{other}' is not supported by the Redis lookup"
                )),
            }
        }
        if let Err(mut e) = c.validate("lookup") {
            errors.append(&mut e);
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }
}

/// `5 seconds`, `250 ms`, `1 minute`, `2 s`, or a bare number of ms.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let n: f64 = parts.next()?.trim_matches('\'').parse().ok()?;
    let unit = parts
        .next()
        .unwrap_or("ms")
        .trim_matches('\'')
        .to_ascii_lowercase();
    if parts.next().is_some() || !n.is_finite() || n < 0.0 {
        return None;
    }
    let scale = match unit.as_str() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        _ => return None,
    };
    Some((n * scale).round() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sql_options() {
        let c = LookupConfig::from_sql_options([
            ("connector", "redis"),
            ("address", "redis://localhost:6379"),
            ("format", "json"),
            ("lookup.cache.max_bytes", "1000000"),
            ("lookup.cache.ttl", "5 seconds"),
        ])
        .unwrap();
        assert_eq!(c.cache.max_bytes, 1_000_000);
        assert_eq!(c.cache.ttl_ms, 5_000);
        assert_eq!(c.redis.url, "redis://localhost:6379");
        let e =
            LookupConfig::from_sql_options([("lookup.cache.ttl", "soon"), ("x", "1")]).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(parse_duration_ms("250 ms"), Some(250));
        assert_eq!(parse_duration_ms("1 minute"), Some(60_000));
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let c: LookupConfig =
            toml::from_str("key_prefix = 'lw:lease:'\n[cache]\nttl_ms = 10\nnegative_ttl_ms = 5\n")
                .unwrap();
        assert_eq!(c.cache.ttl_ms, 10);
        assert!(toml::from_str::<LookupConfig>("nope = 1").is_err());
    }
}
