//! Planted incidents (what must alert) and tricky-but-normal episodes (what must not),
//! and the plan of a device's whole run with them in it.
//!
//! Every planted behaviour records its ground truth from the plan itself, so the
//! spans in `truth.csv` and `tricky.csv` are exactly when the behaviour can be seen
//! in the pings.

use leasewatch_schemas::{EventKind, SignalKind};

use super::device::{
    DAY, Extra, HOUR, MIN, Plan, Planner, Profile, Run, SEC, Seg, SegKind, Site, Span,
    ordinary_day, out_of_area_spans, plan_offline, weekday_of,
};
use super::geo::{COUNTRIES, Pos, bearing_deg, destination, haversine_m, offset_m};
use super::places::{Place, PlaceKind};
use super::rng::{Rng, stream};

/// Tricky-but-normal episodes: they look suspicious and must not alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tricky {
    /// A legitimate flight (~800 km/h over a gap without pings).
    DomesticFlight,
    /// A SIM change to the SIM already registered on the lease.
    RegisteredNewSim,
    /// A single very poor GPS fix far from the true position.
    PoorAccuracyJump,
    /// The phone switched off at home overnight (shutdown, then boot).
    NightSwitchOff,
}

impl Tricky {
    pub const ALL: [Tricky; 4] = [
        Self::DomesticFlight,
        Self::RegisteredNewSim,
        Self::PoorAccuracyJump,
        Self::NightSwitchOff,
    ];

    /// The name in `tricky.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomesticFlight => "domestic_flight",
            Self::RegisteredNewSim => "registered_new_sim",
            Self::PoorAccuracyJump => "poor_accuracy_jump",
            Self::NightSwitchOff => "night_switch_off",
        }
    }
}

/// What a device is planted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Normal,
    /// A planted incident; the number picks a variant (tamper: which kind).
    Incident(SignalKind, u8),
    Tricky(Tricky),
}

/// The signals planted in device behaviour (`overdue` comes from lease state).
pub const PLANTED: [SignalKind; 9] = [
    SignalKind::SimMismatch,
    SignalKind::SimSwapFrequent,
    SignalKind::OutOfArea,
    SignalKind::RiskyPlaceDwell,
    SignalKind::AbnormalDwell,
    SignalKind::ImpossibleTravel,
    SignalKind::CrossBorder,
    SignalKind::DeviceDark,
    SignalKind::Tamper,
];

/// Share of the fleet planted with each incident kind, and with each tricky kind.
pub const INCIDENT_SHARE: f64 = 0.025;
pub const TRICKY_SHARE: f64 = 0.03;

/// Which device gets which role. `can_fly[i]`: device `i` has a usual place far
/// enough away to fly to. Roles are exclusive: one per device at most.
pub fn assign_roles(seed: u64, can_fly: &[bool]) -> Vec<Role> {
    let n = can_fly.len();
    let mut rng = Rng::new(seed, stream::FLEET);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let count = |share: f64| ((n as f64 * share).round() as usize).max(1);
    let mut roles = vec![Role::Normal; n];
    // Flights first, among the devices that can fly.
    let mut flights = count(TRICKY_SHARE);
    for &i in &order {
        if flights == 0 {
            break;
        }
        if can_fly[i] {
            roles[i] = Role::Tricky(Tricky::DomesticFlight);
            flights -= 1;
        }
    }
    let mut wanted: Vec<Role> = Vec::new();
    let per_incident = count(INCIDENT_SHARE);
    let per_tricky = count(TRICKY_SHARE);
    // Interleave kinds so that small fleets still get one of each.
    for round in 0..per_incident.max(per_tricky) {
        for k in PLANTED {
            if round < per_incident {
                wanted.push(Role::Incident(k, (round % 4) as u8));
            }
        }
        for t in &Tricky::ALL[1..] {
            if round < per_tricky {
                wanted.push(Role::Tricky(*t));
            }
        }
    }
    let mut next = wanted.into_iter();
    for &i in &order {
        if roles[i] != Role::Normal {
            continue;
        }
        match next.next() {
            Some(r) => roles[i] = r,
            None => break,
        }
    }
    roles
}

