//! A JSON-lines decoder specialised to the ping schema, for replaying files and for
//! NDJSON request bodies (`ingest.ndjson_decoder`, on by default).
//!
//! arrow-json decodes any schema: it builds a tape of the whole text, then looks each
//! object's field names up (with the ping schema's 19 fields, in a SipHash map) and
//! converts the tape into columns. About 1.3-2.7 us of CPU per 380-byte ping line on
//! this machine, too slow to replay a million pings a second on two cores, and a fifth
//! of the pipeline's CPU under HTTP load. This module
//! reads the same lines in one pass straight into the columns of
//! [`ping_schema`](leasewatch_schemas::ping_schema), the field names checked against
//! the order the fleet writes them in.
//!
//! It accepts only a strict subset of what arrow-json accepts: each non-blank line one
//! flat object of known, distinct fields; strings without escapes or control bytes;
//! integers as plain decimal literals within their column's range; timestamps as
//! integer milliseconds; floats parsed by the same `lexical-core` functions arrow-json
//! calls. It stops at any other line ([`Stop::Declined`]) and the caller
//! ([`NdjsonDecoder`](super::NdjsonDecoder)) decodes that line with arrow-json, so the
//! rows (and every rejection message) are arrow-json's; `tests` compare the two on
//! generated and mutated lines.

use super::decode::find_newline;
use arrow::array::builder::{BooleanBufferBuilder, NullBufferBuilder};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowNativeType, ArrowPrimitiveType, DataType, Float32Type, Float64Type,
    TimestampMillisecondType, UInt8Type, UInt16Type, UInt64Type,
};
use leasewatch_schemas::{col, ping_schema};
use std::sync::Arc;

/// Wire names of the ping fields, in schema order (checked against the schema by a test).
const NAMES: [&[u8]; 19] = [
    b"device_id",
    b"event_time",
    b"receive_time",
    b"seq",
    b"lat",
    b"lon",
    b"accuracy_m",
    b"iccid",
    b"imsi",
    b"mcc",
    b"mnc",
    b"battery_pct",
    b"charging",
    b"network_type",
    b"agent_active",
    b"mdm_active",
    b"rooted",
    b"mock_location",
    b"event_kind",
];

/// Each name with its closing quote as the first bytes of a little-endian `u128`, and
/// the mask of those bytes (every name is at most 15 bytes).
const KEYS: [(u128, u128); NAMES.len()] = keys();

const fn keys() -> [(u128, u128); NAMES.len()] {
    let mut out = [(0, 0); NAMES.len()];
    let mut i = 0;
    while i < NAMES.len() {
        let name = NAMES[i];
        assert!(name.len() < 16);
        let (mut pattern, mut mask) = (0u128, 0u128);
        let mut j = 0;
        while j <= name.len() {
            let b = if j < name.len() { name[j] } else { b'"' };
            pattern |= (b as u128) << (8 * j);
            mask |= 0xff << (8 * j);
            j += 1;
        }
        out[i] = (pattern, mask);
        i += 1;
    }
    out
}

/// Every field, as a bit set.
const ALL: u32 = (1 << NAMES.len()) - 1;

/// The fields that may not be null or missing.
const REQUIRED: u32 = 1 << col::DEVICE_ID | 1 << col::EVENT_TIME | 1 << col::EVENT_KIND;

/// Why [`PingLines::read`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The text is consumed.
    End,
    /// The text holds more than `max_rows` rows.
    TooManyRows,
    /// The line at `start..end` of the text (its 0-based line and row numbers) is
    /// outside the subset this decoder reads. It is counted; the rows before it are in
    /// the columns. Decode it elsewhere and [`push`](PingLines::push) what it gives,
    /// then read on.
    Declined {
        /// First byte of the line.
        start: usize,
        /// The byte after its last (its `\n` or the end of the text).
        end: usize,
        /// Its line number.
        line: usize,
        /// Its row number (among the non-blank lines).
        row: usize,
    },
}

/// Lines of text being decoded into ping batches.
#[derive(Debug)]
pub(crate) struct PingLines {
    batch_rows: usize,
    cols: Columns,
    /// Full batches (`None`: a column could not be built).
    batches: Vec<Option<RecordBatch>>,
    /// Where reading goes on.
    at: usize,
    /// Non-blank lines (each one row) so far.
    pub rows: usize,
    /// Lines so far (a last line without `\n` counts).
    pub lines: usize,
}

