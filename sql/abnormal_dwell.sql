-- abnormal_dwell: a stay of 6 hours or more at one place outside the lease's permitted
-- area, in the lease country. A stay is a 6-hour window whose accurate fixes all lie
-- close together (radius of gyration around their centroid) and span at least 5 h 30
-- min (pings are minutes apart; late uploads never enter windows). The window's
-- centroid must be outside the permitted area (0 rings) and every serving network of
-- the window in the lease country (a stay abroad is cross_border). Measuring the whole
-- window, not first-to-last fix per cell, keeps a road passed on the way out and again
-- on the way back from counting as a stay.
--   stay: window hop(30 minutes, 6 hours); fixes spanning >= 19800 s
--   place: radius of gyration <= 250 m; fixes with accuracy <= 150 m
CREATE VIEW abnormal_dwell_signals AS
SELECT 'abnormal_dwell' AS signal, d.device_id, d.window_end AS event_time,
       d.window_start, d.window_end, d.secs AS value, 19800.0 AS threshold,
       concat('stay within ', CAST(CAST(round(d.radius_m) AS BIGINT) AS VARCHAR),
              ' m') AS detail,
       d.lat, d.lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end,
         CAST(secs AS DOUBLE) AS secs, radius_m, lat, lon, mcc_lo, mcc_hi
  FROM (
    SELECT device_id, hop(INTERVAL '30' MINUTE, INTERVAL '6' HOUR) AS window,
           (max(CAST(event_time AS BIGINT)) - min(CAST(event_time AS BIGINT))) / 1000 AS secs,
           -- radius of gyration, planar (a stay is well under a km across): native
           -- variance aggregates, a few numbers of state per slide
           111320.0 * sqrt(var_pop(lat) + var_pop(lon) * power(cos(radians(avg(lat))), 2))
             AS radius_m,
           avg(lat) AS lat, avg(lon) AS lon, min(mcc) AS mcc_lo, max(mcc) AS mcc_hi
    FROM pings
    WHERE lat IS NOT NULL AND lon IS NOT NULL AND accuracy_m <= 150
    GROUP BY 1, 2
  )
  WHERE secs >= 19800 AND radius_m <= 250
) d
JOIN leases l ON l.key = concat('lw:lease:', d.device_id)
WHERE l.permitted_cells IS NOT NULL
  AND NOT h3_in_area(h3_cell(d.lat, d.lon, CAST(l.area_res AS BIGINT)), l.permitted_cells, 0)
  AND (d.mcc_lo IS NULL OR mcc_country(d.mcc_lo) = l.lease_country)
  AND (d.mcc_hi IS NULL OR mcc_country(d.mcc_hi) = l.lease_country);
