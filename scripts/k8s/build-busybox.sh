#!/usr/bin/env bash
# Builds upstream busybox (the official image's: defconfig, static) from its release tarball, once
# per version, and the rootfs every busybox-based test image starts from. Used by the conformance
# images (build-e2e-images.sh) and critest's images (packages/cri/test/critest/images.ts).
# Why not Debian's busybox-static: Debian (bookworm's 1.35, trixie's 1.37 alike) patches ash to drop
# environment names that are not shell identifiers (`data-1`), which the Secret/ConfigMap env
# specs print with `sh -c env` (upstream's ash keeps them), and leaves out applets specs run
# (`ipcs`, `pgrep`). The tarball is Debian's unmodified orig tarball, checked against this hash.
#   scripts/k8s/build-busybox.sh            -> prints the busybox binary
#   scripts/k8s/build-busybox.sh --rootfs   -> prints the rootfs directory: /bin/busybox, every
#       applet linked in /bin (as upstream's image) and at Debian's paths, /etc/passwd and /etc/group
set -euo pipefail
VERSION=${BUSYBOX_VERSION:-1.37.0}
SHA256=3311dff32e746499f4df0d5df04d7eb396382d7e108bb9250e7b519b837043a4
URL=${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/b/busybox/busybox_$VERSION.orig.tar.bz2
# The cache path the conformance images used before this script existed (a built binary is kept).
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v${KUBE_VERSION:-1.34.4}/busybox-$VERSION
BUSYBOX="$CACHE/busybox"
for c in gcc make bzip2 flock curl; do
  command -v "$c" >/dev/null || { echo "$c is required; install it with:  apt-get install -y $(case $c in flock) echo util-linux ;; *) echo "$c" ;; esac)" >&2; exit 1; }
done
mkdir -p "$CACHE"
exec 9>"$CACHE.lock"
flock 9
if [ ! -x "$BUSYBOX" ]; then
  src="$CACHE-src"
  rm -rf "$src" && mkdir -p "$src"
  curl -fsSL --retry 3 -o "$src.tar.bz2" "$URL" || { echo "cannot fetch $URL" >&2; exit 1; }
  echo "$SHA256  $src.tar.bz2" | sha256sum --quiet -c - || { echo "$URL: sha256 is not $SHA256" >&2; exit 1; }
  tar -xjf "$src.tar.bz2" -C "$src" --strip-components=1
  echo "building busybox $VERSION (a few minutes) ..." >&2
  # tc: its CBQ code does not build against kernel headers >= 6.8 (no spec runs tc).
  (cd "$src" && make defconfig >/dev/null && sed -i -e 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/' -e 's/^CONFIG_TC=y/# CONFIG_TC is not set/' .config &&
    nice -n 19 make -j"$(nproc)" >"$src.log" 2>&1) || { tail -20 "$src.log" >&2; echo "busybox build failed: $src.log" >&2; exit 1; }
  cp "$src/busybox" "$BUSYBOX.tmp" && mv "$BUSYBOX.tmp" "$BUSYBOX"
  rm -rf "$src" "$src.tar.bz2" "$src.log"
fi
# Applets the test images' specs run; a build without one is not the image they expect.
# (The list is read whole first: `grep -q` stopping early would fail the pipe under pipefail.)
applets=$("$BUSYBOX" --list)
for applet in sh ipcs pgrep httpd nc; do
  grep -qx "$applet" <<<"$applets" || { echo "$BUSYBOX has no $applet applet (remove it to rebuild)" >&2; exit 1; }
done
if [ "${1:-}" != --rootfs ]; then echo "$BUSYBOX"; exit 0; fi

stamp=$( (cat "$0" "$BUSYBOX") | sha256sum | cut -c1-16)
ROOTFS="$CACHE/rootfs-$stamp"
if [ ! -d "$ROOTFS" ]; then
  rm -rf "$CACHE"/rootfs-*
  tmp="$CACHE/rootfs.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home,var/www,dev,proc,sys}
  chmod 1777 "$tmp/tmp"
  cp "$BUSYBOX" "$tmp/bin/busybox"
  # Every applet in /bin, as the upstream busybox image has them (specs exec /bin/sysctl, /bin/ls),
  # and at Debian's paths (/sbin/..., /usr/bin/...) too.
  "$BUSYBOX" --list | while read -r applet; do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
  done
  "$BUSYBOX" --list-full | while read -r applet; do
    [ -e "$tmp/$applet" ] || [ -L "$tmp/$applet" ] || ln -s /bin/busybox "$tmp/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$tmp/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnobody:x:65534:\n' >"$tmp/etc/group"
  mv "$tmp" "$ROOTFS"
fi
echo "$ROOTFS"
