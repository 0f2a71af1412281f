//! `leasewatch state load`: lease and credit state from files into Redis, as JSON strings.
//!
//! Each row becomes `SET {prefix}lease:{device_id} json` or `SET {prefix}credit:{customer_id}
//! json` ([`Keys`]): JSON strings, so the embedded lookup and Arroyo's Redis lookup connector
//! read the same state. Writes go in pipelines of [`LoadOptions::chunk_size`] `SET`s (one
//! round trip per chunk). A bad row is rejected with its line number and reason and the load
//! goes on; only an unreadable file (or a CSV header naming unknown or lacking required
//! columns) stops it.
//!
//! Formats, by extension:
//!
//! * `.ndjson`, `.jsonl`, `.json`: one JSON object per line, exactly [`LeaseState`] /
//!   [`CreditState`] (serde; unknown fields rejected). Line numbers are the file's lines.
//! * `.csv`: a header row of field names ([`lease_schema`] / [`credit_schema`]), then one
//!   row per record, converted field by field to the schema's types. List columns
//!   (`permitted_cells`, `flags`) are either `;`-separated (`613...;613...`) or a JSON array
//!   (`[613..., 613...]`); empty means an empty list. An empty cell of a nullable column
//!   (`registered_iccid`, `registered_imsi`) is null. Line 1 is the header. Cells are
//!   tokenised row by row (the `csv` crate) rather than by arrow-csv's batch reader, so one
//!   malformed row is one reject instead of a failed batch.
//! * `.parquet`: columns of the Arrow schema (extra columns are ignored); rows are numbered
//!   from 1.
//!
//! Every record is then checked ([`check_lease`], [`check_credit`]).

use crate::redis_client::{ConnectionConfig, RedisConn, RedisError, Request, RetryCounters};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use indicatif::{ProgressBar, ProgressStyle};
use leasewatch_schemas::{
    CreditState, Keys, LeaseState, check_device_id, check_iccid, check_imsi, credit_schema,
    lease_schema,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};

/// What to load, and where.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Lease state file (NDJSON, CSV or Parquet).
    pub leases: Option<PathBuf>,
    /// Credit state file (NDJSON, CSV or Parquet).
    pub credit: Option<PathBuf>,
    /// Redis (URL and retry settings).
    pub redis: ConnectionConfig,
    /// Key prefix, e.g. `lw:`.
    pub prefix: String,
    /// `SET`s per pipeline (one round trip each).
    pub chunk_size: usize,
    /// Show a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Rejected rows kept with their reason in the report (all are counted).
    pub max_reported_rejects: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            leases: None,
            credit: None,
            redis: ConnectionConfig::default(),
            prefix: leasewatch_schemas::DEFAULT_PREFIX.into(),
            chunk_size: 1_000,
            progress: true,
            max_reported_rejects: 1_000,
        }
    }
}

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    /// Line in the file (NDJSON, CSV: 1-based, the CSV header is line 1) or row (Parquet,
    /// 1-based).
    pub line: u64,
    /// What was wrong (field and value where known).
    pub reason: String,
}

/// What loading one file did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Records written to Redis.
    pub loaded: u64,
    /// Records rejected.
    pub rejected: u64,
    /// The first [`LoadOptions::max_reported_rejects`] rejects.
    pub rejects: Vec<Reject>,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// The lease file, when given.
    pub leases: Option<FileReport>,
    /// The credit file, when given.
    pub credit: Option<FileReport>,
    /// Pipelines sent.
    pub round_trips: u64,
}

/// A load stopped.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Bad input: a file cannot be read as a whole (missing, unknown extension, bad CSV
    /// header, not Parquet).
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Bad input: nothing to load.
    #[error("nothing to load: give --leases and/or --credit")]
    NothingToLoad,
    /// Redis: bad URL, unavailable (retryable), refused. Rows written before stay written;
    /// loading again is safe (`SET` overwrites).
    #[error("writing state: {0}")]
    Redis(#[from] RedisError),
}

/// A state record type: how to key, schema and check it.
trait StateRecord: DeserializeOwned + Serialize {
    const WHAT: &'static str;
    fn key(&self, keys: &Keys) -> String;
    fn schema() -> SchemaRef;
    fn check(&self) -> Vec<String>;
}

