//! Risky-place geofences: polygons loaded from a GeoJSON FeatureCollection, looked up by
//! point with an R-tree of bounding boxes as the prefilter and an exact point-in-polygon
//! test (geo) on the few candidates.
//!
//! Pasted verbatim into the Arroyo UDF sources: depends only on `std`, `geo`, `rstar`,
//! `serde_json` and `thiserror`.
//!
//! Coordinates are planar longitude/latitude, as GeoJSON (RFC 7946) defines them: a
//! polygon that crosses the antimeridian must be split into two (a MultiPolygon), as the
//! RFC requires. A point on a polygon's boundary is inside it.

use geo::{Area, BoundingRect, Coord, Intersects, LineString, MultiPolygon, Polygon};
use rstar::RTree;
use rstar::primitives::{GeomWithData, Rectangle};
use serde_json::Value;

/// A GeoJSON file that cannot be used, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeofenceError {
    /// The text is not JSON.
    #[error("geofence GeoJSON is not valid JSON: {0}")]
    Json(String),
    /// The top level is not a FeatureCollection.
    #[error("geofence GeoJSON must be a FeatureCollection with a \"features\" array")]
    NotFeatureCollection,
    /// One feature is unusable.
    #[error("geofence feature #{index} (id {id:?}): {reason}")]
    Feature {
        /// Position of the feature in the `features` array.
        index: usize,
        /// Its `id` property, when it has one.
        id: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Two features share an id.
    #[error("geofence id {0:?} appears more than once")]
    DuplicateId(String),
}

/// One risky place.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Identifier (`properties.id`).
    pub id: String,
    /// Kind of place (`properties.kind`: `pawn_shop`, `second_hand_market`,
    /// `border_crossing`, ...).
    pub kind: String,
    /// The area, longitude/latitude degrees.
    pub shape: MultiPolygon<f64>,
    /// Planar area in square degrees, used to prefer the most specific fence.
    area: f64,
}

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// All fences with a spatial index over them.
#[derive(Debug, Clone, Default)]
pub struct GeofenceIndex {
    fences: Vec<Fence>,
    tree: RTree<Entry>,
}

impl GeofenceIndex {
    /// Loads a GeoJSON FeatureCollection of Polygon and MultiPolygon features, each with
    /// string properties `id` (unique) and `kind`. Every problem names the feature.
    ///
    /// ```
    /// use leasewatch_udfs::core::geofence::GeofenceIndex;
    /// let index = GeofenceIndex::from_geojson(r#"{"type": "FeatureCollection", "features": [
    ///   {"type": "Feature", "properties": {"id": "shop-1", "kind": "pawn_shop"},
    ///    "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}
    /// ]}"#).unwrap();
    /// assert_eq!(index.locate(0.5, 0.5).map(|f| f.id.as_str()), Some("shop-1"));
    /// assert!(index.locate(2.0, 0.5).is_none());
    /// ```
    pub fn from_geojson(text: &str) -> Result<GeofenceIndex, GeofenceError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| GeofenceError::Json(e.to_string()))?;
        let features = match (
            root.get("type").and_then(Value::as_str),
            root.get("features"),
        ) {
            (Some("FeatureCollection"), Some(Value::Array(features))) => features,
            _ => return Err(GeofenceError::NotFeatureCollection),
        };
        let mut fences = Vec::with_capacity(features.len());
        for (index, feature) in features.iter().enumerate() {
            fences.push(parse_feature(index, feature)?);
        }
        GeofenceIndex::new(fences)
    }

    /// Indexes fences built in code (ids must be unique).
    pub fn from_fences<I>(fences: I) -> Result<GeofenceIndex, GeofenceError>
    where
        I: IntoIterator<Item = (String, String, MultiPolygon<f64>)>,
    {
        GeofenceIndex::new(
            fences
                .into_iter()
                .map(|(id, kind, shape)| Fence {
                    area: shape.unsigned_area(),
                    id,
                    kind,
                    shape,
                })
                .collect(),
        )
    }

    fn new(fences: Vec<Fence>) -> Result<GeofenceIndex, GeofenceError> {
        let mut seen = std::collections::HashSet::with_capacity(fences.len());
        for fence in &fences {
            if !seen.insert(fence.id.as_str()) {
                return Err(GeofenceError::DuplicateId(fence.id.clone()));
            }
        }
        let mut entries = Vec::with_capacity(fences.len());
        for (index, fence) in fences.iter().enumerate() {
            let (Some(rect), Ok(slot)) = (fence.shape.bounding_rect(), u32::try_from(index)) else {
                // An empty shape contains nothing; more than 4 billion fences cannot be
                // indexed (and would not fit in memory anyway).
                continue;
            };
            let (min, max) = (rect.min(), rect.max());
            entries.push(GeomWithData::new(
                Rectangle::from_corners([min.x, min.y], [max.x, max.y]),
                slot,
            ));
        }
        Ok(GeofenceIndex {
            fences,
            tree: RTree::bulk_load(entries),
        })
    }

    /// Number of fences.
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether there is no fence.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// The fence containing `(lat, lon)`; when several do, the smallest (the most
    /// specific place), ties going to the one listed first. `None` when no fence contains
    /// the point or the position is not finite or out of range.
    #[inline]
    pub fn locate(&self, lat: f64, lon: f64) -> Option<&Fence> {
        if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
            return None;
        }
        let point = Coord { x: lon, y: lat };
        let mut best: Option<(u32, &Fence)> = None;
        for entry in self.tree.locate_all_at_point(&[lon, lat]) {
            let Some(fence) = self.fences.get(entry.data as usize) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((slot, current)) => {
                    fence.area < current.area || (fence.area == current.area && entry.data < slot)
                }
            };
            if better && fence.shape.intersects(&point) {
                best = Some((entry.data, fence));
            }
        }
        best.map(|(_, fence)| fence)
    }
}

