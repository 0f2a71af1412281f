-- sim_swap_frequent: at least 3 distinct SIMs (ICCIDs) in a device within 6 hours,
-- evaluated every 30 minutes.
--   threshold: 3 distinct ICCIDs; window: hop(30 minutes, 6 hours)
CREATE VIEW sim_swap_frequent_signals AS
SELECT 'sim_swap_frequent' AS signal, device_id, window_end AS event_time,
       window_start, window_end, CAST(iccids AS DOUBLE) AS value, 3.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, lat, lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end, iccids, lat, lon
  FROM (
    SELECT device_id, hop(INTERVAL '30' MINUTE, INTERVAL '6' HOUR) AS window,
           count(DISTINCT iccid) AS iccids, avg(lat) AS lat, avg(lon) AS lon
    FROM pings
    GROUP BY 1, 2
  )
)
WHERE iccids >= 3;
