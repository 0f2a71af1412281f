-- Grading: every signal joined with its lease and credit state, graded and routed to a
-- collection queue, with the reasons (each rule that fired and the values that fired it).
--
-- Thresholds:
--   DPD ladder (days past due):   3-6 sms, 7-14 call, 15-59 field, 60+ legal
--   low credit band (D, E):       call from 5, field from 10, legal from 45 DPD; a device
--                                 signal counts as on an overdue lease from 1 DPD (else 3)
--   SIM mismatch / frequent swaps / tamper on an overdue lease: call (critical) + lock
--   risky place dwell:            review; on an overdue lease: field (high)
--   other device signals:         review; on an overdue lease: the ladder's step (high)
--   no lease state:               review (info)
-- Sinks: the collection queues (Redis Streams lw:queue:{queue}; an alert id already
-- written is skipped, a device + signal alerting again within the cooldown is suppressed
-- unless its grade rises) and the Parquet alert archive that reports read.

CREATE VIEW signals AS
          SELECT * FROM tamper_signals
UNION ALL SELECT * FROM sim_mismatch_signals
UNION ALL SELECT * FROM sim_swap_frequent_signals
UNION ALL SELECT * FROM out_of_area_signals
UNION ALL SELECT * FROM risky_place_dwell_signals
UNION ALL SELECT * FROM abnormal_dwell_signals
UNION ALL SELECT * FROM impossible_travel_signals
UNION ALL SELECT * FROM cross_border_signals
UNION ALL SELECT * FROM device_dark_signals
UNION ALL SELECT * FROM overdue_signals;

CREATE VIEW signal_state AS
SELECT s.signal, s.device_id, s.event_time, s.window_start, s.window_end, s.value,
       s.threshold, s.detail, s.lat, s.lon, l.lease_id, l.customer_id,
       COALESCE(l.days_past_due, 0) AS dpd, c.band,
       COALESCE(c.band IN ('D', 'E'), false) AS low_band
FROM signals s
LEFT JOIN leases l ON l.key = concat('lw:lease:', s.device_id)
LEFT JOIN credit c ON c.key = concat('lw:credit:', l.customer_id);

CREATE VIEW laddered AS
SELECT *,
       CASE
         WHEN dpd >= CASE WHEN low_band THEN 45 ELSE 60 END THEN 'legal'
         WHEN dpd >= CASE WHEN low_band THEN 10 ELSE 15 END THEN 'field'
         WHEN dpd >= CASE WHEN low_band THEN 5 ELSE 7 END THEN 'call'
         WHEN dpd >= 3 THEN 'sms'
       END AS ladder,
       CASE
         WHEN dpd >= CASE WHEN low_band THEN 45 ELSE 60 END THEN CASE WHEN low_band THEN 45 ELSE 60 END
         WHEN dpd >= CASE WHEN low_band THEN 10 ELSE 15 END THEN CASE WHEN low_band THEN 10 ELSE 15 END
         WHEN dpd >= CASE WHEN low_band THEN 5 ELSE 7 END THEN CASE WHEN low_band THEN 5 ELSE 7 END
         ELSE 3
       END AS ladder_from,
       lease_id IS NOT NULL AND dpd >= CASE WHEN low_band THEN 1 ELSE 3 END AS overdue_lease,
       signal IN ('sim_mismatch', 'sim_swap_frequent', 'tamper') AS sim_or_tamper
FROM signal_state;

CREATE VIEW graded AS
SELECT
  CASE
    WHEN signal = 'overdue' THEN concat('overdue:', device_id, ':', ladder)
    ELSE concat(signal, ':', device_id, ':', CAST(CAST(window_end AS BIGINT) AS VARCHAR))
  END AS alert_id,
  signal,
  CASE
    WHEN lease_id IS NULL THEN 'info'
    WHEN signal = 'overdue' THEN
      CASE ladder WHEN 'legal' THEN 'critical' WHEN 'field' THEN 'high'
                  WHEN 'call' THEN 'medium' ELSE 'low' END
    WHEN sim_or_tamper AND overdue_lease THEN 'critical'
    WHEN overdue_lease THEN 'high'
    WHEN sim_or_tamper OR signal IN ('impossible_travel', 'risky_place_dwell') THEN 'medium'
    ELSE 'low'
  END AS grade,
  CASE
    WHEN lease_id IS NULL THEN 'review'
    WHEN signal = 'overdue' THEN ladder
    WHEN sim_or_tamper AND overdue_lease THEN 'call'
    WHEN signal = 'risky_place_dwell' AND overdue_lease THEN 'field'
    WHEN overdue_lease AND ladder IS NOT NULL THEN ladder
    ELSE 'review'
  END AS queue,
  sim_or_tamper AND overdue_lease AS lock_request,
  device_id, lease_id, customer_id, event_time, window_start, window_end,
  CAST(dpd AS INT) AS days_past_due, band AS credit_band, lat, lon,
  concat(
    '[{"rule":"', signal, '","value":', COALESCE(CAST(round(value, 2) AS VARCHAR), 'null'),
    ',"threshold":', COALESCE(CAST(threshold AS VARCHAR), 'null'),
    ',"detail":', CASE WHEN detail IS NULL THEN 'null'
                       ELSE concat('"', replace(replace(detail, '\', '\\'), '"', '\"'), '"') END,
    '}',
    CASE WHEN signal = 'overdue' OR overdue_lease
         THEN concat(',{"rule":"dpd_ladder","value":', CAST(dpd AS VARCHAR),
                     ',"threshold":', CAST(ladder_from AS VARCHAR),
                     ',"detail":"', COALESCE(ladder, 'overdue'), '"}')
         ELSE '' END,
    CASE WHEN low_band THEN concat(',{"rule":"low_credit_band","detail":"', band, '"}')
         ELSE '' END,
    CASE WHEN lease_id IS NULL THEN ',{"rule":"no_lease_state"}' ELSE '' END,
    ']'
  ) AS reasons
FROM laddered;

-- One row per queue message: the graded alert, plus a device-lock request beside the
-- call for a SIM change or tamper on an overdue lease.
CREATE VIEW routed AS
SELECT alert_id, signal, grade, queue, device_id, lease_id, customer_id, event_time,
       window_start, window_end, days_past_due, credit_band, lat, lon, reasons
FROM graded
UNION ALL
SELECT concat(alert_id, ':lock'), signal, grade, 'lock', device_id, lease_id, customer_id,
       event_time, window_start, window_end, days_past_due, credit_band, lat, lon, reasons
FROM graded
WHERE lock_request;

CREATE TABLE alerts WITH (
  connector = 'redis',
  address = 'redis://127.0.0.1:6379',
  format = 'json',
  target = 'stream',
  cooldown = INTERVAL '1' HOUR
);

CREATE TABLE alert_archive WITH (
  connector = 'filesystem',
  path = 'out/archive',
  format = 'parquet'
);

INSERT INTO alerts SELECT * FROM routed;
INSERT INTO alert_archive SELECT * FROM routed;
