//! The one typed configuration (`leasewatch.toml`), layered: built-in defaults, then the
//! TOML file, then `LEASEWATCH__SECTION__KEY=value` environment variables (the value is
//! read as a TOML value when it parses as one, else as a string). Unknown keys are
//! errors; [`Config::validate`] reports every problem at once.

use crate::ingest::IngestConfig;
use crate::wal::WalConfig;
use leasewatch_schemas::Limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Top-level configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The streaming engine (`[engine]`).
    pub engine: EngineConfig,
    /// `leasewatch replay` (`[replay]`).
    pub replay: ReplayConfig,
    /// HTTP ingest (`[ingest]`).
    pub ingest: IngestConfig,
    /// Write-ahead log and checkpoints (`[wal]`).
    pub wal: WalConfig,
}

/// The streaming engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Folder of `.sql` files (read sorted by name), relative to the working directory.
    pub sql_dir: PathBuf,
    /// Sink table (declared in the SQL) that receives late pings, if any. Late pings are
    /// always counted and always run the per-ping queries.
    pub late_sink: Option<String>,
    /// GeoJSON FeatureCollection of risky places for `geofence_match` / `geofence_kind`.
    pub geofences: Option<PathBuf>,
    /// Seconds between engine checkpoints in `leasewatch run`.
    pub checkpoint_interval_secs: u64,
    /// Redis for every `connector = 'redis'` table (lookups and alert sinks), replacing
    /// the SQL's `address` option; e.g. `redis://127.0.0.1:6379` or
    /// `rediss://user:pass@host:6380` (with the `tls` feature).
    pub redis_url: Option<String>,
    /// Seconds between lease sweeps in `leasewatch run` (the SQL's `lease_sweep` table:
    /// the overdue ladder for every lease, also devices that stopped pinging); the first
    /// runs at start. 0 turns it off.
    pub sweep_interval_secs: u64,
    /// `leasewatch run`: WAL entries (requests) waiting for the engine are processed
    /// together, up to this many pings at once (an entry is never split): every query
    /// runs once per such batch, not once per request.
    pub max_batch_rows: usize,
    /// `leasewatch run` with `split_lanes`: the same bound for the windowed lane. It
    /// answers no alert within a second, so it takes larger batches when it is behind: a
    /// window's partial aggregation then folds more pings of a device into one row, and
    /// fewer parts wait for compaction.
    pub windowed_max_batch_rows: usize,
    /// `leasewatch run` with `split_lanes`: the windowed lane starts a pass over the
    /// requests waiting in the WAL at most once per this many milliseconds, letting them
    /// gather in between (0: it follows each request as it comes). Its windows close
    /// minutes apart, so the delay costs them nothing, while each pass costs a run of
    /// every windowed query and adds parts of window state to compact: passes over
    /// hundreds of requests rather than a few use far less CPU. The backlog gauges
    /// (`leasewatch_engine_backlog_*`, which follow the lane furthest behind) then show
    /// up to this long of requests at any time. At most 60,000.
    pub windowed_linger_ms: u64,
    /// `leasewatch run`: the nice value of the per-ping lane's thread (of the one engine's
    /// without `split_lanes`), relative to the process's: -5 by default, from -20 to 0.
    /// Every alert within a second waits for that one thread; when the cores are busy,
    /// other processes on the machine (Redis, a load driver, anything at the process's
    /// priority) would otherwise take an equal share each and hold it back. Raising a
    /// thread's priority needs root, `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows it;
    /// without, the lane runs at the process's priority and says so once (info). 0 does
    /// not try. Ingest's threads run 5 below the lane (at the process's priority by
    /// default); the windowed lane and the checkpoint threads relative to the process.
    pub per_ping_nice: i32,
    /// `leasewatch run`: the windowed queries follow the WAL on a thread of their own,
    /// apart from the per-ping rules (`crate::engine::Lane`), so that a window's merge
    /// or emission never holds up a per-ping alert. Off: one engine runs every query.
    pub split_lanes: bool,
}

/// The highest priority `engine.per_ping_nice` may ask for (the kernel's lowest nice).
const MIN_PER_PING_NICE: i32 = -20;

/// The longest `engine.windowed_linger_ms` accepted: a minute, the default checkpoint
/// interval (longer would only hold the WAL's truncation back).
const MAX_WINDOWED_LINGER_MS: u64 = 60_000;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            sql_dir: PathBuf::from("sql"),
            late_sink: None,
            geofences: None,
            checkpoint_interval_secs: 60,
            redis_url: None,
            sweep_interval_secs: 3600,
            max_batch_rows: 8192,
            windowed_max_batch_rows: 65_536,
            windowed_linger_ms: 500,
            per_ping_nice: -5,
            split_lanes: true,
        }
    }
}

/// `leasewatch replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Pings per batch fed to the engine.
    pub batch_rows: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            batch_rows: 8192,
            progress: true,
        }
    }
}

