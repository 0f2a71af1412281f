//! Signals (what a rule saw), alerts (graded signals) and collection-queue messages.

use arrow_schema::{DataType, Field, Schema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

use crate::ping::timestamp_type;
use crate::state::CreditBand;

/// The signal catalogue (../shared/design.md, "Signals").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// ICCID/IMSI differs from the one registered on the lease.
    SimMismatch,
    /// Many distinct ICCIDs for one device within a sliding window.
    SimSwapFrequent,
    /// Location outside the permitted area.
    OutOfArea,
    /// Time inside a risky-place geofence over a threshold.
    RiskyPlaceDwell,
    /// A long stay at a place outside the permitted area.
    AbnormalDwell,
    /// Speed between consecutive fixes above a physical bound.
    ImpossibleTravel,
    /// Serving network or position outside the lease country.
    CrossBorder,
    /// No pings for longer than the gap.
    DeviceDark,
    /// Agent disabled, root, mock location, factory reset.
    Tamper,
    /// Days past due crossed a collection ladder step.
    Overdue,
}

impl SignalKind {
    /// Every signal, in catalogue order.
    pub const ALL: [SignalKind; 10] = [
        Self::SimMismatch,
        Self::SimSwapFrequent,
        Self::OutOfArea,
        Self::RiskyPlaceDwell,
        Self::AbnormalDwell,
        Self::ImpossibleTravel,
        Self::CrossBorder,
        Self::DeviceDark,
        Self::Tamper,
        Self::Overdue,
    ];

    /// The signal's name as written in the design, SQL and `truth.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SimMismatch => "sim_mismatch",
            Self::SimSwapFrequent => "sim_swap_frequent",
            Self::OutOfArea => "out_of_area",
            Self::RiskyPlaceDwell => "risky_place_dwell",
            Self::AbnormalDwell => "abnormal_dwell",
            Self::ImpossibleTravel => "impossible_travel",
            Self::CrossBorder => "cross_border",
            Self::DeviceDark => "device_dark",
            Self::Tamper => "tamper",
            Self::Overdue => "overdue",
        }
    }

    /// Parses a signal name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Alert grade, least to most severe.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Grade {
    /// Every grade, least severe first.
    pub const ALL: [Grade; 5] = [
        Self::Info,
        Self::Low,
        Self::Medium,
        Self::High,
        Self::Critical,
    ];

    /// The grade's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a grade name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A collection queue (a Redis Stream `lw:queue:{name}`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    /// SMS reminder.
    Sms,
    /// Phone call stating consequences.
    Call,
    /// Field (home) visit.
    Field,
    /// Collection agency / legal desk.
    Legal,
    /// Device-lock request.
    Lock,
    /// Manual review by a risk monitor.
    Review,
}

impl Queue {
    /// Every queue.
    pub const ALL: [Queue; 6] = [
        Self::Sms,
        Self::Call,
        Self::Field,
        Self::Legal,
        Self::Lock,
        Self::Review,
    ];

    /// The queue's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Call => "call",
            Self::Field => "field",
            Self::Legal => "legal",
            Self::Lock => "lock",
            Self::Review => "review",
        }
    }

    /// Parses a queue name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One detection: a rule saw something on a device. Rows of [`signal_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// Which signal.
    pub signal: SignalKind,
    /// IMEI of the device.
    pub device_id: String,
    /// Event time the signal refers to (ms since epoch): the ping, or the window end.
    pub event_time: i64,
    /// Window start (ms), for windowed rules.
    #[serde(default)]
    pub window_start: Option<i64>,
    /// Window end (ms), for windowed rules.
    #[serde(default)]
    pub window_end: Option<i64>,
    /// The measured value that fired the rule (speed, seconds, count, ...).
    #[serde(default)]
    pub value: Option<f64>,
    /// The threshold it was compared against.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Human-readable detail (e.g. `iccid=... registered=...`).
    #[serde(default)]
    pub detail: Option<String>,
}

static SIGNAL_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("signal", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("window_start", timestamp_type(), true),
        Field::new("window_end", timestamp_type(), true),
        Field::new("value", DataType::Float64, true),
        Field::new("threshold", DataType::Float64, true),
        Field::new("detail", DataType::Utf8, true),
    ]))
});