impl StateRecord for LeaseState {
    const WHAT: &'static str = "leases";
    fn key(&self, keys: &Keys) -> String {
        keys.lease(&self.device_id)
    }
    fn schema() -> SchemaRef {
        lease_schema()
    }
    fn check(&self) -> Vec<String> {
        check_lease(self)
    }
}

impl StateRecord for CreditState {
    const WHAT: &'static str = "credit";
    fn key(&self, keys: &Keys) -> String {
        keys.credit(&self.customer_id)
    }
    fn schema() -> SchemaRef {
        credit_schema()
    }
    fn check(&self) -> Vec<String> {
        check_credit(self)
    }
}

fn upper_letters(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && matches!(s[5..7].parse::<u8>(), Ok(1..=12))
        && matches!(s[8..10].parse::<u8>(), Ok(1..=31))
}

/// Every problem of a lease record (empty: valid).
pub fn check_lease(l: &LeaseState) -> Vec<String> {
    let mut p = Vec::new();
    if l.lease_id.is_empty() {
        p.push("lease_id: empty".to_string());
    }
    if l.customer_id.is_empty() {
        p.push("customer_id: empty".to_string());
    }
    if let Some(e) = check_device_id(&l.device_id) {
        p.push(e.to_string());
    }
    if let Some(e) = l.registered_iccid.as_deref().and_then(check_iccid) {
        p.push(format!("registered_{e}"));
    }
    if let Some(e) = l.registered_imsi.as_deref().and_then(check_imsi) {
        p.push(format!("registered_{e}"));
    }
    if !upper_letters(&l.lease_country, 2) {
        p.push(format!(
            "lease_country: {:?} is not an ISO 3166 alpha-2 code",
            l.lease_country
        ));
    }
    if l.area_res > 15 {
        p.push(format!(
            "area_res: {} is not an H3 resolution (0-15)",
            l.area_res
        ));
    }
    if let Some(c) = l.permitted_cells.iter().find(|c| **c <= 0) {
        p.push(format!("permitted_cells: {c} is not an H3 cell index"));
    }
    if !is_date(&l.due_date) {
        p.push(format!("due_date: {:?} is not YYYY-MM-DD", l.due_date));
    }
    if l.days_past_due < 0 {
        p.push(format!("days_past_due: {} is negative", l.days_past_due));
    }
    for (f, v) in [
        ("amount_due", l.amount_due),
        ("deposit", l.deposit),
        ("monthly_rent", l.monthly_rent),
    ] {
        if v < 0 {
            p.push(format!("{f}: {v} is negative"));
        }
    }
    if !upper_letters(&l.currency, 3) {
        p.push(format!(
            "currency: {:?} is not an ISO 4217 code",
            l.currency
        ));
    }
    p
}

/// Every problem of a credit record (empty: valid).
pub fn check_credit(c: &CreditState) -> Vec<String> {
    let mut p = Vec::new();
    if c.customer_id.is_empty() {
        p.push("customer_id: empty".to_string());
    }
    if !(300..=850).contains(&c.score) {
        p.push(format!("score: {} is outside 300..=850", c.score));
    }
    if c.prior_defaults < 0 {
        p.push(format!("prior_defaults: {} is negative", c.prior_defaults));
    }
    if let Some(f) = c.flags.iter().find(|f| f.is_empty()) {
        p.push(format!("flags: empty flag {f:?}"));
    }
    p
}

/// Loads the files of `opts` into Redis (see the module docs).
pub async fn load_state(opts: &LoadOptions) -> Result<LoadReport, StateError> {
    if opts.leases.is_none() && opts.credit.is_none() {
        return Err(StateError::NothingToLoad);
    }
    let conn = RedisConn::new(&opts.redis)?;
    let mut loader = Loader {
        conn,
        keys: Keys::new(opts.prefix.clone()),
        opts,
        counters: RetryCounters::default(),
        round_trips: 0,
    };
    let mut report = LoadReport::default();
    if let Some(p) = &opts.leases {
        report.leases = Some(loader.load_file::<LeaseState>(p).await?);
    }
    if let Some(p) = &opts.credit {
        report.credit = Some(loader.load_file::<CreditState>(p).await?);
    }
    report.round_trips = loader.round_trips;
    Ok(report)
}

