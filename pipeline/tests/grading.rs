//! The product pipeline (`sql/`: the ten signals, grading and the queues) end to end,
//! through the real engine, lookups against a real `redis-server` (one per test), the
//! lease sweep, and the real Redis queue sink:
//!
//! - each signal fires on its golden device and on no other (a control device fires none);
//! - the collection ladder at each boundary day, the low-credit variants, and how device
//!   signals escalate on overdue leases, with the reasons as JSON;
//! - the queues hold each alert once across a replay of the same input, and suppression
//!   within the cooldown unless the grade rises;
//! - the README's consumer-group commands (the real `redis-cli`) read the messages.
//!
//! Inputs keep wide margins around every threshold in `sql/*.sql` (thresholds are tuned
//! there), e.g. stays of 12 h for a 6 h rule, gaps of 8 h for a 4 h rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use leasewatch::engine::{Engine, Lane};
use leasewatch_schemas::{
    Alert, CreditBand, CreditState, DevicePing, EventKind, Grade, LeaseState, Queue, SignalKind,
};
use std::collections::{BTreeMap, BTreeSet};
use support::product::{
    HOUR, LODWAR, MCC_UG, MIN, NAKURU, PAWN_SHOP, T0, all_queues, captured_alerts, credit,
    heartbeats, home, iccid, imei, lane_engine, lease, overdue, ping, product_engine, product_sql,
    put_state, run_to_end, stream, write_geofences, xlen,
};
use support::redis::RedisServer;

/// Devices of a scenario by role, for readable failures.
#[derive(Default)]
struct Scenario {
    pings: Vec<DevicePing>,
    leases: Vec<LeaseState>,
    credits: Vec<CreditState>,
    roles: BTreeMap<String, String>,
}

impl Scenario {
    /// Registers device `n` of test `test` as `role`; returns its id, customer and SIM.
    fn device(&mut self, test: u32, n: u32, role: &str) -> (String, String, String) {
        let d = imei(test, n);
        self.roles.insert(d.clone(), role.to_string());
        (d, format!("C-{test}-{n}"), iccid(test * 1000 + n))
    }

    fn role(&self, device: &str) -> String {
        self.roles
            .get(device)
            .cloned()
            .unwrap_or_else(|| format!("unknown device {device}"))
    }

    /// Stores the leases and credit state in `server`.
    fn store(&self, server: &RedisServer) {
        put_state(server, &self.leases, &self.credits);
    }

    /// Signal -> roles of the devices that alerted it.
    fn fired(&self, alerts: &[Alert]) -> BTreeMap<SignalKind, BTreeSet<String>> {
        let mut m: BTreeMap<SignalKind, BTreeSet<String>> = BTreeMap::new();
        for a in alerts {
            m.entry(a.signal)
                .or_default()
                .insert(self.role(&a.device_id));
        }
        m
    }
}

/// Every 15 minutes.
const BEAT: i64 = 15 * MIN;
/// The end of the 24 h timeline of the signal catalogue test.
const END: i64 = T0 + 24 * HOUR;

fn set<const N: usize>(roles: [&str; N]) -> BTreeSet<String> {
    roles.iter().map(|s| s.to_string()).collect()
}

/// A paid-up lease permitted around `places`, with band A credit.
fn current(
    s: &mut Scenario,
    d: &str,
    c: &str,
    sim: Option<&str>,
    places: &[support::product::Place],
) {
    s.leases.push(lease(d, c, places, sim));
    s.credits.push(credit(c, CreditBand::A));
}