fn parse_feature(index: usize, feature: &Value) -> Result<Fence, GeofenceError> {
    let properties = feature.get("properties");
    let id = properties
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let fail = |reason: &str| GeofenceError::Feature {
        index,
        id: id.clone(),
        reason: reason.to_owned(),
    };
    let Some(fence_id) = id.clone() else {
        return Err(fail("properties.id must be a string"));
    };
    let kind = properties
        .and_then(|p| p.get("kind"))
        .and_then(Value::as_str)
        .ok_or_else(|| fail("properties.kind must be a string"))?
        .to_owned();
    let geometry = feature
        .get("geometry")
        .ok_or_else(|| fail("geometry is missing"))?;
    let coordinates = geometry
        .get("coordinates")
        .ok_or_else(|| fail("geometry.coordinates is missing"))?;
    let shape = match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon") => {
            MultiPolygon::new(vec![parse_polygon(coordinates).map_err(|r| fail(&r))?])
        }
        Some("MultiPolygon") => {
            let parts = coordinates
                .as_array()
                .ok_or_else(|| fail("MultiPolygon coordinates must be an array of polygons"))?;
            let polygons: Result<Vec<_>, _> = parts.iter().map(parse_polygon).collect();
            MultiPolygon::new(polygons.map_err(|r| fail(&r))?)
        }
        Some(other) => {
            return Err(fail(&format!(
                "geometry type {other:?} is not Polygon or MultiPolygon"
            )));
        }
        None => return Err(fail("geometry.type must be a string")),
    };
    Ok(Fence {
        area: shape.unsigned_area(),
        id: fence_id,
        kind,
        shape,
    })
}

