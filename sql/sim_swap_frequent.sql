-- sim_swap_frequent: at least 3 distinct SIMs (ICCIDs) in a device within 6 hours,
-- evaluated every 30 minutes. The window groups by device and ICCID (plain counts as
-- state) and the SIMs of each window are counted once it closes: count(DISTINCT)
-- without a hash set per device and slide.
--   threshold: 3 distinct ICCIDs; window: hop(30 minutes, 6 hours)
CREATE VIEW sim_swap_frequent_signals AS
SELECT 'sim_swap_frequent' AS signal, device_id, window_end AS event_time,
       window_start, window_end, CAST(iccids AS DOUBLE) AS value, 3.0 AS threshold,
       CAST(NULL AS TEXT) AS detail, lat, lon
FROM (
  SELECT device_id, window_start, window_end, count(*) AS iccids,
         avg(lat) AS lat, avg(lon) AS lon
  FROM (
    SELECT device_id, window.start AS window_start, window.end AS window_end, lat, lon
    FROM (
      SELECT device_id, iccid, hop(INTERVAL '30' MINUTE, INTERVAL '6' HOUR) AS window,
             avg(lat) AS lat, avg(lon) AS lon
      FROM pings
      WHERE iccid IS NOT NULL
      GROUP BY 1, 2, 3
    )
  )
  GROUP BY device_id, window_start, window_end
)
WHERE iccids >= 3;
