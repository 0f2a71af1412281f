-- out_of_area: a fix outside the lease's permitted area (H3 cells around home, work and
-- usual places at the lease's resolution), with one ring of tolerance for fixes near
-- the edge. Fixes less accurate than the threshold are ignored.
--   tolerance: 1 ring; accuracy: at most 150 m
CREATE VIEW out_of_area_signals AS
SELECT 'out_of_area' AS signal, p.device_id, p.event_time,
       p.event_time AS window_start, p.event_time AS window_end,
       CAST(p.accuracy_m AS DOUBLE) AS value, 150.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, p.lat, p.lon
FROM pings p
JOIN leases l ON l.key = concat('lw:lease:', p.device_id)
WHERE p.lat IS NOT NULL AND p.lon IS NOT NULL
  AND p.accuracy_m <= 150
  AND l.permitted_cells IS NOT NULL
  AND NOT h3_in_area(h3_cell(p.lat, p.lon, CAST(l.area_res AS BIGINT)), l.permitted_cells, 1);
