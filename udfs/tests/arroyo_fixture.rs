//! Records the DataFusion adapters' results on fixed inputs in
//! `udfs/arroyo/fixtures/expected.json`, which the Arroyo plugin test
//! (`udfs/arroyo/host`) replays through the built plugins: the two packagings are compared
//! through this file, since they cannot share one process (arrow 59 against arrow 51).
//!
//! Only functions with an Arroyo form are recorded (see `NOT_GENERATED` in the generator).
//! The DataFusion side runs on the same argument types the plugins take: `dwell_seconds`
//! gets its `inside` flag as an integer, exercising the cast to BOOLEAN its signature does.
//!
//! This test fails when the committed file differs from what the adapters compute now;
//! `LEASEWATCH_UPDATE_FIXTURES=1` rewrites it, and a reviewer reads the diff.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use datafusion::scalar::ScalarValue;
use serde_json::{Value, json};

/// An argument column in the fixture: its type name (`f64`, `i64`, `str`, `bool`) and
/// values (`null` for SQL NULL, `"NaN"` for a NaN double).
type Column = (&'static str, Vec<Value>);

fn to_array(column: &Column) -> ArrayRef {
    let (t, values) = column;
    match *t {
        "f64" => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::String(s) if s == "NaN" => Some(f64::NAN),
                    v => v.as_f64(),
                })
                .collect::<Float64Array>(),
        ),
        "i64" => Arc::new(values.iter().map(Value::as_i64).collect::<Int64Array>()),
        "str" => Arc::new(values.iter().map(Value::as_str).collect::<StringArray>()),
        "bool" => Arc::new(values.iter().map(Value::as_bool).collect::<BooleanArray>()),
        other => panic!("unknown fixture type {other}"),
    }
}

fn to_json(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let value = ScalarValue::try_from_array(array, row).unwrap();
    match value {
        ScalarValue::Float64(Some(v)) => json!(v),
        ScalarValue::Int64(Some(v)) => json!(v),
        ScalarValue::UInt16(Some(v)) => json!(v),
        ScalarValue::Boolean(Some(v)) => json!(v),
        ScalarValue::Utf8(Some(v)) => json!(v),
        other => panic!("unexpected result {other:?}"),
    }
}

fn nums(values: &[f64]) -> Vec<Value> {
    values
        .iter()
        .map(|v| if v.is_nan() { json!("NaN") } else { json!(v) })
        .collect()
}

fn opt<T: Into<Value> + Copy>(values: &[Option<T>]) -> Vec<Value> {
    values
        .iter()
        .map(|v| v.map_or(Value::Null, Into::into))
        .collect()
}

