-- 10-minute windows sliding every minute, per device: pings and lowest battery.
-- (Adding count(DISTINCT iccid) costs ~4x: DataFusion runs distinct counts with one
-- accumulator per group and list-typed partial states.)
INSERT INTO per_device_10m
SELECT device_id, window.start AS window_start, window.end AS window_end, pings, min_battery
FROM (
  SELECT device_id, hop(INTERVAL '1' MINUTE, INTERVAL '10' MINUTE) AS window,
         count(*) AS pings, min(battery_pct) AS min_battery
  FROM pings
  GROUP BY 1, 2
);
