//! Engine checkpoints: the event-time clock, counters and window state as bytes.
//!
//! Layout: `LWCK` magic, a little-endian `u32` format version, a `u32` header length, the
//! header (JSON: fingerprint of the SQL, clock, counters, per-query state layout), then per
//! windowed query an Arrow IPC stream of its state batches (its end-of-stream marker ends
//! it; version 1, still restored, put a `u64` length before each stream). The WAL's
//! checkpoint store keeps these bytes with the WAL position they cover.
//!
//! Taking a checkpoint is two steps: [`Engine::snapshot`] on the engine's thread, cheap
//! (state batches are immutable and shared, not copied), then [`Snapshot::write`]
//! anywhere, streaming the encoded state to its destination while the engine goes on.

use super::plan::{QueryKind, WindowState};
use super::window::{HopState, Part, SessionState};
use super::{Engine, EngineError, EngineStats};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"LWCK";
const VERSION: u32 = 2;
/// The version whose state streams are each preceded by their length.
const VERSION_LENGTH_PREFIXED: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    fingerprint: u64,
    /// The queries the engine ran (absent: every one, as before lanes).
    #[serde(default)]
    lane: super::Lane,
    max_ts: i64,
    flushed: bool,
    stats: EngineStats,
    queries: Vec<QueryState>,
    /// Where each file sink's output ended (by sink name), to rewind on restore.
    #[serde(default)]
    sinks: std::collections::BTreeMap<String, crate::sink::SinkPosition>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum QueryState {
    PerBatch,
    Hop {
        next_start: Option<i64>,
        /// (bucket start, number of batches), in order.
        buckets: Vec<(i64, usize)>,
        /// Compaction level of each batch, in the same order (absent: all 0).
        #[serde(default)]
        levels: Vec<u8>,
        /// `[floor, ceil]` of each batch ([`Part::floor`]), in the same order (absent:
        /// all time, which settles nothing beside the part until it is compacted).
        #[serde(default)]
        times: Vec<(i64, i64)>,
    },
    Session {
        next_close: i64,
    },
}

fn bad(m: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint(m.to_string())
}

/// Writes `batches` as one Arrow IPC stream.
fn write_ipc(
    w: &mut dyn std::io::Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), EngineError> {
    let mut w = StreamWriter::try_new(w, schema).map_err(encode_error)?;
    for b in batches {
        w.write(b).map_err(encode_error)?;
    }
    w.finish().map_err(encode_error)
}

fn encode_error(e: arrow::error::ArrowError) -> EngineError {
    match e {
        arrow::error::ArrowError::IoError(m, _) => EngineError::Checkpoint(m),
        e => EngineError::Internal(e.to_string()),
    }
}

#[cfg(test)]
fn ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, EngineError> {
    let mut buf = Vec::new();
    write_ipc(&mut buf, schema, batches)?;
    Ok(buf)
}

/// The engine's state at one moment, to be written out by [`Snapshot::write`].
#[derive(Debug)]
pub struct Snapshot {
    /// The JSON header.
    header: Vec<u8>,
    /// Per windowed query, the state batches and their schema.
    state: Vec<(SchemaRef, Vec<RecordBatch>)>,
}

