#!/usr/bin/env bash
# Builds crictl and critest (sigs.k8s.io/cri-tools) from the Go module proxy, for the CRI shim's
# tests (packages/cri). critest upstream is only a test file (cmd/critest/cri_test.go, package
# main), which `go build` and `go install` refuse; so this copies that file, unchanged, from the
# module cache into a scratch module as an ordinary source file, next to a two-line main that
# runs its TestCRISuite through testing.Main. Then ONE `go build` makes both binaries, sharing
# one dependency graph and one compile of the shared packages. Cached per version under
# $CELLO_CACHE; a lock keeps concurrent test runs from building twice.
#   scripts/k8s/build-cri-tools.sh   -> prints the directory holding crictl and critest
set -euo pipefail
VERSION=${CRI_TOOLS_VERSION:-1.34.0}
CACHE=${CELLO_CACHE:-/var/cache/cello}/cri-tools/v$VERSION
have() { [ -x "$CACHE/bin/crictl" ] && [ -x "$CACHE/bin/critest" ]; }
if have; then echo "$CACHE/bin"; exit 0; fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go is required: a Go toolchain >= 1.24 (https://go.dev/dl), as for scripts/k8s/build.sh" >&2; exit 1; }
command -v flock >/dev/null || { echo "flock is required: apt-get install -y util-linux" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
# Another run may have built them while this one waited for the lock.
if have; then echo "$CACHE/bin"; exit 0; fi
mkdir -p "$CACHE/src"
cd "$CACHE/src"
rm -rf go.mod go.sum critest bin.tmp
go mod init cello.local/cri-tools-build >/dev/null 2>&1
GOFLAGS=-mod=mod go get "sigs.k8s.io/cri-tools@v$VERSION" >&2
moddir=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/cri-tools")
mkdir critest
cp "$moddir/cmd/critest/cri_test.go" critest/cri.go
chmod u+w critest/cri.go
cat > critest/main.go <<'GO'
// critest as an ordinary binary: runs cri.go's TestCRISuite (copied unchanged from
// sigs.k8s.io/cri-tools cmd/critest/cri_test.go) the way `go test -c` would.
package main

import "testing"

func main() {
	testing.Main(func(_, _ string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: "TestCRISuite", F: TestCRISuite}}, nil, nil)
}
GO
echo "building crictl and critest v$VERSION ..." >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$VERSION" \
  -o bin.tmp/ "sigs.k8s.io/cri-tools/cmd/crictl" ./critest >&2
mkdir -p "$CACHE/bin"
mv bin.tmp/crictl "$CACHE/bin/crictl"
mv bin.tmp/critest "$CACHE/bin/critest"
rmdir bin.tmp
echo "$CACHE/bin"