fn parse_polygon(value: &Value) -> Result<Polygon<f64>, String> {
    let rings = value
        .as_array()
        .filter(|rings| !rings.is_empty())
        .ok_or("a polygon must be a non-empty array of rings")?;
    let mut parsed = Vec::with_capacity(rings.len());
    for (r, ring) in rings.iter().enumerate() {
        let positions = ring
            .as_array()
            .ok_or_else(|| format!("ring {r} must be an array of positions"))?;
        if positions.len() < 4 {
            return Err(format!(
                "ring {r} has {} positions, at least 4 needed",
                positions.len()
            ));
        }
        let mut coords = Vec::with_capacity(positions.len());
        for (p, position) in positions.iter().enumerate() {
            let pair = position.as_array().map(|a| {
                (
                    a.first().and_then(Value::as_f64),
                    a.get(1).and_then(Value::as_f64),
                )
            });
            let Some((Some(x), Some(y))) = pair else {
                return Err(format!("ring {r} position {p} is not [lon, lat]"));
            };
            if !(y.abs() <= 90.0 && x.abs() <= 180.0) {
                return Err(format!("ring {r} position {p} [{x}, {y}] is out of range"));
            }
            coords.push(Coord { x, y });
        }
        parsed.push(LineString::new(coords));
    }
    let mut rings = parsed.into_iter();
    let exterior = rings.next().ok_or("a polygon needs an exterior ring")?;
    Ok(Polygon::new(exterior, rings.collect()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn square(id: &str, kind: &str, x0: f64, y0: f64, size: f64) -> String {
        let (x1, y1) = (x0 + size, y0 + size);
        format!(
            r#"{{"type":"Feature","properties":{{"id":"{id}","kind":"{kind}"}},"geometry":{{"type":"Polygon","coordinates":[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]}}}}"#
        )
    }

    fn collection(features: &[String]) -> String {
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        )
    }

    #[test]
    fn smallest_containing_fence_wins() {
        let index = GeofenceIndex::from_geojson(&collection(&[
            square("market", "second_hand_market", 0.0, 0.0, 1.0),
            square("shop", "pawn_shop", 0.4, 0.4, 0.2),
        ]))
        .unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.locate(0.5, 0.5).unwrap().id, "shop");
        assert_eq!(index.locate(0.1, 0.1).unwrap().kind, "second_hand_market");
        // Boundary counts as inside.
        assert_eq!(index.locate(0.0, 0.5).unwrap().id, "market");
        assert!(index.locate(f64::NAN, 0.5).is_none());
        assert!(index.locate(0.5, 200.0).is_none());
    }

    #[test]
    fn antimeridian_multipolygon_and_holes() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"fiji","kind":"border_crossing"},
           "geometry":{"type":"MultiPolygon","coordinates":[
             [[[179,-18],[180,-18],[180,-17],[179,-17],[179,-18]]],
             [[[-180,-18],[-179,-18],[-179,-17],[-180,-17],[-180,-18]]]]}},
          {"type":"Feature","properties":{"id":"ring","kind":"pawn_shop"},
           "geometry":{"type":"Polygon","coordinates":[
             [[10,10],[20,10],[20,20],[10,20],[10,10]],
             [[14,14],[16,14],[16,16],[14,16],[14,14]]]}}]}"#;
        let index = GeofenceIndex::from_geojson(text).unwrap();
        assert_eq!(index.locate(-17.5, 179.5).unwrap().id, "fiji");
        assert_eq!(index.locate(-17.5, -179.5).unwrap().id, "fiji");
        assert_eq!(index.locate(-17.5, 180.0).unwrap().id, "fiji");
        assert_eq!(index.locate(12.0, 12.0).unwrap().id, "ring");
        assert!(index.locate(15.0, 15.0).is_none());
    }

    #[test]
    fn errors_name_the_feature() {
        let bad = collection(&[
            square("a", "pawn_shop", 0.0, 0.0, 1.0),
            square("a", "x", 5.0, 5.0, 1.0),
        ]);
        assert_eq!(
            GeofenceIndex::from_geojson(&bad).unwrap_err(),
            GeofenceError::DuplicateId("a".into())
        );
        let no_kind = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"z"},"geometry":{"type":"Polygon","coordinates":[]}}]}"#;
        let err = GeofenceIndex::from_geojson(no_kind)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("#0") && err.contains("\"z\"") && err.contains("kind"),
            "{err}"
        );
        let point = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"p","kind":"k"},"geometry":{"type":"Point","coordinates":[0,0]}}]}"#;
        assert!(
            GeofenceIndex::from_geojson(point)
                .unwrap_err()
                .to_string()
                .contains("Point")
        );
        let short = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"s","kind":"k"},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[0,0]]]}}]}"#;
        assert!(
            GeofenceIndex::from_geojson(short)
                .unwrap_err()
                .to_string()
                .contains("at least 4")
        );
        assert_eq!(
            GeofenceIndex::from_geojson("[]").unwrap_err(),
            GeofenceError::NotFeatureCollection
        );
        assert!(matches!(
            GeofenceIndex::from_geojson("{"),
            Err(GeofenceError::Json(_))
        ));
        let empty = GeofenceIndex::from_geojson(&collection(&[])).unwrap();
        assert!(empty.is_empty() && empty.locate(0.0, 0.0).is_none());
    }
}