fn span(kind: &'static str, prof: &Profile, start: i64, end: i64) -> Span {
    Span {
        kind,
        device: prof.index,
        start,
        end,
    }
}

/// A point outside the permitted area, `min_km..max_km` from home towards another
/// city of the country (so it lies on land in the same country).
fn away_point(prof: &Profile, rng: &mut Rng, min_km: f64, max_km: f64) -> Pos {
    let c = prof.country();
    let others: Vec<usize> = (0..c.cities.len())
        .filter(|i| *i != prof.city && prof.usual.is_none_or(|u| u.city != *i))
        .collect();
    let mut fallback = prof.home;
    for _ in 0..40 {
        let Some(&ti) = others.get(rng.index(others.len())) else {
            break;
        };
        let target = c.cities[ti].centre;
        fallback = target;
        let dt = haversine_m(prof.home, target);
        let d = (rng.range_f64(min_km, max_km) * 1000.0).min(dt);
        let p = destination(prof.home, bearing_deg(prof.home, target), d);
        let p = offset_m(
            p,
            rng.range_f64(-2000.0, 2000.0),
            rng.range_f64(-2000.0, 2000.0),
        );
        let clear = [
            (0.0, 0.0),
            (800.0, 0.0),
            (-800.0, 0.0),
            (0.0, 800.0),
            (0.0, -800.0),
        ]
        .iter()
        .all(|(e, n)| !prof.permitted_at(offset_m(p, *e, *n)));
        if clear {
            return p;
        }
    }
    fallback
}

