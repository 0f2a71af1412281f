//! Geospatial and telecom functions for LeaseWatch SQL, written once and exposed two ways.
//!
//! - [`core`]: the functions as plain Rust (one file per family, `std` and crates.io
//!   crates only), with their edge-case semantics documented and doctested.
//! - [`datafusion`]: one DataFusion UDF per SQL function, vectorised over Arrow arrays, all
//!   returned by [`datafusion::functions`].
//! - `udfs/arroyo/` (outside this crate) pastes the same `core` files into single-file
//!   Arroyo UDF sources (`#[udf]`, `arroyo-udf-plugin`) and builds them as plugins.
//!
//! | SQL | kind | meaning |
//! | --- | --- | --- |
//! | `h3_cell(lat, lon, res)` | scalar | H3 cell as BIGINT |
//! | `h3_parent(cell, res)` | scalar | parent cell |
//! | `h3_grid_distance(a, b)` | scalar | grid steps between cells |
//! | `h3_in_area(cell, cells, k)` | scalar | within `k` rings of any listed cell |
//! | `haversine_m(lat1, lon1, lat2, lon2)` | scalar | great-circle metres |
//! | `geofence_match(lat, lon)` / `geofence_kind(lat, lon)` | scalar | containing fence |
//! | `mcc_country(mcc)`, `imsi_mcc(imsi)` | scalar | MCC to ISO 3166, IMSI to MCC |
//! | `imei_valid(imei)`, `iccid_valid(iccid)` | scalar | length, prefix, Luhn |
//! | `max_speed_kmh(ts, lat, lon, accuracy)` | aggregate | fastest movement |
//! | `dwell_seconds(ts, inside)` | aggregate | time inside |
//! | `radius_of_gyration_m(lat, lon)` | aggregate | spread of positions |
//!
//! Null in, null out; an invalid position (NaN, infinite, `|lat| > 90`, `|lon| > 180`)
//! counts as missing; arguments outside a function's domain (an H3 resolution of 16, a
//! ring count of 11) are errors naming the function and row.

pub mod core;
pub mod datafusion;

use std::path::{Path, PathBuf};

pub use crate::core::geofence::{GeofenceError, GeofenceIndex};
pub use crate::core::h3::H3Error;

/// Errors of this crate, by who must act: the caller's input, or the file system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A geofence file that cannot be read (outside system: the path or its permissions).
    #[error("cannot read geofence file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A geofence file whose content is unusable (the user's to fix).
    #[error("geofence file {path}: {source}")]
    Geofence {
        /// The file.
        path: PathBuf,
        /// What is wrong, and in which feature.
        source: GeofenceError,
    },
}

/// Loads the geofence index from a GeoJSON FeatureCollection file.
pub fn load_geofences(path: &Path) -> Result<GeofenceIndex, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    GeofenceIndex::from_geojson(&text).map_err(|source| Error::Geofence {
        path: path.to_owned(),
        source,
    })
}
