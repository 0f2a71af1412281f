//! Columnar validation of ping batches with the contract's `check_*` rules.

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt8Array, UInt16Array,
};
use arrow::compute::filter_record_batch;
use leasewatch_schemas::{
    EventKind, Limits, NetworkType, Problem, ProblemKind, check_accuracy, check_battery,
    check_device_id, check_event_time, check_iccid, check_imsi, check_lat, check_lon, check_mcc,
    check_mnc, check_position_pair, col, ping_schema,
};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::decode::{RowProblem, RowRejection};

/// The batch handed to [`validate_batch`] does not have the ping columns (a bug in
/// the caller, never the client's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ping batch: {0}")]
pub struct NotAPingBatch(pub String);

fn column<T: 'static>(batch: &RecordBatch, idx: usize) -> Result<&T, NotAPingBatch> {
    let schema = ping_schema();
    let name = schema.field(idx).name();
    batch
        .column(idx)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| {
            NotAPingBatch(format!(
                "column {idx} ({name}) is {}",
                batch.column(idx).data_type()
            ))
        })
}

/// Problems per row, kept in row order and, within a row, in the order found.
#[derive(Default)]
struct Found(BTreeMap<usize, Vec<Problem>>);

impl Found {
    // Called about a dozen times a ping, nearly always with `None`: inlined, that is a
    // test of the option, not a call passing a whole `Option<Problem>`.
    #[inline]
    fn add(&mut self, row: usize, p: Option<Problem>) {
        if let Some(p) = p {
            self.0.entry(row).or_default().push(p);
        }
    }
}

fn missing(field: &'static str) -> Problem {
    Problem {
        field,
        kind: ProblemKind::Missing,
        value: "null".to_string(),
        message: "a required field is missing or null".to_string(),
    }
}

fn bad_name(field: &'static str, value: &str, allowed: &[&str]) -> Problem {
    let mut shown: String = value.chars().take(61).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    Problem {
        field,
        kind: ProblemKind::BadFormat,
        value: shown,
        message: format!("must be one of {}", allowed.join(", ")),
    }
}

fn check_strings(
    found: &mut Found,
    a: &StringArray,
    required: Option<&'static str>,
    check: impl Fn(&str) -> Option<Problem>,
) {
    for i in 0..a.len() {
        if a.is_null(i) {
            if let Some(field) = required {
                found.add(i, Some(missing(field)));
            }
        } else {
            found.add(i, check(a.value(i)));
        }
    }
}

/// Validates every row of a ping batch (columns of [`ping_schema`]; required columns
/// may hold nulls, which are reported as `missing`) against the contract's rules,
/// with `receive_time` (server clock, ms) as the reference for event times.
///
/// Returns the valid rows as a batch of [`ping_schema`] whose `receive_time` is set
/// to `receive_time`, and for every invalid row its index in `batch` and all its
/// problems, in field order.
pub fn validate_batch(
    batch: &RecordBatch,
    receive_time: i64,
    limits: &Limits,
) -> Result<(RecordBatch, Vec<RowRejection>), NotAPingBatch> {
    let (valid, problems) = check_rows(batch, |_| receive_time, limits)?;
    let schema = ping_schema();
    let mut columns: Vec<ArrayRef> = valid.columns().to_vec();
    let receive = TimestampMillisecondArray::from_value(receive_time, valid.num_rows())
        .with_data_type(schema.field(col::RECEIVE_TIME).data_type().clone());
    columns[col::RECEIVE_TIME] = Arc::new(receive);
    let valid = RecordBatch::try_new(schema, columns).map_err(|e| NotAPingBatch(e.to_string()))?;
    let rejected = problems
        .into_iter()
        .map(|(row, problems)| RowRejection {
            row,
            problems: problems.iter().map(RowProblem::from).collect(),
        })
        .collect();
    Ok((valid, rejected))
}

