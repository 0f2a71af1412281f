//! The functions themselves, as plain Rust with no DataFusion or Arrow types: one file per
//! family. Each file is also pasted verbatim into the Arroyo UDF sources by
//! `udfs/arroyo/generate`, so a file may use only `std`, crates.io crates and
//! `super::<sibling file>`.

pub mod geo;
pub mod geofence;
pub mod h3;
pub mod mcc_table;
pub mod telecom;