struct Loader<'a> {
    conn: RedisConn,
    keys: Keys,
    opts: &'a LoadOptions,
    counters: RetryCounters,
    round_trips: u64,
}

/// Rows of one file, accumulated into chunks.
struct Sink<'r> {
    report: &'r mut FileReport,
    max_rejects: usize,
    chunk: Vec<(String, String)>,
}

impl Sink<'_> {
    fn reject(&mut self, line: u64, reason: String) {
        self.report.rejected += 1;
        if self.report.rejects.len() < self.max_rejects {
            self.report.rejects.push(Reject { line, reason });
        }
    }

    fn accept<R: StateRecord>(&mut self, line: u64, rec: Result<R, String>, keys: &Keys) {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => return self.reject(line, e),
        };
        let problems = rec.check();
        if !problems.is_empty() {
            return self.reject(line, problems.join("; "));
        }
        match serde_json::to_string(&rec) {
            Ok(json) => self.chunk.push((rec.key(keys), json)),
            Err(e) => self.reject(line, format!("cannot serialise: {e}")),
        }
    }
}

enum Format {
    Ndjson,
    Csv,
    Parquet,
}

fn format_of(path: &Path) -> Result<Format, StateError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "ndjson" | "jsonl" | "json" => Ok(Format::Ndjson),
        "csv" => Ok(Format::Csv),
        "parquet" => Ok(Format::Parquet),
        _ => Err(StateError::Input {
            path: path.to_path_buf(),
            message: format!(
                "unknown extension {ext:?}: expected .ndjson/.jsonl/.json, .csv or .parquet"
            ),
        }),
    }
}

fn progress_bar(opts: &LoadOptions, len: u64, what: &str) -> ProgressBar {
    if !opts.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

impl Loader<'_> {
    async fn flush(&mut self, chunk: &mut Vec<(String, String)>) -> Result<u64, StateError> {
        if chunk.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (k, v) in chunk.iter() {
            pipe.cmd("SET").arg(k).arg(v).ignore();
        }
        self.round_trips += 1;
        self.conn
            .query::<()>(Request::Pipe(&pipe), "SET (state load)", &self.counters)
            .await?;
        let n = chunk.len() as u64;
        chunk.clear();
        Ok(n)
    }

    async fn load_file<R: StateRecord>(&mut self, path: &Path) -> Result<FileReport, StateError> {
        let input = |message: String| StateError::Input {
            path: path.to_path_buf(),
            message,
        };
        let format = format_of(path)?;
        let file = File::open(path).map_err(|e| input(e.to_string()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut report = FileReport {
            path: path.to_path_buf(),
            ..FileReport::default()
        };
        let chunk_size = self.opts.chunk_size.max(1);
        let keys = self.keys.clone();
        let mut sink = Sink {
            report: &mut report,
            max_rejects: self.opts.max_reported_rejects,
            chunk: Vec::with_capacity(chunk_size),
        };
        let mut loaded = 0u64;
        match format {
            Format::Ndjson => {
                let pb = progress_bar(self.opts, size, R::WHAT);
                let mut reader = BufReader::new(file);
                let mut line = String::new();
                let mut n = 0u64;
                loop {
                    line.clear();
                    let read = match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(r) => r,
                        Err(e) => {
                            // Not UTF-8 (or an I/O error): reject the line, go on.
                            n += 1;
                            sink.reject(n, format!("unreadable line: {e}"));
                            let mut skip = Vec::new();
                            if reader.read_until(b'\n', &mut skip).unwrap_or(0) == 0 {
                                break;
                            }
                            continue;
                        }
                    };
                    n += 1;
                    pb.inc(read as u64);
                    let text = line.trim();
                    if text.is_empty() {
                        continue;
                    }
                    sink.accept::<R>(
                        n,
                        serde_json::from_str(text).map_err(|e| e.to_string()),
                        &keys,
                    );
                    if sink.chunk.len() >= chunk_size {
                        loaded += self.flush(&mut sink.chunk).await?;
                    }
                }
                pb.finish_and_clear();
            }
            Format::Csv => {
                let pb = progress_bar(self.opts, size, R::WHAT);
                let mut rdr = csv::ReaderBuilder::new()
                    .flexible(true)
                    .trim(csv::Trim::All)
                    .from_reader(BufReader::new(file));
                let header = rdr
                    .headers()
                    .map_err(|e| input(format!("CSV header: {e}")))?
                    .clone();
                let columns = csv_columns(&R::schema(), &header).map_err(input)?;
                let mut record = csv::StringRecord::new();
                loop {
                    let line = rdr.position().line() + 1;
                    match rdr.read_record(&mut record) {
                        Ok(false) => break,
                        Ok(true) => {
                            let line = record.position().map_or(line, |p| p.line());
                            pb.set_position(rdr.position().byte());
                            let rec = csv_record::<R>(&columns, &header, &record);
                            sink.accept::<R>(line, rec, &keys);
                        }
                        Err(e) => {
                            let line = e.position().map_or(line, |p| p.line());
                            sink.reject(line, format!("CSV: {e}"));
                            if !matches!(
                                e.kind(),
                                csv::ErrorKind::Utf8 { .. } | csv::ErrorKind::UnequalLengths { .. }
                            ) {
                                break;
                            }
                        }
                    }
                    if sink.chunk.len() >= chunk_size {
                        loaded += self.flush(&mut sink.chunk).await?;
                    }
                }
                pb.finish_and_clear();
            }
            Format::Parquet => {
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .map_err(|e| input(format!("not a Parquet file: {e}")))?;
                let rows =
                    u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
                let reader = builder
                    .with_batch_size(chunk_size)
                    .build()
                    .map_err(|e| input(e.to_string()))?;
                let pb = progress_bar(self.opts, rows, R::WHAT);
                let mut row = 0u64;
                for batch in reader {
                    let batch = batch.map_err(|e| input(format!("reading row group: {e}")))?;
                    let lines = batch_to_json_lines(&R::schema(), &batch).map_err(input)?;
                    for l in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        row += 1;
                        sink.accept::<R>(
                            row,
                            serde_json::from_slice(l).map_err(|e| e.to_string()),
                            &keys,
                        );
                    }
                    pb.set_position(row);
                    if sink.chunk.len() >= chunk_size {
                        loaded += self.flush(&mut sink.chunk).await?;
                    }
                }
                pb.finish_and_clear();
            }
        }
        loaded += self.flush(&mut sink.chunk).await?;
        report.loaded = loaded;
        tracing::info!(file = %path.display(), loaded = report.loaded, rejected = report.rejected, "state loaded");
        Ok(report)
    }
}

