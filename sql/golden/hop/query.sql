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

CREATE TABLE sim_swaps WITH (connector = 'stdout');

-- sim_swap_frequent: >= 2 distinct ICCIDs within 3 minutes, sliding every minute
CREATE VIEW swaps AS
SELECT device_id, hop(INTERVAL '1' MINUTE, INTERVAL '3' MINUTE) AS window,
       count(DISTINCT iccid) AS iccids, count(*) AS pings
FROM pings
GROUP BY 1, 2;

INSERT INTO sim_swaps
SELECT device_id, window.start AS window_start, window.end AS window_end, iccids, pings
FROM swaps
WHERE iccids >= 2;
