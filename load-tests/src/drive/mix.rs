//! The batch-size mix: which share of the pings travels in which request sizes.
//!
//! A spec is a comma-separated list of `MIN-MAX:SHARE` (or `N:SHARE`) entries, e.g. the
//! default `1-20:0.05,500-2000:0.95`: 5% of the pings in phone uploads of 1-20 pings,
//! 95% in gateway batches of 500-2000. Shares are of pings, not of requests, and are
//! normalised (they need not add up to 1). A request's size is uniform in its range.

use leasewatch_load::r#gen::rng::Rng;

/// One kind of request: a size range and the share of pings it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub min: u32,
    pub max: u32,
    pub share: f64,
}

impl Entry {
    /// Mean request size.
    pub fn mean(&self) -> f64 {
        (f64::from(self.min) + f64::from(self.max)) / 2.0
    }

    /// Phone uploads (one device's buffered pings) are the small entries; gateway
    /// batches (one ping each of many devices) the large ones.
    pub fn is_phone(&self) -> bool {
        self.max <= PHONE_MAX
    }
}

/// Requests of at most this many pings are phone uploads: one device's pings.
pub const PHONE_MAX: u32 = 50;

/// The default mix.
pub const DEFAULT: &str = "1-20:0.05,500-2000:0.95";

/// A parsed mix, ready to draw request sizes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    entries: Vec<Entry>,
    /// Probability of picking each entry per *request*, so that ping shares come out
    /// as asked: share / mean size, normalised.
    request_weights: Vec<f64>,
}

impl Mix {
    /// Parses a spec (see the module docs).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (range, share) = part.split_once(':').unwrap_or((part, "1"));
            let share: f64 = share
                .trim()
                .parse()
                .map_err(|_| format!("--batch {part:?}: share {share:?} is not a number"))?;
            if !(share.is_finite() && share > 0.0) {
                return Err(format!("--batch {part:?}: the share must be > 0"));
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("--batch {part:?}: size {s:?} is not a whole number"))
            };
            let (min, max) = (num(lo)?, num(hi)?);
            if min == 0 || max < min {
                return Err(format!(
                    "--batch {part:?}: sizes must satisfy 1 <= MIN <= MAX"
                ));
            }
            if max > 100_000 {
                return Err(format!(
                    "--batch {part:?}: at most 100000 pings per request (the ingest default)"
                ));
            }
            entries.push(Entry { min, max, share });
        }
        if entries.is_empty() {
            return Err(format!(
                "--batch {spec:?}: expected MIN-MAX:SHARE[,MIN-MAX:SHARE...], e.g. {DEFAULT}"
            ));
        }
        let total: f64 = entries.iter().map(|e| e.share).sum();
        for e in &mut entries {
            e.share /= total;
        }
        let raw: Vec<f64> = entries.iter().map(|e| e.share / e.mean()).collect();
        let sum: f64 = raw.iter().sum();
        let request_weights = raw.iter().map(|w| w / sum).collect();
        Ok(Self {
            entries,
            request_weights,
        })
    }

    /// Mean pings per request over the mix.
    pub fn mean_request(&self) -> f64 {
        self.entries
            .iter()
            .zip(&self.request_weights)
            .map(|(e, w)| e.mean() * w)
            .sum()
    }

    /// Draws the next request: its entry and its size.
    pub fn draw(&self, rng: &mut Rng) -> (Entry, u32) {
        let i = rng.weighted(&self.request_weights);
        let e = self.entries.get(i).copied().unwrap_or(Entry {
            min: 1,
            max: 1,
            share: 1.0,
        });
        let n = rng.range_i64(i64::from(e.min), i64::from(e.max));
        (e, u32::try_from(n).unwrap_or(e.min))
    }

    /// The spec, normalised (for the report).
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|e| {
                if e.min == e.max {
                    format!("{}:{:.3}", e.min, e.share)
                } else {
                    format!("{}-{}:{:.3}", e.min, e.max, e.share)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_ping_shares() {
        let m = Mix::parse(DEFAULT).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert!(m.entries[0].is_phone());
        assert!(!m.entries[1].is_phone());
        let mut rng = Rng::new(1, 1);
        let (mut phone, mut all) = (0u64, 0u64);
        for _ in 0..200_000 {
            let (e, n) = m.draw(&mut rng);
            assert!((e.min..=e.max).contains(&n));
            all += u64::from(n);
            if e.is_phone() {
                phone += u64::from(n);
            }
        }
        let share = phone as f64 / all as f64;
        assert!((share - 0.05).abs() < 0.01, "{share}");
        assert!((m.mean_request() - all as f64 / 200_000.0).abs() < 20.0);
    }

    #[test]
    fn single_sizes_and_errors() {
        let m = Mix::parse("1000").unwrap();
        assert_eq!(m.describe(), "1000:1.000");
        for bad in [
            "",
            "0-5:1",
            "5-2:1",
            "a-b:1",
            "1-2:x",
            "1-2:-1",
            "1-200000:1",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }
}
