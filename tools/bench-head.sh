#!/usr/bin/env bash
# Issue 6's head benchmark: spine order → the guest's first serial line
# versus the same qemu command line started directly, and a spine-ordered
# live migration between two head agents versus raw QMP `migrate` between
# two qemu processes; medians, ratios and qemu's downtime, as a table
# (nodeos/head/benches/head.rs). Real qemu under TCG, the test guest on our
# tail's NBD server, a spine server, all on loopback; no root needed.
# Usage: tools/bench-head.sh [--runs N] [--memory MIB]
#                            [--max-bandwidth BYTES_PER_S] [--max-downtime-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The dev profile: the times are qemu's and the guest's; an optimised
# build of the whole dependency tree would only cost build time.
exec cargo bench --locked -q -p bigv-head --bench head --profile dev -- "$@"
