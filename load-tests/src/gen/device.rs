//! One phone: who it is (IMEI, SIMs, home, work), what it does day by day (the plan),
//! and the pings it sends (the emitter).
//!
//! A device's whole run is planned up front as a list of segments (stay at a place,
//! move between two places, switched off, dark, in flight) plus overlays (SIM changes,
//! tamper flags, offline windows, event pings). The emitter then walks the plan in
//! time order and produces pings on demand, chunk by chunk, so the generator never
//! holds more than one chunk of pings of the fleet in memory.

use leasewatch_schemas::{EventKind, NetworkType};

use super::geo::{
    COUNTRIES, City, Operator, Pos, TACS, airport, cell_of, corridor, destination, disk_of,
    haversine_m, lerp, luhn_digit, offset_m,
};
use super::places::{self, Place};
use super::rng::{Rng, stream};

pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;
pub const DAY: i64 = 24 * HOUR;

/// The run's time window: `[start_ms, end_ms)`, whole UTC days.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub seed: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub days: u32,
}

/// A SIM card: identifiers as phones report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sim {
    pub iccid: String,
    pub imsi: String,
}

/// Where a device usually goes besides home and work.
#[derive(Debug, Clone, Copy)]
pub struct Usual {
    /// City index in the device's country.
    pub city: usize,
    pub pos: Pos,
    /// Far enough to fly to (a tricky `domestic_flight` candidate), else a drive.
    pub by_air: bool,
}

/// Who a device is: fixed for the run.
#[derive(Debug, Clone)]
pub struct Profile {
    pub index: u32,
    pub country: usize,
    pub city: usize,
    pub home: Pos,
    pub work: Option<Pos>,
    pub errands: [Pos; 2],
    pub usual: Option<Usual>,
    pub imei: String,
    /// Home operator (index into the country's operators).
    pub operator: usize,
    /// SIMs the device will see; `sims[0]` is the one in it at the start.
    pub sims: Vec<Sim>,
    pub skew_ms: i64,
    pub heartbeat_ms: i64,
    pub home_wifi: bool,
    pub work_wifi: bool,
    pub night_charger: bool,
    pub drain_pct_h: f64,
    pub leave_min: i64,
    pub work_end_min: i64,
    pub commute_kmh: f64,
    /// Permitted H3 cells (sorted, unique).
    pub permitted: Vec<i64>,
}

impl Profile {
    pub fn country(&self) -> &'static super::geo::Country {
        &COUNTRIES[self.country]
    }

    pub fn city(&self) -> &'static City {
        &COUNTRIES[self.country].cities[self.city]
    }

    pub fn home_operator(&self) -> Operator {
        self.country().operators[self.operator]
    }

    /// Local midnight (device home time zone) of run day `d`, as UTC ms.
    pub fn local_midnight(&self, run: &Run, d: i64) -> i64 {
        run.start_ms + d * DAY - i64::from(self.city().utc_offset_min) * MIN
    }

    /// Whether the true position `p` is in the permitted area.
    pub fn permitted_at(&self, p: Pos) -> bool {
        cell_of(p).is_some_and(|c| self.permitted.binary_search(&c).is_ok())
    }

    /// A new SIM of `op`, with random subscriber digits.
    pub fn new_sim(country: usize, op: Operator, rng: &mut Rng) -> Sim {
        let c = &COUNTRIES[country];
        let mut iccid = String::with_capacity(20);
        iccid.push_str("89");
        iccid.push_str(c.iccid_cc);
        iccid.push_str(op.issuer);
        let body = op.iccid_len - 1 - iccid.len();
        rng.digits(body, &mut iccid);
        let check = luhn_digit(&iccid);
        iccid.push(char::from(b'0' + check));
        let mut imsi = String::with_capacity(15);
        imsi.push_str(itoa::Buffer::new().format(op.mcc));
        imsi.push_str(op.mnc);
        let msin = 15 - imsi.len();
        rng.digits(msin, &mut imsi);
        Sim { iccid, imsi }
    }
}

