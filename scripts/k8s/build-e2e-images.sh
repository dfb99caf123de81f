#!/usr/bin/env bash
# Builds the images the Kubernetes conformance specs pull (the list and each one's recipe:
# scripts/conformance/images.txt) into one OCI layout, from sources reachable here: busybox-static,
# the agnhost / nonewprivs Go packages and pause.c of the k8s.io/kubernetes module (binaries from
# build-e2e.sh). With a registry argument, also pushes each image there under the path and tag the
# suite expects, minus "registry.k8s.io/" (e.g. HOST:PORT/e2e-test-images/agnhost:2.56), which is
# what the KUBE_TEST_REPO_LIST of scripts/conformance.mjs points at.
# The layout is cached under $CELLO_CACHE, rebuilt when the list or this script changes.
#   scripts/k8s/build-e2e-images.sh [HOST:PORT]   -> prints the OCI layout's directory
set -euo pipefail
VERSION=${KUBE_VERSION:-1.34.4}
HERE=$(cd "$(dirname "$0")" && pwd)
LIST="$HERE/../conformance/images.txt"
CACHE=${CELLO_CACHE:-/var/cache/cello}/k8s/v$VERSION
OUT="$CACHE/e2e-images"
REGISTRY=${1:-}

for c in busybox umoci skopeo gcc flock; do
  command -v "$c" >/dev/null || {
    echo "$c is required; install it with:  apt-get install -y $(case $c in busybox) echo busybox-static ;; flock) echo util-linux ;; *) echo "$c" ;; esac)" >&2
    exit 1
  }
done
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi

# The tag inside the layout: the reference without its registry, '/' and ':' made '_'.
layout_tag() { echo "${1#registry.k8s.io/}" | tr '/:' '__'; }
images() { grep -vE '^\s*(#|$)' "$LIST"; }

stamp=$(cat "$LIST" "$0" | sha256sum | cut -c1-16)
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [ "$(cat "$OUT/stamp" 2>/dev/null)" != "$stamp" ]; then
  BIN=$("$HERE/build-e2e.sh")
  MOD=$(cd "$CACHE/e2e-src" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  work="$OUT/work"
  rm -rf "$work" "$OUT/oci"
  mkdir -p "$work"
  umoci init --layout "$work/oci" >/dev/null

  # The busybox rootfs every other recipe starts from.
  base="$work/busybox"
  mkdir -p "$base"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home,var/www,dev,proc,sys}
  chmod 1777 "$base/tmp"
  cp "$(command -v busybox)" "$base/bin/busybox"
  # Every applet in /bin, as the upstream busybox image has them (specs exec /bin/sysctl, /bin/ls),
  # and at Debian's paths (/sbin/..., /usr/bin/...) too.
  busybox --list | while read -r applet; do
    [ "$applet" = busybox ] || ln -sf busybox "$base/bin/$applet"
  done
  busybox --list-full | while read -r applet; do
    [ -e "$base/$applet" ] || [ -L "$base/$applet" ] || ln -s /bin/busybox "$base/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$base/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnobody:x:65534:\n' >"$base/etc/group"

  # Every upstream image sets PATH (Dockerfile base images do); without it runc finds no `sh`.
  PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  pack() { # pack ROOTFS TAG [umoci config args...]
    local rootfs=$1 tag=$2
    shift 2
    tar --format=pax --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
    umoci new --image "$work/oci:$tag"
    umoci raw add-layer --image "$work/oci:$tag" "$work/layer.tar"
    umoci config --image "$work/oci:$tag" --architecture amd64 --os linux --config.env "$PATH_ENV" "$@"
    rm -f "$work/layer.tar"
  }
  agnhost_rootfs() { # agnhost_rootfs DIR
    cp -a "$base" "$1"
    cp "$BIN/agnhost" "$1/agnhost"
    ln -s agnhost "$1/agnhost-2"
    mkdir -p "$1/uploads"
    cp "$MOD/test/images/agnhost/porter/localhost.crt" "$MOD/test/images/agnhost/porter/localhost.key" "$1/"
    chmod 0644 "$1/localhost.crt" "$1/localhost.key"
    echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$1/etc/passwd"
    printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$1/etc/group"
  }

  while read -r ref recipe extra; do
    tag=$(layout_tag "$ref")
    dir="$work/rootfs-$tag"
    case "$recipe" in
      busybox) pack "$base" "$tag" --config.cmd sh ;;
      agnhost)
        agnhost_rootfs "$dir"
        pack "$dir" "$tag" --config.entrypoint /agnhost --config.cmd pause \
          --config.exposedports 80/tcp --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 9376/tcp --config.exposedports 5000/tcp
        ;;
      agnhost-web)
        agnhost_rootfs "$dir"
        cp "$MOD/test/images/$extra/html/"* "$dir/"
        chmod 0644 "$dir"/*.json "$dir"/*.jpg
        pack "$dir" "$tag" --config.entrypoint /agnhost --config.cmd test-webserver --config.exposedports 80/tcp
        ;;
      pause)
        mkdir -p "$dir"
        gcc -Os -static -DVERSION="v$VERSION" -o "$dir/pause" "$MOD/build/pause/linux/pause.c"
        strip "$dir/pause"
        pack "$dir" "$tag" --config.entrypoint /pause --config.user 65535:65535
        ;;
      nonewprivs)
        cp -a "$base" "$dir"
        mkdir -p "$dir/usr/local/bin"
        (cd "$CACHE/e2e-src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/usr/local/bin/nnp" k8s.io/kubernetes/test/images/nonewprivs)
        chmod 4755 "$dir/usr/local/bin/nnp"
        pack "$dir" "$tag" --config.cmd nnp
        ;;
      nonroot) pack "$base" "$tag" --config.user 1234 --config.cmd sh ;;
      SUBSTITUTE-web)
        cp -a "$base" "$dir"
        mkdir -p "$dir$extra"
        echo '<html><body><h1>It works!</h1></body></html>' >"$dir$extra/index.html"
        pack "$dir" "$tag" --config.entrypoint /bin/busybox --config.cmd httpd --config.cmd -f --config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd "$extra" \
          --config.exposedports 80/tcp
        ;;
      none) continue ;;
      *)
        echo "$LIST: unknown recipe '$recipe' for $ref" >&2
        exit 1
        ;;
    esac
    rm -rf "$dir"
    echo "built $ref ($recipe)" >&2
  done < <(images)
  umoci gc --layout "$work/oci"
  mv "$work/oci" "$OUT/oci"
  rm -rf "$work"
  echo "$stamp" >"$OUT/stamp"
fi

if [ -n "$REGISTRY" ]; then
  while read -r ref recipe _; do
    [ "$recipe" = none ] && continue
    skopeo copy --quiet --dest-tls-verify=false "oci:$OUT/oci:$(layout_tag "$ref")" "docker://$REGISTRY/${ref#registry.k8s.io/}" >&2
  done < <(images)
fi
echo "$OUT/oci"