/// The plan of a device's run with its role planted.
pub fn build_plan(run: &Run, prof: &mut Profile, role: Role, places: &[Place]) -> Plan {
    let mut rng = Rng::new(run.seed, stream::PLAN_BASE + u64::from(prof.index));
    let days = i64::from(run.days);
    let special = rng.range_i64(0, days - 1);
    let offset = prof.city().utc_offset_min;
    let mut p = Planner::new(prof.local_midnight(run, -1), prof.home);
    let mut plan = Plan::default();

    for d in -1..=days + 1 {
        let l = prof.local_midnight(run, d);
        if p.t >= l + DAY {
            continue;
        }
        let weekday = weekday_of(l, offset) < 5;
        if d != special {
            ordinary_day(&mut p, prof, l, weekday, &mut rng);
            continue;
        }
        match role {
            Role::Incident(SignalKind::OutOfArea, _) => {
                let dest = away_point(prof, &mut rng, 90.0, 300.0);
                p.stay_until(l + rng.range_i64(7 * 60, 10 * 60) * MIN);
                p.go(dest, Site::Away, rng.range_f64(75.0, 95.0));
                // Under 6 h: a long stay would also be an abnormal dwell.
                p.stay_for(rng.range_i64(150, 320) * MIN);
                p.go(prof.home, Site::Home, rng.range_f64(75.0, 95.0));
                p.stay_until(l + DAY);
            }
            Role::Incident(SignalKind::AbnormalDwell, _) => {
                let dest = away_point(prof, &mut rng, 30.0, 90.0);
                if d < days - 1 {
                    // Overnight, back the next morning.
                    p.stay_until(l + rng.range_i64(17 * 60, 19 * 60) * MIN);
                    p.go(dest, Site::Away, rng.range_f64(60.0, 90.0));
                } else {
                    // On the last day: a long daytime stay that ends before the run does.
                    let leave =
                        (l + rng.range_i64(8 * 60, 10 * 60) * MIN).min(run.end_ms - 10 * HOUR);
                    p.stay_until(leave);
                    p.go(dest, Site::Away, rng.range_f64(60.0, 90.0));
                }
                let arrive = p.t;
                if d < days - 1 {
                    p.stay_until(l + DAY + rng.range_i64(7 * 60, 9 * 60) * MIN);
                } else {
                    p.stay_for(rng.range_i64(390, 450) * MIN);
                }
                let leave = p.t;
                plan.truth.push(span(
                    SignalKind::AbnormalDwell.as_str(),
                    prof,
                    arrive,
                    leave,
                ));
                p.go(prof.home, Site::Home, rng.range_f64(60.0, 90.0));
            }
            Role::Incident(SignalKind::RiskyPlaceDwell, _) => {
                let shop = places
                    .iter()
                    .filter(|x| {
                        x.country == prof.country
                            && x.city == prof.city
                            && x.kind != PlaceKind::BorderCrossing
                    })
                    .min_by(|a, b| {
                        haversine_m(a.centre, prof.home)
                            .total_cmp(&haversine_m(b.centre, prof.home))
                    });
                if let Some(shop) = shop {
                    let at = l + rng.range_i64(10 * 60, 15 * 60) * MIN;
                    p.stay_until(at.min(run.end_ms - 3 * HOUR));
                    p.go(shop.centre, Site::Risky, prof.commute_kmh);
                    let arrive = p.t;
                    p.stay_for(rng.range_i64(50, 120) * MIN);
                    plan.truth.push(span(
                        SignalKind::RiskyPlaceDwell.as_str(),
                        prof,
                        arrive,
                        p.t,
                    ));
                    p.go(prof.home, Site::Home, prof.commute_kmh);
                }
                p.stay_until(l + DAY);
            }
            Role::Incident(SignalKind::CrossBorder, _) => {
                let c = prof.country();
                let home = prof.home;
                let x = c
                    .crossings
                    .iter()
                    .min_by(|a, b| haversine_m(a.at, home).total_cmp(&haversine_m(b.at, home)));
                if let Some(x) = x {
                    plan.roaming = Some(x.network);
                    p.stay_until(l + rng.range_i64(6 * 60, 9 * 60) * MIN);
                    p.go(x.at, Site::Crossing, rng.range_f64(80.0, 100.0));
                    p.stay_for(rng.range_i64(10, 30) * MIN);
                    p.abroad = true;
                    let out = p.t;
                    p.go(x.beyond, Site::Away, 50.0);
                    p.stay_for(rng.range_i64(4 * 60, 10 * 60) * MIN);
                    p.go(x.at, Site::Crossing, 50.0);
                    p.stay_for(rng.range_i64(10, 25) * MIN);
                    let back = p.t;
                    p.abroad = false;
                    plan.truth
                        .push(span(SignalKind::CrossBorder.as_str(), prof, out, back));
                    p.go(prof.home, Site::Home, rng.range_f64(80.0, 100.0));
                }
                p.stay_until(l + DAY);
            }
            Role::Incident(SignalKind::DeviceDark, _) => {
                // A day at home; the dark stretch is carved in below.
                p.go_home(prof, 60.0);
                p.stay_until(l + DAY);
            }
            Role::Tricky(Tricky::DomesticFlight) => {
                fly_away(&mut p, &mut plan, prof, l, &mut rng);
            }
            _ => ordinary_day(&mut p, prof, l, weekday, &mut rng),
        }
    }
    plan.segs = std::mem::take(&mut p.segs);
    merge_stays(&mut plan.segs);
    plan_offline(&mut plan, prof, run, &mut rng);

    let l = prof.local_midnight(run, special);
    overlays(run, prof, role, &mut plan, l, &mut rng);

    let location_role = matches!(
        role,
        Role::Incident(
            SignalKind::OutOfArea
                | SignalKind::AbnormalDwell
                | SignalKind::RiskyPlaceDwell
                | SignalKind::CrossBorder
                | SignalKind::ImpossibleTravel,
            _
        )
    );
    if location_role {
        let spans = out_of_area_spans(&plan, prof, run);
        plan.truth.extend(spans);
    }
    for list in [&mut plan.truth, &mut plan.tricky] {
        for s in list.iter_mut() {
            s.start = s.start.max(run.start_ms);
            s.end = s.end.min(run.end_ms);
        }
        // A span cut to under a minute by the run's end cannot be observed.
        list.retain(|s| s.end - s.start >= MIN);
    }
    plan
}

/// Joins consecutive stays at the same place (e.g. across midnight).
fn merge_stays(segs: &mut Vec<Seg>) {
    let mut out: Vec<Seg> = Vec::with_capacity(segs.len());
    for s in segs.drain(..) {
        if let Some(last) = out.last_mut()
            && last.kind == SegKind::Stay
            && s.kind == SegKind::Stay
            && last.site == s.site
            && last.a == s.a
            && last.abroad == s.abroad
            && last.t1 == s.t0
        {
            last.t1 = s.t1;
            continue;
        }
        out.push(s);
    }
    *segs = out;
}

