//! The driven fleet: devices of the generator's model (`gen::device::profile`: IMEI,
//! SIMs, home, operator, permitted area; `gen::state`: lease and credit), staying near
//! home, and the pings they send, encoded by the generator's own writers (NDJSON line,
//! Arrow batch) so that they are the same bytes `gen` writes.
//!
//! A fraction of the devices trips a per-ping rule at a random moment of the run and
//! stays that way: half are rooted from then on (`tamper`), half get a SIM the lease
//! does not list (`sim_mismatch`, first ping `sim_change`). The first such ping of each
//! device is remembered so the queue reader can time its alert.

use std::collections::HashMap;
use std::io::Write;

use leasewatch_load::r#gen::device::{self, DAY, EVENT_KINDS, Ping, Plan, Profile, Run, flag};
use leasewatch_load::r#gen::geo::offset_m;
use leasewatch_load::r#gen::places::{self, Place};
use leasewatch_load::r#gen::rng::Rng;
use leasewatch_load::r#gen::state::lease_and_credit;
use leasewatch_load::r#gen::writer::{DeviceText, ping_batch, ping_json, warm};
use leasewatch_schemas::{CreditState, EventKind, LeaseState};

/// Random streams of the driver (the generator uses 1, 2 and 1..=4 << 32): the
/// schedule's request sizes,
pub const PACE_STREAM: u64 = 5 << 32;
/// which devices trip a rule and when: `DRIVE_BASE + device`,
pub const DRIVE_BASE: u64 = 6 << 32;
/// GPS noise, battery, radio per connection: `WORKER_BASE + connection`.
pub const WORKER_BASE: u64 = 7 << 32;

/// Which rule a device trips, and when (ms after the start of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    None,
    /// Rooted from `at` on: `tamper`.
    Rooted {
        at: u32,
    },
    /// An unregistered SIM (the profile's second SIM) from `at` on: `sim_mismatch`.
    SimSwap {
        at: u32,
    },
}

impl Trigger {
    fn at(self) -> Option<u32> {
        match self {
            Self::None => None,
            Self::Rooted { at } | Self::SimSwap { at } => Some(at),
        }
    }
}

/// The fleet, read-only once built; shared by every connection.
#[derive(Debug)]
pub struct Fleet {
    /// The generator's risky places for the seed (`places.geojson`).
    pub places: Vec<Place>,
    text: Vec<DeviceText>,
    homes: Vec<(i32, i32)>,
    triggers: Vec<Trigger>,
    /// Device id (IMEI) of every device that trips a rule, to its index.
    pub alerting: HashMap<String, u32>,
}

/// Lease and credit state of every device, in device order.
pub type State = Vec<(LeaseState, CreditState)>;

/// What one device of the build yields.
struct Built {
    text: DeviceText,
    home: (i32, i32),
    trigger: Trigger,
    imei: String,
    state: Option<(LeaseState, CreditState)>,
}

fn build_one(
    run: &Run,
    places: &[Place],
    i: u32,
    duration_ms: u64,
    alert_fraction: f64,
    with_state: bool,
) -> Built {
    let mut prof: Profile = device::profile(run, i, places);
    let state = with_state.then(|| lease_and_credit(run, &prof, &Plan::default()));
    let mut rng = Rng::new(run.seed, DRIVE_BASE + u64::from(i));
    let mut trigger = Trigger::None;
    if rng.chance(alert_fraction) {
        // Between 5% and 75% of the run, so the alert has time to come out.
        let lo = (duration_ms / 20) as i64;
        let hi = (duration_ms * 3 / 4) as i64;
        let at = u32::try_from(rng.range_i64(lo, hi.max(lo))).unwrap_or(u32::MAX);
        trigger = if rng.chance(0.5) {
            Trigger::Rooted { at }
        } else {
            let sim = Profile::new_sim(prof.country, prof.home_operator(), &mut rng);
            prof.sims.push(sim);
            Trigger::SimSwap { at }
        };
    }
    let home = (
        (prof.home.lat * 1e6).round() as i32,
        (prof.home.lon * 1e6).round() as i32,
    );
    Built {
        text: DeviceText::new(&prof, None),
        home,
        trigger,
        imei: prof.imei,
        state,
    }
}