impl PingLines {
    /// A decoder of text of `text_len` bytes into batches of at most `batch_rows` rows.
    pub(crate) fn new(batch_rows: usize, text_len: usize) -> Self {
        let batch_rows = batch_rows.max(1);
        Self {
            batch_rows,
            cols: Columns::with_capacity(guess_rows(text_len).min(batch_rows)),
            batches: Vec::new(),
            at: 0,
            rows: 0,
            lines: 0,
        }
    }

    /// Reads the lines of `text` (no byte-order mark; the same text at every call) from
    /// where the last call stopped.
    pub(crate) fn read(&mut self, text: &[u8], max_rows: usize) -> Stop {
        while self.at < text.len() {
            let start = self.at;
            let end = find_newline(text, start).unwrap_or(text.len());
            let line = &text[start..end];
            self.lines += 1;
            self.at = end + 1;
            // Blank as the arrow-json path has it (`trim_ascii`: form feeds too).
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.rows == max_rows {
                return Stop::TooManyRows;
            }
            self.rows += 1;
            if self.cols.parse_row(line).is_none() {
                self.cols.truncate();
                return Stop::Declined {
                    start,
                    end,
                    line: self.lines - 1,
                    row: self.rows - 1,
                };
            }
            if self.cols.len == self.batch_rows {
                self.cut(text.len());
            }
        }
        Stop::End
    }

    /// Appends the rows of `batch` (in the ping schema: what arrow-json made of a
    /// declined line), or `None` when it is not a ping batch.
    pub(crate) fn push(&mut self, batch: &RecordBatch, text_len: usize) -> Option<()> {
        for i in 0..batch.num_rows() {
            self.cols.push_row(batch, i)?;
            if self.cols.len == self.batch_rows {
                self.cut(text_len);
            }
        }
        Some(())
    }

    /// Makes a batch of the full columns.
    #[cold]
    fn cut(&mut self, text_len: usize) {
        let left = guess_rows(text_len.saturating_sub(self.at));
        let next = Columns::with_capacity(left.min(self.batch_rows));
        let full = std::mem::replace(&mut self.cols, next);
        self.batches.push(full.finish());
    }

    /// The batches, or `None` when a column could not be built.
    pub(crate) fn finish(mut self) -> Option<Vec<RecordBatch>> {
        if self.cols.len > 0 {
            self.batches.push(self.cols.finish());
        }
        self.batches.into_iter().collect()
    }
}

/// Rows to expect in `bytes` of text: a fleet line is about 380 bytes (the estimate only
/// sizes buffers).
fn guess_rows(bytes: usize) -> usize {
    bytes / 256 + 1
}

/// JSON whitespace within a line.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

/// A UTF-8 column being built.
#[derive(Debug)]
struct Text {
    values: Vec<u8>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Text {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(rows * bytes),
            offsets,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// Appends `s` (UTF-8: see `Cursor::string`).
    fn push(&mut self, s: &[u8]) -> Option<()> {
        self.values.extend_from_slice(s);
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        self.nulls.append_non_null();
        Some(())
    }

    fn null(&mut self) {
        self.offsets.push(self.offsets.last().copied().unwrap_or(0));
        self.nulls.append_null();
    }

    /// Back to its first `len` rows.
    fn truncate(&mut self, len: usize) {
        let bytes = self
            .offsets
            .get(len)
            .map_or(0, |o| usize::try_from(*o).unwrap_or(0));
        self.values.truncate(bytes);
        self.offsets.truncate(len + 1);
        self.nulls.truncate(len);
    }

    /// The value of row `i` of `a`, a UTF-8 column.
    fn push_from(&mut self, a: &ArrayRef, i: usize) -> Option<()> {
        let a = a.as_string_opt::<i32>()?;
        if a.is_null(i) {
            self.null();
            Some(())
        } else {
            self.push(a.value(i).as_bytes())
        }
    }

    /// The column; `None` when its bytes are not UTF-8 (each value was checked).
    fn finish(mut self) -> Option<ArrayRef> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array = StringArray::try_new(offsets, self.values.into(), self.nulls.finish()).ok()?;
        Some(Arc::new(array))
    }
}

