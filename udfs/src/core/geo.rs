//! Distance and motion over WGS84 fixes: haversine distance, fastest movement, dwell
//! time and radius of gyration, each as plain `std`-only Rust.
//!
//! This file is pasted verbatim into the Arroyo UDF sources (see `udfs/arroyo/`), so it
//! uses nothing but `std`.
//!
//! A coordinate pair is *valid* when both numbers are finite, `|lat| <= 90` and
//! `|lon| <= 180`; every function here treats an invalid pair as missing.

/// Mean Earth radius (IUGG R1), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Fixes whose horizontal accuracy is worse (larger) than this many metres are ignored by
/// [`max_speed_kmh`]: a position known only to the cell tower says nothing about speed.
pub const MAX_ACCURACY_M: f64 = 1_000.0;

/// Smallest time step, in milliseconds, that [`max_speed_kmh`] divides by. Two fixes less
/// than a second apart (duplicate or near-duplicate timestamps) are treated as one second
/// apart, so they can never give an infinite speed.
pub const MIN_STEP_MS: i64 = 1_000;

/// Whether `(lat, lon)` is a usable WGS84 position (finite and in range). NaN fails.
#[inline]
pub fn valid_lat_lon(lat: f64, lon: f64) -> bool {
    lat.abs() <= 90.0 && lon.abs() <= 180.0
}

/// Great-circle distance in metres between two positions on a sphere of radius
/// [`EARTH_RADIUS_M`], or `None` if either position is invalid.
///
/// Uses the haversine formula, which stays accurate for short distances and across the
/// antimeridian (longitudes 179.9 and -179.9 are about 22 km apart at the equator).
///
/// ```
/// use leasewatch_udfs::core::geo::haversine_m;
/// let d = haversine_m(0.0, 179.9, 0.0, -179.9).unwrap();
/// assert!((d - 22_239.0).abs() < 1.0);
/// assert_eq!(haversine_m(f64::NAN, 0.0, 0.0, 0.0), None);
/// ```
#[inline]
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> Option<f64> {
    if valid_lat_lon(lat1, lon1) && valid_lat_lon(lat2, lon2) {
        Some(haversine_unchecked_m(lat1, lon1, lat2, lon2))
    } else {
        None
    }
}

/// [`haversine_m`] without the validity check: the caller guarantees valid positions
/// (invalid ones give a meaningless number, never a panic).
#[inline]
pub fn haversine_unchecked_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let phi1 = lat1.to_radians();
    let phi2 = lat2.to_radians();
    let half_dphi = (phi2 - phi1) * 0.5;
    let half_dlambda = (lon2 - lon1).to_radians() * 0.5;
    let s_phi = half_dphi.sin();
    let s_lambda = half_dlambda.sin();
    let a = s_phi * s_phi + phi1.cos() * phi2.cos() * s_lambda * s_lambda;
    2.0 * EARTH_RADIUS_M * a.clamp(0.0, 1.0).sqrt().asin()
}

/// One position fix usable for speed: a time (ms since epoch), a valid position and a
/// finite accuracy in `0..=MAX_ACCURACY_M` metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    /// Time of the fix, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    pub accuracy_m: f64,
}

impl Fix {
    /// A fix, or `None` when the position is invalid or the accuracy is NaN, negative or
    /// worse than [`MAX_ACCURACY_M`].
    #[inline]
    pub fn new(ts_ms: i64, lat: f64, lon: f64, accuracy_m: f64) -> Option<Fix> {
        let accuracy_ok = (0.0..=MAX_ACCURACY_M).contains(&accuracy_m);
        (valid_lat_lon(lat, lon) && accuracy_ok).then_some(Fix {
            ts_ms,
            lat,
            lon,
            accuracy_m,
        })
    }
}

