//! `max_speed_kmh` in hop windows: compactions settle its fixes (the state keeps the ends
//! of each settled run), which must give exactly the rows of the whole lists while the
//! window state stays a fraction of their size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::RecordBatch;
use leasewatch::engine::{Engine, EngineOptions};
use leasewatch_schemas::DevicePing;
use support::product::{MIN, NAIROBI, Place, T0, imei, ping};
use support::splitmix::SplitMix;

/// The impossible-travel query (`sql/impossible_travel.sql`) without its threshold, with
/// the time argument given as `TIME`.
fn sql(time: &str) -> String {
    format!(
        r#"
CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  lat DOUBLE,
  lon DOUBLE,
  accuracy_m REAL,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '2' MINUTE)
) WITH (connector = 'leasewatch');

CREATE TABLE speeds WITH (connector = 'blackhole');
INSERT INTO speeds
SELECT device_id, window.start AS window_start, kmh
FROM (
  SELECT device_id, hop(INTERVAL '15' MINUTE, INTERVAL '30' MINUTE) AS window,
         max_speed_kmh({time}, lat, lon, accuracy_m) AS kmh
  FROM pings
  WHERE lat IS NOT NULL AND accuracy_m <= 200
  GROUP BY 1, 2
);
"#
    )
}

/// Two hours of 20 devices pinging about every 1.5 s, in arrival order: phone clocks off by
/// up to 150 s (so some pings are behind the watermark), positions wandering around
/// Nairobi with a jump of a few hundred kilometres now and then, accuracy from 5 m to
/// 400 m (the query keeps fixes up to 200 m).
fn pings() -> Vec<DevicePing> {
    let mut rng = SplitMix(0x5eed_1234_9876_abcd);
    let mut out = Vec::new();
    let mut t = T0;
    while t < T0 + 120 * MIN {
        t += 75;
        let device = imei(31, rng.below(20) as u32);
        let skew = rng.below(300_000) as i64 - 150_000;
        let skew = skew / [1, 1, 1, 10][rng.below(4) as usize];
        let far = if rng.below(500) == 0 { 3.0 } else { 0.02 };
        let place = Place {
            lat: NAIROBI.lat + far * (rng.below(1_000) as f64 / 1_000.0 - 0.5),
            lon: NAIROBI.lon + far * (rng.below(1_000) as f64 / 1_000.0 - 0.5),
        };
        let mut p = ping(&device, t + skew, place, "sim");
        p.accuracy_m = Some([5.0, 20.0, 150.0, 400.0][rng.below(4) as usize]);
        out.push(p);
    }
    out
}

/// Arrival-ordered batches of `rows` pings.
fn batches(pings: &[DevicePing], rows: usize) -> Vec<RecordBatch> {
    pings
        .chunks(rows)
        .map(|chunk| {
            let text: String = chunk
                .iter()
                .map(|p| serde_json::to_string(p).unwrap() + "\n")
                .collect();
            let d = leasewatch::ingest::decode_ndjson(text.as_bytes(), chunk.len()).unwrap();
            assert!(d.rejected.is_empty(), "{:?}", d.rejected);
            d.batch
        })
        .collect()
}

/// What a run gave.
struct Run {
    /// Sink rows, sorted.
    rows: Vec<String>,
    /// Window state after each batch, in bytes: the largest and the mean.
    peak: usize,
    mean: usize,
    /// Pings behind the watermark.
    late: u64,
    /// Compactions run on the compaction thread.
    background: u64,
}

async fn run(sql: &str, batches: &[RecordBatch]) -> Run {
    run_with(sql, batches, Compacting::Inline).await
}

/// How compactions run.
#[derive(Clone, Copy, PartialEq)]
enum Compacting {
    /// On the engine's thread, between batches.
    Inline,
    /// On the compaction thread, one handed over per batch and waited for after it, so
    /// each runs while the rest of its batch goes on (window output included) and the
    /// run is the same whatever the thread's speed.
    Background,
    /// Also every compaction due handed over between batches, each waited for (as
    /// the windowed lane of `leasewatch run` does while requests gather).
    BackgroundBetweenBatches,
}