/// One device per signal, a control device, and a device without lease state, over 24 h
/// of pings every 15 minutes (each device pings until the end unless said otherwise).
fn catalogue() -> Scenario {
    const T: u32 = 201;
    let mut s = Scenario::default();

    let (d, c, sim) = s.device(T, 1, "control");
    current(&mut s, &d, &c, Some(&sim), &[home(1)]);
    s.pings.extend(heartbeats(&d, T0, END, BEAT, home(1), &sim));

    // sim_mismatch: a SIM other than the registered one, all day (one ICCID: no swaps).
    let (d, c, sim) = s.device(T, 2, "sim_mismatch");
    current(&mut s, &d, &c, Some(&sim), &[home(2)]);
    s.pings.extend(heartbeats(
        &d,
        T0,
        END,
        BEAT,
        home(2),
        &iccid(T * 1000 + 900),
    ));

    // sim_swap_frequent: 6 more SIMs within 12 minutes; no SIM registered on the lease,
    // so sim_mismatch cannot fire.
    let (d, c, sim) = s.device(T, 3, "sim_swap_frequent");
    current(&mut s, &d, &c, None, &[home(3)]);
    s.pings.extend(heartbeats(&d, T0, END, BEAT, home(3), &sim));
    for k in 1..=6 {
        s.pings.push(ping(
            &d,
            T0 + 8 * HOUR + 2 * k * MIN,
            home(3),
            &iccid(T * 1000 + 910 + k as u32),
        ));
    }

    // out_of_area: one hour in Nakuru (140 km away), an hour's drive each way.
    let (d, c, sim) = s.device(T, 4, "out_of_area");
    current(&mut s, &d, &c, Some(&sim), &[home(4)]);
    s.pings
        .extend(heartbeats(&d, T0, T0 + 9 * HOUR, BEAT, home(4), &sim));
    s.pings.extend(heartbeats(
        &d,
        T0 + 10 * HOUR,
        T0 + 11 * HOUR,
        BEAT,
        NAKURU,
        &sim,
    ));
    s.pings
        .extend(heartbeats(&d, T0 + 12 * HOUR, END, BEAT, home(4), &sim));

    // risky_place_dwell: two hours inside the pawn shop (its cell is permitted).
    let (d, c, sim) = s.device(T, 5, "risky_place_dwell");
    current(&mut s, &d, &c, Some(&sim), &[home(5), PAWN_SHOP]);
    s.pings.extend(heartbeats(
        &d,
        T0,
        T0 + 6 * HOUR - BEAT,
        BEAT,
        home(5),
        &sim,
    ));
    s.pings.extend(heartbeats(
        &d,
        T0 + 6 * HOUR,
        T0 + 8 * HOUR,
        5 * MIN,
        PAWN_SHOP,
        &sim,
    ));
    s.pings.extend(heartbeats(
        &d,
        T0 + 8 * HOUR + BEAT,
        END,
        BEAT,
        home(5),
        &sim,
    ));

    // abnormal_dwell: twelve hours in Nakuru (also out_of_area, ping by ping).
    let (d, c, sim) = s.device(T, 6, "abnormal_dwell");
    current(&mut s, &d, &c, Some(&sim), &[home(6)]);
    s.pings
        .extend(heartbeats(&d, T0, T0 + 5 * HOUR, BEAT, home(6), &sim));
    s.pings.extend(heartbeats(
        &d,
        T0 + 6 * HOUR,
        T0 + 18 * HOUR,
        BEAT,
        NAKURU,
        &sim,
    ));
    s.pings
        .extend(heartbeats(&d, T0 + 19 * HOUR, END, BEAT, home(6), &sim));

    // impossible_travel: one fix in Lodwar (500 km away) 5 minutes after one at home.
    // Lodwar is in the permitted area, so only the speed is wrong.
    let (d, c, sim) = s.device(T, 7, "impossible_travel");
    current(&mut s, &d, &c, Some(&sim), &[home(7), LODWAR]);
    s.pings.extend(heartbeats(&d, T0, END, BEAT, home(7), &sim));
    s.pings
        .push(ping(&d, T0 + 12 * HOUR + 5 * MIN, LODWAR, &sim));

    // cross_border: an hour on a Ugandan network.
    let (d, c, sim) = s.device(T, 8, "cross_border");
    current(&mut s, &d, &c, Some(&sim), &[home(8)]);
    for mut p in heartbeats(&d, T0, END, BEAT, home(8), &sim) {
        if (T0 + 9 * HOUR..=T0 + 10 * HOUR).contains(&p.event_time) {
            p.mcc = Some(MCC_UG);
        }
        s.pings.push(p);
    }

    // device_dark: 8 hours without a ping, then pinging again.
    let (d, c, sim) = s.device(T, 9, "device_dark");
    current(&mut s, &d, &c, Some(&sim), &[home(9)]);
    s.pings
        .extend(heartbeats(&d, T0, T0 + 6 * HOUR, BEAT, home(9), &sim));
    s.pings
        .extend(heartbeats(&d, T0 + 14 * HOUR, END, BEAT, home(9), &sim));

    // tamper: a rooted phone, then the agent removed.
    let (d, c, sim) = s.device(T, 10, "tamper");
    current(&mut s, &d, &c, Some(&sim), &[home(10)]);
    s.pings
        .extend(heartbeats(&d, T0, END, BEAT, home(10), &sim));
    let mut p = ping(&d, T0 + 7 * HOUR + 5 * MIN, home(10), &sim);
    p.rooted = Some(true);
    s.pings.push(p);
    let mut p = ping(&d, T0 + 7 * HOUR + 10 * MIN, home(10), &sim);
    p.event_kind = EventKind::AgentRemoved;
    p.agent_active = Some(false);
    s.pings.push(p);

    // overdue: 10 days past due, pinging normally (the sweep finds it).
    let (d, c, sim) = s.device(T, 11, "overdue");
    s.leases
        .push(overdue(lease(&d, &c, &[home(11)], Some(&sim)), 10));
    s.credits.push(credit(&c, CreditBand::A));
    s.pings
        .extend(heartbeats(&d, T0, END, BEAT, home(11), &sim));

    // no lease state at all: only the per-ping tamper rule can grade it (info, review).
    let (d, _, sim) = s.device(T, 12, "no_lease");
    s.pings
        .extend(heartbeats(&d, T0, END, BEAT, home(12), &sim));
    let mut p = ping(&d, T0 + 3 * HOUR + 5 * MIN, home(12), &sim);
    p.mock_location = Some(true);
    s.pings.push(p);

    // a device whose pings stop an hour before the end of the input: not dark.
    let (d, c, sim) = s.device(T, 13, "stops_at_end");
    current(&mut s, &d, &c, Some(&sim), &[home(13)]);
    s.pings
        .extend(heartbeats(&d, T0, END - HOUR, BEAT, home(13), &sim));

    s
}