/// The rule check shared by ingest and replay: every problem of every row of a ping
/// batch, by row index (rows in order, each row's problems in field order), and the
/// batch of the rows without problems, otherwise unchanged.
///
/// `receive_time_of(row)` is the reference time (ms) that row's event time is checked
/// against: the server clock for ingest, the recorded receive time for replay.
pub fn check_rows(
    batch: &RecordBatch,
    receive_time_of: impl Fn(usize) -> i64,
    limits: &Limits,
) -> Result<(RecordBatch, BTreeMap<usize, Vec<Problem>>), NotAPingBatch> {
    let schema = ping_schema();
    if batch.num_columns() != schema.fields().len() {
        return Err(NotAPingBatch(format!(
            "{} columns, expected {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    for (i, f) in schema.fields().iter().enumerate() {
        if batch.column(i).data_type() != f.data_type() {
            return Err(NotAPingBatch(format!(
                "column {i} ({}) is {}, expected {}",
                f.name(),
                batch.column(i).data_type(),
                f.data_type()
            )));
        }
    }
    let n = batch.num_rows();
    let mut found = Found::default();

    // In field order, so that each row's problems read like `validate_ping`'s.
    check_strings(
        &mut found,
        column::<StringArray>(batch, col::DEVICE_ID)?,
        Some("device_id"),
        check_device_id,
    );
    let event_time = column::<TimestampMillisecondArray>(batch, col::EVENT_TIME)?;
    for i in 0..n {
        if event_time.is_null(i) {
            found.add(i, Some(missing("event_time")));
        } else {
            found.add(
                i,
                check_event_time(event_time.value(i), receive_time_of(i), limits),
            );
        }
    }
    let lat = column::<Float64Array>(batch, col::LAT)?;
    let lon = column::<Float64Array>(batch, col::LON)?;
    let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    for i in 0..n {
        let (la, lo) = (opt(lat, i), opt(lon, i));
        found.add(i, la.and_then(check_lat));
        found.add(i, lo.and_then(check_lon));
        found.add(i, check_position_pair(la, lo));
    }
    let accuracy = column::<Float32Array>(batch, col::ACCURACY_M)?;
    for i in 0..n {
        if !accuracy.is_null(i) {
            found.add(i, check_accuracy(accuracy.value(i)));
        }
    }
    check_strings(&mut found, column(batch, col::ICCID)?, None, check_iccid);
    check_strings(&mut found, column(batch, col::IMSI)?, None, check_imsi);
    let mcc = column::<UInt16Array>(batch, col::MCC)?;
    for i in 0..n {
        if !mcc.is_null(i) {
            found.add(i, check_mcc(mcc.value(i)));
        }
    }
    check_strings(&mut found, column(batch, col::MNC)?, None, check_mnc);
    let battery = column::<UInt8Array>(batch, col::BATTERY_PCT)?;
    for i in 0..n {
        if !battery.is_null(i) {
            found.add(i, check_battery(battery.value(i)));
        }
    }
    let network_names: Vec<&str> = NetworkType::ALL.iter().map(|t| t.as_str()).collect();
    check_strings(&mut found, column(batch, col::NETWORK_TYPE)?, None, |v| {
        NetworkType::parse(v)
            .is_none()
            .then(|| bad_name("network_type", v, &network_names))
    });
    let kind_names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    check_strings(
        &mut found,
        column(batch, col::EVENT_KIND)?,
        Some("event_kind"),
        |v| {
            EventKind::parse(v)
                .is_none()
                .then(|| bad_name("event_kind", v, &kind_names))
        },
    );

    let valid = if found.0.is_empty() {
        batch.clone()
    } else {
        let keep: BooleanArray = (0..n).map(|i| Some(!found.0.contains_key(&i))).collect();
        filter_record_batch(batch, &keep).map_err(|e| NotAPingBatch(e.to_string()))?
    };
    Ok((valid, found.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ingest::decode::{decode_arrow_ipc, decode_ndjson};
    use leasewatch_schemas::{DevicePing, validate_ping};

    const NOW: i64 = 1_780_000_000_000;

    fn line(extra: &str) -> String {
        format!(
            r#"{{"device_id":"490154203237518","event_time":{},"event_kind":"heartbeat"{extra}}}"#,
            NOW - 1000
        )
    }

    #[test]
    fn agrees_with_validate_ping_row_by_row() {
        let lines = [
            line(""),
            line(r#","lat":91.5,"lon":13.4,"accuracy_m":-1"#),
            line(r#","lat":10.0"#),
            line(
                r#","iccid":"8949022201234567898","imsi":"26201","mcc":12,"mnc":"x1","battery_pct":101"#,
            ),
            line(r#","network_type":"6g""#),
            line(
                r#","seq":5,"network_type":"lte","iccid":"8949022201234567897","mcc":262,"mnc":"01""#,
            ),
            r#"{"device_id":"49015420323751","event_time":0,"event_kind":"reboot"}"#.to_string(),
        ];
        let body = lines.join("\n");
        let decoded = decode_ndjson(body.as_bytes(), 100).unwrap();
        assert!(decoded.rejected.is_empty());
        let (valid, rejected) = validate_batch(&decoded.batch, NOW, &Limits::default()).unwrap();
        let bad: Vec<usize> = rejected.iter().map(|r| r.row).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 6]);
        assert_eq!(valid.num_rows(), 2);
        let rt = valid
            .column(col::RECEIVE_TIME)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert!(rt.iter().all(|t| t == Some(NOW)));
        assert_eq!(valid.schema(), ping_schema());
        // The row-wise contract check reports the same fields, in the same order.
        for r in &rejected {
            let ping: Result<DevicePing, _> = serde_json::from_str(&lines[r.row]);
            let Ok(ping) = ping else { continue };
            let expected: Vec<&str> = validate_ping(&ping, NOW, &Limits::default())
                .iter()
                .map(|p| p.field)
                .collect();
            let got: Vec<&str> = r
                .problems
                .iter()
                .map(|p| p.field.as_str())
                .filter(|f| *f != "network_type" && *f != "event_kind")
                .collect();
            assert_eq!(got, expected, "row {}", r.row);
        }
        let last: Vec<&str> = rejected[4]
            .problems
            .iter()
            .map(|p| p.field.as_str())
            .collect();
        assert_eq!(last, vec!["device_id", "event_time", "event_kind"]);
    }

    #[test]
    fn ipc_nulls_in_required_columns_are_row_problems() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use arrow_ipc::writer::StreamWriter;
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, true),
            Field::new("event_time", DataType::Int64, true),
            Field::new("event_kind", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![Some("490154203237518"), None])),
                Arc::new(Int64Array::from(vec![Some(NOW), Some(NOW)])),
                Arc::new(StringArray::from(vec![Some("boot"), Some("boot")])),
            ],
        )
        .unwrap();
        let mut w = StreamWriter::try_new(Vec::new(), &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let body = w.into_inner().unwrap();
        let d = decode_arrow_ipc(&body, 10).unwrap();
        let (valid, rejected) = validate_batch(&d.batch, NOW, &Limits::default()).unwrap();
        assert_eq!(valid.num_rows(), 1);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].row, 1);
        assert_eq!(rejected[0].problems[0].kind, "missing");
    }
}
