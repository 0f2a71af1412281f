//! The UDFs through DataFusion SQL: registration, coercion of the ping table's types,
//! nulls and edge values, errors, and aggregates merged from several partitions.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, ListArray, RecordBatch,
    StringArray, TimestampMillisecondArray, UInt16Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use leasewatch_udfs::GeofenceIndex;
use leasewatch_udfs::core::geo::{self, Fix};

fn context(geofences: Option<Arc<GeofenceIndex>>, partitions: usize) -> SessionContext {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let functions = leasewatch_udfs::datafusion::functions(geofences);
    for f in &functions.scalar {
        ctx.register_udf(f.as_ref().clone());
    }
    for f in &functions.aggregate {
        ctx.register_udaf(f.as_ref().clone());
    }
    ctx
}

async fn column(ctx: &SessionContext, sql: &str) -> ArrayRef {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let arrays: Vec<ArrayRef> = batches.iter().map(|b| Arc::clone(b.column(0))).collect();
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    datafusion::arrow::compute::concat(&refs).unwrap()
}

async fn error(ctx: &SessionContext, sql: &str) -> String {
    match ctx.sql(sql).await {
        Err(e) => e.to_string(),
        Ok(df) => df.collect().await.unwrap_err().to_string(),
    }
}

fn f64s(a: &ArrayRef) -> Vec<Option<f64>> {
    a.as_primitive::<Float64Type>().iter().collect()
}

fn i64s(a: &ArrayRef) -> Vec<Option<i64>> {
    a.as_primitive::<Int64Type>().iter().collect()
}

fn bools(a: &ArrayRef) -> Vec<Option<bool>> {
    a.as_boolean().iter().collect()
}

fn strings(a: &ArrayRef) -> Vec<Option<String>> {
    let a = datafusion::arrow::compute::cast(a, &DataType::Utf8).unwrap();
    a.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn scalar_functions_handle_nulls_nan_and_range() {
    let ctx = context(None, 1);
    let d = column(
        &ctx,
        "SELECT haversine_m(lat, 0, 0, 0) FROM (VALUES (1.0), (NULL), ('NaN'::double), (91.0), (-90.0)) t(lat)",
    )
    .await;
    let d = f64s(&d);
    assert!((d[0].unwrap() - 111_195.08).abs() < 0.1);
    assert_eq!(&d[1..4], &[None, None, None]);
    assert!((d[4].unwrap() - 10_007_557.2).abs() < 1.0);

    let cells = column(
        &ctx,
        "SELECT h3_cell(lat, lon, 9) FROM (VALUES (37.775938728915946, -122.41795063018799), (NULL, 0.0), (0.0, 'Infinity'::double)) t(lat, lon)",
    )
    .await;
    assert_eq!(i64s(&cells), vec![Some(0x8928308280fffff), None, None]);

    let misc = column(&ctx, "SELECT h3_parent(h3_cell(90.0, 0.0, 15), 0)").await;
    assert!(misc.is_valid(0));
    let dist = column(
        &ctx,
        "SELECT h3_grid_distance(617700169958293503, 617700169958031359)",
    )
    .await;
    assert_eq!(i64s(&dist), vec![Some(1)]);
    let res_null = column(&ctx, "SELECT h3_cell(1.0, 2.0, NULL)").await;
    assert!(res_null.is_null(0));
}

#[tokio::test]
async fn h3_errors_name_function_and_row() {
    let ctx = context(None, 1);
    let e = error(&ctx, "SELECT h3_cell(1.0, 2.0, 16)").await;
    assert!(e.contains("h3_cell") && e.contains("16"), "{e}");
    let e = error(
        &ctx,
        "SELECT h3_parent(617700169958293503, r) FROM (VALUES (3), (-1)) t(r)",
    )
    .await;
    assert!(e.contains("h3_parent: row 1") && e.contains("-1"), "{e}");
    let e = error(&ctx, "SELECT h3_in_area(617700169958293503, '1,2', 11)").await;
    assert!(e.contains("h3_in_area") && e.contains("k = 11"), "{e}");
    let e = error(&ctx, "SELECT h3_in_area(617700169958293503, '1,x', 1)").await;
    assert!(e.contains("\"x\""), "{e}");
}

#[tokio::test]
async fn h3_in_area_list_and_text() {
    let ctx = context(None, 1);
    // 0x8928308280fffff and its neighbour 0x8928308280bffff; lists as the lookup join
    // would deliver them; k is an INT column, coerced to BIGINT.
    let home = 0x8928308280fffff_i64;
    let lists = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
        Some(vec![Some(home)]),
        Some(vec![Some(home)]),
        Some(vec![None, Some(-3), Some(home)]),
        Some(vec![]),
        None,
    ]);
    let batch = RecordBatch::try_from_iter(vec![
        ("area", Arc::new(lists) as ArrayRef),
        (
            "k",
            Arc::new(Int32Array::from(vec![1, 0, 1, 3, 1])) as ArrayRef,
        ),
    ])
    .unwrap();
    ctx.register_batch("areas", batch).unwrap();
    let got = column(
        &ctx,
        "SELECT h3_in_area(617700169958031359, area, k) FROM areas",
    )
    .await;
    assert_eq!(
        bools(&got),
        vec![Some(true), Some(false), Some(true), Some(false), None]
    );
    let text = column(
        &ctx,
        "SELECT h3_in_area(617700169958031359, a, 1) FROM (VALUES ('[617700169958293503]'), (''), (NULL)) t(a)",
    )
    .await;
    assert_eq!(bools(&text), vec![Some(true), Some(false), None]);
}

