//! Sinks: where `INSERT INTO` rows go (`blackhole`, `stdout`, `filesystem`, `redis`).
//!
//! Declared in SQL as `CREATE TABLE name (...) WITH (connector = '...', ...)`.
//! `filesystem` takes `path` (a directory: the sink writes `<path>/<table>.jsonl`, or with
//! `format = 'parquet'` an append-only archive of `<table>-<ms>-<pid>-<n>.parquet` files,
//! a new one after each flush; a path ending in `.jsonl`/`.json`/`.parquet` is used as
//! the file itself). `redis` writes alerts to the collection queues ([`redis`]).
//!
//! JSON lines are appended: `leasewatch run` reopens its sinks after a restart and
//! resumes from a checkpoint, so earlier output must survive. Each checkpoint records
//! where every file sink's output ends ([`Sink::position`]: a file length, or the newest
//! finished archive file); a restore cuts what was written after it
//! ([`Sink::rewind`]), and the WAL replay writes it again, so file outputs after a crash
//! equal those of an uninterrupted run. Remove the file to start afresh, e.g. before a
//! second `replay` of the same input. A single Parquet
//! file (a path ending in `.parquet`) is written whole by one process and is replaced when
//! the sink reopens; an archive folder only ever gains files.

pub mod redis;

use crate::engine::sql::{OptionValue, TableDef};
use arrow::array::RecordBatch;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A sink failed: the outside system (disk, stdout) is to blame; retrying may help.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    /// Sink table.
    pub sink: String,
    /// What failed.
    pub message: String,
}

/// Writes result batches somewhere.
pub trait Sink: Send + fmt::Debug {
    /// Writes one batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError>;
    /// Makes everything written so far durable/visible.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The counters of a Redis alert sink (for the metrics exporter); `None` otherwise.
    fn redis_stats(&self) -> Option<Arc<redis::SinkStats>> {
        None
    }
    /// Finishes what was written so far into its durable form (a Parquet archive closes
    /// its file); called before a checkpoint and at the end of input.
    fn commit(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
    /// Where the sink's durable output ends, after [`Sink::commit`]: saved in each
    /// checkpoint so a restart from it can [`Sink::rewind`] output written after it and
    /// produce it again exactly once. `None`: nothing to rewind (idempotent or volatile).
    fn position(&self) -> Option<SinkPosition> {
        None
    }
    /// Drops output written after `position` (at restore, before any write).
    fn rewind(&mut self, _position: &SinkPosition) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Where a sink's output ended at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkPosition {
    /// Length of an append-only file.
    Bytes(u64),
    /// An archive folder: files this sink starts at or after `at_ms` (wall clock) came
    /// after the checkpoint, except `last`, the newest file it had finished.
    Archive {
        /// The newest finished file (`None`: none yet).
        last: Option<String>,
        /// When the position was taken, ms since the Unix epoch.
        at_ms: u64,
    },
}

/// Discards rows (counting happens in the engine).
#[derive(Debug, Default)]
pub struct Blackhole;

impl Sink for Blackhole {
    fn write(&mut self, _batch: &RecordBatch) -> Result<(), SinkError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Keeps rows in memory (tests, golden files).
#[derive(Debug, Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<RecordBatch>>>);

impl MemorySink {
    /// Takes the rows written so far.
    pub fn take(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Sink for MemorySink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch.clone());
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// NDJSON lines to any writer (stdout, a file).
pub struct JsonLines<W: Write + Send> {
    name: String,
    /// The file, when writing to one (for checkpoint positions).
    path: Option<PathBuf>,
    writer: arrow_json::LineDelimitedWriter<W>,
}

impl<W: Write + Send> fmt::Debug for JsonLines<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLines")
            .field("name", &self.name)
            .finish()
    }
}

impl<W: Write + Send> JsonLines<W> {
    /// Writes to `w` on behalf of sink `name`.
    pub fn new(name: &str, w: W) -> Self {
        Self {
            name: name.to_string(),
            path: None,
            writer: arrow_json::LineDelimitedWriter::new(w),
        }
    }

