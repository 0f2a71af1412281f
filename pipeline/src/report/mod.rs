//! `leasewatch report`: the alert archive (Parquet) as one self-contained HTML risk report.
//!
//! [`archive`] finds every `*.parquet` file under the archive folder and reads the columns
//! the report needs (checked against `leasewatch_schemas::alert_archive_schema`) into
//! Arrow; [`figures`] puts them in a DataFusion `MemTable`, drops repeated rows (same `alert_id`,
//! e.g. two replays archived in one folder), and computes every figure with SQL
//! (the LeaseWatch UDFs registered, `h3_cell` for the area breakdown); [`html`] renders
//! tables and inline SVG bar charts ([`svg`]) into one HTML file with no outside assets
//! and no JavaScript, every string from the data escaped.

pub mod archive;
pub mod figures;
pub mod html;
pub mod svg;

use crate::engine::Blame;
use std::path::{Path, PathBuf};

/// What `leasewatch report` reads and writes.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The archive folder (Parquet files of alert rows, subfolders included).
    pub archive: PathBuf,
    /// The HTML file to write.
    pub out: PathBuf,
}

/// What a report run did (the one-line summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// Parquet files read.
    pub files: usize,
    /// Alert rows read (before dropping repeated alert ids).
    pub rows: u64,
    /// Distinct alerts in the report.
    pub alerts: u64,
    /// The HTML file written.
    pub out: PathBuf,
}

impl ReportSummary {
    /// `report: 412 alert rows (410 distinct alerts) from 3 Parquet files -> report.html`.
    pub fn to_line(&self) -> String {
        format!(
            "report: {} alert rows ({} distinct alerts) from {} Parquet file{} -> {}",
            self.rows,
            self.alerts,
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.out.display()
        )
    }
}

/// A failure of `leasewatch report`, by who must act ([`ReportError::blame`]).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The archive folder is missing, not a folder, or holds no `*.parquet` file.
    #[error("archive {path}: {message}")]
    Archive {
        /// The folder.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A `*.parquet` file is not Parquet, or its schema lacks a column the report needs.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or the report could not be written (disk, permissions).
    #[error("{what} {path}: {message}")]
    Io {
        /// `reading` or `writing`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A report query failed: a bug in the report's SQL.
    #[error("internal error (please report): computing {figure}: {message}")]
    Internal {
        /// Which figure.
        figure: String,
        /// Why.
        message: String,
    },
}

impl ReportError {
    /// Who must act.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Archive { .. } | Self::Format { .. } => Blame::User,
            Self::Io { .. } => Blame::Outside,
            Self::Internal { .. } => Blame::Internal,
        }
    }

    fn internal(figure: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Internal {
            figure: figure.into(),
            message: e.to_string(),
        }
    }
}

/// Reads the archive, computes the figures and writes the HTML report.
pub async fn report(opts: &ReportOptions) -> Result<ReportSummary, ReportError> {
    let archive = archive::read_archive(&opts.archive)?;
    let figures = figures::compute(&archive).await?;
    let page = html::render(&html::Page {
        archive: &opts.archive,
        files: archive.files.len(),
        figures: &figures,
    });
    write(&opts.out, &page)?;
    Ok(ReportSummary {
        files: archive.files.len(),
        rows: archive.rows,
        alerts: figures.totals.alerts,
        out: opts.out.clone(),
    })
}

/// Writes `text` next to `path` and renames it into place, so a reader never sees half
/// a report.
fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    let io = |e: std::io::Error| ReportError::Io {
        what: "writing",
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
