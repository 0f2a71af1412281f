#!/usr/bin/env bash
# Load test of `leasewatch run` over HTTP (issue #7): starts a private redis-server,
# loads lease and credit state of the driven devices into it, starts the pipeline with
# the product rules (sql/) on a fresh WAL, drives it with `leasewatch-load drive` at
# RATE pings/s for DURATION seconds, and prints the driver's report: accepted pings/s,
# requests by status, retries, ping-to-queue latency p50/p99/p999, the pipeline's RSS
# over time and the CPU split between driver, pipeline and Redis.
#
#   load-tests/drive.sh                                  20,000 pings/s, 60 s, 200,000 devices
#   RATE=40000 DURATION=300 load-tests/drive.sh          five minutes at 40k pings/s
#   RATE=500 DURATION=10 DEVICES=5000 load-tests/drive.sh   a quick look
#
# Environment: RATE, DURATION, DEVICES; CONNECTIONS (16), BATCH (request-size mix, see
# `leasewatch-load drive --help`), FORMAT (ndjson, json or arrow), GZIP=1, ALERT_FRACTION
# (0.01), SEED (1); WORK (default /tmp/lw-drive: config, WAL, logs, report.json; wiped
# on every run); PROFILE (release, the default, or debug); NO_BUILD=1 skips `cargo
# build`; BIN (a folder holding both binaries) replaces the cargo target; SQL_DIR
# (default sql/ of this checkout); WAL_FSYNC (true; false only for experiments);
# JSON=1 prints the report as JSON; DRIVE_ARGS (more arguments for `drive`); STOP_WAIT
# (30: seconds the pipeline gets to stop cleanly before it is killed); INGEST_TOML (more
# [ingest] keys, e.g. `max_lag_batches = 20` to see 429 + Retry-After sooner); WAL_TOML
# (more [wal] keys, e.g. `group_commit_max_delay_us = 1000`);
# WAL_MAX_RETAINED_GIB (wal.max_retained_bytes in GiB, 16: see below); LEASEWATCH_LOG
# reaches the pipeline (`leasewatch::engine=debug`: window state every 15 s); CPU_QUOTA
# (cores, e.g. 1.55: driver, Redis and pipeline share that much CPU time, in a cgroup
# of their own, v2 `cpu.max` or v1 `cpu.cfs_quota_us`, per 20 ms; needs root). A quota
# stands in for a slower or shared machine: the same run on the same box goes from
# plenty of CPU to too little.
#
# The WAL keeps what the older of the two last checkpoints needs, up to two checkpoint
# intervals (2 x 60 s) of pings: about 5 GB at 300,000 pings/s. The default bound
# (4 GiB) would refuse appends (503) for the rest of each interval at that rate.
#
# The lease sweep is off (engine.sweep_interval_secs = 0): it is an hourly batch over
# every lease, not the ping path, and at start it would flood the queues with overdue
# alerts of every driven device while the measurement runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/lib.sh

RATE="${RATE:-20000}"
DURATION="${DURATION:-60}"
DEVICES="${DEVICES:-200000}"
CONNECTIONS="${CONNECTIONS:-16}"
BATCH="${BATCH:-1-20:0.05,500-2000:0.95}"
FORMAT="${FORMAT:-ndjson}"
ALERT_FRACTION="${ALERT_FRACTION:-0.01}"
SEED="${SEED:-1}"
PROFILE="${PROFILE:-release}"
WAL_FSYNC="${WAL_FSYNC:-true}"
WAL_MAX_RETAINED_GIB="${WAL_MAX_RETAINED_GIB:-16}"
SQL_DIR="$(cd "${SQL_DIR:-$ROOT/sql}" && pwd)"
WORK="${WORK:-/tmp/lw-drive}"

build_load_binaries

ensure_packages redis-server:redis-server redis-cli:redis-tools
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