/// An IMEI: a real-looking TAC, a serial unique per device index, a Luhn digit.
pub fn imei(index: u32, seed: u64, rng: &mut Rng) -> String {
    let tac = TACS[rng.index(TACS.len())];
    // 7919 is prime to 10^6: distinct indices below 10^6 give distinct serials.
    let serial = (u64::from(index) * 7919 + (seed % 1_000_000)) % 1_000_000;
    let mut s = String::with_capacity(15);
    s.push_str(tac);
    s.push_str(&format!("{serial:06}"));
    let check = luhn_digit(&s);
    s.push(char::from(b'0' + check));
    s
}

/// A point in the city at a random distance (denser towards the centre).
fn city_point(city: &City, rng: &mut Rng) -> Pos {
    let r = city.radius_km * 1000.0 * rng.f64().powf(0.7);
    destination(city.centre, rng.range_f64(0.0, 360.0), r)
}

/// Builds a device's profile (no behaviour yet).
pub fn profile(run: &Run, index: u32, places: &[Place]) -> Profile {
    let mut rng = Rng::new(run.seed, stream::DEVICE_BASE + u64::from(index));
    let weights: Vec<f64> = COUNTRIES.iter().map(|c| c.weight).collect();
    let country = rng.weighted(&weights);
    let c = &COUNTRIES[country];
    let cw: Vec<f64> = c.cities.iter().map(|x| x.weight).collect();
    let city = rng.weighted(&cw);
    let cty = &c.cities[city];

    // Homes and workplaces keep away from risky places, so that ordinary days never
    // dwell in one.
    let pick = |rng: &mut Rng| {
        let mut p = city_point(cty, rng);
        for _ in 0..20 {
            if !places::near_any(places, country, p, 400.0) {
                break;
            }
            p = city_point(cty, rng);
        }
        p
    };
    let home = pick(&mut rng);
    let worker = rng.chance(0.75);
    let work = if worker { Some(pick(&mut rng)) } else { None };
    let mut errands = [home, home];
    for e in &mut errands {
        for _ in 0..20 {
            let p = destination(
                home,
                rng.range_f64(0.0, 360.0),
                rng.range_f64(300.0, 3_000.0),
            );
            if !places::near_any(places, country, p, 400.0) {
                *e = p;
                break;
            }
        }
    }

    // A usual place in another city: near ones are driven to on weekends, far ones
    // (450-3000 km) are flown to.
    let mut usual = None;
    if rng.chance(0.45) {
        let mut near = Vec::new();
        let mut far = Vec::new();
        for (i, other) in c.cities.iter().enumerate() {
            if i == city {
                continue;
            }
            let d = haversine_m(cty.centre, other.centre);
            if d <= 130_000.0 {
                near.push(i);
            } else if (450_000.0..3_000_000.0).contains(&d) {
                far.push(i);
            }
        }
        let choice = if !near.is_empty() && (far.is_empty() || rng.chance(0.4)) {
            Some((near[rng.index(near.len())], false))
        } else if !far.is_empty() {
            Some((far[rng.index(far.len())], true))
        } else {
            None
        };
        if let Some((ui, by_air)) = choice {
            let uc = &c.cities[ui];
            let mut p = city_point(uc, &mut rng);
            for _ in 0..20 {
                if !places::near_any(places, country, p, 400.0) {
                    break;
                }
                p = city_point(uc, &mut rng);
            }
            usual = Some(Usual {
                city: ui,
                pos: p,
                by_air,
            });
        }
    }

    let operator = rng.index(c.operators.len());
    let imei = imei(index, run.seed, &mut rng);
    let sims = vec![Profile::new_sim(country, c.operators[operator], &mut rng)];

    let mut prof = Profile {
        index,
        country,
        city,
        home,
        work,
        errands,
        usual,
        imei,
        operator,
        sims,
        skew_ms: rng.range_i64(-30_000, 30_000),
        heartbeat_ms: rng.range_i64(200, 420) * SEC,
        home_wifi: rng.chance(0.8),
        work_wifi: rng.chance(0.5),
        night_charger: rng.chance(0.85),
        drain_pct_h: rng.range_f64(1.8, 4.5),
        leave_min: rng.range_i64(6 * 60 + 30, 9 * 60),
        work_end_min: rng.range_i64(16 * 60, 18 * 60 + 30),
        commute_kmh: rng.range_f64(22.0, 42.0),
        permitted: Vec::new(),
    };
    prof.permitted = permitted_cells(&prof);
    // Errands that fall outside the permitted area are moved home (rare: they are
    // within 3 km of home and home has three rings of ~2.4 km cells).
    for i in 0..2 {
        if !prof.permitted_at(prof.errands[i]) {
            prof.errands[i] = prof.home;
        }
    }
    prof
}

