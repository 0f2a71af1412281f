#!/usr/bin/env bash
# Builds the Arroyo UDF plugins of leasewatch-udfs and checks them against DataFusion.
#
#   udfs/arroyo/build.sh          regenerate generated/*.rs and plugins/*/Cargo.toml from
#                                 udfs/src/core, build every plugin, run the host test
#   udfs/arroyo/build.sh --check  the same, but fail instead of regenerating when the
#                                 committed sources are stale (what scripts/test runs)
#
# Builds into target/arroyo at the repository root (see .cargo/config.toml).
set -euo pipefail
cd "$(dirname "$0")"

generate_args=()
if [[ "${1:-}" == "--check" ]]; then
    generate_args=(--check)
fi

cargo run --quiet --manifest-path generate/Cargo.toml -- "${generate_args[@]}"
cargo build --workspace
cargo test --workspace