#[tokio::test]
async fn each_signal_fires_on_its_device_and_nowhere_else() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = catalogue();
    s.store(&server);
    let fences = write_geofences(tmp.path());
    let mut e = product_engine(tmp.path(), &server, Some(fences), true).await;
    run_to_end(&mut e, &s.pings, 256).await;
    let alerts = captured_alerts(&e, "alerts");
    let archived = captured_alerts(&e, "alert_archive");
    assert_eq!(
        alerts.len(),
        archived.len(),
        "the archive gets every queue message"
    );

    let fired = s.fired(&alerts);
    let expected: BTreeMap<SignalKind, BTreeSet<String>> = BTreeMap::from([
        (SignalKind::SimMismatch, set(["sim_mismatch"])),
        (SignalKind::SimSwapFrequent, set(["sim_swap_frequent"])),
        (
            SignalKind::OutOfArea,
            set(["out_of_area", "abnormal_dwell"]),
        ),
        (SignalKind::RiskyPlaceDwell, set(["risky_place_dwell"])),
        (SignalKind::AbnormalDwell, set(["abnormal_dwell"])),
        (SignalKind::ImpossibleTravel, set(["impossible_travel"])),
        (SignalKind::CrossBorder, set(["cross_border"])),
        (SignalKind::DeviceDark, set(["device_dark"])),
        (SignalKind::Tamper, set(["tamper", "no_lease"])),
        (SignalKind::Overdue, set(["overdue"])),
    ]);
    assert_eq!(fired, expected, "signal -> devices that alerted it");

    // Where and how each fired.
    let of = |role: &str, sig: SignalKind| -> Vec<&Alert> {
        alerts
            .iter()
            .filter(|a| a.signal == sig && s.role(&a.device_id) == role)
            .collect()
    };
    // per-ping rules: exactly the pings that break them
    assert_eq!(of("sim_mismatch", SignalKind::SimMismatch).len(), 97);
    assert_eq!(of("cross_border", SignalKind::CrossBorder).len(), 5);
    assert_eq!(of("out_of_area", SignalKind::OutOfArea).len(), 5);
    assert_eq!(of("abnormal_dwell", SignalKind::OutOfArea).len(), 49);
    assert_eq!(of("tamper", SignalKind::Tamper).len(), 2);
    assert_eq!(of("no_lease", SignalKind::Tamper).len(), 1);
    assert_eq!(of("overdue", SignalKind::Overdue).len(), 1);
    for a in of("out_of_area", SignalKind::OutOfArea) {
        assert!(
            (T0 + 10 * HOUR..=T0 + 11 * HOUR).contains(&a.event_time),
            "out_of_area only in Nakuru: {a:?}"
        );
    }
    let details: BTreeSet<String> = of("tamper", SignalKind::Tamper)
        .iter()
        .filter_map(|a| a.reasons.first().and_then(|r| r.detail.clone()))
        .collect();
    assert_eq!(details, set(["rooted", "agent_removed"]));
    // windowed rules: windows overlapping the incident only
    for a in of("abnormal_dwell", SignalKind::AbnormalDwell) {
        let (ws, we) = (a.window_start.unwrap(), a.window_end.unwrap());
        assert!(
            ws < T0 + 18 * HOUR && we > T0 + 6 * HOUR,
            "window [{ws}, {we}) misses the stay: {a:?}"
        );
    }
    for a in of("risky_place_dwell", SignalKind::RiskyPlaceDwell) {
        let (ws, we) = (a.window_start.unwrap(), a.window_end.unwrap());
        assert!(ws < T0 + 8 * HOUR && we > T0 + 6 * HOUR, "{a:?}");
        assert_eq!(a.reasons[0].detail.as_deref(), Some("pawn-cbd-1"));
    }
    for a in of("impossible_travel", SignalKind::ImpossibleTravel) {
        let (ws, we) = (a.window_start.unwrap(), a.window_end.unwrap());
        let jump = T0 + 12 * HOUR + 5 * MIN;
        assert!(ws <= jump && we > jump - BEAT, "{a:?}");
    }
    for a in of("sim_swap_frequent", SignalKind::SimSwapFrequent) {
        let (ws, we) = (a.window_start.unwrap(), a.window_end.unwrap());
        assert!(
            ws <= T0 + 8 * HOUR + 12 * MIN && we > T0 + 8 * HOUR,
            "{a:?}"
        );
    }
    // dark exactly once: the session before the 8 h gap, not the one the input ended
    let dark = of("device_dark", SignalKind::DeviceDark);
    assert_eq!(dark.len(), 1, "{dark:?}");
    assert_eq!(
        dark[0].window_start,
        Some(T0 + 6 * HOUR),
        "from the last ping"
    );
    let dark_end = dark[0].window_end.unwrap();
    assert!(
        dark_end > T0 + 6 * HOUR && dark_end < T0 + 14 * HOUR,
        "{:?}",
        dark[0]
    );

    // Grading on paid-up leases: review; SIM/tamper/travel/risky medium, others low;
    // no lease state: info. The overdue lease is on the ladder (10 DPD: call).
    for a in &alerts {
        let role = s.role(&a.device_id);
        let want = match (a.signal, role.as_str()) {
            (_, "no_lease") => (Queue::Review, Grade::Info),
            (SignalKind::Overdue, _) => (Queue::Call, Grade::Medium),
            (
                SignalKind::SimMismatch
                | SignalKind::SimSwapFrequent
                | SignalKind::Tamper
                | SignalKind::ImpossibleTravel
                | SignalKind::RiskyPlaceDwell,
                _,
            ) => (Queue::Review, Grade::Medium),
            _ => (Queue::Review, Grade::Low),
        };
        assert_eq!((a.queue, a.grade), want, "{role}: {a:?}");
        assert_eq!(a.reasons[0].rule, a.signal.as_str(), "{a:?}");
        if let (Some(v), Some(t)) = (a.reasons[0].value, a.reasons[0].threshold)
            && a.signal != SignalKind::OutOfArea
        {
            assert!(v >= t, "the value that fired is past the threshold: {a:?}");
        }
        if role == "no_lease" {
            assert_eq!(
                (a.lease_id.as_deref(), a.customer_id.as_deref()),
                (None, None)
            );
            assert!(
                a.reasons.iter().any(|r| r.rule == "no_lease_state"),
                "{a:?}"
            );
        } else {
            assert_eq!(a.lease_id, Some(format!("L-{}", a.device_id)), "{a:?}");
        }
    }
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids.len(), alerts.len(), "alert ids are unique");

    // The same input cut into small batches gives the same alerts.
    let mut small =
        product_engine(tmp.path(), &server, Some(write_geofences(tmp.path())), true).await;
    run_to_end(&mut small, &s.pings, 7).await;
    let key = |v: &[Alert]| -> BTreeSet<(String, Queue, Grade)> {
        v.iter()
            .map(|a| (a.alert_id.clone(), a.queue, a.grade))
            .collect()
    };
    let again = captured_alerts(&small, "alerts");
    assert_eq!(again.len(), alerts.len());
    assert_eq!(key(&again), key(&alerts), "batching changed the alerts");
}

/// `leasewatch run` splits the queries into two engines (`engine.split_lanes`): the
/// per-ping lane and the windowed lane, each fed every ping. Together they write exactly
/// the alerts (and archive rows) one engine running every query writes, and neither
/// writes the other's signals.
#[tokio::test]
async fn the_two_lanes_together_alert_as_one_engine() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = catalogue();
    s.store(&server);
    let fences = write_geofences(tmp.path());
    let run = |lane: Lane| {
        let (server, tmp, fences, pings) = (&server, tmp.path(), fences.clone(), &s.pings);
        async move {
            let mut e = lane_engine(tmp, server, Some(fences), true, lane).await;
            run_to_end(&mut e, pings, 256).await;
            let sorted = |sink: &str| {
                let mut v = captured_alerts(&e, sink);
                v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id).then(a.queue.cmp(&b.queue)));
                v
            };
            (sorted("alerts"), sorted("alert_archive"), e.stats().clone())
        }
    };
    let (all, all_archived, all_stats) = run(Lane::All).await;
    let (per_ping, per_ping_archived, per_ping_stats) = run(Lane::PerPing).await;
    let (windowed, windowed_archived, windowed_stats) = run(Lane::Windowed).await;

    let windowed_signals = [
        SignalKind::SimSwapFrequent,
        SignalKind::RiskyPlaceDwell,
        SignalKind::AbnormalDwell,
        SignalKind::ImpossibleTravel,
        SignalKind::DeviceDark,
    ];
    assert!(!per_ping.is_empty() && !windowed.is_empty());
    for a in &per_ping {
        assert!(
            !windowed_signals.contains(&a.signal),
            "per-ping lane: {a:?}"
        );
    }
    for a in &windowed {
        assert!(windowed_signals.contains(&a.signal), "windowed lane: {a:?}");
    }
    let merge = |a: &[Alert], b: &[Alert]| {
        let mut v: Vec<Alert> = a.iter().chain(b).cloned().collect();
        v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id).then(a.queue.cmp(&b.queue)));
        v
    };
    assert_eq!(merge(&per_ping, &windowed), all, "alerts");
    assert_eq!(
        merge(&per_ping_archived, &windowed_archived),
        all_archived,
        "archive rows"
    );
    // Pings are counted once (by the per-ping lane), windows by the windowed lane.
    assert_eq!(per_ping_stats.pings_in, all_stats.pings_in);
    assert_eq!(windowed_stats.pings_in, 0);
    assert_eq!(per_ping_stats.windows_emitted, 0);
    assert_eq!(windowed_stats.windows_emitted, all_stats.windows_emitted);

    // A checkpoint restores only into an engine of its lane.
    let fresh = |lane| lane_engine(tmp.path(), &server, Some(fences.clone()), true, lane);
    let mut all = fresh(Lane::All).await;
    all.process(&support::product::batches(&s.pings, 256)[0])
        .await
        .unwrap();
    let bytes = all.checkpoint().unwrap();
    let err = fresh(Lane::PerPing)
        .await
        .restore(&bytes)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the all lane, not the per_ping lane") && err.contains("engine.split_lanes"),
        "{err}"
    );
    fresh(Lane::All).await.restore(&bytes).unwrap();
}