/// H3 cells around home (k=3), work (k=2), the commute corridor, and usual places
/// (with the route there, and the airports for usual places reached by air).
fn permitted_cells(p: &Profile) -> Vec<i64> {
    let mut cells = Vec::with_capacity(128);
    disk_of(p.home, 3, &mut cells);
    if let Some(w) = p.work {
        disk_of(w, 2, &mut cells);
        corridor(p.home, w, &mut cells);
    }
    if let Some(u) = p.usual {
        disk_of(u.pos, 2, &mut cells);
        if u.by_air {
            let a0 = airport(p.country, p.city);
            let a1 = airport(p.country, u.city);
            disk_of(a0, 1, &mut cells);
            disk_of(a1, 1, &mut cells);
            corridor(p.home, a0, &mut cells);
            corridor(a1, u.pos, &mut cells);
        } else {
            corridor(p.home, u.pos, &mut cells);
        }
    }
    cells.sort_unstable();
    cells.dedup();
    cells
}

/// What a place is, for accuracy, Wi-Fi and charging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Home,
    Work,
    Errand,
    Usual,
    Airport,
    Risky,
    Away,
    Crossing,
    Road,
}

/// What the phone is doing during a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegKind {
    /// At `a`.
    Stay,
    /// Travelling from `a` to `b` at constant speed.
    Move,
    /// Switched off (shutdown and boot pings around it).
    Off,
    /// No pings at all (switched off or shielded, unannounced).
    Dark,
    /// Flight mode during a flight.
    Flight,
}

/// A stretch of a device's day.
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    pub t0: i64,
    pub t1: i64,
    pub kind: SegKind,
    pub site: Site,
    pub a: Pos,
    pub b: Pos,
    /// Position across the border, on the neighbour's network.
    pub abroad: bool,
    /// Position is a spoofed fix (a far-away city).
    pub spoof: bool,
}

/// An extra ping at a fixed time, besides the periodic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    Event(EventKind),
    /// A heartbeat with a very poor fix (500-3000 m).
    BadFix,
}

/// A ground-truth span of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: &'static str,
    pub device: u32,
    pub start: i64,
    pub end: i64,
}

/// A device's whole run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub segs: Vec<Seg>,
    /// Extra pings, sorted by time.
    pub extras: Vec<(i64, Extra)>,
    /// From this time on, the device has this SIM (index into `Profile::sims`).
    pub sim_changes: Vec<(i64, u8)>,
    /// Windows without connectivity; their pings are uploaded at the end.
    pub offline: Vec<(i64, i64)>,
    pub rooted_from: Option<i64>,
    pub agent_removed_from: Option<i64>,
    pub mdm_off_from: Option<i64>,
    pub mock: Vec<(i64, i64)>,
    /// The SIM registered on the lease.
    pub registered_sim: u8,
    /// The neighbour network used while abroad.
    pub roaming: Option<Operator>,
    pub truth: Vec<Span>,
    pub tricky: Vec<Span>,
}