/// A flight to the usual place and back a day or two later.
fn fly_away(p: &mut Planner, plan: &mut Plan, prof: &Profile, l: i64, rng: &mut Rng) {
    let Some(u) = prof.usual.filter(|u| u.by_air) else {
        p.stay_until(l + DAY);
        return;
    };
    let a0 = super::geo::airport(prof.country, prof.city);
    let a1 = super::geo::airport(prof.country, u.city);
    let flight_ms = |rng: &mut Rng| {
        let h = haversine_m(a0, a1) / 820_000.0;
        (h * HOUR as f64) as i64 + rng.range_i64(10, 20) * MIN
    };
    let one_way = |p: &mut Planner, plan: &mut Plan, to: super::geo::Pos, rng: &mut Rng| {
        p.stay_for(rng.range_i64(50, 90) * MIN);
        let takeoff = p.t;
        plan.extras
            .push((takeoff - MIN, Extra::Event(EventKind::Location)));
        let dur = flight_ms(rng);
        p.gap(SegKind::Flight, dur, to, Site::Airport);
        let landing = p.t;
        plan.extras
            .push((landing + 2 * MIN, Extra::Event(EventKind::Location)));
        plan.tricky.push(span(
            Tricky::DomesticFlight.as_str(),
            prof,
            takeoff - 2 * MIN,
            landing + 3 * MIN,
        ));
        p.stay_for(rng.range_i64(20, 40) * MIN);
    };
    p.go_home(prof, 60.0);
    p.stay_until(l + rng.range_i64(5 * 60, 8 * 60) * MIN);
    p.go(a0, Site::Airport, 35.0);
    one_way(p, plan, a1, rng);
    p.go(u.pos, Site::Usual, 35.0);
    let back_day = rng.range_i64(1, 2);
    p.stay_until(l + back_day * DAY + rng.range_i64(13 * 60, 16 * 60) * MIN);
    p.go(a1, Site::Airport, 35.0);
    one_way(p, plan, a0, rng);
    p.go(prof.home, Site::Home, 35.0);
    plan.extras.sort_by_key(|x| x.0);
}