    /// The same, writing to the append-mode file at `path` (positions and rewind work).
    pub fn to_file(name: &str, path: PathBuf, w: W) -> Self {
        Self {
            path: Some(path),
            ..Self::new(name, w)
        }
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.writer.write(batch).map_err(|e| SinkError {
            sink: self.name.clone(),
            message: e.to_string(),
        })
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.get_mut().flush().map_err(|e| SinkError {
            sink: self.name.clone(),
            message: e.to_string(),
        })
    }
    fn position(&self) -> Option<SinkPosition> {
        let path = self.path.as_ref()?;
        Some(SinkPosition::Bytes(
            std::fs::metadata(path).map_or(0, |m| m.len()),
        ))
    }
    fn rewind(&mut self, position: &SinkPosition) -> Result<(), SinkError> {
        let (Some(path), SinkPosition::Bytes(len)) = (&self.path, position) else {
            return Ok(());
        };
        let err = |e: std::io::Error| SinkError {
            sink: self.name.clone(),
            message: format!("{}: rewinding to {len} bytes: {e}", path.display()),
        };
        let f = File::options().write(true).open(path).map_err(err)?;
        let now = f.metadata().map_err(err)?.len();
        if now > *len {
            f.set_len(*len).map_err(err)?;
            tracing::info!(sink = %self.name, from = now, to = len, "rewound output written after the checkpoint");
        }
        Ok(())
    }
}

/// Parquet file, opened on the first batch (its schema is the file's).
pub struct ParquetFile {
    name: String,
    path: PathBuf,
    /// `path` is a folder: every flush closes the current file and later rows go to a
    /// new one (`{name}-{first write ms}-{n}.parquet`), so the folder is an append-only
    /// archive whose finished files are always readable. A file is written as
    /// `.parquet.inprogress` and renamed when its footer is on disk.
    rolling: bool,
    files: u64,
    current: Option<PathBuf>,
    /// The newest finished file of this sink in the folder.
    last: Option<String>,
    writer: Option<parquet::arrow::ArrowWriter<File>>,
}

impl fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParquetFile")
            .field("path", &self.path)
            .field("rolling", &self.rolling)
            .finish()
    }
}

impl ParquetFile {
    fn err(&self, path: &std::path::Path, e: &dyn fmt::Display) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: format!("{}: {e}", path.display()),
        }
    }

    /// Writes the footer of the current file and, in a folder, publishes it.
    fn close(&mut self) -> Result<(), SinkError> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let path = self.current.take().unwrap_or_else(|| self.path.clone());
        w.close().map_err(|e| self.err(&path, &e))?;
        if self.rolling {
            let done = path.with_extension("");
            std::fs::rename(&path, &done).map_err(|e| self.err(&done, &e))?;
            self.last = done.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        Ok(())
    }

    /// `(ms, pid, n)` of a finished or in-progress file of this sink, from its name.
    fn file_key(&self, file: &str) -> Option<(u128, u32, u64)> {
        let rest = file.strip_prefix(&format!("{}-", self.name))?;
        let rest = rest
            .strip_suffix(".parquet.inprogress")
            .or_else(|| rest.strip_suffix(".parquet"))?;
        let mut parts = rest.split('-');
        let key = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        parts.next().is_none().then_some(key)
    }
}

