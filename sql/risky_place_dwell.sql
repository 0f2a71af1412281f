-- risky_place_dwell: 45 minutes or more inside risky places (pawn shops, second-hand
-- markets, border crossings: the geofences file of the config) within 2 hours.
-- Only time between two consecutive fixes that are both inside counts.
--   threshold: 2700 s; window: hop(15 minutes, 2 hours)
CREATE VIEW risky_place_dwell_signals AS
SELECT 'risky_place_dwell' AS signal, device_id, window_end AS event_time,
       window_start, window_end, secs AS value, 2700.0 AS threshold,
       fence AS detail, lat, lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end, secs, fence,
         lat, lon
  FROM (
    SELECT device_id, hop(INTERVAL '15' MINUTE, INTERVAL '2' HOUR) AS window,
           dwell_seconds(event_time, geofence_match(lat, lon) IS NOT NULL) AS secs,
           max(geofence_match(lat, lon)) AS fence,
           avg(lat) AS lat, avg(lon) AS lon
    FROM pings
    GROUP BY 1, 2
  )
)
WHERE secs >= 2700.0;
