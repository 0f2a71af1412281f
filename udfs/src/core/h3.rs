//! H3 cells (through h3o): position to cell, parent, grid distance and the
//! permitted-area test, on cells carried as SQL `BIGINT` (`i64`).
//!
//! Pasted verbatim into the Arroyo UDF sources: depends only on `std`, `h3o` and
//! `thiserror`.

use h3o::{CellIndex, LatLng, Resolution};

/// Largest ring count [`in_area`] accepts: `k = 10` is already 331 cells around each
/// permitted cell.
pub const MAX_RING_COUNT: i64 = 10;

/// Bad arguments to an H3 function (the caller's to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H3Error {
    /// Resolution outside `0..=15`.
    #[error("H3 resolution {0} is out of range 0..=15")]
    Resolution(i64),
    /// Ring count outside `0..=MAX_RING_COUNT`.
    #[error("ring count k = {0} is out of range 0..=10")]
    RingCount(i64),
    /// An entry of a textual cell list is not a decimal integer.
    #[error("cell list entry {0:?} is not a decimal H3 cell index")]
    CellList(String),
}

/// The H3 resolution for `res`, or an error outside `0..=15`.
pub fn resolution(res: i64) -> Result<Resolution, H3Error> {
    u8::try_from(res)
        .ok()
        .and_then(|r| Resolution::try_from(r).ok())
        .ok_or(H3Error::Resolution(res))
}

/// The ring count for `k`, or an error outside `0..=MAX_RING_COUNT`.
pub fn ring_count(k: i64) -> Result<u32, H3Error> {
    if (0..=MAX_RING_COUNT).contains(&k) {
        u32::try_from(k).map_err(|_| H3Error::RingCount(k))
    } else {
        Err(H3Error::RingCount(k))
    }
}

/// The H3 cell containing `(lat, lon)` (degrees) at `res`, as `i64`, or `None` when the
/// position is not finite or out of range (`|lat| > 90`, `|lon| > 180`).
///
/// ```
/// use leasewatch_udfs::core::h3::{cell, resolution};
/// let res = resolution(9).unwrap();
/// assert_eq!(cell(37.775938728915946, -122.41795063018799, res), Some(0x8928308280fffff));
/// assert_eq!(cell(f64::NAN, 0.0, res), None);
/// ```
#[inline]
pub fn cell(lat: f64, lon: f64, res: Resolution) -> Option<i64> {
    if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
        return None;
    }
    let ll = LatLng::new(lat, lon).ok()?;
    // An H3 index always has its top bit clear, so it fits an i64.
    i64::try_from(u64::from(ll.to_cell(res))).ok()
}

/// The cell for a raw `i64`, or `None` when it is not a valid H3 cell index.
#[inline]
pub fn cell_index(raw: i64) -> Option<CellIndex> {
    u64::try_from(raw)
        .ok()
        .and_then(|v| CellIndex::try_from(v).ok())
}

fn to_i64(cell: CellIndex) -> Option<i64> {
    i64::try_from(u64::from(cell)).ok()
}

/// The parent of `cell` at the coarser (or equal) resolution `res`; `None` when `cell` is
/// not a valid cell index or `res` is finer than the cell's own resolution.
///
/// ```
/// use leasewatch_udfs::core::h3::{parent, resolution};
/// assert_eq!(parent(0x8928308280fffff, resolution(5).unwrap()), Some(0x85283083fffffff));
/// ```
pub fn parent(cell: i64, res: Resolution) -> Option<i64> {
    cell_index(cell)?.parent(res).and_then(to_i64)
}

/// Grid distance (number of steps between neighbours) between two cells of the same
/// resolution; `None` when either is invalid, the resolutions differ, or H3 cannot
/// compute it (cells too far apart or across pentagon distortion).
///
/// ```
/// use leasewatch_udfs::core::h3::grid_distance;
/// assert_eq!(grid_distance(0x8928308280fffff, 0x8928308280fffff), Some(0));
/// assert_eq!(grid_distance(0x8928308280fffff, 0x8928308280bffff), Some(1));
/// ```
pub fn grid_distance(a: i64, b: i64) -> Option<i64> {
    let (a, b) = (cell_index(a)?, cell_index(b)?);
    a.grid_distance(b).ok().map(i64::from)
}

/// Whether `cell` lies within `k` rings of `other`. Cells of different resolutions are
/// compared at the coarser one (the finer cell is replaced by its parent).
pub fn within_k(cell: CellIndex, other: CellIndex, k: u32) -> bool {
    let (cell, other) = match cell.resolution().cmp(&other.resolution()) {
        std::cmp::Ordering::Greater => match cell.parent(other.resolution()) {
            Some(parent) => (parent, other),
            None => return false,
        },
        std::cmp::Ordering::Less => match other.parent(cell.resolution()) {
            Some(parent) => (cell, parent),
            None => return false,
        },
        std::cmp::Ordering::Equal => (cell, other),
    };
    if cell == other {
        return true;
    }
    if k == 0 {
        return false;
    }
    match cell.grid_distance(other) {
        Ok(d) => u32::try_from(d).is_ok_and(|d| d <= k),
        Err(_) => {
            // H3 cannot unfold the grid between them: either they are far apart (the
            // common case, settled cheaply by distance) or a pentagon lies between them,
            // where walking the disk is exact.
            let (a, b) = (LatLng::from(cell), LatLng::from(other));
            let reach_m = 4.0 * f64::from(k + 1) * cell.resolution().edge_length_m();
            if a.distance_m(b) > reach_m {
                false
            } else {
                cell.grid_disk_safe(k).any(|c| c == other)
            }
        }
    }
}

