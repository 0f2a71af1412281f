# Shared helpers for scripts/: sourced, not run.

# Installs Debian packages that are missing (as root, or with sudo when available).
# Usage: ensure_packages CMD:PACKAGE ...  (installs PACKAGE when CMD is not on PATH)
ensure_packages() {
    local missing=()
    local pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What the build needs besides Rust: a C compiler and make (the `leasewatch` binary's
# jemalloc is built from source).
ensure_build_tools() {
    ensure_packages cc:gcc make:make
}

# For the load-test scripts: builds `leasewatch` and `leasewatch-load` in $PROFILE
# (release or debug) unless NO_BUILD is set, and sets BIN to the folder holding them
# unless BIN is set already.
build_load_binaries() {
    if [ -z "${NO_BUILD:-}" ]; then
        ensure_build_tools
        step "build ($PROFILE)"
        local release=()
        [ "$PROFILE" = release ] && release=(--release)
        nice -n 10 cargo build "${release[@]}" -p leasewatch -p leasewatch-load
    fi
    if [ -z "${BIN:-}" ]; then
        local target
        target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
        BIN="$target/$PROFILE"
    fi
}

# Installs a Python package for the tests when it cannot be imported.
ensure_python_module() {
    local module="$1" package="$2"
    python3 -c "import $module" 2>/dev/null && return 0
    echo "==> pip install $package" >&2
    python3 -m pip install --quiet --disable-pip-version-check "$package"
}

step() {
    echo
    echo "==> $*" >&2
}
