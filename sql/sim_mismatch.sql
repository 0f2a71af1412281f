-- sim_mismatch: the phone reports a SIM (ICCID) other than the one registered on its
-- lease. Per ping, joined with lease state (in ping_lease); leases without a registered
-- SIM never fire.
CREATE VIEW sim_mismatch_signals AS
SELECT 'sim_mismatch' AS signal, device_id, event_time,
       event_time AS window_start, event_time AS window_end,
       CAST(NULL AS DOUBLE) AS value, CAST(NULL AS DOUBLE) AS threshold,
       concat('seen ', iccid, ', registered ', registered_iccid) AS detail,
       lat, lon
FROM ping_lease
WHERE sim_change;
