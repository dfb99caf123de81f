#!/usr/bin/env bash
# Builds metrics-server from the Go module proxy (sigs.k8s.io/metrics-server has no local
# replace directives, so `go install module@version` works), for the `kubectl top` end-to-end
# test. The binary is cached per version under $CELLO_CACHE.
#   scripts/k8s/build-metrics-server.sh   -> prints the directory holding the binary
set -euo pipefail
VERSION=${METRICS_SERVER_VERSION:-0.9.0}
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/metrics-server-v$VERSION
if [ -x "$CACHE/bin/metrics-server" ]; then echo "$CACHE/bin"; exit 0; fi
# metrics-server v0.9.0 wants Go 1.26.4: an older Go (>= 1.21) fetches that toolchain through
# the module proxy by itself (GOTOOLCHAIN=auto).
command -v go >/dev/null || { echo "go is required: a Go toolchain >= 1.21 (https://go.dev/dl), as for scripts/k8s/build.sh" >&2; exit 1; }
mkdir -p "$CACHE/bin"
echo "building metrics-server v$VERSION ..." >&2
# A private temporary GOBIN: two setups running at once (a test and `npm test`) must not move
# each other's binary away.
TMP=$(mktemp -d "$CACHE/bin.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
GOBIN="$TMP" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@v$VERSION" >&2
mv -f "$TMP/metrics-server" "$CACHE/bin/metrics-server"
echo "$CACHE/bin"
