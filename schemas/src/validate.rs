//! Validation of pings: every problem of a ping, each with its field and value.
//!
//! The per-value checks (`check_*`) are public so that columnar ingest can run the
//! same rules over Arrow arrays without building a [`DevicePing`] per row.

use crate::ping::DevicePing;
use serde::Serialize;
use std::fmt;

/// Why a value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A required field is missing or null.
    Missing,
    /// A number is NaN or infinite.
    NotFinite,
    /// A number is outside its allowed range.
    OutOfRange,
    /// A string does not have the required digits/length.
    BadFormat,
    /// A Luhn check digit does not match.
    BadCheckDigit,
    /// The event time is too far in the future of the receive time.
    InFuture,
    /// The event time is before the earliest plausible time.
    TooOld,
    /// Only one of a pair of fields that go together is present.
    Incomplete,
}

impl ProblemKind {
    /// Stable snake_case name, used in API replies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotFinite => "not_finite",
            Self::OutOfRange => "out_of_range",
            Self::BadFormat => "bad_format",
            Self::BadCheckDigit => "bad_check_digit",
            Self::InFuture => "in_future",
            Self::TooOld => "too_old",
            Self::Incomplete => "incomplete",
        }
    }
}

/// One thing wrong with one field of a ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The field, by its wire name.
    pub field: &'static str,
    /// What is wrong.
    pub kind: ProblemKind,
    /// The offending value, rendered (truncated to 64 characters).
    pub value: String,
    /// A human-readable explanation.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (value {:?})",
            self.field, self.message, self.value
        )
    }
}

/// Limits that depend on the deployment rather than on physics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How far (ms) an event time may lie ahead of the receive time (phone clock skew).
    pub max_future_ms: i64,
    /// The earliest plausible event time (ms since epoch); older pings are clock resets.
    pub min_event_time_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future_ms: 5 * 60 * 1000,
            // 2015-01-01T00:00:00Z: a phone reporting earlier has lost its clock.
            min_event_time_ms: 1_420_070_400_000,
        }
    }
}

