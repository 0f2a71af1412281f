//! Throughput of every UDF through its DataFusion adapter, in elements per second over
//! 8192-row batches, plus h3o's own per-call cost as the baseline for `h3_cell`.
//!
//! `cargo bench -p leasewatch-udfs` measures; `cargo test -p leasewatch-udfs --benches`
//! runs each benchmark once as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema};
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use datafusion::scalar::ScalarValue;
use leasewatch_udfs::GeofenceIndex;
use leasewatch_udfs::datafusion::functions;

const ROWS: usize = 8_192;
const FENCES: usize = 10_000;

#[path = "../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::SplitMix as Rng;

/// Points in a city-sized square (1 x 1 degree around Nairobi).
fn positions(rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    (0..ROWS)
        .map(|_| (rng.uniform(-1.8, -0.8), rng.uniform(36.3, 37.3)))
        .unzip()
}

/// `FENCES` octagons of 30-300 m radius scattered over the same square, as GeoJSON.
fn fences(rng: &mut Rng) -> (String, Vec<(f64, f64)>) {
    let mut features = Vec::with_capacity(FENCES);
    let mut centres = Vec::with_capacity(FENCES);
    for i in 0..FENCES {
        let (lat, lon) = (rng.uniform(-1.8, -0.8), rng.uniform(36.3, 37.3));
        let r = rng.uniform(30.0, 300.0) / 111_195.0;
        let ring: Vec<String> = (0..=8)
            .map(|k| {
                let a = f64::from(k % 8) * std::f64::consts::FRAC_PI_4;
                format!("[{},{}]", lon + r * a.cos(), lat + r * a.sin())
            })
            .collect();
        let kind = ["pawn_shop", "second_hand_market", "border_crossing"][i % 3];
        features.push(format!(
            r#"{{"type":"Feature","properties":{{"id":"f{i}","kind":"{kind}"}},"geometry":{{"type":"Polygon","coordinates":[[{}]]}}}}"#,
            ring.join(",")
        ));
        centres.push((lat, lon));
    }
    (
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        ),
        centres,
    )
}

fn field(name: &str, t: DataType) -> FieldRef {
    Arc::new(Field::new(name, t, true))
}

fn run_scalar(
    udf: &ScalarUDF,
    args: &[ArrayRef],
    ret: DataType,
    scalar_tail: Option<ScalarValue>,
) -> ColumnarValue {
    let mut values: Vec<ColumnarValue> = args
        .iter()
        .map(|a| ColumnarValue::Array(Arc::clone(a)))
        .collect();
    let mut arg_fields: Vec<FieldRef> = args
        .iter()
        .map(|a| field("a", a.data_type().clone()))
        .collect();
    if let Some(s) = scalar_tail {
        arg_fields.push(field("s", s.data_type()));
        values.push(ColumnarValue::Scalar(s));
    }
    udf.invoke_with_args(ScalarFunctionArgs {
        args: values,
        arg_fields,
        number_rows: ROWS,
        return_field: field("out", ret),
        config_options: Arc::new(ConfigOptions::default()),
    })
    .unwrap()
}

fn bench_scalar(
    group: &mut BenchmarkGroup<'_, WallTime>,
    udfs: &[Arc<ScalarUDF>],
    name: &str,
    args: Vec<ArrayRef>,
    ret: DataType,
    tail: Option<ScalarValue>,
) {
    let udf = udfs.iter().find(|f| f.name() == name).expect("registered");
    group.bench_function(name, |b| {
        b.iter(|| black_box(run_scalar(udf, &args, ret.clone(), tail.clone())))
    });
}

fn run_aggregate(udaf: &AggregateUDF, args: &[ArrayRef]) -> ScalarValue {
    let schema = Schema::empty();
    let expr_fields: Vec<FieldRef> = args
        .iter()
        .map(|a| field("a", a.data_type().clone()))
        .collect();
    let mut acc = udaf
        .accumulator(AccumulatorArgs {
            return_field: field("out", DataType::Float64),
            schema: &schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: udaf.name(),
            is_distinct: false,
            exprs: &[],
            expr_fields: &expr_fields,
        })
        .unwrap();
    acc.update_batch(args).unwrap();
    acc.evaluate().unwrap()
}

