//! Settings of the Redis alert sink.

use crate::redis_client::ConnectionConfig;
use serde::{Deserialize, Serialize};

/// Where queue messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `XADD {prefix}queue:{queue}`: Redis Streams, read with consumer groups.
    Stream,
    /// `RPUSH {list_key_prefix}{queue}` of the QueueMessage JSON: what Arroyo's Redis sink
    /// (`target = 'list'`) writes, so consumers of an Arroyo-deployed pipeline read the same.
    List,
}

/// The alert sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSinkConfig {
    /// Where Redis is and how long to wait for it.
    pub redis: ConnectionConfig,
    /// Key prefix of every key the sink writes ([`leasewatch_schemas::Keys`]), e.g. `lw:`.
    pub prefix: String,
    /// Streams or lists.
    pub target: Target,
    /// Key prefix of the lists with `target = list` (Arroyo's `'target.key_prefix'`; the
    /// queue name is the key column). Default: `{prefix}queue:`, the streams' key names.
    pub list_key_prefix: Option<String>,
    /// How long an alert id is remembered as written, ms: a replay within this time never
    /// writes the alert again.
    pub dedup_ttl_ms: u64,
    /// Suppression: the same device + signal does not alert again within this time unless
    /// the grade rises, ms. 0 turns suppression off.
    pub cooldown_ms: u64,
    /// Trim each stream to about this many entries (`XADD ... MAXLEN ~ n`); 0: no trimming.
    pub stream_maxlen: u64,
    /// Update the customer's risk profile hash (`{prefix}risk:{customer}`).
    pub risk_profile: bool,
}

impl Default for RedisSinkConfig {
    fn default() -> Self {
        Self {
            redis: ConnectionConfig::default(),
            prefix: leasewatch_schemas::DEFAULT_PREFIX.into(),
            target: Target::Stream,
            list_key_prefix: None,
            dedup_ttl_ms: 7 * 24 * 3_600_000,
            cooldown_ms: 3_600_000,
            stream_maxlen: 0,
            risk_profile: true,
        }
    }
}

impl RedisSinkConfig {
    /// Default settings for Redis at `url` under `prefix`.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            redis: ConnectionConfig::new(url),
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// The list key prefix in use.
    pub fn list_key_prefix(&self) -> String {
        self.list_key_prefix
            .clone()
            .unwrap_or_else(|| format!("{}queue:", self.prefix))
    }

    /// Settings from a sink table's SQL `WITH (...)` options. Arroyo's: `address`,
    /// `target` (`'stream'`, our default, or `'list'`), `'target.key_prefix'`; `connector`,
    /// `format` and `type` are accepted and ignored. Ours: `'key_prefix'` (every key, default
    /// `lw:`), `cooldown` and `'dedup.ttl'` (intervals), `'stream.maxlen'`, `'risk_profile'`
    /// (`true`/`false`). Any other option is reported.
    pub fn from_sql_options<'a>(
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<String>> {
        let mut c = Self::default();
        let mut errors = Vec::new();
        for (k, v) in options {
            let v = v.trim();
            match k {
                "address" => c.redis.url = v.to_string(),
                "target" => match v.to_ascii_lowercase().as_str() {
                    "stream" => c.target = Target::Stream,
                    "list" => c.target = Target::List,
                    _ => errors.push(format!("target = {v:?}: expected 'stream' or 'list'")),
                },
                "target.key_prefix" => c.list_key_prefix = Some(v.to_string()),
                "key_prefix" => c.prefix = v.to_string(),
                "cooldown" | "dedup.ttl" => match crate::engine::sql::parse_interval_ms(v) {
                    Some(ms) if ms >= 0 => {
                        if k == "cooldown" {
                            c.cooldown_ms = ms as u64;
                        } else {
                            c.dedup_ttl_ms = ms as u64;
                        }
                    }
                    _ => errors.push(format!("'{k}' = {v:?}: not an interval")),
                },
                "stream.maxlen" => match v.parse() {
                    Ok(n) => c.stream_maxlen = n,
                    Err(_) => errors.push(format!("'stream.maxlen' = {v:?}: not a count")),
                },
                "risk_profile" => match v.to_ascii_lowercase().as_str() {
                    "true" => c.risk_profile = true,
                    "false" => c.risk_profile = false,
                    _ => errors.push(format!("'risk_profile' = {v:?}: expected true or false")),
                },
                "connector" | "format" | "type" => {}
                other => errors.push(format!(
                    "option '{other}' is not supported by the Redis sink"
                )),
            }
        }
        if let Err(mut e) = c.validate("sink") {
            errors.append(&mut e);
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }

    /// Every problem at once, each prefixed with `path`.
    pub fn validate(&self, path: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.redis.validate(&format!("{path}.redis"), &mut errors);
        if self.dedup_ttl_ms == 0 {
            errors.push(format!(
                "{path}.dedup_ttl_ms: must be > 0 (alert ids must be remembered for replays)"
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_toml() {
        let c: RedisSinkConfig = toml::from_str("target = 'list'\ncooldown_ms = 0\n").unwrap();
        assert_eq!(c.target, Target::List);
        assert_eq!(c.list_key_prefix(), "lw:queue:");
        assert!(toml::from_str::<RedisSinkConfig>("nope = 1").is_err());
        let bad = RedisSinkConfig {
            dedup_ttl_ms: 0,
            redis: ConnectionConfig::new("x://"),
            ..RedisSinkConfig::default()
        };
        assert_eq!(bad.validate("sink").unwrap_err().len(), 2);
    }
}
