-- The ping source: HTTP ingest in `leasewatch run`, files in `leasewatch replay`.
-- Columns are those of the contract (schemas/src/ping.rs); the watermark allows pings
-- to arrive up to 2 minutes out of order before their windows close. Later pings are
-- counted as late and still pass every per-ping rule.
CREATE TABLE pings (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL,
  lat DOUBLE,
  lon DOUBLE,
  accuracy_m REAL,
  iccid TEXT,
  imsi TEXT,
  mcc INT,
  battery_pct INT,
  agent_active BOOLEAN,
  mdm_active BOOLEAN,
  rooted BOOLEAN,
  mock_location BOOLEAN,
  event_kind TEXT NOT NULL,
  WATERMARK FOR event_time AS (event_time - INTERVAL '2' MINUTE)
) WITH (connector = 'leasewatch');
