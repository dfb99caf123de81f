#!/usr/bin/env bash
# Builds kube-apiserver, kube-scheduler and kubectl from the Go module proxy, for tests that need
# a real Kubernetes API server. k8s.io/kubernetes points its k8s.io/* staging modules at local
# paths (replace => ./staging/...), which `go install pkg@version` refuses; so this makes a small
# module that requires k8s.io/kubernetes and replaces each staging module with its published
# version (v0.X.Y for Kubernetes v1.X.Y). Binaries are cached per version under $CELLO_CACHE.
#   scripts/k8s/build.sh            -> prints the directory holding the binaries
set -euo pipefail
VERSION=${KUBE_VERSION:-1.34.4}
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v$VERSION
BINS=(kube-apiserver kube-scheduler kubectl)
if [ -x "$CACHE/bin/kubectl" ] && [ -x "$CACHE/bin/kube-apiserver" ] && [ -x "$CACHE/bin/kube-scheduler" ]; then
  echo "$CACHE/bin"; exit 0
fi
command -v go >/dev/null || { echo "go is required: apt-get install -y golang-go (or a Go toolchain >= 1.24)" >&2; exit 1; }
mkdir -p "$CACHE/src" "$CACHE/bin"
cd "$CACHE/src"
rm -f go.mod go.sum
go mod init cello.local/k8s-build >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@v$VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
staging_version="v0.${VERSION#1.}"
# every "k8s.io/NAME => ./staging/src/k8s.io/NAME" becomes "k8s.io/NAME => k8s.io/NAME v0.X.Y"
grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
  go mod edit -replace "$m=$m@$staging_version"
done
go mod edit -require "k8s.io/kubernetes@v$VERSION"
for b in "${BINS[@]}"; do
  GOFLAGS=-mod=mod go get "k8s.io/kubernetes/cmd/$b@v$VERSION" >&2
done
for b in "${BINS[@]}"; do
  echo "building $b (v$VERSION) ..." >&2
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${VERSION#1.}" -o "$CACHE/bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
  mv "$CACHE/bin/$b.tmp" "$CACHE/bin/$b"
done
echo "$CACHE/bin"
