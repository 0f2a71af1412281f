-- cross_border: the phone is outside the lease country. Either its serving network's
-- country (MCC) is not the lease country, or its position is so far beyond the permitted
-- area that it must be abroad: an accurate fix more than 5 rings of H3 resolution-2
-- cells away from every permitted cell (about 1,400 to 2,300 km: ring counts are not
-- kilometres). The position test also sees a fix abroad while the network stays at home
-- (a spoofed or mocked position) and fixes uploaded late without a network. It is a
-- proxy for "position outside the lease country": the engine has no country-of-position
-- function, so a far domestic fix in a wide country (US, MX, BR, IN) fires too and a
-- foreign fix nearer than that does not (load-tests/README.md, "Detection quality").
-- Per ping, joined with lease state (in ping_lease, which keeps only pings on a foreign
-- network or outside the permitted cells).
--   position: accuracy at most 150 m; farther than 5 rings at H3 resolution 2
CREATE VIEW cross_border_signals AS
SELECT 'cross_border' AS signal, device_id, event_time,
       event_time AS window_start, event_time AS window_end,
       CASE WHEN net_abroad THEN CAST(mcc AS DOUBLE) END AS value,
       CAST(NULL AS DOUBLE) AS threshold,
       CASE
         WHEN net_abroad THEN concat(mcc_country(mcc), ' network, lease in ', lease_country)
         ELSE concat('position far beyond the permitted area, lease in ',
                     lease_country)
       END AS detail,
       lat, lon
FROM ping_lease
WHERE net_abroad
   OR (off_cell AND NOT h3_in_area(h3_cell(lat, lon, 2), permitted_cells, 5));
