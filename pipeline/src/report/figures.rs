//! Every figure of the report, computed with DataFusion SQL over the archive.
//!
//! The archive rows go into a `MemTable` (`archive`); the rows with a repeated `alert_id`
//! (e.g. two replays of the same input archived in one folder) are dropped into
//! a second table, `alerts`, which every figure reads. The SQL is static: no value from
//! the data is ever spliced into it. Rust only fills in categories with no rows (a
//! signal that never fired still gets its row) and puts them in catalogue order.

use super::ReportError;
use super::archive::Archive;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use leasewatch_schemas::{Grade, Queue, SignalKind};
use std::sync::Arc;

/// H3 resolution of the area breakdown (cells of about 1,770 km²: a city and its
/// surroundings).
pub const AREA_RESOLUTION: i64 = 4;
/// Areas listed.
pub const TOP_AREAS: usize = 20;
/// Devices listed.
pub const TOP_DEVICES: usize = 15;

/// Days-past-due buckets: label, lowest and highest DPD (inclusive; `None`: no bound).
/// A DPD of 0 or less (paid, or paid early) is bucket `0`.
pub const DPD_BUCKETS: &[(&str, Option<i32>, Option<i32>)] = &[
    ("0", None, Some(0)),
    ("1-2", Some(1), Some(2)),
    ("3-6", Some(3), Some(6)),
    ("7-14", Some(7), Some(14)),
    ("15-59", Some(15), Some(59)),
    ("60+", Some(60), None),
];

/// The escalation ladder of collection queues, in order; `lock` and `review` are side
/// queues, not steps.
pub const LADDER: [Queue; 4] = [Queue::Sms, Queue::Call, Queue::Field, Queue::Legal];

/// Archive-wide totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Distinct alerts (distinct `alert_id`).
    pub alerts: u64,
    /// Archive rows whose `alert_id` was seen before (dropped).
    pub duplicate_rows: u64,
    /// Distinct devices.
    pub devices: u64,
    /// Distinct leases.
    pub leases: u64,
    /// Alerts without a lease (no lease state was found when grading).
    pub without_lease: u64,
    /// Alerts graded high or critical.
    pub severe: u64,
    /// Earliest alert event time (UTC, minutes).
    pub first: Option<String>,
    /// Latest alert event time (UTC, minutes).
    pub last: Option<String>,
}

/// Alerts of one category (a signal, a grade).
#[derive(Debug, Clone, PartialEq)]
pub struct CountRow {
    /// The category (as written in the archive).
    pub label: String,
    /// Alerts.
    pub alerts: u64,
    /// Distinct devices.
    pub devices: u64,
    /// Alerts graded high or critical.
    pub severe: u64,
}

/// Alerts in one H3 cell.
#[derive(Debug, Clone, PartialEq)]
pub struct AreaRow {
    /// The cell id in hexadecimal, as H3 tools write it.
    pub cell: String,
    /// Alerts.
    pub alerts: u64,
    /// Distinct devices.
    pub devices: u64,
    /// Alerts graded high or critical.
    pub severe: u64,
    /// Mean latitude of its alerts.
    pub lat: f64,
    /// Mean longitude of its alerts.
    pub lon: f64,
}

/// The area breakdown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Areas {
    /// The cells with most alerts, most first.
    pub top: Vec<AreaRow>,
    /// Distinct cells with alerts.
    pub cells: u64,
    /// Alerts with no valid position.
    pub unplaced: u64,
}

/// Leases in one DPD bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct DpdRow {
    /// The bucket label (`0`, `1-2`, ...).
    pub bucket: String,
    /// Distinct leases whose latest known DPD falls in it.
    pub leases: u64,
    /// Their share of the leases with a known DPD (0..=1).
    pub share: f64,
}

/// The overdue figures, over distinct leases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overdue {
    /// One row per [`DPD_BUCKETS`] entry, in order.
    pub buckets: Vec<DpdRow>,
    /// Distinct leases in the archive.
    pub leases: u64,
    /// Leases none of whose alerts carries a DPD.
    pub unknown: u64,
    /// Leases with DPD >= 1 over leases with a known DPD (None: no known DPD).
    pub rate: Option<f64>,
}

