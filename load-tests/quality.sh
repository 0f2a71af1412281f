#!/usr/bin/env bash
# Detection quality of the rules in sql/ (issue #5): generates a fleet with a seed the
# tests never use, loads its lease and credit state into a private redis-server, replays
# its pings through every rule and the grading, and scores the alert archive against the
# generator's ground truth (precision and recall per signal, false alerts on the
# tricky-but-normal episodes per 1,000 device-days). Prints the score table and the
# replay throughput.
#
#   load-tests/quality.sh                              2,000 devices, 7 days, seed 9001
#   DEVICES=200 DAYS=2 SEED=42 load-tests/quality.sh   a quick run
#   PROFILE=debug load-tests/quality.sh                target/debug binaries
#
# Environment: DEVICES, DAYS, SEED; WORK (default /tmp/lw-quality/<devices>x<days>-s<seed>:
# the fleet is kept there and reused while its manifest matches, the alert archive is
# rebuilt on every run); PROFILE (release, the default, or debug); NO_BUILD=1 skips
# `cargo build`; BIN (a folder holding both binaries) replaces the cargo target; SQL_DIR (default sql/ of this checkout); JSON=1 prints the score as JSON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/lib.sh

DEVICES="${DEVICES:-2000}"
DAYS="${DAYS:-7}"
SEED="${SEED:-9001}"
PROFILE="${PROFILE:-release}"
SQL_DIR="$(cd "${SQL_DIR:-$ROOT/sql}" && pwd)"
WORK="${WORK:-/tmp/lw-quality/${DEVICES}x${DAYS}-s${SEED}}"

build_load_binaries

mkdir -p "$WORK"
cd "$WORK"

# The fleet: Parquet replays faster than NDJSON. Reused when its manifest says it was
# made with the same parameters (the generator is deterministic).
want="\"devices\": $DEVICES,|\"days\": $DAYS,|\"seed\": $SEED,|\"format\": \"parquet\""
if [ -f fleet/manifest.json ] && [ "$(grep -cE "$want" fleet/manifest.json)" -eq 4 ]; then
    step "reuse the fleet in $WORK/fleet ($DEVICES devices, $DAYS days, seed $SEED)"
else
    step "generate a fleet: $DEVICES devices, $DAYS days, seed $SEED"
    rm -rf fleet
    "$BIN/leasewatch-load" gen --devices "$DEVICES" --days "$DAYS" --seed "$SEED" \
        --format parquet --quiet --out fleet
fi

ensure_packages redis-server:redis-server redis-cli:redis-tools
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
step "start a private redis-server on 127.0.0.1:$port"
rm -f redis.pid
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
stop_redis() {
    local pid
    pid="$(cat "$WORK/redis.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
}
trap stop_redis EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL="redis://127.0.0.1:$port"

step "load lease and credit state"
"$BIN/leasewatch" state load --leases fleet/leases.ndjson --credit fleet/credit.ndjson \
    --redis "$REDIS_URL"

cat > leasewatch.toml <<TOML
[engine]
sql_dir = "$SQL_DIR"
geofences = "fleet/places.geojson"
redis_url = "$REDIS_URL"

[replay]
progress = false
TOML

step "replay the pings through $SQL_DIR"
# The archive only grows: start from an empty one (and an empty Redis, above), so the
# score is of this run alone.
rm -rf out summary.json
"$BIN/leasewatch" replay --config leasewatch.toml --input fleet/pings.parquet \
    --summary-json summary.json

step "score against the ground truth"
if [ -n "${JSON:-}" ]; then
    "$BIN/leasewatch-load" score --truth fleet/truth.csv --alerts out/archive --json
else
    "$BIN/leasewatch-load" score --truth fleet/truth.csv --alerts out/archive
fi
python3 - summary.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"replay: {s['pings_in']:,} pings ({s['late']:,} late) in {s['seconds']:.1f} s = "
      f"{s['pings_per_second']:,.0f} pings/s; window state peak "
      f"{s['window_state_bytes_peak'] / 1e6:.1f} MB "
      f"({s['window_state_bytes_per_device']:,.0f} bytes/device)")
PY