impl Plan {
    /// The index of the segment containing `t` (or the last one before it).
    pub fn seg_at(&self, t: i64) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.t0 <= t);
        if i == 0 { None } else { Some(i - 1) }
    }

    /// The earliest `t >= from` (and `< until`) such that one `Stay` segment at
    /// `site` (any site when `None`) covers `[t - margin, t + dur + margin]`.
    pub fn find_stay(
        &self,
        from: i64,
        until: i64,
        dur: i64,
        site: Option<Site>,
    ) -> Option<(usize, i64)> {
        let margin = 2 * MIN;
        let start = self.seg_at(from).unwrap_or(0);
        for (i, s) in self.segs.iter().enumerate().skip(start) {
            if s.t0 >= until {
                break;
            }
            if s.kind != SegKind::Stay || site.is_some_and(|x| x != s.site) || s.spoof {
                continue;
            }
            let t = from.max(s.t0 + margin);
            if t < until && t + dur + margin <= s.t1 {
                return Some((i, t));
            }
        }
        None
    }

    /// Replaces `[t0, t1)` of the stay segment `i` (which covers it) by `seg`.
    pub fn carve(&mut self, i: usize, mut seg: Seg) {
        let Some(orig) = self.segs.get(i).copied() else {
            return;
        };
        let (t0, t1) = (seg.t0.max(orig.t0), seg.t1.min(orig.t1));
        seg.t0 = t0;
        seg.t1 = t1;
        let mut repl = Vec::with_capacity(3);
        if t0 > orig.t0 {
            repl.push(Seg { t1: t0, ..orig });
        }
        repl.push(seg);
        if t1 < orig.t1 {
            repl.push(Seg { t0: t1, ..orig });
        }
        self.segs.splice(i..=i, repl);
    }

    pub fn add_extra(&mut self, t: i64, e: Extra) {
        let i = self.extras.partition_point(|x| x.0 <= t);
        self.extras.insert(i, (t, e));
    }
}

/// Builds segments one after the other.
#[derive(Debug)]
pub struct Planner {
    pub t: i64,
    pub pos: Pos,
    pub site: Site,
    pub abroad: bool,
    pub segs: Vec<Seg>,
}

impl Planner {
    pub fn new(t: i64, pos: Pos) -> Self {
        Self {
            t,
            pos,
            site: Site::Home,
            abroad: false,
            segs: Vec::with_capacity(128),
        }
    }

    /// Stays where it is until `t_end` (no-op if that is past).
    pub fn stay_until(&mut self, t_end: i64) {
        if t_end > self.t {
            self.segs.push(Seg {
                t0: self.t,
                t1: t_end,
                kind: SegKind::Stay,
                site: self.site,
                a: self.pos,
                b: self.pos,
                abroad: self.abroad,
                spoof: false,
            });
            self.t = t_end;
        }
    }

    pub fn stay_for(&mut self, dur: i64) {
        self.stay_until(self.t + dur);
    }

    /// Travels to `dest` at `kmh` (at least one minute).
    pub fn go(&mut self, dest: Pos, site: Site, kmh: f64) {
        let d = haversine_m(self.pos, dest);
        let dur = ((d / (kmh / 3.6)) * 1000.0) as i64;
        let dur = dur.max(MIN);
        self.segs.push(Seg {
            t0: self.t,
            t1: self.t + dur,
            kind: SegKind::Move,
            site: Site::Road,
            a: self.pos,
            b: dest,
            abroad: self.abroad,
            spoof: false,
        });
        self.t += dur;
        self.pos = dest;
        self.site = site;
    }

    /// A segment without positions (flight, dark) that ends at `dest`.
    pub fn gap(&mut self, kind: SegKind, dur: i64, dest: Pos, site: Site) {
        self.segs.push(Seg {
            t0: self.t,
            t1: self.t + dur,
            kind,
            site,
            a: self.pos,
            b: dest,
            abroad: false,
            spoof: false,
        });
        self.t += dur;
        self.pos = dest;
        self.site = site;
    }

    /// Goes home (from anywhere) if not already there.
    pub fn go_home(&mut self, prof: &Profile, kmh: f64) {
        if self.site != Site::Home {
            self.go(prof.home, Site::Home, kmh);
        }
    }
}

/// Local speed for a trip of `d` metres in town.
fn town_kmh(prof: &Profile, d: f64) -> f64 {
    if d < 1_500.0 { 4.8 } else { prof.commute_kmh }
}

