//! Calls every built plugin through the Arroyo plugin ABI on the inputs recorded in
//! `fixtures/expected.json` and compares with the DataFusion adapters' results recorded
//! there (`udfs/tests/arroyo_fixture.rs` keeps that file current).
//!
//! Run by `udfs/arroyo/build.sh`, which builds the plugins first.

use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{
    Array, ArrayData, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt16Type};
use lw_arroyo_host::Plugin;
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/expected.json");
    let text = std::fs::read_to_string(&path).expect("fixtures/expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn plugin_dir() -> std::path::PathBuf {
    std::env::var_os("LEASEWATCH_ARROYO_PLUGIN_DIR")
        .map(Into::into)
        .or_else(Plugin::default_dir)
        .expect("plugin directory")
}

fn column(t: &str, values: &Value) -> ArrayRef {
    let values = values.as_array().expect("argument column");
    match t {
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

fn value(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::Boolean => Value::from(array.as_boolean().value(row)),
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
        other => panic!("unexpected result type {other}"),
    }
}

/// Equal, with doubles allowed a relative difference of 1e-12 (JSON round trip).
fn same(got: &Value, want: &Value) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) if got.is_f64() || want.is_f64() => {
            (g - w).abs() <= 1e-12 * w.abs().max(1.0)
        }
        _ => got == want,
    }
}

#[test]
fn plugins_agree_with_datafusion() {
    // The geofence plugins read their GeoJSON from this variable, once per process.
    let geojson = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/geofences.geojson");
    std::env::set_var("LEASEWATCH_GEOFENCES", &geojson);

    let fixture = fixture();
    let dir = plugin_dir();
    let mut failures = Vec::new();
    let mut calls = 0;
    let mut plugins = Vec::new();

    for case in fixture["scalar"].as_array().expect("scalar cases") {
        let name = case["function"].as_str().expect("name");
        let plugin =
            Plugin::load(&dir, name).unwrap_or_else(|e| panic!("{e} (run udfs/arroyo/build.sh)"));
        let types = case["types"].as_array().expect("types");
        let args: Vec<ArrayData> = types
            .iter()
            .zip(case["args"].as_array().expect("args"))
            .map(|(t, v)| column(t.as_str().expect("type"), v).to_data())
            .collect();
        let out = plugin.call(args).unwrap_or_else(|e| panic!("{name}: {e}"));
        calls += 1;
        for (row, want) in case["expected"]
            .as_array()
            .expect("expected")
            .iter()
            .enumerate()
        {
            let got = value(&out, row);
            if !same(&got, want) {
                failures.push(format!("{name} row {row}: plugin {got}, DataFusion {want}"));
            }
        }
        drop(out);
        plugins.push(plugin);
    }

    for case in fixture["aggregate"].as_array().expect("aggregate cases") {
        let name = case["function"].as_str().expect("name");
        let plugin =
            Plugin::load(&dir, name).unwrap_or_else(|e| panic!("{e} (run udfs/arroyo/build.sh)"));
        let types = case["types"].as_array().expect("types");
        for (g, group) in case["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .enumerate()
        {
            // Arroyo hands a UDAF the concatenated values of one group, one array per argument.
            let args: Vec<ArrayData> = types
                .iter()
                .zip(group["args"].as_array().expect("args"))
                .map(|(t, v)| column(t.as_str().expect("type"), v).to_data())
                .collect();
            let out = plugin.call(args).unwrap_or_else(|e| panic!("{name}: {e}"));
            calls += 1;
            assert_eq!(out.len(), 1, "{name}: an aggregate returns one row");
            let got = value(&out, 0);
            if !same(&got, &group["expected"]) {
                failures.push(format!(
                    "{name} group {g}: plugin {got}, DataFusion {}",
                    group["expected"]
                ));
            }
        }
        plugins.push(plugin);
    }

    assert!(
        failures.is_empty(),
        "plugins disagree with DataFusion:\n{}",
        failures.join("\n")
    );
    // 8 scalar plugins, 3 aggregate plugins with 3 groups each.
    assert_eq!(calls, 8 + 3 * 3, "plugin calls");
}