impl Fleet {
    /// Builds `devices` devices of seed `seed` (profiles on every core), and their
    /// lease and credit state when `with_state`.
    pub fn build(
        devices: u32,
        seed: u64,
        duration_ms: u64,
        alert_fraction: f64,
        with_state: bool,
    ) -> (Self, Option<State>) {
        let now = super::stats::unix_ms_now();
        let start_ms = now.div_euclid(DAY) * DAY;
        let run = Run {
            seed,
            start_ms,
            end_ms: start_ms + DAY,
            days: 1,
        };
        let places = places::generate(seed);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 16) as u32;
        let chunk = devices.div_ceil(threads).max(1);
        let parts: Vec<Vec<Built>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (run, places) = (&run, &places);
                    s.spawn(move || {
                        let lo = (t * chunk).min(devices);
                        let hi = ((t + 1) * chunk).min(devices);
                        (lo..hi)
                            .map(|i| {
                                build_one(run, places, i, duration_ms, alert_fraction, with_state)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                // A panic while building a profile is a bug: pass it on.
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let n = devices as usize;
        let mut fleet = Fleet {
            places,
            text: Vec::with_capacity(n),
            homes: Vec::with_capacity(n),
            triggers: Vec::with_capacity(n),
            alerting: HashMap::new(),
        };
        let mut state = with_state.then(|| Vec::with_capacity(n));
        for b in parts.into_iter().flatten() {
            let idx = fleet.text.len() as u32;
            if b.trigger != Trigger::None {
                fleet.alerting.insert(b.imei, idx);
            }
            fleet.text.push(b.text);
            fleet.homes.push(b.home);
            fleet.triggers.push(b.trigger);
            if let (Some(out), Some(s)) = (state.as_mut(), b.state) {
                out.push(s);
            }
        }
        (fleet, state)
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Devices that trip a rule: (rooted, SIM swap).
    pub fn trigger_counts(&self) -> (usize, usize) {
        let rooted = self
            .triggers
            .iter()
            .filter(|t| matches!(t, Trigger::Rooted { .. }))
            .count();
        let swap = self
            .triggers
            .iter()
            .filter(|t| matches!(t, Trigger::SimSwap { .. }))
            .count();
        (rooted, swap)
    }
}

/// What the connections may change of a device: owned by exactly one connection.
#[derive(Debug, Clone, Copy)]
struct DeviceState {
    /// The fleet's home and trigger of the device, copied here: the shard's devices are
    /// every `step`-th of the fleet, so reading them from the fleet's lists was a cache
    /// miss each per ping.
    home: (i32, i32),
    trigger: Trigger,
    seq: u32,
    battery: u8,
    charging: bool,
    /// The first ping after the trigger was sent.
    tripped: bool,
}

/// The devices one connection sends for: every `step`-th device from `first`, pinged
/// round robin.
#[derive(Debug)]
pub struct Shard {
    first: u32,
    step: u32,
    states: Vec<DeviceState>,
    cursor: usize,
    rng: Rng,
}

/// One request to build.
#[derive(Debug, Clone, Copy)]
pub struct Upload {
    /// Number of pings.
    pub pings: u32,
    /// A phone upload (one device) rather than a gateway batch.
    pub phone: bool,
    /// When it is sent (unix ms): the newest ping's event time.
    pub t_ms: i64,
    /// The same, ms after the start of the run (for the triggers).
    pub rel_ms: u64,
}

/// A ping that trips its device's rule for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    pub device: u32,
    pub event_time: i64,
}

impl Shard {
    /// The devices of connection `index` of `count` (none when there are fewer devices
    /// than connections: the caller clamps).
    pub fn new(fleet: &Fleet, seed: u64, index: u32, count: u32) -> Self {
        let mut rng = Rng::new(seed, WORKER_BASE + u64::from(index));
        let n = fleet.len() as u32;
        let mine = if index < n {
            (n - index).div_ceil(count.max(1))
        } else {
            0
        };
        let step = count.max(1);
        let states = (0..mine)
            .map(|local| {
                let device = (index + step * local) as usize;
                DeviceState {
                    home: fleet.homes.get(device).copied().unwrap_or((0, 0)),
                    trigger: fleet.triggers.get(device).copied().unwrap_or(Trigger::None),
                    seq: 0,
                    battery: rng.range_i64(35, 100) as u8,
                    charging: false,
                    tripped: false,
                }
            })
            .collect();
        Self {
            first: index,
            step,
            states,
            cursor: 0,
            rng,
        }
    }

    /// Number of devices of this shard.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// The pings of request `r`: one device's buffered pings, one second apart, for a
    /// phone upload, else one ping each of the next devices (a gateway batch).
    pub fn pings(&mut self, r: Upload, out: &mut Vec<Ping>, tripped: &mut Vec<Tripped>) {
        out.clear();
        if self.states.is_empty() {
            return;
        }
        if r.phone {
            let local = self.next_device();
            for j in 0..r.pings {
                let back = i64::from(r.pings - 1 - j) * 1_000;
                out.push(self.ping(local, r.t_ms - back, r.rel_ms, tripped));
            }
        } else {
            for _ in 0..r.pings {
                let local = self.next_device();
                out.push(self.ping(local, r.t_ms, r.rel_ms, tripped));
            }
        }
    }

    fn next_device(&mut self) -> usize {
        let local = self.cursor;
        self.cursor = (self.cursor + 1) % self.states.len().max(1);
        local
    }

    fn ping(&mut self, local: usize, t_ms: i64, rel_ms: u64, tripped: &mut Vec<Tripped>) -> Ping {
        let device = self.first + self.step * local as u32;
        let rng = &mut self.rng;
        let Some(st) = self.states.get_mut(local) else {
            return empty_ping(device, t_ms);
        };
        let trigger = st.trigger;
        let active = trigger.at().is_some_and(|at| rel_ms >= u64::from(at));
        let mut kind = EventKind::Heartbeat;
        if active && !st.tripped {
            st.tripped = true;
            tripped.push(Tripped {
                device,
                event_time: t_ms,
            });
            if matches!(trigger, Trigger::SimSwap { .. }) {
                kind = EventKind::SimChange;
            }
        }
        // Battery: drains a point every few pings, charges from 15% back to full.
        if st.charging {
            st.battery = st.battery.saturating_add(1).min(100);
            st.charging = st.battery < 100;
        } else if rng.chance(0.25) {
            st.battery = st.battery.saturating_sub(1);
            st.charging = st.battery <= 15;
        }
        st.seq = st.seq.wrapping_add(1);
        // Indoors near home: accuracy 30-100 m, the fix scattered within it.
        let accuracy = 30.0 + rng.exp(18.0).min(70.0);
        let has_fix = rng.chance(0.97);
        let (home_lat, home_lon) = st.home;
        let (nx, ny) = rng.normal2();
        let sigma = accuracy / 1.515;
        let p = offset_m(
            leasewatch_load::r#gen::geo::Pos::new(
                f64::from(home_lat) / 1e6,
                f64::from(home_lon) / 1e6,
            ),
            nx * sigma,
            ny * sigma,
        );
        let network_type = match rng.below(20) {
            0..=12 => 1,  // wifi
            13..=17 => 4, // lte
            18 => 5,      // 5g
            _ => 3,       // 3g
        };
        let mut flags = flag::AGENT | flag::MDM | flag::HAS_NET;
        if has_fix {
            flags |= flag::HAS_POS;
        }
        if st.charging {
            flags |= flag::CHARGING;
        }
        let mut sim = 0;
        if active {
            match trigger {
                Trigger::Rooted { .. } => flags |= flag::ROOTED,
                Trigger::SimSwap { .. } => sim = 1,
                Trigger::None => {}
            }
        }
        Ping {
            receive_time: t_ms,
            event_time: t_ms,
            device,
            seq: st.seq,
            lat_e6: ((p.lat * 1e6).round() as i32).clamp(-90_000_000, 90_000_000),
            lon_e6: ((p.lon * 1e6).round() as i32).clamp(-180_000_000, 180_000_000),
            accuracy_dm: (accuracy * 10.0).round() as u16,
            battery: st.battery,
            sim,
            net: 0,
            network_type,
            flags,
            kind: kind_index(kind),
        }
    }
}

fn kind_index(k: EventKind) -> u8 {
    EVENT_KINDS.iter().position(|x| *x == k).unwrap_or(0) as u8
}

fn empty_ping(device: u32, t_ms: i64) -> Ping {
    Ping {
        receive_time: t_ms,
        event_time: t_ms,
        device,
        seq: 0,
        lat_e6: 0,
        lon_e6: 0,
        accuracy_dm: 0,
        battery: 50,
        sim: 0,
        net: 0,
        network_type: 1,
        flags: flag::AGENT | flag::MDM,
        kind: 0,
    }
}

/// The body formats of `POST /v1/pings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-ndjson`: one ping per line (what phones and gateways send).
    Ndjson,
    /// `application/json`: one array of pings.
    Json,
    /// `application/vnd.apache.arrow.stream`: an Arrow IPC stream of `ping_schema()`.
    Arrow,
}

impl BodyFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Json => "application/json",
            Self::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Json => "json",
            Self::Arrow => "arrow",
        }
    }
}

