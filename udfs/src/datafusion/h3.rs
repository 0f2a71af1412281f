//! DataFusion adapters of the H3 functions in [`crate::core::h3`].

use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type};
use datafusion_common::{Result, ScalarValue, exec_datafusion_err, exec_err, plan_err};
use datafusion_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

use super::cell_grid::CellGrid;
use super::util::{arrays, expect_args, f64s, i64s, map_rows, row_error, union_nulls};
use crate::core::h3;

/// `h3_cell(lat DOUBLE, lon DOUBLE, res BIGINT) -> BIGINT`: the H3 cell of a position;
/// NULL for an invalid position, an error for a resolution outside 0..=15. Answers come
/// from a memo of small squares that lie inside one cell where it has one
/// ([`CellGrid`]), the same answers as H3's.
#[derive(Debug)]
pub struct H3Cell {
    signature: Signature,
    grid: Mutex<CellGrid>,
}

impl Default for H3Cell {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Float64, DataType::Int64],
                Volatility::Immutable,
            ),
            grid: Mutex::default(),
        }
    }
}

// Two instances are the same function: the memo is a cache, not part of its identity.
impl PartialEq for H3Cell {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for H3Cell {}

impl std::hash::Hash for H3Cell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

impl ScalarUDFImpl for H3Cell {
    fn name(&self) -> &str {
        "h3_cell"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        // The resolution is nearly always a literal: resolve it once.
        let fixed_res = match args.args.get(2) {
            Some(ColumnarValue::Scalar(ScalarValue::Int64(None))) => {
                return Ok(ColumnarValue::Scalar(ScalarValue::Int64(None)));
            }
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(r)))) => {
                Some(h3::resolution(*r).map_err(|e| exec_datafusion_err!("{name}: {e}"))?)
            }
            _ => None,
        };
        let arrays = arrays(&args.args, rows)?;
        let [lat, lon, res] = expect_args::<3>(name, &arrays)?;
        let (lat, lon, res) = (f64s(name, lat)?, f64s(name, lon)?, i64s(name, res)?);
        let (lat_v, lon_v, res_v) = (lat.values(), lon.values(), res.values());
        // Taken once per batch; a poisoned memo is still a valid memo.
        let mut grid = self.grid.lock().unwrap_or_else(|e| e.into_inner());
        let memo = grid.start_batch();
        let mut cell = |lat: f64, lon: f64, r| {
            if memo {
                grid.cell(lat, lon, r)
            } else {
                h3::cell(lat, lon, r)
            }
        };
        let out = match fixed_res {
            Some(r) => {
                let nulls = union_nulls(&[lat, lon]);
                map_rows(rows, nulls.as_ref(), |i| Ok(cell(lat_v[i], lon_v[i], r)))
            }
            None => {
                let nulls = union_nulls(&[lat, lon, res]);
                map_rows(rows, nulls.as_ref(), |i| {
                    let r = h3::resolution(res_v[i]).map_err(|e| row_error(name, i, e))?;
                    Ok(cell(lat_v[i], lon_v[i], r))
                })
            }
        };
        grid.finish_batch();
        let out: Int64Array = out?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `h3_parent(cell BIGINT, res BIGINT) -> BIGINT`: the parent cell at a coarser
/// resolution; NULL for an invalid cell or a finer resolution, an error outside 0..=15.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct H3Parent {
    signature: Signature,
}

