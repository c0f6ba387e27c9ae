#!/usr/bin/env bash
# The README's demo command. What exists so far is the spine: this runs a
# spine listener with simulated heads and tails (see README, "Status").
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-host.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
exec cargo run --locked -q -p bigv-spine --bin bigv-sim -- demo "$@"
