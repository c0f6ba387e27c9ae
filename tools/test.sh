#!/usr/bin/env bash
# The project's test command (README): format, lints, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-host.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== slow tier (BIGV_SLOW_TESTS=1)"
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-pxe --test ipxe_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-brain --test boot_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-image --test boot_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-test-guest --test boot
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test vm_lifecycle
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test live_migration
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test console
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test network
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test rack
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test customer
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test migrate_vm
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test migrate_disc
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test upgrade
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test failures -- --test-threads=1
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test demo