/// One collection queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    /// The queue name.
    pub queue: String,
    /// Alerts routed to it.
    pub alerts: u64,
    /// Distinct devices.
    pub devices: u64,
    /// Distinct leases.
    pub leases: u64,
    /// For ladder steps: leases that reached this step or a later one.
    pub reached: Option<u64>,
}

/// One of the devices with most alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    /// IMEI.
    pub device_id: String,
    /// A lease of the device (the greatest id, when alerts name several).
    pub lease_id: Option<String>,
    /// Alerts.
    pub alerts: u64,
    /// The distinct signals, sorted, comma-separated.
    pub signals: String,
    /// The most severe grade (None when no grade is a known one).
    pub worst: Option<Grade>,
    /// Latest alert (UTC, minutes).
    pub last: Option<String>,
}

/// Every figure of the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Totals.
    pub totals: Totals,
    /// Per signal, catalogue order, then unknown names by alerts.
    pub by_signal: Vec<CountRow>,
    /// Per grade, least severe first, then unknown names.
    pub by_grade: Vec<CountRow>,
    /// `(signal, grade, alerts)` for every pair with alerts.
    pub signal_grade: Vec<(String, String, u64)>,
    /// Per H3 cell.
    pub areas: Areas,
    /// Overdue rate by DPD bucket.
    pub overdue: Overdue,
    /// Per queue: the ladder in order, then `lock`, `review`, then unknown names.
    pub queues: Vec<QueueRow>,
    /// The devices with most alerts.
    pub top_devices: Vec<DeviceRow>,
}

/// `CASE` expression mapping `grade` to its severity rank (0 = info), -1 for unknown.
fn grade_rank_sql() -> String {
    let arms: String = Grade::ALL
        .iter()
        .enumerate()
        .map(|(i, g)| format!(" WHEN '{}' THEN {i}", g.as_str()))
        .collect();
    format!("CASE grade{arms} ELSE -1 END")
}

/// `CASE` expression mapping `queue` to its ladder step (1 = sms), 0 off the ladder.
fn ladder_step_sql() -> String {
    let arms: String = LADDER
        .iter()
        .enumerate()
        .map(|(i, q)| format!(" WHEN '{}' THEN {}", q.as_str(), i + 1))
        .collect();
    format!("CASE queue{arms} ELSE 0 END")
}

/// `CASE` expression mapping `expr` (a DPD) to its [`DPD_BUCKETS`] index, NULL to the
/// index after the last bucket.
fn dpd_bucket_sql(expr: &str) -> String {
    let arms: String = DPD_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, (_, lo, hi))| {
            let cond = match (lo, hi) {
                (Some(lo), Some(hi)) => format!("{expr} BETWEEN {lo} AND {hi}"),
                (None, Some(hi)) => format!("{expr} <= {hi}"),
                (Some(lo), None) => format!("{expr} >= {lo}"),
                (None, None) => "TRUE".to_string(),
            };
            format!(" WHEN {cond} THEN {i}")
        })
        .collect();
    format!("CASE{arms} ELSE {} END", DPD_BUCKETS.len())
}

const SEVERE: &str = "sum(CASE WHEN grade IN ('high', 'critical') THEN 1 ELSE 0 END)";
const MINUTE: &str = "'%Y-%m-%d %H:%M UTC'";

