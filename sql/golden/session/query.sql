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

CREATE TABLE sessions (
  device_id TEXT,
  session_start TIMESTAMP,
  session_end TIMESTAMP,
  pings BIGINT
) WITH (connector = 'blackhole');

-- device_dark building block: a session closes once no ping came for 5 minutes;
-- session_end is the last ping + 5 minutes.
INSERT INTO sessions
SELECT device_id, window.start, window.end, pings
FROM (
  SELECT device_id, session(INTERVAL '5' MINUTE) AS window, count(*) AS pings
  FROM pings
  GROUP BY window, device_id
);