/// Encodes `pings` as a request body (gzipped when `gzip`), reusing `buf`.
pub fn encode(
    fleet: &Fleet,
    pings: &[Ping],
    format: BodyFormat,
    gzip: bool,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, String> {
    buf.clear();
    let mut ib = itoa::Buffer::new();
    if format != BodyFormat::Arrow {
        warm(
            pings
                .iter()
                .filter_map(|p| fleet.text.get(p.device as usize)),
        );
    }
    match format {
        BodyFormat::Ndjson => {
            for p in pings {
                if let Some(d) = fleet.text.get(p.device as usize) {
                    ping_json(buf, p, d, &mut ib);
                }
            }
        }
        BodyFormat::Json => {
            buf.push(b'[');
            for p in pings {
                if let Some(d) = fleet.text.get(p.device as usize) {
                    ping_json(buf, p, d, &mut ib);
                    buf.pop(); // the newline
                    buf.push(b',');
                }
            }
            if buf.last() == Some(&b',') {
                buf.pop();
            }
            buf.push(b']');
        }
        BodyFormat::Arrow => {
            let batch = ping_batch(pings, &fleet.text).map_err(|e| e.to_string())?;
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut *buf, &batch.schema())
                .map_err(|e| e.to_string())?;
            w.write(&batch).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
    }
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(buf.len() / 6),
            flate2::Compression::fast(),
        );
        enc.write_all(buf).map_err(|e| e.to_string())?;
        enc.finish().map_err(|e| e.to_string())
    } else {
        Ok(buf.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use leasewatch_schemas::{DevicePing, Limits, validate_ping};

    #[test]
    fn pings_are_valid_near_home_and_trip_once() {
        let (fleet, state) = Fleet::build(60, 3, 60_000, 0.5, true);
        let state = state.unwrap();
        assert_eq!(fleet.len(), 60);
        assert_eq!(state.len(), 60);
        let (rooted, swap) = fleet.trigger_counts();
        assert!(rooted > 0 && swap > 0, "{rooted} {swap}");
        let mut shard = Shard::new(&fleet, 3, 0, 1);
        let mut out = Vec::new();
        let mut tripped = Vec::new();
        let now = super::super::stats::unix_ms_now();
        let mut buf = Vec::new();
        for (rel, phone) in [
            (0u64, false),
            (59_000, false),
            (59_500, true),
            (59_900, false),
        ] {
            let r = Upload {
                pings: 60,
                phone,
                t_ms: now,
                rel_ms: rel,
            };
            shard.pings(r, &mut out, &mut tripped);
            let body = encode(&fleet, &out, BodyFormat::Ndjson, false, &mut buf).unwrap();
            for line in std::str::from_utf8(&body).unwrap().lines() {
                let p: DevicePing = serde_json::from_str(line).unwrap();
                let problems = validate_ping(&p, now, &Limits::default());
                assert!(problems.is_empty(), "{line}: {problems:?}");
            }
        }
        // Every alerting device tripped exactly once by the end.
        assert_eq!(tripped.len(), rooted + swap);
        let mut seen: Vec<u32> = tripped.iter().map(|t| t.device).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), tripped.len());
        // A swapped SIM is not the registered one; positions stay in the permitted area.
        for p in &out {
            let (lease, _) = &state[p.device as usize];
            if p.flags & flag::HAS_POS != 0 {
                let pos = leasewatch_load::r#gen::geo::Pos::new(
                    f64::from(p.lat_e6) / 1e6,
                    f64::from(p.lon_e6) / 1e6,
                );
                let cell = leasewatch_load::r#gen::geo::cell_of(pos).unwrap();
                assert!(lease.permitted_cells.contains(&cell));
            }
        }
        let json = encode(&fleet, &out, BodyFormat::Json, true, &mut buf).unwrap();
        let mut d = flate2::read::GzDecoder::new(&json[..]);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut d, &mut text).unwrap();
        let v: Vec<DevicePing> = serde_json::from_str(&text).unwrap();
        assert_eq!(v.len(), out.len());
        let arrow = encode(&fleet, &out, BodyFormat::Arrow, false, &mut buf).unwrap();
        let r = arrow_ipc::reader::StreamReader::try_new(&arrow[..], None).unwrap();
        let rows: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, out.len());
    }
}