fn render(value: impl fmt::Display) -> String {
    let mut s = value.to_string();
    if s.len() > 64 {
        let mut cut = 61;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn problem(
    field: &'static str,
    kind: ProblemKind,
    value: impl fmt::Display,
    message: impl Into<String>,
) -> Problem {
    Problem {
        field,
        kind,
        value: render(value),
        message: message.into(),
    }
}

/// True when `digits` is all ASCII digits and its last digit is the Luhn check digit
/// of the others (used by IMEI and ICCID).
///
/// The same algorithm lives in `leasewatch-udfs` (`imei_valid`), whose core must
/// compile as a stand-alone Arroyo UDF file without this crate.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an IMEI (device id): 15 digits with a valid Luhn check digit.
pub fn check_device_id(v: &str) -> Option<Problem> {
    const F: &str = "device_id";
    if v.len() != 15 || !all_digits(v) {
        Some(problem(
            F,
            ProblemKind::BadFormat,
            v,
            "IMEI must be exactly 15 decimal digits",
        ))
    } else if !luhn_valid(v) {
        Some(problem(
            F,
            ProblemKind::BadCheckDigit,
            v,
            "IMEI Luhn check digit does not match",
        ))
    } else {
        None
    }
}

/// Checks an event time against the receive time (both ms since epoch).
pub fn check_event_time(v: i64, receive_time: i64, limits: &Limits) -> Option<Problem> {
    const F: &str = "event_time";
    if v < limits.min_event_time_ms {
        Some(problem(
            F,
            ProblemKind::TooOld,
            v,
            format!(
                "event time is before the earliest plausible time ({} ms)",
                limits.min_event_time_ms
            ),
        ))
    } else if v.saturating_sub(receive_time) > limits.max_future_ms {
        Some(problem(
            F,
            ProblemKind::InFuture,
            v,
            format!(
                "event time is more than {} s ahead of the receive time",
                limits.max_future_ms / 1000
            ),
        ))
    } else {
        None
    }
}

/// Checks a latitude in degrees.
pub fn check_lat(v: f64) -> Option<Problem> {
    check_range("lat", v, -90.0, 90.0)
}

/// Checks a longitude in degrees.
pub fn check_lon(v: f64) -> Option<Problem> {
    check_range("lon", v, -180.0, 180.0)
}

/// Checks a fix accuracy in metres (0 to 1,000 km).
pub fn check_accuracy(v: f32) -> Option<Problem> {
    check_range("accuracy_m", f64::from(v), 0.0, 1_000_000.0)
}

fn check_range(field: &'static str, v: f64, lo: f64, hi: f64) -> Option<Problem> {
    if !v.is_finite() {
        Some(problem(
            field,
            ProblemKind::NotFinite,
            v,
            "must be a finite number",
        ))
    } else if v < lo || v > hi {
        Some(problem(
            field,
            ProblemKind::OutOfRange,
            v,
            format!("must be within {lo}..={hi}"),
        ))
    } else {
        None
    }
}

/// Checks that a latitude and longitude come together.
pub fn check_position_pair(lat: Option<f64>, lon: Option<f64>) -> Option<Problem> {
    match (lat, lon) {
        (Some(_), None) => Some(problem(
            "lon",
            ProblemKind::Incomplete,
            "null",
            "lat is present but lon is not",
        )),
        (None, Some(_)) => Some(problem(
            "lat",
            ProblemKind::Incomplete,
            "null",
            "lon is present but lat is not",
        )),
        _ => None,
    }
}

/// Checks an ICCID: 18-22 digits with a valid Luhn check digit.
pub fn check_iccid(v: &str) -> Option<Problem> {
    const F: &str = "iccid";
    if !(18..=22).contains(&v.len()) || !all_digits(v) {
        Some(problem(
            F,
            ProblemKind::BadFormat,
            v,
            "ICCID must be 18 to 22 decimal digits",
        ))
    } else if !luhn_valid(v) {
        Some(problem(
            F,
            ProblemKind::BadCheckDigit,
            v,
            "ICCID Luhn check digit does not match",
        ))
    } else {
        None
    }
}

/// Checks an IMSI: 14 or 15 digits.
pub fn check_imsi(v: &str) -> Option<Problem> {
    if !(14..=15).contains(&v.len()) || !all_digits(v) {
        Some(problem(
            "imsi",
            ProblemKind::BadFormat,
            v,
            "IMSI must be 14 or 15 decimal digits",
        ))
    } else {
        None
    }
}

/// Checks a mobile country code (ITU-T E.212: 200..=999).
pub fn check_mcc(v: u16) -> Option<Problem> {
    if (200..=999).contains(&v) {
        None
    } else {
        Some(problem(
            "mcc",
            ProblemKind::OutOfRange,
            v,
            "MCC must be within 200..=999",
        ))
    }
}

/// Checks a mobile network code: 2 or 3 digits.
pub fn check_mnc(v: &str) -> Option<Problem> {
    if (2..=3).contains(&v.len()) && all_digits(v) {
        None
    } else {
        Some(problem(
            "mnc",
            ProblemKind::BadFormat,
            v,
            "MNC must be 2 or 3 decimal digits",
        ))
    }
}

/// Checks a battery level in percent.
pub fn check_battery(v: u8) -> Option<Problem> {
    if v <= 100 {
        None
    } else {
        Some(problem(
            "battery_pct",
            ProblemKind::OutOfRange,
            v,
            "battery must be within 0..=100",
        ))
    }
}

/// Every problem of `ping`, in field order; empty when the ping is valid.
///
/// `receive_time` is the time the ping reached LeaseWatch (the ping's own
/// `receive_time` if set is ignored: phones do not get to choose it).
pub fn validate_ping(ping: &DevicePing, receive_time: i64, limits: &Limits) -> Vec<Problem> {
    let mut out = Vec::new();
    out.extend(check_device_id(&ping.device_id));
    out.extend(check_event_time(ping.event_time, receive_time, limits));
    out.extend(ping.lat.and_then(check_lat));
    out.extend(ping.lon.and_then(check_lon));
    out.extend(check_position_pair(ping.lat, ping.lon));
    out.extend(ping.accuracy_m.and_then(check_accuracy));
    out.extend(ping.iccid.as_deref().and_then(check_iccid));
    out.extend(ping.imsi.as_deref().and_then(check_imsi));
    out.extend(ping.mcc.and_then(check_mcc));
    out.extend(ping.mnc.as_deref().and_then(check_mnc));
    out.extend(ping.battery_pct.and_then(check_battery));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping::EventKind;

    const NOW: i64 = 1_780_000_000_000;

    fn good() -> DevicePing {
        DevicePing {
            device_id: "490154203237518".into(),
            event_time: NOW - 1000,
            receive_time: None,
            seq: Some(1),
            lat: Some(52.52),
            lon: Some(13.405),
            accuracy_m: Some(12.0),
            iccid: Some("8949022201234567897".into()),
            imsi: Some("262011234567890".into()),
            mcc: Some(262),
            mnc: Some("01".into()),
            battery_pct: Some(80),
            charging: Some(false),
            network_type: None,
            agent_active: Some(true),
            mdm_active: Some(true),
            rooted: Some(false),
            mock_location: Some(false),
            event_kind: EventKind::Heartbeat,
        }
    }

    #[test]
    fn luhn_known_values() {
        assert!(luhn_valid("490154203237518"));
        assert!(!luhn_valid("490154203237519"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("12a4"));
    }

    #[test]
    fn valid_ping_has_no_problems() {
        let p = good();
        assert!(luhn_valid(p.iccid.as_deref().unwrap_or_default()));
        assert_eq!(validate_ping(&p, NOW, &Limits::default()), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_field_and_value() {
        let mut p = good();
        p.device_id = "49015420323751".into();
        p.event_time = NOW + 3_600_000;
        p.lat = Some(91.5);
        p.lon = Some(f64::NAN);
        p.accuracy_m = Some(-1.0);
        p.iccid = Some("8949022201234567898".into());
        p.imsi = Some("26201".into());
        p.mcc = Some(12);
        p.mnc = Some("x1".into());
        p.battery_pct = Some(101);
        let problems = validate_ping(&p, NOW, &Limits::default());
        let got: Vec<(&str, ProblemKind)> = problems.iter().map(|p| (p.field, p.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("device_id", ProblemKind::BadFormat),
                ("event_time", ProblemKind::InFuture),
                ("lat", ProblemKind::OutOfRange),
                ("lon", ProblemKind::NotFinite),
                ("accuracy_m", ProblemKind::OutOfRange),
                ("iccid", ProblemKind::BadCheckDigit),
                ("imsi", ProblemKind::BadFormat),
                ("mcc", ProblemKind::OutOfRange),
                ("mnc", ProblemKind::BadFormat),
                ("battery_pct", ProblemKind::OutOfRange),
            ]
        );
        assert_eq!(problems[2].value, "91.5");
        assert_eq!(problems[0].value, "49015420323751");
    }

    #[test]
    fn old_and_half_positions_are_reported() {
        let mut p = good();
        p.event_time = 0;
        p.lon = None;
        let kinds: Vec<_> = validate_ping(&p, NOW, &Limits::default())
            .into_iter()
            .map(|p| (p.field, p.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("event_time", ProblemKind::TooOld),
                ("lon", ProblemKind::Incomplete)
            ]
        );
    }

    #[test]
    fn extreme_values_never_panic() {
        let mut p = good();
        p.event_time = i64::MAX;
        p.device_id = "é".repeat(500);
        p.lat = Some(f64::INFINITY);
        p.lon = Some(f64::NEG_INFINITY);
        p.accuracy_m = Some(f32::NAN);
        let problems = validate_ping(&p, i64::MIN, &Limits::default());
        assert_eq!(problems.len(), 5);
        assert!(problems[0].value.len() <= 64);
        let problems = validate_ping(&p, i64::MAX, &Limits::default());
        assert_eq!(problems.len(), 4);
    }
}