/// Rows of `batch` as JSON lines, keeping only the columns of `schema` (serde rejects
/// unknown fields); a missing required column fails the file.
fn batch_to_json_lines(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let have = batch.schema();
    let mut keep = Vec::with_capacity(schema.fields().len());
    let mut missing = Vec::new();
    for f in schema.fields() {
        match have.index_of(f.name()) {
            Ok(i) => keep.push(i),
            Err(_) if f.is_nullable() => {}
            Err(_) => missing.push(f.name().as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(format!("missing required columns {missing:?}"));
    }
    let batch = batch.project(&keep).map_err(|e| e.to_string())?;
    let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
    w.write(&batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(w.into_inner())
}

/// For each header column, its field's type in `schema`; errors for unknown or missing
/// required columns.
fn csv_columns(schema: &SchemaRef, header: &csv::StringRecord) -> Result<Vec<DataType>, String> {
    let mut unknown = Vec::new();
    let mut types = Vec::with_capacity(header.len());
    for h in header {
        match schema.field_with_name(h) {
            Ok(f) => types.push(f.data_type().clone()),
            Err(_) => {
                unknown.push(h.to_string());
                types.push(DataType::Null);
            }
        }
    }
    let missing: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| !f.is_nullable() && !header.iter().any(|h| h == f.name()))
        .map(|f| f.name().as_str())
        .collect();
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        problems.push(format!("unknown columns {unknown:?}"));
    }
    if !missing.is_empty() {
        problems.push(format!("missing required columns {missing:?}"));
    }
    if problems.is_empty() {
        Ok(types)
    } else {
        Err(format!("CSV header: {}", problems.join("; ")))
    }
}

/// One CSV row as a state record, converting each cell to its column's type.
fn csv_record<R: StateRecord>(
    types: &[DataType],
    header: &csv::StringRecord,
    record: &csv::StringRecord,
) -> Result<R, String> {
    if record.len() != header.len() {
        return Err(format!(
            "{} cells, the header has {} columns",
            record.len(),
            header.len()
        ));
    }
    let mut obj = serde_json::Map::with_capacity(header.len());
    for ((name, ty), cell) in header.iter().zip(types).zip(record) {
        let v = csv_cell(ty, cell).map_err(|e| format!("{name}: {e} (value {cell:?})"))?;
        if let Some(v) = v {
            obj.insert(name.to_string(), v);
        }
    }
    serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| e.to_string())
}

