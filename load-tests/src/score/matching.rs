//! Matching alerts to incidents and tricky episodes.
//!
//! An alert covers `[lo, hi]` = `[window_start or event_time, window_end or event_time]`.
//! It matches an incident of its own signal on its own device when that interval
//! overlaps `[start - slack, end + slack]`, bounds included. An incident is detected
//! when at least one alert matches it; an alert is true when it matches at least one
//! incident. An alert that matches none and overlaps a tricky episode of its device
//! (with the alert signal's slack) is a false alert on that episode's kind; `overdue`
//! alerts are about the lease, not behaviour, and are never counted there.

use std::collections::HashMap;

use leasewatch_load::r#gen::incidents::Tricky;
use leasewatch_schemas::SignalKind;

/// Default slack per signal in minutes, in catalogue order: the signal's detection
/// window, so an alert reported at the end of its window still reaches the span.
pub const DEFAULT_SLACK_MIN: [(SignalKind, u32); 10] = [
    // Per ping: clock skew and late uploads only.
    (SignalKind::SimMismatch, 15),
    // hop(30 min, 6 h): 3 ICCIDs are counted until the window's end.
    (SignalKind::SimSwapFrequent, 360),
    (SignalKind::OutOfArea, 15),
    // hop(15 min, 2 h), 45 min inside: a window can end 75 min after the stay.
    (SignalKind::RiskyPlaceDwell, 120),
    // A stay of 6 h or more outside the area, reported while it lasts.
    (SignalKind::AbnormalDwell, 60),
    // hop(5 min, 30 min).
    (SignalKind::ImpossibleTravel, 30),
    (SignalKind::CrossBorder, 15),
    // Reported when the gap is seen (at its threshold or at the next ping).
    (SignalKind::DeviceDark, 60),
    (SignalKind::Tamper, 15),
    // The days-past-due sweep runs daily.
    (SignalKind::Overdue, 1440),
];

const MIN_MS: i64 = 60_000;

/// Index of a signal in [`SignalKind::ALL`] (the enum is declared in that order).
pub fn signal_index(k: SignalKind) -> usize {
    k as usize
}

/// Slack in milliseconds per signal.
#[derive(Debug, Clone)]
pub struct Slack([i64; 10]);

impl Default for Slack {
    fn default() -> Self {
        let mut ms = [0; 10];
        for (k, m) in DEFAULT_SLACK_MIN {
            ms[signal_index(k)] = i64::from(m) * MIN_MS;
        }
        Self(ms)
    }
}

impl Slack {
    /// The same slack for every signal.
    pub fn uniform(minutes: u32) -> Self {
        Self([i64::from(minutes) * MIN_MS; 10])
    }

    /// Slack of `k` in milliseconds.
    pub fn ms(&self, k: SignalKind) -> i64 {
        self.0[signal_index(k)]
    }
}

/// A planted incident (`truth.csv` row).
#[derive(Debug, Clone)]
pub struct Incident {
    pub kind: SignalKind,
    pub device: String,
    pub start: i64,
    pub end: i64,
}

/// A tricky episode (`tricky.csv` row); `kind` indexes [`Tricky::ALL`].
#[derive(Debug, Clone)]
pub struct Episode {
    pub kind: usize,
    pub device: String,
    pub start: i64,
    pub end: i64,
}

/// One distinct alert: its signal, device and interval `[lo, hi]` (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub signal: SignalKind,
    pub device: String,
    pub lo: i64,
    pub hi: i64,
}

/// Counts for one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalScore {
    pub incidents: u64,
    pub detected: u64,
    pub alerts: u64,
    pub true_alerts: u64,
}

/// `num / den`, or `None` when `den` is 0.
pub fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl SignalScore {
    pub fn recall(&self) -> Option<f64> {
        ratio(self.detected, self.incidents)
    }

    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_alerts, self.alerts)
    }

    fn add(&mut self, o: &SignalScore) {
        self.incidents += o.incidents;
        self.detected += o.detected;
        self.alerts += o.alerts;
        self.true_alerts += o.true_alerts;
    }
}

/// The outcome of scoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Score {
    /// Per signal, in [`SignalKind::ALL`] order.
    pub signals: [SignalScore; 10],
    /// Episodes per tricky kind ([`Tricky::ALL`] order); `None` without `tricky.csv`.
    pub tricky_episodes: Option<[u64; 4]>,
    /// False alerts per tricky kind ([`Tricky::ALL`] order).
    pub tricky_false: [u64; 4],
    /// Distinct false alerts on any tricky episode (an alert is counted once per kind
    /// above, and once here).
    pub tricky_false_total: u64,
}

impl Score {
    /// Sums over all signals.
    pub fn totals(&self) -> SignalScore {
        let mut t = SignalScore::default();
        for s in &self.signals {
            t.add(s);
        }
        t
    }
}

