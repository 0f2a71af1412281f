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

CREATE TABLE cells WITH (connector = 'blackhole');
CREATE TABLE speeds WITH (connector = 'blackhole');

INSERT INTO cells
SELECT device_id, event_time, h3_cell(lat, lon, 7) AS cell,
       round(haversine_m(lat, lon, 52.52, 13.405)) AS metres_from_depot
FROM pings;

INSERT INTO speeds
SELECT device_id, window.start AS window_start, round(kmh) AS kmh
FROM (
  SELECT device_id, tumble(INTERVAL '2' MINUTE) AS window,
         max_speed_kmh(event_time, lat, lon, CAST(10 AS REAL)) AS kmh
  FROM pings
  GROUP BY 1, 2
);