pipeline_pid=""
cpu_cgroup=""
cpu_cgroup_home=""
cleanup() {
    if [ -n "$pipeline_pid" ] && kill -0 "$pipeline_pid" 2>/dev/null; then
        kill -TERM "$pipeline_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pipeline_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pipeline_pid" 2>/dev/null || true
    fi
    local pid
    pid="$(cat "$WORK/redis.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    if [ -n "$cpu_cgroup" ]; then
        for _ in $(seq 50); do [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null && break; sleep 0.1; done
        echo $$ > "$cpu_cgroup_home/cgroup.procs" 2>/dev/null || true
        rmdir "$cpu_cgroup" 2>/dev/null || echo "note: cgroup $cpu_cgroup left behind (a process still in it)" >&2
    fi
}
trap cleanup EXIT

# CPU_QUOTA: this shell moves into a cgroup of its own, which everything it starts
# inherits; it moves back and removes the cgroup when it ends.
if [ -n "${CPU_QUOTA:-}" ]; then
    period_us=20000
    quota_us="$(python3 -c 'import sys; q = float(sys.argv[1]); assert q >= 0.01; print(int(q * int(sys.argv[2])))' "$CPU_QUOTA" "$period_us" 2>/dev/null)" \
        || { echo "CPU_QUOTA=$CPU_QUOTA: expected a number of cores, at least 0.01 (e.g. 1.55)" >&2; exit 2; }
    name="leasewatch-drive-$$"
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        cpu_cgroup_home="/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)"
        { grep -qw cpu /sys/fs/cgroup/cgroup.controllers \
            && { grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu > /sys/fs/cgroup/cgroup.subtree_control; } \
            && mkdir "/sys/fs/cgroup/$name" \
            && cpu_cgroup="/sys/fs/cgroup/$name" \
            && echo "$quota_us $period_us" > "$cpu_cgroup/cpu.max"; } 2>/dev/null
    elif [ -d /sys/fs/cgroup/cpu ]; then
        cpu_cgroup_home="/sys/fs/cgroup/cpu$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ { print $3 }' /proc/self/cgroup)"
        { mkdir "/sys/fs/cgroup/cpu/$name" \
            && cpu_cgroup="/sys/fs/cgroup/cpu/$name" \
            && echo "$period_us" > "$cpu_cgroup/cpu.cfs_period_us" \
            && echo "$quota_us" > "$cpu_cgroup/cpu.cfs_quota_us"; } 2>/dev/null
    fi
    if [ -z "$cpu_cgroup" ] || ! echo $$ > "$cpu_cgroup/cgroup.procs" 2>/dev/null; then
        [ -n "$cpu_cgroup" ] && rmdir "$cpu_cgroup" 2>/dev/null
        cpu_cgroup=""
        echo "CPU_QUOTA needs root and a cgroup cpu controller this shell may use (none found or not writable)" >&2
        exit 2
    fi
    step "CPU quota: $CPU_QUOTA cores ($quota_us us per $period_us us) in $cpu_cgroup"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port="$(free_port)"
step "start a private redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL="redis://127.0.0.1:$redis_port"

step "lease and credit state of $DEVICES devices (seed $SEED) into Redis; places.geojson"
"$BIN/leasewatch-load" drive --devices "$DEVICES" --seed "$SEED" --duration "$DURATION" \
    --alert-fraction "$ALERT_FRACTION" --redis "$REDIS_URL" --load-state \
    --write-state state --state-only

TOKEN="drive-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
ingest_port="$(free_port)"
cat > leasewatch.toml <<TOML
[engine]
sql_dir = "$SQL_DIR"
geofences = "$WORK/state/places.geojson"
redis_url = "$REDIS_URL"
checkpoint_interval_secs = 60
sweep_interval_secs = 0

[replay]
progress = false

[ingest]
listen = "127.0.0.1:$ingest_port"
tokens = ["$TOKEN"]
${INGEST_TOML:-}

[wal]
dir = "$WORK/wal"
fsync = $WAL_FSYNC
max_retained_bytes = $((WAL_MAX_RETAINED_GIB * 1024 * 1024 * 1024))
${WAL_TOML:-}
TOML

step "start leasewatch run (log: $WORK/leasewatch.log)"
# The working directory is $WORK: the SQL's archive sink writes out/archive there.
"$BIN/leasewatch" run --config leasewatch.toml > "$WORK/leasewatch.out" 2> "$WORK/leasewatch.log" &
pipeline_pid=$!
for _ in $(seq 300); do
    grep -q 'listening on' "$WORK/leasewatch.log" 2>/dev/null && break
    kill -0 "$pipeline_pid" 2>/dev/null || { cat "$WORK/leasewatch.log" >&2; exit 1; }
    sleep 0.1
done
grep -q 'listening on' "$WORK/leasewatch.log" || { echo "leasewatch run did not start" >&2; cat "$WORK/leasewatch.log" >&2; exit 1; }

step "drive: $RATE pings/s for $DURATION s, $DEVICES devices, $CONNECTIONS connections, $FORMAT"
args=(--url "http://127.0.0.1:$ingest_port" --token "$TOKEN" --devices "$DEVICES"
      --rate "$RATE" --duration "$DURATION" --connections "$CONNECTIONS" --batch "$BATCH"
      --format "$FORMAT" --alert-fraction "$ALERT_FRACTION" --seed "$SEED"
      --redis "$REDIS_URL" --pid "$pipeline_pid")
[ -n "${GZIP:-}" ] && args+=(--gzip)
# shellcheck disable=SC2206
[ -n "${DRIVE_ARGS:-}" ] && args+=(${DRIVE_ARGS})
"$BIN/leasewatch-load" drive "${args[@]}" --json > "$WORK/report.json"
if [ -n "${JSON:-}" ]; then
    cat "$WORK/report.json"
else
    python3 - "$WORK/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, p, q = r["target"], r["pings"], r["requests"]
def lat(s):
    f = lambda v: "-" if v is None else f"{v:,.1f}"
    return f"p50 {f(s['p50_ms'])} / p99 {f(s['p99_ms'])} / p999 {f(s['p999_ms'])} / max {f(s['max_ms'])} ms (n={s['count']:,})"
print(f"\ntarget     {t['rate']:,.0f} pings/s for {t['duration_s']:.0f} s, {t['devices']:,} devices, "
      f"{t['connections']} connections, {t['format']}{'+gzip' if t['gzip'] else ''}, batches {t['batch']}")
print(f"accepted   {r['accepted_per_s']:,.0f} pings/s over {r['active_s']:.1f} s "
      f"({p['accepted']:,} of {p['scheduled']:,} scheduled; rejected {p['rejected']:,}, unsent {p['unsent']:,}, abandoned {p['abandoned']:,})"
      + ("" if r["kept_up"] else f"  -- COULD NOT KEEP UP (behind by up to {r['max_behind_s']:.1f} s)"))
print(f"requests   {q['total']:,}: " + ", ".join(f"{k}: {v:,}" for k, v in q["by_status"].items())
      + f"; retries {q['retries']:,} ({q['retry_wait_s']:.0f} s waiting), errors {q['errors']}, timeouts {q['timeouts']}")
print(f"ack        {lat(r['ack_latency'])}")
a = r.get("alerts")
if a:
    print(f"alerts     {a['matched']:,} of {a['expected']:,} alerting devices read from the queues ({a['missing']} missing)")
    print(f"latency    ping -> queue       {lat(a['ping_to_queue'])}")
    print(f"           emitted_at - event  {lat(a['emitted_minus_event'])}")
    per = [x["interval_alert_p99_ms"] for x in r["samples"] if x["interval_alert_p99_ms"] is not None]
    if per:
        over = sum(1 for v in per if v > 500)
        print(f"           p99 per {r['samples'][0]['t_s']:.0f} s interval: median {sorted(per)[len(per) // 2]:,.1f}, "
              f"max {max(per):,.1f} ms; over 500 ms in {over} of {len(per)} intervals")
    print(f"queues     " + ", ".join(f"{k}: {v:,}" for k, v in a["read_by_queue"].items()))
c = r["cpu"]
def share(s): return "-" if s is None else f"{s:.0f} s = {100 * s / (r['elapsed_s'] * c['cores']):.0f}%"
print(f"cpu        of {c['cores']} cores over {r['elapsed_s']:.0f} s: driver {share(c['driver_s'])}, "
      f"pipeline {share(c['pipeline_s'])}, redis {share(c['redis_s'])}")
m = r.get("pipeline_rss_mib")
if m:
    print(f"rss        pipeline {m['first']:.0f} MiB at start, {m['last']:.0f} MiB at the end, max {m['max']:.0f} MiB")
print("\n    t s   pings/s acc.  429/503  rss MiB  cpu% driver/pipeline/redis  alert p99 ms: interval / so far")
for s in r["samples"]:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    print(f"{s['t_s']:7.0f} {s['accepted_per_s']:13,.0f} {s['refused']:8,} {f(s['pipeline_rss_mib'], '8.0f')}"
          f"  {s['driver_cpu_pct']:6.0f} / {f(s['pipeline_cpu_pct'], '5.0f')} / {f(s['redis_cpu_pct'], '4.0f')}"
          f"        {f(s['interval_alert_p99_ms'], '8.1f')} / {f(s['alert_p99_ms'], '8.1f')}")
for e in r.get("error_samples", []):
    print(f"error      {e}")
PY
fi

# The pipeline's own view (engine backlog, state bytes, checkpoint and query metrics).
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:$ingest_port/metrics" > "$WORK/metrics.txt" 2>/dev/null || true

step "stop the pipeline"
# A clean stop processes the engine's backlog first (everything acknowledged is in the
# WAL); after a run it could not keep up with that takes long, so it is killed after
# STOP_WAIT seconds (the measurement is over; a restart would replay the WAL).
kill -TERM "$pipeline_pid"
for _ in $(seq "$(( ${STOP_WAIT:-30} * 10 ))"); do kill -0 "$pipeline_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pipeline_pid" 2>/dev/null; then
    echo "leasewatch run still draining its backlog after ${STOP_WAIT:-30} s: killed" >&2
    kill -KILL "$pipeline_pid" 2>/dev/null || true
fi
wait "$pipeline_pid" 2>/dev/null || true
pipeline_pid=""
tail -n 3 "$WORK/leasewatch.log" >&2
echo "report: $WORK/report.json; pipeline metrics at the end: $WORK/metrics.txt; logs: $WORK/leasewatch.log, $WORK/redis.log" >&2
