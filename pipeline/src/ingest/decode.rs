//! Request bodies to Arrow: NDJSON, a JSON array, an Arrow IPC stream, and gunzip.
//!
//! JSON goes straight into columns with arrow-json's `Decoder` (no per-row serde
//! structs). One request is decoded with one decoder; only when that fails are its
//! rows split in halves, recursively, until every bad row is isolated and reported
//! while the good ones are kept (k bad rows among n cost about k·log n small decodes).
//! NDJSON goes through [`NdjsonDecoder`], which replay also uses for file regions. By
//! default ([`JsonDecoder::PingLines`]) the decoder specialised to ping lines
//! (`ping_lines`) reads each line first and arrow-json decodes the lines it declines,
//! so rows and rejections are arrow-json's either way.

use super::ping_lines::{PingLines, Stop};
use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::buffer::Buffer;
use arrow::compute::{CastOptions, cast_with_options, concat_batches};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow_ipc::reader::StreamDecoder;
use arrow_json::ReaderBuilder;
use leasewatch_schemas::ping_schema;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Once};

use leasewatch_schemas::Problem;

/// A body that cannot be turned into rows at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body inflates to more than the limit.
    #[error("body is larger than {limit} bytes after decompression")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body holds more rows than the limit.
    #[error("body holds more than {limit} rows")]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
    /// The body is not in the format it claims (not a JSON array, not gzip, a broken
    /// Arrow IPC stream, columns that do not fit the ping schema).
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// One thing wrong with one field of a row, as sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowProblem {
    /// The field by its wire name (`"row"` when the row as a whole is unreadable).
    pub field: String,
    /// What is wrong: a `ProblemKind` name, or `bad_json`, `unknown_field`, `missing`.
    pub kind: String,
    /// The offending value (or the start of the row), at most 64 characters.
    pub value: String,
    /// A human-readable explanation.
    pub message: String,
}

impl From<&Problem> for RowProblem {
    fn from(p: &Problem) -> Self {
        Self {
            field: p.field.to_string(),
            kind: p.kind.as_str().to_string(),
            value: p.value.clone(),
            message: p.message.clone(),
        }
    }
}

/// A rejected row: its index in the request (0-based: array element, non-blank NDJSON
/// line, or row across the IPC stream's batches) and every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowRejection {
    /// Index of the row in the request.
    pub row: usize,
    /// Everything wrong with it.
    pub problems: Vec<RowProblem>,
}

/// The rows of a request that could be read.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The rows that decoded, in request order, in the column layout of
    /// [`ping_schema`] (IPC input may carry nulls in required columns: the validator
    /// reports those).
    pub batch: RecordBatch,
    /// For each row of `batch`, its index in the request.
    pub request_rows: Vec<usize>,
    /// Rows that could not be decoded.
    pub rejected: Vec<RowRejection>,
    /// Rows in the request (decoded + rejected).
    pub total_rows: usize,
}

impl Decoded {
    fn empty(schema: SchemaRef) -> Self {
        Self {
            batch: RecordBatch::new_empty(schema),
            request_rows: Vec::new(),
            rejected: Vec::new(),
            total_rows: 0,
        }
    }
}

/// Inflates a gzip body (one or more members), reading at most `limit` bytes of
/// output: a larger result is [`DecodeError::TooLarge`] without inflating the rest.
pub fn gunzip_limited(body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    let cap = (body.len() as u64).saturating_mul(4).min(limit) as usize;
    let mut out = Vec::with_capacity(cap);
    let mut reader = flate2::read::MultiGzDecoder::new(body).take(limit.saturating_add(1));
    reader
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Malformed(format!("gzip: {e}")))?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn strip_bom(s: &[u8]) -> &[u8] {
    s.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(s)
}

/// Which code decodes NDJSON lines (`ingest.ndjson_decoder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonDecoder {
    /// The decoder specialised to ping lines, arrow-json for every line it declines:
    /// the same rows and rejections as arrow-json alone, in about a third of the CPU.
    /// One difference: an object spread over two lines is rejected line by line, as
    /// NDJSON has it, where arrow-json alone would read it as a row.
    #[default]
    PingLines,
    /// arrow-json alone.
    ArrowJson,
}

impl JsonDecoder {
    /// The name used in configuration and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::PingLines => "ping-lines",
            Self::ArrowJson => "arrow-json",
        }
    }
}

/// Decodes newline-delimited JSON with the default decoder
/// ([`JsonDecoder::PingLines`]): see [`decode_ndjson_with`].
pub fn decode_ndjson(body: &[u8], max_rows: usize) -> Result<Decoded, DecodeError> {
    decode_ndjson_with(body, max_rows, JsonDecoder::default())
}

