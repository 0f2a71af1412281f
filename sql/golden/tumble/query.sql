CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  lat DOUBLE,
  lon DOUBLE,
  battery_pct INT,
  iccid TEXT,
  agent_active BOOLEAN,
  rooted BOOLEAN,
  mock_location BOOLEAN,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '10' SECOND)
) WITH (connector = 'leasewatch');

CREATE TABLE per_minute (
  device_id TEXT,
  window_start TIMESTAMP,
  window_end TIMESTAMP,
  pings BIGINT,
  min_battery INT
) WITH (connector = 'filesystem', path = 'out/per_minute', format = 'json');

-- pings and lowest battery per device and minute
INSERT INTO per_minute
SELECT device_id, window.start, window.end, pings, min_battery
FROM (
  SELECT device_id, tumble(INTERVAL '1' MINUTE) AS window,
         count(*) AS pings, min(battery_pct) AS min_battery
  FROM pings
  GROUP BY device_id, window
);