/// Leases on the collection ladder (swept, no pings), and devices whose signals are
/// graded against overdue and current leases.
fn ladder() -> Scenario {
    const T: u32 = 301;
    let mut s = Scenario::default();
    let mut n = 0;
    let mut swept = |s: &mut Scenario, role: &str, dpd: i32, band: Option<CreditBand>| {
        n += 1;
        let (d, c, sim) = s.device(T, n, role);
        s.leases
            .push(overdue(lease(&d, &c, &[home(n)], Some(&sim)), dpd));
        if let Some(b) = band {
            s.credits.push(credit(&c, b));
        }
    };
    for (dpd, band) in [
        (2, CreditBand::A),
        (3, CreditBand::A),
        (5, CreditBand::B),
        (6, CreditBand::C),
        (7, CreditBand::A),
        (10, CreditBand::B),
        (14, CreditBand::C),
        (15, CreditBand::A),
        (59, CreditBand::B),
        (60, CreditBand::C),
    ] {
        swept(&mut s, &format!("dpd {dpd}"), dpd, Some(band));
    }
    for (dpd, band) in [
        (2, CreditBand::D),
        (4, CreditBand::E),
        (5, CreditBand::D),
        (9, CreditBand::E),
        (10, CreditBand::D),
        (44, CreditBand::E),
        (45, CreditBand::D),
    ] {
        swept(&mut s, &format!("low {band:?} dpd {dpd}"), dpd, Some(band));
    }
    swept(&mut s, "no credit dpd 5", 5, None);
    swept(&mut s, "current", 0, Some(CreditBand::A));

    // Device signals: one ping each (a SIM other than the registered one, a Ugandan
    // network), or two hours in the pawn shop.
    let mut signal_device =
        |s: &mut Scenario, role: &str, dpd: i32, band: CreditBand, kind: &str| {
            n += 1;
            let (d, c, sim) = s.device(T, n, role);
            s.leases.push(overdue(
                lease(&d, &c, &[home(n), PAWN_SHOP], Some(&sim)),
                dpd,
            ));
            s.credits.push(credit(&c, band));
            match kind {
                "sim" => s
                    .pings
                    .push(ping(&d, T0 + HOUR, home(n), &iccid(T * 1000 + 900 + n))),
                "border" => {
                    let mut p = ping(&d, T0 + HOUR, home(n), &sim);
                    p.mcc = Some(MCC_UG);
                    s.pings.push(p);
                }
                _ => s
                    .pings
                    .extend(heartbeats(&d, T0, T0 + 2 * HOUR, 5 * MIN, PAWN_SHOP, &sim)),
            }
            // a last ping near the end of the input, so nobody's silence counts as dark
            s.pings.push(ping(&d, T0 + 3 * HOUR, home(n), &sim));
        };
    signal_device(&mut s, "sim on overdue", 10, CreditBand::A, "sim");
    signal_device(&mut s, "sim on current", 0, CreditBand::A, "sim");
    signal_device(&mut s, "sim on low band dpd 1", 1, CreditBand::E, "sim");
    signal_device(&mut s, "risky on current", 0, CreditBand::A, "risky");
    signal_device(&mut s, "risky on overdue", 8, CreditBand::B, "risky");
    signal_device(&mut s, "border on overdue", 20, CreditBand::A, "border");
    s
}

/// Parsed `reasons` of an alert, as (rule, value, threshold, detail).
type ReasonRow = (String, Option<f64>, Option<f64>, Option<String>);

fn reasons(a: &Alert) -> Vec<ReasonRow> {
    a.reasons
        .iter()
        .map(|r| (r.rule.clone(), r.value, r.threshold, r.detail.clone()))
        .collect()
}

