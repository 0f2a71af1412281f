//! A memo of `h3_cell` over small latitude/longitude squares.
//!
//! Indexing a position costs a few hundred nanoseconds (a projection onto the nearest
//! icosahedron face, with its trigonometry). Phones report from the few places they
//! spend their days, so most positions fall in squares already seen. Each resolution from
//! [`MIN_RES`] to [`MAX_RES`] gets a grid of squares an eighth of a cell edge wide; a
//! square that lies wholly inside one cell answers for every position in it.
//!
//! Why the answer is exact: a hexagon whose boundary has six vertices lies on one
//! icosahedron face, or has its vertices on face edges (class II resolutions). Its edges
//! are straight on the face's gnomonic projection, so they are great-circle arcs and the
//! cell is convex on the sphere. When the four corners of the square, widened by a
//! sixteenth of its width on every side, all index to that cell, the geodesic
//! quadrilateral between them lies inside it; the widening covers the gap between a
//! parallel and the great circle through its ends (well under a metre at the coarsest
//! resolution and 85° latitude, against tens of metres of widening). Pentagons and cells
//! with distortion vertices (class III cells that cross a face edge) are never memoised.
//! `tests` checks the memo against H3 on random, clustered and face-edge positions.
//!
//! The memo is a direct-mapped table of 2^21 squares (32 MiB, zeroed pages until used):
//! a square lands in the slot its key hashes to, replacing whatever was there, so a
//! lookup is one memory access and the memo never grows. A square is checked on its
//! second visit, so a position seen once (a phone on the move) costs that access on top
//! of the direct computation; and after a batch where the memo answered less than a
//! quarter of the positions it sits out the next [`SIT_OUT`] batches, so a fleet on the
//! move pays for it on one batch in eight.

use h3o::Resolution;

use crate::core::h3;

/// The coarsest resolution memoised. Coarser cells are hundreds of kilometres wide, and a
/// square's parallels would bend too far from great circles.
pub const MIN_RES: u8 = 5;
/// The finest resolution memoised. Finer cells are a few metres wide: squares would
/// rarely fit.
pub const MAX_RES: u8 = 11;
/// Squares only between these latitudes: a degree of longitude shrinks towards the poles.
const MAX_LAT: f64 = 85.0;
/// log2 of the memo's slots (16 bytes each).
///
/// A fleet of 100,000 phones at home visits several squares each at resolution 7, more
/// than 2^19 slots hold: evicted squares are checked again on their next visits. 2^21
/// slots were 4% faster on the `udfs` bench `h3_cell_homes` (3.04 to 3.17 M/s).
const SLOTS_BITS: u32 = 21;

/// A slot's value: a cell (H3 indexes are non-negative as `i64`), or seen once and not
/// checked yet,
const SEEN: i64 = -1;
/// or spanning more than one cell (or a pentagon, or a cell with distortion vertices).
const MIXED: i64 = -2;

/// Batches the memo sits out after one where it answered under a quarter of the
/// positions it was asked (at least [`JUDGED`] of them).
pub const SIT_OUT: u32 = 7;
const JUDGED: u64 = 256;

/// The memo. Not synchronised: the UDF holds it behind a mutex taken once per batch.
#[derive(Debug, Default)]
pub struct CellGrid {
    /// `(key, value)`; key 0 is an empty slot (a key holds its resolution, at least 5,
    /// in its top bits). Allocated on first use.
    slots: Vec<(u64, i64)>,
    /// Batches left to sit out.
    sitting_out: u32,
    /// Positions of this batch asked of the memo, and answered by it.
    asked: u64,
    answered: u64,
}

/// Degrees per square at `res`: an eighth of the mean hexagon edge.
fn step(res: Resolution) -> f64 {
    res.edge_length_km() / 8.0 / 111.32
}

impl CellGrid {
    /// Starts a batch: whether its positions go through the memo ([`Self::cell`]) or
    /// straight to `h3::cell`, while the memo sits out.
    pub fn start_batch(&mut self) -> bool {
        if self.sitting_out > 0 {
            self.sitting_out -= 1;
            return false;
        }
        true
    }

    /// Ends a batch: one the memo answered too little of makes it sit out the next
    /// [`SIT_OUT`].
    pub fn finish_batch(&mut self) {
        if self.asked >= JUDGED && self.answered * 4 < self.asked {
            self.sitting_out = SIT_OUT;
        }
        self.asked = 0;
        self.answered = 0;
    }

