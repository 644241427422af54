#!/usr/bin/env bash
# The long crash harness: `kill -9` of a release server CYCLES times (default 100) while writers
# insert, update and delete (and append to an APPEND ONLY ledger), six views and a subscriber
# follow, and half the kills land while a checkpoint is being written; after each restart it
# checks that every acknowledged write is there, every view equals its recomputation and the
# subscriber got every epoch exactly once (see tests/recovery.rs). Prints the counts at the end.
#
#   scripts/crash-soak.sh [CYCLES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
export EDDY_CRASH_CYCLES="${1:-100}"
export EDDY_CRASH_SEED="${2:-7}"
exec cargo test --release --test recovery -- --nocapture
