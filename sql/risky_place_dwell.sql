-- risky_place_dwell: a stay inside one risky place (a pawn shop, second-hand market or
-- border crossing of the geofences file) within 2 hours: at least 4 accurate fixes
-- inside the same place, the first and the last of them 30 minutes or more apart. Pings
-- come every 3-8 minutes, so 30 minutes between the first and last fix inside is a stay
-- of about 45 minutes; the fix count keeps two brief passes by the same place from
-- counting as a stay. Only fixes inside a place enter the window (small state).
--   threshold: 1800 s between first and last fix inside; at least 4 fixes inside
--   window: hop(15 minutes, 2 hours); fixes with accuracy <= 150 m
CREATE VIEW risky_place_dwell_signals AS
SELECT 'risky_place_dwell' AS signal, device_id, window_end AS event_time,
       window_start, window_end, secs AS value, 1800.0 AS threshold,
       fence AS detail, lat, lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end,
         CAST(secs AS DOUBLE) AS secs, fixes, fence, lat, lon
  FROM (
    SELECT device_id, geofence_match(lat, lon) AS fence,
           hop(INTERVAL '15' MINUTE, INTERVAL '2' HOUR) AS window,
           (max(CAST(event_time AS BIGINT)) - min(CAST(event_time AS BIGINT))) / 1000 AS secs,
           count(*) AS fixes, avg(lat) AS lat, avg(lon) AS lon
    FROM pings
    WHERE lat IS NOT NULL AND lon IS NOT NULL AND accuracy_m <= 150
      AND geofence_match(lat, lon) IS NOT NULL
    GROUP BY 1, 2, 3
  )
)
WHERE secs >= 1800 AND fixes >= 4;
