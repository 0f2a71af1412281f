//! Output files: pings (NDJSON written by hand, or Parquet), lease and credit state,
//! risky places (GeoJSON), ground truth and tricky episodes (CSV), the manifest.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt16Builder, UInt64Builder,
};
use leasewatch_schemas::{ping_schema, timestamp_type};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::GenError;
use super::device::{EVENT_KINDS, NETWORK_TYPES, Ping, Profile, Span, flag};
use super::geo::Operator;
use super::places::Place;

/// Creates `dir/name` for writing, buffered.
pub fn create(dir: &Path, name: &str) -> Result<(BufWriter<File>, PathBuf), GenError> {
    let path = dir.join(name);
    let f = File::create(&path).map_err(|e| GenError::io(&path, e))?;
    Ok((BufWriter::with_capacity(1 << 20, f), path))
}

/// The strings of a device that every ping repeats, formatted once.
///
/// The pieces a ping's JSON line copies sit in one buffer, so writing a ping of a
/// random device of a large fleet (a gateway batch) reads one struct and one short run
/// of memory, not an allocation per piece: at 300,000 pings/s over 100,000 devices,
/// the cache misses of the scattered pieces were most of the load driver's CPU.
#[derive(Debug)]
pub struct DeviceText {
    /// Back to back: `{"device_id":"...","event_time":`, then `,"mcc":262,"mnc":"01"`
    /// for the home operator and for the roaming network, then
    /// `,"iccid":"...","imsi":"..."` per SIM.
    text: Box<[u8]>,
    /// Where each piece of `text` ends, in that order.
    ends: Box<[u32]>,
    device_id: String,
    sim_ids: Vec<(String, String)>,
    net_ids: [(u16, &'static str); 2],
}

/// Pieces of [`DeviceText::text`] before the SIMs: the prefix and the two networks.
const FIXED_PIECES: usize = 3;

impl DeviceText {
    pub fn new(prof: &Profile, roaming: Option<Operator>) -> Self {
        let home = prof.home_operator();
        let roam = roaming.unwrap_or(home);
        let mut pieces = vec![
            format!("{{\"device_id\":\"{}\",\"event_time\":", prof.imei),
            format!(",\"mcc\":{},\"mnc\":\"{}\"", home.mcc, home.mnc),
            format!(",\"mcc\":{},\"mnc\":\"{}\"", roam.mcc, roam.mnc),
        ];
        pieces.extend(
            prof.sims
                .iter()
                .map(|s| format!(",\"iccid\":\"{}\",\"imsi\":\"{}\"", s.iccid, s.imsi)),
        );
        let mut text = Vec::with_capacity(pieces.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            text.extend_from_slice(piece.as_bytes());
            // A device's text is a few hundred bytes.
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        Self {
            text: text.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            device_id: prof.imei.clone(),
            sim_ids: prof
                .sims
                .iter()
                .map(|s| (s.iccid.clone(), s.imsi.clone()))
                .collect(),
            net_ids: [(home.mcc, home.mnc), (roam.mcc, roam.mnc)],
        }
    }

    /// Reads every cache line of the text (a byte every 64, and the last) and its piece
    /// ends, and returns a byte of them (see [`warm`]).
    #[inline]
    fn touch(&self) -> u8 {
        let ends = self.ends.first().map_or(0, |&e| e as u8);
        let last = self.text.last().copied().unwrap_or(0);
        self.text
            .iter()
            .step_by(64)
            .fold(ends ^ last, |a, &b| a ^ b)
    }

    /// Piece `i` of [`Self::text`] (empty past the last).
    #[inline]
    fn piece(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or(0),
            None => 0,
        } as usize;
        let end = self.ends.get(i).map_or(start, |&e| e as usize);
        self.text.get(start..end).unwrap_or_default()
    }
}

/// Reads the texts of the devices of `pings` before they are formatted. A device's text
/// is rarely in cache (a gateway batch is one ping each of hundreds of devices); read in
/// this short loop, many devices' texts are on their way from memory at once, where
/// formatting, a few hundred instructions a ping, waits for each in turn.
pub fn warm<'a>(texts: impl Iterator<Item = &'a DeviceText>) {
    std::hint::black_box(texts.fold(0u8, |a, d| a ^ d.touch()));
}

/// Writes `v / 10^scale` with exactly `scale` decimals.
#[inline]
fn fixed(out: &mut Vec<u8>, v: i64, scale: u32, buf: &mut itoa::Buffer) {
    let p = 10i64.pow(scale);
    if v < 0 {
        out.push(b'-');
    }
    let a = v.unsigned_abs();
    let p = p as u64;
    out.extend_from_slice(buf.format(a / p).as_bytes());
    out.push(b'.');
    let frac = a % p;
    let s = buf.format(frac);
    for _ in s.len()..scale as usize {
        out.push(b'0');
    }
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn boolean(out: &mut Vec<u8>, key: &[u8], v: bool) {
    out.extend_from_slice(key);
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Appends one ping as a JSON line (fields in `DevicePing` order, nulls omitted).
pub fn ping_json(out: &mut Vec<u8>, p: &Ping, d: &DeviceText, buf: &mut itoa::Buffer) {
    out.extend_from_slice(d.piece(0));
    out.extend_from_slice(buf.format(p.event_time).as_bytes());
    out.extend_from_slice(b",\"receive_time\":");
    out.extend_from_slice(buf.format(p.receive_time).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(buf.format(p.seq).as_bytes());
    if p.flags & flag::HAS_POS != 0 {
        out.extend_from_slice(b",\"lat\":");
        fixed(out, i64::from(p.lat_e6), 6, buf);
        out.extend_from_slice(b",\"lon\":");
        fixed(out, i64::from(p.lon_e6), 6, buf);
        out.extend_from_slice(b",\"accuracy_m\":");
        fixed(out, i64::from(p.accuracy_dm), 1, buf);
    }
    out.extend_from_slice(d.piece(FIXED_PIECES + usize::from(p.sim)));
    if p.flags & flag::HAS_NET != 0 {
        out.extend_from_slice(d.piece(1 + usize::from(p.net & 1)));
    }
    out.extend_from_slice(b",\"battery_pct\":");
    out.extend_from_slice(buf.format(p.battery).as_bytes());
    boolean(out, b",\"charging\":", p.flags & flag::CHARGING != 0);
    out.extend_from_slice(b",\"network_type\":\"");
    out.extend_from_slice(network_type(p).as_bytes());
    boolean(out, b"\",\"agent_active\":", p.flags & flag::AGENT != 0);
    boolean(out, b",\"mdm_active\":", p.flags & flag::MDM != 0);
    boolean(out, b",\"rooted\":", p.flags & flag::ROOTED != 0);
    boolean(out, b",\"mock_location\":", p.flags & flag::MOCK != 0);
    out.extend_from_slice(b",\"event_kind\":\"");
    out.extend_from_slice(event_kind(p).as_bytes());
    out.extend_from_slice(b"\"}\n");
}

fn network_type(p: &Ping) -> &'static str {
    NETWORK_TYPES
        .get(usize::from(p.network_type))
        .map_or("none", |n| n.as_str())
}

fn event_kind(p: &Ping) -> &'static str {
    EVENT_KINDS
        .get(usize::from(p.kind))
        .map_or("heartbeat", |k| k.as_str())
}

/// Where pings go.
#[derive(Debug)]
pub enum PingSink {
    Ndjson {
        w: BufWriter<File>,
        path: PathBuf,
        buf: Vec<u8>,
        bytes: u64,
    },
    Parquet {
        w: Box<ArrowWriter<File>>,
        path: PathBuf,
        rows: Vec<Ping>,
    },
}

const PARQUET_BATCH: usize = 65_536;

impl PingSink {
    pub fn ndjson(dir: &Path) -> Result<Self, GenError> {
        let (w, path) = create(dir, "pings.ndjson")?;
        Ok(Self::Ndjson {
            w,
            path,
            buf: Vec::with_capacity(1 << 21),
            bytes: 0,
        })
    }

    pub fn parquet(dir: &Path) -> Result<Self, GenError> {
        let path = dir.join("pings.parquet");
        let f = File::create(&path).map_err(|e| GenError::io(&path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        let w = ArrowWriter::try_new(f, ping_schema(), Some(props))
            .map_err(|e| GenError::Parquet(path.display().to_string(), e.to_string()))?;
        Ok(Self::Parquet {
            w: Box::new(w),
            path,
            rows: Vec::with_capacity(PARQUET_BATCH),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        match self {
            Self::Ndjson { path, .. } | Self::Parquet { path, .. } => path,
        }
    }

    /// Writes pings (already in output order).
    pub fn write(&mut self, pings: &[Ping], text: &[DeviceText]) -> Result<(), GenError> {
        match self {
            Self::Ndjson {
                w,
                path,
                buf,
                bytes,
            } => {
                let mut ib = itoa::Buffer::new();
                for p in pings {
                    if let Some(d) = text.get(p.device as usize) {
                        ping_json(buf, p, d, &mut ib);
                    }
                    if buf.len() >= 1 << 20 {
                        w.write_all(buf).map_err(|e| GenError::io(path, e))?;
                        *bytes += buf.len() as u64;
                        buf.clear();
                    }
                }
                Ok(())
            }
            Self::Parquet { w, path, rows } => {
                for chunk in pings.chunks(PARQUET_BATCH) {
                    rows.extend_from_slice(chunk);
                    if rows.len() >= PARQUET_BATCH {
                        let batch = ping_batch(rows, text)?;
                        w.write(&batch).map_err(|e| {
                            GenError::Parquet(path.display().to_string(), e.to_string())
                        })?;
                        rows.clear();
                    }
                }
                Ok(())
            }
        }
    }

    /// Flushes and closes; returns the file size in bytes.
    pub fn finish(self, text: &[DeviceText]) -> Result<u64, GenError> {
        match self {
            Self::Ndjson {
                mut w,
                path,
                buf,
                bytes,
            } => {
                w.write_all(&buf).map_err(|e| GenError::io(&path, e))?;
                w.flush().map_err(|e| GenError::io(&path, e))?;
                Ok(bytes + buf.len() as u64)
            }
            Self::Parquet { mut w, path, rows } => {
                let perr = |e: parquet::errors::ParquetError| {
                    GenError::Parquet(path.display().to_string(), e.to_string())
                };
                if !rows.is_empty() {
                    let batch = ping_batch(&rows, text)?;
                    w.write(&batch).map_err(perr)?;
                }
                w.close().map_err(perr)?;
                let len = std::fs::metadata(&path)
                    .map_err(|e| GenError::io(&path, e))?
                    .len();
                Ok(len)
            }
        }
    }
}

/// An Arrow batch of pings in `ping_schema()`.
pub fn ping_batch(rows: &[Ping], text: &[DeviceText]) -> Result<RecordBatch, GenError> {
    let n = rows.len();
    let mut device = StringBuilder::with_capacity(n, n * 15);
    let mut event_time =
        TimestampMillisecondBuilder::with_capacity(n).with_data_type(timestamp_type());
    let mut receive_time =
        TimestampMillisecondBuilder::with_capacity(n).with_data_type(timestamp_type());
    let mut seq = UInt64Builder::with_capacity(n);
    let mut lat = Float64Builder::with_capacity(n);
    let mut lon = Float64Builder::with_capacity(n);
    let mut acc = Float32Builder::with_capacity(n);
    let mut iccid = StringBuilder::with_capacity(n, n * 20);
    let mut imsi = StringBuilder::with_capacity(n, n * 15);
    let mut mcc = UInt16Builder::with_capacity(n);
    let mut mnc = StringBuilder::with_capacity(n, n * 3);
    let mut battery = UInt8Builder::with_capacity(n);
    let mut charging = BooleanBuilder::with_capacity(n);
    let mut nt = StringBuilder::with_capacity(n, n * 4);
    let mut agent = BooleanBuilder::with_capacity(n);
    let mut mdm = BooleanBuilder::with_capacity(n);
    let mut rooted = BooleanBuilder::with_capacity(n);
    let mut mock = BooleanBuilder::with_capacity(n);
    let mut kind = StringBuilder::with_capacity(n, n * 9);
    for p in rows {
        let Some(d) = text.get(p.device as usize) else {
            continue;
        };
        device.append_value(&d.device_id);
        event_time.append_value(p.event_time);
        receive_time.append_value(p.receive_time);
        seq.append_value(u64::from(p.seq));
        if p.flags & flag::HAS_POS != 0 {
            lat.append_value(f64::from(p.lat_e6) / 1e6);
            lon.append_value(f64::from(p.lon_e6) / 1e6);
            acc.append_value(f32::from(p.accuracy_dm) / 10.0);
        } else {
            lat.append_null();
            lon.append_null();
            acc.append_null();
        }
        match d.sim_ids.get(usize::from(p.sim)) {
            Some((c, i)) => {
                iccid.append_value(c);
                imsi.append_value(i);
            }
            None => {
                iccid.append_null();
                imsi.append_null();
            }
        }
        if p.flags & flag::HAS_NET != 0 {
            let (c, m) = d.net_ids[usize::from(p.net & 1)];
            mcc.append_value(c);
            mnc.append_value(m);
        } else {
            mcc.append_null();
            mnc.append_null();
        }
        battery.append_value(p.battery);
        charging.append_value(p.flags & flag::CHARGING != 0);
        nt.append_value(network_type(p));
        agent.append_value(p.flags & flag::AGENT != 0);
        mdm.append_value(p.flags & flag::MDM != 0);
        rooted.append_value(p.flags & flag::ROOTED != 0);
        mock.append_value(p.flags & flag::MOCK != 0);
        kind.append_value(event_kind(p));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(device.finish()),
        Arc::new(event_time.finish()),
        Arc::new(receive_time.finish()),
        Arc::new(seq.finish()),
        Arc::new(lat.finish()),
        Arc::new(lon.finish()),
        Arc::new(acc.finish()),
        Arc::new(iccid.finish()),
        Arc::new(imsi.finish()),
        Arc::new(mcc.finish()),
        Arc::new(mnc.finish()),
        Arc::new(battery.finish()),
        Arc::new(charging.finish()),
        Arc::new(nt.finish()),
        Arc::new(agent.finish()),
        Arc::new(mdm.finish()),
        Arc::new(rooted.finish()),
        Arc::new(mock.finish()),
        Arc::new(kind.finish()),
    ];
    RecordBatch::try_new(ping_schema(), cols).map_err(|e| GenError::Internal(e.to_string()))
}

/// Writes serde records one per line.
pub fn write_ndjson<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    items: &[T],
) -> Result<u64, GenError> {
    let (mut w, path) = create(dir, name)?;
    for it in items {
        serde_json::to_writer(&mut w, it).map_err(|e| GenError::io(&path, e.into()))?;
        w.write_all(b"\n").map_err(|e| GenError::io(&path, e))?;
    }
    w.flush().map_err(|e| GenError::io(&path, e))?;
    Ok(items.len() as u64)
}

/// Writes `truth.csv` or `tricky.csv` (spans sorted, ids numbered in that order).
pub fn write_spans(
    dir: &Path,
    name: &str,
    header: &str,
    id_prefix: &str,
    spans: &[Span],
    devices: &[DeviceText],
) -> Result<u64, GenError> {
    let (mut w, path) = create(dir, name)?;
    let io = |e| GenError::io(&path, e);
    writeln!(w, "{header}").map_err(io)?;
    for (i, s) in spans.iter().enumerate() {
        let dev = devices
            .get(s.device as usize)
            .map_or("", |d| d.device_id.as_str());
        writeln!(
            w,
            "{id_prefix}-{:06},{},{},{},{}",
            i + 1,
            s.kind,
            dev,
            s.start,
            s.end
        )
        .map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(spans.len() as u64)
}

/// Writes `places.geojson`.
pub fn write_places(dir: &Path, places: &[Place]) -> Result<u64, GenError> {
    let features: Vec<serde_json::Value> = places
        .iter()
        .map(|p| {
            let ring: Vec<[f64; 2]> = p
                .ring
                .iter()
                .map(|v| [(v.lon * 1e6).round() / 1e6, (v.lat * 1e6).round() / 1e6])
                .collect();
            serde_json::json!({
                "type": "Feature",
                "properties": {
                    "id": p.id,
                    "kind": p.kind.as_str(),
                    "name": p.name,
                },
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            })
        })
        .collect();
    let doc = serde_json::json!({"type": "FeatureCollection", "features": features});
    let (mut w, path) = create(dir, "places.geojson")?;
    serde_json::to_writer(&mut w, &doc).map_err(|e| GenError::io(&path, e.into()))?;
    w.write_all(b"\n").map_err(|e| GenError::io(&path, e))?;
    w.flush().map_err(|e| GenError::io(&path, e))?;
    Ok(places.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_formatting() {
        let mut b = itoa::Buffer::new();
        let mut out = Vec::new();
        for (v, s, want) in [
            (52_520_008i64, 6, "52.520008"),
            (-33_868_800, 6, "-33.868800"),
            (-5, 6, "-0.000005"),
            (125, 1, "12.5"),
            (0, 1, "0.0"),
        ] {
            out.clear();
            fixed(&mut out, v, s, &mut b);
            assert_eq!(std::str::from_utf8(&out).ok(), Some(want));
        }
    }
}