/// A primitive column being built.
#[derive(Debug)]
struct Prim<T> {
    values: Vec<T>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowNativeType> Prim<T> {
    fn with_capacity(rows: usize) -> Self {
        Self {
            values: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    fn push(&mut self, v: T) {
        self.values.push(v);
        self.nulls.append_non_null();
    }

    fn null(&mut self) {
        self.values.push(T::default());
        self.nulls.append_null();
    }

    fn truncate(&mut self, len: usize) {
        self.values.truncate(len);
        self.nulls.truncate(len);
    }

    /// The value of row `i` of `a`, a column of `P`.
    fn push_from<P: ArrowPrimitiveType<Native = T>>(
        &mut self,
        a: &ArrayRef,
        i: usize,
    ) -> Option<()> {
        let a = a.as_primitive_opt::<P>()?;
        if a.is_null(i) {
            self.null();
        } else {
            self.push(a.value(i));
        }
        Some(())
    }

    fn finish<P: ArrowPrimitiveType<Native = T>>(mut self) -> PrimitiveArray<P> {
        PrimitiveArray::new(ScalarBuffer::from(self.values), self.nulls.finish())
    }
}

/// A boolean column being built.
#[derive(Debug)]
struct Bools {
    values: BooleanBufferBuilder,
    nulls: NullBufferBuilder,
}

impl Bools {
    fn with_capacity(rows: usize) -> Self {
        Self {
            values: BooleanBufferBuilder::new(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    fn push(&mut self, v: bool) {
        self.values.append(v);
        self.nulls.append_non_null();
    }

    fn null(&mut self) {
        self.values.append(false);
        self.nulls.append_null();
    }

    fn truncate(&mut self, len: usize) {
        self.values.truncate(len);
        self.nulls.truncate(len);
    }

    /// The value of row `i` of `a`, a boolean column.
    fn push_from(&mut self, a: &ArrayRef, i: usize) -> Option<()> {
        let a = a.as_boolean_opt()?;
        if a.is_null(i) {
            self.null();
        } else {
            self.push(a.value(i));
        }
        Some(())
    }

    fn finish(mut self) -> ArrayRef {
        Arc::new(BooleanArray::new(self.values.finish(), self.nulls.finish()))
    }
}

/// The columns of one batch, one field per schema column.
#[derive(Debug)]
struct Columns {
    len: usize,
    device_id: Text,
    event_time: Prim<i64>,
    receive_time: Prim<i64>,
    seq: Prim<u64>,
    lat: Prim<f64>,
    lon: Prim<f64>,
    accuracy_m: Prim<f32>,
    iccid: Text,
    imsi: Text,
    mcc: Prim<u16>,
    mnc: Text,
    battery_pct: Prim<u8>,
    charging: Bools,
    network_type: Text,
    agent_active: Bools,
    mdm_active: Bools,
    rooted: Bools,
    mock_location: Bools,
    event_kind: Text,
}

/// What a field's value is read as.
enum Value<'a> {
    Null,
    Str(&'a [u8]),
    /// A number literal as written, and its value when it is an integer of at most 18
    /// digits (negative, magnitude).
    Num(&'a [u8], Option<(bool, u64)>),
    Bool(bool),
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        Self {
            len: 0,
            device_id: Text::with_capacity(rows, 16),
            event_time: Prim::with_capacity(rows),
            receive_time: Prim::with_capacity(rows),
            seq: Prim::with_capacity(rows),
            lat: Prim::with_capacity(rows),
            lon: Prim::with_capacity(rows),
            accuracy_m: Prim::with_capacity(rows),
            iccid: Text::with_capacity(rows, 20),
            imsi: Text::with_capacity(rows, 15),
            mcc: Prim::with_capacity(rows),
            mnc: Text::with_capacity(rows, 2),
            battery_pct: Prim::with_capacity(rows),
            charging: Bools::with_capacity(rows),
            network_type: Text::with_capacity(rows, 4),
            agent_active: Bools::with_capacity(rows),
            mdm_active: Bools::with_capacity(rows),
            rooted: Bools::with_capacity(rows),
            mock_location: Bools::with_capacity(rows),
            event_kind: Text::with_capacity(rows, 9),
        }
    }

    /// Every column back to `len` rows (after a line that failed half way).
    fn truncate(&mut self) {
        let n = self.len;
        self.device_id.truncate(n);
        self.event_time.truncate(n);
        self.receive_time.truncate(n);
        self.seq.truncate(n);
        self.lat.truncate(n);
        self.lon.truncate(n);
        self.accuracy_m.truncate(n);
        self.iccid.truncate(n);
        self.imsi.truncate(n);
        self.mcc.truncate(n);
        self.mnc.truncate(n);
        self.battery_pct.truncate(n);
        self.charging.truncate(n);
        self.network_type.truncate(n);
        self.agent_active.truncate(n);
        self.mdm_active.truncate(n);
        self.rooted.truncate(n);
        self.mock_location.truncate(n);
        self.event_kind.truncate(n);
    }

    /// Appends row `i` of `b`, a batch in the ping schema decoded elsewhere.
    fn push_row(&mut self, b: &RecordBatch, i: usize) -> Option<()> {
        if b.schema() != ping_schema() || i >= b.num_rows() {
            return None;
        }
        let c = |f: usize| b.column(f);
        let pushed = (|| {
            self.device_id.push_from(c(col::DEVICE_ID), i)?;
            self.event_time
                .push_from::<TimestampMillisecondType>(c(col::EVENT_TIME), i)?;
            self.receive_time
                .push_from::<TimestampMillisecondType>(c(col::RECEIVE_TIME), i)?;
            self.seq.push_from::<UInt64Type>(c(col::SEQ), i)?;
            self.lat.push_from::<Float64Type>(c(col::LAT), i)?;
            self.lon.push_from::<Float64Type>(c(col::LON), i)?;
            self.accuracy_m
                .push_from::<Float32Type>(c(col::ACCURACY_M), i)?;
            self.iccid.push_from(c(col::ICCID), i)?;
            self.imsi.push_from(c(col::IMSI), i)?;
            self.mcc.push_from::<UInt16Type>(c(col::MCC), i)?;
            self.mnc.push_from(c(col::MNC), i)?;
            self.battery_pct
                .push_from::<UInt8Type>(c(col::BATTERY_PCT), i)?;
            self.charging.push_from(c(col::CHARGING), i)?;
            self.network_type.push_from(c(col::NETWORK_TYPE), i)?;
            self.agent_active.push_from(c(col::AGENT_ACTIVE), i)?;
            self.mdm_active.push_from(c(col::MDM_ACTIVE), i)?;
            self.rooted.push_from(c(col::ROOTED), i)?;
            self.mock_location.push_from(c(col::MOCK_LOCATION), i)?;
            self.event_kind.push_from(c(col::EVENT_KIND), i)
        })();
        if pushed.is_none() {
            self.truncate();
            return None;
        }
        self.len += 1;
        Some(())
    }

    /// Reads one non-blank line (no `\n`) into every column, or `None`, after which
    /// [`truncate`](Self::truncate) puts the columns back as they were.
    fn parse_row(&mut self, line: &[u8]) -> Option<()> {
        let mut cur = Cursor { s: line, at: 0 };
        cur.space();
        cur.eat(b'{')?;
        cur.space();
        let mut seen = 0u32;
        let mut next = 0usize;
        if cur.peek() != Some(b'}') {
            loop {
                cur.eat(b'"')?;
                // Fields come in schema order, some left out: try the ones after the
                // last first, a 16-byte compare each, and only then read the key.
                let field = match (next..NAMES.len()).find(|&f| cur.key_is(f)) {
                    Some(f) => f,
                    None => {
                        let key = cur.string()?;
                        NAMES.iter().position(|n| *n == key)?
                    }
                };
                let bit = 1u32 << field;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                next = field + 1;
                cur.space();
                cur.eat(b':')?;
                cur.space();
                let value = cur.value()?;
                self.set(field, value)?;
                cur.space();
                match cur.bump()? {
                    b',' => cur.space(),
                    b'}' => break,
                    _ => return None,
                }
            }
        } else {
            cur.bump();
        }
        cur.space();
        if cur.at != line.len() || seen & REQUIRED != REQUIRED {
            return None;
        }
        let mut missing = !seen & ALL;
        while missing != 0 {
            let field = missing.trailing_zeros() as usize;
            self.set(field, Value::Null)?;
            missing &= missing - 1;
        }
        self.len += 1;
        Some(())
    }

    /// Appends `v` to the column of `field`, or `None` when arrow-json would not read
    /// it as this decoder does (a type it converts, a value out of range, a null in a
    /// required column).
    fn set(&mut self, field: usize, v: Value<'_>) -> Option<()> {
        match field {
            col::DEVICE_ID => text(&mut self.device_id, v, false),
            col::EVENT_TIME => time(&mut self.event_time, v, false),
            col::RECEIVE_TIME => time(&mut self.receive_time, v, true),
            col::SEQ => unsigned(&mut self.seq, v),
            col::LAT => float(&mut self.lat, v),
            col::LON => float(&mut self.lon, v),
            col::ACCURACY_M => float(&mut self.accuracy_m, v),
            col::ICCID => text(&mut self.iccid, v, true),
            col::IMSI => text(&mut self.imsi, v, true),
            col::MCC => unsigned(&mut self.mcc, v),
            col::MNC => text(&mut self.mnc, v, true),
            col::BATTERY_PCT => unsigned(&mut self.battery_pct, v),
            col::CHARGING => boolean(&mut self.charging, v),
            col::NETWORK_TYPE => text(&mut self.network_type, v, true),
            col::AGENT_ACTIVE => boolean(&mut self.agent_active, v),
            col::MDM_ACTIVE => boolean(&mut self.mdm_active, v),
            col::ROOTED => boolean(&mut self.rooted, v),
            col::MOCK_LOCATION => boolean(&mut self.mock_location, v),
            col::EVENT_KIND => text(&mut self.event_kind, v, false),
            _ => None,
        }
    }

    /// The batch; `None` when a string column is not UTF-8.
    fn finish(self) -> Option<RecordBatch> {
        let tz = match ping_schema().field(col::EVENT_TIME).data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let time = |p: Prim<i64>| -> ArrayRef {
            Arc::new(
                p.finish::<TimestampMillisecondType>()
                    .with_timezone_opt(tz.clone()),
            )
        };
        let columns: Vec<ArrayRef> = vec![
            self.device_id.finish()?,
            time(self.event_time),
            time(self.receive_time),
            Arc::new(self.seq.finish::<UInt64Type>()),
            Arc::new(self.lat.finish::<Float64Type>()),
            Arc::new(self.lon.finish::<Float64Type>()),
            Arc::new(self.accuracy_m.finish::<Float32Type>()),
            self.iccid.finish()?,
            self.imsi.finish()?,
            Arc::new(self.mcc.finish::<UInt16Type>()),
            self.mnc.finish()?,
            Arc::new(self.battery_pct.finish::<UInt8Type>()),
            self.charging.finish(),
            self.network_type.finish()?,
            self.agent_active.finish(),
            self.mdm_active.finish(),
            self.rooted.finish(),
            self.mock_location.finish(),
            self.event_kind.finish()?,
        ];
        RecordBatch::try_new(ping_schema(), columns).ok()
    }
}

fn text(c: &mut Text, v: Value<'_>, nullable: bool) -> Option<()> {
    match v {
        Value::Str(s) => c.push(s),
        Value::Null if nullable => {
            c.null();
            Some(())
        }
        _ => None,
    }
}

/// Integer milliseconds (arrow-json reads an integer literal as the unit's count).
fn time(c: &mut Prim<i64>, v: Value<'_>, nullable: bool) -> Option<()> {
    match v {
        Value::Num(_, Some((neg, m))) => {
            let m = i64::try_from(m).ok()?;
            c.push(if neg { -m } else { m });
        }
        Value::Null if nullable => c.null(),
        _ => return None,
    }
    Some(())
}

fn unsigned<T: TryFrom<u64> + ArrowNativeType>(c: &mut Prim<T>, v: Value<'_>) -> Option<()> {
    match v {
        Value::Num(_, Some((false, m))) => c.push(T::try_from(m).ok()?),
        Value::Null => c.null(),
        _ => return None,
    }
    Some(())
}

/// Floats go through `lexical-core`, as in arrow-json, so the bits are the same.
fn float<T: lexical_core::FromLexical + ArrowNativeType>(
    c: &mut Prim<T>,
    v: Value<'_>,
) -> Option<()> {
    match v {
        Value::Num(s, _) => c.push(lexical_core::parse::<T>(s).ok()?),
        Value::Null => c.null(),
        _ => return None,
    }
    Some(())
}

fn boolean(c: &mut Bools, v: Value<'_>) -> Option<()> {
    match v {
        Value::Bool(b) => c.push(b),
        Value::Null => c.null(),
        _ => return None,
    }
    Some(())
}

/// A position in one line.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.bump()? == want).then_some(())
    }

    fn space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.at += 1;
        }
    }

    /// The rest of a string whose opening quote was read: its bytes, when it holds no
    /// escape and no control byte and is UTF-8.
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = self.s.get(self.at..)?;
        // One test per byte for the ASCII strings of nearly every line: `b - 0x20 >= 0x60`
        // is a control byte (below 0x20) or not ASCII (0x80 and up).
        let mut len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b.wrapping_sub(0x20) >= 0x60)?;
        if rest[len] >= 0x80 {
            len += rest[len..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            std::str::from_utf8(&rest[..len]).ok()?;
        }
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// Whether the name of field `f` and its closing quote come next (the opening quote
    /// read); reads them if so.
    fn key_is(&mut self, f: usize) -> bool {
        let (Some(&(pattern, mask)), Some(bytes)) =
            (KEYS.get(f), self.s.get(self.at..self.at + 16))
        else {
            return false;
        };
        let mut word = [0u8; 16];
        word.copy_from_slice(bytes);
        if u128::from_le_bytes(word) & mask == pattern {
            self.at += NAMES[f].len() + 1;
            true
        } else {
            false
        }
    }

    /// The literal `word` (its first byte already peeked).
    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.s.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(Value::Str)
            }
            b'n' => self.word(b"null").map(|()| Value::Null),
            b't' => self.word(b"true").map(|()| Value::Bool(true)),
            b'f' => self.word(b"false").map(|()| Value::Bool(false)),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A number in JSON's grammar.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.at;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.at += 1;
        }
        let digits = self.at;
        let mut m = 0u64;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            self.at += 1;
        }
        let n = self.at - digits;
        // No digits, or a leading zero before more digits: not JSON.
        if n == 0 || (n > 1 && self.s[digits] == b'0') {
            return None;
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        // Longer integers and `-0` are left to arrow-json (as a float's text they are fine).
        let int = (integer && n <= 18 && !(neg && m == 0)).then_some((neg, m));
        Some(Value::Num(&self.s[start..self.at], int))
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let from = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        (self.at > from).then_some(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ingest::NdjsonDecoder;
    use arrow::compute::concat_batches;

    /// The ping-line decoder alone: `None` when it declines a line.
    fn decode(
        text: &[u8],
        batch_rows: usize,
        max_rows: usize,
    ) -> Option<(Vec<RecordBatch>, usize, usize)> {
        let mut lines = PingLines::new(batch_rows, text.len());
        if lines.read(text, max_rows) != Stop::End {
            return None;
        }
        let (rows, n) = (lines.rows, lines.lines);
        Some((lines.finish()?, rows, n))
    }

    /// Both decoders on `text`: the ping-line decoder's rows, which must then be
    /// arrow-json's rows exactly, or `None` (declined), in which case the text must still
    /// decode through `NdjsonDecoder::with_ping_lines` exactly as through arrow-json.
    fn compare(text: &[u8], batch_rows: usize) -> Option<usize> {
        let arrow = NdjsonDecoder::new(batch_rows)
            .decode(text, usize::MAX)
            .unwrap();
        let ours = decode(text, batch_rows, usize::MAX);
        let shared = NdjsonDecoder::with_ping_lines(batch_rows)
            .decode(text, usize::MAX)
            .unwrap();
        let schema = ping_schema();
        let all = |b: &[RecordBatch]| concat_batches(&schema, b).unwrap();
        assert_eq!(shared.rows, arrow.rows);
        assert_eq!(shared.lines, arrow.lines);
        assert_eq!(shared.rejected, arrow.rejected);
        assert_eq!(all(&shared.batches), all(&arrow.batches), "{}", show(text));
        let ours = ours?;
        assert!(
            arrow.rejected.is_empty(),
            "accepted what arrow-json rejects: {}\n{:?}",
            show(text),
            arrow.rejected
        );
        let (batches, rows, lines) = ours;
        assert_eq!(rows, arrow.rows);
        assert_eq!(lines, arrow.lines);
        assert!(batches.iter().all(|b| b.num_rows() <= batch_rows));
        assert!(batches.iter().all(|b| b.num_rows() > 0));
        assert_eq!(all(&batches), all(&arrow.batches), "{}", show(text));
        Some(rows)
    }

    fn show(text: &[u8]) -> String {
        String::from_utf8_lossy(text).into_owned()
    }

    /// A line as the fleet generator writes it.
    const FLEET: &str = r#"{"device_id":"354809105463218","event_time":1780000000123,"receive_time":1780000001000,"seq":42,"lat":-33.868800,"lon":151.209300,"accuracy_m":8.5,"iccid":"8961012345678901234","imsi":"505011234567890","mcc":505,"mnc":"01","battery_pct":55,"charging":true,"network_type":"5g","agent_active":true,"mdm_active":false,"rooted":false,"mock_location":false,"event_kind":"heartbeat"}"#;

    #[test]
    fn names_are_the_schema_in_order() {
        let schema = ping_schema();
        let names: Vec<&[u8]> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_bytes())
            .collect();
        assert_eq!(names, NAMES);
        for (i, f) in schema.fields().iter().enumerate() {
            assert_eq!(f.is_nullable(), REQUIRED & (1 << i) == 0, "{}", f.name());
        }
    }

    #[test]
    fn reads_fleet_lines_as_arrow_json_does() {
        let text = format!("{FLEET}\n{FLEET}\r\n\n   \n{FLEET}");
        assert_eq!(compare(text.as_bytes(), 2), Some(3));
        assert_eq!(compare(format!("{FLEET}\n").as_bytes(), 8192), Some(1));
        // Few fields, any order, spaces, nulls; integers in float columns.
        let text = concat!(
            "{\"event_kind\":\"boot\", \"event_time\" : 5 ,\"device_id\":\"a\"}\n",
            "\t{ \"device_id\":\"\u{e9}t\u{e9}\",\"event_time\":-7,\"event_kind\":\"x\",",
            "\"lat\":12,\"lon\":-0,\"accuracy_m\":1e2,\"seq\":null,\"charging\":null,",
            "\"mcc\":65535,\"battery_pct\":255,\"receive_time\":null} \n",
        );
        assert_eq!(compare(text.as_bytes(), 10), Some(2));
        assert_eq!(compare(b"", 10), Some(0));
        assert_eq!(compare(b"\n \n", 10), Some(0));
        // Blank lines are those of ASCII whitespace, a form feed included; a form feed
        // before an object is not JSON whitespace.
        let text = format!("{FLEET}\n\x0c\n \t\x0c\r\n{FLEET}\n");
        assert_eq!(compare(text.as_bytes(), 10), Some(2));
        let text = format!("{FLEET}\n\x0c{FLEET}\n\x0b\n");
        assert_eq!(compare(text.as_bytes(), 10), None);
    }

    #[test]
    fn declines_what_it_does_not_read_exactly() {
        for line in [
            // Types arrow-json converts or rejects.
            r#"{"device_id":"a","event_time":"2026-01-01T00:00:00Z","event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1.5,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","seq":-1}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","battery_pct":256}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","seq":"5"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","lat":"5"}"#,
            r#"{"device_id":5,"event_time":1,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","rooted":1}"#,
            r#"{"device_id":"a","event_time":12345678901234567890,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":-0,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":01,"event_kind":"x"}"#,
            // Escapes, unknown, duplicate and missing fields, nesting, two objects.
            r#"{"device_id":"a\"b","event_time":1,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","extra":1}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","event_time":2}"#,
            r#"{"device_id":"a","event_kind":"x"}"#,
            r#"{"device_id":null,"event_time":1,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","mnc":{"a":1}}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x"}{"device_id":"a","event_time":1,"event_kind":"x"}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x",}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x""#,
            r#"{}"#,
            r#"[]"#,
            r#"nul"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","lat":NaN}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","lat":1.}"#,
            r#"{"device_id":"a","event_time":1,"event_kind":"x","lat":-}"#,
            "{\"device_id\":\"a\tb\",\"event_time\":1,\"event_kind\":\"x\"}",
        ] {
            let text = format!("{FLEET}\n{line}\n{FLEET}\n");
            assert_eq!(compare(text.as_bytes(), 2), None, "{line}");
        }
        // An object over two lines.
        let split = FLEET.replacen(",", ",\n", 1);
        assert_eq!(compare(split.as_bytes(), 4), None);
        // Bytes that are not UTF-8 in a string.
        let mut bad = FLEET.as_bytes().to_vec();
        bad[15] = 0xff;
        assert_eq!(compare(&bad, 4), None);
        // Declined lines among accepted ones, in every batch position.
        let odd = r#"{"device_id":"a","event_time":"2026-01-01T00:00:00Z","event_kind":"x"}"#;
        let bad = r#"{"device_id":"a","event_time":1,"event_kind":"x","rooted":1}"#;
        let mixed = format!("{odd}\n{FLEET}\n{bad}\n{FLEET}\n{odd}\n\n{bad}\n{FLEET}\n{odd}");
        for batch_rows in 1..6 {
            assert_eq!(compare(mixed.as_bytes(), batch_rows), None);
            let d = NdjsonDecoder::with_ping_lines(batch_rows)
                .decode(mixed.as_bytes(), usize::MAX)
                .unwrap();
            assert_eq!(d.rows, 8);
            assert_eq!(d.lines, 9);
            let rejected: Vec<(usize, usize)> = d
                .rejected
                .iter()
                .map(|r| (r.line, r.rejection.row))
                .collect();
            assert_eq!(rejected, [(2, 2), (6, 5)]);
            assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
        }
        // More rows than allowed.
        let three = format!("{FLEET}\n{FLEET}\n{FLEET}\n");
        assert!(decode(three.as_bytes(), 2, 2).is_none());
        assert!(decode(three.as_bytes(), 2, 3).is_some());
    }

    /// Where the two differ on purpose: NDJSON is one value per line, so two lines that
    /// hold one object and a half each are both rejected (arrow-json alone, reading a
    /// stream of values, would take them as two rows).
    #[test]
    fn an_object_across_lines_is_rejected_line_by_line() {
        let (head, tail) = FLEET.split_at(40);
        let text = format!("{FLEET}{head}\n{tail}\n{FLEET}\n");
        let d = NdjsonDecoder::with_ping_lines(8)
            .decode(text.as_bytes(), usize::MAX)
            .unwrap();
        assert_eq!((d.rows, d.lines), (3, 3));
        let rejected: Vec<usize> = d.rejected.iter().map(|r| r.line).collect();
        assert_eq!(rejected, [0, 1]);
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    /// Lines made of random choices among the encodings of each field (valid and not),
    /// each decoded both ways: whatever this decoder accepts must be arrow-json's rows.
    #[test]
    fn agrees_with_arrow_json_on_generated_lines() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let strings = [
            "\"354809105463218\"",
            "\"\"",
            "\"5g\"",
            "\"\u{e9}\u{1f600}\"",
            "null",
            "\"a\\nb\"",
            "7",
        ];
        let ints = [
            "0",
            "1",
            "255",
            "256",
            "65535",
            "65536",
            "-3",
            "1780000000123",
            "null",
            "1e3",
            "2.0",
            "\"9\"",
            "99999999999999999999",
            "true",
        ];
        let floats = [
            "-33.868800",
            "151.2093",
            "0",
            "-0",
            "1e-7",
            "3.4028235e38",
            "1e39",
            "0.1",
            "null",
            "12345678901234567890",
            "-0.000001",
            "\"1\"",
            "false",
        ];
        let bools = ["true", "false", "null", "0", "\"true\""];
        let spaces = ["", " ", "\t", "  \r"];
        // Bytes a flip writes: JSON's own, whitespace JSON does not allow, non-ASCII.
        let flips = b"\"\\{}[],: \t\r\x0c\x0b\x00\x7f09-.eEntf\x80\xc3\xff";
        let mut accepted = 0;
        let mut declined = 0;
        // PING_LINES_CASES=200000 for a longer run.
        let cases = std::env::var("PING_LINES_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(400);
        for _ in 0..cases {
            let mut text = String::new();
            for _ in 0..1 + next(4) {
                let mut order: Vec<usize> = (0..NAMES.len()).collect();
                if next(4) == 0 {
                    for i in (1..order.len()).rev() {
                        order.swap(i, next(i + 1));
                    }
                }
                let mut fields = Vec::new();
                for &f in &order {
                    // Required fields nearly always, others two times in three.
                    let keep = if REQUIRED & (1 << f) != 0 {
                        next(40) != 0
                    } else {
                        next(3) != 0
                    };
                    if !keep {
                        continue;
                    }
                    let valid = next(12) != 0;
                    let value = match f {
                        col::EVENT_TIME
                        | col::RECEIVE_TIME
                        | col::SEQ
                        | col::MCC
                        | col::BATTERY_PCT => {
                            if valid {
                                ints[next(3)]
                            } else {
                                ints[next(ints.len())]
                            }
                        }
                        col::LAT | col::LON | col::ACCURACY_M => {
                            if valid {
                                floats[next(7)]
                            } else {
                                floats[next(floats.len())]
                            }
                        }
                        col::CHARGING
                        | col::AGENT_ACTIVE
                        | col::MDM_ACTIVE
                        | col::ROOTED
                        | col::MOCK_LOCATION => {
                            if valid {
                                bools[next(2)]
                            } else {
                                bools[next(bools.len())]
                            }
                        }
                        _ => {
                            if valid {
                                strings[next(4)]
                            } else {
                                strings[next(strings.len())]
                            }
                        }
                    };
                    let name = String::from_utf8_lossy(NAMES[f]).into_owned();
                    let sp = spaces[next(spaces.len())];
                    fields.push(format!("{sp}\"{name}\"{sp}:{sp}{value}{sp}"));
                }
                text.push_str(spaces[next(spaces.len())]);
                text.push('{');
                text.push_str(&fields.join(","));
                text.push('}');
                text.push_str(spaces[next(spaces.len())]);
                text.push_str(["\n", "\r\n", "\n\n", "\n\x0c \n"][next(4)]);
            }
            let mut text = text.into_bytes();
            // One text in four gets a byte or two overwritten.
            if next(4) == 0 {
                for _ in 0..1 + next(2) {
                    let at = next(text.len());
                    text[at] = flips[next(flips.len())];
                }
            }
            match compare(&text, 1 + next(3)) {
                Some(_) => accepted += 1,
                None => declined += 1,
            }
        }
        // Both paths must have been exercised for the comparison to mean anything.
        assert!(
            accepted > 40 && declined > 40,
            "{accepted} accepted, {declined} declined"
        );
    }
}
