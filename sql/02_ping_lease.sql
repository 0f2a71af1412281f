-- ping_lease: every ping that breaks a per-ping rule needing lease state, with the state
-- it broke, for sim_mismatch, out_of_area and cross_border. Each ping is joined with its
-- lease once here instead of once per rule (a lookup join decodes the state of every
-- device in the batch), and only the rare pings that break a rule leave this view, so
-- the rules and grading above it handle few rows. The flags are the cheap tests; each
-- rule refines its own:
--   sim_change:  the ICCID differs from the one registered on the lease
--   net_abroad:  the serving network's country (MCC) is not the lease country
--   off_cell:    an accurate fix (at most 150 m) whose cell, at the lease's resolution,
--                is not one of the permitted cells (exact membership; coarser cells of a
--                compacted area are checked by the rules with h3_in_area)
-- A flag is `(test) IS TRUE`, false when the test is NULL (no fix, no lease value).
-- Not `COALESCE(test, false)`: DataFusion rewrites that to `CASE WHEN test IS NOT NULL
-- THEN test ...`, which computes the test (an H3 cell per ping) twice.
CREATE VIEW ping_lease AS
SELECT device_id, event_time, lat, lon, accuracy_m, iccid, mcc, registered_iccid,
       lease_country, permitted_cells, area_res, sim_change, net_abroad, off_cell
FROM (
  SELECT p.device_id, p.event_time, p.lat, p.lon, p.accuracy_m, p.iccid, p.mcc,
         l.registered_iccid, l.lease_country, l.permitted_cells, l.area_res,
         (p.iccid <> l.registered_iccid) IS TRUE AS sim_change,
         (mcc_country(p.mcc) <> l.lease_country) IS TRUE AS net_abroad,
         (p.accuracy_m <= 150
          AND NOT array_has(l.permitted_cells,
                            h3_cell(p.lat, p.lon, CAST(l.area_res AS BIGINT)))) IS TRUE
           AS off_cell
  FROM pings p
  JOIN leases l ON l.key = concat('lw:lease:', p.device_id)
)
WHERE sim_change OR net_abroad OR off_cell;