impl Default for H3Parent {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Int64, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for H3Parent {
    fn name(&self) -> &str {
        "h3_parent"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let arrays = arrays(&args.args, args.number_rows)?;
        let [cell, res] = expect_args::<2>(name, &arrays)?;
        let (cell, res) = (i64s(name, cell)?, i64s(name, res)?);
        let (cell_v, res_v) = (cell.values(), res.values());
        let nulls = union_nulls(&[cell, res]);
        let out: Int64Array = map_rows(args.number_rows, nulls.as_ref(), |i| {
            let r = h3::resolution(res_v[i]).map_err(|e| row_error(name, i, e))?;
            Ok(h3::parent(cell_v[i], r))
        })?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `h3_grid_distance(a BIGINT, b BIGINT) -> BIGINT`: steps between two cells of one
/// resolution; NULL when H3 cannot tell (invalid, mixed resolutions, too far apart).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct H3GridDistance {
    signature: Signature,
}

impl Default for H3GridDistance {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Int64, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for H3GridDistance {
    fn name(&self) -> &str {
        "h3_grid_distance"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let arrays = arrays(&args.args, args.number_rows)?;
        let [a, b] = expect_args::<2>(name, &arrays)?;
        let (a, b) = (i64s(name, a)?, i64s(name, b)?);
        let (a_v, b_v) = (a.values(), b.values());
        let nulls = union_nulls(&[a, b]);
        let out: Int64Array = map_rows(args.number_rows, nulls.as_ref(), |i| {
            Ok(h3::grid_distance(a_v[i], b_v[i]))
        })?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `h3_in_area(cell BIGINT, cells BIGINT[] | TEXT, k BIGINT) -> BOOLEAN`: whether the cell
/// is within `k` rings of any cell of the list (the permitted area). The list may also be
/// text (`"1,2,3"` or `"[1,2,3]"`), the form Arroyo UDFs take. NULL for a null or invalid
/// cell or a null list; null or invalid list entries match nothing; an error for `k`
/// outside 0..=10 or a list text entry that is not a number.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct H3InArea {
    signature: Signature,
}

impl Default for H3InArea {
    fn default() -> Self {
        Self {
            signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for H3InArea {
    fn name(&self) -> &str {
        "h3_in_area"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [cell, list, k] = arg_types else {
            return plan_err!(
                "h3_in_area takes 3 arguments (cell, cells, k), got {}",
                arg_types.len()
            );
        };
        let integer = |t: &DataType| t.is_integer() || t.is_null();
        if !integer(cell) || !integer(k) {
            return plan_err!("h3_in_area: cell and k must be integers, got {cell} and {k}");
        }
        let list = match list {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                if integer(f.data_type()) =>
            {
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
            }
            DataType::Null => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
            other => return plan_err!("h3_in_area: cells must be a BIGINT[] or TEXT, got {other}"),
        };
        Ok(vec![DataType::Int64, list, DataType::Int64])
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let rows = args.number_rows;
        let arrays = arrays(&args.args, rows)?;
        let [cell, list, k] = expect_args::<3>(name, &arrays)?;
        let (cell, k) = (i64s(name, cell)?, i64s(name, k)?);
        let nulls = union_nulls(&[cell, list.as_ref(), k]);
        let mut out = BooleanBuilder::with_capacity(rows);
        let is_null = |i: usize| nulls.as_ref().is_some_and(|n| n.is_null(i));
        match list.data_type() {
            DataType::List(_) => {
                let lists = list.as_list::<i32>();
                let offsets = lists.value_offsets();
                let values = lists.values();
                let Some(cells) = values.as_primitive_opt::<Int64Type>() else {
                    return exec_err!(
                        "{name}: list items must be Int64, got {}",
                        values.data_type()
                    );
                };
                for i in 0..rows {
                    if is_null(i) {
                        out.append_null();
                        continue;
                    }
                    let ring = h3::ring_count(k.value(i)).map_err(|e| row_error(name, i, e))?;
                    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                    let area = (start..end)
                        .filter(|&j| cells.is_valid(j))
                        .map(|j| cells.value(j));
                    out.append_option(h3::in_area(cell.value(i), area, ring));
                }
            }
            DataType::Utf8 => {
                let texts = list.as_string::<i32>();
                for i in 0..rows {
                    if is_null(i) {
                        out.append_null();
                        continue;
                    }
                    let ring = h3::ring_count(k.value(i)).map_err(|e| row_error(name, i, e))?;
                    let text = texts.value(i);
                    if let Some(Err(e)) = h3::parse_cell_list(text).find(|c| c.is_err()) {
                        return Err(row_error(name, i, e));
                    }
                    let area = h3::parse_cell_list(text).filter_map(|c| c.ok());
                    out.append_option(h3::in_area(cell.value(i), area, ring));
                }
            }
            other => return exec_err!("{name}: cells must be a BIGINT[] or TEXT, got {other}"),
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}