impl Snapshot {
    /// Writes the checkpoint bytes to `w`, encoding the state as it goes.
    pub fn write(&self, w: &mut dyn std::io::Write) -> Result<(), EngineError> {
        let io = |e: std::io::Error| EngineError::Checkpoint(e.to_string());
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        let len = u32::try_from(self.header.len()).map_err(bad)?;
        w.write_all(&len.to_le_bytes()).map_err(io)?;
        w.write_all(&self.header).map_err(io)?;
        for (schema, batches) in &self.state {
            write_ipc(w, schema, batches)?;
        }
        Ok(())
    }
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], EngineError> {
    if bytes.len() < n {
        return Err(bad("truncated"));
    }
    let (a, b) = bytes.split_at(n);
    *bytes = b;
    Ok(a)
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, EngineError> {
    let b = take(bytes, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, EngineError> {
    let b = take(bytes, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

impl Engine {
    /// The engine's state as checkpoint bytes: [`Engine::snapshot`] written to memory.
    pub fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::new();
        self.snapshot()?.write(&mut out)?;
        Ok(out)
    }

    /// Snapshot of the engine's state (clock, counters, window state, and where each file
    /// sink's output ends: call [`Engine::commit`] first). Cheap: the state batches are
    /// shared, not copied; the engine may go on while the snapshot is written.
    pub fn snapshot(&self) -> Result<Snapshot, EngineError> {
        let mut queries = Vec::new();
        let mut state = Vec::new();
        for q in &self.queries {
            match &q.kind {
                QueryKind::PerBatch(_) => queries.push(QueryState::PerBatch),
                QueryKind::Windowed(w) => match &w.state {
                    WindowState::Hop(h) => {
                        let parts = || h.buckets.values().flatten();
                        queries.push(QueryState::Hop {
                            next_start: h.next_start,
                            buckets: h.buckets.iter().map(|(k, v)| (*k, v.len())).collect(),
                            levels: parts().map(|p| p.level).collect(),
                            times: parts().map(|p| (p.floor, p.ceil)).collect(),
                        });
                        let all: Vec<RecordBatch> = parts().map(|p| p.batch.clone()).collect();
                        state.push((w.partial_schema.clone(), all));
                    }
                    WindowState::Session(s) => {
                        queries.push(QueryState::Session {
                            next_close: s.next_close,
                        });
                        state.push((w.agg_in_schema.clone(), s.rows.clone()));
                    }
                },
            }
        }
        let header = Header {
            fingerprint: self.fingerprint,
            lane: self.lane,
            max_ts: self.clock.max_ts,
            flushed: self.clock.flushed,
            stats: self.stats.clone(),
            queries,
            sinks: self
                .sink_names
                .iter()
                .zip(&self.sinks)
                .filter_map(|(n, s)| s.position().map(|p| (n.clone(), p)))
                .collect(),
        };
        let header =
            serde_json::to_vec(&header).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(Snapshot { header, state })
    }

    /// Restores a [`Engine::checkpoint`] taken by an engine built from the same SQL.
    /// State is replaced only when the whole checkpoint is valid.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let mut rest = bytes;
        if take(&mut rest, 4)? != MAGIC {
            return Err(bad("not a LeaseWatch engine checkpoint"));
        }
        let v = take_u32(&mut rest)?;
        if v != VERSION && v != VERSION_LENGTH_PREFIXED {
            return Err(bad(format!("format version {v}, expected {VERSION}")));
        }
        let n = take_u32(&mut rest)? as usize;
        let header: Header = serde_json::from_slice(take(&mut rest, n)?).map_err(bad)?;
        if header.lane != self.lane {
            return Err(bad(format!(
                "taken by the {} lane, not the {} lane: its state belongs to other queries (engine.split_lanes differs from the run that took it)",
                header.lane.as_str(),
                self.lane.as_str()
            )));
        }
        if header.fingerprint != self.fingerprint {
            return Err(bad(
                "taken with different SQL files: state cannot be restored",
            ));
        }
        if header.queries.len() != self.queries.len() {
            return Err(bad("query count differs"));
        }
        let mut states = Vec::new();
        for (qs, q) in header.queries.iter().zip(&self.queries) {
            let state = match (qs, &q.kind) {
                (QueryState::PerBatch, QueryKind::PerBatch(_)) => None,
                (
                    QueryState::Hop {
                        next_start,
                        buckets,
                        levels,
                        times,
                    },
                    QueryKind::Windowed(w),
                ) => {
                    let mut batches = with_stream(v, &mut rest, |r| {
                        read_hop_ipc(r, &w.partial_schema, w.window_index)
                    })?
                    .into_iter();
                    let mut h = HopState {
                        buckets: Default::default(),
                        next_start: *next_start,
                    };
                    let mut levels = levels.iter().copied();
                    let mut times = times.iter().copied();
                    for (k, count) in buckets {
                        let v: Vec<Part> = batches
                            .by_ref()
                            .take(*count)
                            .map(|batch| {
                                let (floor, ceil) = times.next().unwrap_or((i64::MIN, i64::MAX));
                                Part {
                                    batch,
                                    level: levels.next().unwrap_or(0),
                                    floor,
                                    ceil,
                                    busy: false,
                                }
                            })
                            .collect();
                        if v.len() != *count {
                            return Err(bad("window state is shorter than its layout"));
                        }
                        h.buckets.insert(*k, v);
                    }
                    Some(WindowState::Hop(h))
                }
                (QueryState::Session { next_close }, QueryKind::Windowed(w)) => {
                    let rows = with_stream(v, &mut rest, |r| read_ipc(r, &w.agg_in_schema))?;
                    Some(WindowState::Session(SessionState {
                        rows,
                        next_close: *next_close,
                    }))
                }
                _ => return Err(bad("query kinds differ")),
            };
            states.push(state);
        }
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} bytes after the last query's state",
                rest.len()
            )));
        }
        // Output written after the checkpoint is dropped: replaying the WAL from here
        // writes it again, so file sinks end up exactly as without the crash.
        for (name, sink) in self.sink_names.iter().zip(self.sinks.iter_mut()) {
            if let Some(p) = header.sinks.get(name) {
                sink.rewind(p)?;
            }
        }
        for (q, s) in self.queries.iter_mut().zip(states) {
            if let (QueryKind::Windowed(w), Some(s)) = (&mut q.kind, s) {
                w.state = s;
            }
        }
        self.clock.max_ts = header.max_ts;
        self.clock.flushed = header.flushed;
        let mut stats = header.stats;
        for n in &self.sink_names {
            stats.rows_out.entry(n.clone()).or_insert(0);
        }
        self.stats = stats;
        Ok(())
    }
}

