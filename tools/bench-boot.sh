#!/usr/bin/env bash
# Issue 7's boot benchmark: power-on → spine-ready for the node image over
# PXE versus qemu -kernel/-initrd, heads and tails, printed as a table with
# the image sizes (qemu-tests/src/bin/bigv-boot-bench.rs). Needs root.
# Usage: tools/bench-boot.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-host.sh
bash tools/fetch-kernel.sh >/dev/null
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked -q -p bigv-qemu-tests --bin bigv-boot-bench
exec "$CARGO_TARGET_DIR/debug/bigv-boot-bench" "$@"
