//! A minimal Arroyo UDF host: loads a plugin library built from `generated/<name>.rs` and
//! calls its `__run` symbol the way Arroyo's worker does, with Arrow arrays passed through
//! the Arrow C data interface.
//!
//! For a scalar UDF the arguments are whole columns and the result has one row per input
//! row; for an aggregate (a UDF with `Vec` arguments) Arroyo passes the concatenated
//! values of one group per argument and gets one row back.

use std::path::{Path, PathBuf};

use arrow::array::{make_array, ArrayData, ArrayRef};
use arrow::ffi::from_ffi;
use arroyo_udf_common::{FfiArraySchema, FfiArrays, RunResult};

/// The signature every synchronous Arroyo UDF plugin exports as `__run`.
type Run = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;

/// Why a plugin call failed.
#[derive(Debug)]
pub enum HostError {
    /// The library could not be loaded or has no `__run` symbol.
    Load(String),
    /// The UDF panicked (Arroyo reports this as an error of the UDF).
    Panicked(String),
    /// The result could not be imported.
    Import(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Load(e) => write!(f, "cannot load plugin: {e}"),
            HostError::Panicked(name) => write!(f, "UDF {name} panicked"),
            HostError::Import(e) => write!(f, "cannot import the UDF result: {e}"),
        }
    }
}

impl std::error::Error for HostError {}

/// One loaded plugin. Results may hold buffers owned by the plugin, so the library stays
/// loaded as long as this value lives: drop results first.
#[derive(Debug)]
pub struct Plugin {
    name: String,
    library: libloading::Library,
}

impl Plugin {
    /// The directory cargo puts the plugin libraries in: the profile directory of the test
    /// binary running this code (`<target>/<profile>/deps/..`).
    pub fn default_dir() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.to_path_buf())
    }

    /// Loads `lib lw_udf_<name>` from `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Plugin, HostError> {
        let file = dir.join(libloading::library_filename(format!("lw_udf_{name}")));
        // SAFETY: the library is one of ours, built from generated/<name>.rs; loading runs
        // no initialisers beyond Rust's own.
        let library = unsafe { libloading::Library::new(&file) }
            .map_err(|e| HostError::Load(format!("{}: {e}", file.display())))?;
        Ok(Plugin {
            name: name.to_owned(),
            library,
        })
    }

    /// Calls the UDF on `args` and returns its result column.
    pub fn call(&self, args: Vec<ArrayData>) -> Result<ArrayRef, HostError> {
        // SAFETY: `__run` is exported by the `#[udf]` macro with exactly this signature.
        let run = unsafe { self.library.get::<Run>(b"__run") }
            .map_err(|e| HostError::Load(format!("{}: {e}", self.name)))?;
        // SAFETY: the arrays are valid Arrow data, handed over through the C data interface
        // (the plugin takes ownership and releases them).
        match unsafe { run(FfiArrays::from_vec(args)) } {
            RunResult::Ok(FfiArraySchema(array, schema)) => {
                // SAFETY: the plugin exported a valid array with its schema.
                let data = unsafe { from_ffi(array, &schema) }
                    .map_err(|e| HostError::Import(e.to_string()))?;
                Ok(make_array(data))
            }
            RunResult::Err => Err(HostError::Panicked(self.name.clone())),
        }
    }
}
