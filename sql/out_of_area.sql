-- out_of_area: a fix outside the lease's permitted area: the H3 cells (at the lease's
-- resolution) around home, work and usual places and along the routes between them. The
-- area carries its own margins (rings around each place, a corridor along each route),
-- so a fix is outside as soon as its cell is not in the area (0 rings of tolerance).
-- Fixes less accurate than the threshold are ignored. Per ping, joined with lease state
-- (in ping_lease, which keeps only fixes whose cell is not a permitted one); coarser
-- permitted cells (a compacted area) are compared at their own resolution here.
--   accuracy: at most 150 m; tolerance: 0 rings
CREATE VIEW out_of_area_signals AS
SELECT 'out_of_area' AS signal, device_id, event_time,
       event_time AS window_start, event_time AS window_end,
       CAST(accuracy_m AS DOUBLE) AS value, 150.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, lat, lon
FROM ping_lease
WHERE off_cell
  AND NOT h3_in_area(h3_cell(lat, lon, CAST(area_res AS BIGINT)), permitted_cells, 0);