/// An ordinary day starting at local midnight `l` (`weekday` = Monday to Friday).
pub fn ordinary_day(p: &mut Planner, prof: &Profile, l: i64, weekday: bool, rng: &mut Rng) {
    if p.t >= l + DAY {
        return;
    }
    if p.site != Site::Home && p.t < l + 6 * HOUR {
        p.go_home(prof, 60.0);
    }
    match (prof.work, weekday) {
        (Some(work), true) => {
            let leave = l + prof.leave_min * MIN + rng.range_i64(-20, 20) * MIN;
            if p.t <= leave {
                p.stay_until(leave);
                p.go(
                    work,
                    Site::Work,
                    prof.commute_kmh * rng.range_f64(0.85, 1.15),
                );
                let back = l + prof.work_end_min * MIN + rng.range_i64(-30, 45) * MIN;
                p.stay_until(back);
                // Home along the commute corridor, then maybe an errand nearby.
                p.go(
                    prof.home,
                    Site::Home,
                    prof.commute_kmh * rng.range_f64(0.85, 1.15),
                );
                if rng.chance(0.3) {
                    p.stay_for(rng.range_i64(5, 30) * MIN);
                    let e = prof.errands[rng.index(2)];
                    let d = haversine_m(p.pos, e);
                    p.go(e, Site::Errand, town_kmh(prof, d));
                    p.stay_for(rng.range_i64(10, 45) * MIN);
                    p.go(prof.home, Site::Home, town_kmh(prof, d));
                }
            }
        }
        _ => {
            let saturday = !weekday && rng.chance(0.5);
            let trip = prof
                .usual
                .filter(|u| !u.by_air && saturday)
                .filter(|_| rng.chance(0.5));
            if let Some(u) = trip {
                let leave = l + rng.range_i64(9 * 60, 11 * 60) * MIN;
                if p.t <= leave {
                    p.stay_until(leave);
                    p.go(u.pos, Site::Usual, rng.range_f64(70.0, 95.0));
                    p.stay_for(rng.range_i64(180, 420) * MIN);
                    p.go(prof.home, Site::Home, rng.range_f64(70.0, 95.0));
                }
            } else {
                for (from, to) in [(10 * 60, 12 * 60), (15 * 60, 18 * 60)] {
                    if !rng.chance(0.55) {
                        continue;
                    }
                    let at = l + rng.range_i64(from, to) * MIN;
                    if p.t > at {
                        continue;
                    }
                    p.stay_until(at);
                    let e = prof.errands[rng.index(2)];
                    let d = haversine_m(p.pos, e);
                    p.go(e, Site::Errand, town_kmh(prof, d));
                    p.stay_for(rng.range_i64(20, 110) * MIN);
                    p.go(prof.home, Site::Home, town_kmh(prof, d));
                }
            }
        }
    }
    p.stay_until(l + DAY);
}

/// Day of week of a UTC-ms time's local date: 0 = Monday.
pub fn weekday_of(local_midnight_utc: i64, offset_min: i32) -> i64 {
    let local = local_midnight_utc + i64::from(offset_min) * MIN;
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    (local.div_euclid(DAY) + 3).rem_euclid(7)
}

/// Random connectivity gaps of an ordinary life (basements, trains, dead zones).
pub fn plan_offline(plan: &mut Plan, prof: &Profile, run: &Run, rng: &mut Rng) {
    for d in 0..i64::from(run.days) {
        if !rng.chance(0.3) {
            continue;
        }
        let l = prof.local_midnight(run, d);
        let t0 = l + rng.range_i64(7 * 60, 21 * 60) * MIN;
        let dur = rng.range_i64(12, 100) * MIN;
        plan.offline.push((t0, t0 + dur));
    }
}

/// Derives `out_of_area` spans from the plan: every observable stretch where the true
/// position is outside the permitted area (moves sampled each minute).
pub fn out_of_area_spans(plan: &Plan, prof: &Profile, run: &Run) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut open: Option<(i64, i64)> = None;
    let mut close = |open: &mut Option<(i64, i64)>, spans: &mut Vec<Span>| {
        if let Some((s, e)) = open.take() {
            spans.push(Span {
                kind: "out_of_area",
                device: prof.index,
                start: s,
                end: e,
            });
        }
    };
    for s in &plan.segs {
        if s.t1 <= run.start_ms || s.t0 >= run.end_ms {
            continue;
        }
        match s.kind {
            SegKind::Off | SegKind::Dark | SegKind::Flight => continue,
            SegKind::Stay => {
                let out = !prof.permitted_at(s.a);
                step(&mut open, &mut spans, &mut close, s.t0, s.t1, out);
            }
            SegKind::Move => {
                let n = ((s.t1 - s.t0) / MIN).max(1);
                for k in 0..n {
                    let t = s.t0 + (s.t1 - s.t0) * k / n;
                    let tn = s.t0 + (s.t1 - s.t0) * (k + 1) / n;
                    let p = lerp(s.a, s.b, k as f64 / n as f64);
                    let out = !prof.permitted_at(p);
                    step(&mut open, &mut spans, &mut close, t, tn, out);
                }
            }
        }
    }
    close(&mut open, &mut spans);
    fn step(
        open: &mut Option<(i64, i64)>,
        spans: &mut Vec<Span>,
        close: &mut impl FnMut(&mut Option<(i64, i64)>, &mut Vec<Span>),
        t0: i64,
        t1: i64,
        out: bool,
    ) {
        if out {
            match open {
                // Gaps of up to 10 minutes (a cell boundary grazed) do not split a span.
                Some((_, e)) if t0 - *e <= 10 * MIN => *e = t1,
                Some(_) => {
                    close(open, spans);
                    *open = Some((t0, t1));
                }
                None => *open = Some((t0, t1)),
            }
        } else if let Some((_, e)) = open
            && t0 - *e > 10 * MIN
        {
            close(open, spans);
        }
    }
    spans.retain(|s| s.end - s.start >= 5 * MIN);
    spans
}