/// Decodes newline-delimited JSON: one ping object per non-blank line. A line that
/// does not decode is rejected on its own; the other lines are kept. The request-body
/// face of [`NdjsonDecoder`] (replay decodes file regions with the same code).
pub fn decode_ndjson_with(
    body: &[u8],
    max_rows: usize,
    decoder: JsonDecoder,
) -> Result<Decoded, DecodeError> {
    let mut ndjson = match decoder {
        JsonDecoder::PingLines => NdjsonDecoder::with_ping_lines(usize::MAX),
        JsonDecoder::ArrowJson => NdjsonDecoder::new(usize::MAX),
    };
    let decoded = ndjson.decode(strip_bom(body), max_rows)?;
    let schema = ping_schema();
    let mut out = Decoded::empty(Arc::clone(&schema));
    out.total_rows = decoded.rows;
    let mut bad = decoded.rejected.iter().map(|r| r.rejection.row).peekable();
    for row in 0..decoded.rows {
        if bad.peek() == Some(&row) {
            bad.next();
        } else {
            out.request_rows.push(row);
        }
    }
    out.rejected = decoded.rejected.into_iter().map(|r| r.rejection).collect();
    let mut batches = decoded.batches;
    out.batch = match batches.len() {
        0 => RecordBatch::new_empty(schema),
        1 => batches
            .pop()
            .unwrap_or_else(|| RecordBatch::new_empty(schema)),
        _ => match concat_batches(&schema, &batches) {
            Ok(b) => b,
            Err(e) => {
                reject_all(&mut out, &e);
                RecordBatch::new_empty(schema)
            }
        },
    };
    Ok(out)
}

/// NDJSON text (a request body, a region of a file) decoded into ping rows.
#[derive(Debug, Clone, Default)]
pub struct NdjsonDecoded {
    /// The rows that decoded, in text order, in batches of at most the decoder's
    /// `batch_rows` rows, in the column layout of [`ping_schema`].
    pub batches: Vec<RecordBatch>,
    /// The rows that did not decode, in text order.
    pub rejected: Vec<NdjsonRejection>,
    /// Rows in the text: its non-blank lines (decoded + rejected).
    pub rows: usize,
    /// Lines in the text (a last line without `\n` counts).
    pub lines: usize,
}

/// A row of NDJSON text that did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdjsonRejection {
    /// Its line in the text, 0-based (blank lines counted).
    pub line: usize,
    /// Its row (0-based, among the non-blank lines) and what is wrong with it.
    pub rejection: RowRejection,
}

/// The NDJSON decoder, shared by ingest (a request body: [`decode_ndjson`]) and
/// replay (regions of a file, one decoder per thread).
///
/// The whole text goes through one arrow-json `Decoder` in one pass, cut into batches
/// of `batch_rows`; it must yield exactly one row per non-blank line. Only when it
/// does not are the rows bisected (see the module documentation) so that each bad row
/// is rejected on its own, with the same messages as a JSON array's elements. The
/// arrow-json decoder is kept between calls: its buffers are sized for a batch.
#[derive(Debug)]
pub struct NdjsonDecoder {
    batch_rows: usize,
    /// Try the ping-line decoder first (replay); arrow-json decodes whatever it declines.
    ping_lines: bool,
    /// The decoder kept between calls, with its batch size.
    cached: Option<(usize, arrow_json::reader::Decoder)>,
}

impl NdjsonDecoder {
    /// A decoder yielding batches of at most `batch_rows` rows (`usize::MAX`: one),
    /// all through arrow-json.
    pub fn new(batch_rows: usize) -> Self {
        Self {
            batch_rows: batch_rows.max(1),
            ping_lines: false,
            cached: None,
        }
    }

    /// Like [`new`](Self::new), but each line that the decoder specialised to the ping
    /// schema reads (one flat ping object in the common encodings: see `ping_lines`)
    /// is decoded by it, several times faster; any other line goes through arrow-json
    /// on its own. The rows are the same either way (but for an object spread over
    /// lines: see `decode_ping_lines`).
    pub fn with_ping_lines(batch_rows: usize) -> Self {
        Self {
            ping_lines: true,
            ..Self::new(batch_rows)
        }
    }

    /// Decodes `text` (no byte-order mark: strip it first) holding at most `max_rows`
    /// non-blank lines; more is [`DecodeError::TooManyRows`], found before decoding
    /// (with ping lines, when the line past the limit is reached).
    pub fn decode(&mut self, text: &[u8], max_rows: usize) -> Result<NdjsonDecoded, DecodeError> {
        if self.ping_lines
            && let Some(d) = self.decode_ping_lines(text, max_rows)?
        {
            return Ok(d);
        }
        self.decode_arrow(text, max_rows)
    }

    /// The ping-line decoder over `text`, each line it declines decoded (or rejected) by
    /// arrow-json on its own; `None` in the unexpected case that the two do not fit
    /// together, and the text is then arrow-json's alone.
    ///
    /// A declined line is decoded as one line: an object spread over several lines is
    /// rejected line by line, as NDJSON has it (arrow-json alone would take `{..}{`
    /// followed by `..}` as two rows).
    fn decode_ping_lines(
        &mut self,
        text: &[u8],
        max_rows: usize,
    ) -> Result<Option<NdjsonDecoded>, DecodeError> {
        let mut lines = PingLines::new(self.batch_rows, text.len());
        let mut rejected = Vec::new();
        loop {
            match lines.read(text, max_rows) {
                Stop::End => break,
                Stop::TooManyRows => return Err(DecodeError::TooManyRows { limit: max_rows }),
                Stop::Declined {
                    start,
                    end,
                    line,
                    row,
                } => {
                    let one = self.decode_arrow(&text[start..end], 1)?;
                    for b in &one.batches {
                        if lines.push(b, text.len()).is_none() {
                            return Ok(None);
                        }
                    }
                    rejected.extend(one.rejected.into_iter().map(|mut r| {
                        r.line = line;
                        r.rejection.row = row;
                        r
                    }));
                }
            }
        }
        let (rows, line_count) = (lines.rows, lines.lines);
        Ok(lines.finish().map(|batches| NdjsonDecoded {
            batches,
            rejected,
            rows,
            lines: line_count,
        }))
    }