fn csv_cell(ty: &DataType, cell: &str) -> Result<Option<serde_json::Value>, String> {
    use serde_json::Value;
    Ok(Some(match ty {
        DataType::Utf8 if cell.is_empty() => return Ok(None),
        DataType::Utf8 => Value::String(cell.to_string()),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            if cell.is_empty() {
                return Ok(None);
            }
            Value::Number(
                cell.parse::<i64>()
                    .map_err(|_| "not an integer".to_string())?
                    .into(),
            )
        }
        DataType::List(item) => {
            let items: Vec<Value> = if cell.starts_with('[') {
                match serde_json::from_str::<Value>(cell) {
                    Ok(Value::Array(a)) => a,
                    _ => return Err("not a JSON array".into()),
                }
            } else if cell.is_empty() {
                Vec::new()
            } else {
                cell.split(';')
                    .map(|s| csv_cell(item.data_type(), s.trim()))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .map(|v| v.unwrap_or(Value::Null))
                    .collect()
            };
            Value::Array(items)
        }
        _ => return Err(format!("unsupported column type {ty}")),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use leasewatch_schemas::LeaseStatus;

    pub(crate) fn lease() -> LeaseState {
        LeaseState {
            lease_id: "L1".into(),
            device_id: "490154203237518".into(),
            customer_id: "C1".into(),
            registered_iccid: None,
            registered_imsi: Some("505011234567890".into()),
            lease_country: "KE".into(),
            permitted_cells: vec![613196575453364223],
            area_res: 7,
            status: LeaseStatus::Overdue,
            due_date: "2026-01-31".into(),
            days_past_due: 3,
            amount_due: 100,
            deposit: 0,
            monthly_rent: 100,
            currency: "KES".into(),
        }
    }

    #[test]
    fn lease_checks() {
        assert!(check_lease(&lease()).is_empty());
        let bad = LeaseState {
            device_id: "123".into(),
            due_date: "2026-13-01".into(),
            currency: "kes".into(),
            days_past_due: -1,
            ..lease()
        };
        let p = check_lease(&bad);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("device_id"), "{p:?}");
    }

    #[test]
    fn csv_cells_and_lists() {
        let schema = lease_schema();
        let header = csv::StringRecord::from(
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
        );
        let types = csv_columns(&schema, &header).unwrap();
        let row = |cells: &str| {
            let r = csv::StringRecord::from(cells.split(',').collect::<Vec<_>>());
            csv_record::<LeaseState>(&types, &header, &r)
        };
        let l = row("L1,490154203237518,C1,,505011234567890,KE,613196575453364223;613196575455461375,7,overdue,2026-01-31,3,100,0,100,KES").unwrap();
        assert_eq!(l.permitted_cells.len(), 2);
        assert_eq!(l.registered_iccid, None);
        let l = row("L1,490154203237518,C1,,,KE,[1;2],7,overdue,2026-01-31,3,100,0,100,KES");
        assert!(l.is_err());
        let e =
            row("L1,490154203237518,C1,,,KE,,x7,overdue,2026-01-31,3,100,0,100,KES").unwrap_err();
        assert!(e.starts_with("area_res: not an integer"), "{e}");
        let e =
            row("L1,490154203237518,C1,,,KE,,700,overdue,2026-01-31,3,100,0,100,KES").unwrap_err();
        assert!(e.contains("u8") || e.contains("700"), "{e}");
        let bad_header = csv::StringRecord::from(vec!["lease_id", "typo"]);
        let e = csv_columns(&schema, &bad_header).unwrap_err();
        assert!(e.contains("typo") && e.contains("device_id"), "{e}");
    }
}
