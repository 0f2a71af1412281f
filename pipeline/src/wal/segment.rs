//! The on-disk format of a WAL segment and the code that reads and checks it.
//!
//! A segment `segment-{first_lsn:020}.arrows` is:
//!
//! ```text
//! header  "LWWAL001" | schema_len: u32 | crc32(schema): u32 | schema (Arrow IPC schema message)
//! record  "LWR1"     | payload_len: u32 | lsn: u64 | crc32(lsn, payload_len, payload): u32
//!         | payload (one Arrow IPC record batch message, the schema taken from the header)
//! ```
//!
//! All integers are little endian. A record is valid only when it is complete, its
//! magic and checksum match and its lsn is the one expected next; recovery cuts the
//! last segment at the first record that is not (a torn tail), so a half-written
//! record is never read.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Schema};
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{Lsn, WalError};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"LWWAL001";
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"LWR1";
pub(crate) const SEGMENT_HEADER_FIXED: u64 = 16;
pub(crate) const RECORD_HEADER: u64 = 20;
const PREFIX: &str = "segment-";
const SUFFIX: &str = ".arrows";

/// File name of the segment whose first entry is `first_lsn`.
pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{PREFIX}{first_lsn:020}{SUFFIX}")
}

/// The first lsn of a segment file name, or None for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, sorted by first lsn.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        let name = entry.file_name();
        if let Some(lsn) = name.to_str().and_then(parse_segment_name) {
            out.push((lsn, entry.path()));
        }
    }
    out.sort_by_key(|(lsn, _)| *lsn);
    Ok(out)
}

/// Rejects schemas the WAL cannot store record by record: dictionary columns need
/// state carried across IPC messages, which would tie a record to its predecessors.
pub(crate) fn check_schema(schema: &Schema) -> Result<(), WalError> {
    fn has_dictionary(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(..) => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::Map(f, _) => has_dictionary(f.data_type()),
            DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
            DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
            DataType::RunEndEncoded(_, v) => has_dictionary(v.data_type()),
            _ => false,
        }
    }
    match schema
        .fields()
        .iter()
        .find(|f| has_dictionary(f.data_type()))
    {
        Some(f) => Err(WalError::SchemaMismatch(format!(
            "column {:?} is dictionary-encoded, which the WAL does not store",
            f.name()
        ))),
        None => Ok(()),
    }
}

/// The Arrow IPC schema message of `schema`.
pub(crate) fn encode_schema(schema: &Schema) -> Result<Vec<u8>, WalError> {
    let writer = StreamWriter::try_new(Vec::new(), schema)?;
    Ok(writer.get_ref().clone())
}

/// One record batch as an Arrow IPC message (without the schema message).
pub(crate) fn encode_batch(schema: &Schema, batch: &RecordBatch) -> Result<Vec<u8>, WalError> {
    let mut writer = StreamWriter::try_new(Vec::with_capacity(1024), schema)?;
    writer.get_mut().clear();
    writer.write(batch)?;
    Ok(std::mem::take(writer.get_mut()))
}

/// The header of a new segment for the encoded `schema`.
pub(crate) fn segment_header(schema_bytes: &[u8]) -> Result<Vec<u8>, WalError> {
    let len = u32::try_from(schema_bytes.len())
        .map_err(|_| WalError::SchemaMismatch("schema message over 4 GiB".to_string()))?;
    let mut out = Vec::with_capacity(16 + schema_bytes.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(schema_bytes).to_le_bytes());
    out.extend_from_slice(schema_bytes);
    Ok(out)
}

fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the framed record for `payload` to `out`.
pub(crate) fn frame_record(lsn: Lsn, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WalError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| WalError::SchemaMismatch("a single batch over 4 GiB".to_string()))?;
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&record_crc(lsn, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Bytes a record with a payload of `payload_len` takes on disk.
pub(crate) fn framed_len(payload_len: usize) -> u64 {
    RECORD_HEADER + payload_len as u64
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum Bad {
    /// The file ends inside the record (or exactly at its start: `Eof`).
    Eof,
    /// The record is incomplete.
    Short,
    /// A check failed.
    Invalid(String),
}

/// Reads one segment front to back.
pub(crate) struct SegmentFile {
    path: PathBuf,
    reader: BufReader<File>,
    len: u64,
    offset: u64,
    schema_bytes: Vec<u8>,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

/// The result of reading a segment header.
pub(crate) enum Header {
    Ok(SegmentFile),
    /// The header itself is torn or invalid (only possible for a segment whose
    /// creation crashed before its header was fsynced, hence with no records).
    Bad(String),
}

impl SegmentFile {
    /// Opens `path` and checks its header.
    pub(crate) fn open(path: &Path) -> Result<Header, WalError> {
        let file = File::open(path).map_err(|e| WalError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| WalError::io("stat", path, e))?
            .len();
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut fixed = [0u8; 16];
        if len < SEGMENT_HEADER_FIXED {
            return Ok(Header::Bad(format!("file of {len} bytes has no header")));
        }
        reader
            .read_exact(&mut fixed)
            .map_err(|e| WalError::io("read", path, e))?;
        if &fixed[..8] != SEGMENT_MAGIC {
            return Ok(Header::Bad("bad segment magic".to_string()));
        }
        let schema_len = u64::from(u32_at(&fixed, 8));
        let crc = u32_at(&fixed, 12);
        if SEGMENT_HEADER_FIXED + schema_len > len {
            return Ok(Header::Bad("schema message cut short".to_string()));
        }
        let mut schema_bytes = vec![0u8; schema_len as usize];
        reader
            .read_exact(&mut schema_bytes)
            .map_err(|e| WalError::io("read", path, e))?;
        if crc32fast::hash(&schema_bytes) != crc {
            return Ok(Header::Bad("schema checksum mismatch".to_string()));
        }
        Ok(Header::Ok(Self {
            path: path.to_path_buf(),
            reader,
            len,
            offset: SEGMENT_HEADER_FIXED + schema_len,
            schema_bytes,
        }))
    }

    /// Opens `path`, turning a bad header into [`WalError::Corrupt`].
    pub(crate) fn open_checked(path: &Path) -> Result<Self, WalError> {
        match Self::open(path)? {
            Header::Ok(s) => Ok(s),
            Header::Bad(reason) => Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason,
            }),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset of the next record.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn schema_bytes(&self) -> &[u8] {
        &self.schema_bytes
    }

    /// Reads the next record; `Ok(Err(Bad::Eof))` at a clean end of file. The payload
    /// is read and checked only when `want(lsn)`; otherwise it is skipped and `None`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn next_record(
        &mut self,
        want: &dyn Fn(Lsn) -> bool,
    ) -> Result<Result<(Lsn, Option<Vec<u8>>), Bad>, WalError> {
        let remaining = self.len.saturating_sub(self.offset);
        if remaining == 0 {
            return Ok(Err(Bad::Eof));
        }
        if remaining < RECORD_HEADER {
            return Ok(Err(Bad::Short));
        }
        let mut head = [0u8; RECORD_HEADER as usize];
        self.reader
            .read_exact(&mut head)
            .map_err(|e| WalError::io("read", &self.path, e))?;
        if &head[..4] != RECORD_MAGIC {
            return Ok(Err(Bad::Invalid("bad record magic".to_string())));
        }
        let payload_len = u64::from(u32_at(&head, 4));
        let lsn = u64_at(&head, 8);
        let crc = u32_at(&head, 16);
        if RECORD_HEADER + payload_len > remaining {
            return Ok(Err(Bad::Short));
        }
        let payload = if want(lsn) {
            let mut payload = vec![0u8; payload_len as usize];
            self.reader
                .read_exact(&mut payload)
                .map_err(|e| WalError::io("read", &self.path, e))?;
            if record_crc(lsn, &payload) != crc {
                return Ok(Err(Bad::Invalid("record checksum mismatch".to_string())));
            }
            Some(payload)
        } else {
            // Only readers skip, and only over records recovery has checked.
            self.reader
                .seek_relative(payload_len as i64)
                .map_err(|e| WalError::io("seek", &self.path, e))?;
            None
        };
        self.offset += RECORD_HEADER + payload_len;
        Ok(Ok((lsn, payload)))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Decodes record payloads of one segment into batches.
pub(crate) struct BatchDecoder {
    decoder: StreamDecoder,
}

impl std::fmt::Debug for BatchDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchDecoder").finish_non_exhaustive()
    }
}

impl BatchDecoder {
    /// A decoder primed with a segment's schema message.
    pub(crate) fn new(schema_bytes: &[u8]) -> Result<Self, WalError> {
        let mut decoder = StreamDecoder::new();
        let mut buf = Buffer::from_vec(schema_bytes.to_vec());
        if decoder.decode(&mut buf)?.is_some() || !buf.is_empty() {
            return Err(WalError::Arrow(
                "segment header holds more than a schema message".to_string(),
            ));
        }
        // A message with an empty body is only completed by the next bytes fed in (a
        // quirk of `StreamDecoder`), so the schema is checked by the first decode.
        Ok(Self { decoder })
    }

    /// Decodes one record payload.
    pub(crate) fn decode(&mut self, payload: Vec<u8>) -> Result<RecordBatch, WalError> {
        let mut buf = Buffer::from_vec(payload);
        match self.decoder.decode(&mut buf)? {
            Some(batch) if buf.is_empty() => Ok(batch),
            Some(_) => Err(WalError::Arrow(
                "record holds more than one message".to_string(),
            )),
            None => Err(WalError::Arrow("record holds no record batch".to_string())),
        }
    }
}

/// fsyncs a directory so that created, renamed or deleted entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync dir", dir, e))
}

/// Maps "not found" while reading a segment to a truncation, anything else unchanged.
pub(crate) fn not_found_is_truncated(e: WalError, requested: Lsn, oldest: Lsn) -> WalError {
    match &e {
        WalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            WalError::Truncated { requested, oldest }
        }
        _ => e,
    }
}