#[tokio::test]
async fn dpd_ladder_low_credit_and_escalation() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = ladder();
    s.store(&server);
    let fences = write_geofences(tmp.path());
    let mut e = product_engine(tmp.path(), &server, Some(fences), true).await;
    run_to_end(&mut e, &s.pings, 64).await;
    let alerts = captured_alerts(&e, "alerts");

    // role -> (signal, queue, grade) of each message, sorted
    let mut got: BTreeMap<String, BTreeSet<(SignalKind, Queue, Grade)>> = BTreeMap::new();
    for a in &alerts {
        got.entry(s.role(&a.device_id))
            .or_default()
            .insert((a.signal, a.queue, a.grade));
    }
    use Grade::*;
    use Queue::*;
    use SignalKind::*;
    let want = |v: &[(SignalKind, Queue, Grade)]| v.iter().copied().collect::<BTreeSet<_>>();
    let expected: BTreeMap<String, BTreeSet<(SignalKind, Queue, Grade)>> = [
        ("dpd 3", want(&[(Overdue, Sms, Low)])),
        ("dpd 5", want(&[(Overdue, Sms, Low)])),
        ("dpd 6", want(&[(Overdue, Sms, Low)])),
        ("dpd 7", want(&[(Overdue, Call, Medium)])),
        ("dpd 10", want(&[(Overdue, Call, Medium)])),
        ("dpd 14", want(&[(Overdue, Call, Medium)])),
        ("dpd 15", want(&[(Overdue, Field, High)])),
        ("dpd 59", want(&[(Overdue, Field, High)])),
        ("dpd 60", want(&[(Overdue, Legal, Critical)])),
        ("low E dpd 4", want(&[(Overdue, Sms, Low)])),
        ("low D dpd 5", want(&[(Overdue, Call, Medium)])),
        ("low E dpd 9", want(&[(Overdue, Call, Medium)])),
        ("low D dpd 10", want(&[(Overdue, Field, High)])),
        ("low E dpd 44", want(&[(Overdue, Field, High)])),
        ("low D dpd 45", want(&[(Overdue, Legal, Critical)])),
        ("no credit dpd 5", want(&[(Overdue, Sms, Low)])),
        (
            "sim on overdue",
            want(&[
                (SimMismatch, Call, Critical),
                (SimMismatch, Lock, Critical),
                (Overdue, Call, Medium),
            ]),
        ),
        ("sim on current", want(&[(SimMismatch, Review, Medium)])),
        (
            "sim on low band dpd 1",
            want(&[(SimMismatch, Call, Critical), (SimMismatch, Lock, Critical)]),
        ),
        (
            "risky on current",
            want(&[(RiskyPlaceDwell, Review, Medium)]),
        ),
        (
            "risky on overdue",
            want(&[(RiskyPlaceDwell, Field, High), (Overdue, Call, Medium)]),
        ),
        (
            "border on overdue",
            want(&[(CrossBorder, Field, High), (Overdue, Field, High)]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, expected, "role -> (signal, queue, grade)");
    // (dpd 2, low D dpd 2 and current: no alert at all; they are absent above)

    let one = |role: &str, sig: SignalKind, q: Queue| -> &Alert {
        let v: Vec<&Alert> = alerts
            .iter()
            .filter(|a| s.role(&a.device_id) == role && a.signal == sig && a.queue == q)
            .collect();
        assert_eq!(v.len(), 1, "{role} {sig:?} {q:?}: {v:#?}");
        v[0]
    };

    // Overdue alerts: one per device and ladder step, with the DPD and band they carry.
    let a = one("dpd 10", Overdue, Call);
    assert_eq!(a.alert_id, format!("overdue:{}:call", a.device_id));
    assert_eq!(a.days_past_due, Some(10));
    assert_eq!(a.credit_band, Some(CreditBand::B));
    let r = reasons(a);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].0, "overdue");
    assert_eq!(r[0].1, Some(10.0));
    assert!(r[0].2.is_some_and(|t| t <= 10.0), "{r:?}");
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(10.0),
            Some(7.0),
            Some("call".into())
        )
    );
    let r = reasons(one("low D dpd 10", Overdue, Field));
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(10.0),
            Some(10.0),
            Some("field".into())
        )
    );
    assert_eq!(
        r[2],
        ("low_credit_band".into(), None, None, Some("D".into()))
    );
    let r = reasons(one("dpd 60", Overdue, Legal));
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(60.0),
            Some(60.0),
            Some("legal".into())
        )
    );
    let r = reasons(one("low D dpd 45", Overdue, Legal));
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(45.0),
            Some(45.0),
            Some("legal".into())
        )
    );
    let r = reasons(one("dpd 3", Overdue, Sms));
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(3.0),
            Some(3.0),
            Some("sms".into())
        )
    );

    // SIM mismatch on an overdue lease: a call and a lock request, both critical, the
    // lock's id derived from the call's.
    let call = one("sim on overdue", SimMismatch, Call);
    let lock = one("sim on overdue", SimMismatch, Lock);
    assert_eq!(lock.alert_id, format!("{}:lock", call.alert_id));
    assert_eq!(call.reasons, lock.reasons);
    let r = reasons(call);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].0, "sim_mismatch");
    let detail = r[0].3.clone().unwrap();
    assert!(
        detail.starts_with("seen ") && detail.contains(", registered "),
        "{detail}"
    );
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(10.0),
            Some(7.0),
            Some("call".into())
        )
    );
    // on a low band the lease counts as overdue from 1 DPD
    let r = reasons(one("sim on low band dpd 1", SimMismatch, Call));
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[1].0, "dpd_ladder");
    assert_eq!(r[1].1, Some(1.0));
    assert_eq!(
        r[2],
        ("low_credit_band".into(), None, None, Some("E".into()))
    );
    // on a current lease: review, and the only reason is the rule itself
    let r = reasons(one("sim on current", SimMismatch, Review));
    assert_eq!(r.len(), 1, "{r:?}");

    // Risky place: review when current, a field visit when overdue (not the ladder's call).
    for a in alerts.iter().filter(|a| a.signal == RiskyPlaceDwell) {
        let r = reasons(a);
        assert_eq!(r[0].0, "risky_place_dwell");
        assert!(r[0].1.unwrap() >= r[0].2.unwrap(), "{r:?}");
        assert_eq!(r[0].3.as_deref(), Some("pawn-cbd-1"));
        if s.role(&a.device_id) == "risky on overdue" {
            assert_eq!(
                r[1],
                (
                    "dpd_ladder".into(),
                    Some(8.0),
                    Some(7.0),
                    Some("call".into())
                )
            );
        } else {
            assert_eq!(r.len(), 1, "{r:?}");
        }
    }
    let r = reasons(one("border on overdue", CrossBorder, Field));
    assert_eq!(r[0].0, "cross_border");
    assert_eq!(r[0].1, Some(f64::from(MCC_UG)));
    assert_eq!(r[0].3.as_deref(), Some("UG network, lease in KE"));
    assert_eq!(
        r[1],
        (
            "dpd_ladder".into(),
            Some(20.0),
            Some(15.0),
            Some("field".into())
        )
    );
}

/// A small input that writes to several queues, including a call + lock pair.
fn replay_input() -> Scenario {
    const T: u32 = 401;
    let mut s = Scenario::default();
    for (n, dpd) in [(1, 4), (2, 8), (3, 16), (4, 61)] {
        let (d, c, sim) = s.device(T, n, &format!("dpd {dpd}"));
        s.leases
            .push(overdue(lease(&d, &c, &[home(n)], Some(&sim)), dpd));
        s.credits.push(credit(&c, CreditBand::B));
        s.pings
            .extend(heartbeats(&d, T0, T0 + 2 * HOUR, BEAT, home(n), &sim));
    }
    let (d, c, sim) = s.device(T, 5, "sim swapped on overdue");
    s.leases
        .push(overdue(lease(&d, &c, &[home(5)], Some(&sim)), 9));
    s.credits.push(credit(&c, CreditBand::C));
    s.pings.extend(heartbeats(
        &d,
        T0,
        T0 + 2 * HOUR,
        BEAT,
        home(5),
        &iccid(T * 1000 + 900),
    ));
    let (d, c, sim) = s.device(T, 6, "tamper on current");
    s.leases.push(lease(&d, &c, &[home(6)], Some(&sim)));
    s.pings
        .extend(heartbeats(&d, T0, T0 + 2 * HOUR, BEAT, home(6), &sim));
    let mut p = ping(&d, T0 + HOUR + 5 * MIN, home(6), &sim);
    p.rooted = Some(true);
    s.pings.push(p);
    // no lease state: review, without lease and customer ids (and no risk profile)
    let (d, _, sim) = s.device(T, 7, "tamper without lease");
    s.pings
        .extend(heartbeats(&d, T0, T0 + 2 * HOUR, BEAT, home(7), &sim));
    let mut p = ping(&d, T0 + HOUR + 10 * MIN, home(7), &sim);
    p.mock_location = Some(true);
    s.pings.push(p);
    s
}