/// Fastest movement, in km/h, between consecutive fixes ordered by time, or `None` with
/// fewer than two fixes.
///
/// The fixes may come in any order: they are sorted here by `(ts, lat, lon, accuracy)`, a
/// total order, so the result does not depend on input order even with duplicate
/// timestamps. For each consecutive pair the distance is reduced by both accuracy radii
/// (floored at zero: two fixes whose error circles overlap may not have moved at all) and
/// divided by the time step, floored at [`MIN_STEP_MS`].
///
/// ```
/// use leasewatch_udfs::core::geo::{max_speed_kmh, Fix};
/// // 0.1 degree of latitude (about 11.1 km) in 10 minutes, given out of order.
/// let mut fixes = vec![
///     Fix::new(600_000, 0.1, 0.0, 0.0).unwrap(),
///     Fix::new(0, 0.0, 0.0, 0.0).unwrap(),
/// ];
/// let v = max_speed_kmh(&mut fixes).unwrap();
/// assert!((v - 66.7).abs() < 0.1);
/// assert_eq!(max_speed_kmh(&mut []), None);
/// ```
pub fn max_speed_kmh(fixes: &mut [Fix]) -> Option<f64> {
    if fixes.len() < 2 {
        return None;
    }
    fixes.sort_unstable_by(|a, b| {
        a.ts_ms
            .cmp(&b.ts_ms)
            .then(a.lat.total_cmp(&b.lat))
            .then(a.lon.total_cmp(&b.lon))
            .then(a.accuracy_m.total_cmp(&b.accuracy_m))
    });
    let mut fastest = 0.0_f64;
    for pair in fixes.windows(2) {
        fastest = fastest.max(step_kmh(&pair[0], &pair[1]));
    }
    Some(fastest)
}

/// Speed, in km/h, of the step from fix `a` to the later fix `b`, as [`max_speed_kmh`]
/// counts it: the distance less both accuracy radii (floored at zero) over the time step
/// (floored at [`MIN_STEP_MS`]).
#[inline]
pub fn step_kmh(a: &Fix, b: &Fix) -> f64 {
    let distance = haversine_unchecked_m(a.lat, a.lon, b.lat, b.lon);
    let moved = (distance - a.accuracy_m - b.accuracy_m).max(0.0);
    let step_ms = b.ts_ms.saturating_sub(a.ts_ms).max(MIN_STEP_MS);
    moved / (step_ms as f64 / 1_000.0) * 3.6
}

/// Seconds spent inside between consecutive samples `(ts_ms, inside)`, or `None` when
/// there is no sample.
///
/// Samples may come in any order; they are sorted by time, and at equal times samples
/// inside come first (a total order, so input order never changes the result). The
/// interval between two consecutive samples counts when *both* are inside: a single ping
/// inside followed by a long silence proves nothing about the silence. Duplicate
/// timestamps add nothing.
///
/// ```
/// use leasewatch_udfs::core::geo::dwell_seconds;
/// let mut samples = vec![(120_000, true), (0, true), (60_000, true), (180_000, false)];
/// assert_eq!(dwell_seconds(&mut samples), Some(120.0));
/// assert_eq!(dwell_seconds(&mut []), None);
/// ```
pub fn dwell_seconds(samples: &mut [(i64, bool)]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable_by_key(|&(ts, inside)| (ts, !inside));
    let mut inside_ms: i128 = 0;
    for pair in samples.windows(2) {
        if pair[0].1 && pair[1].1 {
            inside_ms += i128::from(pair[1].0) - i128::from(pair[0].0);
        }
    }
    Some(inside_ms as f64 / 1_000.0)
}

/// Mergeable summary for the radius of gyration of a set of positions.
///
/// Each position is mapped to a unit vector in 3-D (Earth-centred), and the summary keeps
/// the count, the running mean vector and the sum of squared deviations from it, updated
/// with Welford's method and merged with Chan's formula. Both are numerically stable, so
/// partial summaries from any partition of the rows, merged in any order, agree with the
/// single-pass result to rounding.
///
/// The radius is `R * sqrt(M2 / n)`: the root-mean-square straight-line (chord) distance
/// from the centroid, scaled to metres. Chord and great-circle distance differ by less
/// than 0.01 % below 100 km, and the approach has no trouble at the poles or across the
/// antimeridian (no projection).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gyration {
    /// Number of positions.
    pub count: u64,
    /// Mean of the unit vectors.
    pub mean: [f64; 3],
    /// Sum of squared distances of the unit vectors from `mean`.
    pub m2: f64,
}

