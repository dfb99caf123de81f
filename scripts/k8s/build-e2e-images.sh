#!/usr/bin/env bash
# Builds the images the Kubernetes conformance specs pull (the list and each one's recipe:
# scripts/conformance/images.txt) into one OCI layout, from sources reachable here: busybox-static,
# the agnhost / nonewprivs Go packages and pause.c of the k8s.io/kubernetes module (binaries from
# build-e2e.sh), busybox 1.37 from its source tarball (built once, static) and Debian tools
# (curl, dig, iproute2, bash, netcat, iperf) copied from this machine with their shared libraries,
# sample-apiserver (build-e2e.sh) and, as a substitute for registry.k8s.io/etcd, Debian's etcd-server.
# With a registry argument, also pushes each image there under the path and tag the
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

# Upstream's images are busybox 1.37 (the official image: defconfig, static): built from its release
# tarball by build-busybox.sh (why not Debian's busybox: there). nginx is Debian's (build-nginx.sh).
# The tools upstream's agnhost adds to alpine (apk add bind-tools curl netcat-openbsd iproute2 iperf
# bash) and jessie-dnsutils' dnsutils, as "image path=host binary" (glibc's getent for the DNS
# specs' `getent hosts`).
TOOLS="/usr/bin/dig=/usr/bin/dig /usr/bin/host=/usr/bin/host /usr/bin/nslookup=/usr/bin/nslookup
/usr/bin/curl=/usr/bin/curl /usr/bin/nc=/usr/bin/nc.openbsd /sbin/ip=/usr/sbin/ip /sbin/ss=/usr/bin/ss
/usr/bin/iperf=/usr/bin/iperf /bin/bash=/usr/bin/bash /usr/bin/getent=/usr/bin/getent"
for c in umoci skopeo gcc flock ldd dig nc.openbsd iperf etcd; do
  command -v "$c" >/dev/null || {
    echo "$c is required; install it with:  apt-get install -y $(case $c in flock) echo util-linux ;; ldd) echo libc-bin ;;
      dig) echo bind9-dnsutils ;; nc.openbsd) echo netcat-openbsd ;; etcd) echo etcd-server ;; *) echo "$c" ;; esac)" >&2
    exit 1
  }
done
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi

# The tag inside the layout: the reference without its registry, '/' and ':' made '_'.
layout_tag() { echo "${1#registry.k8s.io/}" | tr '/:' '__'; }
images() { grep -vE '^\s*(#|$)' "$LIST"; }

