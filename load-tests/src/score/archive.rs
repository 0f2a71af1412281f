//! Reading the alert archive: Parquet files in `alert_archive_schema()`, only the
//! columns scoring needs, de-duplicated by `alert_id` (an alert routed to two queues
//! is archived twice).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use leasewatch_schemas::SignalKind;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ScoreError;
use super::matching::Alert;

/// The columns read, all required.
const COLUMNS: [&str; 6] = [
    "alert_id",
    "signal",
    "device_id",
    "event_time",
    "window_start",
    "window_end",
];

/// The distinct alerts of an archive.
#[derive(Debug, Default)]
pub struct Archive {
    /// Parquet files read.
    pub files: usize,
    /// Rows read.
    pub rows: u64,
    /// Distinct alerts (first row of each `alert_id`, files in path order).
    pub alerts: Vec<Alert>,
    /// Rows repeating an `alert_id` with a different signal, device or interval.
    pub conflicting: u64,
}

/// Reads `path`: one Parquet file, or every `*.parquet` below a directory.
pub fn read(path: &Path) -> Result<Archive, ScoreError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ScoreError::bad(path, format!("cannot read the alert archive: {e}")))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        find_parquet(path, &mut files)?;
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Archive {
        files: files.len(),
        ..Archive::default()
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in &files {
        read_file(f, &mut out, &mut seen)?;
    }
    Ok(out)
}

fn find_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScoreError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ScoreError::bad(dir, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| ScoreError::bad(dir, format!("cannot list: {e}")))?;
        let p = entry.path();
        let ty = entry
            .file_type()
            .map_err(|e| ScoreError::bad(&p, format!("cannot stat: {e}")))?;
        if ty.is_dir() {
            find_parquet(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    Ok(())
}

fn read_file(
    path: &Path,
    out: &mut Archive,
    seen: &mut HashMap<String, usize>,
) -> Result<(), ScoreError> {
    let file = File::open(path).map_err(|e| ScoreError::bad(path, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| ScoreError::bad(path, format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema();
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| schema.index_of(c).is_err())
        .collect();
    if !missing.is_empty() {
        let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(ScoreError::bad(
            path,
            format!(
                "missing required column(s) {} (found {}); expected alert_archive_schema()",
                missing.join(", "),
                found.join(", ")
            ),
        ));
    }
    let roots: Vec<usize> = COLUMNS
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| ScoreError::bad(path, format!("cannot read: {e}")))?;
    let mut file_rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| ScoreError::bad(path, format!("cannot decode: {e}")))?;
        read_batch(path, &batch, file_rows, out, seen)?;
        file_rows += batch.num_rows() as u64;
    }
    out.rows += file_rows;
    Ok(())
}

fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ScoreError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ScoreError::bad(path, format!("missing required column {name}")))
}

/// A string column (Utf8, LargeUtf8, Utf8View or a dictionary of those) as Utf8.
fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<StringArray, ScoreError> {
    let col = column(path, batch, name)?;
    let is_string =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let ok = match col.data_type() {
        DataType::Dictionary(_, v) => is_string(v),
        t => is_string(t),
    };
    let wrong = || {
        ScoreError::bad(
            path,
            format!(
                "column {name} has type {}, expected a string",
                col.data_type()
            ),
        )
    };
    if !ok {
        return Err(wrong());
    }
    let c = cast(col, &DataType::Utf8).map_err(|_| wrong())?;
    Ok(c.as_string::<i32>().clone())
}

/// A timestamp column (any unit; or Int64 milliseconds) as milliseconds.
fn millis(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<arrow::array::Int64Array, ScoreError> {
    let col = column(path, batch, name)?;
    let wrong = || {
        ScoreError::bad(
            path,
            format!(
                "column {name} has type {}, expected Timestamp(Millisecond, \"+00:00\")",
                col.data_type()
            ),
        )
    };
    let ms = match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => col.clone(),
        DataType::Timestamp(_, tz) => {
            cast(col, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))
                .map_err(|_| wrong())?
        }
        _ => return Err(wrong()),
    };
    let ints = cast(&ms, &DataType::Int64).map_err(|_| wrong())?;
    Ok(ints.as_primitive::<Int64Type>().clone())
}

/// Adds the alerts of `batch`, whose first row is row `first + 1` of `path`.
fn read_batch(
    path: &Path,
    batch: &RecordBatch,
    first: u64,
    out: &mut Archive,
    seen: &mut HashMap<String, usize>,
) -> Result<(), ScoreError> {
    let ids = strings(path, batch, "alert_id")?;
    let signals = strings(path, batch, "signal")?;
    let devices = strings(path, batch, "device_id")?;
    let event = millis(path, batch, "event_time")?;
    let wstart = millis(path, batch, "window_start")?;
    let wend = millis(path, batch, "window_end")?;
    for i in 0..batch.num_rows() {
        // 1-based row number within the file, for error messages.
        let row = first + i as u64 + 1;
        let null = |col: &str| ScoreError::bad(path, format!("row {row}: column {col} is null"));
        if ids.is_null(i) {
            return Err(null("alert_id"));
        }
        if signals.is_null(i) {
            return Err(null("signal"));
        }
        if devices.is_null(i) {
            return Err(null("device_id"));
        }
        if event.is_null(i) {
            return Err(null("event_time"));
        }
        let name = signals.value(i);
        let signal = SignalKind::parse(name).ok_or_else(|| {
            ScoreError::bad(
                path,
                format!("row {row}, column signal: unknown signal {name:?}"),
            )
        })?;
        let t = event.value(i);
        let a = if wstart.is_null(i) {
            t
        } else {
            wstart.value(i)
        };
        let b = if wend.is_null(i) { t } else { wend.value(i) };
        let alert = Alert {
            signal,
            device: devices.value(i).to_string(),
            lo: a.min(b),
            hi: a.max(b),
        };
        match seen.get(ids.value(i)) {
            Some(&j) => {
                if out.alerts.get(j) != Some(&alert) {
                    out.conflicting += 1;
                }
            }
            None => {
                seen.insert(ids.value(i).to_string(), out.alerts.len());
                out.alerts.push(alert);
            }
        }
    }
    Ok(())
}
