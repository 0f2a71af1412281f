//! Risky places: pawn shops and second-hand markets in the fleet's cities, and the
//! border crossings of each lease country, as small polygons.

use super::geo::{COUNTRIES, Pos, destination, haversine_m};
use super::rng::{Rng, stream};

/// What a risky place is (the `kind` property in `places.geojson`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceKind {
    PawnShop,
    SecondHandMarket,
    BorderCrossing,
}

impl PlaceKind {
    /// The name in `places.geojson`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PawnShop => "pawn_shop",
            Self::SecondHandMarket => "second_hand_market",
            Self::BorderCrossing => "border_crossing",
        }
    }
}

/// One risky place.
#[derive(Debug, Clone)]
pub struct Place {
    pub id: String,
    pub kind: PlaceKind,
    pub name: String,
    /// Index into [`COUNTRIES`].
    pub country: usize,
    /// Index into the country's cities (`usize::MAX` for border crossings).
    pub city: usize,
    pub centre: Pos,
    /// Distance from the centre to the polygon's vertices, metres (the smallest one).
    pub inner_radius_m: f64,
    /// Exterior ring, counter-clockwise, closed (first == last).
    pub ring: Vec<Pos>,
}

const SHOP_NAMES: &[&str] = &[
    "Cash & Pawn",
    "Gold Exchange",
    "Quick Loans Pawnbrokers",
    "Phone Buyback",
    "City Pawn",
    "Second Chance Electronics",
];

const MARKET_NAMES: &[&str] = &["Flea Market", "Sunday Market", "Electronics Bazaar"];

fn polygon(centre: Pos, radius_m: f64, rng: &mut Rng) -> (Vec<Pos>, f64) {
    let n = 8;
    let rot = rng.range_f64(0.0, 45.0);
    let mut ring = Vec::with_capacity(n + 1);
    let mut inner = f64::MAX;
    for i in 0..n {
        // Counter-clockwise: bearings decrease.
        let bearing = rot - (i as f64) * 360.0 / n as f64;
        let r = radius_m * rng.range_f64(0.9, 1.1);
        inner = inner.min(r);
        ring.push(destination(centre, bearing, r));
    }
    ring.push(ring[0]);
    // The inscribed circle of a regular octagon is cos(22.5°) of its circumradius.
    (ring, inner * 0.92)
}

/// The risky places of a run (they depend on the seed only).
pub fn generate(seed: u64) -> Vec<Place> {
    let mut rng = Rng::new(seed, stream::PLACES);
    let mut out = Vec::new();
    for (ci, country) in COUNTRIES.iter().enumerate() {
        for (ki, city) in country.cities.iter().enumerate() {
            let shops = 3 + rng.below(4) as usize;
            let markets = 1 + rng.below(2) as usize;
            for j in 0..shops + markets {
                let kind = if j < shops {
                    PlaceKind::PawnShop
                } else {
                    PlaceKind::SecondHandMarket
                };
                // Shops cluster towards the centre; markets anywhere in the city.
                let spread = if kind == PlaceKind::PawnShop {
                    0.5
                } else {
                    0.7
                };
                let dist = city.radius_km * 1000.0 * spread * rng.f64().sqrt();
                let centre = destination(city.centre, rng.range_f64(0.0, 360.0), dist);
                let radius = match kind {
                    PlaceKind::PawnShop => rng.range_f64(30.0, 45.0),
                    _ => rng.range_f64(50.0, 75.0),
                };
                let (ring, inner) = polygon(centre, radius, &mut rng);
                let name = match kind {
                    PlaceKind::PawnShop => {
                        format!("{} {}", SHOP_NAMES[rng.index(SHOP_NAMES.len())], city.name)
                    }
                    _ => format!(
                        "{} {}",
                        city.name,
                        MARKET_NAMES[rng.index(MARKET_NAMES.len())]
                    ),
                };
                out.push(Place {
                    id: String::new(),
                    kind,
                    name,
                    country: ci,
                    city: ki,
                    centre,
                    inner_radius_m: inner,
                    ring,
                });
            }
        }
        for x in country.crossings {
            // Crossings shared by two lease countries (e.g. Le Perthus) appear once.
            if out
                .iter()
                .any(|p| p.kind == PlaceKind::BorderCrossing && haversine_m(p.centre, x.at) < 100.0)
            {
                continue;
            }
            let (ring, inner) = polygon(x.at, 75.0, &mut rng);
            out.push(Place {
                id: String::new(),
                kind: PlaceKind::BorderCrossing,
                name: x.name.to_string(),
                country: ci,
                city: usize::MAX,
                centre: x.at,
                inner_radius_m: inner,
                ring,
            });
        }
    }
    for (i, p) in out.iter_mut().enumerate() {
        p.id = format!("place-{:04}", i + 1);
    }
    out
}

/// True when `p` is within `margin_m` of any risky place of `country`.
pub fn near_any(places: &[Place], country: usize, p: Pos, margin_m: f64) -> bool {
    places
        .iter()
        .filter(|x| x.country == country)
        .any(|x| haversine_m(x.centre, p) < margin_m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_deterministic_and_small() {
        let a = generate(3);
        let b = generate(3);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ring, y.ring);
            assert_eq!(x.name, y.name);
        }
        for p in &a {
            assert_eq!(p.ring.first(), p.ring.last());
            for v in &p.ring {
                let d = haversine_m(p.centre, *v);
                assert!((20.0..=85.0).contains(&d), "{} {d}", p.name);
            }
        }
        assert!(a.iter().any(|p| p.kind == PlaceKind::BorderCrossing));
        assert!(a.iter().any(|p| p.kind == PlaceKind::SecondHandMarket));
    }
}
