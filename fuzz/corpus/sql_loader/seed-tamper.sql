-- tamper: the agent was removed, the phone was factory-reset or rooted, or it reports
-- mock locations. Per ping; no threshold.
CREATE VIEW tamper_signals AS
SELECT 'tamper' AS signal, device_id, event_time,
       event_time AS window_start, event_time AS window_end,
       CAST(NULL AS DOUBLE) AS value, CAST(NULL AS DOUBLE) AS threshold,
       CASE
         WHEN event_kind = 'agent_removed' THEN 'agent_removed'
         WHEN event_kind = 'factory_reset' THEN 'factory_reset'
         WHEN rooted THEN 'rooted'
         WHEN mock_location THEN 'mock_location'
         ELSE 'agent_inactive'
       END AS detail,
       lat, lon
FROM pings
WHERE event_kind IN ('agent_removed', 'factory_reset')
   OR rooted OR mock_location OR agent_active = false;
