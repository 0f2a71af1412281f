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

CREATE TABLE tamper (
  device_id TEXT,
  event_time TIMESTAMP,
  reason TEXT
) WITH (connector = 'stdout');

INSERT INTO tamper
SELECT device_id, event_time,
       CASE WHEN rooted THEN 'rooted'
            WHEN mock_location THEN 'mock_location'
            ELSE 'agent_inactive' END
FROM pings
WHERE rooted OR mock_location OR NOT agent_active;
