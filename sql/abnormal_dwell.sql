-- abnormal_dwell: a stay of 6 hours or more in one place (an H3 resolution-7 cell, about
-- 5 km²) outside the lease's permitted area, in the lease country. The stay is the time
-- between the first and last fix in the cell within the window.
--   threshold: 21600 s; window: hop(30 minutes, 8 hours); place: H3 res 7
CREATE VIEW abnormal_dwell_signals AS
SELECT 'abnormal_dwell' AS signal, d.device_id, d.window_end AS event_time,
       d.window_start, d.window_end, d.secs AS value, 21600.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, d.lat, d.lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end,
         CAST(secs AS DOUBLE) AS secs, lat, lon, mcc
  FROM (
    SELECT device_id, h3_cell(lat, lon, 7) AS place,
           hop(INTERVAL '30' MINUTE, INTERVAL '8' HOUR) AS window,
           (max(CAST(event_time AS BIGINT)) - min(CAST(event_time AS BIGINT))) / 1000 AS secs,
           avg(lat) AS lat, avg(lon) AS lon, min(mcc) AS mcc
    FROM pings
    WHERE lat IS NOT NULL AND accuracy_m <= 150
    GROUP BY 1, 2, 3
  )
  WHERE secs >= 21600
) d
JOIN leases l ON l.key = concat('lw:lease:', d.device_id)
WHERE l.permitted_cells IS NOT NULL
  AND NOT h3_in_area(h3_cell(d.lat, d.lon, CAST(l.area_res AS BIGINT)), l.permitted_cells, 1)
  AND (d.mcc IS NULL OR mcc_country(d.mcc) = l.lease_country);