#[tokio::test]
async fn telecom_functions_take_the_ping_types() {
    let ctx = context(None, 1);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("mcc", DataType::UInt16, true),
            Field::new("imsi", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(UInt16Array::from(vec![Some(234), None, Some(901)])),
            Arc::new(StringArray::from(vec![
                Some("310150123456789"),
                None,
                Some("12"),
            ])),
        ],
    )
    .unwrap();
    ctx.register_batch("p", batch).unwrap();
    let c = column(&ctx, "SELECT mcc_country(mcc) FROM p").await;
    assert_eq!(strings(&c), vec![Some("GB".into()), None, None]);
    let m = column(&ctx, "SELECT mcc_country(imsi_mcc(imsi)) FROM p").await;
    assert_eq!(strings(&m), vec![Some("US".into()), None, None]);
    let v = column(
        &ctx,
        "SELECT imei_valid(x) FROM (VALUES ('490154203237518'), ('490154203237517'), (NULL)) t(x)",
    )
    .await;
    assert_eq!(bools(&v), vec![Some(true), Some(false), None]);
    let v = column(
        &ctx,
        "SELECT iccid_valid('8931440400012345672'), iccid_valid('')",
    )
    .await;
    assert_eq!(bools(&v), vec![Some(true)]);
}

#[tokio::test]
async fn geofence_functions() {
    let index = GeofenceIndex::from_geojson(
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"shop-7","kind":"pawn_shop"},
        "geometry":{"type":"Polygon","coordinates":[[[10,50],[10.01,50],[10.01,50.01],[10,50.01],[10,50]]]}}]}"#,
    )
    .unwrap();
    let ctx = context(Some(Arc::new(index)), 1);
    let sql = "FROM (VALUES (50.005, 10.005), (50.5, 10.5), (NULL, 10.0), ('NaN'::double, 10.0)) t(lat, lon)";
    let ids = column(&ctx, &format!("SELECT geofence_match(lat, lon) {sql}")).await;
    assert_eq!(strings(&ids), vec![Some("shop-7".into()), None, None, None]);
    let kinds = column(&ctx, &format!("SELECT geofence_kind(lat, lon) {sql}")).await;
    assert_eq!(strings(&kinds)[0].as_deref(), Some("pawn_shop"));

    let without = context(None, 1);
    let e = error(&without, "SELECT geofence_match(1.0, 2.0)").await;
    assert!(
        e.contains("geofence_match") && e.contains("no geofence file"),
        "{e}"
    );
}