fn benches(c: &mut Criterion) {
    let mut rng = Rng(42);
    let (geojson, centres) = fences(&mut rng);
    let index = Arc::new(GeofenceIndex::from_geojson(&geojson).unwrap());
    let registry = functions(Some(index));
    let udfs = registry.scalar;

    let (lat, lon) = positions(&mut rng);
    let (lat2, lon2) = positions(&mut rng);
    let lat_a: ArrayRef = Arc::new(Float64Array::from(lat.clone()));
    let lon_a: ArrayRef = Arc::new(Float64Array::from(lon.clone()));
    let lat2_a: ArrayRef = Arc::new(Float64Array::from(lat2));
    let lon2_a: ArrayRef = Arc::new(Float64Array::from(lon2));

    let mut group = c.benchmark_group("udf");
    group.throughput(Throughput::Elements(ROWS as u64));

    bench_scalar(
        &mut group,
        &udfs,
        "haversine_m",
        vec![
            Arc::clone(&lat_a),
            Arc::clone(&lon_a),
            Arc::clone(&lat2_a),
            Arc::clone(&lon2_a),
        ],
        DataType::Float64,
        None,
    );
    bench_scalar(
        &mut group,
        &udfs,
        "h3_cell",
        vec![Arc::clone(&lat_a), Arc::clone(&lon_a)],
        DataType::Int64,
        Some(ScalarValue::Int64(Some(9))),
    );

    // The same points in every iteration: after two, h3_cell answers from its memo of
    // squares (phones reporting from places they have been). Moved to fresh squares in
    // every iteration, it pays the memo's bookkeeping on top of h3o (phones on the move).
    let h3_cell = udfs
        .iter()
        .find(|f| f.name() == "h3_cell")
        .expect("registered");
    let mut shift = 0_u32;
    group.bench_function("h3_cell_new_positions", |b| {
        b.iter_batched(
            || {
                shift = (shift + 1) % 4096;
                let d = f64::from(shift) * 0.01;
                let lat: ArrayRef =
                    Arc::new(Float64Array::from_iter_values(lat.iter().map(|v| v + d)));
                vec![lat, Arc::clone(&lon_a)]
            },
            |args| {
                black_box(run_scalar(
                    h3_cell,
                    &args,
                    DataType::Int64,
                    Some(ScalarValue::Int64(Some(9))),
                ))
            },
            BatchSize::SmallInput,
        )
    });

    // A fleet at home: 100,000 phones in a city-sized square, each fix scattered 20-65 m
    // (the load driver's indoor fixes) around its home, at resolution 7 (the lease
    // areas'). Each iteration draws fresh fixes: the memo answers from squares other
    // fixes of the same homes checked, and evicts when homes outnumber its slots.
    let homes: Vec<(f64, f64, f64)> = (0..100_000)
        .map(|_| {
            let (lat, lon) = (rng.uniform(-1.8, -0.8), rng.uniform(36.3, 37.3));
            (lat, lon, rng.uniform(20.0, 65.0) / 111_195.0)
        })
        .collect();
    let mut fix_rng = Rng(7);
    group.bench_function("h3_cell_homes", |b| {
        b.iter_batched(
            || {
                let (lat, lon): (Vec<f64>, Vec<f64>) = (0..ROWS)
                    .map(|_| {
                        let h = homes[fix_rng.below(homes.len() as u64) as usize];
                        // A triangular scatter: near enough a normal for squares.
                        let d = |r: &mut Rng| h.2 * (r.uniform(-1.0, 1.0) + r.uniform(-1.0, 1.0));
                        (h.0 + d(&mut fix_rng), h.1 + d(&mut fix_rng))
                    })
                    .unzip();
                let lat: ArrayRef = Arc::new(Float64Array::from(lat));
                let lon: ArrayRef = Arc::new(Float64Array::from(lon));
                vec![lat, lon]
            },
            |args| {
                black_box(run_scalar(
                    h3_cell,
                    &args,
                    DataType::Int64,
                    Some(ScalarValue::Int64(Some(7))),
                ))
            },
            BatchSize::SmallInput,
        )
    });

    // h3o's own cost for the same work, one call per point: the baseline for h3_cell.
    let res = h3o::Resolution::Nine;
    group.bench_function("h3o_raw_latlng_to_cell", |b| {
        b.iter(|| {
            let mut acc = 0_u64;
            for i in 0..ROWS {
                let ll = h3o::LatLng::new(black_box(lat[i]), black_box(lon[i])).unwrap();
                acc ^= u64::from(ll.to_cell(res));
            }
            black_box(acc)
        })
    });

    let cells: Vec<i64> = lat
        .iter()
        .zip(&lon)
        .map(|(&a, &b)| leasewatch_udfs::core::h3::cell(a, b, res).unwrap())
        .collect();
    let cells_a: ArrayRef = Arc::new(Int64Array::from(cells.clone()));
    let mut shifted = cells.clone();
    shifted.rotate_left(1);
    // Neighbouring cells for grid distance: each cell against the cell of a point ~1 km away.
    let near: Vec<i64> = lat
        .iter()
        .zip(&lon)
        .map(|(&a, &b)| leasewatch_udfs::core::h3::cell(a + 0.01, b, res).unwrap())
        .collect();
    bench_scalar(
        &mut group,
        &udfs,
        "h3_parent",
        vec![Arc::clone(&cells_a)],
        DataType::Int64,
        Some(ScalarValue::Int64(Some(5))),
    );
    bench_scalar(
        &mut group,
        &udfs,
        "h3_grid_distance",
        vec![
            Arc::clone(&cells_a),
            Arc::new(Int64Array::from(near.clone())),
        ],
        DataType::Int64,
        None,
    );
    // Permitted area: home and work cells plus the ping's own neighbourhood for half the rows.
    let areas = ListArray::from_iter_primitive::<Int64Type, _, _>((0..ROWS).map(|i| {
        let own = if i % 2 == 0 { near[i] } else { shifted[i] };
        Some(vec![Some(shifted[(i + 7) % ROWS]), Some(own)])
    }));
    let areas_a: ArrayRef = Arc::new(areas);
    let k_a: ArrayRef = Arc::new(Int64Array::from(vec![2; ROWS]));
    bench_scalar(
        &mut group,
        &udfs,
        "h3_in_area",
        vec![Arc::clone(&cells_a), areas_a, k_a],
        DataType::Boolean,
        None,
    );

    // Half the points at a fence centre (hits), half uniform (mostly misses).
    let (fence_lat, fence_lon): (Vec<f64>, Vec<f64>) = (0..ROWS)
        .map(|i| {
            if i % 2 == 0 {
                centres[(i * 31) % FENCES]
            } else {
                (lat[i], lon[i])
            }
        })
        .unzip();
    let fence_args: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(fence_lat)),
        Arc::new(Float64Array::from(fence_lon)),
    ];
    bench_scalar(
        &mut group,
        &udfs,
        "geofence_match",
        fence_args.clone(),
        DataType::Utf8,
        None,
    );
    bench_scalar(
        &mut group,
        &udfs,
        "geofence_kind",
        fence_args,
        DataType::Utf8,
        None,
    );

    let mccs: ArrayRef = Arc::new(Int64Array::from(
        (0..ROWS)
            .map(|i| 200 + (i as i64 * 37) % 800)
            .collect::<Vec<_>>(),
    ));
    bench_scalar(
        &mut group,
        &udfs,
        "mcc_country",
        vec![mccs],
        DataType::Utf8,
        None,
    );
    let imsis: ArrayRef = Arc::new(StringArray::from(
        (0..ROWS)
            .map(|i| format!("{:03}{:012}", 200 + i % 700, i * 7919))
            .collect::<Vec<_>>(),
    ));
    bench_scalar(
        &mut group,
        &udfs,
        "imsi_mcc",
        vec![imsis],
        DataType::UInt16,
        None,
    );
    let imeis: ArrayRef = Arc::new(StringArray::from(
        (0..ROWS)
            .map(|i| format!("{:015}", 490_154_203_237_518_u64 + i as u64))
            .collect::<Vec<_>>(),
    ));
    bench_scalar(
        &mut group,
        &udfs,
        "imei_valid",
        vec![imeis],
        DataType::Boolean,
        None,
    );
    let iccids: ArrayRef = Arc::new(StringArray::from(
        (0..ROWS)
            .map(|i| format!("89{:017}", 31_440_400_012_345_672_u64 + i as u64))
            .collect::<Vec<_>>(),
    ));
    bench_scalar(
        &mut group,
        &udfs,
        "iccid_valid",
        vec![iccids],
        DataType::Boolean,
        None,
    );

    // Aggregates: one window of 8192 fixes given in shuffled time order.
    let ts: Vec<i64> = (0..ROWS as i64)
        .map(|i| (i * 7_919) % ROWS as i64 * 5_000)
        .collect();
    let ts_a: ArrayRef = Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC"));
    let acc_a: ArrayRef = Arc::new(Float64Array::from(vec![8.0; ROWS]));
    let inside_a: ArrayRef = Arc::new(BooleanArray::from(
        (0..ROWS).map(|i| i % 5 != 0).collect::<Vec<_>>(),
    ));
    for udaf in &registry.aggregate {
        let args: Vec<ArrayRef> = match udaf.name() {
            "max_speed_kmh" => vec![
                Arc::clone(&ts_a),
                Arc::clone(&lat_a),
                Arc::clone(&lon_a),
                Arc::clone(&acc_a),
            ],
            "dwell_seconds" => vec![Arc::clone(&ts_a), Arc::clone(&inside_a)],
            _ => vec![Arc::clone(&lat_a), Arc::clone(&lon_a)],
        };
        group.bench_function(udaf.name(), |b| {
            b.iter(|| black_box(run_aggregate(udaf, &args)))
        });
    }
    group.finish();
}

criterion_group!(udf_benches, benches);
criterion_main!(udf_benches);
