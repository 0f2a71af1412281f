#!/usr/bin/env bash
# The replay benchmark of issue #4 (load-tests/pipelines/replay/README.md): a fleet of
# DEVICES x DAYS (default 10,000 x 7, about 21.7 M pings) replayed through the hop +
# filter pipeline, and the same file decoded and validated alone, once per format.
# Prints pings/s, the arrow-json decode-only rate measured in the same run
# (--measure-decode: the yardstick of the issue; the run itself decodes NDJSON with the
# ping-line decoder, as the decode-only line does),
# peak RSS and window state bytes per device, one line per run (each run's summary
# JSON and log stay in WORK).
#
#   load-tests/replay.sh                           NDJSON and Parquet, 10,000 x 7
#   FORMATS=parquet DEVICES=1000 load-tests/replay.sh
#
# Environment: DEVICES, DAYS, SEED (1); FORMATS ("ndjson parquet"); WORK (default
# /tmp/lw-replay: fleets are kept there per format and reused while their manifest
# matches; the NDJSON fleet of 10,000 x 7 takes 8.2 GB); PROFILE (release); NO_BUILD=1;
# BIN (a folder holding both binaries).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/lib.sh

DEVICES="${DEVICES:-10000}"
DAYS="${DAYS:-7}"
SEED="${SEED:-1}"
FORMATS="${FORMATS:-ndjson parquet}"
PROFILE="${PROFILE:-release}"
WORK="${WORK:-/tmp/lw-replay}"
PIPELINE="$ROOT/load-tests/pipelines/replay"

build_load_binaries
mkdir -p "$WORK"

# One run: prints "label pings/s decode-only/s peak-RSS state-bytes/device late".
run() {
    local label="$1" sql="$2" input="$3"
    shift 3
    local summary="$WORK/${label// /-}.json" log="$WORK/${label// /-}.log"
    if ! "$BIN/leasewatch" replay --sql "$sql" --input "$input" --no-progress \
        --summary-json "$summary" "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "replay $label failed" >&2
        exit 1
    fi
    python3 - "$label" "$summary" <<'EOF'
import json, sys
label, summary = sys.argv[1:]
s = json.load(open(summary))
decode = s.get("decode_only_pings_per_second") or 0
print(f"{label:<20} {s['pings_per_second']:>12,.0f} {decode:>14,.0f} "
      f"{s['peak_rss_bytes'] / 2**20:>8.0f} MiB {s['window_state_bytes_per_device']:>9.1f} "
      f"{s['late']:>10,} {s['pings_in']:>12,}")
EOF
}

printf '%-20s %12s %14s %12s %9s %10s %12s\n' run "pings/s" "decode-only/s" "peak RSS" "B/device" late "pings in"
for format in $FORMATS; do
    fleet="$WORK/fleet-$format"
    want="\"devices\": $DEVICES,|\"days\": $DAYS,|\"seed\": $SEED,|\"format\": \"$format\""
    if ! { [ -f "$fleet/manifest.json" ] && [ "$(grep -cE "$want" "$fleet/manifest.json")" -eq 4 ]; }; then
        step "generate $DEVICES devices x $DAYS days, seed $SEED, $format, into $fleet" >&2
        rm -rf "$fleet"
        "$BIN/leasewatch-load" gen --devices "$DEVICES" --days "$DAYS" --seed "$SEED" \
            --format "$format" --quiet --out "$fleet"
    fi
    input="$fleet/pings.$format"
    # Decode and validate alone (no INSERT), then the benchmark with the decode-only
    # rate of the same file measured in the same process.
    run "$format decode-only" "$PIPELINE/decode_only" "$input"
    run "$format hop+filter" "$PIPELINE" "$input" --measure-decode
done
