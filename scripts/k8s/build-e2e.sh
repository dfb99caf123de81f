#!/usr/bin/env bash
# Builds the upstream Kubernetes end-to-end suite (`e2e.test`, k8s.io/kubernetes/test/e2e) and the
# `agnhost` test binary (k8s.io/kubernetes/test/images/agnhost) from the Go module proxy, for
# `npm run conformance`. The same technique as build.sh: a small module that requires
# k8s.io/kubernetes and replaces each staging module with its published v0.X.Y. e2e.test is a Go
# test binary (`go test -c`); it runs its ginkgo specs by itself (--ginkgo.focus, --ginkgo.junit-report),
# so no separate ginkgo CLI is needed.
# Cached per version under $CELLO_CACHE (a cold build takes ~20 min on 2 cores); built only if
# missing, under the same lock as build.sh.
#   scripts/k8s/build-e2e.sh   -> prints the directory holding e2e.test and agnhost
set -euo pipefail
VERSION=${KUBE_VERSION:-1.34.4}
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v$VERSION
built() { [ -x "$CACHE/bin/e2e.test" ] && [ -x "$CACHE/bin/agnhost" ]; }
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
GOFLAGS=-mod=mod go get "k8s.io/kubernetes/test/e2e@v$VERSION" "k8s.io/kubernetes/test/images/agnhost@v$VERSION" >&2
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${VERSION#1.}"
start=$(date +%s)
if [ ! -x "$CACHE/bin/e2e.test" ]; then
  echo "building e2e.test (v$VERSION) ..." >&2
  GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go test -c -trimpath -ldflags "$LDFLAGS" -o "$CACHE/bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e >&2
  mv "$CACHE/bin/e2e.test.tmp" "$CACHE/bin/e2e.test"
fi
if [ ! -x "$CACHE/bin/agnhost" ]; then
  echo "building agnhost (v$VERSION) ..." >&2
  GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost >&2
  mv "$CACHE/bin/agnhost.tmp" "$CACHE/bin/agnhost"
fi
echo "built in $(($(date +%s) - start)) s" >&2
echo "$CACHE/bin"