/// Distinct alert ids in the Parquet archive folder `dir`.
fn archive_ids(dir: &std::path::Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut files = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        files += 1;
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = b.column_by_name("alert_id").unwrap();
            let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
            let col = arrow::array::AsArray::as_string::<i32>(&col);
            ids.extend(col.iter().flatten().map(str::to_string));
        }
    }
    assert!(files > 0, "no Parquet file in {}", dir.display());
    ids
}

fn queue_ids(server: &RedisServer) -> BTreeMap<Queue, Vec<String>> {
    all_queues(server)
        .into_iter()
        .map(|(q, entries)| (q, entries.into_iter().map(|(_, m)| m.alert_id).collect()))
        .collect()
}

#[tokio::test]
async fn a_replay_of_the_same_input_queues_each_alert_once() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = replay_input();
    s.store(&server);

    let mut first = product_engine(
        tmp.path(),
        &server,
        Some(write_geofences(tmp.path())),
        false,
    )
    .await;
    run_to_end(&mut first, &s.pings, 16).await;
    let run1 = first.redis_sink_stats();
    drop(first);
    let after_first = queue_ids(&server);
    let lens: BTreeMap<Queue, usize> = Queue::ALL
        .into_iter()
        .map(|q| (q, xlen(&server, &format!("lw:queue:{}", q.as_str()))))
        .collect();
    for (q, ids) in &after_first {
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{q:?} holds an alert twice: {ids:?}"
        );
        assert_eq!(lens[q], ids.len());
    }
    // what the first run queued
    let nonempty: BTreeSet<Queue> = after_first
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(q, _)| *q)
        .collect();
    assert_eq!(
        nonempty,
        BTreeSet::from([
            Queue::Sms,
            Queue::Call,
            Queue::Field,
            Queue::Legal,
            Queue::Lock,
            Queue::Review
        ]),
        "{after_first:#?}"
    );
    // a message without lease state carries no lease or customer id
    let review = stream(&server, "lw:queue:review");
    let orphan: Vec<_> = review
        .iter()
        .filter(|(_, m)| s.role(&m.device_id) == "tamper without lease")
        .collect();
    assert_eq!(orphan.len(), 1, "{review:?}");
    let m = &orphan[0].1;
    assert_eq!((m.signal, m.grade), (SignalKind::Tamper, Grade::Info));
    assert_eq!(
        (m.lease_id.as_deref(), m.customer_id.as_deref()),
        (None, None)
    );
    assert!(m.reasons.iter().any(|r| r.rule == "no_lease_state"));
    // The archive (under the temp dir, not the checkout) has every routed row, the
    // suppressed ones included.
    let archived = archive_ids(&tmp.path().join("out/archive"));
    for ids in after_first.values() {
        for id in ids {
            assert!(archived.contains(id), "{id} not archived");
        }
    }
    let call = &after_first[&Queue::Call];
    let lock = &after_first[&Queue::Lock];
    // The cooldown (1 h) runs in event time: mismatch pings an hour or more apart each
    // request a lock again, closer ones are suppressed.
    assert!(!lock.is_empty(), "a lock request");
    let times: Vec<i64> = lock
        .iter()
        .map(|id| {
            id.trim_end_matches(":lock")
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= HOUR,
            "lock requests closer than the cooldown: {lock:?}"
        );
    }
    for l in lock {
        assert!(
            call.contains(&l.trim_end_matches(":lock").to_string()),
            "{l}"
        );
    }

    // The same input again, by a new engine (a restarted process), against the same Redis.
    let mut second = product_engine(
        tmp.path(),
        &server,
        Some(write_geofences(tmp.path())),
        false,
    )
    .await;
    run_to_end(&mut second, &s.pings, 16).await;
    let run2 = second.redis_sink_stats();
    drop(second);
    assert_eq!(queue_ids(&server), after_first, "nothing queued twice");
    for q in Queue::ALL {
        assert_eq!(
            xlen(&server, &format!("lw:queue:{}", q.as_str())),
            lens[&q],
            "XLEN {q:?}"
        );
    }
    let counts = |v: &[std::sync::Arc<leasewatch::sink::redis::SinkStats>]| {
        let load =
            |f: fn(&leasewatch::sink::redis::SinkStats) -> u64| v.iter().map(|s| f(s)).sum::<u64>();
        (
            load(|s| s.written.load(std::sync::atomic::Ordering::Relaxed)),
            load(|s| s.duplicates.load(std::sync::atomic::Ordering::Relaxed)),
            load(|s| s.suppressed.load(std::sync::atomic::Ordering::Relaxed)),
        )
    };
    assert_eq!(
        archive_ids(&tmp.path().join("out/archive")),
        archived,
        "the replay archived the same alerts again (at least once), nothing else"
    );
    let (w1, d1, s1) = counts(&run1);
    let (w2, d2, s2) = counts(&run2);
    let queued: usize = after_first.values().map(Vec::len).sum();
    assert_eq!(w1 as usize, queued, "run 1 wrote what the queues hold");
    assert_eq!(d1, 0, "run 1 saw no duplicates");
    assert!(s1 > 0, "repeated per-ping alerts were suppressed in run 1");
    assert_eq!(
        (w2, d2, s2),
        (0, w1 + s1, 0),
        "run 2 found every alert id already decided"
    );
}

#[tokio::test]
async fn redis_down_mid_run_delays_the_pipeline_but_loses_no_alert() {
    let s = replay_input();
    let pings = &s.pings;
    let all = support::product::batches(pings, 8);
    assert!(all.len() >= 6);

    // Reference: the same input with Redis up all along.
    let reference = {
        let server = RedisServer::start();
        let tmp = tempfile::tempdir().unwrap();
        s.store(&server);
        let mut e = product_engine(
            tmp.path(),
            &server,
            Some(write_geofences(tmp.path())),
            false,
        )
        .await;
        run_to_end(&mut e, pings, 8).await;
        drop(e);
        queue_ids(&server)
    };

    let mut server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    s.store(&server);
    let mut e = product_engine(
        tmp.path(),
        &server,
        Some(write_geofences(tmp.path())),
        false,
    )
    .await;
    let half = all.len() / 2;
    for b in &all[..half] {
        e.process(b).await.unwrap();
    }
    // Persist what is there (state, queues, alert marks), then crash Redis for 1.5 s
    // while the second half is processed.
    let _: () = redis::cmd("SAVE").query(&mut server.conn()).unwrap();
    server.kill();
    let down = std::time::Duration::from_millis(1_500);
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(down);
        server.restart();
        server
    });
    let started = std::time::Instant::now();
    for b in &all[half..] {
        e.process(b).await.unwrap();
    }
    let at = e.max_event_time().unwrap();
    let server = restarter.join().unwrap();
    e.sweep_leases(at).await.unwrap();
    e.finish().await.unwrap();
    assert!(started.elapsed() >= down, "the pipeline waited for Redis");
    let held: u64 = e
        .redis_sink_stats()
        .iter()
        .map(|s| s.redis.retries.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        + e.lookups()
            .iter()
            .map(|(_, l)| l.stats().snapshot().retries)
            .sum::<u64>();
    assert!(held >= 1, "the outage was retried");
    drop(e);
    assert_eq!(queue_ids(&server), reference, "every alert queued, once");
}