/// Whether `cell` is within `k` rings of any cell of `area` (the lease's permitted area);
/// `None` when `cell` is not a valid cell index. Invalid entries of `area` match nothing;
/// an empty area contains nothing.
///
/// ```
/// use leasewatch_udfs::core::h3::in_area;
/// let home = 0x8928308280fffff;
/// assert_eq!(in_area(0x8928308280bffff, [home], 1), Some(true));
/// assert_eq!(in_area(0x8928308280bffff, [home], 0), Some(false));
/// assert_eq!(in_area(0x8928308280bffff, [], 3), Some(false));
/// ```
pub fn in_area<I: IntoIterator<Item = i64>>(cell: i64, area: I, k: u32) -> Option<bool> {
    let cell = cell_index(cell)?;
    Some(
        area.into_iter()
            .filter_map(cell_index)
            .any(|other| within_k(cell, other, k)),
    )
}

/// Parses a textual cell list: decimal cell indexes separated by commas, optionally in
/// square brackets (a JSON array of numbers), whitespace allowed. This is the form Arroyo
/// UDFs take, as they cannot receive a list argument.
///
/// ```
/// use leasewatch_udfs::core::h3::parse_cell_list;
/// assert_eq!(parse_cell_list(" [1, 2,3] ").collect::<Result<Vec<_>, _>>(), Ok(vec![1, 2, 3]));
/// assert_eq!(parse_cell_list("").count(), 0);
/// assert!(parse_cell_list("1,x").any(|c| c.is_err()));
/// ```
pub fn parse_cell_list(text: &str) -> impl Iterator<Item = Result<i64, H3Error>> + '_ {
    let inner = text.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner);
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| H3Error::CellList(s.to_owned()))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolution_bounds() {
        assert!(resolution(0).is_ok());
        assert!(resolution(15).is_ok());
        assert_eq!(resolution(16), Err(H3Error::Resolution(16)));
        assert_eq!(resolution(-1), Err(H3Error::Resolution(-1)));
        assert_eq!(ring_count(11), Err(H3Error::RingCount(11)));
        assert_eq!(ring_count(-1), Err(H3Error::RingCount(-1)));
        assert_eq!(ring_count(10), Ok(10));
    }

    #[test]
    fn cells_at_edges() {
        for res in [0, 15] {
            let r = resolution(res).unwrap();
            for (lat, lon) in [(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -180.0)] {
                let c = cell(lat, lon, r).unwrap();
                assert_eq!(cell_index(c).unwrap().resolution(), r);
            }
        }
        let r = resolution(7).unwrap();
        // Both sides of the antimeridian name the same cell on it.
        assert_eq!(cell(10.0, 180.0, r), cell(10.0, -180.0, r));
        // All longitudes at a pole fall in one cell.
        assert_eq!(cell(90.0, 0.0, r), cell(90.0, 123.0, r));
        assert_eq!(cell(90.5, 0.0, r), None);
        assert_eq!(cell(0.0, f64::INFINITY, r), None);
    }

    #[test]
    fn parent_and_distance() {
        let c = cell(48.85, 2.35, resolution(15).unwrap()).unwrap();
        let p0 = parent(c, resolution(0).unwrap()).unwrap();
        assert_eq!(cell_index(p0).unwrap().resolution(), Resolution::Zero);
        assert_eq!(parent(c, resolution(15).unwrap()), Some(c));
        assert_eq!(parent(p0, resolution(1).unwrap()), None);
        assert_eq!(parent(-5, resolution(1).unwrap()), None);
        assert_eq!(grid_distance(c, 12345), None);
        let far = cell(-33.9, 151.2, resolution(15).unwrap()).unwrap();
        assert_eq!(grid_distance(c, far), None);
    }

    #[test]
    fn area_mixed_resolutions_and_far_cells() {
        let home9 = cell(52.52, 13.405, resolution(9).unwrap()).unwrap();
        let ping12 = cell(52.52, 13.405, resolution(12).unwrap()).unwrap();
        // A finer ping cell is compared through its parent.
        assert_eq!(in_area(ping12, [home9], 0), Some(true));
        // Far away: false, quickly.
        let sydney = cell(-33.9, 151.2, resolution(9).unwrap()).unwrap();
        assert_eq!(in_area(sydney, [home9, -1, 0], 10), Some(false));
        assert_eq!(in_area(-1, [home9], 1), None);
    }

    #[test]
    fn area_near_pentagon() {
        // Cells around the res-0 pentagon base cell 4 at resolution 2: whatever
        // grid_distance says, the disk walk decides exactly.
        let pentagon = CellIndex::base_cells()
            .find(|c| c.is_pentagon())
            .unwrap()
            .center_child(Resolution::Two)
            .unwrap();
        for neighbour in pentagon.grid_disk::<Vec<_>>(2) {
            let n = to_i64(neighbour).unwrap();
            assert_eq!(in_area(n, [to_i64(pentagon).unwrap()], 2), Some(true));
        }
    }
}
