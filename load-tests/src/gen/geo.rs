//! Countries, cities, border crossings and mobile operators the fleet lives in, and
//! the little spherical geometry the simulation needs.
//!
//! Coordinates are real city centres and real border crossings (to within about a
//! kilometre); MCCs are the ITU-T E.212 codes of each country, MNCs those of real
//! operators there. UTC offsets are standard time (daylight saving is ignored).

use h3o::{CellIndex, LatLng, LatLngIndexer, Resolution};

/// A position in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pos {
    pub lat: f64,
    pub lon: f64,
}

impl Pos {
    pub const fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }
}

/// Mean Earth radius in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres.
pub fn haversine_m(a: Pos, b: Pos) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// The point `dist_m` metres from `p` towards `bearing_deg` (0 = north, 90 = east).
pub fn destination(p: Pos, bearing_deg: f64, dist_m: f64) -> Pos {
    let d = dist_m / EARTH_RADIUS_M;
    let b = bearing_deg.to_radians();
    let la1 = p.lat.to_radians();
    let lo1 = p.lon.to_radians();
    let la2 = (la1.sin() * d.cos() + la1.cos() * d.sin() * b.cos()).asin();
    let lo2 = lo1 + (b.sin() * d.sin() * la1.cos()).atan2(d.cos() - la1.sin() * la2.sin());
    let mut lon = lo2.to_degrees();
    if lon > 180.0 {
        lon -= 360.0;
    } else if lon < -180.0 {
        lon += 360.0;
    }
    Pos::new(la2.to_degrees(), lon)
}

/// Initial bearing from `a` to `b` in degrees (0 = north, 90 = east).
pub fn bearing_deg(a: Pos, b: Pos) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlon = (b.lon - a.lon).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// Offsets `p` by `east_m` and `north_m` metres (flat-earth; for small offsets).
#[inline]
pub fn offset_m(p: Pos, east_m: f64, north_m: f64) -> Pos {
    let lat = (p.lat + north_m / 111_320.0).clamp(-89.999_999, 89.999_999);
    let coslat = p.lat.to_radians().cos().max(0.01);
    let mut lon = p.lon + east_m / (111_320.0 * coslat);
    if lon > 180.0 {
        lon -= 360.0;
    } else if lon < -180.0 {
        lon += 360.0;
    }
    Pos::new(lat, lon)
}

/// Linear interpolation between two positions (fine for the distances phones move
/// between two pings; long legs are split by the caller's sampling anyway).
#[inline]
pub fn lerp(a: Pos, b: Pos, f: f64) -> Pos {
    Pos::new(a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f)
}

/// The H3 resolution of permitted areas.
pub const AREA_RES: Resolution = Resolution::Seven;

/// The H3 cell (at [`AREA_RES`]) of a position, as the `i64` the lease state stores.
pub fn cell_of(p: Pos) -> Option<i64> {
    let ll = LatLng::new(p.lat, p.lon).ok()?;
    let cell: CellIndex = ll.to_cell(AREA_RES);
    i64::try_from(u64::from(cell)).ok()
}

/// The cells within `k` rings of the cell of `p`.
pub fn disk_of(p: Pos, k: u32, out: &mut Vec<i64>) {
    let Ok(ll) = LatLng::new(p.lat, p.lon) else {
        return;
    };
    let cell = ll.to_cell(AREA_RES);
    let disk: Vec<CellIndex> = cell.grid_disk(k);
    out.extend(
        disk.into_iter()
            .filter_map(|c| i64::try_from(u64::from(c)).ok()),
    );
}

