#!/usr/bin/env bash
# Eddy's one entry point for a fresh Debian 12 machine with Rust installed.
#
#   ./eddy.sh run    install what is missing, build (release) and start the server on 127.0.0.1:5544
#   ./eddy.sh test   install what is missing and run the whole test suite
#
# Extra arguments after `run` go to the server, e.g. `./eddy.sh run --data-dir /var/lib/eddy`.
# The cargo target directory defaults to ~/.cache/eddy-target (outside the checkout) so that
# RocksDB's C++ is compiled once per machine, not once per checkout.
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"

# Installs the Debian packages given that are missing (sudo when not root).
install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "eddy.sh: installing ${missing[*]}" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

setup() {
    # libclang-dev: bindgen for the rocksdb crate. postgresql-client: psql, used by the tests
    # and by you.
    install_missing libclang-dev postgresql-client
    command -v cargo >/dev/null || { echo "eddy.sh: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
}

# The drivers the client tests run (tests/clients.rs, docs/clients.md):
# - psycopg 3 and asyncpg, in a venv (EDDY_VENV, default ~/.cache/eddy-venv);
# - node-postgres, installed with npm in ~/.cache/eddy-node (Node.js from Debian if missing);
# - pgjdbc, Debian's libpostgresql-jdbc-java, run from source by a JDK's `java`;
# - for the dashboard's browser test (tests/dashboard.rs): Debian's chromium, driven by
#   playwright-core from npm (in the same ~/.cache/eddy-node).
VENV="${EDDY_VENV:-$HOME/.cache/eddy-venv}"
NODE_DIR="$HOME/.cache/eddy-node"
setup_clients() {
    install_missing python3 python3-venv libpostgresql-jdbc-java openssl chromium
    if ! "$VENV/bin/python" -c "import psycopg, asyncpg" >/dev/null 2>&1; then
        echo "eddy.sh: preparing $VENV (psycopg, asyncpg)" >&2
        [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "psycopg[binary]>=3.2,<4" "asyncpg>=0.29,<1"
    fi
    export EDDY_PYTHON="$VENV/bin/python"
    command -v javac >/dev/null || install_missing default-jdk-headless
    command -v node >/dev/null || install_missing nodejs
    command -v npm >/dev/null || install_missing npm
    if [ ! -d "$NODE_DIR/node_modules/pg" ] || [ ! -d "$NODE_DIR/node_modules/playwright-core" ]; then
        echo "eddy.sh: installing node-postgres and playwright-core in $NODE_DIR" >&2
        mkdir -p "$NODE_DIR"
        npm install --silent --prefix "$NODE_DIR" "pg@8" "playwright-core@1" >/dev/null
    fi
    export EDDY_NODE_MODULES="$NODE_DIR/node_modules"
}

case "${1:-}" in
    run)
        shift
        setup
        cargo build --release --bin eddy
        exec "$CARGO_TARGET_DIR/release/eddy" "$@"
        ;;
    test)
        shift
        setup
        setup_clients
        exec cargo test "$@"
        ;;
    *)
        echo "usage: $0 run [server flags…] | test [cargo test args…]" >&2
        exit 2
        ;;
esac
