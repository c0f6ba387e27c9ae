#!/usr/bin/env bash
# The brain at cluster scale (issue 3): a real bigv-brain, 1,000 simulated
# heads and 250 simulated tails, 20,000 VMs created through the API.
# Prints a table of figures beside their targets. Arguments go to
# bigv-brain-bench (e.g. --heads 100 --tails 25 --vms 2000 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p bigv-brain -p bigv-spine -p bigv-brain-bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target/release/bigv-brain-bench" "$@"