    /// [`decode`](Self::decode) with arrow-json alone.
    fn decode_arrow(&mut self, text: &[u8], max_rows: usize) -> Result<NdjsonDecoded, DecodeError> {
        let (scan, flat) = match flat_lines(text) {
            Some(lines) if lines > max_rows => {
                return Err(DecodeError::TooManyRows { limit: max_rows });
            }
            Some(lines) => (LineScan { rows: lines, lines }, true),
            None => (scan_lines(text, max_rows)?, false),
        };
        let mut out = NdjsonDecoded {
            rows: scan.rows,
            lines: scan.lines,
            ..NdjsonDecoded::default()
        };
        if scan.rows == 0 {
            return Ok(out);
        }
        // Flat lines cannot nest (see `flat_lines`); anything else is measured like the
        // bisection's parts before the decoder sees it.
        if flat || Nesting::default().feed(text).is_ok() {
            let batch = self.batch_rows.min(scan.rows);
            match self.decode_whole(text, batch, scan.rows) {
                Ok(batches) => {
                    out.batches = batches;
                    return Ok(out);
                }
                // The decoder's state is unknown after an error: start afresh.
                Err(_) => self.cached = None,
            }
        }
        let spans = row_spans(text);
        let indexed: Vec<(usize, &[u8])> = spans.iter().map(|s| s.1).enumerate().collect();
        let mut parts = Vec::new();
        let mut found = Decoded::empty(ping_schema());
        bisect(&indexed, &mut parts, &mut found);
        found.rejected.sort_by_key(|r| r.row);
        match rechunk(&parts, self.batch_rows) {
            Ok(batches) => {
                out.batches = batches;
                out.rejected = found
                    .rejected
                    .into_iter()
                    .map(|rejection| NdjsonRejection {
                        line: spans.get(rejection.row).map_or(0, |s| s.0),
                        rejection,
                    })
                    .collect();
            }
            Err(e) => {
                out.rejected = spans
                    .iter()
                    .enumerate()
                    .map(|(row, s)| NdjsonRejection {
                        line: s.0,
                        rejection: internal_rejection(row, &e),
                    })
                    .collect();
            }
        }
        Ok(out)
    }

    /// The whole text through one decoder: exactly `expected` rows, or an error.
    fn decode_whole(
        &mut self,
        text: &[u8],
        batch: usize,
        expected: usize,
    ) -> Result<Vec<RecordBatch>, String> {
        if !matches!(&self.cached, Some((b, _)) if *b == batch) {
            let d = ReaderBuilder::new(ping_schema())
                .with_strict_mode(true)
                .with_batch_size(batch)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            self.cached = Some((batch, d));
        }
        let Some((_, d)) = self.cached.as_mut() else {
            return Err("no decoder".to_string());
        };
        let mut out = Vec::with_capacity(expected / batch + 1);
        let mut total = 0usize;
        // The trailing newline completes a last line that ends in a bare literal.
        for part in [text, &b"\n"[..]] {
            let mut rest = part;
            while !rest.is_empty() {
                let n = d.decode(rest).map_err(|e| e.to_string())?;
                rest = &rest[n..];
                if d.len() >= batch {
                    if let Some(b) = d.flush().map_err(|e| e.to_string())? {
                        total += b.num_rows();
                        out.push(b);
                    }
                } else if n == 0 {
                    return Err("the JSON decoder made no progress".to_string());
                }
                if total > expected {
                    return Err(format!("more than {expected} JSON values"));
                }
            }
        }
        if d.has_partial_record() {
            return Err("incomplete JSON value".to_string());
        }
        if let Some(b) = d.flush().map_err(|e| e.to_string())? {
            total += b.num_rows();
            out.push(b);
        }
        if total != expected {
            return Err(format!("expected {expected} JSON objects, found {total}"));
        }
        Ok(out)
    }
}

/// Lines and non-blank lines (rows) of NDJSON text.
struct LineScan {
    rows: usize,
    lines: usize,
}

/// Counts lines and non-blank lines, failing past `max_rows`.
fn scan_lines(text: &[u8], max_rows: usize) -> Result<LineScan, DecodeError> {
    let mut scan = LineScan { rows: 0, lines: 0 };
    let mut start = 0;
    while start < text.len() {
        let end = find_newline(text, start).unwrap_or(text.len());
        scan.lines += 1;
        if !trim_ascii(&text[start..end]).is_empty() {
            if scan.rows == max_rows {
                return Err(DecodeError::TooManyRows { limit: max_rows });
            }
            scan.rows += 1;
        }
        start = end + 1;
    }
    Ok(scan)
}

