#!/usr/bin/env bash
# Builds the test guest's bootable disc image and prints its path.
#
#   qemu-tests/guest/build.sh [OUT]     default OUT: $CARGO_TARGET_DIR/bigv-test-guest.raw
#
# Steps: the static /init (crt-static, its own target dir so normal builds
# stay valid), the Debian kernel (tools/fetch-kernel.sh), then
# bigv-test-guest-image (initramfs + FAT16 + syslinux + MBR). Same inputs,
# same bytes. Needs syslinux, syslinux-common, mtools, dosfstools.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target/bigv-test-guest.raw}"
host=x86_64-unknown-linux-gnu

kernel=$("$root/tools/fetch-kernel.sh")
(cd "$root" &&
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target/static" \
        cargo build -q --release --target "$host" -p bigv-test-guest --bin bigv-test-guest-init >&2)
(cd "$root" && cargo build -q -p bigv-test-guest --bin bigv-test-guest-image >&2)
"$target/debug/bigv-test-guest-image" \
    --init "$target/static/$host/release/bigv-test-guest-init" \
    --kernel "$kernel" --out "$out"