fn scalar_cases() -> Vec<(&'static str, Vec<Column>)> {
    let nan = f64::NAN;
    let home = 0x8928308280fffff_i64;
    let next = 0x8928308280bffff_i64;
    vec![
        (
            "haversine_m",
            vec![
                (
                    "f64",
                    nums(&[0.0, 90.0, 10.0, -1.2864, nan, 91.0, 0.0, 51.5]),
                ),
                (
                    "f64",
                    nums(&[179.9, 0.0, 180.0, 36.8172, 0.0, 0.0, 0.0, -0.12]),
                ),
                (
                    "f64",
                    nums(&[0.0, -90.0, 10.0, -1.2921, 0.0, 0.0, 0.0, 48.85]),
                ),
                (
                    "f64",
                    opt(&[
                        Some(-179.9),
                        Some(0.0),
                        Some(-180.0),
                        Some(36.8219),
                        Some(0.0),
                        Some(0.0),
                        None,
                        Some(2.35),
                    ]),
                ),
            ],
        ),
        (
            "h3_cell",
            vec![
                (
                    "f64",
                    nums(&[
                        37.775938728915946,
                        90.0,
                        -90.0,
                        0.0,
                        0.0,
                        -1.2864,
                        nan,
                        10.0,
                        45.0,
                    ]),
                ),
                (
                    "f64",
                    nums(&[
                        -122.41795063018799,
                        0.0,
                        123.0,
                        180.0,
                        -180.0,
                        36.8172,
                        0.0,
                        181.0,
                        7.0,
                    ]),
                ),
                (
                    "i64",
                    opt(&[
                        Some(9),
                        Some(0),
                        Some(15),
                        Some(5),
                        Some(5),
                        Some(12),
                        Some(3),
                        Some(3),
                        None,
                    ]),
                ),
            ],
        ),
        (
            "h3_parent",
            vec![
                (
                    "i64",
                    opt(&[Some(home), Some(home), Some(home), Some(-1), None]),
                ),
                ("i64", opt(&[Some(5), Some(9), Some(10), Some(3), Some(3)])),
            ],
        ),
        (
            "h3_grid_distance",
            vec![
                ("i64", opt(&[Some(home), Some(home), Some(home), Some(5)])),
                (
                    "i64",
                    opt(&[Some(home), Some(next), Some(0x85283473fffffff), Some(home)]),
                ),
            ],
        ),
        (
            "geofence_match",
            vec![
                (
                    "f64",
                    nums(&[-1.285, -1.282, -2.55, -16.5, -16.5, 0.0, nan]),
                ),
                (
                    "f64",
                    nums(&[36.845, 36.842, 36.79, 179.9, -179.9, 0.0, 36.8]),
                ),
            ],
        ),
        (
            "geofence_kind",
            vec![
                ("f64", nums(&[-1.285, -1.282, -2.55, 0.0])),
                ("f64", nums(&[36.845, 36.842, 36.79, 0.0])),
            ],
        ),
        (
            "mcc_country",
            vec![(
                "i64",
                opt(&[
                    Some(639),
                    Some(234),
                    Some(310),
                    Some(901),
                    Some(1),
                    Some(-5),
                    None,
                ]),
            )],
        ),
        (
            "imsi_mcc",
            vec![(
                "str",
                vec![
                    json!("639021234567890"),
                    json!("00101"),
                    json!("23415x"),
                    Value::Null,
                    json!("310150123456789"),
                ],
            )],
        ),
    ]
}

/// Aggregate cases: for each function, groups of argument columns.
fn aggregate_cases() -> Vec<(&'static str, Vec<Vec<Column>>)> {
    let nan = f64::NAN;
    // A shuffled walk with a duplicate timestamp and a jump of 0.2 degree in 60 s.
    let walk_ts: Vec<Option<i64>> = [5, 0, 3, 1, 4, 2, 2, 6]
        .iter()
        .map(|i| Some(i * 60_000))
        .collect();
    let walk_lat = [-1.30, -1.28, -1.29, -1.285, -1.295, -1.288, -1.2881, -1.10];
    let walk_lon = [36.80, 36.82, 36.81, 36.815, 36.805, 36.812, 36.8121, 36.70];
    vec![
        (
            "max_speed_kmh",
            vec![
                vec![
                    ("i64", opt(&walk_ts)),
                    ("f64", nums(&walk_lat)),
                    ("f64", nums(&walk_lon)),
                    ("f64", nums(&[5.0, 8.0, 12.0, 20.0, 3.0, 9.0, 9.0, 15.0])),
                ],
                vec![
                    ("i64", opt(&[Some(0)])),
                    ("f64", nums(&[1.0])),
                    ("f64", nums(&[2.0])),
                    ("f64", nums(&[3.0])),
                ],
                vec![
                    (
                        "i64",
                        opt(&[Some(0), None, Some(10_000), Some(20_000), Some(30_000)]),
                    ),
                    ("f64", nums(&[0.0, 0.0, nan, 0.0, 0.001])),
                    ("f64", nums(&[179.9999, 0.0, 0.0, 179.9999, -179.9999])),
                    (
                        "f64",
                        opt(&[Some(1.0), Some(1.0), Some(1.0), Some(5000.0), Some(1.0)]),
                    ),
                ],
            ],
        ),
        (
            "dwell_seconds",
            vec![
                vec![
                    ("i64", opt(&walk_ts)),
                    (
                        "i64",
                        opt(&[
                            Some(1),
                            Some(1),
                            Some(0),
                            Some(1),
                            Some(7),
                            Some(1),
                            Some(0),
                            Some(1),
                        ]),
                    ),
                ],
                vec![
                    ("i64", opt(&[Some(5), None])),
                    ("i64", opt(&[Some(1), Some(1)])),
                ],
                vec![("i64", opt(&[None::<i64>])), ("i64", opt(&[Some(1)]))],
            ],
        ),
        (
            "radius_of_gyration_m",
            vec![
                vec![("f64", nums(&walk_lat)), ("f64", nums(&walk_lon))],
                vec![
                    ("f64", nums(&[89.9, 89.9, 89.9])),
                    ("f64", nums(&[0.0, 120.0, -120.0])),
                ],
                vec![("f64", nums(&[nan, 95.0])), ("f64", nums(&[0.0, 0.0]))],
            ],
        ),
    ]
}

