//! Columnar validation of ping batches with the contract's `check_*` rules.

use crate::ingest::{NotAPingBatch, check_rows};
use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use leasewatch_schemas::{Limits, Problem, col};
use std::collections::BTreeMap;

/// Rejections: rows rejected, and problems counted by `field:kind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rejections {
    /// Rows rejected.
    pub rows: u64,
    /// Problems by `field:kind` (a row may have several).
    pub reasons: BTreeMap<String, u64>,
    /// The first few problems, with their place (`file:line`), for the summary.
    pub samples: Vec<String>,
}

/// How many rejected rows are kept as samples.
pub const MAX_SAMPLES: usize = 20;

impl Rejections {
    /// Counts one rejected row with its problems; `place` describes where it was.
    pub fn add(&mut self, place: impl FnOnce() -> String, problems: &[Problem]) {
        self.rows += 1;
        for p in problems {
            *self
                .reasons
                .entry(format!("{}:{}", p.field, p.kind.as_str()))
                .or_default() += 1;
        }
        if self.samples.len() < MAX_SAMPLES {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            self.samples
                .push(format!("{}: {}", place(), text.join("; ")));
        }
    }

    /// Counts a row that could not be decoded at all.
    pub fn add_malformed(&mut self, place: String, message: &str) {
        self.rows += 1;
        *self.reasons.entry("row:malformed".into()).or_default() += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("{place}: {message}"));
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: Rejections) {
        self.rows += other.rows;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        for s in other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// Where a rejected row is, relative to the region of a file it was read in: made
/// absolute (`file:line`, `file row n`) once the regions before it are counted, since
/// regions are decoded on several threads at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// A line of the region, 0-based (rows that did not decode).
    Line(u64),
    /// A decoded row of the region, 0-based (rows that failed validation).
    Row(u64),
    /// Already absolute: the sample as it is shown.
    Fixed,
}

/// The rejections of one region, with places relative to it.
#[derive(Debug, Default)]
pub(crate) struct RegionRejections {
    counts: Rejections,
    samples: Vec<(Place, String)>,
}

impl RegionRejections {
    /// Counts a rejected row with its problems.
    pub(crate) fn add(&mut self, place: Place, problems: &[Problem]) {
        let mut sample = None;
        self.counts.add(
            || {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                sample = Some(text.join("; "));
                String::new()
            },
            problems,
        );
        if let Some(text) = sample {
            self.samples.push((place, text));
        }
    }

    /// Counts a row that could not be decoded at all.
    pub(crate) fn add_malformed(&mut self, place: Place, message: &str) {
        let before = self.counts.samples.len();
        self.counts.add_malformed(String::new(), message);
        if self.counts.samples.len() > before {
            self.samples.push((place, message.to_string()));
        }
    }

    /// Adds rejections whose samples are already absolute.
    pub(crate) fn add_fixed(&mut self, other: Rejections) {
        for s in &other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push((Place::Fixed, s.clone()));
            }
        }
        self.counts.merge(other);
    }

    /// Adds these rejections to `total`, for a region of `file` that starts after
    /// `lines` lines and `rows` decoded rows.
    pub(crate) fn settle(self, total: &mut Rejections, file: &str, lines: u64, rows: u64) {
        let samples = self
            .samples
            .into_iter()
            .map(|(place, text)| match place {
                Place::Line(l) => format!("{file}:{}: {text}", lines + l + 1),
                Place::Row(r) => format!("{file} row {}: {text}", rows + r + 1),
                Place::Fixed => text,
            })
            .collect();
        total.merge(Rejections {
            samples,
            ..self.counts
        });
    }
}

/// Validates a batch of `ping_schema()` rows with the same rules as ingest
/// ([`crate::ingest::check_rows`]); returns the valid rows. Rejected rows are counted in
/// `rej`; `place(row)` names a row for samples (file and line).
///
/// Each row's event time is checked against its recorded `receive_time`; `now_ms`
/// stands in for rows that have none.
pub fn validate_batch(
    batch: &RecordBatch,
    limits: &Limits,
    now_ms: i64,
    rej: &mut Rejections,
    place: &dyn Fn(usize) -> String,
) -> Result<RecordBatch, NotAPingBatch> {
    let (valid, problems) = check(batch, limits, now_ms)?;
    for (row, problems) in problems {
        rej.add(|| place(row), &problems);
    }
    Ok(valid)
}

/// [`validate_batch`] for a batch of a region whose first row is decoded row
/// `first_row` of the region.
pub(crate) fn validate_region_batch(
    batch: &RecordBatch,
    limits: &Limits,
    now_ms: i64,
    rej: &mut RegionRejections,
    first_row: u64,
) -> Result<RecordBatch, NotAPingBatch> {
    let (valid, problems) = check(batch, limits, now_ms)?;
    for (row, problems) in problems {
        rej.add(Place::Row(first_row + row as u64), &problems);
    }
    Ok(valid)
}

type Problems = BTreeMap<usize, Vec<Problem>>;

fn check(
    batch: &RecordBatch,
    limits: &Limits,
    now_ms: i64,
) -> Result<(RecordBatch, Problems), NotAPingBatch> {
    let received = batch
        .column(col::RECEIVE_TIME)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| NotAPingBatch("receive_time is not a millisecond timestamp".into()))?;
    check_rows(
        batch,
        |i| {
            if received.is_valid(i) {
                received.value(i)
            } else {
                now_ms
            }
        },
        limits,
    )
}