/// The number of lines when every line of `text` is `{...}`, nothing around it, and no
/// `{`, `}`, `[` or `]` byte inside it (in strings or not): the common case, checked in
/// one pass the compiler vectorises. Such text cannot nest deeper than one object:
/// every line holds exactly one opening byte, its first, so only a line that starts
/// outside a string and ends inside one can leave an object open; the next line then
/// starts inside that string and can leave it only before its last byte, the `}` that
/// closes the object.
fn flat_lines(text: &[u8]) -> Option<usize> {
    let (&first, body) = text.split_first()?;
    let trimmed = text.strip_suffix(b"\n").unwrap_or(text);
    if first != b'{' || trimmed.last() != Some(&b'}') || body.is_empty() {
        return None;
    }
    let (head, last) = text.split_at(text.len() - 1);
    let (mut newlines, mut brackets, mut pairs) = (0usize, 0usize, 0usize);
    // Blocks short enough for byte counters.
    for (xs, ys) in head.chunks(240).zip(body.chunks(240)) {
        let (mut n, mut b, mut p) = (0u8, 0u8, 0u8);
        for (&x, &y) in xs.iter().zip(ys) {
            n += u8::from(x == b'\n');
            // `|0x20` folds `[` onto `{` and `]` onto `}`.
            let z = x | 0x20;
            b += u8::from(z == b'{') + u8::from(z == b'}');
            p += u8::from(((x == b'\n') & (y == b'{')) | ((x == b'}') & (y == b'\n')));
        }
        newlines += usize::from(n);
        brackets += usize::from(b);
        pairs += usize::from(p);
    }
    let last = last.first().copied().unwrap_or(0);
    newlines += usize::from(last == b'\n');
    brackets += usize::from((last | 0x20) == b'}');
    let terminated = last == b'\n';
    let lines = newlines + usize::from(!terminated);
    // Every newline after a `}` and, but for a final one, before a `{`; with the first
    // byte `{` and the last line ending in `}`, each line starts with `{` and ends with
    // `}`: two brackets per line means no other.
    let want_pairs = 2 * lines - if terminated { 1 } else { 2 };
    (pairs == want_pairs && brackets == 2 * lines).then_some(lines)
}

/// The non-blank lines of `text`, trimmed, with their 0-based line numbers.
fn row_spans(text: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let (mut start, mut line) = (0, 0);
    while start < text.len() {
        let end = find_newline(text, start).unwrap_or(text.len());
        let row = trim_ascii(&text[start..end]);
        if !row.is_empty() {
            out.push((line, row));
        }
        line += 1;
        start = end + 1;
    }
    out
}

/// The first `\n` at or after `from`.
pub(super) fn find_newline(text: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', text.get(from..)?).map(|i| from + i)
}

/// `parts` (in order) as batches of at most `batch_rows` rows.
fn rechunk(
    parts: &[RecordBatch],
    batch_rows: usize,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    if parts.iter().all(|p| p.num_rows() <= batch_rows) && parts.len() <= 1 {
        return Ok(parts.to_vec());
    }
    let all = concat_batches(&ping_schema(), parts)?;
    let mut out = Vec::with_capacity(all.num_rows() / batch_rows + 1);
    let mut at = 0;
    while at < all.num_rows() {
        let len = batch_rows.min(all.num_rows() - at);
        out.push(all.slice(at, len));
        at += len;
    }
    Ok(out)
}

fn internal_rejection(row: usize, e: &dyn std::fmt::Display) -> RowRejection {
    RowRejection {
        row,
        problems: vec![RowProblem {
            field: "row".into(),
            kind: "internal".into(),
            value: String::new(),
            message: e.to_string(),
        }],
    }
}

/// Every part has the ping schema, so concatenation cannot fail; should it, every row
/// of the request is rejected as an internal error.
fn reject_all(out: &mut Decoded, e: &dyn std::fmt::Display) {
    out.request_rows.clear();
    out.rejected = (0..out.total_rows)
        .map(|row| internal_rejection(row, e))
        .collect();
}

/// Decodes a JSON array of ping objects. The array is split into its elements by a
/// small scanner (strings, escapes and nesting are respected; nothing is parsed
/// twice in the common case), then decoded like NDJSON lines: a bad element is
/// rejected on its own. A body that is not an array at all is malformed.
pub fn decode_json_array(body: &[u8], max_rows: usize) -> Result<Decoded, DecodeError> {
    let rows = split_json_array(strip_bom(body), max_rows)?;
    Ok(decode_json_rows(&rows))
}

