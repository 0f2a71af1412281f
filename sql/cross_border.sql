-- cross_border: the serving network's country (MCC) is not the lease country. Per ping,
-- joined with lease state.
CREATE VIEW cross_border_signals AS
SELECT 'cross_border' AS signal, p.device_id, p.event_time,
       p.event_time AS window_start, p.event_time AS window_end,
       CAST(p.mcc AS DOUBLE) AS value, CAST(NULL AS DOUBLE) AS threshold,
       concat(mcc_country(p.mcc), ' network, lease in ', l.lease_country) AS detail,
       p.lat, p.lon
FROM pings p
JOIN leases l ON l.key = concat('lw:lease:', p.device_id)
WHERE p.mcc IS NOT NULL
  AND mcc_country(p.mcc) IS NOT NULL
  AND mcc_country(p.mcc) <> l.lease_country;