/// Configuration problems: every one found, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Defaults, then `file` (if given), then `LEASEWATCH__*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => match toml::from_str::<toml::Value>(&text) {
                    Ok(v) => merge(&mut value, v),
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                },
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("LEASEWATCH__") else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let parsed = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v.clone()));
            if let Err(e) = set(&mut value, &keys, parsed) {
                errors.push(format!("{k}: {e}"));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.to_string()]))?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem of the configuration at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        if self.replay.batch_rows == 0 {
            e.push("replay.batch_rows must be at least 1".to_string());
        }
        if self.engine.max_batch_rows == 0 {
            e.push("engine.max_batch_rows must be at least 1".to_string());
        }
        if self.engine.windowed_max_batch_rows == 0 {
            e.push("engine.windowed_max_batch_rows must be at least 1".to_string());
        }
        if self.engine.windowed_linger_ms > MAX_WINDOWED_LINGER_MS {
            e.push(format!(
                "engine.windowed_linger_ms must be at most {MAX_WINDOWED_LINGER_MS}"
            ));
        }
        if !(MIN_PER_PING_NICE..=0).contains(&self.engine.per_ping_nice) {
            e.push(format!(
                "engine.per_ping_nice must be from {MIN_PER_PING_NICE} to 0 (it raises the \
                 lane's priority, never lowers it)"
            ));
        }
        if self.engine.checkpoint_interval_secs == 0 {
            e.push("engine.checkpoint_interval_secs must be at least 1".to_string());
        }
        if self.engine.late_sink.as_deref().is_some_and(str::is_empty) {
            e.push("engine.late_sink must name a sink table (or be left out)".to_string());
        }
        if self.engine.sql_dir.as_os_str().is_empty() {
            e.push("engine.sql_dir must not be empty".to_string());
        }
        if self.ingest.max_future_ms < 0 {
            e.push("ingest.max_future_ms must not be negative".to_string());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(e))
        }
    }

    /// Validation limits for pings (shared by ingest and replay).
    pub fn limits(&self) -> Limits {
        Limits {
            max_future_ms: self.ingest.max_future_ms,
            min_event_time_ms: self.ingest.min_event_time_ms,
        }
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set(base: &mut toml::Value, keys: &[String], v: toml::Value) -> Result<(), String> {
    let Some((last, path)) = keys.split_last() else {
        return Err("empty key".into());
    };
    let mut cur = base;
    for k in path {
        let toml::Value::Table(t) = cur else {
            return Err(format!("`{k}` is not a section"));
        };
        cur = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    match cur {
        toml::Value::Table(t) => {
            t.insert(last.clone(), v);
            Ok(())
        }
        _ => Err("not a section".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layers_defaults_file_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[engine]\nsql_dir = \"rules\"\n[replay]\nbatch_rows = 100\n",
        )
        .unwrap();
        let env = vec![
            (
                "LEASEWATCH__REPLAY__BATCH_ROWS".to_string(),
                "200".to_string(),
            ),
            (
                "LEASEWATCH__ENGINE__LATE_SINK".to_string(),
                "late".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(c.engine.sql_dir, PathBuf::from("rules"));
        assert_eq!(c.replay.batch_rows, 200);
        assert_eq!(c.engine.late_sink.as_deref(), Some("late"));
        assert_eq!(c.engine.checkpoint_interval_secs, 60);
    }

    #[test]
    fn unknown_keys_and_all_problems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[engine]\nsql_dirr = \"x\"\n").unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("sql_dirr"), "{e}");
        std::fs::write(
            &f,
            "[replay]\nbatch_rows = 0\n[engine]\ncheckpoint_interval_secs = 0\n\
             max_batch_rows = 0\nwindowed_max_batch_rows = 0\n\
             windowed_linger_ms = 60001\nper_ping_nice = 3\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err();
        assert_eq!(e.0.len(), 6, "{e}");
        assert!(e.to_string().contains("engine.per_ping_nice"), "{e}");
        assert!(e.to_string().contains("engine.windowed_linger_ms"), "{e}");
        assert!(e.to_string().contains("engine.max_batch_rows"), "{e}");
        assert!(
            e.to_string().contains("engine.windowed_max_batch_rows"),
            "{e}"
        );
    }

    #[test]
    fn ndjson_decoder_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let c = Config::load(None, vec![]).unwrap();
        assert_eq!(
            c.ingest.ndjson_decoder,
            crate::ingest::JsonDecoder::PingLines
        );
        std::fs::write(&f, "[ingest]\nndjson_decoder = \"arrow-json\"\n").unwrap();
        let c = Config::load(Some(&f), vec![]).unwrap();
        assert_eq!(
            c.ingest.ndjson_decoder,
            crate::ingest::JsonDecoder::ArrowJson
        );
        std::fs::write(&f, "[ingest]\nndjson_decoder = \"simd\"\n").unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("ping-lines") && e.contains("arrow-json"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../leasewatch.toml");
        Config::load(Some(&f), vec![]).unwrap();
    }
}
