//! Lease and credit state of each device's customer, as loaded into Redis.

use leasewatch_schemas::{CreditBand, CreditState, LeaseState, LeaseStatus};

use super::device::{DAY, Plan, Profile, Run};
use super::geo::{cell_of, corridor, disk_of};
use super::rng::{Rng, stream};

/// `YYYY-MM-DD` of a day number since 1970-01-01 (proleptic Gregorian).
pub fn civil_date(days: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// Day number since 1970-01-01 of a `YYYY-MM-DD` date, or `None` if it is not one.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(5..7)?.parse().ok()?;
    let d: i64 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > dim[(m - 1) as usize] {
        return None;
    }
    // Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Days past due with a realistic spread: mostly 0, a tail up to 120, every ladder
/// band (3-5, 7-10, 15-59, 60+) well represented.
fn days_past_due(rng: &mut Rng) -> i32 {
    let bands: [(f64, i64, i64); 8] = [
        (0.74, 0, 0),
        (0.05, 1, 2),
        (0.05, 3, 5),
        (0.015, 6, 6),
        (0.045, 7, 10),
        (0.02, 11, 14),
        (0.05, 15, 59),
        (0.03, 60, 120),
    ];
    let w: Vec<f64> = bands.iter().map(|b| b.0).collect();
    let (_, lo, hi) = bands[rng.weighted(&w)];
    rng.range_i64(lo, hi) as i32
}

/// Band from score, one band worse per prior default.
pub fn band_of(score: i32, prior_defaults: i32) -> CreditBand {
    let base = match score {
        750.. => 0,
        690..=749 => 1,
        630..=689 => 2,
        570..=629 => 3,
        _ => 4,
    };
    match (base + prior_defaults.max(0)).min(4) {
        0 => CreditBand::A,
        1 => CreditBand::B,
        2 => CreditBand::C,
        3 => CreditBand::D,
        _ => CreditBand::E,
    }
}

/// The lease and the credit state of a device's customer.
pub fn lease_and_credit(run: &Run, prof: &Profile, plan: &Plan) -> (LeaseState, CreditState) {
    let mut rng = Rng::new(run.seed, stream::STATE_BASE + u64::from(prof.index));
    let c = prof.country();
    let dpd = days_past_due(&mut rng);
    let status = match dpd {
        0..=2 => LeaseStatus::Active,
        3..=59 => LeaseStatus::Overdue,
        _ => LeaseStatus::Defaulted,
    };
    let start_day = run.start_ms.div_euclid(DAY);
    let due_day = if dpd > 0 {
        start_day - i64::from(dpd)
    } else {
        start_day + rng.range_i64(1, 30)
    };
    // Rent rounded to a price point ending in 0 or 9 of the major unit.
    let rent = {
        let (lo, hi) = c.rent_minor;
        let r = rng.range_i64(lo, hi);
        let unit = if hi >= 100_000 { 10_000 } else { 100 };
        (r / unit) * unit + if rng.chance(0.5) { 0 } else { unit / 10 * 9 }
    };
    let instalments = if dpd > 0 { 1 + i64::from(dpd) / 30 } else { 0 };
    let late_fee = if dpd >= 7 { rent / 20 } else { 0 };
    let deposit = match rng.below(4) {
        0 => 0,
        1 => rent,
        2 => rent * 2,
        _ => rent / 2,
    };

    let mut cells = prof.permitted.clone();
    if cells.is_empty() {
        // Never empty in practice; keep the contract (home cell) if it were.
        disk_of(prof.home, 3, &mut cells);
        if let Some(w) = prof.work {
            corridor(prof.home, w, &mut cells);
        }
        cells.extend(cell_of(prof.home));
        cells.sort_unstable();
        cells.dedup();
    }
    let sim = prof
        .sims
        .get(usize::from(plan.registered_sim))
        .or(prof.sims.first());
    let customer_id = format!("C{:07}", prof.index + 1);
    let lease = LeaseState {
        lease_id: format!("L{:07}", prof.index + 1),
        device_id: prof.imei.clone(),
        customer_id: customer_id.clone(),
        registered_iccid: sim.map(|s| s.iccid.clone()),
        registered_imsi: sim.map(|s| s.imsi.clone()),
        lease_country: c.code.to_string(),
        permitted_cells: cells,
        area_res: 7,
        status,
        due_date: civil_date(due_day),
        days_past_due: dpd,
        amount_due: rent * instalments + late_fee,
        deposit,
        monthly_rent: rent,
        currency: c.currency.to_string(),
    };

    // Customers who fall far behind tend to have weaker files.
    let shift = if dpd >= 15 { -45.0 } else { 0.0 };
    let score = rng.normal(665.0 + shift, 75.0).round().clamp(300.0, 850.0) as i32;
    let prior_defaults = match rng.f64() {
        x if x < 0.86 => 0,
        x if x < 0.96 => 1,
        x if x < 0.99 => 2,
        _ => 3,
    };
    let band = band_of(score, prior_defaults);
    let mut flags = Vec::new();
    if rng.chance(0.97) {
        flags.push("kyc_passed".to_string());
    }
    if band >= CreditBand::D && rng.chance(0.5) || rng.chance(0.05) {
        flags.push("guarantor".to_string());
    }
    if rng.chance(if prior_defaults > 0 { 0.15 } else { 0.015 }) {
        flags.push("watchlist".to_string());
    }
    let credit = CreditState {
        customer_id,
        score,
        band,
        prior_defaults,
        flags,
    };
    (lease, credit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(parse_date("2026-06-01"), Some(1_780_272_000 / 86_400));
        for d in [-1000, 0, 10_957, 20_605, 30_000] {
            assert_eq!(parse_date(&civil_date(d)), Some(d));
        }
        assert_eq!(parse_date("2026-02-29"), None);
        assert_eq!(
            parse_date("2024-02-29").map(civil_date).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse_date("2026-6-1"), None);
        assert_eq!(parse_date("abcd-ef-gh"), None);
    }

    #[test]
    fn bands() {
        assert_eq!(band_of(800, 0), CreditBand::A);
        assert_eq!(band_of(800, 2), CreditBand::C);
        assert_eq!(band_of(400, 0), CreditBand::E);
        assert_eq!(band_of(650, 9), CreditBand::E);
    }

    #[test]
    fn dpd_spread_covers_every_ladder_band() {
        let mut rng = Rng::new(3, 3);
        let v: Vec<i32> = (0..10_000).map(|_| days_past_due(&mut rng)).collect();
        let zero = v.iter().filter(|d| **d == 0).count();
        assert!(zero > 6_500 && zero < 8_000, "{zero}");
        for (lo, hi) in [(3, 5), (7, 10), (15, 59), (60, 120)] {
            let n = v.iter().filter(|d| (lo..=hi).contains(*d)).count();
            assert!(n > 200, "{lo}-{hi}: {n}");
        }
        assert!(v.iter().all(|d| (0..=120).contains(d)));
    }
}