/// Pings of a device with `rooted` set at `times`.
fn rooted(device: &str, sim: &str, n: u32, times: &[i64]) -> Vec<DevicePing> {
    times
        .iter()
        .map(|t| {
            let mut p = ping(device, *t, home(n), sim);
            p.rooted = Some(true);
            p
        })
        .collect()
}

/// Feeds `pings` to a fresh engine on the product SQL and finishes (no sweep);
/// returns (written, duplicates, suppressed) of its Redis sink.
async fn run_once(
    tmp: &std::path::Path,
    server: &RedisServer,
    pings: &[DevicePing],
) -> (u64, u64, u64) {
    let mut e: Engine = product_engine(tmp, server, Some(write_geofences(tmp)), false).await;
    for b in support::product::batches(pings, 16) {
        e.process(&b).await.unwrap();
    }
    e.finish().await.unwrap();
    let stats = e.redis_sink_stats();
    let o = std::sync::atomic::Ordering::Relaxed;
    let sum =
        |f: &dyn Fn(&leasewatch::sink::redis::SinkStats) -> u64| stats.iter().map(|s| f(s)).sum();
    (
        sum(&|s| s.written.load(o)),
        sum(&|s| s.duplicates.load(o)),
        sum(&|s| s.suppressed.load(o)),
    )
}

#[tokio::test]
async fn suppression_within_the_cooldown_unless_the_grade_rises() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = imei(402, 1);
    let sim = iccid(402_001);
    let c = "C-402-1";
    put_state(
        &server,
        &[lease(&d, c, &[home(1)], Some(&sim))],
        &[credit(c, CreditBand::A)],
    );
    // 1. current lease: three tamper pings, ten minutes apart -> one review message
    let r = run_once(
        tmp.path(),
        &server,
        &rooted(&d, &sim, 1, &[T0, T0 + 10 * MIN, T0 + 20 * MIN]),
    )
    .await;
    assert_eq!(r, (1, 0, 2), "written, duplicates, suppressed");
    // 2. the lease goes 9 days overdue: the grade rises to critical -> call + lock once
    put_state(
        &server,
        &[overdue(lease(&d, c, &[home(1)], Some(&sim)), 9)],
        &[],
    );
    let r = run_once(
        tmp.path(),
        &server,
        &rooted(&d, &sim, 1, &[T0 + 30 * MIN, T0 + 40 * MIN]),
    )
    .await;
    assert_eq!(
        r,
        (2, 0, 2),
        "call + lock written, their repeats suppressed"
    );
    // 3. paid up again: a lower grade within the cooldown is suppressed
    put_state(&server, &[lease(&d, c, &[home(1)], Some(&sim))], &[]);
    let r = run_once(tmp.path(), &server, &rooted(&d, &sim, 1, &[T0 + 50 * MIN])).await;
    assert_eq!(r, (0, 0, 1));

    let q = all_queues(&server);
    let mine = |queue: Queue| -> Vec<leasewatch_schemas::QueueMessage> {
        q.iter()
            .filter(|(k, _)| *k == queue)
            .flat_map(|(_, v)| v.iter().map(|(_, m)| m.clone()))
            .filter(|m| m.device_id == d)
            .collect()
    };
    let review = mine(Queue::Review);
    assert_eq!(review.len(), 1);
    assert_eq!(
        (review[0].signal, review[0].grade),
        (SignalKind::Tamper, Grade::Medium)
    );
    assert_eq!(review[0].event_time, T0);
    let call = mine(Queue::Call);
    assert_eq!(call.len(), 1);
    assert_eq!(
        (call[0].grade, call[0].event_time),
        (Grade::Critical, T0 + 30 * MIN)
    );
    let lock = mine(Queue::Lock);
    assert_eq!(lock.len(), 1);
    assert_eq!(lock[0].alert_id, format!("{}:lock", call[0].alert_id));
    // the suppressed ids are remembered, so a replay decides the same
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("lw:alert:*")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(marks.len(), 3 + 2 * 2 + 1, "{marks:?}");
    // and the risk profile counted what was written
    let count: i64 = redis::cmd("HGET")
        .arg(format!("lw:risk:{c}"))
        .arg("count:tamper")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(count, 3);
}

/// Runs `redis-cli -p PORT args...` and returns its stdout.
fn redis_cli(server: &RedisServer, args: &[String]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(server.port().to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("redis-cli is not installed ({e}): apt-get install -y redis-tools")
        });
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `redis-cli` command lines of the README's consumer-group example (the ```sh
/// block holding `XREADGROUP`), each split as the shell would (single quotes, comments).
fn readme_consumer_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let block = readme
        .split("```sh")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("XREADGROUP"))
        .expect("README.md has a ```sh block with the XREADGROUP consumer example");
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("redis-cli "))
        .map(|l| {
            let mut words = Vec::new();
            let (mut word, mut quoted, mut any) = (String::new(), false, false);
            for c in l.chars() {
                match c {
                    '\'' => (quoted, any) = (!quoted, true),
                    '#' if !quoted && !any => break,
                    c if c.is_whitespace() && !quoted => {
                        if any {
                            words.push(std::mem::take(&mut word));
                            any = false;
                        }
                    }
                    c => {
                        word.push(c);
                        any = true;
                    }
                }
            }
            if any {
                words.push(word);
            }
            words
        })
        .collect()
}

