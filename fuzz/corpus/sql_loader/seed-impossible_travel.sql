-- impossible_travel: consecutive fixes imply a speed no airliner reaches (spoofing or a
-- cloned identity). Fixes less accurate than 1 km are ignored by max_speed_kmh, and
-- each fix's accuracy is taken off the distance.
--   threshold: 1200 km/h; window: hop(5 minutes, 30 minutes)
CREATE VIEW impossible_travel_signals AS
SELECT 'impossible_travel' AS signal, device_id, window_end AS event_time,
       window_start, window_end, kmh AS value, 1200.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, CAST(NULL AS DOUBLE) AS lat, CAST(NULL AS DOUBLE) AS lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end, kmh
  FROM (
    SELECT device_id, hop(INTERVAL '5' MINUTE, INTERVAL '30' MINUTE) AS window,
           max_speed_kmh(event_time, lat, lon, accuracy_m) AS kmh
    FROM pings
    GROUP BY 1, 2
  )
)
WHERE kmh > 1200.0;