/// The elements of a top-level JSON array, trimmed.
fn split_json_array(body: &[u8], max_rows: usize) -> Result<Vec<&[u8]>, DecodeError> {
    let malformed = |what: &str| DecodeError::Malformed(format!("not a JSON array: {what}"));
    let body = trim_ascii(body);
    let inner = match body {
        [b'[', inner @ .., b']'] => inner,
        [b'[', ..] => return Err(malformed("no closing ']'")),
        _ => return Err(malformed("the body must start with '['")),
    };
    let mut out = Vec::new();
    if trim_ascii(inner).is_empty() {
        return Ok(out);
    }
    let (mut depth, mut in_str, mut escaped, mut start) = (0usize, false, false, 0usize);
    for (i, &b) in inner.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| malformed("unbalanced brackets"))?;
            }
            b',' if depth == 0 => {
                if out.len() == max_rows {
                    return Err(DecodeError::TooManyRows { limit: max_rows });
                }
                out.push(trim_ascii(&inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_str || depth != 0 {
        return Err(malformed("an element is not closed"));
    }
    if out.len() == max_rows {
        return Err(DecodeError::TooManyRows { limit: max_rows });
    }
    out.push(trim_ascii(&inner[start..]));
    Ok(out)
}

/// Decodes JSON rows (a JSON array's elements), isolating the ones that fail.
fn decode_json_rows(rows: &[&[u8]]) -> Decoded {
    let schema = ping_schema();
    let mut out = Decoded::empty(Arc::clone(&schema));
    out.total_rows = rows.len();
    if rows.is_empty() {
        return out;
    }
    let indexed: Vec<(usize, &[u8])> = rows.iter().copied().enumerate().collect();
    let mut batches = Vec::new();
    match try_decode_json(rows.iter().copied(), rows.len()) {
        Ok(batch) => {
            batches.push(batch);
            out.request_rows.extend(0..rows.len());
        }
        Err(_) => bisect(&indexed, &mut batches, &mut out),
    }
    out.batch = match concat_batches(&schema, &batches) {
        Ok(b) => b,
        Err(e) => {
            reject_all(&mut out, &e);
            RecordBatch::new_empty(schema)
        }
    };
    out.rejected.sort_by_key(|r| r.row);
    out
}

fn bisect(rows: &[(usize, &[u8])], batches: &mut Vec<RecordBatch>, out: &mut Decoded) {
    // Below this size one decode per row is cheaper than further halving.
    const SMALL: usize = 4;
    if rows.len() <= SMALL {
        for &(idx, row) in rows {
            match try_decode_json(std::iter::once(row), 1) {
                Ok(batch) => {
                    batches.push(batch);
                    out.request_rows.push(idx);
                }
                Err(message) => out.rejected.push(json_rejection(idx, row, &message)),
            }
        }
        return;
    }
    match try_decode_json(rows.iter().map(|r| r.1), rows.len()) {
        Ok(batch) => {
            batches.push(batch);
            out.request_rows.extend(rows.iter().map(|r| r.0));
        }
        Err(_) => {
            let (a, b) = rows.split_at(rows.len() / 2);
            bisect(a, batches, out);
            bisect(b, batches, out);
        }
    }
}

/// Deepest nesting of JSON arrays and objects read. A ping is one flat object (depth
/// 1); the bound is there because arrow-json renders a value of the wrong type into
/// its error message by a recursion as deep as the value: 100k `[` in one row used to
/// overflow the stack and abort the whole server.
const MAX_JSON_DEPTH: usize = 32;

/// Nesting depth across the parts fed to one decoder, tracked the way its tokenizer
/// sees them (strings and escapes respected), so that no part is decoded past
/// [`MAX_JSON_DEPTH`].
#[derive(Default)]
struct Nesting {
    depth: usize,
    in_str: bool,
    escaped: bool,
}

impl Nesting {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        for &b in bytes {
            if self.in_str {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_JSON_DEPTH {
                        return Err(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels"));
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Decodes `parts` (JSON text, concatenated) into one batch that must hold exactly
/// `expected` rows.
fn try_decode_json<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    expected: usize,
) -> Result<RecordBatch, String> {
    let mut decoder = ReaderBuilder::new(ping_schema())
        .with_strict_mode(true)
        .with_batch_size(expected + 1)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut nesting = Nesting::default();
    for part in parts {
        nesting.feed(part)?;
        let mut rest = part;
        while !rest.is_empty() {
            let n = decoder.decode(rest).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("more than one JSON value in a row".to_string());
            }
            rest = &rest[n..];
        }
        // Separates values fed piecewise (`}{` is fine for the tokenizer, but a
        // number or literal followed by the next one would merge).
        decoder.decode(b"\n").map_err(|e| e.to_string())?;
    }
    if decoder.has_partial_record() {
        return Err("incomplete JSON value".to_string());
    }
    let batch = decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(ping_schema()));
    if batch.num_rows() != expected {
        return Err(format!(
            "expected {expected} JSON objects, found {}",
            batch.num_rows()
        ));
    }
    Ok(batch)
}

/// Renders at most 64 characters of `bytes`.
fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
    let mut out: String = s.chars().take(61).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Turns an arrow-json error into a row problem, naming the field when the error does.
fn json_rejection(row: usize, text: &[u8], message: &str) -> RowRejection {
    let message = message.strip_prefix("Json error: ").unwrap_or(message);
    // arrow-json says "whilst decoding field 'x': ..." and, in strict mode,
    // "column 'x' missing from schema" for a field the schema does not have.
    let quoted = |after: &str| -> Option<String> {
        let start = message.find(after)? + after.len();
        let end = message[start..].find('\'')? + start;
        Some(message[start..end].to_string())
    };
    let quoted_name = |after: &str| -> Option<String> {
        let start = message.find(after)? + after.len();
        let end = message[start..].find('"')? + start;
        Some(message[start..end].to_string())
    };
    let (field, kind) = if let Some(f) =
        quoted("column '").filter(|_| message.contains("missing from schema"))
    {
        (f, "unknown_field")
    } else if let Some(f) = quoted_name("Field { \"").filter(|_| message.contains("non-nullable")) {
        // "Encountered unmasked nulls in non-nullable StructArray child: Field { "x": .. }"
        (f, "missing")
    } else if let Some(f) = quoted("whilst decoding field '") {
        let kind = if message.contains("non-nullable") || message.contains("null") {
            "missing"
        } else {
            "bad_json"
        };
        (f, kind)
    } else {
        ("row".to_string(), "bad_json")
    };
    // arrow-json quotes the offending value (and names unknown fields) in full: cut
    // both so that a 10 MB value is not echoed back, once per rejected row.
    RowRejection {
        row,
        problems: vec![RowProblem {
            field: snippet(field.as_bytes()),
            kind: kind.to_string(),
            value: snippet(text),
            message: cut(message, MAX_MESSAGE_CHARS),
        }],
    }
}

/// Longest error message sent back for one row, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// At most `max` characters of `s`, marked with `...` when cut.
pub(super) fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// The ping schema with every column nullable: IPC input is decoded into it so that a
/// null in a required column is one rejected row, not a rejected request.
pub(crate) fn relaxed_ping_schema() -> SchemaRef {
    static RELAXED: LazyLock<SchemaRef> = LazyLock::new(|| {
        let fields: Vec<Field> = ping_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Arc::new(Schema::new(fields))
    });
    Arc::clone(&RELAXED)
}

thread_local! {
    /// Set while this thread runs arrow-ipc under `catch_unwind`.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Panics [`quiet_contained_panics`] has kept off stderr.
static CONTAINED_PANICS: AtomicU64 = AtomicU64::new(0);

/// Turns panics raised inside the Arrow IPC decoder, which contains them (the request
/// gets a 400), into a debug log line instead of the default report on stderr, so a
/// client sending broken streams cannot flood the log. Every other panic goes to the
/// hook installed before. Installed once per process (the binary does it at start).
pub fn quiet_contained_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) {
                CONTAINED_PANICS.fetch_add(1, Ordering::Relaxed);
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("");
                tracing::debug!(
                    location = ?info.location(),
                    "contained panic in the Arrow IPC decoder: {payload}"
                );
            } else {
                before(info);
            }
        }));
    });
}