#[tokio::test]
async fn the_readme_consumer_group_commands_read_the_call_queue() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let s = replay_input();
    s.store(&server);
    let mut e = product_engine(
        tmp.path(),
        &server,
        Some(write_geofences(tmp.path())),
        false,
    )
    .await;
    run_to_end(&mut e, &s.pings, 16).await;
    drop(e);
    let calls = stream(&server, "lw:queue:call");
    assert!(calls.len() >= 2, "{calls:?}");

    // The README's commands, verbatim: create the group, read, acknowledge.
    let cmds = readme_consumer_commands();
    let verb = |c: &Vec<String>| c.first().map(|v| v.to_ascii_uppercase());
    let find = |v: &str| {
        cmds.iter()
            .find(|c| verb(c).as_deref() == Some(v))
            .unwrap_or_else(|| panic!("README example has no {v}: {cmds:?}"))
            .clone()
    };
    let (create, read, mut ack) = (find("XGROUP"), find("XREADGROUP"), find("XACK"));
    assert_eq!(redis_cli(&server, &create).trim(), "OK");
    let reply = redis_cli(&server, &read);
    let lines: Vec<&str> = reply.lines().collect();
    for (entry_id, m) in &calls {
        assert!(
            lines.contains(&entry_id.as_str()),
            "{entry_id} not read:\n{reply}"
        );
        assert!(
            lines.contains(&m.alert_id.as_str()),
            "{} not read:\n{reply}",
            m.alert_id
        );
    }
    for field in [
        "alert_id",
        "queue",
        "grade",
        "signal",
        "device_id",
        "lease_id",
        "customer_id",
        "reasons",
    ] {
        assert!(lines.contains(&field), "no field {field}:\n{reply}");
    }
    // Delivered to the group's consumer, pending until acknowledged.
    let group = create[3].clone();
    let pending = |server: &RedisServer| -> usize {
        let out = redis_cli(
            server,
            &["XPENDING".into(), "lw:queue:call".into(), group.clone()],
        );
        out.lines().next().unwrap().trim().parse().unwrap()
    };
    assert_eq!(pending(&server), calls.len());
    // The README's XACK with a real entry id.
    let last = ack.len() - 1;
    ack[last] = calls[0].0.clone();
    assert_eq!(redis_cli(&server, &ack).trim(), "1");
    assert_eq!(pending(&server), calls.len() - 1);
}

/// One lease with text fields that are valid JSON but not what `state load` would write
/// (another writer, a schema drift): the rest of the batch must still be queued.
async fn odd_state_still_queues(odd: LeaseState, odd_credit: Option<&str>) {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = imei(403, 1);
    let sim = iccid(403_001);
    put_state(
        &server,
        &[odd.clone(), lease(&d, "C-403-1", &[home(1)], Some(&sim))],
        &[],
    );
    if let Some(json) = odd_credit {
        let _: () = redis::cmd("SET")
            .arg(format!("lw:credit:{}", odd.customer_id))
            .arg(json)
            .query(&mut server.conn())
            .unwrap();
    }
    let mut e = product_engine(
        tmp.path(),
        &server,
        Some(write_geofences(tmp.path())),
        false,
    )
    .await;
    let mut pings = rooted(&d, &sim, 1, &[T0]);
    pings.push(ping(&odd.device_id, T0, home(2), &iccid(403_900)));
    pings.extend(rooted(&odd.device_id, &iccid(403_900), 2, &[T0 + MIN]));
    for b in support::product::batches(&pings, 16) {
        e.process(&b)
            .await
            .expect("a batch with odd lease state is processed");
    }
    e.finish().await.unwrap();
    let review = stream(&server, "lw:queue:review");
    assert!(
        review.iter().any(|(_, m)| m.device_id == d),
        "the well-formed device's alert is queued: {review:?}"
    );
}

#[tokio::test]

async fn a_credit_band_outside_a_to_e_does_not_stop_the_pipeline() {
    let odd = overdue(lease(&imei(403, 2), "C-403-2", &[home(2)], None), 9);
    odd_state_still_queues(
        odd,
        Some(r#"{"customer_id":"C-403-2","score":500,"band":"F","prior_defaults":0,"flags":[]}"#),
    )
    .await;
}

#[tokio::test]
async fn control_characters_in_lease_text_do_not_stop_the_pipeline() {
    let mut odd = lease(&imei(403, 2), "C-403-2", &[home(2)], Some("x"));
    odd.registered_iccid = Some("8963\t0000000000000001".into());
    odd_state_still_queues(odd, None).await;
}

/// `leasewatch replay` (the binary) sweeps the leases once at the end of its input, so
/// an overdue lease reaches its queue from a replay too, and the summary reports what
/// each lookup table cost (round trips per batch, cache hit rate).
#[test]
fn replay_sweeps_leases_at_the_end_and_reports_lookups() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let sql = tmp.path().join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    for (name, text) in product_sql(&tmp.path().join("out")) {
        std::fs::write(sql.join(name), text).unwrap();
    }
    let late = imei(90, 1);
    let current = imei(90, 2);
    let sim = iccid(90);
    put_state(
        &server,
        &[
            overdue(lease(&late, "C-90-1", &[home(1)], Some(&sim)), 8),
            lease(&current, "C-90-2", &[home(2)], Some(&sim)),
        ],
        &[
            credit("C-90-1", CreditBand::B),
            credit("C-90-2", CreditBand::B),
        ],
    );
    let mut lines = String::new();
    for p in heartbeats(&current, T0, T0 + 2 * HOUR, BEAT, home(2), &sim) {
        lines.push_str(&serde_json::to_string(&p).unwrap());
        lines.push('\n');
    }
    std::fs::write(tmp.path().join("pings.ndjson"), lines).unwrap();
    let geofences = write_geofences(tmp.path());
    std::fs::write(
        tmp.path().join("leasewatch.toml"),
        format!(
            "[engine]\nsql_dir = {:?}\ngeofences = {:?}\nredis_url = {:?}\n[replay]\nprogress = false\n",
            sql.to_str().unwrap(),
            geofences.to_str().unwrap(),
            server.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasewatch"))
        .current_dir(tmp.path())
        .args([
            "replay",
            "--config",
            "leasewatch.toml",
            "--input",
            "pings.ndjson",
        ])
        .args(["--summary-json", "summary.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The device that never pinged: its overdue alert (DPD 8: call) came from the sweep.
    let call = stream(&server, "lw:queue:call");
    assert!(
        call.iter()
            .any(|(_, m)| m.alert_id == format!("overdue:{late}:call")),
        "no overdue alert from the sweep: {call:?}\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("summary.json")).unwrap())
            .unwrap();
    let leases = &summary["lookups"]["leases"];
    assert!(leases["batches"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        leases["round_trips"].as_u64().unwrap() <= leases["batches"].as_u64().unwrap(),
        "at most one round trip per batch: {summary}"
    );
    assert!(stderr.contains("lookup leases:"), "{stderr}");
}