/// The cells a straight trip from `a` to `b` passes through, sampled every 250 m
/// on the line and 120 m either side of it (GPS noise), appended to `out`.
///
/// This is the costliest part of planning a fleet; one indexer per sampled line
/// lets h3o reuse the previous sample's cell when it has not changed.
pub fn corridor(a: Pos, b: Pos, out: &mut Vec<i64>) {
    let d = haversine_m(a, b);
    let steps = (d / 250.0).ceil().max(1.0) as usize;
    // A unit vector across the line, in metres east/north.
    let north = (b.lat - a.lat) * 111_320.0;
    let east = (b.lon - a.lon) * 111_320.0 * a.lat.to_radians().cos();
    let len = (north * north + east * east).sqrt().max(1e-9);
    let (px, py) = (-north / len * 120.0, east / len * 120.0);
    let mut idx = [
        LatLngIndexer::default(),
        LatLngIndexer::default(),
        LatLngIndexer::default(),
    ];
    let mut last = [0i64; 3];
    for i in 0..=steps {
        let p = lerp(a, b, i as f64 / steps as f64);
        let pts = [p, offset_m(p, px, py), offset_m(p, -px, -py)];
        for (k, q) in pts.iter().enumerate() {
            let Ok(ll) = LatLng::new(q.lat, q.lon) else {
                continue;
            };
            let Ok(c) = i64::try_from(u64::from(idx[k].to_cell(ll, AREA_RES))) else {
                continue;
            };
            if c != last[k] {
                out.push(c);
                last[k] = c;
            }
        }
    }
}

/// A mobile network: country code and network code as sent by phones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    pub mcc: u16,
    pub mnc: &'static str,
    /// Two digits the operator uses as ICCID issuer id.
    pub issuer: &'static str,
    /// ICCID length the operator issues (19 or 20, check digit included).
    pub iccid_len: usize,
}

const fn op(mcc: u16, mnc: &'static str, issuer: &'static str, iccid_len: usize) -> Operator {
    Operator {
        mcc,
        mnc,
        issuer,
        iccid_len,
    }
}

/// A city: real centre, metro radius, UTC offset and relative weight (population-ish).
#[derive(Debug, Clone, Copy)]
pub struct City {
    pub name: &'static str,
    pub centre: Pos,
    pub radius_km: f64,
    pub utc_offset_min: i32,
    pub weight: f64,
}

const fn city(
    name: &'static str,
    lat: f64,
    lon: f64,
    radius_km: f64,
    utc_offset_min: i32,
    weight: f64,
) -> City {
    City {
        name,
        centre: Pos::new(lat, lon),
        radius_km,
        utc_offset_min,
        weight,
    }
}

/// A road border crossing out of a lease country.
#[derive(Debug, Clone, Copy)]
pub struct Crossing {
    pub name: &'static str,
    /// The crossing itself (the border post).
    pub at: Pos,
    /// ISO 3166 alpha-2 of the neighbour.
    pub neighbour: &'static str,
    /// A town some kilometres inside the neighbour, where a trip across goes.
    pub beyond: Pos,
    /// The neighbour's network a phone roams onto.
    pub network: Operator,
}

const fn crossing(
    name: &'static str,
    at: (f64, f64),
    neighbour: &'static str,
    beyond: (f64, f64),
    network: Operator,
) -> Crossing {
    Crossing {
        name,
        at: Pos::new(at.0, at.1),
        neighbour,
        beyond: Pos::new(beyond.0, beyond.1),
        network,
    }
}

/// A lease country.
#[derive(Debug, Clone, Copy)]
pub struct Country {
    /// ISO 3166 alpha-2.
    pub code: &'static str,
    /// ITU-T E.164 country code as used in ICCIDs after `89` (`1` is written `01`).
    pub iccid_cc: &'static str,
    /// ISO 4217 currency.
    pub currency: &'static str,
    /// Monthly rent range in minor units.
    pub rent_minor: (i64, i64),
    /// Relative share of the fleet.
    pub weight: f64,
    /// Share of 2G, 3G, LTE and 5G among cellular pings.
    pub radio_mix: [f64; 4],
    pub operators: &'static [Operator],
    pub cities: &'static [City],
    pub crossings: &'static [Crossing],
}

/// Type allocation codes (first 8 IMEI digits) of common handset models.
pub const TACS: &[&str] = &[
    "35332510", "35891310", "35414112", "35698412", "35209610", "35440911", "35846611", "35290611",
    "35960412", "35407115", "86769805", "86186804", "86446203", "01332700", "35391110", "35674108",
];

