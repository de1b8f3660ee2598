#!/usr/bin/env bash
# Build the tiny guest the libvirt runtime's tests (and the busybox-guest
# protocol) boot: Debian's cloud kernel and two revisions of a busybox
# initramfs, made only from installed OS packages.
#
#   build-guest.sh [DIR]          default DIR: /var/lib/nodevisor/images/libvirt
#   build-guest.sh --force [DIR]  rebuild even when up to date
#
# DIR receives vmlinuz, busybox-guest-1.cpio.gz and busybox-guest-2.cpio.gz,
# readable by the qemu user. An initramfs is rebuilt only when its recipe (this
# script, busybox, the kernel) changed.
set -euo pipefail

FORCE=0
[[ ${1:-} == --force ]] && { FORCE=1; shift; }
OUT=${1:-/var/lib/nodevisor/images/libvirt}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_blk button evdev)

say() { printf 'build-guest: %s\n' "$*"; }
die() { printf 'build-guest: error: %s\n' "$*" >&2; exit 1; }

need() {
    local package=$1 path=$2
    [[ -e $path ]] || command -v "$path" >/dev/null 2>&1 ||
        die "$path is missing; install it: apt-get install $package"
}

find_kernel() {
    local kernel
    kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
    [[ -n $kernel ]] ||
        die "no /boot/vmlinuz-*-cloud-amd64; install it: apt-get install linux-image-cloud-amd64"
    echo "$kernel"
}

write_init() {
    cat >"$1/init" <<'INIT'
#!/bin/busybox sh
# nodevisor busybox guest: mount, load drivers, run the chain loop on /dev/vda.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /lib/modules/order); do insmod "/lib/modules/$module.ko"; done
revision=$(cat /etc/nodevisor-guest)
echo "nodevisor-guest: revision $revision up"
if grep -q nodevisor.stubborn /proc/cmdline; then
    echo "nodevisor-guest: stubborn, ignoring ACPI"
else
    /bin/power-button &
fi
/bin/chain "$revision" &
echo $! >/run-chain.pid
while true; do sleep 3600; done
INIT
    cat >"$1/bin/chain" <<'CHAIN'
#!/bin/sh
# The "chain process": a record at 1 MiB on the data disk, updated each second.
disk=/dev/vda
for _ in $(seq 50); do [ -b $disk ] && break; sleep 0.1; done
[ -b $disk ] || { echo "nodevisor-guest: no data disk $disk"; exit 1; }
boots=$(dd if=$disk bs=512 skip=2048 count=1 2>/dev/null | sed -n 's/^nodevisor-chain boots=\([0-9]*\) .*/\1/p')
boots=$(( ${boots:-0} + 1 ))
tick=0
while true; do
    printf 'nodevisor-chain boots=%d revision=%s tick=%d\n' "$boots" "$1" "$tick" |
        dd of=$disk bs=512 seek=2048 conv=sync,fsync 2>/dev/null
    [ $tick -eq 0 ] && echo "nodevisor-guest: chain running, boot $boots"
    tick=$((tick + 1))
    sleep 1
done
CHAIN
    cat >"$1/bin/power-button" <<'POWER'
#!/bin/sh
# Wait for the ACPI power button (one input event), then power off cleanly.
for _ in $(seq 50); do
    for input in /sys/class/input/event*; do
        [ "$(cat "$input/device/name" 2>/dev/null)" = "Power Button" ] &&
            device=/dev/input/${input#/sys/class/input/}
    done
    [ -n "$device" ] && [ -c "$device" ] && break
    sleep 0.1
done
[ -n "$device" ] || { echo "nodevisor-guest: no power button"; exit 1; }
# Only a press counts: an input_event is 24 bytes, its type, code and value
# at byte 16; a press is EV_KEY (1), KEY_POWER (116), value 1. Anything else
# the device reports (a sync, a release, a failed read) is not a press.
while true; do
    set -- $(dd if="$device" bs=24 count=1 2>/dev/null | od -An -tu2 -j16 -N6)
    [ "${1:-}" = 1 ] && [ "${2:-}" = 116 ] && [ "${3:-}" = 1 ] && break
    [ -n "${1:-}" ] || sleep 1
done
echo "nodevisor-guest: power button, shutting down"
kill "$(cat /run-chain.pid)" 2>/dev/null
sync
poweroff -f
POWER
    chmod 755 "$1/init" "$1/bin/chain" "$1/bin/power-button"
}

build_initramfs() {
    local revision=$1 kernel=$2 target=$3 root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,dev,proc,sys,etc,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    local version=${kernel#/boot/vmlinuz-} module
    for module in "${MODULES[@]}"; do
        find "/lib/modules/$version/kernel" -name "$module.ko" -exec cp {} "$root/lib/modules/" \;
        [[ -e $root/lib/modules/$module.ko ]] || die "kernel module $module.ko not found"
    done
    printf '%s\n' "${MODULES[@]}" >"$root/lib/modules/order"
    echo "$revision" >"$root/etc/nodevisor-guest"
    write_init "$root"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
        gzip -9n >"$target.partial"
    rm -rf "$root"
    mv "$target.partial" "$target"
}

recipe() {
    cat "$SELF" /bin/busybox "$1" | sha256sum | cut -d' ' -f1
}

main() {
    need busybox-static /bin/busybox
    need cpio cpio
    need qemu-utils qemu-img
    local kernel stamp revision
    kernel=$(find_kernel)
    install -d -m 0755 "$OUT"
    install -m 0644 "$kernel" "$OUT/vmlinuz"
    stamp=$(recipe "$kernel")
    for revision in 1 2; do
        local target=$OUT/busybox-guest-$revision.cpio.gz
        if ((!FORCE)) && [[ -e $target && $(cat "$target.recipe" 2>/dev/null) == "$stamp" ]]; then
            say "$target is up to date"
            continue
        fi
        say "building $target (kernel $kernel, busybox $(busybox | head -n 1 | cut -d' ' -f2))"
        build_initramfs "$revision" "$kernel" "$target"
        chmod 0644 "$target"
        echo "$stamp" >"$target.recipe"
    done
    say "guest images ready in $OUT"
}

main
