//! Errors of the write-ahead log and the checkpoint store.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::Lsn;

/// Who has to act on a [`WalError`] (the error domains of the style guide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalErrorDomain {
    /// The caller asked for something the log cannot give (a bug in the caller).
    Caller,
    /// The disk or the operating system failed, or the log is full: retry later,
    /// an operator may have to act.
    External,
    /// The data on disk is not what this code wrote: corruption or a bug.
    Internal,
}

/// An error of the write-ahead log or the checkpoint store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("WAL {op} failed on {}: {source}", path.display())]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fsync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Appending would keep more bytes than `max_retained_bytes`.
    #[error(
        "WAL is full: {retained} bytes retained, limit {limit}; the engine must checkpoint so old segments can be deleted"
    )]
    Full {
        /// Bytes currently retained.
        retained: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A fsync failed earlier: the state on disk is unknown, so the log refuses writes
    /// until the process restarts and recovers it.
    #[error("WAL refuses writes after an earlier failure (restart to recover): {0}")]
    Poisoned(String),
    /// Another process (or another handle in this one) holds the WAL directory.
    #[error("WAL directory {} is locked by another writer", .0.display())]
    Locked(PathBuf),
    /// The entries asked for were deleted by `truncate_before`.
    #[error("WAL entries from lsn {requested} were truncated; the oldest retained is {oldest}")]
    Truncated {
        /// The first lsn asked for.
        requested: Lsn,
        /// The oldest lsn still retained.
        oldest: Lsn,
    },
    /// Data on disk failed its checks somewhere other than a torn tail.
    #[error("WAL data corrupt in {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The batch does not have the log's schema.
    #[error("batch schema does not match the WAL schema: {0}")]
    SchemaMismatch(String),
    /// Arrow IPC encoding or decoding failed.
    #[error("Arrow IPC: {0}")]
    Arrow(String),
    /// The configuration is unusable.
    #[error("invalid WAL configuration: {0}")]
    InvalidConfig(String),
    /// The committer is gone (the log is shutting down).
    #[error("WAL is closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Who has to act.
    pub fn domain(&self) -> WalErrorDomain {
        match self {
            Self::Io { .. } | Self::Full { .. } | Self::Poisoned(_) | Self::Locked(_) => {
                WalErrorDomain::External
            }
            Self::Truncated { .. }
            | Self::SchemaMismatch(_)
            | Self::InvalidConfig(_)
            | Self::Closed => WalErrorDomain::Caller,
            Self::Corrupt { .. } | Self::Arrow(_) => WalErrorDomain::Internal,
        }
    }

    /// True when the same append may succeed later without anyone changing the code
    /// (the disk frees up, the engine catches up): ingest answers 503 + Retry-After.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Io { .. } | Self::Full { .. } | Self::Poisoned(_) | Self::Closed
        )
    }
}

impl From<arrow::error::ArrowError> for WalError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Arrow(e.to_string())
    }
}
