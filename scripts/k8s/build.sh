#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kubelet from the Go
# module proxy, for tests that need a real Kubernetes control plane and a real node (the kubelet
# drives cello-cri and containerd in the harness). k8s.io/kubernetes points its
# k8s.io/* staging modules at local paths (replace => ./staging/...), which `go install
# pkg@version` refuses; so this makes a small module that requires k8s.io/kubernetes and replaces
# each staging module with its published version (v0.X.Y for Kubernetes v1.X.Y).
# Binaries are cached per version under $CELLO_CACHE. Only the missing ones are built (a cache
# from before the kubelet was added gets just the kubelet), all in ONE
# `go build` (the packages they share compile once), under a lock so concurrent runs (turbo,
# parallel test files) wait for one build instead of racing on the same files.
#   scripts/k8s/build.sh            -> prints the directory holding the binaries
set -euo pipefail
VERSION=${KUBE_VERSION:-1.34.4}
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v$VERSION
BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

missing() {
  local b
  for b in "${BINS[@]}"; do [ -x "$CACHE/bin/$b" ] || echo "$b"; done
}
if [ -z "$(missing)" ]; then echo "$CACHE/bin"; exit 0; fi

# Kubernetes v1.34 needs Go >= 1.24 (CoreDNS v1.15 1.26); a Go >= 1.21 fetches the toolchain go.mod names by itself
# (GOTOOLCHAIN=auto). Debian 12's golang-go is 1.19: too old.
# shellcheck disable=SC2016 # the line is printed for the user to run, not expanded here
GO_INSTALL='curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz && export PATH=$PATH:/usr/local/go/bin'
if ! command -v go >/dev/null; then
  [ -x /usr/local/go/bin/go ] && export PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || { echo "go is required (a Go toolchain >= 1.21); install it with:  $GO_INSTALL" >&2; exit 1; }
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -n "$go_minor" ] && [ "$go_minor" -lt 21 ]; then
  echo "go $(go env GOVERSION) is too old (>= 1.21 needed); install a newer one with:  $GO_INSTALL" >&2
  exit 1
fi
command -v flock >/dev/null || { echo "flock is required; install it with:  apt-get install -y util-linux" >&2; exit 1; }

mkdir -p "$CACHE/src" "$CACHE/bin"
exec 9>"$CACHE/.lock"
flock 9
# Another run may have built them while this one waited for the lock.
mapfile -t TODO < <(missing)
if [ "${#TODO[@]}" -eq 0 ]; then echo "$CACHE/bin"; exit 0; fi

cd "$CACHE/src"
if ! grep -q "k8s.io/kubernetes v$VERSION" go.mod 2>/dev/null; then
  rm -f go.mod go.sum
  go mod init cello.local/k8s-build >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@v$VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging_version="v0.${VERSION#1.}"
  # every "k8s.io/NAME => ./staging/src/k8s.io/NAME" becomes "k8s.io/NAME => k8s.io/NAME v0.X.Y"
  grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
    go mod edit -replace "$m=$m@$staging_version"
  done
  go mod edit -require "k8s.io/kubernetes@v$VERSION"
fi
PKGS=()
for b in "${TODO[@]}"; do PKGS+=("k8s.io/kubernetes/cmd/$b"); done
# Resolves every dependency of the packages to build (a no-op when go.mod already has them).
GOFLAGS=-mod=mod go get "${PKGS[@]/%/@v$VERSION}" >&2
echo "building ${TODO[*]} (v$VERSION) in one go build ..." >&2
start=$(date +%s)
rm -rf "$CACHE/bin.tmp"
mkdir -p "$CACHE/bin.tmp"
GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${VERSION#1.}" \
  -o "$CACHE/bin.tmp/" "${PKGS[@]}" >&2
for b in "${TODO[@]}"; do mv "$CACHE/bin.tmp/$b" "$CACHE/bin/$b"; done
rmdir "$CACHE/bin.tmp"
echo "built ${TODO[*]} in $(($(date +%s) - start)) s" >&2
echo "$CACHE/bin"
