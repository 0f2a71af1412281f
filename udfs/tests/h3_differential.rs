//! Differential test: `h3_cell` (through its DataFusion adapter) against the reference H3
//! library (the `h3` package from PyPI, the C implementation's Python binding) on a
//! million random points, poles and antimeridian included, at every resolution.
//!
//! Needs `python3`; installs `h3` with pip when missing. It fails, never skips, when the
//! reference cannot be had.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Command;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use leasewatch_udfs::datafusion::H3Cell;

const POINTS: usize = 1_000_000;
const BATCH: usize = 8_192;

#[path = "support/splitmix.rs"]
mod splitmix;
use splitmix::SplitMix;

fn points() -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let mut rng = SplitMix(0x1EA5_E3A7_C400_0003);
    let (mut lat, mut lon, mut res) = (
        Vec::with_capacity(POINTS),
        Vec::with_capacity(POINTS),
        Vec::with_capacity(POINTS),
    );
    // Edges first: poles, antimeridian, equator, prime meridian, at every resolution.
    for r in 0..=15 {
        for (a, b) in [
            (90.0, 0.0),
            (-90.0, 0.0),
            (90.0, 180.0),
            (0.0, 180.0),
            (0.0, -180.0),
            (45.0, -180.0),
            (-45.0, 180.0),
            (0.0, 0.0),
        ] {
            lat.push(a);
            lon.push(b);
            res.push(r);
        }
    }
    while lat.len() < POINTS {
        let i = lat.len();
        // Mostly uniform on the sphere; a share near the poles and the antimeridian.
        let (a, b) = match i % 10 {
            0 => (
                rng.uniform(89.0, 90.0) * if i % 20 == 0 { 1.0 } else { -1.0 },
                rng.uniform(-180.0, 180.0),
            ),
            1 => (
                rng.uniform(-90.0, 90.0),
                if i % 20 == 1 {
                    rng.uniform(179.9, 180.0)
                } else {
                    rng.uniform(-180.0, -179.9)
                },
            ),
            _ => (
                rng.uniform(-1.0, 1.0).asin().to_degrees(),
                rng.uniform(-180.0, 180.0),
            ),
        };
        lat.push(a);
        lon.push(b);
        res.push((rng.next() % 16) as i64);
    }
    (lat, lon, res)
}

fn ensure_reference() {
    let has = |py: &str| {
        Command::new("python3")
            .args(["-c", py])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("import h3") {
        return;
    }
    let installed = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "h3>=4,<5"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && has("import h3"),
        "the reference `h3` Python package is missing and `pip install h3` failed"
    );
}

const REFERENCE: &str = r#"
import sys, array
from h3.api import basic_int as h3
assert h3.__version__ if hasattr(h3, "__version__") else True
src, dst = sys.argv[1], sys.argv[2]
data = array.array("d")
with open(src, "rb") as f:
    data.frombytes(f.read())
if sys.byteorder != "little":
    data.byteswap()
n = len(data) // 3
out = array.array("q", [0]) * n
cell = h3.latlng_to_cell
for i in range(n):
    out[i] = cell(data[3 * i], data[3 * i + 1], int(data[3 * i + 2]))
with open(dst, "wb") as f:
    f.write(out.tobytes())
"#;

fn reference_cells(lat: &[f64], lon: &[f64], res: &[i64]) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("points.f64"), dir.path().join("cells.i64"));
    let mut bytes = Vec::with_capacity(lat.len() * 24);
    for i in 0..lat.len() {
        bytes.extend_from_slice(&lat[i].to_le_bytes());
        bytes.extend_from_slice(&lon[i].to_le_bytes());
        bytes.extend_from_slice(&(res[i] as f64).to_le_bytes());
    }
    std::fs::File::create(&src)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let status = Command::new("python3")
        .arg("-c")
        .arg(REFERENCE)
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(status.success(), "the reference script failed");
    std::fs::read(&dst)
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ours(lat: &[f64], lon: &[f64], res: &[i64]) -> Vec<Option<i64>> {
    let udf = ScalarUDF::from(H3Cell::default());
    let arg_fields = vec![
        Arc::new(Field::new("lat", DataType::Float64, true)),
        Arc::new(Field::new("lon", DataType::Float64, true)),
        Arc::new(Field::new("res", DataType::Int64, true)),
    ];
    let config = Arc::new(ConfigOptions::default());
    let mut out = Vec::with_capacity(lat.len());
    for start in (0..lat.len()).step_by(BATCH) {
        let end = (start + BATCH).min(lat.len());
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(
                    Arc::new(Float64Array::from(lat[start..end].to_vec())) as ArrayRef
                ),
                ColumnarValue::Array(Arc::new(Float64Array::from(lon[start..end].to_vec()))),
                ColumnarValue::Array(Arc::new(Int64Array::from(res[start..end].to_vec()))),
            ],
            arg_fields: arg_fields.clone(),
            number_rows: end - start,
            return_field: Arc::new(Field::new("cell", DataType::Int64, true)),
            config_options: Arc::clone(&config),
        };
        let ColumnarValue::Array(cells) = udf.invoke_with_args(args).unwrap() else {
            panic!("h3_cell returned a scalar for an array");
        };
        out.extend(cells.as_primitive::<Int64Type>().iter());
        assert_eq!(cells.len(), end - start);
    }
    out
}

#[test]
fn h3_cell_matches_reference_on_a_million_points() {
    ensure_reference();
    let (lat, lon, res) = points();
    let expected = reference_cells(&lat, &lon, &res);
    let got = ours(&lat, &lon, &res);
    assert_eq!(expected.len(), POINTS);
    let mismatches: Vec<String> = (0..POINTS)
        .filter(|&i| got[i] != Some(expected[i]))
        .take(10)
        .map(|i| {
            format!(
                "({}, {}) res {}: ours {:?}, h3 {:x}",
                lat[i],
                lon[i],
                res[i],
                got[i].map(|c| format!("{c:x}")),
                expected[i]
            )
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "h3_cell disagrees with the reference:\n{}",
        mismatches.join("\n")
    );
}