    /// `h3::cell(lat, lon, res)`, from the memo when the position's square has been
    /// checked.
    pub fn cell(&mut self, lat: f64, lon: f64, res: Resolution) -> Option<i64> {
        let r = u8::from(res);
        let memoised = (MIN_RES..=MAX_RES).contains(&r);
        // Written so that a NaN position is not memoised.
        if !(memoised && lat.abs() <= MAX_LAT && lon.abs() <= 180.0) {
            return h3::cell(lat, lon, res);
        }
        let step = step(res);
        let (qlat, qlon) = ((lat / step).floor(), (lon / step).floor());
        // |qlat|, |qlon| < 2^27 at resolution 11 (a square is 3 m wide): 28 bits each.
        let key = (u64::from(r) << 56)
            | (((qlat as i64 + (1 << 27)) as u64) << 28)
            | ((qlon as i64 + (1 << 27)) as u64);
        if self.slots.is_empty() {
            self.slots = vec![(0, 0); 1 << SLOTS_BITS];
        }
        self.asked += 1;
        // Fibonacci hashing: the top bits of the key times 2^64/φ.
        let i = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS_BITS)) as usize;
        let Some(slot) = self.slots.get_mut(i) else {
            return h3::cell(lat, lon, res);
        };
        if slot.0 != key {
            *slot = (key, SEEN);
            return h3::cell(lat, lon, res);
        }
        if slot.1 == SEEN {
            slot.1 = check(qlat, qlon, step, res);
        }
        match slot.1 {
            MIXED => h3::cell(lat, lon, res),
            cell => {
                self.answered += 1;
                Some(cell)
            }
        }
    }
}

