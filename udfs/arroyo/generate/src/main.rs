//! Generates the Arroyo UDF sources of leasewatch-udfs from its core files.
//!
//! Arroyo builds each UDF from one Rust file that starts with a `[dependencies]` comment
//! and holds exactly one `#[udf]` function. For every SQL function this writes
//! `generated/<name>.rs`: that header, a thin `#[udf]` wrapper, and the core files it
//! needs pasted verbatim as inline modules (`mod h3 { ... }`), so the plugin runs the very
//! code the DataFusion adapters run. It also writes `plugins/<name>/Cargo.toml`, the crate
//! Arroyo's compiler would build around the file.
//!
//! Usage: `generate` writes the files; `generate --check` only compares and exits 1 when a
//! committed file is stale.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Dependency lines, by crate, in the `[dependencies]` TOML form.
const DEPENDENCIES: &[(&str, &str)] = &[
    (
        "geo",
        r#"geo = { version = "0.33", default-features = false }"#,
    ),
    (
        "h3o",
        r#"h3o = { version = "0.11", default-features = false, features = ["std"] }"#,
    ),
    (
        "rstar",
        r#"rstar = { version = "0.12", default-features = false }"#,
    ),
    ("serde_json", r#"serde_json = "1""#),
    ("thiserror", r#"thiserror = "2""#),
];

/// What each core file needs from crates.io.
const MODULE_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("geo", &[]),
    ("h3", &["h3o", "thiserror"]),
    ("geofence", &["geo", "rstar", "serde_json", "thiserror"]),
    ("telecom", &[]),
    ("mcc_table", &[]),
];

/// One Arroyo UDF: its SQL name, the core files it pastes, and its `#[udf]` wrapper.
struct Udf {
    name: &'static str,
    modules: &'static [&'static str],
    wrapper: &'static str,
}

/// Loads the geofence index once per process from the GeoJSON file named by the
/// `LEASEWATCH_GEOFENCES` environment variable of the Arroyo worker.
const GEOFENCE_LOADER: &str = r#"
/// The geofence index, loaded on first use from the GeoJSON file named by the
/// `LEASEWATCH_GEOFENCES` environment variable of the worker. Arroyo UDFs have no other
/// configuration channel; when the variable is unset or the file unusable, the reason is
/// printed once to stderr and every row gets NULL.
fn geofences() -> Option<&'static geofence::GeofenceIndex> {
    static INDEX: std::sync::OnceLock<Option<geofence::GeofenceIndex>> = std::sync::OnceLock::new();
    INDEX
        .get_or_init(|| {
            let Some(path) = std::env::var_os("LEASEWATCH_GEOFENCES") else {
                eprintln!("leasewatch geofence UDF: LEASEWATCH_GEOFENCES is not set; every row is NULL");
                return None;
            };
            let loaded = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| geofence::GeofenceIndex::from_geojson(&text).map_err(|e| e.to_string()));
            match loaded {
                Ok(index) => Some(index),
                Err(e) => {
                    eprintln!("leasewatch geofence UDF: cannot load {}: {e}; every row is NULL", path.to_string_lossy());
                    None
                }
            }
        })
        .as_ref()
}
"#;

/// Functions with no Arroyo form, and why. arroyo-udf-plugin 0.2's `#[udf]` macro builds
/// BOOLEAN results and arguments with `PrimitiveBuilder<BooleanType>` /
/// `PrimitiveArray<BooleanType>`, which do not compile (Boolean is not a primitive Arrow
/// type), and an integer stand-in would not be usable as a SQL predicate.
const NOT_GENERATED: &[(&str, &str)] = &[
    ("h3_in_area", "returns BOOLEAN"),
    ("imei_valid", "returns BOOLEAN"),
    ("iccid_valid", "returns BOOLEAN"),
];