/// `(ts ms, lat, lon, accuracy_m, inside)`.
type PingRow = (i64, Option<f64>, f64, Option<f32>, bool);

/// A ping table split over several partitions, times interleaved across them, so the
/// aggregates run in two phases and merge unordered partial states.
fn register_pings(ctx: &SessionContext, rows: &[PingRow], parts: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, false),
        Field::new("accuracy_m", DataType::Float32, true),
        Field::new("inside", DataType::Boolean, false),
    ]));
    let mut partitions = vec![vec![]; parts];
    for (p, partition) in partitions.iter_mut().enumerate() {
        let mine: Vec<_> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| (i * 7 + 3) % parts == p)
            .map(|(_, r)| *r)
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["d"; mine.len()])),
                Arc::new(
                    TimestampMillisecondArray::from(mine.iter().map(|r| r.0).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(
                    mine.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    mine.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(Float32Array::from(
                    mine.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
                Arc::new(datafusion::arrow::array::BooleanArray::from(
                    mine.iter().map(|r| r.4).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        partition.push(batch);
    }
    ctx.register_table(
        "pings",
        Arc::new(MemTable::try_new(schema, partitions).unwrap()),
    )
    .unwrap();
}

#[tokio::test]
async fn aggregates_merge_unordered_partitions() {
    // A walk with a teleport, duplicate timestamps, nulls, NaN and a useless accuracy.
    let mut rows: Vec<PingRow> = vec![];
    for i in 0..300_i64 {
        let t = (i * 7_919) % 300 * 10_000; // a permutation of 0..300 steps of 10 s
        let lat = 40.0 + t as f64 * 1e-8;
        rows.push((
            t,
            Some(lat),
            179.999 + (t as f64) * 1e-9,
            Some(5.0_f32),
            t % 30_000 != 0,
        ));
    }
    rows.push((1_500_000, Some(41.0), 179.9995, Some(10.0), true)); // 110 km away
    rows.push((1_500_000, Some(40.015), 179.9995, Some(10.0), true)); // same ts as above
    rows.push((20_000, None, 0.0, Some(1.0), true));
    rows.push((30_000, Some(f64::NAN), 0.0, Some(1.0), true));
    rows.push((40_000, Some(1.0), 0.0, Some(5_000.0), true));
    rows.push((50_000, Some(1.0), 0.0, None, true));

    let mut fixes: Vec<Fix> = rows
        .iter()
        .filter_map(|r| Fix::new(r.0, r.1?, r.2, f64::from(r.3?)))
        .collect();
    let expected_speed = geo::max_speed_kmh(&mut fixes).unwrap();
    let mut samples: Vec<(i64, bool)> = rows.iter().map(|r| (r.0, r.4)).collect();
    let expected_dwell = geo::dwell_seconds(&mut samples).unwrap();
    let mut g = geo::Gyration::default();
    for r in &rows {
        if let Some(lat) = r.1 {
            g.push(lat, r.2);
        }
    }
    let expected_rog = g.radius_m().unwrap();

    for parts in [1, 3, 4] {
        let ctx = context(None, 4);
        register_pings(&ctx, &rows, parts);
        let sql = "SELECT max_speed_kmh(ts, lat, lon, accuracy_m), dwell_seconds(ts, inside), \
                   radius_of_gyration_m(lat, lon) FROM pings GROUP BY device";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let b = &batches[0];
        let speed = b.column(0).as_primitive::<Float64Type>().value(0);
        let dwell = b.column(1).as_primitive::<Float64Type>().value(0);
        let rog = b.column(2).as_primitive::<Float64Type>().value(0);
        assert_eq!(speed, expected_speed, "parts={parts}");
        assert!(speed > 1_000.0, "the teleport is found: {speed}");
        assert_eq!(dwell, expected_dwell, "parts={parts}");
        assert!(
            (rog - expected_rog).abs() < 1e-6 * expected_rog,
            "parts={parts}: {rog} vs {expected_rog}"
        );
    }
}

/// Many groups at once (DataFusion's grouped accumulators), over partitions, with a
/// `FILTER` clause: each group's value is what the plain functions give on its rows.
#[tokio::test]
async fn aggregates_per_group_with_filter() {
    let mut rows: Vec<PingRow> = vec![];
    for i in 0..700_i64 {
        let t = (i * 7_919) % 700 * 10_000;
        let lat = 40.0 + (t % 170_000) as f64 * 1e-7 + if i % 97 == 0 { 0.5 } else { 0.0 };
        rows.push((t, Some(lat), 10.0, Some((i % 40) as f32), i % 3 != 0));
    }
    rows.push((20_000, None, 0.0, Some(1.0), true));
    rows.push((30_000, Some(f64::NAN), 0.0, Some(1.0), true));
    let group = |t: i64| (t / 10_000) % 7;
    let mut expected: Vec<(Option<f64>, Option<f64>, Option<f64>)> = vec![];
    for g in 0..7 {
        let mine: Vec<&PingRow> = rows.iter().filter(|r| group(r.0) == g).collect();
        let fixes = |only_inside: bool| -> Vec<Fix> {
            mine.iter()
                .filter(|r| r.4 || !only_inside)
                .filter_map(|r| Fix::new(r.0, r.1?, r.2, f64::from(r.3?)))
                .collect()
        };
        let mut samples: Vec<(i64, bool)> = mine.iter().map(|r| (r.0, r.4)).collect();
        expected.push((
            geo::max_speed_kmh(&mut fixes(false)),
            geo::dwell_seconds(&mut samples),
            geo::max_speed_kmh(&mut fixes(true)),
        ));
    }
    for parts in [1, 3, 4] {
        let ctx = context(None, 4);
        register_pings(&ctx, &rows, parts);
        let sql = "SELECT g, max_speed_kmh(ts, lat, lon, accuracy_m), dwell_seconds(ts, inside), \
                   max_speed_kmh(ts, lat, lon, accuracy_m) FILTER (WHERE inside) \
                   FROM (SELECT *, (CAST(ts AS BIGINT) / 10000) % 7 AS g FROM pings) \
                   GROUP BY g ORDER BY g";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut got = vec![];
        for b in &batches {
            let (speed, dwell, inside) = (f64s(b.column(1)), f64s(b.column(2)), f64s(b.column(3)));
            for i in 0..b.num_rows() {
                got.push((speed[i], dwell[i], inside[i]));
            }
        }
        assert_eq!(got, expected, "parts={parts}");
    }
    assert!(expected.iter().all(|e| e.0.is_some() && e.2.is_some()));
}

#[tokio::test]
async fn aggregates_over_empty_and_tiny_inputs() {
    let ctx = context(None, 2);
    register_pings(&ctx, &[(0, Some(1.0), 1.0, Some(1.0), true)], 1);
    let one = ctx
        .sql("SELECT max_speed_kmh(ts, lat, lon, accuracy_m), dwell_seconds(ts, inside), radius_of_gyration_m(lat, lon) FROM pings")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(one[0].column(0).is_null(0), "one fix: no speed");
    assert_eq!(one[0].column(1).as_primitive::<Float64Type>().value(0), 0.0);
    assert_eq!(one[0].column(2).as_primitive::<Float64Type>().value(0), 0.0);
    let empty = ctx
        .sql("SELECT max_speed_kmh(ts, lat, lon, accuracy_m), dwell_seconds(ts, inside), radius_of_gyration_m(lat, lon) FROM pings WHERE false")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let b = &empty[0];
    assert!(b.column(0).is_null(0) && b.column(1).is_null(0) && b.column(2).is_null(0));
    // BIGINT milliseconds work as the time argument too.
    let ms = column(
        &ctx,
        "SELECT max_speed_kmh(t, lat, 0.0, 0.0) FROM (VALUES (0, 0.0), (3600000, 1.0)) v(t, lat)",
    )
    .await;
    assert!((f64s(&ms)[0].unwrap() - 111.195).abs() < 0.01);
}