/// Arrow schema of signal rows (one column per field of [`Signal`]).
pub fn signal_schema() -> Arc<Schema> {
    Arc::clone(&SIGNAL_SCHEMA)
}

static ALERT_ARCHIVE_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("signal", DataType::Utf8, false),
        Field::new("grade", DataType::Utf8, false),
        Field::new("queue", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("lease_id", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("event_time", timestamp_type(), false),
        Field::new("window_start", timestamp_type(), true),
        Field::new("window_end", timestamp_type(), true),
        Field::new("days_past_due", DataType::Int32, true),
        Field::new("credit_band", DataType::Utf8, true),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("reasons", DataType::Utf8, false),
    ]))
});

/// Arrow schema of the alert archive (Parquet files written by the grading query, read by
/// `leasewatch report` and `leasewatch-load score`): the [`Alert`] fields with enums as
/// their names, `reasons` as a JSON array string, plus the position (`lat`, `lon`) that
/// fired the alert when it has one.
pub fn alert_archive_schema() -> Arc<Schema> {
    Arc::clone(&ALERT_ARCHIVE_SCHEMA)
}

/// One rule that fired, with the values that fired it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Rule name (e.g. `sim_mismatch`, `dpd_ladder`, `low_credit_band`).
    pub rule: String,
    /// Measured value, when the rule compares a number.
    #[serde(default)]
    pub value: Option<f64>,
    /// Threshold it was compared against.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Detail, e.g. the ICCIDs compared or the geofence id.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A graded signal, joined with lease and credit state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Deterministic id: a hash of (signal, device, window or event time), so a replay
    /// of the same input yields the same id.
    pub alert_id: String,
    /// The signal graded.
    pub signal: SignalKind,
    /// Grade.
    pub grade: Grade,
    /// Queue it goes to.
    pub queue: Queue,
    /// IMEI.
    pub device_id: String,
    /// Lease id (None when no lease state was found).
    #[serde(default)]
    pub lease_id: Option<String>,
    /// Customer id (None when no lease state was found).
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Event time the alert refers to (ms since epoch).
    pub event_time: i64,
    /// Window start (ms), for windowed rules.
    #[serde(default)]
    pub window_start: Option<i64>,
    /// Window end (ms), for windowed rules.
    #[serde(default)]
    pub window_end: Option<i64>,
    /// Days past due at grading time.
    #[serde(default)]
    pub days_past_due: Option<i32>,
    /// Credit band at grading time.
    #[serde(default)]
    pub credit_band: Option<CreditBand>,
    /// Every rule that fired, with its values.
    pub reasons: Vec<Reason>,
}

/// Version of [`QueueMessage`]'s layout; bumped on any incompatible change.
pub const QUEUE_MESSAGE_VERSION: u32 = 1;

/// What a collection service reads from a queue stream: one entry per alert.
///
/// In Redis each field is a stream entry field; `reasons` is a JSON array string.
/// As JSON (the list form for Arroyo's Redis sink) it is this object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueMessage {
    /// Layout version ([`QUEUE_MESSAGE_VERSION`]).
    pub v: u32,
    /// Deterministic alert id; consumers de-duplicate on it.
    pub alert_id: String,
    /// Queue the message is on.
    pub queue: Queue,
    /// Grade.
    pub grade: Grade,
    /// Signal that raised the alert.
    pub signal: SignalKind,
    /// IMEI.
    pub device_id: String,
    /// Lease id, when known.
    #[serde(default)]
    pub lease_id: Option<String>,
    /// Customer id, when known.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Event time of the alert (ms since epoch).
    pub event_time: i64,
    /// When the pipeline wrote the message (ms since epoch).
    pub emitted_at: i64,
    /// Every rule that fired, with its values.
    pub reasons: Vec<Reason>,
}

impl QueueMessage {
    /// The message for `alert`, emitted at `emitted_at` (ms).
    pub fn from_alert(alert: &Alert, emitted_at: i64) -> Self {
        Self {
            v: QUEUE_MESSAGE_VERSION,
            alert_id: alert.alert_id.clone(),
            queue: alert.queue,
            grade: alert.grade,
            signal: alert.signal,
            device_id: alert.device_id.clone(),
            lease_id: alert.lease_id.clone(),
            customer_id: alert.customer_id.clone(),
            event_time: alert.event_time,
            emitted_at,
            reasons: alert.reasons.clone(),
        }
    }
}