const UDFS: &[Udf] = &[
    Udf {
        name: "h3_cell",
        modules: &["h3"],
        wrapper: r#"
/// H3 cell of a position at resolution `res` (NULL for an invalid position or resolution).
#[udf]
fn h3_cell(lat: f64, lon: f64, res: i64) -> Option<i64> {
    h3::cell(lat, lon, h3::resolution(res).ok()?)
}
"#,
    },
    Udf {
        name: "h3_parent",
        modules: &["h3"],
        wrapper: r#"
/// Parent of `cell` at the coarser resolution `res`.
#[udf]
fn h3_parent(cell: i64, res: i64) -> Option<i64> {
    h3::parent(cell, h3::resolution(res).ok()?)
}
"#,
    },
    Udf {
        name: "h3_grid_distance",
        modules: &["h3"],
        wrapper: r#"
/// Grid steps between two cells of one resolution.
#[udf]
fn h3_grid_distance(a: i64, b: i64) -> Option<i64> {
    h3::grid_distance(a, b)
}
"#,
    },
    Udf {
        name: "haversine_m",
        modules: &["geo"],
        wrapper: r#"
/// Great-circle distance in metres.
#[udf]
fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> Option<f64> {
    geo::haversine_m(lat1, lon1, lat2, lon2)
}
"#,
    },
    Udf {
        name: "geofence_match",
        modules: &["geofence"],
        wrapper: r#"
/// Id of the smallest geofence containing the position.
#[udf]
fn geofence_match(lat: f64, lon: f64) -> Option<String> {
    geofences()?.locate(lat, lon).map(|fence| fence.id.clone())
}
"#,
    },
    Udf {
        name: "geofence_kind",
        modules: &["geofence"],
        wrapper: r#"
/// Kind of the smallest geofence containing the position.
#[udf]
fn geofence_kind(lat: f64, lon: f64) -> Option<String> {
    geofences()?.locate(lat, lon).map(|fence| fence.kind.clone())
}
"#,
    },
    Udf {
        name: "mcc_country",
        modules: &["telecom", "mcc_table"],
        wrapper: r#"
/// ISO 3166 alpha-2 of a mobile country code.
#[udf]
fn mcc_country(mcc: i64) -> Option<String> {
    telecom::mcc_country(mcc).map(str::to_owned)
}
"#,
    },
    Udf {
        name: "imsi_mcc",
        modules: &["telecom", "mcc_table"],
        wrapper: r#"
/// Home MCC of an IMSI.
#[udf]
fn imsi_mcc(imsi: &str) -> Option<u16> {
    telecom::imsi_mcc(imsi)
}
"#,
    },
    Udf {
        name: "max_speed_kmh",
        modules: &["geo"],
        wrapper: r#"
/// Fastest movement in km/h between consecutive usable fixes of the window. `ts` is epoch
/// milliseconds: Arroyo UDFs cannot take TIMESTAMP arguments.
#[udf]
fn max_speed_kmh(
    ts: Vec<Option<i64>>,
    lat: Vec<Option<f64>>,
    lon: Vec<Option<f64>>,
    accuracy_m: Vec<Option<f64>>,
) -> Option<f64> {
    let mut fixes: Vec<geo::Fix> = ts
        .iter()
        .zip(&lat)
        .zip(&lon)
        .zip(&accuracy_m)
        .filter_map(|(((t, la), lo), acc)| geo::Fix::new((*t)?, (*la)?, (*lo)?, (*acc)?))
        .collect();
    geo::max_speed_kmh(&mut fixes)
}
"#,
    },
    Udf {
        name: "dwell_seconds",
        modules: &["geo"],
        wrapper: r#"
/// Seconds between consecutive samples that are both inside. `ts` is epoch milliseconds;
/// `inside` is an integer, non-zero meaning inside (arroyo-udf-plugin 0.2 cannot take
/// BOOLEAN arguments; DataFusion's `dwell_seconds` accepts both forms).
#[udf]
fn dwell_seconds(ts: Vec<Option<i64>>, inside: Vec<Option<i64>>) -> Option<f64> {
    let mut samples: Vec<(i64, bool)> = ts
        .iter()
        .zip(&inside)
        .filter_map(|(t, i)| Some(((*t)?, (*i)? != 0)))
        .collect();
    geo::dwell_seconds(&mut samples)
}
"#,
    },
    Udf {
        name: "radius_of_gyration_m",
        modules: &["geo"],
        wrapper: r#"
/// Root-mean-square distance of the positions from their centroid, in metres.
#[udf]
fn radius_of_gyration_m(lat: Vec<Option<f64>>, lon: Vec<Option<f64>>) -> Option<f64> {
    let mut gyration = geo::Gyration::default();
    for (la, lo) in lat.iter().zip(&lon) {
        if let (Some(la), Some(lo)) = (la, lo) {
            gyration.push(*la, *lo);
        }
    }
    gyration.radius_m()
}
"#,
    },
];