/// Whether `[lo, hi]` overlaps `[start - slack, end + slack]`.
fn overlaps(a: &Alert, start: i64, end: i64, slack: i64) -> bool {
    a.lo <= end.saturating_add(slack) && a.hi >= start.saturating_sub(slack)
}

/// Scores distinct `alerts` against `incidents` and, when given, tricky `episodes`.
pub fn score(
    incidents: &[Incident],
    episodes: Option<&[Episode]>,
    alerts: &[Alert],
    slack: &Slack,
) -> Score {
    let mut out = Score::default();
    let mut by_key: HashMap<(SignalKind, &str), Vec<usize>> = HashMap::new();
    for (i, inc) in incidents.iter().enumerate() {
        by_key
            .entry((inc.kind, inc.device.as_str()))
            .or_default()
            .push(i);
        out.signals[signal_index(inc.kind)].incidents += 1;
    }
    let mut by_device: HashMap<&str, Vec<&Episode>> = HashMap::new();
    if let Some(eps) = episodes {
        let mut counts = [0u64; 4];
        for e in eps {
            by_device.entry(e.device.as_str()).or_default().push(e);
            if let Some(c) = counts.get_mut(e.kind) {
                *c += 1;
            }
        }
        out.tricky_episodes = Some(counts);
    }

    let mut detected = vec![false; incidents.len()];
    for a in alerts {
        let s = slack.ms(a.signal);
        let mut matched = false;
        for &i in by_key
            .get(&(a.signal, a.device.as_str()))
            .map_or(&[][..], Vec::as_slice)
        {
            let inc = &incidents[i];
            if overlaps(a, inc.start, inc.end, s) {
                matched = true;
                detected[i] = true;
            }
        }
        let sig = &mut out.signals[signal_index(a.signal)];
        sig.alerts += 1;
        if matched {
            sig.true_alerts += 1;
            continue;
        }
        if a.signal == SignalKind::Overdue {
            continue;
        }
        let mut hit = [false; 4];
        for e in by_device
            .get(a.device.as_str())
            .map_or(&[][..], Vec::as_slice)
        {
            if overlaps(a, e.start, e.end, s)
                && let Some(h) = hit.get_mut(e.kind)
            {
                *h = true;
            }
        }
        for (k, h) in hit.iter().enumerate() {
            if *h {
                out.tricky_false[k] += 1;
            }
        }
        if hit.iter().any(|h| *h) {
            out.tricky_false_total += 1;
        }
    }
    for (i, d) in detected.iter().enumerate() {
        if *d {
            out.signals[signal_index(incidents[i].kind)].detected += 1;
        }
    }
    out
}

/// The tricky kind names, in [`Score::tricky_false`] order.
pub fn tricky_names() -> [&'static str; 4] {
    Tricky::ALL.map(Tricky::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_the_catalogue() {
        for (i, k) in SignalKind::ALL.into_iter().enumerate() {
            assert_eq!(signal_index(k), i);
            assert_eq!(DEFAULT_SLACK_MIN[i].0, k);
        }
    }

    #[test]
    fn help_lists_the_default_slacks() {
        for (k, m) in DEFAULT_SLACK_MIN {
            let line = super::super::SLACK_HELP
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", k.as_str())));
            let Some(line) = line else {
                panic!("{} missing from SLACK_HELP", k.as_str());
            };
            assert!(line.contains(&format!(" {m} min")), "{line}");
        }
    }

    fn alert(signal: SignalKind, lo: i64, hi: i64) -> Alert {
        Alert {
            signal,
            device: "d".to_string(),
            lo,
            hi,
        }
    }

    #[test]
    fn slack_bounds_are_inclusive() {
        let inc = [Incident {
            kind: SignalKind::Tamper,
            device: "d".to_string(),
            start: 1_000_000,
            end: 2_000_000,
        }];
        let slack = Slack::uniform(1);
        let at = |lo, hi| score(&inc, None, &[alert(SignalKind::Tamper, lo, hi)], &slack);
        assert_eq!(at(2_060_000, 2_060_000).signals[8].true_alerts, 1);
        assert_eq!(at(2_060_001, 2_060_001).signals[8].true_alerts, 0);
        assert_eq!(at(0, 940_000).signals[8].true_alerts, 1);
        assert_eq!(at(0, 939_999).signals[8].true_alerts, 0);
        // A window spanning the whole incident matches too.
        assert_eq!(at(0, 9_000_000).signals[8].detected, 1);
    }

    #[test]
    fn overdue_is_never_a_tricky_false_alert() {
        let eps = [Episode {
            kind: 0,
            device: "d".to_string(),
            start: 0,
            end: 10,
        }];
        let s = score(
            &[],
            Some(&eps),
            &[
                alert(SignalKind::Overdue, 5, 5),
                alert(SignalKind::Tamper, 5, 5),
            ],
            &Slack::default(),
        );
        assert_eq!(s.tricky_false, [1, 0, 0, 0]);
        assert_eq!(s.tricky_false_total, 1);
        assert_eq!(s.tricky_episodes, Some([1, 0, 0, 0]));
    }
}
