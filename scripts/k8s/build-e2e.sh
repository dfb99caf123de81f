#!/usr/bin/env bash
# Builds the upstream Kubernetes end-to-end suite (`e2e.test`, k8s.io/kubernetes/test/e2e), the
# `agnhost` test binary (k8s.io/kubernetes/test/images/agnhost), `sample-apiserver` and the `ginkgo` v2 CLI
# (github.com/onsi/ginkgo/v2/ginkgo, at the version k8s.io/kubernetes's go.mod requires) from the
# Go module proxy, for `npm run conformance`. The same technique as build.sh: a small module that
# requires k8s.io/kubernetes and replaces each staging module with its published v0.X.Y.
# e2e.test is a Go test binary (`go test -c`), which cannot share an invocation with `go build`;
# agnhost, sample-apiserver and ginkgo are built by ONE `go build`, after it, so the packages they share with
# e2e.test come from the build cache compiled once. The ginkgo CLI runs e2e.test in parallel
# processes (`ginkgo --procs N e2e.test -- ...`, as upstream's hack/ginkgo-e2e.sh does) and merges
# their reports; e2e.test alone runs its specs serially.
# Cached per version under $CELLO_CACHE (a cold build takes ~20 min on 2 cores; ginkgo alone
# ~1 min); built only if missing, under the same lock as build.sh.
#   scripts/k8s/build-e2e.sh   -> prints the directory holding e2e.test, agnhost, ginkgo and sample-apiserver
set -euo pipefail
VERSION=${KUBE_VERSION:-1.34.4}
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v$VERSION
# The binaries `go build` makes, as "name=package".
# sample-apiserver (the staging module k8s.io/sample-apiserver at v0.X.Y, main package at its
# root) is the aggregator spec's extension API server, packed by build-e2e-images.sh.
GO_BINS="agnhost=k8s.io/kubernetes/test/images/agnhost ginkgo=github.com/onsi/ginkgo/v2/ginkgo sample-apiserver=k8s.io/sample-apiserver"
built() {
  [ -x "$CACHE/bin/e2e.test" ] || return 1
  for b in $GO_BINS; do [ -x "$CACHE/bin/${b%%=*}" ] || return 1; done
}
if built; then echo "$CACHE/bin"; exit 0; fi

# shellcheck disable=SC2016 # the line is printed for the user to run, not expanded here
GO_INSTALL='curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz && export PATH=$PATH:/usr/local/go/bin'
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi
command -v go >/dev/null || { echo "go is required (a Go toolchain >= 1.21); install it with:  $GO_INSTALL" >&2; exit 1; }
command -v flock >/dev/null || { echo "flock is required; install it with:  apt-get install -y util-linux" >&2; exit 1; }

mkdir -p "$CACHE/e2e-src" "$CACHE/bin"
exec 9>"$CACHE/.lock"
flock 9
if built; then echo "$CACHE/bin"; exit 0; fi

cd "$CACHE/e2e-src"
if ! grep -q "k8s.io/kubernetes v$VERSION" go.mod 2>/dev/null; then
  rm -f go.mod go.sum
  go mod init cello.local/k8s-e2e-build >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@v$VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging_version="v0.${VERSION#1.}"
  # every "k8s.io/NAME => ./staging/src/k8s.io/NAME" becomes "k8s.io/NAME => k8s.io/NAME v0.X.Y"
  grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
    go mod edit -replace "$m=$m@$staging_version"
  done
  go mod edit -require "k8s.io/kubernetes@v$VERSION"
fi
# ginkgo at the version the module graph already selects (k8s.io/kubernetes's go.mod): the CLI
# and the library inside e2e.test must agree on the parallel protocol.
GOFLAGS=-mod=mod go get "k8s.io/kubernetes/test/e2e@v$VERSION" "k8s.io/kubernetes/test/images/agnhost@v$VERSION" "k8s.io/sample-apiserver@v0.${VERSION#1.}" >&2
GOFLAGS=-mod=mod go get "github.com/onsi/ginkgo/v2/ginkgo@$(GOFLAGS=-mod=mod go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)" >&2
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${VERSION#1.}"
start=$(date +%s)
if [ ! -x "$CACHE/bin/e2e.test" ]; then
  echo "building e2e.test (v$VERSION) ..." >&2
  GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go test -c -trimpath -ldflags "$LDFLAGS" -o "$CACHE/bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e >&2
  mv "$CACHE/bin/e2e.test.tmp" "$CACHE/bin/e2e.test"
fi
missing=
for b in $GO_BINS; do [ -x "$CACHE/bin/${b%%=*}" ] || missing=1; done
if [ -n "$missing" ]; then
  # One invocation for every main package; `go build -o DIR/` names each binary after its
  # package's last path element (agnhost, ginkgo, sample-apiserver). Built into a scratch directory, then moved.
  pkgs=$(for b in $GO_BINS; do printf '%s ' "${b#*=}"; done)
  echo "building $pkgs(v$VERSION) ..." >&2
  rm -rf "$CACHE/bin/.go-build.tmp" && mkdir -p "$CACHE/bin/.go-build.tmp"
  # shellcheck disable=SC2086 # one word per package
  GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/.go-build.tmp/" $pkgs >&2
  for b in $GO_BINS; do mv "$CACHE/bin/.go-build.tmp/${b%%=*}" "$CACHE/bin/${b%%=*}"; done
  rmdir "$CACHE/bin/.go-build.tmp"
fi
echo "built in $(($(date +%s) - start)) s" >&2
echo "$CACHE/bin"