/// Ping flags packed in a byte.
pub mod flag {
    pub const HAS_POS: u8 = 1;
    pub const CHARGING: u8 = 2;
    pub const AGENT: u8 = 4;
    pub const MDM: u8 = 8;
    pub const ROOTED: u8 = 16;
    pub const MOCK: u8 = 32;
    pub const HAS_NET: u8 = 64;
}

/// One ping, compact (40 bytes); strings come from the device's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub receive_time: i64,
    pub event_time: i64,
    pub device: u32,
    pub seq: u32,
    pub lat_e6: i32,
    pub lon_e6: i32,
    /// Accuracy in decimetres.
    pub accuracy_dm: u16,
    pub battery: u8,
    /// Index into the profile's SIMs.
    pub sim: u8,
    /// 0: home operator, 1: roaming network.
    pub net: u8,
    pub network_type: u8,
    pub flags: u8,
    pub kind: u8,
}

/// Network types by index, as stored in [`Ping::network_type`].
pub const NETWORK_TYPES: [NetworkType; 6] = [
    NetworkType::None,
    NetworkType::Wifi,
    NetworkType::G2,
    NetworkType::G3,
    NetworkType::Lte,
    NetworkType::G5,
];

/// Event kinds by index, as stored in [`Ping::kind`].
pub const EVENT_KINDS: [EventKind; 7] = EventKind::ALL;

fn kind_index(k: EventKind) -> u8 {
    EVENT_KINDS.iter().position(|x| *x == k).unwrap_or(0) as u8
}

/// Walks a plan and produces its pings in time order.
#[derive(Debug)]
pub struct Emitter {
    rng: Rng,
    seg_i: usize,
    extra_i: usize,
    sim_i: usize,
    sim: u8,
    off_i: usize,
    next_periodic: i64,
    battery: f64,
    charging: bool,
    last_t: i64,
    seq: u32,
    done: bool,
}

impl Emitter {
    pub fn new(run: &Run, prof: &Profile, plan: &Plan) -> Self {
        let mut rng = Rng::new(run.seed, stream::EMIT_BASE + u64::from(prof.index));
        let first = run.start_ms + rng.range_i64(0, prof.heartbeat_ms);
        let extra_i = plan.extras.partition_point(|x| x.0 < run.start_ms);
        let battery = rng.range_f64(45.0, 100.0);
        Self {
            rng,
            seg_i: 0,
            extra_i,
            sim_i: 0,
            sim: 0,
            off_i: 0,
            next_periodic: first,
            battery,
            charging: false,
            last_t: run.start_ms,
            seq: 0,
            done: false,
        }
    }