fn field(t: &DataType) -> FieldRef {
    Arc::new(Field::new("a", t.clone(), true))
}

fn expected() -> Value {
    let geojson = include_str!("../arroyo/fixtures/geofences.geojson");
    let index = Arc::new(leasewatch_udfs::GeofenceIndex::from_geojson(geojson).unwrap());
    let functions = leasewatch_udfs::datafusion::functions(Some(index));
    let mut scalar = vec![];
    for (name, columns) in scalar_cases() {
        let udf = functions.scalar.iter().find(|f| f.name() == name).unwrap();
        let arrays: Vec<ArrayRef> = columns.iter().map(to_array).collect();
        let rows = arrays[0].len();
        let types: Vec<DataType> = arrays.iter().map(|a| a.data_type().clone()).collect();
        let ret = udf.return_type(&types).unwrap();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: arrays
                    .iter()
                    .map(|a| ColumnarValue::Array(Arc::clone(a)))
                    .collect(),
                arg_fields: types.iter().map(field).collect(),
                number_rows: rows,
                return_field: field(&ret),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap()
            .to_array(rows)
            .unwrap();
        scalar.push(json!({
            "function": name,
            "types": columns.iter().map(|c| c.0).collect::<Vec<_>>(),
            "args": columns.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            "expected": (0..rows).map(|r| to_json(&out, r)).collect::<Vec<_>>(),
        }));
    }
    let mut aggregate = vec![];
    for (name, groups) in aggregate_cases() {
        let udaf = functions
            .aggregate
            .iter()
            .find(|f| f.name() == name)
            .unwrap();
        let mut rendered = vec![];
        for columns in &groups {
            let mut arrays: Vec<ArrayRef> = columns.iter().map(to_array).collect();
            // Cast the arguments as the planner would (user-defined signatures only).
            let types: Vec<DataType> = arrays.iter().map(|a| a.data_type().clone()).collect();
            if let Ok(coerced) = udaf.inner().coerce_types(&types) {
                arrays = arrays
                    .iter()
                    .zip(&coerced)
                    .map(|(a, t)| cast(a, t).unwrap())
                    .collect();
            }
            let fields: Vec<FieldRef> = arrays.iter().map(|a| field(a.data_type())).collect();
            let schema = Schema::empty();
            let mut acc = udaf
                .accumulator(AccumulatorArgs {
                    return_field: field(&DataType::Float64),
                    schema: &schema,
                    ignore_nulls: false,
                    order_bys: &[],
                    is_reversed: false,
                    name,
                    is_distinct: false,
                    exprs: &[],
                    expr_fields: &fields,
                })
                .unwrap();
            acc.update_batch(&arrays).unwrap();
            let result = acc.evaluate().unwrap().to_array().unwrap();
            rendered.push(json!({
                "args": columns.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
                "expected": to_json(&result, 0),
            }));
        }
        aggregate.push(json!({
            "function": name,
            "types": groups[0].iter().map(|c| c.0).collect::<Vec<_>>(),
            "groups": rendered,
        }));
    }
    json!({
        "note": "GENERATED by udfs/tests/arroyo_fixture.rs from the DataFusion adapters; LEASEWATCH_UPDATE_FIXTURES=1 rewrites it",
        "scalar": scalar,
        "aggregate": aggregate,
    })
}

#[test]
fn arroyo_fixture_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("arroyo/fixtures/expected.json");
    let text = serde_json::to_string_pretty(&expected()).unwrap() + "\n";
    if std::env::var_os("LEASEWATCH_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "udfs/arroyo/fixtures/expected.json is out of date with the DataFusion adapters; \
         rerun with LEASEWATCH_UPDATE_FIXTURES=1 and review the diff"
    );
    // The aggregate results must mean something: the jump in the walk is found.
    let v: Value = serde_json::from_str(&committed).unwrap();
    assert!(v["aggregate"][0]["groups"][0]["expected"].as_f64().unwrap() > 500.0);
}
