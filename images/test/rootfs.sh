#!/bin/sh
# Builds the Debian root filesystem the image tests install Cello onto: a plain Debian 12 as a
# cloud image has it (systemd, no Node, no runc), plus the runc package already downloaded into
# apt's cache with fresh package lists, so that install.sh's `apt-get install runc` runs offline
# in the test. With --bootable it also gets Debian's kernel and initramfs, a network setup and
# a serial console, for the qemu boot test.
#
# Usage: rootfs.sh [--bootable] DEST      (as root; DEST must not exist)
# The tests cache the result under /var/cache/cello/rootfs, keyed by this file's hash.
set -eu
BOOTABLE=0
[ "${1:-}" = --bootable ] && { BOOTABLE=1; shift; }
DEST=${1:?usage: rootfs.sh [--bootable] DEST}
MIRROR=${CELLO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ ! -e "$DEST" ] || { echo "rootfs.sh: $DEST exists" >&2; exit 1; }

INCLUDE=systemd,systemd-sysv,ca-certificates
[ "$BOOTABLE" = 1 ] && INCLUDE=$INCLUDE,linux-image-amd64,initramfs-tools,udev,ifupdown,isc-dhcp-client,iproute2
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$DEST" "$MIRROR"

cp /etc/resolv.conf "$DEST/etc/resolv.conf"
chroot "$DEST" env DEBIAN_FRONTEND=noninteractive apt-get update -q
chroot "$DEST" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only --no-install-recommends runc
echo cello-test >"$DEST/etc/hostname"

if [ "$BOOTABLE" = 1 ]; then
  # virtio disk and network as modules in the initramfs; root by label; DHCP on the first NIC.
  printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >>"$DEST/etc/initramfs-tools/modules"
  chroot "$DEST" update-initramfs -u -k all
  printf 'LABEL=cello-root / ext4 defaults 0 1\n' >"$DEST/etc/fstab"
  printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n' >"$DEST/etc/network/interfaces"
  # Root login without a password on the serial console, to debug a failed boot by hand.
  chroot "$DEST" passwd -d root
fi