/// Every lease country the generator knows.
pub static COUNTRIES: &[Country] = &[
    Country {
        code: "DE",
        iccid_cc: "49",
        currency: "EUR",
        rent_minor: (2_900, 6_900),
        weight: 1.2,
        radio_mix: [0.03, 0.0, 0.62, 0.35],
        operators: &[
            op(262, "01", "01", 19),
            op(262, "02", "02", 19),
            op(262, "03", "03", 19),
        ],
        cities: &[
            city("Berlin", 52.5200, 13.4050, 18.0, 60, 3.6),
            city("Hamburg", 53.5511, 9.9937, 15.0, 60, 1.8),
            city("Munich", 48.1351, 11.5820, 14.0, 60, 1.5),
            city("Cologne", 50.9375, 6.9603, 12.0, 60, 1.1),
            city("Frankfurt am Main", 50.1109, 8.6821, 11.0, 60, 0.8),
            city("Stuttgart", 48.7758, 9.1829, 10.0, 60, 0.6),
            city("Leipzig", 51.3397, 12.3731, 10.0, 60, 0.6),
        ],
        crossings: &[
            crossing(
                "Frankfurt (Oder) - Slubice",
                (52.3437, 14.5560),
                "PL",
                (52.3500, 14.8300),
                op(260, "03", "03", 19),
            ),
            crossing(
                "Kehl - Strasbourg",
                (48.5730, 7.8000),
                "FR",
                (48.5734, 7.7521),
                op(208, "01", "01", 19),
            ),
            crossing(
                "Kiefersfelden - Kufstein",
                (47.6170, 12.1870),
                "AT",
                (47.5830, 12.1700),
                op(232, "01", "01", 19),
            ),
        ],
    },
    Country {
        code: "GB",
        iccid_cc: "44",
        currency: "GBP",
        rent_minor: (2_500, 5_900),
        weight: 1.0,
        radio_mix: [0.02, 0.03, 0.65, 0.30],
        operators: &[
            op(234, "10", "10", 19),
            op(234, "15", "15", 19),
            op(234, "20", "20", 19),
            op(234, "30", "30", 19),
        ],
        cities: &[
            city("London", 51.5074, -0.1278, 20.0, 0, 9.0),
            city("Birmingham", 52.4862, -1.8904, 12.0, 0, 1.1),
            city("Manchester", 53.4808, -2.2426, 12.0, 0, 1.0),
            city("Leeds", 53.8008, -1.5491, 9.0, 0, 0.8),
            city("Glasgow", 55.8642, -4.2518, 10.0, 0, 0.6),
            city("Bristol", 51.4545, -2.5879, 8.0, 0, 0.5),
        ],
        crossings: &[
            crossing(
                "Newry - Dundalk (A1/M1)",
                (54.0940, -6.3560),
                "IE",
                (54.0000, -6.4050),
                op(272, "01", "01", 19),
            ),
            crossing(
                "Strabane - Lifford",
                (54.8290, -7.4700),
                "IE",
                (54.9500, -7.7300),
                op(272, "01", "01", 19),
            ),
        ],
    },
    Country {
        code: "FR",
        iccid_cc: "33",
        currency: "EUR",
        rent_minor: (2_700, 6_500),
        weight: 1.0,
        radio_mix: [0.03, 0.05, 0.62, 0.30],
        operators: &[
            op(208, "01", "01", 19),
            op(208, "10", "10", 19),
            op(208, "15", "15", 19),
            op(208, "20", "20", 19),
        ],
        cities: &[
            city("Paris", 48.8566, 2.3522, 18.0, 60, 6.0),
            city("Lyon", 45.7640, 4.8357, 11.0, 60, 1.2),
            city("Marseille", 43.2965, 5.3698, 11.0, 60, 1.2),
            city("Toulouse", 43.6047, 1.4442, 10.0, 60, 0.8),
            city("Lille", 50.6292, 3.0573, 9.0, 60, 0.7),
            city("Bordeaux", 44.8378, -0.5792, 9.0, 60, 0.7),
            city("Nantes", 47.2184, -1.5536, 8.0, 60, 0.6),
        ],
        crossings: &[
            crossing(
                "Le Perthus - La Jonquera",
                (42.4560, 2.8720),
                "ES",
                (42.2670, 2.9610),
                op(214, "07", "07", 19),
            ),
            crossing(
                "Hendaye - Irun",
                (43.3560, -1.7730),
                "ES",
                (43.3183, -1.9812),
                op(214, "01", "01", 19),
            ),
            crossing(
                "Menton - Ventimiglia",
                (43.7840, 7.5300),
                "IT",
                (43.7910, 7.6080),
                op(222, "10", "10", 19),
            ),
        ],
    },
    Country {
        code: "ES",
        iccid_cc: "34",
        currency: "EUR",
        rent_minor: (2_400, 5_900),
        weight: 0.9,
        radio_mix: [0.03, 0.05, 0.67, 0.25],
        operators: &[
            op(214, "01", "01", 19),
            op(214, "03", "03", 19),
            op(214, "07", "07", 19),
        ],
        cities: &[
            city("Madrid", 40.4168, -3.7038, 16.0, 60, 3.3),
            city("Barcelona", 41.3874, 2.1686, 12.0, 60, 2.2),
            city("Valencia", 39.4699, -0.3763, 9.0, 60, 0.8),
            city("Seville", 37.3891, -5.9845, 9.0, 60, 0.7),
            city("Zaragoza", 41.6488, -0.8891, 8.0, 60, 0.6),
            city("Bilbao", 43.2630, -2.9350, 8.0, 60, 0.4),
        ],
        crossings: &[
            crossing(
                "La Jonquera - Le Perthus",
                (42.4560, 2.8720),
                "FR",
                (42.6887, 2.8948),
                op(208, "01", "01", 19),
            ),
            crossing(
                "Badajoz - Elvas",
                (38.8790, -7.0300),
                "PT",
                (38.8810, -7.1630),
                op(268, "06", "06", 19),
            ),
            crossing(
                "Irun - Hendaye",
                (43.3560, -1.7730),
                "FR",
                (43.3880, -1.6630),
                op(208, "10", "10", 19),
            ),
        ],
    },
    Country {
        code: "PL",
        iccid_cc: "48",
        currency: "PLN",
        rent_minor: (9_900, 24_900),
        weight: 0.8,
        radio_mix: [0.04, 0.04, 0.70, 0.22],
        operators: &[
            op(260, "01", "01", 19),
            op(260, "02", "02", 19),
            op(260, "03", "03", 19),
            op(260, "06", "06", 19),
        ],
        cities: &[
            city("Warsaw", 52.2297, 21.0122, 14.0, 60, 1.8),
            city("Krakow", 50.0647, 19.9450, 10.0, 60, 0.8),
            city("Lodz", 51.7592, 19.4560, 9.0, 60, 0.7),
            city("Wroclaw", 51.1079, 17.0385, 9.0, 60, 0.6),
            city("Poznan", 52.4064, 16.9252, 8.0, 60, 0.5),
            city("Gdansk", 54.3520, 18.6466, 9.0, 60, 0.5),
        ],
        crossings: &[
            crossing(
                "Slubice - Frankfurt (Oder)",
                (52.3437, 14.5560),
                "DE",
                (52.3600, 14.0600),
                op(262, "02", "02", 19),
            ),
            crossing(
                "Cieszyn - Cesky Tesin",
                (49.7480, 18.6290),
                "CZ",
                (49.8209, 18.2625),
                op(230, "01", "01", 19),
            ),
            crossing(
                "Terespol - Brest",
                (52.0770, 23.6240),
                "BY",
                (52.0976, 23.7341),
                op(257, "02", "02", 19),
            ),
        ],
    },
    Country {
        code: "US",
        iccid_cc: "01",
        currency: "USD",
        rent_minor: (3_900, 8_900),
        weight: 1.6,
        radio_mix: [0.0, 0.0, 0.55, 0.45],
        operators: &[
            op(310, "260", "26", 20),
            op(310, "410", "41", 20),
            op(311, "480", "48", 20),
        ],
        cities: &[
            city("New York", 40.7128, -74.0060, 25.0, -300, 8.0),
            city("Los Angeles", 34.0522, -118.2437, 25.0, -480, 4.0),
            city("Chicago", 41.8781, -87.6298, 20.0, -360, 2.7),
            city("Houston", 29.7604, -95.3698, 20.0, -360, 2.3),
            city("Phoenix", 33.4484, -112.0740, 18.0, -420, 1.6),
            city("Atlanta", 33.7490, -84.3880, 18.0, -300, 1.0),
            city("Seattle", 47.6062, -122.3321, 15.0, -480, 0.8),
        ],
        crossings: &[
            crossing(
                "San Ysidro - Tijuana",
                (32.5420, -117.0290),
                "MX",
                (32.5027, -117.0037),
                op(334, "020", "02", 19),
            ),
            crossing(
                "Blaine - Peace Arch",
                (49.0020, -122.7570),
                "CA",
                (49.1913, -122.8490),
                op(302, "720", "72", 19),
            ),
            crossing(
                "Detroit - Windsor (Ambassador Bridge)",
                (42.3120, -83.0740),
                "CA",
                (42.3149, -83.0364),
                op(302, "610", "61", 19),
            ),
            crossing(
                "El Paso - Ciudad Juarez",
                (31.7550, -106.4520),
                "MX",
                (31.6904, -106.4245),
                op(334, "020", "02", 19),
            ),
        ],
    },
    Country {
        code: "MX",
        iccid_cc: "52",
        currency: "MXN",
        rent_minor: (49_900, 129_900),
        weight: 1.0,
        radio_mix: [0.03, 0.10, 0.75, 0.12],
        operators: &[
            op(334, "020", "02", 19),
            op(334, "050", "05", 19),
            op(334, "030", "03", 19),
        ],
        cities: &[
            city("Mexico City", 19.4326, -99.1332, 22.0, -360, 6.0),
            city("Guadalajara", 20.6597, -103.3496, 14.0, -360, 1.5),
            city("Monterrey", 25.6866, -100.3161, 14.0, -360, 1.4),
            city("Puebla", 19.0414, -98.2063, 10.0, -360, 0.8),
            city("Merida", 20.9674, -89.5926, 9.0, -360, 0.4),
            city("Leon", 21.1250, -101.6860, 9.0, -360, 0.5),
        ],
        crossings: &[
            crossing(
                "Tijuana - San Ysidro",
                (32.5420, -117.0290),
                "US",
                (32.7157, -117.1611),
                op(310, "410", "41", 20),
            ),
            crossing(
                "Ciudad Juarez - El Paso",
                (31.7550, -106.4520),
                "US",
                (31.7619, -106.4850),
                op(310, "260", "26", 20),
            ),
            crossing(
                "Nuevo Laredo - Laredo",
                (27.4990, -99.5070),
                "US",
                (27.5306, -99.4803),
                op(310, "410", "41", 20),
            ),
        ],
    },
    Country {
        code: "BR",
        iccid_cc: "55",
        currency: "BRL",
        rent_minor: (9_900, 29_900),
        weight: 1.3,
        radio_mix: [0.03, 0.08, 0.74, 0.15],
        operators: &[
            op(724, "05", "05", 19),
            op(724, "06", "06", 19),
            op(724, "04", "04", 19),
            op(724, "31", "31", 19),
        ],
        cities: &[
            city("Sao Paulo", -23.5505, -46.6333, 25.0, -180, 7.0),
            city("Rio de Janeiro", -22.9068, -43.1729, 18.0, -180, 4.0),
            city("Belo Horizonte", -19.9167, -43.9345, 12.0, -180, 1.5),
            city("Brasilia", -15.7939, -47.8828, 14.0, -180, 1.3),
            city("Salvador", -12.9777, -38.5016, 12.0, -180, 1.2),
            city("Curitiba", -25.4284, -49.2733, 11.0, -180, 1.0),
            city("Recife", -8.0476, -34.8770, 10.0, -180, 0.9),
            city("Manaus", -3.1190, -60.0217, 11.0, -240, 0.8),
        ],
        crossings: &[
            crossing(
                "Foz do Iguacu - Ciudad del Este (Ponte da Amizade)",
                (-25.5090, -54.6000),
                "PY",
                (-25.5200, -54.6400),
                op(744, "04", "04", 19),
            ),
            crossing(
                "Santana do Livramento - Rivera",
                (-30.8900, -55.5330),
                "UY",
                (-30.9053, -55.5508),
                op(748, "01", "01", 19),
            ),
            crossing(
                "Uruguaiana - Paso de los Libres",
                (-29.7500, -57.0700),
                "AR",
                (-29.7125, -57.0877),
                op(722, "310", "31", 19),
            ),
        ],
    },
    Country {
        code: "IN",
        iccid_cc: "91",
        currency: "INR",
        rent_minor: (99_900, 299_900),
        weight: 1.6,
        radio_mix: [0.05, 0.05, 0.70, 0.20],
        operators: &[
            op(404, "10", "10", 20),
            op(404, "45", "45", 20),
            op(405, "857", "85", 20),
        ],
        cities: &[
            city("Mumbai", 19.0760, 72.8777, 20.0, 330, 5.0),
            city("Delhi", 28.6139, 77.2090, 25.0, 330, 6.0),
            city("Bengaluru", 12.9716, 77.5946, 18.0, 330, 3.0),
            city("Chennai", 13.0827, 80.2707, 16.0, 330, 2.0),
            city("Kolkata", 22.5726, 88.3639, 16.0, 330, 3.0),
            city("Hyderabad", 17.3850, 78.4867, 16.0, 330, 2.0),
            city("Pune", 18.5204, 73.8567, 12.0, 330, 1.5),
        ],
        crossings: &[
            crossing(
                "Sunauli - Belahiya",
                (27.4650, 83.4600),
                "NP",
                (27.5050, 83.4500),
                op(429, "01", "01", 19),
            ),
            crossing(
                "Petrapole - Benapole",
                (23.0400, 88.8900),
                "BD",
                (23.1700, 89.2100),
                op(470, "01", "01", 19),
            ),
            crossing(
                "Attari - Wagah",
                (31.6047, 74.5730),
                "PK",
                (31.5204, 74.3587),
                op(410, "01", "01", 19),
            ),
        ],
    },
    Country {
        code: "KE",
        iccid_cc: "254",
        currency: "KES",
        rent_minor: (150_000, 400_000),
        weight: 0.7,
        radio_mix: [0.10, 0.20, 0.62, 0.08],
        operators: &[
            op(639, "02", "02", 19),
            op(639, "03", "03", 19),
            op(639, "07", "07", 19),
        ],
        cities: &[
            city("Nairobi", -1.2921, 36.8219, 15.0, 180, 4.0),
            city("Mombasa", -4.0435, 39.6682, 10.0, 180, 1.2),
            city("Kisumu", -0.0917, 34.7680, 8.0, 180, 0.5),
            city("Nakuru", -0.3031, 36.0800, 7.0, 180, 0.5),
            city("Eldoret", 0.5143, 35.2698, 7.0, 180, 0.4),
        ],
        crossings: &[
            crossing(
                "Busia",
                (0.4610, 34.1060),
                "UG",
                (0.6930, 34.1810),
                op(641, "01", "01", 19),
            ),
            crossing(
                "Malaba",
                (0.6360, 34.2760),
                "UG",
                (0.6930, 34.1810),
                op(641, "10", "10", 19),
            ),
            crossing(
                "Namanga",
                (-2.5440, 36.7900),
                "TZ",
                (-3.3869, 36.6830),
                op(640, "04", "04", 19),
            ),
        ],
    },
    Country {
        code: "NG",
        iccid_cc: "234",
        currency: "NGN",
        rent_minor: (1_500_000, 4_000_000),
        weight: 1.0,
        radio_mix: [0.10, 0.20, 0.65, 0.05],
        operators: &[
            op(621, "20", "20", 19),
            op(621, "30", "30", 19),
            op(621, "50", "50", 19),
            op(621, "60", "60", 19),
        ],
        cities: &[
            city("Lagos", 6.5244, 3.3792, 20.0, 60, 6.0),
            city("Abuja", 9.0765, 7.3986, 14.0, 60, 2.0),
            city("Kano", 12.0022, 8.5920, 12.0, 60, 2.0),
            city("Ibadan", 7.3775, 3.9470, 12.0, 60, 1.5),
            city("Port Harcourt", 4.8156, 7.0498, 10.0, 60, 1.0),
        ],
        crossings: &[
            crossing(
                "Seme - Krake",
                (6.3700, 2.7100),
                "BJ",
                (6.3703, 2.3912),
                op(616, "03", "03", 19),
            ),
            crossing(
                "Idiroko - Igolo",
                (6.8650, 2.7080),
                "BJ",
                (7.0000, 2.6650),
                op(616, "03", "03", 19),
            ),
            crossing(
                "Mfum - Ekok",
                (5.9800, 8.8600),
                "CM",
                (5.7550, 9.3100),
                op(624, "01", "01", 19),
            ),
        ],
    },
    Country {
        code: "ZA",
        iccid_cc: "27",
        currency: "ZAR",
        rent_minor: (39_900, 99_900),
        weight: 0.9,
        radio_mix: [0.05, 0.12, 0.70, 0.13],
        operators: &[
            op(655, "01", "01", 19),
            op(655, "07", "07", 19),
            op(655, "10", "10", 19),
            op(655, "02", "02", 19),
        ],
        cities: &[
            city("Johannesburg", -26.2041, 28.0473, 18.0, 120, 4.0),
            city("Cape Town", -33.9249, 18.4241, 16.0, 120, 2.5),
            city("Durban", -29.8587, 31.0218, 14.0, 120, 2.0),
            city("Pretoria", -25.7479, 28.2293, 14.0, 120, 1.5),
            city("Gqeberha", -33.9608, 25.6022, 10.0, 120, 0.8),
            city("Bloemfontein", -29.0852, 26.1596, 8.0, 120, 0.5),
        ],
        crossings: &[
            crossing(
                "Beitbridge",
                (-22.2200, 29.9890),
                "ZW",
                (-22.1500, 30.0500),
                op(648, "04", "04", 19),
            ),
            crossing(
                "Maseru Bridge",
                (-29.2960, 27.4620),
                "LS",
                (-29.3167, 27.4833),
                op(651, "01", "01", 19),
            ),
            crossing(
                "Lebombo - Ressano Garcia",
                (-25.4430, 31.9850),
                "MZ",
                (-25.9692, 32.5732),
                op(643, "04", "04", 19),
            ),
        ],
    },
];

