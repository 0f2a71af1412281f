//! Configuration of the write-ahead log.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where and how the write-ahead log keeps acknowledged pings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Directory of the segment files (created if missing; one process at a time).
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// Upper bound on the bytes of all retained segments. An append that would pass it
    /// is refused (ingest answers 503) instead of deleting data the engine has not
    /// checkpointed; `truncate_before` frees space.
    pub max_retained_bytes: u64,
    /// How long (microseconds) the committer may wait for more appends to join a group
    /// before it writes and fsyncs. 0: no artificial wait; appends that arrive while a
    /// fsync runs still share the next one. The committer only waits after a group of
    /// more than one append (a lone writer is not kept waiting). The default, 2 ms, is
    /// little next to an HTTP round trip; at 300,000 pings/s it cut fsyncs from about
    /// 500/s to 200/s and the committer thread's CPU by a third.
    pub group_commit_max_delay_us: u64,
    /// At most this many appends share one write and fsync.
    pub group_commit_max_batch: usize,
    /// fsync segment files and the directory before acknowledging. Only tests and
    /// benchmarks may turn this off: without it a power loss can lose acknowledged pings.
    pub fsync: bool,
    /// How many of the most recent batches are kept in memory, so that a reader that
    /// keeps up with the head never touches the disk.
    pub memory_ring_batches: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/wal"),
            segment_bytes: 64 * 1024 * 1024,
            max_retained_bytes: 4 * 1024 * 1024 * 1024,
            group_commit_max_delay_us: 2_000,
            group_commit_max_batch: 1024,
            fsync: true,
            memory_ring_batches: 4096,
        }
    }
}

impl WalConfig {
    /// A default configuration in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }

    /// Every problem of this configuration (empty when it is usable).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.dir.as_os_str().is_empty() {
            out.push("wal.dir must not be empty".to_string());
        }
        if self.segment_bytes == 0 {
            out.push("wal.segment_bytes must be > 0".to_string());
        }
        if self.max_retained_bytes < self.segment_bytes {
            out.push(format!(
                "wal.max_retained_bytes ({}) must be >= wal.segment_bytes ({})",
                self.max_retained_bytes, self.segment_bytes
            ));
        }
        if self.group_commit_max_batch == 0 {
            out.push("wal.group_commit_max_batch must be > 0".to_string());
        }
        out
    }
}
