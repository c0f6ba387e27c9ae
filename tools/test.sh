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
# The whole-system scenarios boot several nested machines under TCG on two
# cores, where a timing can slip past a limit: one that fails is run once
# more, saying why it failed first (its panic message), and the suite
# fails if the second run fails too. Retried scenarios are listed at the
# end. Nothing is skipped.
retried=()
scenario() {
    local log
    log=$(mktemp)
    if BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test "$@" 2>&1 | tee "$log"; then
        rm -f "$log"
        return 0
    fi
    echo "== RETRY scenario $1 (once): its first run failed with:"
    grep -A6 "panicked at" "$log" | head -n 20 || tail -n 20 "$log"
    rm -f "$log"
    retried+=("$1")
    BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-qemu-tests --test "$@"
}
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-pxe --test ipxe_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-brain --test boot_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-image --test boot_e2e
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-test-guest --test boot
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test vm_lifecycle
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test live_migration
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test console
BIGV_SLOW_TESTS=1 cargo test --locked -p bigv-head --test network
scenario rack
scenario customer
scenario migrate_vm
scenario migrate_disc
scenario upgrade
scenario failures -- --test-threads=1
scenario demo
if ((${#retried[@]})); then
    echo "== passed on their second run (first failures above): ${retried[*]}"
fi