async fn run_with(sql: &str, batches: &[RecordBatch], compacting: Compacting) -> Run {
    let options = EngineOptions {
        capture_sinks: true,
        background_compaction: compacting != Compacting::Inline,
        ..EngineOptions::default()
    };
    let files = [("speed.sql".to_string(), sql.to_string())];
    let mut engine = Engine::from_files(&files, &options).await.unwrap();
    let (mut peak, mut sum) = (0, 0);
    for b in batches {
        engine.process(b).await.unwrap();
        match compacting {
            Compacting::Inline => {}
            Compacting::Background => engine.wait_for_compaction().unwrap(),
            Compacting::BackgroundBetweenBatches => {
                while engine.compact_in_background().unwrap() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        let bytes = engine.state_size().1;
        peak = peak.max(bytes);
        sum += bytes;
    }
    engine.finish().await.unwrap();
    let background = engine.background_compactions();
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        for b in engine.take_captured("speeds") {
            w.write(&b).unwrap();
        }
        w.finish().unwrap();
    }
    let mut rows: Vec<String> = String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    Run {
        rows,
        peak,
        mean: sum / batches.len().max(1),
        late: engine.stats().late,
        background,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn settled_speed_state_gives_the_same_rows_in_a_fraction_of_the_memory() {
    let batches = batches(&pings(), 100);
    // The event time itself: compactions settle. Cast to BIGINT (the same milliseconds),
    // it is no longer the window's column, so the engine keeps every fix.
    let settled = run(&sql("event_time"), &batches).await;
    let whole = run(&sql("CAST(event_time AS BIGINT)"), &batches).await;
    assert!(
        settled.late > 0,
        "some pings should be behind the watermark"
    );
    assert!(settled.rows.len() > 100, "{} rows", settled.rows.len());
    assert!(
        settled
            .rows
            .iter()
            .any(|r| r.contains("\"kmh\":") && !r.contains("\"kmh\":0.0")),
        "no movement measured"
    );
    assert_eq!(settled.rows, whole.rows);
    // Fixes settle when their part is compacted: the peak holds up to a fan-in of
    // level-0 parts (32 batches) whole in both runs, so it saves less than the mean.
    assert!(
        settled.peak * 5 < whole.peak * 4 && settled.mean * 3 < whole.mean * 2,
        "window state: peak {} bytes settled, {} whole; mean {} and {}",
        settled.peak,
        whole.peak,
        settled.mean,
        whole.mean
    );
}

/// Compactions on their own thread (as `leasewatch run` has them), finishing while the
/// watermark moves on and windows are emitted, settle under their own promise and give
/// the same rows.
#[tokio::test(flavor = "current_thread")]
async fn background_compactions_give_the_same_rows() {
    let batches = batches(&pings(), 100);
    let inline = run(&sql("event_time"), &batches).await;
    let background = run_with(&sql("event_time"), &batches, Compacting::Background).await;
    assert_eq!(inline.background, 0);
    assert!(background.background > 5, "{}", background.background);
    assert_eq!(background.rows, inline.rows);
    // One compaction a batch, each done by the next, keeps up with this stream: state no
    // larger than inline's (its peak was five times inline's, once, when the thread was
    // left to its own speed under a busy test suite).
    assert!(
        background.peak <= inline.peak && background.mean <= inline.mean,
        "window state: peak {} bytes in the background, {} inline; mean {} and {}",
        background.peak,
        inline.peak,
        background.mean,
        inline.mean
    );
}

/// Compactions handed to the thread between batches, as many as are due (the windowed
/// lane of `leasewatch run` does so while requests gather), give the same rows and keep
/// state as small as compacting inline does.
#[tokio::test(flavor = "current_thread")]
async fn compactions_between_batches_keep_up_and_give_the_same_rows() {
    let batches = batches(&pings(), 100);
    let inline = run(&sql("event_time"), &batches).await;
    let between = run_with(
        &sql("event_time"),
        &batches,
        Compacting::BackgroundBetweenBatches,
    )
    .await;
    assert_eq!(between.rows, inline.rows);
    assert!(between.background > 5, "{}", between.background);
    // Every compaction due is done before the next batch, as inline (one per batch on
    // the thread left level 0 waiting: 280,473 bytes on average against 180,116).
    assert!(
        between.mean <= inline.mean && between.peak <= inline.peak,
        "window state: mean {} bytes compacted between batches, {} inline; peak {} and {}",
        between.mean,
        inline.mean,
        between.peak,
        inline.peak
    );
}
