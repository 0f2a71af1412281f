-- overdue: the lease is 3 or more days past due. Fed by the lease sweep (every leased
-- device, periodically), so it reaches devices that stopped pinging; grading turns the
-- days past due into the collection ladder's step.
--   threshold: 3 days past due
CREATE VIEW overdue_signals AS
SELECT 'overdue' AS signal, s.device_id, s.event_time,
       s.event_time AS window_start, s.event_time AS window_end,
       CAST(l.days_past_due AS DOUBLE) AS value, 3.0 AS threshold,
       l.status AS detail, CAST(NULL AS DOUBLE) AS lat, CAST(NULL AS DOUBLE) AS lon
FROM lease_sweep s
JOIN leases l ON l.key = concat('lw:lease:', s.device_id)
WHERE l.days_past_due >= 3;