impl Sink for ParquetFile {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if self.writer.is_none() {
            let path = if self.rolling {
                self.files += 1;
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                self.path.join(format!(
                    "{}-{ms}-{}-{}.parquet.inprogress",
                    self.name,
                    std::process::id(),
                    self.files
                ))
            } else {
                self.path.clone()
            };
            let f = File::create(&path).map_err(|e| self.err(&path, &e))?;
            self.writer = Some(
                parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None)
                    .map_err(|e| self.err(&path, &e))?,
            );
            self.current = Some(path);
        }
        let path = self.current.clone().unwrap_or_else(|| self.path.clone());
        match self.writer.as_mut() {
            Some(w) => w.write(batch).map_err(|e| SinkError {
                sink: self.name.clone(),
                message: format!("{}: {e}", path.display()),
            }),
            None => Ok(()),
        }
    }
    fn commit(&mut self) -> Result<(), SinkError> {
        if self.rolling {
            return self.close();
        }
        self.flush()
    }
    fn position(&self) -> Option<SinkPosition> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.rolling.then(|| SinkPosition::Archive {
            last: self.last.clone(),
            at_ms,
        })
    }
    fn rewind(&mut self, position: &SinkPosition) -> Result<(), SinkError> {
        let SinkPosition::Archive { last, at_ms } = position else {
            return Ok(());
        };
        if !self.rolling {
            return Ok(());
        }
        let entries = std::fs::read_dir(&self.path).map_err(|e| self.err(&self.path, &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = self.file_key(&name) else {
                continue;
            };
            let unfinished = name.ends_with(".inprogress");
            let after = key.0 >= u128::from(*at_ms) && last.as_deref() != Some(name.as_str());
            if unfinished || after {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| self.err(&path, &e))?;
                tracing::info!(sink = %self.name, file = %name, "removed archive output written after the checkpoint");
            }
        }
        self.last = last.clone();
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        if self.rolling {
            // Rows become a readable file at the next commit (checkpoint or end).
            return Ok(());
        }
        match self.writer.as_mut() {
            Some(w) => w.flush().map_err(|e| SinkError {
                sink: self.name.clone(),
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for ParquetFile {
    fn drop(&mut self) {
        // The footer; errors were reported by flush() where it mattered.
        let _ = self.close();
    }
}

/// Opens the sink declared by `table`; `redis_url` replaces a Redis sink's `address`.
/// `file_tag` goes into a file sink's file names (`<table>.<tag>.jsonl`, `<stem>.<tag>.jsonl`
/// for a file path, `<table>.<tag>-<ms>-<pid>-<n>.parquet` in an archive), so that two
/// engines of one process never write or rewind each other's files.
pub fn open(
    table: &TableDef,
    redis_url: Option<&str>,
    file_tag: Option<&str>,
) -> Result<Box<dyn Sink>, SinkError> {
    let err = |message: String| SinkError {
        sink: table.name.clone(),
        message,
    };
    match table.connector.as_str() {
        "blackhole" => Ok(Box::new(Blackhole)),
        "redis" => {
            let options: Vec<(String, String)> = table
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect();
            let mut config = redis::RedisSinkConfig::from_sql_options(
                options.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map_err(|e| err(e.join("; ")))?;
            if let Some(url) = redis_url {
                config.redis.url = url.to_string();
            }
            let sink = redis::BlockingRedisSink::new(&table.name, config)
                .map_err(|e| err(e.to_string()))?;
            Ok(Box::new(sink))
        }
        "stdout" => Ok(Box::new(JsonLines::new(&table.name, std::io::stdout()))),
        "filesystem" => {
            let path = match table.options.get("path") {
                Some(OptionValue::Str(p)) => PathBuf::from(p),
                _ => return Err(err("option `path` must be a quoted string".into())),
            };
            let format = table
                .options
                .get("format")
                .map(|f| f.as_text().to_ascii_lowercase())
                .unwrap_or_else(|| "json".into());
            let is_file = path
                .extension()
                .is_some_and(|e| e == "jsonl" || e == "json" || e == "parquet");
            let ext = match format.as_str() {
                "json" => "jsonl",
                "parquet" => "parquet",
                f => {
                    return Err(err(format!(
                        "format '{f}' is not supported (json, parquet)"
                    )));
                }
            };
            let name = match file_tag {
                Some(tag) => format!("{}.{tag}", table.name),
                None => table.name.clone(),
            };
            let file = if is_file {
                match (file_tag, path.file_stem(), path.extension()) {
                    (Some(tag), Some(stem), Some(e)) => path.with_file_name(format!(
                        "{}.{tag}.{}",
                        stem.to_string_lossy(),
                        e.to_string_lossy()
                    )),
                    _ => path.clone(),
                }
            } else {
                std::fs::create_dir_all(&path)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?;
                path.join(format!("{name}.{ext}"))
            };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
            }
            if ext == "parquet" {
                return Ok(Box::new(ParquetFile {
                    name,
                    path: if is_file { file } else { path },
                    rolling: !is_file,
                    files: 0,
                    current: None,
                    last: None,
                    writer: None,
                }));
            }
            let f = File::options()
                .create(true)
                .append(true)
                .open(&file)
                .map_err(|e| err(format!("{}: {e}", file.display())))?;
            Ok(Box::new(JsonLines::to_file(
                &table.name,
                file,
                BufWriter::with_capacity(1 << 20, f),
            )))
        }
        c => Err(err(format!("connector '{c}' is not a sink"))),
    }
}
