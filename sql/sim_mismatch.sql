-- sim_mismatch: the phone reports a SIM (ICCID) other than the one registered on its
-- lease. Per ping, joined with lease state; leases without a registered SIM never fire.
CREATE VIEW sim_mismatch_signals AS
SELECT 'sim_mismatch' AS signal, p.device_id, p.event_time,
       p.event_time AS window_start, p.event_time AS window_end,
       CAST(NULL AS DOUBLE) AS value, CAST(NULL AS DOUBLE) AS threshold,
       concat('seen ', p.iccid, ', registered ', l.registered_iccid) AS detail,
       p.lat, p.lon
FROM pings p
JOIN leases l ON l.key = concat('lw:lease:', p.device_id)
WHERE p.iccid IS NOT NULL
  AND l.registered_iccid IS NOT NULL
  AND p.iccid <> l.registered_iccid;
