//! Lease and credit state, as loaded into Redis and joined by the lookup tables.
//!
//! # Redis key layout
//!
//! Every value is a JSON string (`SET key json`), never a hash: Arroyo's Redis lookup
//! connector reads state with one `MGET` per batch and parses each value as JSON, and
//! the embedded engine reads the same keys the same way, so both engines share one Redis.
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `lw:lease:{device_id}` | [`LeaseState`] as JSON | `leasewatch state load` |
//! | `lw:credit:{customer_id}` | [`CreditState`] as JSON | `leasewatch state load` |
//! | `lw:risk:{customer_id}` | hash of counts by signal, `last_grade`, `last_alert_ms` | the alert sink |
//! | `lw:queue:{queue}` | Redis Stream of [`crate::QueueMessage`] entries | the alert sink |
//! | `lw:alert:{alert_id}` | `1` with a TTL: ids already written (idempotence) | the alert sink |
//! | `lw:suppress:{device_id}:{signal}` | rank of the last grade, with the cooldown as TTL | the alert sink |
//!
//! The prefix `lw:` is configurable per deployment (tests use one prefix each).

use arrow_schema::{DataType, Field, Schema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "lw:";

/// Redis keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix` (e.g. `lw:` or `test42:lw:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Key prefix of lease state (the lookup table's key prefix).
    pub fn lease_prefix(&self) -> String {
        format!("{}lease:", self.prefix)
    }

    /// Key prefix of credit state.
    pub fn credit_prefix(&self) -> String {
        format!("{}credit:", self.prefix)
    }

    /// Key of a device's lease state.
    pub fn lease(&self, device_id: &str) -> String {
        format!("{}lease:{device_id}", self.prefix)
    }

    /// Key of a customer's credit state.
    pub fn credit(&self, customer_id: &str) -> String {
        format!("{}credit:{customer_id}", self.prefix)
    }

    /// Key of a customer's risk profile hash.
    pub fn risk(&self, customer_id: &str) -> String {
        format!("{}risk:{customer_id}", self.prefix)
    }

    /// Key of a collection queue stream.
    pub fn queue(&self, queue: crate::Queue) -> String {
        format!("{}queue:{}", self.prefix, queue.as_str())
    }

    /// Key of the alert suppression state of a device and signal.
    pub fn suppress(&self, device_id: &str, signal: crate::SignalKind) -> String {
        format!("{}suppress:{device_id}:{}", self.prefix, signal.as_str())
    }

    /// Key marking an alert id as written.
    pub fn alert_seen(&self, alert_id: &str) -> String {
        format!("{}alert:{alert_id}", self.prefix)
    }
}

/// Lifecycle status of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    /// Paid up or within grace.
    Active,
    /// At least one instalment past due.
    Overdue,
    /// Handed to collections / written off.
    Defaulted,
    /// Ended; the phone was returned or bought out.
    Closed,
}

/// A lease: which device, whose, where it may be, and how it is paying.
///
/// Stored at `lw:lease:{device_id}`. Money is in minor units (cents) of the lease currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseState {
    /// Lease id.
    pub lease_id: String,
    /// IMEI of the leased phone.
    pub device_id: String,
    /// Customer id (no PII: an opaque id).
    pub customer_id: String,
    /// ICCID of the SIM registered on the lease (None: no SIM registered).
    #[serde(default)]
    pub registered_iccid: Option<String>,
    /// IMSI of the SIM registered on the lease.
    #[serde(default)]
    pub registered_imsi: Option<String>,
    /// ISO 3166 alpha-2 of the country the phone may be used in.
    pub lease_country: String,
    /// Permitted area: H3 cells (at `area_res`) around home, work and usual places.
    pub permitted_cells: Vec<i64>,
    /// H3 resolution of `permitted_cells`.
    pub area_res: u8,
    /// Lease status.
    pub status: LeaseStatus,
    /// Next (or oldest unpaid) due date, `YYYY-MM-DD`.
    pub due_date: String,
    /// Days past due of the oldest unpaid instalment (0 when paid up).
    pub days_past_due: i32,
    /// Amount due now, minor units.
    pub amount_due: i64,
    /// Deposit held, minor units.
    pub deposit: i64,
    /// Monthly rent, minor units.
    pub monthly_rent: i64,
    /// Currency of the amounts, ISO 4217.
    pub currency: String,
}

/// Credit band, best to worst.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum CreditBand {
    A,
    B,
    C,
    D,
    E,
}

impl CreditBand {
    /// The band's letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
            Self::D => "D",
            Self::E => "E",
        }
    }
}

/// A customer's credit assessment. Stored at `lw:credit:{customer_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditState {
    /// Customer id.
    pub customer_id: String,
    /// Bureau score, 300..=850.
    pub score: i32,
    /// Band derived from the score and history (A best).
    pub band: CreditBand,
    /// Defaults on this or other platforms.
    pub prior_defaults: i32,
    /// Flags from onboarding, e.g. `kyc_passed`, `guarantor`, `watchlist`.
    #[serde(default)]
    pub flags: Vec<String>,
}

static LEASE_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("lease_id", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("registered_iccid", DataType::Utf8, true),
        Field::new("registered_imsi", DataType::Utf8, true),
        Field::new("lease_country", DataType::Utf8, false),
        Field::new(
            "permitted_cells",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, false))),
            false,
        ),
        Field::new("area_res", DataType::UInt8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("due_date", DataType::Utf8, false),
        Field::new("days_past_due", DataType::Int32, false),
        Field::new("amount_due", DataType::Int64, false),
        Field::new("deposit", DataType::Int64, false),
        Field::new("monthly_rent", DataType::Int64, false),
        Field::new("currency", DataType::Utf8, false),
    ]))
});

static CREDIT_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("score", DataType::Int32, false),
        Field::new("band", DataType::Utf8, false),
        Field::new("prior_defaults", DataType::Int32, false),
        Field::new(
            "flags",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, false))),
            false,
        ),
    ]))
});

/// Arrow schema of lease state rows (one column per field of [`LeaseState`]).
pub fn lease_schema() -> Arc<Schema> {
    Arc::clone(&LEASE_SCHEMA)
}

/// Arrow schema of credit state rows (one column per field of [`CreditState`]).
pub fn credit_schema() -> Arc<Schema> {
    Arc::clone(&CREDIT_SCHEMA)
}
