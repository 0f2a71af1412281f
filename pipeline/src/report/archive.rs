//! The alert archive on disk: every `*.parquet` file under a folder, read into Arrow.
//!
//! Only the columns the report uses are read ([`REQUIRED`]); a file without one of them,
//! or with one of an unrelated type, is refused, naming the file and the column. Columns
//! are matched by name and cast to the archive schema's types (any string encoding, any
//! timestamp unit, any integer width), so files written by other tools also work. Other
//! files in the folder (`_SUCCESS`, `.crc`, notes) are ignored.

use super::ReportError;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use leasewatch_schemas::alert_archive_schema;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The archive columns the report reads.
pub const REQUIRED: &[&str] = &[
    "alert_id",
    "signal",
    "grade",
    "queue",
    "device_id",
    "lease_id",
    "event_time",
    "days_past_due",
    "lat",
    "lon",
];

/// Nesting limit when walking the archive folder (guards against symlink loops).
const MAX_DEPTH: usize = 32;

/// The archive read into memory.
#[derive(Debug)]
pub struct Archive {
    /// The Parquet files read, sorted.
    pub files: Vec<PathBuf>,
    /// Rows read over all files.
    pub rows: u64,
    /// [`table_schema`] batches.
    pub batches: Vec<RecordBatch>,
}

/// The schema of [`Archive::batches`]: the [`REQUIRED`] columns of the archive schema,
/// every one nullable (nulls in a file are the SQL's to handle, not a reason to refuse it).
pub fn table_schema() -> SchemaRef {
    let archive = alert_archive_schema();
    Arc::new(Schema::new(
        REQUIRED
            .iter()
            .filter_map(|name| archive.field_with_name(name).ok())
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Finds and reads every `*.parquet` file under `dir`.
pub fn read_archive(dir: &Path) -> Result<Archive, ReportError> {
    let archive_err = |message: String| ReportError::Archive {
        path: dir.display().to_string(),
        message,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(archive_err("not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(archive_err("no such directory".into()));
        }
        Err(e) => return Err(archive_err(e.to_string())),
    }
    let mut files = Vec::new();
    find_parquet(dir, 0, &mut files)?;
    if files.is_empty() {
        return Err(archive_err(
            "no *.parquet files in it or its subfolders: nothing to report on".into(),
        ));
    }
    files.sort();
    let schema = table_schema();
    let mut batches = Vec::new();
    let mut rows = 0u64;
    for f in &files {
        rows += read_file(f, &schema, &mut batches)?;
    }
    Ok(Archive {
        files,
        rows,
        batches,
    })
}

fn find_parquet(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    let io = |e: std::io::Error| ReportError::Io {
        what: "reading",
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    if depth > MAX_DEPTH {
        return Err(ReportError::Archive {
            path: dir.display().to_string(),
            message: format!("folders nested more than {MAX_DEPTH} deep (a symlink loop?)"),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // Follows symlinks: an archive assembled from links works.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling link
        };
        if meta.is_dir() {
            find_parquet(&path, depth + 1, out)?;
        } else if meta.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a file column of type `actual` can stand for an archive column of `expected`.
fn compatible(expected: &DataType, actual: &DataType) -> bool {
    use DataType::*;
    let text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let int = |t: &DataType| {
        matches!(
            t,
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        )
    };
    match (expected, actual) {
        (_, Null) => true,
        (e, Dictionary(_, v)) => compatible(e, v),
        (e, a) if text(e) => text(a),
        (Timestamp(..), a) => matches!(a, Timestamp(..)),
        (e, a) if int(e) => int(a),
        (Float64, a) => matches!(a, Float16 | Float32 | Float64) || int(a),
        (e, a) => e == a,
    }
}

/// Reads one file into `out`; returns its row count.
fn read_file(
    path: &Path,
    schema: &SchemaRef,
    out: &mut Vec<RecordBatch>,
) -> Result<u64, ReportError> {
    let format = |message: String| ReportError::Format {
        path: path.display().to_string(),
        message,
    };
    let file = File::open(path).map_err(|e| ReportError::Io {
        what: "reading",
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format(format!("not a readable Parquet file: {e}")))?;
    let file_schema = builder.schema().clone();
    let mut roots = Vec::with_capacity(schema.fields().len());
    let mut problems = Vec::new();
    for f in schema.fields() {
        match file_schema.index_of(f.name()) {
            Ok(i) => {
                let actual = file_schema.field(i).data_type();
                if compatible(f.data_type(), actual) {
                    roots.push(i);
                } else {
                    problems.push(format!(
                        "column {} is {actual}, expected {}",
                        f.name(),
                        f.data_type()
                    ));
                }
            }
            Err(_) => problems.push(format!("required column {} is missing", f.name())),
        }
    }
    if !problems.is_empty() {
        return Err(format(format!(
            "not an alert archive file ({}; the archive schema is leasewatch_schemas::alert_archive_schema)",
            problems.join("; ")
        )));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| format(format!("not a readable Parquet file: {e}")))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format(format!("corrupt Parquet data: {e}")))?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let c = batch
                .column_by_name(f.name())
                .ok_or_else(|| format(format!("column {} went missing", f.name())))?;
            cols.push(
                arrow::compute::cast(c, f.data_type())
                    .map_err(|e| format(format!("column {}: {e}", f.name())))?,
            );
        }
        rows += batch.num_rows() as u64;
        let b = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| ReportError::internal("the archive table", e))?;
        if b.num_rows() > 0 {
            out.push(b);
        }
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    #[test]
    fn compatible_types() {
        use DataType::*;
        assert!(compatible(&Utf8, &LargeUtf8));
        assert!(compatible(
            &Utf8,
            &Dictionary(Box::new(Int32), Box::new(Utf8))
        ));
        assert!(!compatible(&Utf8, &Int64));
        assert!(compatible(
            &Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            &Timestamp(TimeUnit::Microsecond, None)
        ));
        assert!(!compatible(&Timestamp(TimeUnit::Millisecond, None), &Int64));
        assert!(compatible(&Int32, &Int64));
        assert!(compatible(&Float64, &Float32));
        assert!(!compatible(&Float64, &Utf8));
        assert!(compatible(&Int32, &Null));
    }

    #[test]
    fn table_schema_has_every_required_column() {
        let s = table_schema();
        assert_eq!(s.fields().len(), REQUIRED.len());
        assert!(s.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn missing_and_empty_archives() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read_archive(&missing).unwrap_err();
        assert!(e.to_string().contains("no such directory"), "{e}");
        std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
        let e = read_archive(dir.path()).unwrap_err();
        assert!(e.to_string().contains("no *.parquet files"), "{e}");
        std::fs::write(dir.path().join("a.parquet"), "not parquet").unwrap();
        let e = read_archive(dir.path()).unwrap_err();
        assert!(
            matches!(e, ReportError::Format { .. }) && e.to_string().contains("a.parquet"),
            "{e}"
        );
    }
}
