//! DataFusion adapters of the distance, geofence and telecom scalar functions in
//! [`crate::core`].

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanBuilder, Float64Array, StringBuilder, UInt16Array};
use arrow::datatypes::DataType;
use datafusion_common::{Result, exec_err};
use datafusion_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use super::util::{arrays, expect_args, f64s, i64s, map_rows, union_nulls};
use crate::core::geofence::GeofenceIndex;
use crate::core::{geo, telecom};

/// `haversine_m(lat1, lon1, lat2, lon2 DOUBLE) -> DOUBLE`: great-circle distance in
/// metres; NULL when a position is invalid.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HaversineM {
    signature: Signature,
}

impl Default for HaversineM {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Float64; 4], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HaversineM {
    fn name(&self) -> &str {
        "haversine_m"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let arrays = arrays(&args.args, args.number_rows)?;
        let [a, b, c, d] = expect_args::<4>(name, &arrays)?;
        let (a, b, c, d) = (
            f64s(name, a)?,
            f64s(name, b)?,
            f64s(name, c)?,
            f64s(name, d)?,
        );
        let nulls = union_nulls(&[a, b, c, d]);
        let (av, bv, cv, dv) = (a.values(), b.values(), c.values(), d.values());
        let out: Float64Array = map_rows(args.number_rows, nulls.as_ref(), |i| {
            Ok(geo::haversine_m(av[i], bv[i], cv[i], dv[i]))
        })?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Which property of the containing fence a geofence function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FenceField {
    Id,
    Kind,
}

/// `geofence_match(lat, lon DOUBLE) -> TEXT` (fence id) and
/// `geofence_kind(lat, lon DOUBLE) -> TEXT` (its kind): the smallest risky-place fence
/// containing the position, or NULL. Both need the index loaded from the configured
/// GeoJSON file; without one they fail with an error saying so.
#[derive(Debug)]
pub struct Geofence {
    signature: Signature,
    field: FenceField,
    index: Option<Arc<GeofenceIndex>>,
}

impl Geofence {
    /// `geofence_match` over `index`.
    pub fn matcher(index: Option<Arc<GeofenceIndex>>) -> Self {
        Self::new(FenceField::Id, index)
    }

    /// `geofence_kind` over `index`.
    pub fn kind(index: Option<Arc<GeofenceIndex>>) -> Self {
        Self::new(FenceField::Kind, index)
    }

    fn new(field: FenceField, index: Option<Arc<GeofenceIndex>>) -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Float64; 2], Volatility::Immutable),
            field,
            index,
        }
    }
}

// Two instances are the same function when they share the same loaded index.
impl PartialEq for Geofence {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
            && match (&self.index, &other.index) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for Geofence {}

impl Hash for Geofence {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.field.hash(state);
        self.index.as_ref().map(Arc::as_ptr).hash(state);
    }
}

impl ScalarUDFImpl for Geofence {
    fn name(&self) -> &str {
        match self.field {
            FenceField::Id => "geofence_match",
            FenceField::Kind => "geofence_kind",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let Some(index) = &self.index else {
            return exec_err!(
                "{name}: no geofence file is loaded; name a GeoJSON FeatureCollection in the configuration"
            );
        };
        let rows = args.number_rows;
        let arrays = arrays(&args.args, rows)?;
        let [lat, lon] = expect_args::<2>(name, &arrays)?;
        let (lat, lon) = (f64s(name, lat)?, f64s(name, lon)?);
        let nulls = union_nulls(&[lat, lon]);
        let (lat_v, lon_v) = (lat.values(), lon.values());
        let mut out = StringBuilder::with_capacity(rows, rows * 4);
        for i in 0..rows {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                out.append_null();
                continue;
            }
            match index.locate(lat_v[i], lon_v[i]) {
                Some(fence) => out.append_value(match self.field {
                    FenceField::Id => &fence.id,
                    FenceField::Kind => &fence.kind,
                }),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `mcc_country(mcc BIGINT) -> TEXT`: ISO 3166 alpha-2 of a mobile country code; NULL for
/// codes with no country.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MccCountry {
    signature: Signature,
}

impl Default for MccCountry {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for MccCountry {
    fn name(&self) -> &str {
        "mcc_country"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let arrays = arrays(&args.args, rows)?;
        let [mcc] = expect_args::<1>(name, &arrays)?;
        let mcc = i64s(name, mcc)?;
        let mut out = StringBuilder::with_capacity(rows, rows * 2);
        for i in 0..rows {
            out.append_option(
                mcc.is_valid(i)
                    .then(|| telecom::mcc_country(mcc.value(i)))
                    .flatten(),
            );
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `imsi_mcc(imsi TEXT) -> SMALLINT UNSIGNED`: home MCC of an IMSI (its first three
/// digits); NULL unless the IMSI is 6 to 15 digits.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ImsiMcc {
    signature: Signature,
}

impl Default for ImsiMcc {
    fn default() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ImsiMcc {
    fn name(&self) -> &str {
        "imsi_mcc"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt16)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let arrays = arrays(&args.args, args.number_rows)?;
        let [imsi] = expect_args::<1>(name, &arrays)?;
        let Some(imsi) = imsi.as_string_opt::<i32>() else {
            return exec_err!("{name}: expected Utf8, got {}", imsi.data_type());
        };
        let out: UInt16Array = map_rows(args.number_rows, imsi.logical_nulls().as_ref(), |i| {
            Ok(telecom::imsi_mcc(imsi.value(i)))
        })?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Which identifier a Luhn function checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Identifier {
    Imei,
    Iccid,
}

/// `imei_valid(imei TEXT) -> BOOLEAN` and `iccid_valid(iccid TEXT) -> BOOLEAN`: length,
/// prefix and Luhn check digit; NULL in, NULL out.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LuhnValid {
    signature: Signature,
    identifier: Identifier,
}

impl LuhnValid {
    /// `imei_valid`.
    pub fn imei() -> Self {
        Self::new(Identifier::Imei)
    }

    /// `iccid_valid`.
    pub fn iccid() -> Self {
        Self::new(Identifier::Iccid)
    }

    fn new(identifier: Identifier) -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
            identifier,
        }
    }
}

impl ScalarUDFImpl for LuhnValid {
    fn name(&self) -> &str {
        match self.identifier {
            Identifier::Imei => "imei_valid",
            Identifier::Iccid => "iccid_valid",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let arrays = arrays(&args.args, rows)?;
        let [text] = expect_args::<1>(name, &arrays)?;
        let Some(text) = text.as_string_opt::<i32>() else {
            return exec_err!("{name}: expected Utf8, got {}", text.data_type());
        };
        let check = match self.identifier {
            Identifier::Imei => telecom::imei_valid,
            Identifier::Iccid => telecom::iccid_valid,
        };
        let mut out = BooleanBuilder::with_capacity(rows);
        for i in 0..rows {
            out.append_option(text.is_valid(i).then(|| check(text.value(i))));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
