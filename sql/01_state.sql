-- Lease and credit state, read from Redis as Arroyo's Redis lookup connector reads it:
-- JSON strings under `lw:lease:{device_id}` and `lw:credit:{customer_id}` (see
-- schemas/src/state.rs), one MGET per batch for the keys the cache does not hold.
-- `leasewatch.toml`'s `engine.redis_url` replaces `address` in every environment.
CREATE TEMPORARY TABLE leases (
  key TEXT METADATA FROM 'key' PRIMARY KEY,
  lease_id TEXT,
  customer_id TEXT,
  registered_iccid TEXT,
  registered_imsi TEXT,
  lease_country TEXT,
  permitted_cells BIGINT[],
  area_res INT,
  status TEXT,
  days_past_due INT,
  amount_due BIGINT,
  deposit BIGINT
) WITH (
  connector = 'redis',
  address = 'redis://127.0.0.1:6379',
  format = 'json',
  'lookup.cache.max_bytes' = 268435456,
  'lookup.cache.ttl' = INTERVAL '60' SECOND
);

CREATE TEMPORARY TABLE credit (
  key TEXT METADATA FROM 'key' PRIMARY KEY,
  score INT,
  band TEXT,
  prior_defaults INT
) WITH (
  connector = 'redis',
  address = 'redis://127.0.0.1:6379',
  format = 'json',
  'lookup.cache.max_bytes' = 67108864,
  'lookup.cache.ttl' = INTERVAL '60' SECOND
);

-- Every leased device, periodically (`leasewatch run`) and at the end of a replay, so
-- the overdue ladder advances for devices that stopped pinging. This connector is the
-- embedded engine's own; on an Arroyo cluster the same view reads a periodic source
-- (e.g. an `impulse` joined with the lease keys) or the sweep runs as a separate job.
CREATE TABLE lease_sweep (
  device_id TEXT NOT NULL,
  event_time TIMESTAMP NOT NULL
) WITH (
  connector = 'lease_sweep',
  address = 'redis://127.0.0.1:6379',
  'key_prefix' = 'lw:lease:'
);
