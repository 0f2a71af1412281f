//! LeaseWatch data contracts: one source of truth for what flows through the pipeline.
//!
//! - [`DevicePing`] and [`ping_schema`]: a telemetry ping, as serde type and Arrow schema.
//! - [`LeaseState`], [`CreditState`] and [`Keys`]: state in Redis and its key layout.
//! - [`Signal`], [`Alert`], [`QueueMessage`]: what the rules emit and the queues carry.
//! - [`validate_ping`]: every problem of a ping, with field and value.
//! - [`json_schemas`]: JSON Schema documents for outside consumers, committed under
//!   `schemas/json/` and checked for drift by this crate's tests.
//!
//! Each serde type and its Arrow schema are declared side by side and a test checks
//! that they name the same fields with the same nullability.

mod alert;
mod ping;
mod state;
mod validate;

pub use alert::{
    Alert, Grade, QUEUE_MESSAGE_VERSION, Queue, QueueMessage, Reason, Signal, SignalKind,
    alert_archive_schema, signal_schema,
};
pub use ping::{DevicePing, EventKind, NetworkType, col, ping_schema, timestamp_type};
pub use state::{
    CreditBand, CreditState, DEFAULT_PREFIX, Keys, LeaseState, LeaseStatus, credit_schema,
    lease_schema,
};
pub use validate::{
    Limits, Problem, ProblemKind, check_accuracy, check_battery, check_device_id, check_event_time,
    check_iccid, check_imsi, check_lat, check_lon, check_mcc, check_mnc, check_position_pair,
    luhn_valid, validate_ping,
};

