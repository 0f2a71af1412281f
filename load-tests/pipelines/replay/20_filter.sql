-- Per-ping filter: tamper flags.
INSERT INTO tamper
SELECT device_id, event_time, rooted, mock_location, agent_active
FROM pings
WHERE rooted OR mock_location OR NOT agent_active;
