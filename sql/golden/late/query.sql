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

CREATE TABLE per_minute WITH (connector = 'blackhole');
CREATE TABLE tamper WITH (connector = 'blackhole');

INSERT INTO per_minute
SELECT device_id, window.start AS window_start, pings, min_battery
FROM (
  SELECT device_id, tumble(INTERVAL '1' MINUTE) AS window,
         count(*) AS pings, min(battery_pct) AS min_battery
  FROM pings
  GROUP BY 1, 2
);

-- late pings still pass the per-ping rules
INSERT INTO tamper
SELECT device_id, event_time, battery_pct FROM pings WHERE rooted;