/// The airport of a city: a fixed point 12-24 km out of the centre.
pub fn airport(country: usize, city: usize) -> Pos {
    let c = COUNTRIES[country].cities[city];
    let bearing = ((country * 7 + city) * 137 % 360) as f64;
    let dist = 12_000.0 + ((country * 31 + city * 17) % 12) as f64 * 1_000.0;
    destination(c.centre, bearing, dist.min(c.radius_km * 1000.0 * 0.9))
}

/// The Luhn check digit for `digits` (the digit to append).
pub fn luhn_digit(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b.wrapping_sub(b'0'));
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasewatch_schemas::{check_mcc, check_mnc, luhn_valid};

    #[test]
    fn luhn_digit_makes_valid_numbers() {
        for s in ["49015420323751", "894902220123456789", "7992739871"] {
            let full = format!("{s}{}", luhn_digit(s));
            assert!(luhn_valid(&full), "{full}");
        }
    }

    #[test]
    fn tables_are_consistent() {
        for c in COUNTRIES {
            assert_eq!(c.code.len(), 2);
            assert!(c.cities.len() >= 3, "{}", c.code);
            assert!(!c.crossings.is_empty(), "{}", c.code);
            for o in c
                .operators
                .iter()
                .chain(c.crossings.iter().map(|x| &x.network))
            {
                assert!(check_mcc(o.mcc).is_none());
                assert!(check_mnc(o.mnc).is_none());
                assert!(o.iccid_len == 19 || o.iccid_len == 20);
            }
            for x in c.crossings {
                assert_ne!(x.neighbour, c.code);
                // The town beyond is on the far side, a few km to ~100 km away.
                let d = haversine_m(x.at, x.beyond);
                assert!((500.0..120_000.0).contains(&d), "{} {d}", x.name);
            }
        }
        assert!(TACS.iter().all(|t| t.len() == 8));
    }

    #[test]
    fn geometry() {
        let berlin = Pos::new(52.52, 13.405);
        let munich = Pos::new(48.1351, 11.582);
        let d = haversine_m(berlin, munich);
        assert!((500_000.0..510_000.0).contains(&d), "{d}");
        let p = destination(berlin, 90.0, 10_000.0);
        assert!((haversine_m(berlin, p) - 10_000.0).abs() < 1.0);
        let q = offset_m(berlin, 300.0, 400.0);
        assert!((haversine_m(berlin, q) - 500.0).abs() < 2.0);
        let mut cells = Vec::new();
        corridor(berlin, destination(berlin, 45.0, 15_000.0), &mut cells);
        assert!(cells.len() > 5);
        assert!(cell_of(berlin).is_some());
    }
}