/// The cell the square `(qlat, qlon)` of width `step` lies wholly inside at `res`, or
/// [`MIXED`].
fn check(qlat: f64, qlon: f64, step: f64, res: Resolution) -> i64 {
    let margin = step / 16.0;
    let (lat0, lat1) = (qlat * step - margin, (qlat + 1.0) * step + margin);
    let widest = lat0.abs().max(lat1.abs()).to_radians().cos();
    let lon_margin = margin / widest;
    let (lon0, lon1) = (qlon * step - lon_margin, (qlon + 1.0) * step + lon_margin);
    let Some(cell) = h3::cell(lat0, lon0, res) else {
        return MIXED;
    };
    let corners = [(lat0, lon1), (lat1, lon0), (lat1, lon1)];
    if corners
        .iter()
        .any(|&(lat, lon)| h3::cell(lat, lon, res) != Some(cell))
    {
        return MIXED;
    }
    match h3::cell_index(cell) {
        Some(index) if !index.is_pentagon() && index.boundary().len() == 6 => cell,
        _ => MIXED,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use h3o::{CellIndex, LatLng};

    /// splitmix64: deterministic positions without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.unit()
        }
    }

    /// Asks the memo three times per position (insert, check, hit) and compares each
    /// answer with H3's.
    fn agree(grid: &mut CellGrid, lat: f64, lon: f64, res: Resolution) {
        let want = h3::cell(lat, lon, res);
        for _ in 0..3 {
            assert_eq!(grid.cell(lat, lon, res), want, "({lat}, {lon}) at {res:?}");
        }
    }

    /// Every memoised square, checked against H3 at its corners, along its edges and
    /// inside: every position of it must index to its cell. Returns the squares checked.
    fn squares_hold(grid: &CellGrid, rng: &mut Rng) -> usize {
        let mut checked = 0;
        for &(key, cell) in &grid.slots {
            if key == 0 || cell < 0 {
                continue;
            }
            let res = Resolution::try_from((key >> 56) as u8).unwrap();
            let qlat = ((key >> 28) & ((1 << 28) - 1)) as i64 - (1 << 27);
            let qlon = (key & ((1 << 28) - 1)) as i64 - (1 << 27);
            let s = step(res);
            let (lat0, lon0) = (qlat as f64 * s, qlon as f64 * s);
            let at = |u: f64, v: f64| {
                let (lat, lon) = (lat0 + u * s, lon0 + v * s);
                assert_eq!(
                    h3::cell(lat, lon, res),
                    Some(cell),
                    "({lat}, {lon}) {res:?}"
                );
            };
            for u in [0.0, 0.5, 1.0] {
                for v in [0.0, 0.5, 1.0] {
                    at(u, v);
                }
            }
            for _ in 0..8 {
                at(rng.unit(), rng.unit());
            }
            checked += 1;
        }
        checked
    }

    /// `n` positions around `centre`, up to `spread` degrees away, through [`agree`].
    fn scatter(
        grid: &mut CellGrid,
        rng: &mut Rng,
        res: Resolution,
        (lat, lon): (f64, f64),
        spread: f64,
        n: usize,
    ) {
        for _ in 0..n {
            let at = (
                lat + rng.range(-spread, spread),
                lon + rng.range(-spread, spread),
            );
            agree(grid, at.0, at.1, res);
        }
    }

    /// The twelve pentagons at `res`: five icosahedron faces meet around each.
    fn pentagons(res: Resolution) -> impl Iterator<Item = CellIndex> {
        CellIndex::base_cells()
            .filter(|c| c.is_pentagon())
            .flat_map(move |c| c.center_child(res))
    }

    fn resolutions() -> impl Iterator<Item = Resolution> {
        (MIN_RES - 1..=MAX_RES + 1).map(|r| Resolution::try_from(r).unwrap())
    }

    #[test]
    fn clustered_positions_agree_with_h3() {
        let mut rng = Rng(7);
        let mut grid = CellGrid::default();
        for res in resolutions() {
            let spread = step(res) * 40.0;
            for _ in 0..20 {
                let centre = (rng.range(-84.0, 84.0), rng.range(-179.0, 179.0));
                scatter(&mut grid, &mut rng, res, centre, spread, 400);
            }
        }
        let inside = squares_hold(&grid, &mut rng);
        assert!(inside > 1000, "only {inside} squares were memoised");
    }

    #[test]
    fn squares_near_face_edges_hold() {
        // Around every pentagon five faces meet: the cells there cross face edges, have
        // distortion vertices or lie on a face with a neighbour on the next one.
        let mut grid = CellGrid::default();
        let mut rng = Rng(5);
        for res in resolutions() {
            let spread = step(res) * 60.0;
            for p in pentagons(res) {
                let centre = LatLng::from(p);
                let centre = (centre.lat(), centre.lng());
                scatter(&mut grid, &mut rng, res, centre, spread, 300);
            }
        }
        let inside = squares_hold(&grid, &mut rng);
        assert!(inside > 1000, "only {inside} squares were memoised");
    }

    #[test]
    fn positions_along_cell_and_face_edges_agree_with_h3() {
        // Points on and next to the edges of cells near pentagons (where faces meet) and
        // of cells along the antimeridian, every one in a square that is being memoised.
        let mut grid = CellGrid::default();
        let mut rng = Rng(11);
        for res in resolutions() {
            let far = LatLng::new(0.0, 179.999).unwrap().to_cell(res);
            for cell in pentagons(res).chain(far.grid_disk::<Vec<_>>(2)) {
                for neighbour in cell.grid_disk::<Vec<_>>(2) {
                    let boundary = neighbour.boundary();
                    for (i, a) in boundary.iter().enumerate() {
                        let b = boundary[(i + 1) % boundary.len()];
                        for _ in 0..4 {
                            let t = rng.unit();
                            let jitter = step(res) * 1e-3 * rng.range(-1.0, 1.0);
                            let lat = a.lat() + t * (b.lat() - a.lat()) + jitter;
                            let lon = a.lng() + t * (b.lng() - a.lng()) + jitter;
                            // The square of the point, visited from its middle first so
                            // it gets checked, then the point.
                            let s = step(res);
                            let (mlat, mlon) =
                                (((lat / s).floor() + 0.5) * s, ((lon / s).floor() + 0.5) * s);
                            agree(&mut grid, mlat, mlon, res);
                            agree(&mut grid, lat, lon, res);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_memo_sits_out_after_a_batch_it_could_not_answer() {
        let mut grid = CellGrid::default();
        let res = Resolution::Nine;
        let s = step(res);
        let batch = |grid: &mut CellGrid, shift: f64| {
            let memo = grid.start_batch();
            for i in 0..1000 {
                let (lat, lon) = (10.0 + shift, 20.0 + f64::from(i) * s * 3.0);
                let want = h3::cell(lat, lon, res);
                let got = if memo {
                    grid.cell(lat, lon, res)
                } else {
                    h3::cell(lat, lon, res)
                };
                assert_eq!(got, want);
            }
            grid.finish_batch();
            memo
        };
        // Fresh squares: the memo answers none and sits out the next seven batches.
        assert!(batch(&mut grid, 0.0));
        for _ in 0..SIT_OUT {
            assert!(!batch(&mut grid, 0.0));
        }
        // Back, it checks the squares it saw, answers them from then on and stays.
        assert!(batch(&mut grid, 0.0));
        for _ in 0..10 {
            assert!(batch(&mut grid, 0.0));
        }
    }

    #[test]
    fn positions_anywhere_agree_with_h3() {
        let mut rng = Rng(3);
        let mut grid = CellGrid::default();
        for _ in 0..20_000 {
            let lat = rng.range(-90.0, 90.0);
            let lon = rng.range(-180.0, 180.0);
            let res = Resolution::try_from((rng.next() % 16) as u8).unwrap();
            agree(&mut grid, lat, lon, res);
        }
        for (lat, lon) in [(f64::NAN, 0.0), (0.0, f64::NAN), (91.0, 0.0), (0.0, 181.0)] {
            assert_eq!(grid.cell(lat, lon, Resolution::Seven), None);
        }
        for (lat, lon) in [(85.0, 180.0), (-85.0, -180.0), (0.0, 180.0), (0.0, -180.0)] {
            agree(&mut grid, lat, lon, Resolution::Seven);
        }
    }
}
