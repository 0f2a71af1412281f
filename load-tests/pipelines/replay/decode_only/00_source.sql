-- Benchmark pipeline for `leasewatch replay` (see README.md beside this file).
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
  -- The product's bound (sql/00_source.sql). Phone clocks are off by up to +-30 s
  -- in the generated fleet, so a 30 s bound put half the pings behind the watermark.
  WATERMARK FOR event_time AS (event_time - INTERVAL '2' MINUTE)
) WITH (connector = 'leasewatch');

