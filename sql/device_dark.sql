-- device_dark: no ping for 4 hours or more (event time) after a phone that did not shut
-- down cleanly. A session closes when the watermark passes its last ping plus the gap;
-- sessions closed only because the input ended (a replay's end) are not darkness.
--   gap: 4 hours; a shutdown event within 2 minutes of the last ping explains the silence
CREATE VIEW device_dark_signals AS
SELECT 'device_dark' AS signal, device_id, window_end AS event_time,
       last_ping AS window_start, window_end, CAST(NULL AS DOUBLE) AS value,
       14400.0 AS threshold, CAST(NULL AS TEXT) AS detail, lat, lon
FROM (
  SELECT device_id, window.end AS window_end, last_ping, last_shutdown, lat, lon
  FROM (
    SELECT device_id, session(INTERVAL '4' HOUR) AS window,
           max(event_time) AS last_ping,
           max(CASE WHEN event_kind = 'shutdown' THEN event_time END) AS last_shutdown,
           avg(lat) AS lat, avg(lon) AS lon
    FROM pings
    GROUP BY 1, 2
  )
)
WHERE window_end <= event_watermark()
  AND (last_shutdown IS NULL OR last_ping - last_shutdown > INTERVAL '2' MINUTE);
