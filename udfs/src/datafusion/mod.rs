//! The functions as DataFusion UDFs: one `ScalarUDFImpl` / `AggregateUDFImpl` per SQL
//! function, vectorised over Arrow arrays, all listed by [`functions`].

mod aggregate;
mod cell_grid;
mod h3;
mod scalar;
mod util;

use std::sync::Arc;

use datafusion_common::Result;
use datafusion_expr::registry::FunctionRegistry;
use datafusion_expr::{AggregateUDF, ScalarUDF};

pub use aggregate::{DwellSeconds, MaxSpeedKmh, RadiusOfGyrationM, SettledSpans};
pub use h3::{H3Cell, H3GridDistance, H3InArea, H3Parent};
pub use scalar::{Geofence, HaversineM, ImsiMcc, LuhnValid, MccCountry};

use crate::core::geofence::GeofenceIndex;

/// Every LeaseWatch UDF, ready to register with a DataFusion session.
#[derive(Debug, Clone)]
pub struct Functions {
    /// Scalar functions.
    pub scalar: Vec<Arc<ScalarUDF>>,
    /// Aggregate functions.
    pub aggregate: Vec<Arc<AggregateUDF>>,
}

impl Functions {
    /// Registers every function with `registry` (a `SessionState`, a `TaskContext`, ...).
    pub fn register(&self, registry: &mut dyn FunctionRegistry) -> Result<()> {
        for udf in &self.scalar {
            registry.register_udf(Arc::clone(udf))?;
        }
        for udaf in &self.aggregate {
            registry.register_udaf(Arc::clone(udaf))?;
        }
        Ok(())
    }
}

/// The registry: every scalar and aggregate function. `geofences` is the index loaded from
/// the configured GeoJSON file; without it `geofence_match` / `geofence_kind` are still
/// registered (so SQL plans) but fail when run, saying that no file is configured.
///
/// ```
/// let functions = leasewatch_udfs::datafusion::functions(None);
/// assert!(functions.scalar.iter().any(|f| f.name() == "h3_cell"));
/// assert!(functions.aggregate.iter().any(|f| f.name() == "max_speed_kmh"));
/// ```
pub fn functions(geofences: Option<Arc<GeofenceIndex>>) -> Functions {
    let scalar = vec![
        ScalarUDF::from(H3Cell::default()),
        ScalarUDF::from(H3Parent::default()),
        ScalarUDF::from(H3GridDistance::default()),
        ScalarUDF::from(H3InArea::default()),
        ScalarUDF::from(HaversineM::default()),
        ScalarUDF::from(Geofence::matcher(geofences.clone())),
        ScalarUDF::from(Geofence::kind(geofences)),
        ScalarUDF::from(MccCountry::default()),
        ScalarUDF::from(ImsiMcc::default()),
        ScalarUDF::from(LuhnValid::imei()),
        ScalarUDF::from(LuhnValid::iccid()),
    ];
    let aggregate = vec![
        AggregateUDF::from(MaxSpeedKmh::default()),
        AggregateUDF::from(DwellSeconds::default()),
        AggregateUDF::from(RadiusOfGyrationM::default()),
    ];
    Functions {
        scalar: scalar.into_iter().map(Arc::new).collect(),
        aggregate: aggregate.into_iter().map(Arc::new).collect(),
    }
}
