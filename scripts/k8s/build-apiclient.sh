#!/usr/bin/env bash
# Builds apiclient (scripts/k8s/apiclient: Go standard library only, no module downloads), the
# tests' in-cluster API caller, and packs it alone into an OCI image layout ($CACHE/oci, tag
# `apiclient`) that a test pushes to its registry to run as a pod on a cell.
# Cached per source hash under $CELLO_CACHE; built only if missing, under a lock.
#   scripts/k8s/build-apiclient.sh   -> prints the directory holding the `apiclient` binary
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
stamp=$(cat "$HERE/apiclient/main.go" "$0" | sha256sum | cut -c1-16)
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/apiclient-$stamp
built() { [ -x "$CACHE/bin/apiclient" ] && [ -f "$CACHE/oci/index.json" ]; }
if built; then echo "$CACHE/bin"; exit 0; fi

# shellcheck disable=SC2016 # the line is printed for the user to run, not expanded here
GO_INSTALL='curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz && export PATH=$PATH:/usr/local/go/bin'
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi
command -v go >/dev/null || { echo "go is required (a Go toolchain >= 1.21); install it with:  $GO_INSTALL" >&2; exit 1; }
command -v flock >/dev/null || { echo "flock is required; install it with:  apt-get install -y util-linux" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci is required; install it with:  apt-get install -y umoci" >&2; exit 1; }

mkdir -p "$CACHE/bin"
exec 9>"$CACHE/.lock"
flock 9
if built; then echo "$CACHE/bin"; exit 0; fi

if [ ! -x "$CACHE/bin/apiclient" ]; then
  # GOTOOLCHAIN=local: the standard library is all it needs, whatever Go is installed.
  (cd "$HERE/apiclient" && GOTOOLCHAIN=local GO111MODULE=off CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/apiclient.tmp" main.go) >&2
  mv "$CACHE/bin/apiclient.tmp" "$CACHE/bin/apiclient"
fi

# The image: one layer holding /apiclient (static), entrypoint /apiclient.
work="$CACHE/image.tmp"
rm -rf "$work" "$CACHE/oci"
mkdir -p "$work/rootfs"
cp "$CACHE/bin/apiclient" "$work/rootfs/apiclient"
tar --format=pax --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$work/rootfs" -cf "$work/layer.tar" .
umoci init --layout "$work/oci"
umoci new --image "$work/oci:apiclient"
umoci raw add-layer --image "$work/oci:apiclient" "$work/layer.tar"
umoci config --image "$work/oci:apiclient" --config.entrypoint /apiclient --architecture "$(go env GOARCH)" --os linux
mv "$work/oci" "$CACHE/oci"
rm -rf "$work"
echo "$CACHE/bin"