/// Panics of the Arrow IPC decoder kept off stderr so far (see [`quiet_contained_panics`]).
pub fn contained_panics() -> u64 {
    CONTAINED_PANICS.load(Ordering::Relaxed)
}

/// Decodes an Arrow IPC stream. Columns are matched to the ping schema by name and
/// cast where the type differs (e.g. `Int64` to the millisecond timestamp, `LargeUtf8`
/// to `Utf8`); absent optional columns become null. A column the ping schema does not
/// have, a missing required column or a failed cast makes the body malformed.
pub fn decode_arrow_ipc(body: &[u8], max_rows: usize) -> Result<Decoded, DecodeError> {
    // arrow-ipc checks what it reads, but it was not written for hostile input: a panic
    // deep inside it must cost this request, not the server.
    CONTAINED.with(|c| c.set(true));
    let result = std::panic::catch_unwind(|| decode_arrow_ipc_inner(body, max_rows));
    CONTAINED.with(|c| c.set(false));
    match result {
        Ok(r) => r,
        Err(_) => Err(DecodeError::Malformed(
            "Arrow IPC stream could not be read".to_string(),
        )),
    }
}

fn decode_arrow_ipc_inner(body: &[u8], max_rows: usize) -> Result<Decoded, DecodeError> {
    let malformed = |e: arrow::error::ArrowError| DecodeError::Malformed(format!("Arrow IPC: {e}"));
    let mut decoder = StreamDecoder::new();
    let mut buf = Buffer::from(body);
    let mut batches = Vec::new();
    let mut total = 0usize;
    while !buf.is_empty() {
        match decoder.decode(&mut buf).map_err(malformed)? {
            Some(batch) => {
                total = total.saturating_add(batch.num_rows());
                if total > max_rows {
                    return Err(DecodeError::TooManyRows { limit: max_rows });
                }
                batches.push(conform(&batch)?);
            }
            None => break,
        }
    }
    decoder.finish().map_err(malformed)?;
    if decoder.schema().is_none() {
        return Err(DecodeError::Malformed(
            "Arrow IPC: the stream holds no schema message".to_string(),
        ));
    }
    let schema = relaxed_ping_schema();
    let batch = concat_batches(&schema, &batches).map_err(malformed)?;
    Ok(Decoded {
        request_rows: (0..batch.num_rows()).collect(),
        batch,
        rejected: Vec::new(),
        total_rows: total,
    })
}

