#!/usr/bin/env bash
# Makes a Debian 12 machine able to build and test BigV: the apt packages
# the build and the tests use, and a Rust toolchain new enough for the
# workspace (1.95; Debian's own rustc is too old). Safe to run repeatedly.
set -euo pipefail

# Packages: a C compiler for ring (TLS), pkg-config for -sys crates.
# cpio: the initramfs tests check our archives with GNU cpio.
# tftp-hpa: the TFTP server is tested against its client.
# qemu-system-x86, ipxe-qemu, ipxe, iproute2: the slow PXE end-to-end test
# boots a VM with Debian's iPXE ROM in a network namespace.
# qemu-utils (qemu-img, qemu-io, qemu-nbd): the tail's NBD tests.
# qemu-block-extra: qemu's curl block driver (block-curl.so), which the
# node image ships so heads can insert http(s) CD-ROMs.
packages=(gcc libc6-dev pkg-config ca-certificates curl cpio tftp-hpa
    qemu-system-x86 ipxe-qemu ipxe iproute2 qemu-utils qemu-block-extra
    # the kernel package is unpacked and its modules indexed (fetch-kernel.sh)
    kmod
    # the test guest's bootable disc: a FAT filesystem with extlinux
    syslinux syslinux-common mtools dosfstools
    # real clients in tests: DHCP (udhcpc), SSH console; and tcpdump, which
    # shows what crosses each LAN in the whole-system scenarios
    busybox-static openssh-client tcpdump
    # the tail's reflink backups are tested on an XFS loop mount
    xfsprogs
    # UEFI firmware: the brain's PXE end-to-end test boots a UEFI VM too
    ovmf)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null; then
    echo "setup-host: no cargo found; installing Rust with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
