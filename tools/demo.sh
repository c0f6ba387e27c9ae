#!/usr/bin/env bash
# The README's demo command. Brings up a brain (embedded store) with
# simulated heads and tails joined over pinned TLS, sets up a customer
# account, and leaves the `bigv` CLI logged in and pointed at it.
# Heads and tails are simulated until the node image boots in qemu
# (see README, "Status"). Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-host.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

api=${BIGV_DEMO_API:-127.0.0.1:8080}
spine=${BIGV_DEMO_SPINE:-127.0.0.1:4430}
state=${BIGV_DEMO_DIR:-$HOME/.local/share/bigv-demo}
export BIGV_USER=admin BIGV_PASS=${BIGV_DEMO_PASSWORD:-demo-password-1}

echo "demo: building (first run takes a few minutes)" >&2
cargo build --locked -q -p bigv-brain -p bigv-spine -p bigv-cli
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
export PATH="$bin:$PATH"

rm -rf "$state" && mkdir -p "$state"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

BIGV_BOOTSTRAP_USER=$BIGV_USER BIGV_BOOTSTRAP_PASSWORD=$BIGV_PASS RUST_LOG=warn \
    bigv-brain --data-dir "$state/brain" --api-listen "$api" --spine-listen "$spine" \
    >"$state/brain.out" 2>"$state/brain.log" &
pids+=($!)
for _ in $(seq 100); do
    grep -q certificate "$state/brain.out" 2>/dev/null && break
    sleep 0.2
done
pin=$(grep -o 'sha256:[0-9a-f]*' "$state/brain.out") || { cat "$state/brain.log" >&2; exit 1; }

bigv-sim fleet --brain "$spine" --fingerprint "$pin" --heads 3 --tails 2 \
    >"$state/sim.out" 2>"$state/sim.log" &
pids+=($!)

bigv --endpoint "http://$api" login --make-current
for _ in $(seq 100); do
    [ "$(bigv admin show heads 2>/dev/null | grep -c online)" -ge 3 ] && break
    sleep 0.2
done
bigv admin add vlan 1
bigv admin add ip range 192.0.2.0/24 1
bigv admin add image bookworm 2G --description "Debian 12 (template)"
bigv admin add account demo
bigv admin show heads
bigv admin show storage pools

cat <<TXT

The demo cluster is up: brain API http://$api (store in $state/brain),
spine $spine (certificate $pin), 3 simulated heads and 2 simulated tails.
bigv is logged in as $BIGV_USER (profile "default"). In another terminal try:

    export PATH="$bin:\$PATH"
    bigv add server web1.default.demo --image bookworm --memory 2G --disc sata:25G
    bigv show server web1.default.demo
    bigv admin show heads

Ctrl-C here stops the brain and the simulated nodes.
TXT
wait "${pids[0]}"