stamp=$( (cat "$LIST" "$0" "$HERE/build-busybox.sh" "$HERE/build-nginx.sh"; apt-cache policy nginx | grep Candidate; dpkg-query -W bind9-dnsutils curl netcat-openbsd iproute2 iperf bash libc-bin etcd-server 2>/dev/null || true) | sha256sum | cut -c1-16)
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

  # The busybox rootfs every other recipe starts from (read only here); the nginx layer.
  base=$("$HERE/build-busybox.sh" --rootfs)
  NGINX=$("$HERE/build-nginx.sh")

  # The tools layer (agnhost, jessie-dnsutils): each tool at its upstream path and wherever the
  # busybox rootfs has an applet of that name (so PATH finds the real one), plus the shared
  # libraries ldd names and the dynamic loader. One layer, the same bytes in every image using it.
  tools="$work/tools"
  mkdir -p "$tools/etc"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$tools/etc/nsswitch.conf"
  for t in $TOOLS; do
    dst=${t%%=*} src=${t#*=} name=$(basename "${t%%=*}")
    mkdir -p "$tools$(dirname "$dst")"
    cp -L "$src" "$tools$dst"
    for d in /bin /sbin /usr/bin /usr/sbin; do
      if [ "$d/$name" != "$dst" ] && { [ -e "$base$d/$name" ] || [ -L "$base$d/$name" ]; }; then
        mkdir -p "$tools$d"
        ln -sf "$dst" "$tools$d/$name"
      fi
    done
    ldd "$src" | awk '/=> \// {print $3} /^[ \t]*\/lib64\// {print $1}'
  done | sort -u | while read -r lib; do
    mkdir -p "$tools$(dirname "$lib")"
    cp -L "$lib" "$tools$lib"
  done
  mkdir -p "$tools/usr/local/bin"
  ln -s /usr/bin/iperf "$tools/usr/local/bin/iperf"
  # Every tool must start inside the layer alone (no library left out).
  for t in $TOOLS; do
    dst=${t%%=*}
    case "$(basename "$dst")" in bash) args=(-c true) ;; ip) args=(-V) ;; nc | iperf) args=(-h) ;; getent) args=(hosts localhost) ;; *) args=(--version) ;; esac
    [ "$(basename "$dst")" = dig ] && args=(-v)
    [ "$(basename "$dst")" = host ] && args=(-V)
    [ "$(basename "$dst")" = nslookup ] && args=(-version)
    [ "$(basename "$dst")" = ss ] && args=(-V)
    out=$(env -i LD_LIBRARY_PATH= "$tools/lib64/ld-linux-x86-64.so.2" --library-path "$tools/lib/x86_64-linux-gnu:$tools/usr/lib/x86_64-linux-gnu" "$tools$dst" "${args[@]}" 2>&1) || case "$(basename "$dst")" in nc | iperf | getent) ;; *) echo "$dst does not run from the tools layer: $out" >&2; exit 1 ;; esac
  done

  # Every upstream image sets PATH (Dockerfile base images do); without it runc finds no `sh`.
  PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  pack() { # pack TAG ROOTFS... -- [umoci config args...]: one layer per ROOTFS, in order
    local tag=$1
    shift
    umoci new --image "$work/oci:$tag"
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
      tar --format=pax --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$1" -cf "$work/layer.tar" .
      umoci raw add-layer --image "$work/oci:$tag" "$work/layer.tar"
      rm -f "$work/layer.tar"
      shift
    done
    shift
    umoci config --image "$work/oci:$tag" --architecture amd64 --os linux --config.env "$PATH_ENV" "$@"
  }
  agnhost_rootfs() { # agnhost_rootfs DIR: what agnhost adds to the busybox and tools layers
    mkdir -p "$1/etc"
    cp "$BIN/agnhost" "$1/agnhost"
    ln -s agnhost "$1/agnhost-2"
    mkdir -p "$1/uploads"
    cp "$MOD/test/images/agnhost/porter/localhost.crt" "$MOD/test/images/agnhost/porter/localhost.key" "$1/"
    chmod 0644 "$1/localhost.crt" "$1/localhost.key"
    cp "$base/etc/passwd" "$base/etc/group" "$1/etc/"
    echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$1/etc/passwd"
    printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$1/etc/group"
  }

  while read -r ref recipe extra; do
    tag=$(layout_tag "$ref")
    dir="$work/rootfs-$tag"
    case "$recipe" in
      busybox) pack "$tag" "$base" -- --config.cmd sh ;;
      agnhost)
        agnhost_rootfs "$dir"
        pack "$tag" "$base" "$tools" "$dir" -- --config.entrypoint /agnhost --config.cmd pause \
          --config.exposedports 80/tcp --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 9376/tcp --config.exposedports 5000/tcp
        ;;
      agnhost-web)
        agnhost_rootfs "$dir"
        cp "$MOD/test/images/$extra/html/"* "$dir/"
        chmod 0644 "$dir"/*.json "$dir"/*.jpg
        pack "$tag" "$base" "$tools" "$dir" -- --config.entrypoint /agnhost --config.cmd test-webserver --config.exposedports 80/tcp
        ;;
      pause)
        mkdir -p "$dir"
        gcc -Os -static -DVERSION="v$VERSION" -o "$dir/pause" "$MOD/build/pause/linux/pause.c"
        strip "$dir/pause"
        pack "$tag" "$dir" -- --config.entrypoint /pause --config.user 65535:65535
        ;;
      nonewprivs)
        mkdir -p "$dir/usr/local/bin"
        (cd "$CACHE/e2e-src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/usr/local/bin/nnp" k8s.io/kubernetes/test/images/nonewprivs)
        chmod 4755 "$dir/usr/local/bin/nnp"
        pack "$tag" "$base" "$dir" -- --config.cmd nnp
        ;;
      nonroot) pack "$tag" "$base" -- --config.user 1234 --config.cmd sh ;;
      SUBSTITUTE-web)
        mkdir -p "$dir$extra"
        echo '<html><body><h1>It works!</h1></body></html>' >"$dir$extra/index.html"
        pack "$tag" "$base" "$dir" -- --config.entrypoint /bin/busybox --config.cmd httpd --config.cmd -f --config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd "$extra" \
          --config.exposedports 80/tcp
        ;;
      nginx) pack "$tag" "$base" "$NGINX" -- --config.cmd nginx --config.cmd -g --config.cmd 'daemon off;' --config.exposedports 80/tcp --config.stopsignal SIGQUIT ;;
      dnsutils) pack "$tag" "$base" "$tools" -- --config.cmd bash ;;
      sample-apiserver)
        mkdir -p "$dir"
        cp "$BIN/sample-apiserver" "$dir/sample-apiserver"
        pack "$tag" "$base" "$dir" -- --config.entrypoint /sample-apiserver
        ;;
      SUBSTITUTE-etcd)
        # Debian's etcd-server at the path the spec runs (/usr/local/bin/etcd), with the shared
        # libraries ldd names and the dynamic loader.
        mkdir -p "$dir/usr/local/bin"
        cp -L /usr/bin/etcd "$dir/usr/local/bin/etcd"
        ldd /usr/bin/etcd | awk '/=> \// {print $3} /^[ \t]*\/lib64\// {print $1}' | while read -r lib; do
          mkdir -p "$dir$(dirname "$lib")"
          cp -L "$lib" "$dir$lib"
        done
        out=$(env -i "$dir/lib64/ld-linux-x86-64.so.2" --library-path "$dir/lib/x86_64-linux-gnu:$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/local/bin/etcd" --version 2>&1) ||
          { echo "etcd does not run from its image: $out" >&2; exit 1; }
        pack "$tag" "$base" "$dir" -- --config.entrypoint /usr/local/bin/etcd
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