/// The JSON Schema documents published for outside consumers: `(file name, pretty JSON)`.
///
/// The files under `schemas/json/` are these, byte for byte; regenerate them with
/// `LEASEWATCH_BLESS=1 cargo test -p leasewatch-schemas`.
pub fn json_schemas() -> Vec<(&'static str, String)> {
    fn pretty(schema: schemars::Schema) -> String {
        let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
        s.push('\n');
        s
    }
    vec![
        (
            "ping.schema.json",
            pretty(schemars::schema_for!(DevicePing)),
        ),
        (
            "queue-message.schema.json",
            pretty(schemars::schema_for!(QueueMessage)),
        ),
        ("alert.schema.json", pretty(schemars::schema_for!(Alert))),
        (
            "lease.schema.json",
            pretty(schemars::schema_for!(LeaseState)),
        ),
        (
            "credit.schema.json",
            pretty(schemars::schema_for!(CreditState)),
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arrow_schema::Schema;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// Field names and the required (non-nullable) ones, from the serde type's JSON Schema.
    fn serde_fields(schema: schemars::Schema) -> (Vec<String>, BTreeSet<String>) {
        let v = schema.as_value();
        let props = v["properties"].as_object().expect("properties");
        let names = props.keys().cloned().collect();
        let required = v["required"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        (names, required)
    }

    fn assert_same_contract(name: &str, serde: schemars::Schema, arrow: &Schema) {
        let (names, required) = serde_fields(serde);
        let arrow_names: Vec<String> = arrow.fields().iter().map(|f| f.name().clone()).collect();
        let mut sorted_serde = names.clone();
        sorted_serde.sort();
        let mut sorted_arrow = arrow_names.clone();
        sorted_arrow.sort();
        assert_eq!(sorted_serde, sorted_arrow, "{name}: field names differ");
        for f in arrow.fields() {
            // A serde field that may be absent is nullable in Arrow; the ping's
            // receive_time is filled in by ingest, so it is optional on the wire too.
            let serde_required = required.contains(f.name());
            assert_eq!(
                serde_required,
                !f.is_nullable(),
                "{name}.{}: serde required={serde_required}, arrow nullable={}",
                f.name(),
                f.is_nullable()
            );
        }
    }

    #[test]
    fn serde_types_and_arrow_schemas_agree() {
        assert_same_contract(
            "DevicePing",
            schemars::schema_for!(DevicePing),
            &ping_schema(),
        );
        assert_same_contract("Signal", schemars::schema_for!(Signal), &signal_schema());
        // Vec fields are required by serde only when they have no default.
        let (lease_names, _) = serde_fields(schemars::schema_for!(LeaseState));
        assert_eq!(lease_names.len(), lease_schema().fields().len());
        let (credit_names, _) = serde_fields(schemars::schema_for!(CreditState));
        assert_eq!(credit_names.len(), credit_schema().fields().len());
        for (name, arrow) in [
            ("LeaseState", lease_schema()),
            ("CreditState", credit_schema()),
        ] {
            let serde = if name == "LeaseState" {
                &lease_names
            } else {
                &credit_names
            };
            for f in arrow.fields() {
                assert!(
                    serde.contains(f.name()),
                    "{name}: {} not in serde",
                    f.name()
                );
            }
        }
    }

    #[test]
    fn ping_schema_column_indices_match() {
        let s = ping_schema();
        for (idx, name) in [
            (col::DEVICE_ID, "device_id"),
            (col::EVENT_TIME, "event_time"),
            (col::RECEIVE_TIME, "receive_time"),
            (col::SEQ, "seq"),
            (col::LAT, "lat"),
            (col::LON, "lon"),
            (col::ACCURACY_M, "accuracy_m"),
            (col::ICCID, "iccid"),
            (col::IMSI, "imsi"),
            (col::MCC, "mcc"),
            (col::MNC, "mnc"),
            (col::BATTERY_PCT, "battery_pct"),
            (col::CHARGING, "charging"),
            (col::NETWORK_TYPE, "network_type"),
            (col::AGENT_ACTIVE, "agent_active"),
            (col::MDM_ACTIVE, "mdm_active"),
            (col::ROOTED, "rooted"),
            (col::MOCK_LOCATION, "mock_location"),
            (col::EVENT_KIND, "event_kind"),
        ] {
            assert_eq!(s.field(idx).name(), name);
        }
    }

    #[test]
    fn serde_ping_decodes_with_arrow_json_into_the_arrow_schema() {
        let ping = DevicePing {
            device_id: "490154203237518".into(),
            event_time: 1_780_000_000_000,
            receive_time: None,
            seq: Some(7),
            lat: Some(-33.8688),
            lon: Some(151.2093),
            accuracy_m: Some(8.5),
            iccid: None,
            imsi: Some("505011234567890".into()),
            mcc: Some(505),
            mnc: Some("01".into()),
            battery_pct: Some(55),
            charging: Some(true),
            network_type: Some(NetworkType::G5),
            agent_active: Some(true),
            mdm_active: None,
            rooted: Some(false),
            mock_location: Some(false),
            event_kind: EventKind::SimChange,
        };
        let line = serde_json::to_string(&ping).unwrap();
        let mut decoder = arrow_json::ReaderBuilder::new(ping_schema())
            .with_strict_mode(true)
            .build_decoder()
            .unwrap();
        decoder.decode(line.as_bytes()).unwrap();
        let batch = decoder.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 1);
        let kind = batch
            .column(col::EVENT_KIND)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(kind.value(0), "sim_change");
        let nt = batch
            .column(col::NETWORK_TYPE)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(nt.value(0), "5g");
        let back: DevicePing = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ping);
    }

    #[test]
    fn unknown_fields_are_rejected_by_serde() {
        let err = serde_json::from_str::<DevicePing>(
            r#"{"device_id":"490154203237518","event_time":1,"event_kind":"boot","x":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn key_layout() {
        let k = Keys::new("t1:lw:");
        assert_eq!(k.lease("490154203237518"), "t1:lw:lease:490154203237518");
        assert_eq!(k.credit("C42"), "t1:lw:credit:C42");
        assert_eq!(k.queue(Queue::Lock), "t1:lw:queue:lock");
        assert_eq!(Keys::default().risk("C1"), "lw:risk:C1");
        assert_eq!(Keys::default().lease_prefix(), "lw:lease:");
        assert_eq!(
            k.suppress("490154203237518", SignalKind::Tamper),
            "t1:lw:suppress:490154203237518:tamper"
        );
    }

    #[test]
    fn names_round_trip() {
        for k in SignalKind::ALL {
            assert_eq!(SignalKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        for g in Grade::ALL {
            assert_eq!(Grade::parse(g.as_str()), Some(g));
        }
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.as_str()), Some(q));
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.as_str())
            );
        }
        for e in EventKind::ALL {
            assert_eq!(EventKind::parse(e.as_str()), Some(e));
            assert_eq!(
                serde_json::to_string(&e).unwrap(),
                format!("\"{}\"", e.as_str())
            );
        }
        for n in NetworkType::ALL {
            assert_eq!(NetworkType::parse(n.as_str()), Some(n));
            assert_eq!(
                serde_json::to_string(&n).unwrap(),
                format!("\"{}\"", n.as_str())
            );
        }
        assert!(Grade::Critical > Grade::High && Grade::Low > Grade::Info);
    }

    /// The committed JSON Schema files are what the types generate.
    /// `LEASEWATCH_BLESS=1` rewrites them (then review the diff).
    #[test]
    fn json_schema_files_have_not_drifted() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let bless = std::env::var_os("LEASEWATCH_BLESS").is_some();
        for (file, text) in json_schemas() {
            let path = dir.join(file);
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "schemas/json/{file} is out of date with the Rust types; \
                 run `LEASEWATCH_BLESS=1 cargo test -p leasewatch-schemas` and review the diff"
            );
        }
    }
}