/// Maps an IPC batch onto [`relaxed_ping_schema`].
fn conform(batch: &RecordBatch) -> Result<RecordBatch, DecodeError> {
    let target = relaxed_ping_schema();
    let source = batch.schema();
    if let Some(extra) = source
        .fields()
        .iter()
        .find(|f| target.index_of(f.name()).is_err())
    {
        return Err(DecodeError::Malformed(format!(
            "Arrow IPC: column {:?} is not a ping field",
            cut(extra.name(), 64)
        )));
    }
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let strict = ping_schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for (field, strict_field) in target.fields().iter().zip(strict.fields()) {
        let column = match source.index_of(field.name()) {
            Ok(i) => {
                let c = batch.column(i);
                if c.data_type() == field.data_type() {
                    Arc::clone(c)
                } else {
                    cast_with_options(c, field.data_type(), &options).map_err(|e| {
                        DecodeError::Malformed(format!(
                            "Arrow IPC: column {:?} of type {} cannot be read as {}: {e}",
                            field.name(),
                            c.data_type(),
                            field.data_type()
                        ))
                    })?
                }
            }
            Err(_) if strict_field.is_nullable() => {
                new_null_array(field.data_type(), batch.num_rows())
            }
            Err(_) => {
                return Err(DecodeError::Malformed(format!(
                    "Arrow IPC: required column {:?} is missing",
                    field.name()
                )));
            }
        };
        columns.push(column);
    }
    RecordBatch::try_new(target, columns)
        .map_err(|e| DecodeError::Malformed(format!("Arrow IPC: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    const GOOD: &str = r#"{"device_id":"490154203237518","event_time":1780000000000,"event_kind":"heartbeat","lat":1.5,"lon":2.5}"#;

    fn ids(d: &Decoded) -> Vec<usize> {
        d.rejected.iter().map(|r| r.row).collect()
    }

    #[test]
    fn ndjson_bad_lines_are_isolated() {
        let mut body = String::new();
        for i in 0..37 {
            match i {
                3 => body.push_str("{not json\n"),
                10 => body.push_str(r#"{"device_id":"490154203237518","event_time":1,"event_kind":"boot","battery_pct":300}"#),
                11 => body.push_str(r#"{"device_id":"490154203237518","event_time":1,"event_kind":"boot","color":"red"}"#),
                20 => body.push_str(r#"{"event_time":1,"event_kind":"boot"}"#),
                _ => body.push_str(GOOD),
            }
            body.push_str("\r\n\n");
        }
        let d = decode_ndjson(body.as_bytes(), 1000).unwrap();
        same_with_arrow_json(body.as_bytes(), 1000, &d);
        assert_eq!(d.total_rows, 37);
        assert_eq!(ids(&d), vec![3, 10, 11, 20]);
        assert_eq!(d.batch.num_rows(), 33);
        assert_eq!(d.request_rows.len(), 33);
        assert!(!d.request_rows.contains(&3));
        assert_eq!(d.rejected[1].problems[0].field, "battery_pct");
        assert_eq!(d.rejected[2].problems[0].field, "color");
        assert_eq!(d.rejected[2].problems[0].kind, "unknown_field");
        assert_eq!(
            d.rejected[3].problems[0].field, "device_id",
            "{:?}",
            d.rejected[3]
        );
    }

    #[test]
    fn two_objects_on_one_line_are_rejected() {
        let body = format!("{GOOD}\n{GOOD} {GOOD}\n{GOOD}\n");
        let d = decode_ndjson(body.as_bytes(), 10).unwrap();
        same_with_arrow_json(body.as_bytes(), 10, &d);
        assert_eq!(ids(&d), vec![1]);
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.request_rows, vec![0, 2]);
    }

    /// `d` (the default decoder's) is what arrow-json alone makes of `body`.
    fn same_with_arrow_json(body: &[u8], max_rows: usize, d: &Decoded) {
        let a = decode_ndjson_with(body, max_rows, JsonDecoder::ArrowJson).unwrap();
        assert_eq!(a.batch, d.batch);
        assert_eq!(a.request_rows, d.request_rows);
        assert_eq!(a.rejected, d.rejected);
        assert_eq!(a.total_rows, d.total_rows);
    }

    /// The one place the two decoders differ: two lines holding an object and a half
    /// each. NDJSON has one value per line, so the default rejects both lines;
    /// arrow-json alone reads a stream of values, finds as many as lines, and takes
    /// them for two rows.
    #[test]
    fn an_object_spread_over_lines_is_rejected_line_by_line() {
        let (head, tail) = GOOD.split_at(GOOD.find(",\"lat\"").unwrap() + 1);
        let body = format!("{GOOD}\n{GOOD}{head}\n{tail}\n{GOOD}\n");
        let d = decode_ndjson(body.as_bytes(), 10).unwrap();
        assert_eq!((d.total_rows, ids(&d)), (4, vec![1, 2]));
        assert_eq!(d.request_rows, vec![0, 3]);
        let a = decode_ndjson_with(body.as_bytes(), 10, JsonDecoder::ArrowJson).unwrap();
        assert_eq!((a.total_rows, ids(&a)), (4, vec![]));
        assert_eq!(a.batch.num_rows(), 4);
    }

    #[test]
    fn json_array_splits_with_strings_and_nesting() {
        let tricky = r#"{"device_id":"490154203237518","event_time":1780000000000,"event_kind":"boot","mnc":"0,]}\"["}"#;
        let body = format!("\u{feff} [ {GOOD}, {tricky} ,5, [1,2], {GOOD} ] ");
        let d = decode_json_array(body.as_bytes(), 10).unwrap();
        assert_eq!(d.total_rows, 5);
        assert_eq!(ids(&d), vec![2, 3]);
        let mnc = d
            .batch
            .column(10)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(mnc.value(1), "0,]}\"[");
        assert_eq!(decode_json_array(b"[]", 10).unwrap().total_rows, 0);
        assert_eq!(decode_json_array(b" [ ] ", 10).unwrap().total_rows, 0);
    }

    #[test]
    fn deep_nesting_is_a_row_problem_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let field = GOOD.replace("\"heartbeat\"", &deep);
        let shallow = GOOD.replace("\"heartbeat\"", "[[1]]");
        let body = format!("[{GOOD},{deep},{field},{shallow}]");
        let d = decode_json_array(body.as_bytes(), 10).unwrap();
        assert_eq!(ids(&d), vec![1, 2, 3]);
        for r in &d.rejected[..2] {
            assert!(r.problems[0].message.contains("nested deeper"), "{r:?}");
        }
        // Within the bound, arrow-json's own message, cut to a readable length.
        assert!(
            d.rejected[2].problems[0]
                .message
                .contains("expected string")
        );
        let long = GOOD.replace("\"heartbeat\"", &format!("[{}]", "1,".repeat(10_000) + "1"));
        let d = decode_json_array(format!("[{long}]").as_bytes(), 10).unwrap();
        assert!(d.rejected[0].problems[0].message.chars().count() <= MAX_MESSAGE_CHARS + 3);
    }

    #[test]
    fn malformed_arrays_and_limits() {
        for body in ["", "{}", "[", "[{]", "[\"abc]", "[{}]]", "x[]"] {
            assert!(
                matches!(
                    decode_json_array(body.as_bytes(), 10),
                    Err(DecodeError::Malformed(_))
                ),
                "{body:?}"
            );
        }
        let body = format!("[{GOOD},{GOOD},{GOOD}]");
        assert_eq!(
            decode_json_array(body.as_bytes(), 2).unwrap_err(),
            DecodeError::TooManyRows { limit: 2 }
        );
        assert_eq!(
            decode_json_array(body.as_bytes(), 3)
                .unwrap()
                .batch
                .num_rows(),
            3
        );
        let body = format!("{GOOD}\n{GOOD}\n{GOOD}\n");
        assert_eq!(
            decode_ndjson(body.as_bytes(), 2).unwrap_err(),
            DecodeError::TooManyRows { limit: 2 }
        );
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip_limited(&gz, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            gunzip_limited(&gz, (1 << 20) - 1).unwrap_err(),
            DecodeError::TooLarge {
                limit: (1 << 20) - 1
            }
        );
        assert!(matches!(
            gunzip_limited(b"not gzip", 100),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// arrow-ipc panics on some broken streams (a few random byte changes to a valid one
    /// find such a stream at once): the request gets a 400 and, with the quiet hook, the
    /// panic is counted and logged at debug level instead of printed on stderr.
    #[test]
    fn contained_arrow_ipc_panics_stay_off_stderr() {
        quiet_contained_panics();
        let before = contained_panics();
        let text = br#"{"device_id":"354809105463218","event_time":1780000000123,"lat":1.5,"event_kind":"heartbeat"}"#;
        let batch = decode_ndjson(text, 10).unwrap().batch;
        let mut body = Vec::new();
        {
            let mut w =
                arrow_ipc::writer::StreamWriter::try_new(&mut body, &batch.schema()).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let mut rng = 12_345_u64;
        let mut panicked = 0;
        for n in 0..2_000u64 {
            let mut b = body.clone();
            for _ in 0..1 + n % 3 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % b.len() as u64) as usize;
                b[i] = (rng >> 32) as u8;
            }
            if let Err(DecodeError::Malformed(m)) = decode_arrow_ipc(&b, 1000)
                && m == "Arrow IPC stream could not be read"
            {
                panicked += 1;
            }
        }
        assert!(
            panicked > 0,
            "no broken stream made arrow-ipc panic: this test needs another"
        );
        assert!(contained_panics() >= before + panicked);
    }

    #[test]
    fn arrow_ipc_garbage_is_malformed_not_a_panic() {
        for body in [
            &b""[..],
            b"\xff\xff\xff\xff",
            b"\xff\xff\xff\xff\x10\x00\x00\x00abc",
            &[0u8; 64],
        ] {
            assert!(matches!(
                decode_arrow_ipc(body, 10),
                Err(DecodeError::Malformed(_))
            ));
        }
    }
}