impl Gyration {
    /// Adds a position; returns `false` (and changes nothing) when it is invalid.
    #[inline]
    pub fn push(&mut self, lat: f64, lon: f64) -> bool {
        if !valid_lat_lon(lat, lon) {
            return false;
        }
        let (phi, lambda) = (lat.to_radians(), lon.to_radians());
        let p = [
            phi.cos() * lambda.cos(),
            phi.cos() * lambda.sin(),
            phi.sin(),
        ];
        self.count += 1;
        let n = self.count as f64;
        let mut delta_dot = 0.0;
        for (axis, value) in p.iter().enumerate() {
            let delta = value - self.mean[axis];
            self.mean[axis] += delta / n;
            delta_dot += delta * (value - self.mean[axis]);
        }
        self.m2 += delta_dot;
        true
    }

    /// Folds another summary into this one.
    pub fn merge(&mut self, other: &Gyration) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let mut dist2 = 0.0;
        for axis in 0..3 {
            let delta = other.mean[axis] - self.mean[axis];
            dist2 += delta * delta;
            self.mean[axis] += delta * nb / n;
        }
        self.m2 += other.m2 + dist2 * na * nb / n;
        self.count += other.count;
    }

    /// Radius of gyration in metres, or `None` when no position was added.
    ///
    /// ```
    /// use leasewatch_udfs::core::geo::Gyration;
    /// let mut g = Gyration::default();
    /// assert_eq!(g.radius_m(), None);
    /// g.push(0.0, 0.0);
    /// g.push(0.0, 0.001); // about 111 m east
    /// assert!((g.radius_m().unwrap() - 55.66).abs() < 0.1);
    /// ```
    pub fn radius_m(&self) -> Option<f64> {
        (self.count > 0).then(|| EARTH_RADIUS_M * (self.m2.max(0.0) / self.count as f64).sqrt())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn haversine_edges() {
        // Pole to pole along any meridian: half the circumference.
        let half = std::f64::consts::PI * EARTH_RADIUS_M;
        assert!(close(
            haversine_m(90.0, 0.0, -90.0, 0.0).unwrap(),
            half,
            1e-6
        ));
        // All longitudes meet at the pole.
        assert!(close(
            haversine_m(90.0, 10.0, 90.0, -170.0).unwrap(),
            0.0,
            1e-6
        ));
        // Antimeridian: -180 and 180 are the same meridian.
        assert!(close(
            haversine_m(10.0, 180.0, 10.0, -180.0).unwrap(),
            0.0,
            1e-6
        ));
        // Antipodes do not produce NaN (a is clamped to 1).
        assert!(close(
            haversine_m(0.0, 0.0, 0.0, 180.0).unwrap(),
            half,
            1e-6
        ));
        assert_eq!(haversine_m(0.0, 0.0, 0.0, 0.0), Some(0.0));
        assert_eq!(haversine_m(91.0, 0.0, 0.0, 0.0), None);
        assert_eq!(haversine_m(0.0, 180.5, 0.0, 0.0), None);
        assert_eq!(haversine_m(0.0, 0.0, f64::NAN, 0.0), None);
        assert_eq!(haversine_m(0.0, 0.0, 0.0, f64::INFINITY), None);
    }

    #[test]
    fn fix_validation() {
        assert!(Fix::new(0, 0.0, 0.0, 0.0).is_some());
        assert!(Fix::new(0, 0.0, 0.0, MAX_ACCURACY_M).is_some());
        assert!(Fix::new(0, 0.0, 0.0, MAX_ACCURACY_M + 1.0).is_none());
        assert!(Fix::new(0, 0.0, 0.0, -1.0).is_none());
        assert!(Fix::new(0, 0.0, 0.0, f64::NAN).is_none());
        assert!(Fix::new(0, f64::NAN, 0.0, 5.0).is_none());
    }

    #[test]
    fn speed_duplicate_timestamps_are_finite_and_order_free() {
        let a = Fix::new(1_000, 0.0, 0.0, 0.0).unwrap();
        let b = Fix::new(1_000, 0.001, 0.0, 0.0).unwrap(); // 111 m, same instant
        let c = Fix::new(61_000, 0.001, 0.0, 0.0).unwrap();
        let mut one = vec![a, b, c];
        let mut two = vec![c, b, a];
        let v1 = max_speed_kmh(&mut one).unwrap();
        let v2 = max_speed_kmh(&mut two).unwrap();
        assert_eq!(v1, v2);
        assert!(v1.is_finite());
        // 111.2 m over the 1 s floor.
        assert!(close(v1, 111.195 * 3.6, 0.01));
    }

    #[test]
    fn speed_subtracts_accuracy() {
        let mut fixes = vec![
            Fix::new(0, 0.0, 0.0, 60.0).unwrap(),
            Fix::new(10_000, 0.001, 0.0, 60.0).unwrap(), // 111 m apart, 120 m of error
        ];
        assert_eq!(max_speed_kmh(&mut fixes), Some(0.0));
        let mut single = vec![Fix::new(0, 0.0, 0.0, 1.0).unwrap()];
        assert_eq!(max_speed_kmh(&mut single), None);
    }

    #[test]
    fn speed_across_antimeridian() {
        let mut fixes = vec![
            Fix::new(0, 0.0, 179.99, 0.0).unwrap(),
            Fix::new(3_600_000, 0.0, -179.99, 0.0).unwrap(),
        ];
        // 0.02 degree of equator in one hour: about 2.2 km/h, not 40 000 km/h.
        let v = max_speed_kmh(&mut fixes).unwrap();
        assert!(close(v, 2.224, 0.01), "{v}");
    }

    #[test]
    fn dwell_edges() {
        assert_eq!(dwell_seconds(&mut []), None);
        assert_eq!(dwell_seconds(&mut [(5, true)]), Some(0.0));
        // Duplicate timestamps add nothing; order does not matter.
        let mut a = vec![(0, true), (0, true), (10_000, true), (10_000, false)];
        let mut b = vec![(10_000, false), (0, true), (10_000, true), (0, true)];
        assert_eq!(dwell_seconds(&mut a), Some(10.0));
        assert_eq!(dwell_seconds(&mut b), Some(10.0));
        // Extreme timestamps do not overflow.
        let mut c = vec![(i64::MIN, true), (i64::MAX, true)];
        assert!(dwell_seconds(&mut c).unwrap() > 1e16);
    }

    #[test]
    fn gyration_merge_matches_single_pass() {
        let points: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let t = f64::from(i);
                (
                    45.0 + (t * 0.37).sin() * 0.01,
                    179.995 + (t * 0.11).cos() * 0.01,
                )
            })
            .map(|(lat, lon): (f64, f64)| (lat, if lon > 180.0 { lon - 360.0 } else { lon }))
            .collect();
        let mut whole = Gyration::default();
        for &(lat, lon) in &points {
            assert!(whole.push(lat, lon));
        }
        let mut parts = [
            Gyration::default(),
            Gyration::default(),
            Gyration::default(),
        ];
        for (i, &(lat, lon)) in points.iter().enumerate() {
            parts[(i * 7) % 3].push(lat, lon);
        }
        let mut merged = Gyration::default();
        for part in parts.iter().rev() {
            merged.merge(part);
        }
        let (r1, r2) = (whole.radius_m().unwrap(), merged.radius_m().unwrap());
        assert!(close(r1, r2, 1e-6), "{r1} vs {r2}");
        // Across the antimeridian the radius is about 1 km, not thousands of km.
        assert!(r1 > 500.0 && r1 < 1_500.0, "{r1}");
    }

    #[test]
    fn gyration_edges() {
        let mut g = Gyration::default();
        assert!(!g.push(f64::NAN, 0.0));
        assert!(!g.push(0.0, 181.0));
        assert_eq!(g.radius_m(), None);
        assert!(g.push(90.0, 0.0));
        assert!(g.push(90.0, 120.0)); // the same point: the pole
        assert!(close(g.radius_m().unwrap(), 0.0, 1e-6));
        // Two points 2 m apart: radius 1 m, no catastrophic cancellation.
        let mut small = Gyration::default();
        small.push(10.0, 20.0);
        small.push(10.0 + 2.0 / 111_195.0, 20.0);
        assert!(close(small.radius_m().unwrap(), 1.0, 1e-3));
    }
}
