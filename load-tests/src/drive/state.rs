//! Lease and credit state of the driven devices: into Redis (`--load-state`, the keys of
//! `schemas/src/state.rs`, as `leasewatch state load` writes them) and/or into files
//! (`--write-state DIR`: `leases.ndjson`, `credit.ndjson` for `leasewatch state load`,
//! and `places.geojson` for `engine.geofences`).

use std::path::Path;
use std::time::Duration;

use leasewatch_load::r#gen::writer::{write_ndjson, write_places};
use leasewatch_schemas::{Keys, SignalKind};

use super::fleet::{Fleet, State};

/// Keys per pipelined round trip.
const CHUNK: usize = 2_000;

/// Writes every lease and credit record to Redis, and clears the alert suppression of
/// the driven signals for these devices (so a second run within the sink's cooldown
/// still alerts). Returns the number of keys written.
pub fn load(url: &str, state: &State) -> Result<u64, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| format!("connecting to Redis at {url}: {e}"))?;
    let keys = Keys::default();
    let mut written = 0u64;
    for chunk in state.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (lease, credit) in chunk {
            let l = serde_json::to_string(lease).map_err(|e| format!("lease to JSON: {e}"))?;
            let c = serde_json::to_string(credit).map_err(|e| format!("credit to JSON: {e}"))?;
            pipe.cmd("SET")
                .arg(keys.lease(&lease.device_id))
                .arg(l)
                .ignore();
            pipe.cmd("SET")
                .arg(keys.credit(&credit.customer_id))
                .arg(c)
                .ignore();
            let mut del = redis::cmd("DEL");
            for s in [SignalKind::Tamper, SignalKind::SimMismatch] {
                let k = keys.suppress(&lease.device_id, s);
                del.arg(format!("{k}:lock")).arg(k);
            }
            pipe.add_command(del).ignore();
            written += 2;
        }
        pipe.query::<()>(&mut conn)
            .map_err(|e| format!("writing state to Redis at {url}: {e}"))?;
    }
    Ok(written)
}

/// Writes `leases.ndjson`, `credit.ndjson` and `places.geojson` into `dir`.
pub fn write(dir: &Path, fleet: &Fleet, state: &State) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let leases: Vec<_> = state.iter().map(|(l, _)| l).collect();
    let credit: Vec<_> = state.iter().map(|(_, c)| c).collect();
    write_ndjson(dir, "leases.ndjson", &leases).map_err(|e| e.to_string())?;
    write_ndjson(dir, "credit.ndjson", &credit).map_err(|e| e.to_string())?;
    write_places(dir, &fleet.places).map_err(|e| e.to_string())?;
    Ok(())
}
