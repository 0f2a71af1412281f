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
    let received = batch
        .column(col::RECEIVE_TIME)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| NotAPingBatch("receive_time is not a millisecond timestamp".into()))?;
    let (valid, problems) = check_rows(
        batch,
        |i| {
            if received.is_valid(i) {
                received.value(i)
            } else {
                now_ms
            }
        },
        limits,
    )?;
    for (row, problems) in problems {
        rej.add(|| place(row), &problems);
    }
    Ok(valid)
}