/// SIM, tamper, spoofing, darkness and the time-based tricky episodes.
fn overlays(run: &Run, prof: &mut Profile, role: Role, plan: &mut Plan, l: i64, rng: &mut Rng) {
    let end = run.end_ms;
    match role {
        Role::Incident(SignalKind::SimMismatch, _) => {
            let t = l + rng.range_i64(9 * 60, 20 * 60) * MIN;
            let op = prof.country().operators[rng.index(prof.country().operators.len())];
            let sim = Profile::new_sim(prof.country, op, rng);
            prof.sims.push(sim);
            plan.sim_changes.push((t, 1));
            plan.add_extra(t + 5 * SEC, Extra::Event(EventKind::SimChange));
            plan.truth
                .push(span(SignalKind::SimMismatch.as_str(), prof, t, end));
        }
        Role::Incident(SignalKind::SimSwapFrequent, _) => {
            let mut t = l + rng.range_i64(10 * 60, 16 * 60) * MIN;
            let first = t;
            let mut last = t;
            for k in 1..=3u8 {
                let ops = prof.country().operators;
                let sim = Profile::new_sim(prof.country, ops[rng.index(ops.len())], rng);
                prof.sims.push(sim);
                plan.sim_changes.push((t, k));
                plan.add_extra(t + 5 * SEC, Extra::Event(EventKind::SimChange));
                last = t;
                t += rng.range_i64(20, 60) * MIN;
            }
            let back = last + rng.range_i64(30, 90) * MIN;
            plan.sim_changes.push((back, 0));
            plan.add_extra(back + 5 * SEC, Extra::Event(EventKind::SimChange));
            plan.truth.push(span(
                SignalKind::SimSwapFrequent.as_str(),
                prof,
                first,
                last + 5 * SEC,
            ));
            plan.truth
                .push(span(SignalKind::SimMismatch.as_str(), prof, first, back));
        }
        Role::Incident(SignalKind::Tamper, variant) => {
            let from = l + rng.range_i64(9 * 60, 20 * 60) * MIN;
            let name = SignalKind::Tamper.as_str();
            match variant {
                0 => {
                    plan.add_extra(from, Extra::Event(EventKind::AgentRemoved));
                    plan.agent_removed_from = Some(from);
                    plan.truth.push(span(name, prof, from, end));
                }
                1 => {
                    let dur = rng.range_i64(4, 8) * MIN;
                    if let Some((i, t)) = plan.find_stay(from, from + DAY, dur + MIN, None) {
                        plan.add_extra(t, Extra::Event(EventKind::FactoryReset));
                        let seg = Seg {
                            t0: t + 5 * SEC,
                            t1: t + dur,
                            kind: SegKind::Off,
                            ..plan.segs[i]
                        };
                        plan.carve(i, seg);
                        plan.add_extra(t + dur + 30 * SEC, Extra::Event(EventKind::Boot));
                        plan.mdm_off_from = Some(t);
                        plan.truth.push(span(name, prof, t, t + dur + MIN));
                    }
                }
                2 => {
                    plan.add_extra(from, Extra::Event(EventKind::Boot));
                    plan.rooted_from = Some(from);
                    plan.truth.push(span(name, prof, from, end));
                }
                _ => {
                    let dur = rng.range_i64(60, 180) * MIN;
                    plan.mock.push((from, from + dur));
                    plan.truth.push(span(name, prof, from, from + dur));
                }
            }
        }
        Role::Incident(SignalKind::DeviceDark, _) => {
            let dur = rng.range_i64(390, 540) * MIN;
            // Daytime, and over before the run ends (western time zones end early).
            let from = (l + rng.range_i64(9 * 60, 12 * 60) * MIN)
                .min(run.end_ms - dur - 90 * MIN)
                .max(l + 6 * HOUR);
            if let Some((i, t)) = plan.find_stay(from, from + HOUR, dur + 2 * MIN, Some(Site::Home))
            {
                // The silence is wider than the truth span by more than any clock
                // skew, so no ping's event time falls inside the span.
                let seg = Seg {
                    t0: t - 45 * SEC,
                    t1: t + dur + 45 * SEC,
                    kind: SegKind::Dark,
                    ..plan.segs[i]
                };
                plan.carve(i, seg);
                plan.truth
                    .push(span(SignalKind::DeviceDark.as_str(), prof, t, t + dur));
            }
        }
        Role::Incident(SignalKind::ImpossibleTravel, _) => {
            let from = l + rng.range_i64(18 * 60, 20 * 60) * MIN;
            let dur = rng.range_i64(10, 40) * MIN;
            let home = prof.home;
            let far: Vec<(usize, Pos)> = COUNTRIES
                .iter()
                .enumerate()
                .flat_map(|(ci, c)| c.cities.iter().map(move |x| (ci, x.centre)))
                .filter(|(_, c)| haversine_m(*c, home) > 2_000_000.0)
                .collect();
            if let (Some((i, t)), Some(&(ci, target))) = (
                plan.find_stay(from, from + 6 * HOUR, dur, None),
                far.get(rng.index(far.len())),
            ) {
                let spot = offset_m(
                    target,
                    rng.range_f64(-3000.0, 3000.0),
                    rng.range_f64(-3000.0, 3000.0),
                );
                let seg = Seg {
                    t0: t,
                    t1: t + dur,
                    a: spot,
                    b: spot,
                    spoof: true,
                    ..plan.segs[i]
                };
                plan.carve(i, seg);
                plan.truth.push(span(
                    SignalKind::ImpossibleTravel.as_str(),
                    prof,
                    t,
                    t + dur + 10 * MIN,
                ));
                if ci != prof.country {
                    plan.truth
                        .push(span(SignalKind::CrossBorder.as_str(), prof, t, t + dur));
                }
            }
        }
        Role::Tricky(Tricky::RegisteredNewSim) => {
            let t = run.start_ms + rng.range_i64(20, 60) * MIN;
            let op = prof.home_operator();
            let sim = Profile::new_sim(prof.country, op, rng);
            prof.sims.push(sim);
            plan.sim_changes.push((t, 1));
            plan.registered_sim = 1;
            plan.add_extra(t + 5 * SEC, Extra::Event(EventKind::SimChange));
            // Before the change the phone still has the old SIM, which the lease
            // (registered to the new one) does not list: a true mismatch.
            plan.truth.push(span(
                SignalKind::SimMismatch.as_str(),
                prof,
                run.start_ms,
                t,
            ));
            plan.tricky.push(span(
                Tricky::RegisteredNewSim.as_str(),
                prof,
                t,
                t + 2 * HOUR,
            ));
        }
        Role::Tricky(Tricky::PoorAccuracyJump) => {
            let n = rng.range_i64(2, 3);
            for _ in 0..n {
                let from = run.start_ms + rng.range_i64(0, i64::from(run.days) * DAY - HOUR);
                if let Some((_, t)) = plan.find_stay(from, from + DAY, 15 * MIN, None) {
                    if plan.extras.iter().any(|x| (x.0 - t).abs() < HOUR) {
                        continue;
                    }
                    plan.add_extra(t, Extra::BadFix);
                    plan.tricky.push(span(
                        Tricky::PoorAccuracyJump.as_str(),
                        prof,
                        t,
                        t + 10 * MIN,
                    ));
                }
            }
        }
        Role::Tricky(Tricky::NightSwitchOff) => {
            // Whole nights inside the run only: both shutdown and boot are seen.
            let mut fitting = Vec::new();
            for n in -1..=i64::from(run.days) {
                let ln = prof.local_midnight(run, n);
                let t0 = ln + rng.range_i64(22 * 60 + 30, 23 * 60 + 30) * MIN;
                let t1 = ln + DAY + rng.range_i64(6 * 60 + 30, 7 * 60 + 30) * MIN;
                if t0 >= run.start_ms + HOUR && t1 + HOUR <= run.end_ms {
                    fitting.push((t0, t1));
                }
            }
            let first = rng.index(fitting.len().max(1));
            let nights = rng.range_i64(1, 2) as usize;
            for &(t0, t1) in fitting.iter().skip(first).take(nights) {
                let Some(i) = plan.seg_at(t0) else { continue };
                let home = plan.segs[i];
                // Woken early by the alarm if the morning commute starts before 07:30.
                let t1 = t1.min(home.t1 - 15 * MIN);
                if home.kind != SegKind::Stay
                    || home.site != Site::Home
                    || home.t0 > t0 - 5 * MIN
                    || t1 - t0 < 6 * HOUR + 30 * MIN
                {
                    continue;
                }
                {
                    let t = t0;
                    let seg = Seg {
                        t0: t,
                        t1,
                        kind: SegKind::Off,
                        ..plan.segs[i]
                    };
                    plan.carve(i, seg);
                    plan.add_extra(t - 5 * SEC, Extra::Event(EventKind::Shutdown));
                    plan.add_extra(t1 + 40 * SEC, Extra::Event(EventKind::Boot));
                    plan.tricky.push(span(
                        Tricky::NightSwitchOff.as_str(),
                        prof,
                        t - 5 * SEC,
                        t1 + 40 * SEC,
                    ));
                }
            }
        }
        _ => {}
    }
    plan.sim_changes.sort_by_key(|x| x.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cover_every_kind_and_are_exclusive() {
        let can_fly: Vec<bool> = (0..1000).map(|i| i % 3 == 0).collect();
        let roles = assign_roles(7, &can_fly);
        for k in PLANTED {
            let n = roles
                .iter()
                .filter(|r| matches!(r, Role::Incident(x, _) if *x == k))
                .count();
            assert_eq!(n, 25, "{k:?}");
        }
        for t in Tricky::ALL {
            let n = roles.iter().filter(|r| **r == Role::Tricky(t)).count();
            assert_eq!(n, 30, "{t:?}");
        }
        for (i, r) in roles.iter().enumerate() {
            if *r == Role::Tricky(Tricky::DomesticFlight) {
                assert!(can_fly[i]);
            }
        }
        assert_eq!(roles, assign_roles(7, &can_fly));
    }

    #[test]
    fn small_fleets_get_what_fits() {
        let roles = assign_roles(1, &[false; 5]);
        assert_eq!(roles.len(), 5);
        assert!(roles.iter().all(|r| *r != Role::Normal));
    }
}
