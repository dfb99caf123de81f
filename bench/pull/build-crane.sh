#!/usr/bin/env bash
# Builds crane (go-containerregistry) from the Go module proxy for `npm run bench:pull`, where
# `crane export | tar -x` is one of the peers. The binary is cached per version under $CELLO_CACHE.
#   bench/pull/build-crane.sh   -> prints the path of the binary
set -euo pipefail
VERSION=${CRANE_VERSION:-0.22.0}
CACHE=${CELLO_CACHE:-/var/cache/cello}/go-tools/crane-v$VERSION
if [ -x "$CACHE/crane" ]; then echo "$CACHE/crane"; exit 0; fi
command -v go >/dev/null || { echo "go is required: a Go toolchain >= 1.21 (https://go.dev/dl), as for scripts/k8s/build.sh" >&2; exit 1; }
mkdir -p "$CACHE"
echo "building crane v$VERSION ..." >&2
GOBIN="$CACHE/bin.tmp" CGO_ENABLED=0 GOFLAGS=-trimpath nice -n 19 go install -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@v$VERSION" >&2
mv "$CACHE/bin.tmp/crane" "$CACHE/crane"
rmdir "$CACHE/bin.tmp" 2>/dev/null || true
echo "$CACHE/crane"
