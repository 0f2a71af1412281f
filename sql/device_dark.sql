-- device_dark: no ping for 4 hours or more (event time) after a phone that did not shut
-- down cleanly. Sliding windows of 4 h 15 min every 15 minutes: a window whose pings all
-- fall in its first 15 minutes has seen its device silent for more than 4 h by its end,
-- and exactly one window (the one starting at the slide of the last ping) reports each
-- silence. Windows closed only because the input ended (a replay's end) are not
-- darkness. Per-device state is a handful of values per 15-minute slide, not the pings.
--   gap: 4 hours (window hop(15 minutes, 4 hours 15 minutes));
--   a shutdown event within 2 minutes of the last ping explains the silence
CREATE VIEW device_dark_signals AS
SELECT 'device_dark' AS signal, device_id, window_end AS event_time,
       last_ping AS window_start, window_end,
       CAST((CAST(window_end AS BIGINT) - CAST(last_ping AS BIGINT)) / 1000 AS DOUBLE) AS value,
       14400.0 AS threshold, CAST(NULL AS TEXT) AS detail, lat, lon
FROM (
  SELECT device_id, window.start AS window_start, window.end AS window_end, last_ping,
         last_shutdown, lat, lon
  FROM (
    SELECT device_id, hop(INTERVAL '15' MINUTE, INTERVAL '255' MINUTE) AS window,
           max(event_time) AS last_ping,
           max(CASE WHEN event_kind = 'shutdown' THEN event_time END) AS last_shutdown,
           avg(lat) AS lat, avg(lon) AS lon
    FROM pings
    GROUP BY 1, 2
  )
)
WHERE last_ping < window_start + INTERVAL '15' MINUTE
  AND window_end <= event_watermark()
  AND (last_shutdown IS NULL OR last_ping - last_shutdown > INTERVAL '2' MINUTE);