    /// Appends every ping with true time `< t_end` (and inside the run) to `out`.
    pub fn emit_until(
        &mut self,
        run: &Run,
        prof: &Profile,
        plan: &Plan,
        t_end: i64,
        out: &mut Vec<Ping>,
    ) {
        let limit = t_end.min(run.end_ms);
        while !self.done {
            let te = plan.extras.get(self.extra_i).map_or(i64::MAX, |x| x.0);
            let t = te.min(self.next_periodic);
            if t >= limit {
                if t >= run.end_ms {
                    self.done = true;
                }
                return;
            }
            while self.seg_i + 1 < plan.segs.len() && plan.segs[self.seg_i].t1 <= t {
                self.seg_i += 1;
            }
            let Some(seg) = plan.segs.get(self.seg_i).copied() else {
                self.done = true;
                return;
            };
            let silent = matches!(seg.kind, SegKind::Off | SegKind::Dark | SegKind::Flight)
                && t >= seg.t0
                && t < seg.t1;
            if t == te {
                self.extra_i += 1;
                let extra = plan.extras[self.extra_i - 1].1;
                if silent {
                    continue;
                }
                let (kind, bad) = match extra {
                    Extra::Event(k) => (k, false),
                    Extra::BadFix => (EventKind::Heartbeat, true),
                };
                out.push(self.ping(prof, plan, &seg, t, kind, bad));
                if kind == EventKind::Boot {
                    self.next_periodic = self.next_periodic.max(t + prof.heartbeat_ms / 2);
                }
                continue;
            }
            if silent {
                // Resume after the silence; an Off segment is followed by a boot ping.
                let resume = match seg.kind {
                    SegKind::Off => seg.t1 + MIN + self.rng.range_i64(0, prof.heartbeat_ms),
                    _ => seg.t1 + self.rng.range_i64(10 * SEC, prof.heartbeat_ms),
                };
                self.next_periodic = resume;
                continue;
            }
            let kind = if seg.kind == SegKind::Move {
                EventKind::Location
            } else {
                EventKind::Heartbeat
            };
            out.push(self.ping(prof, plan, &seg, t, kind, false));
            let jitter = self.rng.range_f64(0.85, 1.15);
            let step = if seg.kind == SegKind::Move {
                (self.rng.range_f64(45.0, 120.0) * 1000.0) as i64
            } else {
                (prof.heartbeat_ms as f64 * jitter) as i64
            };
            self.next_periodic = t + step;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ping(
        &mut self,
        prof: &Profile,
        plan: &Plan,
        seg: &Seg,
        t: i64,
        kind: EventKind,
        bad_fix: bool,
    ) -> Ping {
        let rng = &mut self.rng;
        // SIM in the phone.
        while let Some(&(tc, s)) = plan.sim_changes.get(self.sim_i) {
            if tc > t {
                break;
            }
            self.sim = s;
            self.sim_i += 1;
        }
        // Connectivity.
        while let Some(&(_, e)) = plan.offline.get(self.off_i) {
            if e > t {
                break;
            }
            self.off_i += 1;
        }
        let offline = plan
            .offline
            .get(self.off_i)
            .filter(|(s, e)| *s <= t && t < *e)
            .map(|(_, e)| *e);

        // Position.
        let moving = seg.kind == SegKind::Move;
        let (base, site) = if moving {
            let f = (t - seg.t0) as f64 / (seg.t1 - seg.t0).max(1) as f64;
            (lerp(seg.a, seg.b, f.clamp(0.0, 1.0)), Site::Road)
        } else if seg.kind == SegKind::Stay {
            (seg.a, seg.site)
        } else {
            (seg.b, seg.site)
        };
        let indoor = !moving
            && matches!(
                site,
                Site::Home | Site::Work | Site::Usual | Site::Away | Site::Errand
            );
        let accuracy: f64 = if bad_fix {
            rng.range_f64(500.0, 3_000.0)
        } else if seg.spoof {
            rng.range_f64(4.0, 12.0)
        } else if site == Site::Risky {
            rng.range_f64(3.0, 9.0)
        } else if indoor {
            30.0 + rng.exp(18.0).min(70.0)
        } else {
            rng.range_f64(5.0, 30.0)
        };
        let has_fix = bad_fix || !indoor || rng.chance(0.97);
        let sigma = if bad_fix {
            accuracy * 0.8
        } else if site == Site::Risky {
            accuracy / 2.0
        } else {
            accuracy / 1.515
        };
        let (nx, ny) = rng.normal2();
        let p = offset_m(base, nx * sigma, ny * sigma);

        // Battery.
        let dt_h = (t - self.last_t).max(0) as f64 / HOUR as f64;
        self.last_t = t;
        let local_h = (t + i64::from(prof.city().utc_offset_min) * MIN).rem_euclid(DAY) / HOUR;
        let night = !(7..22).contains(&local_h);
        let plug_site = matches!(site, Site::Home | Site::Work | Site::Usual | Site::Away);
        let want = (site == Site::Home && night && prof.night_charger)
            || (plug_site && self.battery < 20.0)
            || (self.charging && plug_site && self.battery < 90.0);
        self.charging = want && !seg.spoof;
        if self.charging {
            let rate = if self.battery < 80.0 { 45.0 } else { 15.0 };
            self.battery += rate * dt_h;
        } else {
            let rate = if moving {
                prof.drain_pct_h * 2.2
            } else {
                prof.drain_pct_h
            };
            self.battery -= rate * dt_h;
        }
        self.battery = self.battery.clamp(3.0, 100.0);

        // Radio.
        let nt: u8 = if offline.is_some() {
            0
        } else if (site == Site::Home && prof.home_wifi && rng.chance(0.92))
            || (site == Site::Work && prof.work_wifi && rng.chance(0.85))
        {
            1
        } else {
            2 + rng.weighted(&prof.country().radio_mix) as u8
        };

        let mut flags = 0u8;
        if has_fix {
            flags |= flag::HAS_POS;
        }
        if self.charging {
            flags |= flag::CHARGING;
        }
        if plan.agent_removed_from.is_none_or(|a| t < a) {
            flags |= flag::AGENT;
        }
        if plan.mdm_off_from.is_none_or(|a| t < a) {
            flags |= flag::MDM;
        }
        if plan.rooted_from.is_some_and(|a| t >= a) {
            flags |= flag::ROOTED;
        }
        if plan.mock.iter().any(|(s, e)| *s <= t && t < *e) {
            flags |= flag::MOCK;
        }
        if offline.is_none() {
            flags |= flag::HAS_NET;
        }

        let receive_time = match offline {
            Some(end) => end + rng.range_i64(2_000, 20_000),
            None => t + 250 + rng.exp(700.0).min(9_000.0) as i64,
        };
        self.seq += 1;
        Ping {
            receive_time,
            event_time: t + prof.skew_ms,
            device: prof.index,
            seq: self.seq,
            lat_e6: ((p.lat * 1e6).round() as i32).clamp(-90_000_000, 90_000_000),
            lon_e6: ((p.lon * 1e6).round() as i32).clamp(-180_000_000, 180_000_000),
            accuracy_dm: (accuracy * 10.0).round().min(f64::from(u16::MAX)) as u16,
            battery: self.battery.round() as u8,
            sim: self.sim,
            net: u8::from(seg.abroad),
            network_type: nt,
            flags,
            kind: kind_index(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasewatch_schemas::luhn_valid;

    fn run() -> Run {
        Run {
            seed: 5,
            start_ms: 1_780_272_000_000,
            end_ms: 1_780_272_000_000 + 2 * DAY,
            days: 2,
        }
    }

    #[test]
    fn imeis_are_unique_and_valid() {
        let mut rng = Rng::new(1, 1);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..5000 {
            let s = imei(i, 9, &mut rng);
            assert_eq!(s.len(), 15);
            assert!(luhn_valid(&s), "{s}");
            assert!(seen.insert(s[8..14].to_string()));
        }
    }

    #[test]
    fn profiles_have_valid_sims_and_a_permitted_home() {
        let places = places::generate(5);
        for i in 0..200 {
            let p = profile(&run(), i, &places);
            let s = &p.sims[0];
            assert!(luhn_valid(&s.iccid), "{}", s.iccid);
            assert!((19..=20).contains(&s.iccid.len()));
            assert_eq!(s.imsi.len(), 15);
            assert!(s.iccid.starts_with("89"));
            assert!(p.permitted_at(p.home));
            if let Some(w) = p.work {
                assert!(p.permitted_at(w));
            }
            assert!(p.permitted.len() < 400, "{}", p.permitted.len());
        }
    }

    #[test]
    fn weekday_of_known_dates() {
        // 2026-06-01 is a Monday.
        assert_eq!(weekday_of(1_780_272_000_000, 0), 0);
        assert_eq!(weekday_of(1_780_272_000_000 + 5 * DAY, 0), 5);
    }
}