/// Computes every figure of `archive`.
pub async fn compute(archive: &Archive) -> Result<Figures, ReportError> {
    let config = SessionConfig::new()
        .with_target_partitions(2)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    let functions = leasewatch_udfs::datafusion::functions(None);
    for udf in &functions.scalar {
        ctx.register_udf(udf.as_ref().clone());
    }
    for udaf in &functions.aggregate {
        ctx.register_udaf(udaf.as_ref().clone());
    }
    let schema = super::archive::table_schema();
    let table = MemTable::try_new(schema.clone(), vec![archive.batches.clone()])
        .map_err(|e| ReportError::internal("the archive table", e))?;
    ctx.register_table("archive", Arc::new(table))
        .map_err(|e| ReportError::internal("the archive table", e))?;

    // One row per alert id: the earliest (then greatest, for a total order) row.
    let columns = super::archive::REQUIRED.join(", ");
    let deduped = query(
        &ctx,
        "distinct alerts",
        &format!(
            "SELECT {columns} FROM (
               SELECT {columns}, row_number() OVER (
                 PARTITION BY alert_id ORDER BY event_time, signal, grade, queue, device_id
               ) AS copy
               FROM archive)
             WHERE copy = 1"
        ),
    )
    .await?;
    let alerts = MemTable::try_new(schema, vec![deduped])
        .map_err(|e| ReportError::internal("the alerts table", e))?;
    ctx.register_table("alerts", Arc::new(alerts))
        .map_err(|e| ReportError::internal("the alerts table", e))?;

    let mut f = Figures {
        totals: totals(&ctx, archive.rows).await?,
        ..Figures::default()
    };
    f.by_signal = counts(&ctx, "signal", SignalKind::ALL.map(SignalKind::as_str)).await?;
    f.by_grade = counts(&ctx, "grade", Grade::ALL.map(Grade::as_str)).await?;
    let t = query(
        &ctx,
        "alerts by signal and grade",
        "SELECT signal, grade, count(*) AS alerts FROM alerts
         GROUP BY signal, grade ORDER BY signal, grade",
    )
    .await?;
    let t = Frame::new("alerts by signal and grade", t)?;
    let (s, g, n) = (t.strings("signal")?, t.strings("grade")?, t.ints("alerts")?);
    f.signal_grade = (0..t.len())
        .map(|i| (label(&s[i]), label(&g[i]), count(n[i])))
        .collect();
    f.areas = areas(&ctx).await?;
    f.overdue = overdue(&ctx).await?;
    f.queues = queues(&ctx).await?;
    f.top_devices = top_devices(&ctx).await?;
    Ok(f)
}

