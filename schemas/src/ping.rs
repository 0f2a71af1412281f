//! `DevicePing`: one telemetry ping from a leased phone's agent.

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

/// What made the agent send a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Periodic ping (the common case).
    Heartbeat,
    /// The phone booted.
    Boot,
    /// The phone is shutting down cleanly.
    Shutdown,
    /// The agent saw a SIM card change.
    SimChange,
    /// A factory reset was started (sent by the bootloader-level agent).
    FactoryReset,
    /// The management agent was disabled or uninstalled.
    AgentRemoved,
    /// A significant location change reported between heartbeats.
    Location,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 7] = [
        Self::Heartbeat,
        Self::Boot,
        Self::Shutdown,
        Self::SimChange,
        Self::FactoryReset,
        Self::AgentRemoved,
        Self::Location,
    ];

    /// The wire name (as in JSON and SQL).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Boot => "boot",
            Self::Shutdown => "shutdown",
            Self::SimChange => "sim_change",
            Self::FactoryReset => "factory_reset",
            Self::AgentRemoved => "agent_removed",
            Self::Location => "location",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Radio access technology the phone was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    /// No connectivity (the ping was buffered and uploaded later).
    None,
    Wifi,
    #[serde(rename = "2g")]
    G2,
    #[serde(rename = "3g")]
    G3,
    Lte,
    #[serde(rename = "5g")]
    G5,
}

impl NetworkType {
    /// Every type, in declaration order.
    pub const ALL: [NetworkType; 6] = [
        Self::None,
        Self::Wifi,
        Self::G2,
        Self::G3,
        Self::Lte,
        Self::G5,
    ];

    /// The wire name (as in JSON and SQL).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Wifi => "wifi",
            Self::G2 => "2g",
            Self::G3 => "3g",
            Self::Lte => "lte",
            Self::G5 => "5g",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One telemetry ping, as phones send it (JSON object, one per NDJSON line) and as
/// the pipeline holds it (one row of [`ping_schema`]).
///
/// Times are milliseconds since the Unix epoch, UTC. Optional fields are absent or
/// `null` when the phone could not read them (no GPS fix, no SIM, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePing {
    /// IMEI of the phone: 15 decimal digits, Luhn check digit last.
    #[schemars(regex(pattern = r"^[0-9]{15}$"))]
    pub device_id: String,
    /// When the phone took the reading (ms since epoch, UTC, phone clock).
    pub event_time: i64,
    /// When LeaseWatch received it (ms since epoch, UTC); set by ingest, ignored from phones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_time: Option<i64>,
    /// Per-device sequence number of the ping, for de-duplication of retried uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Latitude in degrees (WGS84), -90..=90.
    #[schemars(range(min = -90.0, max = 90.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude in degrees (WGS84), -180..=180.
    #[schemars(range(min = -180.0, max = 180.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Horizontal accuracy of the fix in metres (68% radius), >= 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f32>,
    /// ICCID of the SIM in the phone (18-22 digits, Luhn check digit last).
    #[schemars(regex(pattern = r"^[0-9]{18,22}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    /// IMSI of the SIM (14-15 digits; the first three are its home MCC).
    #[schemars(regex(pattern = r"^[0-9]{14,15}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    /// Mobile country code of the serving network (ITU-T E.212), 200..=999.
    #[schemars(range(min = 200, max = 999))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<u16>,
    /// Mobile network code of the serving network, 2 or 3 digits as sent.
    #[schemars(regex(pattern = r"^[0-9]{2,3}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnc: Option<String>,
    /// Battery level in percent, 0..=100.
    #[schemars(range(max = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
    /// Whether the phone was charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// Radio access technology at the time of the ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_type: Option<NetworkType>,
    /// Whether the LeaseWatch agent / device admin was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_active: Option<bool>,
    /// Whether the MDM profile was installed and active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_active: Option<bool>,
    /// Whether the OS reports root / a modified system partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooted: Option<bool>,
    /// Whether the OS reports that the location came from a mock provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_location: Option<bool>,
    /// What made the agent send this ping.
    pub event_kind: EventKind,
}

/// Column names of [`ping_schema`], for code that builds or reads ping batches by index.
pub mod col {
    pub const DEVICE_ID: usize = 0;
    pub const EVENT_TIME: usize = 1;
    pub const RECEIVE_TIME: usize = 2;
    pub const SEQ: usize = 3;
    pub const LAT: usize = 4;
    pub const LON: usize = 5;
    pub const ACCURACY_M: usize = 6;
    pub const ICCID: usize = 7;
    pub const IMSI: usize = 8;
    pub const MCC: usize = 9;
    pub const MNC: usize = 10;
    pub const BATTERY_PCT: usize = 11;
    pub const CHARGING: usize = 12;
    pub const NETWORK_TYPE: usize = 13;
    pub const AGENT_ACTIVE: usize = 14;
    pub const MDM_ACTIVE: usize = 15;
    pub const ROOTED: usize = 16;
    pub const MOCK_LOCATION: usize = 17;
    pub const EVENT_KIND: usize = 18;
}

/// The Arrow type of every time column: milliseconds since epoch, UTC.
///
/// The zone is spelled as the offset `+00:00` (what DataFusion's `now()` uses), so
/// arrow parses it without the chrono-tz feature and its large zone database.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

static PING_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("receive_time", timestamp_type(), true),
        Field::new("seq", DataType::UInt64, true),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("accuracy_m", DataType::Float32, true),
        Field::new("iccid", DataType::Utf8, true),
        Field::new("imsi", DataType::Utf8, true),
        Field::new("mcc", DataType::UInt16, true),
        Field::new("mnc", DataType::Utf8, true),
        Field::new("battery_pct", DataType::UInt8, true),
        Field::new("charging", DataType::Boolean, true),
        Field::new("network_type", DataType::Utf8, true),
        Field::new("agent_active", DataType::Boolean, true),
        Field::new("mdm_active", DataType::Boolean, true),
        Field::new("rooted", DataType::Boolean, true),
        Field::new("mock_location", DataType::Boolean, true),
        Field::new("event_kind", DataType::Utf8, false),
    ]))
});

/// The Arrow schema of a batch of pings: one column per field of [`DevicePing`], in
/// declaration order, with the same names. Indices are in [`col`].
pub fn ping_schema() -> Arc<Schema> {
    Arc::clone(&PING_SCHEMA)
}