/// `udfs/arroyo`, the parent of this crate.
fn arroyo_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

fn dependencies_of(udf: &Udf) -> Vec<&'static str> {
    let mut crates: Vec<&str> = udf
        .modules
        .iter()
        .flat_map(|m| {
            MODULE_DEPENDENCIES
                .iter()
                .filter(move |(name, _)| name == m)
                .flat_map(|(_, deps)| deps.iter().copied())
        })
        .collect();
    crates.sort_unstable();
    crates.dedup();
    crates
        .iter()
        .filter_map(|c| {
            DEPENDENCIES
                .iter()
                .find(|(name, _)| name == c)
                .map(|(_, line)| *line)
        })
        .collect()
}

/// The single-file Arroyo UDF source of `udf`.
fn render_source(udf: &Udf, core_dir: &Path) -> Result<String, String> {
    let mut out = String::from("/*\n[dependencies]\n");
    for line in dependencies_of(udf) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("*/\n");
    out.push_str(&format!(
        "//! `{}` as an Arroyo UDF, GENERATED by udfs/arroyo/generate from udfs/src/core: edit\n\
         //! those files and run udfs/arroyo/build.sh, never this one.\n\n\
         use arroyo_udf_plugin::udf;\n",
        udf.name
    ));
    out.push_str(udf.wrapper);
    if udf.modules.contains(&"geofence") {
        out.push_str(GEOFENCE_LOADER);
    }
    for module in udf.modules {
        let path = core_dir.join(format!("{module}.rs"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if text.contains("crate::") {
            return Err(format!(
                "{}: core files must not use crate:: paths (only std, crates.io crates and super::<sibling>)",
                path.display()
            ));
        }
        out.push_str(&format!(
            "\n// ---- udfs/src/core/{module}.rs, verbatim ----\n#[allow(dead_code, unused_imports)]\nmod {module} {{\n{text}}}\n"
        ));
    }
    Ok(out)
}

/// The plugin crate manifest of `udf`: what Arroyo's compiler builds around the source.
fn render_manifest(udf: &Udf) -> String {
    let mut out = format!(
        "# GENERATED by udfs/arroyo/generate: the crate Arroyo's UDF compiler builds around\n\
         # generated/{name}.rs (its [dependencies] header plus arroyo-udf-plugin).\n\
         [package]\n\
         name = \"lw-udf-{crate_name}\"\n\
         version = \"0.1.0\"\n\
         edition = \"2021\"\n\
         license = \"Apache-2.0\"\n\
         publish = false\n\n\
         [lib]\n\
         crate-type = [\"cdylib\"]\n\
         path = \"../../generated/{name}.rs\"\n\n\
         [dependencies]\n\
         arroyo-udf-plugin = \"0.2\"\n",
        name = udf.name,
        crate_name = udf.name.replace('_', "-"),
    );
    for line in dependencies_of(udf) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = arroyo_dir();
    let core_dir = root.join("../src/core");
    let mut stale = Vec::new();
    for udf in UDFS {
        let source = match render_source(udf, &core_dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("generate: {e}");
                return ExitCode::FAILURE;
            }
        };
        let files = [
            (
                root.join("generated").join(format!("{}.rs", udf.name)),
                source,
            ),
            (
                root.join("plugins").join(udf.name).join("Cargo.toml"),
                render_manifest(udf),
            ),
        ];
        for (path, text) in files {
            let current = std::fs::read_to_string(&path).ok();
            if current.as_deref() == Some(text.as_str()) {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
                continue;
            }
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, text));
            if let Err(e) = written {
                eprintln!("generate: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("generate: wrote {}", path.display());
        }
    }
    for (name, why) in NOT_GENERATED {
        let source = root.join("generated").join(format!("{name}.rs"));
        if !source.exists() {
            continue;
        }
        if check {
            stale.push(format!("{} (no Arroyo form: {why})", source.display()));
        } else if let Err(e) = std::fs::remove_file(&source) {
            eprintln!("generate: cannot remove {}: {e}", source.display());
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "generate: these files are out of date with udfs/src/core; run udfs/arroyo/build.sh:\n  {}",
            stale.join("\n  ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