async fn totals(ctx: &SessionContext, rows: u64) -> Result<Totals, ReportError> {
    let what = "totals";
    let t = query(
        ctx,
        what,
        &format!(
            "SELECT count(*) AS alerts,
               count(DISTINCT device_id) AS devices,
               count(DISTINCT lease_id) AS leases,
               sum(CASE WHEN lease_id IS NULL THEN 1 ELSE 0 END) AS without_lease,
               {SEVERE} AS severe,
               to_char(min(event_time), {MINUTE}) AS first_alert,
               to_char(max(event_time), {MINUTE}) AS last_alert
             FROM alerts"
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    let one = |v: Vec<Option<i64>>| count(v.first().copied().flatten());
    let alerts = one(t.ints("alerts")?);
    Ok(Totals {
        alerts,
        duplicate_rows: rows.saturating_sub(alerts),
        devices: one(t.ints("devices")?),
        leases: one(t.ints("leases")?),
        without_lease: one(t.ints("without_lease")?),
        severe: one(t.ints("severe")?),
        first: t.strings("first_alert")?.into_iter().next().flatten(),
        last: t.strings("last_alert")?.into_iter().next().flatten(),
    })
}

/// Alerts, devices and severe alerts per value of `column`: the `known` values in order
/// (zero when absent), then any other value by alerts.
async fn counts<const N: usize>(
    ctx: &SessionContext,
    column: &str,
    known: [&str; N],
) -> Result<Vec<CountRow>, ReportError> {
    let what = format!("alerts by {column}");
    let t = query(
        ctx,
        &what,
        &format!(
            "SELECT {column} AS label, count(*) AS alerts,
               count(DISTINCT device_id) AS devices, {SEVERE} AS severe
             FROM alerts GROUP BY {column} ORDER BY alerts DESC, label"
        ),
    )
    .await?;
    let t = Frame::new(&what, t)?;
    let (l, a, d, s) = (
        t.strings("label")?,
        t.ints("alerts")?,
        t.ints("devices")?,
        t.ints("severe")?,
    );
    let rows: Vec<CountRow> = (0..t.len())
        .map(|i| CountRow {
            label: label(&l[i]),
            alerts: count(a[i]),
            devices: count(d[i]),
            severe: count(s[i]),
        })
        .collect();
    let mut out: Vec<CountRow> = known
        .iter()
        .map(|k| {
            rows.iter()
                .find(|r| r.label == *k)
                .cloned()
                .unwrap_or_else(|| CountRow {
                    label: (*k).to_string(),
                    alerts: 0,
                    devices: 0,
                    severe: 0,
                })
        })
        .collect();
    out.extend(
        rows.into_iter()
            .filter(|r| !known.contains(&r.label.as_str())),
    );
    Ok(out)
}

async fn areas(ctx: &SessionContext) -> Result<Areas, ReportError> {
    let cells = format!(
        "WITH cells AS (
           SELECT h3_cell(lat, lon, {AREA_RESOLUTION}) AS cell, device_id, grade, lat, lon
           FROM alerts)"
    );
    let what = "alerts by area";
    let t = query(
        ctx,
        what,
        &format!(
            "{cells}
             SELECT to_hex(cell) AS cell, count(*) AS alerts,
               count(DISTINCT device_id) AS devices, {SEVERE} AS severe,
               avg(lat) AS lat, avg(lon) AS lon
             FROM cells WHERE cell IS NOT NULL
             GROUP BY cell ORDER BY alerts DESC, cell LIMIT {TOP_AREAS}"
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    let (c, a, d, s, lat, lon) = (
        t.strings("cell")?,
        t.ints("alerts")?,
        t.ints("devices")?,
        t.ints("severe")?,
        t.floats("lat")?,
        t.floats("lon")?,
    );
    let top = (0..t.len())
        .map(|i| AreaRow {
            cell: label(&c[i]),
            alerts: count(a[i]),
            devices: count(d[i]),
            severe: count(s[i]),
            lat: lat[i].unwrap_or(f64::NAN),
            lon: lon[i].unwrap_or(f64::NAN),
        })
        .collect();
    let what = "areas";
    let t = query(
        ctx,
        what,
        &format!(
            "{cells}
             SELECT count(DISTINCT cell) AS cells,
               sum(CASE WHEN cell IS NULL THEN 1 ELSE 0 END) AS unplaced
             FROM cells"
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    Ok(Areas {
        top,
        cells: count(t.ints("cells")?.first().copied().flatten()),
        unplaced: count(t.ints("unplaced")?.first().copied().flatten()),
    })
}

async fn overdue(ctx: &SessionContext) -> Result<Overdue, ReportError> {
    // Each lease's latest known DPD: from its latest alert that carries one (ties: the
    // greater DPD). Leases whose alerts carry none land in the bucket after the last.
    let per_lease = format!(
        "WITH leases AS (
           SELECT DISTINCT lease_id FROM alerts WHERE lease_id IS NOT NULL),
         latest AS (
           SELECT lease_id, days_past_due FROM (
             SELECT lease_id, days_past_due, row_number() OVER (
               PARTITION BY lease_id ORDER BY event_time DESC, days_past_due DESC) AS n
             FROM alerts WHERE lease_id IS NOT NULL AND days_past_due IS NOT NULL)
           WHERE n = 1),
         bucketed AS (
           SELECT {} AS bucket FROM leases l LEFT JOIN latest k ON l.lease_id = k.lease_id),
         counts AS (SELECT bucket, count(*) AS leases FROM bucketed GROUP BY bucket)",
        dpd_bucket_sql("k.days_past_due")
    );
    let unknown = DPD_BUCKETS.len();
    let what = "leases by DPD bucket";
    let t = query(
        ctx,
        what,
        &format!(
            "{per_lease}
             SELECT bucket, leases,
               CAST(leases AS DOUBLE) / NULLIF(
                 (SELECT sum(leases) FROM counts WHERE bucket < {unknown}), 0) AS share
             FROM counts ORDER BY bucket"
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    let (b, n, s) = (t.ints("bucket")?, t.ints("leases")?, t.floats("share")?);
    let mut out = Overdue {
        buckets: DPD_BUCKETS
            .iter()
            .map(|(l, _, _)| DpdRow {
                bucket: (*l).to_string(),
                leases: 0,
                share: 0.0,
            })
            .collect(),
        ..Overdue::default()
    };
    for i in 0..t.len() {
        let leases = count(n[i]);
        out.leases += leases;
        match b[i].and_then(|b| usize::try_from(b).ok()) {
            Some(k) if k < unknown => {
                if let Some(row) = out.buckets.get_mut(k) {
                    row.leases = leases;
                    row.share = s[i].unwrap_or(0.0);
                }
            }
            _ => out.unknown += leases,
        }
    }
    let what = "overdue rate";
    let t = query(
        ctx,
        what,
        &format!(
            "{per_lease}
             SELECT CAST(sum(CASE WHEN bucket BETWEEN 1 AND {last} THEN leases ELSE 0 END)
                      AS DOUBLE)
                    / NULLIF(sum(CASE WHEN bucket <= {last} THEN leases ELSE 0 END), 0)
                    AS rate
             FROM counts",
            last = unknown - 1
        ),
    )
    .await?;
    out.rate = Frame::new(what, t)?
        .floats("rate")?
        .first()
        .copied()
        .flatten();
    Ok(out)
}

async fn queues(ctx: &SessionContext) -> Result<Vec<QueueRow>, ReportError> {
    let what = "alerts by queue";
    let t = query(
        ctx,
        what,
        "SELECT queue, count(*) AS alerts, count(DISTINCT device_id) AS devices,
           count(DISTINCT lease_id) AS leases
         FROM alerts GROUP BY queue ORDER BY alerts DESC, queue",
    )
    .await?;
    let t = Frame::new(what, t)?;
    let (q, a, d, l) = (
        t.strings("queue")?,
        t.ints("alerts")?,
        t.ints("devices")?,
        t.ints("leases")?,
    );
    let rows: Vec<QueueRow> = (0..t.len())
        .map(|i| QueueRow {
            queue: label(&q[i]),
            alerts: count(a[i]),
            devices: count(d[i]),
            leases: count(l[i]),
            reached: None,
        })
        .collect();
    // The funnel: each lease's furthest ladder step, then per step the leases at it or
    // beyond.
    let steps: Vec<String> = LADDER
        .iter()
        .enumerate()
        .map(|(i, q)| format!("('{}', {})", q.as_str(), i + 1))
        .collect();
    let what = "collection funnel";
    let t = query(
        ctx,
        what,
        &format!(
            "WITH furthest AS (
               SELECT lease_id, max({}) AS step FROM alerts
               WHERE lease_id IS NOT NULL GROUP BY lease_id),
             ladder AS (SELECT column1 AS queue, column2 AS step FROM (VALUES {}))
             SELECT s.queue, sum(CASE WHEN f.step >= s.step THEN 1 ELSE 0 END) AS reached
             FROM ladder s CROSS JOIN furthest f GROUP BY s.queue",
            ladder_step_sql(),
            steps.join(", ")
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    let (fq, reached) = (t.strings("queue")?, t.ints("reached")?);
    let reached_at = |q: Queue| {
        (0..t.len())
            .find(|i| fq[*i].as_deref() == Some(q.as_str()))
            .map(|i| count(reached[i]))
            .unwrap_or(0)
    };
    let order = LADDER.into_iter().chain([Queue::Lock, Queue::Review]);
    let mut out: Vec<QueueRow> = order
        .map(|q| {
            let mut row = rows
                .iter()
                .find(|r| r.queue == q.as_str())
                .cloned()
                .unwrap_or_else(|| QueueRow {
                    queue: q.as_str().to_string(),
                    alerts: 0,
                    devices: 0,
                    leases: 0,
                    reached: None,
                });
            if LADDER.contains(&q) {
                row.reached = Some(reached_at(q));
            }
            row
        })
        .collect();
    out.extend(
        rows.into_iter()
            .filter(|r| Queue::parse(&r.queue).is_none()),
    );
    Ok(out)
}

async fn top_devices(ctx: &SessionContext) -> Result<Vec<DeviceRow>, ReportError> {
    let what = "top devices";
    let t = query(
        ctx,
        what,
        &format!(
            "SELECT device_id, max(lease_id) AS lease_id, count(*) AS alerts,
               array_to_string(array_sort(array_agg(DISTINCT signal)), ', ') AS signals,
               max({}) AS worst,
               to_char(max(event_time), {MINUTE}) AS last_alert
             FROM alerts GROUP BY device_id
             ORDER BY alerts DESC, device_id LIMIT {TOP_DEVICES}",
            grade_rank_sql()
        ),
    )
    .await?;
    let t = Frame::new(what, t)?;
    let (id, lease, a, s, w, last) = (
        t.strings("device_id")?,
        t.strings("lease_id")?,
        t.ints("alerts")?,
        t.strings("signals")?,
        t.ints("worst")?,
        t.strings("last_alert")?,
    );
    Ok((0..t.len())
        .map(|i| DeviceRow {
            device_id: label(&id[i]),
            lease_id: lease[i].clone(),
            alerts: count(a[i]),
            signals: s[i].clone().unwrap_or_default(),
            worst: w[i]
                .and_then(|w| usize::try_from(w).ok())
                .and_then(|w| Grade::ALL.get(w).copied()),
            last: last[i].clone(),
        })
        .collect())
}

/// A category value for display: NULL is `(none)`.
fn label(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "(none)".to_string())
}

/// A SQL count (NULL for a sum over no rows) as u64.
fn count(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

async fn query(
    ctx: &SessionContext,
    figure: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, ReportError> {
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| ReportError::internal(figure, e))?;
    df.collect()
        .await
        .map_err(|e| ReportError::internal(figure, e))
}

/// A query result as columns of Rust values, looked up by name.
struct Frame<'a> {
    figure: &'a str,
    batch: Option<RecordBatch>,
}

impl<'a> Frame<'a> {
    fn new(figure: &'a str, batches: Vec<RecordBatch>) -> Result<Self, ReportError> {
        let batch = match batches.first() {
            None => None,
            Some(b) => Some(
                arrow::compute::concat_batches(&b.schema(), &batches)
                    .map_err(|e| ReportError::internal(figure, e))?,
            ),
        };
        Ok(Self { figure, batch })
    }

    fn len(&self) -> usize {
        self.batch.as_ref().map_or(0, RecordBatch::num_rows)
    }

    fn column(&self, name: &str, to: &DataType) -> Result<Option<Arc<dyn Array>>, ReportError> {
        let Some(b) = &self.batch else {
            return Ok(None);
        };
        let c = b.column_by_name(name).ok_or_else(|| {
            ReportError::internal(self.figure, format!("no column {name} in the result"))
        })?;
        arrow::compute::cast(c, to)
            .map(Some)
            .map_err(|e| ReportError::internal(self.figure, format!("column {name}: {e}")))
    }

    fn strings(&self, name: &str) -> Result<Vec<Option<String>>, ReportError> {
        Ok(match self.column(name, &DataType::Utf8)? {
            None => Vec::new(),
            Some(c) => c
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect(),
        })
    }

    fn ints(&self, name: &str) -> Result<Vec<Option<i64>>, ReportError> {
        Ok(match self.column(name, &DataType::Int64)? {
            None => Vec::new(),
            Some(c) => c.as_primitive::<Int64Type>().iter().collect(),
        })
    }

    fn floats(&self, name: &str) -> Result<Vec<Option<f64>>, ReportError> {
        Ok(match self.column(name, &DataType::Float64)? {
            None => Vec::new(),
            Some(c) => c.as_primitive::<Float64Type>().iter().collect(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Float64Array, Int32Array, StringArray, TimestampMillisecondArray,
    };

    /// alert_id, signal, grade, queue, device_id, lease_id, event_time, days_past_due.
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        i64,
        Option<i32>,
    );

    fn batch(rows: &[Row<'_>]) -> Archive {
        let schema = super::super::archive::table_schema();
        let s = |f: &dyn Fn(&Row<'_>) -> Option<String>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|r| Some(r.0.to_string())),
            s(&|r| Some(r.1.to_string())),
            s(&|r| Some(r.2.to_string())),
            s(&|r| Some(r.3.to_string())),
            s(&|r| Some(r.4.to_string())),
            s(&|r| r.5.map(str::to_string)),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.6).collect::<Vec<_>>())
                    .with_timezone("+00:00"),
            ),
            Arc::new(rows.iter().map(|r| r.7).collect::<Int32Array>()),
            Arc::new(Float64Array::from(vec![Some(-1.29); rows.len()])),
            Arc::new(Float64Array::from(vec![Some(36.82); rows.len()])),
        ];
        Archive {
            files: vec![],
            rows: rows.len() as u64,
            batches: vec![RecordBatch::try_new(schema, cols).unwrap()],
        }
    }

    #[tokio::test]
    async fn figures_of_a_small_archive() {
        let a = batch(&[
            (
                "a1",
                "tamper",
                "high",
                "lock",
                "D1",
                Some("L1"),
                1_000,
                Some(0),
            ),
            (
                "a1",
                "tamper",
                "high",
                "lock",
                "D1",
                Some("L1"),
                1_000,
                Some(0),
            ),
            (
                "a2",
                "overdue",
                "low",
                "sms",
                "D2",
                Some("L2"),
                1_000,
                Some(3),
            ),
            (
                "a3",
                "overdue",
                "medium",
                "call",
                "D2",
                Some("L2"),
                2_000,
                Some(8),
            ),
            (
                "a4",
                "out_of_area",
                "info",
                "review",
                "D3",
                None,
                3_000,
                None,
            ),
            (
                "a5",
                "mystery",
                "critical",
                "legal",
                "D4",
                Some("L4"),
                4_000,
                Some(70),
            ),
            ("a6", "overdue", "low", "sms", "D5", Some("L5"), 4_000, None),
        ]);
        let f = compute(&a).await.unwrap();
        assert_eq!(f.totals.alerts, 6);
        assert_eq!(f.totals.duplicate_rows, 1);
        assert_eq!(f.totals.devices, 5);
        assert_eq!(f.totals.leases, 4);
        assert_eq!(f.totals.without_lease, 1);
        assert_eq!(f.totals.severe, 2);
        assert_eq!(f.totals.first.as_deref(), Some("1970-01-01 00:00 UTC"));
        assert_eq!(f.by_signal.len(), SignalKind::ALL.len() + 1);
        let overdue = f.by_signal.iter().find(|r| r.label == "overdue").unwrap();
        assert_eq!((overdue.alerts, overdue.devices), (3, 2));
        assert_eq!(f.by_signal.last().unwrap().label, "mystery");
        assert_eq!(f.by_grade[1].alerts, 2); // low
        assert_eq!(f.areas.top.len(), 1);
        assert_eq!(f.areas.top[0].alerts, 6);
        assert_eq!(f.areas.top[0].cell.len(), 15, "{:?}", f.areas.top[0]);
        assert_eq!(f.areas.unplaced, 0);
        // L1: 0, L2: 8 (latest), L4: 70, L5: unknown.
        let o = &f.overdue;
        assert_eq!(o.leases, 4);
        assert_eq!(o.unknown, 1);
        let n: Vec<u64> = o.buckets.iter().map(|b| b.leases).collect();
        assert_eq!(n, vec![1, 0, 0, 1, 0, 1]);
        assert!((o.rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((o.buckets[3].share - 1.0 / 3.0).abs() < 1e-9);
        let q: Vec<(&str, u64, Option<u64>)> = f
            .queues
            .iter()
            .map(|r| (r.queue.as_str(), r.alerts, r.reached))
            .collect();
        assert_eq!(
            q,
            vec![
                ("sms", 2, Some(3)),
                ("call", 1, Some(2)),
                ("field", 0, Some(1)),
                ("legal", 1, Some(1)),
                ("lock", 1, None),
                ("review", 1, None),
            ]
        );
        assert_eq!(f.top_devices[0].device_id, "D2");
        assert_eq!(f.top_devices[0].signals, "overdue");
        assert_eq!(f.top_devices[0].worst, Some(Grade::Medium));
        assert_eq!(f.top_devices.len(), 5);
    }

    #[tokio::test]
    async fn an_empty_archive_has_zero_figures() {
        let a = batch(&[]);
        let f = compute(&a).await.unwrap();
        assert_eq!(f.totals.alerts, 0);
        assert!(f.by_signal.iter().all(|r| r.alerts == 0));
        assert_eq!(f.overdue.rate, None);
        assert!(f.top_devices.is_empty());
    }
}
