#!/usr/bin/env bash
# The README's demo command.
#
#   tools/demo.sh        brings up the demo cluster and logs `bigv` in to it
#   tools/demo.sh down   stops it and removes everything it created
#
# The cluster is the whole system as the qemu scenarios run it: a real
# bigv-brain with its embedded store inside a private network namespace,
# and 2 heads + 1 tail as qemu VMs (TCG) that PXE-boot the node image built
# from this checkout, join the spine, are accepted and become ready. The
# brain's API is forwarded to $BIGV_DEMO_API (127.0.0.1:8080) on this
# machine; nothing else leaves the namespace. It keeps running in the
# background (bigv-demo, qemu-tests/src/bin/bigv-demo.rs) until `down`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    # Namespaces, bridges and taps need root.
    exec sudo -E bash "$0" "$@"
fi
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

state=${BIGV_DEMO_DIR:-$HOME/.local/share/bigv-demo}
api=${BIGV_DEMO_API:-127.0.0.1:8080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
bin=$CARGO_TARGET_DIR/debug

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

down() {
    if running; then
        pid=$(cat "$state/pid")
        echo "demo: stopping bigv-demo (pid $pid)" >&2
        kill -TERM "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # bigv-demo removes its processes file once it has ended them all; left
    # behind (after a hard kill), it names the brain, the qemu machines and
    # the namespace that outlived it: end exactly those, if still theirs.
    if [ -f "$state/processes" ]; then
        while read -r kind value; do
            case $kind in
            pid)
                if grep -qaE 'qemu-system|bigv-brain' "/proc/$value/cmdline" 2>/dev/null; then
                    kill -KILL "$value" 2>/dev/null || true
                fi
                ;;
            netns) ip netns del "$value" 2>/dev/null || true ;;
            esac
        done <"$state/processes"
    fi
    rm -rf "$state"
    echo "demo: stopped and removed $state" >&2
}

case ${1:-up} in
down)
    down
    exit 0
    ;;
up) ;;
*)
    echo "usage: tools/demo.sh [up|down]" >&2
    exit 2
    ;;
esac

if running; then
    echo "demo: already running (pid $(cat "$state/pid")); tools/demo.sh down first" >&2
    exit 1
fi
bash tools/setup-host.sh
bash tools/fetch-kernel.sh >/dev/null

echo "demo: building (the first run takes several minutes)" >&2
cargo build --locked -q -p bigv-qemu-tests --bin bigv-demo -p bigv-cli --bin bigv -p bigv-brain --bin bigv-brain
export PATH="$bin:$PATH"

# The OS template customers' servers start from: the test guest
# (qemu-tests/guest), a bootable disc with a tiny Linux.
guest=$CARGO_TARGET_DIR/bigv-test-guest.raw
bash qemu-tests/guest/build.sh "$guest" >/dev/null

rm -rf "$state" && mkdir -p "$state"
setsid bigv-demo --state "$state" --api "$api" >"$state/demo.log" 2>&1 </dev/null &
echo $! >"$state/pid"
echo "demo: bigv-demo (pid $!) is building the node image and booting the machines; its log: $state/demo.log" >&2
tail -n +1 -f --pid="$(cat "$state/pid")" "$state/demo.log" >&2 &
tailer=$!
# The image build, then three PXE boots under TCG.
for _ in $(seq 1800); do
    [ -f "$state/ready" ] && break
    running || break
    sleep 1
done
kill "$tailer" 2>/dev/null || true
if [ ! -f "$state/ready" ]; then
    echo "demo: the cluster did not come up; logs in $state (tools/demo.sh down removes them)" >&2
    exit 1
fi

# The bootstrap operator of qemu-tests/src/brain.rs.
export BIGV_USER=admin BIGV_PASS=correct-horse-battery
# The API is HTTPS with the brain's self-signed certificate: pin it.
bigv --endpoint "https://$api" --tls-fingerprint "$(cat "$state/fingerprint")" login --make-current
bigv admin add vlan 1
bigv admin add ip range 192.0.2.0/24 1
bigv admin add image bigv-test "$(( ($(stat -c %s "$guest") + 1048575) / 1048576 ))M" \
    --description "the BigV test guest (tiny Linux)" --file "$guest"
bigv admin add account demo
bigv admin show heads
bigv admin show tails
bigv admin show storage pools

cat <<TXT

The demo cluster is up: brain API https://$api (its store in $state/brain;
certificate $(cat "$state/fingerprint"), pinned in bigv's profile),
2 heads and 1 tail booted over PXE in qemu (consoles in $state/logs) on a
boot LAN, a storage LAN (discs) and a public LAN (VMs' VLANs, tagged); the
tail serves a 20 GiB sata pool from a blank disc it formatted at boot.
Servers get an address on VLAN 1 (192.0.2.0/24) from their head's DHCP.
bigv is logged in as $BIGV_USER (profile "default"). Try:

    export PATH="$bin:\$PATH"
    bigv add server web1.default.demo --image bigv-test --memory 256M --disc 1G
    bigv show server web1.default.demo
    bigv admin show logs head head1     # the VM's serial console (boot, DHCP lease) is echoed here
    bigv admin show heads

tools/demo.sh down stops the cluster and removes $state.
TXT