/// Reads the next query's state stream from `rest` with `read`: in version 1 a
/// length-prefixed slice; now the stream itself, read up to its end-of-stream marker.
fn with_stream<T>(
    version: u32,
    rest: &mut &[u8],
    read: impl FnOnce(&mut &[u8]) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    if version == VERSION_LENGTH_PREFIXED {
        let len = take_u64(rest)? as usize;
        let mut stream = take(rest, len)?;
        read(&mut stream)
    } else {
        read(rest)
    }
}

/// An IPC stream reader advancing `bytes` exactly to the end of the stream it reads.
type IpcReader<'a, 'b> = StreamReader<&'b mut &'a [u8]>;

fn open_ipc<'a, 'b>(bytes: &'b mut &'a [u8]) -> Result<IpcReader<'a, 'b>, EngineError> {
    StreamReader::try_new(bytes, None).map_err(bad)
}

fn read_ipc(bytes: &mut &[u8], schema: &SchemaRef) -> Result<Vec<RecordBatch>, EngineError> {
    read_all(open_ipc(bytes)?, schema)
}

/// Every batch of `reader`, whose schema must be `schema`'s.
fn read_all(
    reader: IpcReader<'_, '_>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, EngineError> {
    if reader.schema().fields() != schema.fields() {
        return Err(bad("window state schema differs from this pipeline's"));
    }
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    rebind(batches, schema)
}

/// Hop state: as [`read_ipc`], also from checkpoints taken before hop windows were
/// keyed by their start (`window::key_type`), whose key column (`window_index`) is the
/// `window` struct: its start is the key.
fn read_hop_ipc(
    bytes: &mut &[u8],
    schema: &SchemaRef,
    window_index: usize,
) -> Result<Vec<RecordBatch>, EngineError> {
    let reader = open_ipc(bytes)?;
    let stored = reader.schema();
    let same = |i: usize| stored.fields().get(i) == schema.fields().get(i);
    let struct_key = stored.fields().len() == schema.fields().len()
        && (0..schema.fields().len()).all(|i| i == window_index || same(i))
        && stored
            .fields()
            .get(window_index)
            .is_some_and(|f| *f.data_type() == super::window::window_type());
    if !struct_key {
        return read_all(reader, schema);
    }
    let mut batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    for b in &mut batches {
        let start = b
            .column(window_index)
            .as_any()
            .downcast_ref::<arrow::array::StructArray>()
            .map(|s| s.column(0).clone())
            .ok_or_else(|| bad("window state: the window column is not a struct"))?;
        let mut cols = b.columns().to_vec();
        cols[window_index] = start;
        *b = RecordBatch::try_new(schema.clone(), cols).map_err(bad)?;
    }
    Ok(batches)
}

/// The batches rebound to the exact schema object the plans expect.
fn rebind(batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>, EngineError> {
    batches
        .into_iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(bad))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::window::{hop_key, window_array, window_type};
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// State streams follow one another: read up to each one's end-of-stream marker,
    /// or, in version 1, each within the length before it.
    #[test]
    fn state_streams_are_read_one_after_another_in_both_versions() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        let first = vec![batch(vec![1, 2]), batch(vec![3])];
        let second: Vec<RecordBatch> = Vec::new();
        let third = vec![batch(vec![4])];
        let streams = [&first, &second, &third];
        let (mut current, mut v1) = (Vec::new(), Vec::new());
        for batches in streams {
            let bytes = ipc(&schema, batches).unwrap();
            current.extend_from_slice(&bytes);
            v1.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            v1.extend_from_slice(&bytes);
        }
        for (version, bytes) in [(VERSION, current), (VERSION_LENGTH_PREFIXED, v1)] {
            let mut rest = bytes.as_slice();
            for batches in streams {
                let got = with_stream(version, &mut rest, |r| read_ipc(r, &schema)).unwrap();
                assert_eq!(&got, batches, "version {version}");
            }
            assert!(
                rest.is_empty(),
                "version {version}: {} bytes left",
                rest.len()
            );
            // Cut short: an error, not fewer batches.
            let mut cut = &bytes[..bytes.len() - 1];
            let all = (0..3).try_for_each(|_| {
                with_stream(version, &mut cut, |r| read_ipc(r, &schema)).map(|_| ())
            });
            assert!(all.is_err(), "version {version}");
        }
    }

    /// Hop state saved when its key was the `window` struct restores keyed by start.
    #[test]
    fn hop_state_with_a_struct_key_restores_keyed_by_its_start() {
        let count = Field::new("count", DataType::Int64, true);
        let old = Arc::new(Schema::new(vec![
            Field::new("w", window_type(), false),
            count.clone(),
        ]));
        let new = Arc::new(Schema::new(vec![
            Field::new("w", leasewatch_schemas::timestamp_type(), false),
            count,
        ]));
        let counts = Arc::new(Int64Array::from(vec![3, 4]));
        let saved = RecordBatch::try_new(
            old.clone(),
            vec![
                window_array(vec![0, 60_000], vec![60_000, 120_000]),
                counts.clone(),
            ],
        )
        .unwrap();
        let bytes = ipc(&old, &[saved]).unwrap();
        let got = read_hop_ipc(&mut bytes.as_slice(), &new, 0).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].schema(), new);
        let starts = got[0]
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(starts.values().to_vec(), vec![0, 60_000]);
        assert_eq!(
            got[0].column(1).as_ref(),
            counts.as_ref() as &dyn arrow::array::Array
        );
        // State of the current layout reads as it is; another layout is refused.
        let current = RecordBatch::try_new(new.clone(), vec![hop_key(0, 2), counts]).unwrap();
        let bytes = ipc(&new, std::slice::from_ref(&current)).unwrap();
        assert_eq!(
            read_hop_ipc(&mut bytes.as_slice(), &new, 0).unwrap(),
            vec![current]
        );
        let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        assert!(read_hop_ipc(&mut bytes.as_slice(), &other, 0).is_err());
    }
}
