#!/usr/bin/env bash
# Builds the layer of a real nginx image from this machine's Debian packages: `apt-get download`
# of nginx and nginx-common (no install on the host), the binary with the shared libraries `ldd`
# names and the dynamic loader (as the conformance images' tools layer), mime.types, and a
# configuration like upstream's official image (nginx.conf + conf.d/default.conf serving
# /usr/share/nginx/html on port 80, user nginx (101), pid /var/run/nginx.pid, access log to
# stdout and errors to stderr). The layer goes on top of the busybox rootfs (build-busybox.sh):
# critest's and the conformance suite's nginx images are these two layers, run as upstream's are
# with `nginx -g 'daemon off;'` (the master process is PID 1, in the foreground).
# Cached per package version under $CELLO_CACHE.
#   scripts/k8s/build-nginx.sh   -> prints the layer's directory
set -euo pipefail
CACHE_ROOT=${CELLO_CACHE:-/var/cache/cello}/nginx
for c in apt-get apt-cache dpkg-deb ldd flock; do
  command -v "$c" >/dev/null || { echo "$c is required; install it with:  apt-get install -y $(case $c in flock) echo util-linux ;; ldd) echo libc-bin ;; dpkg-deb) echo dpkg ;; apt-*) echo apt ;; esac)" >&2; exit 1; }
done
version=$(apt-cache policy nginx | awk '/Candidate:/ {print $2}')
# A fresh machine's package lists may be empty; root can fetch them.
if { [ -z "$version" ] || [ "$version" = "(none)" ]; } && [ "$(id -u)" = 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -q >&2
  version=$(apt-cache policy nginx | awk '/Candidate:/ {print $2}')
fi
if [ -z "$version" ] || [ "$version" = "(none)" ]; then echo "apt knows no nginx package: run  apt-get update" >&2; exit 1; fi
stamp=$( (echo "$version"; cat "$0") | sha256sum | cut -c1-16)
OUT="$CACHE_ROOT/$version-$stamp"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9
if [ -d "$OUT" ]; then echo "$OUT"; exit 0; fi

work="$CACHE_ROOT/work"
rm -rf "$work" && mkdir -p "$work/debs" "$work/x" "$work/layer"
# apt's sandbox user cannot write a root-only directory; the download is checked by apt either way.
chmod 0755 "$work/debs"
(cd "$work/debs" && apt-get download -q "nginx=$version" "nginx-common=$version" >&2) || { echo "apt-get download nginx=$version nginx-common=$version failed" >&2; exit 1; }
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
l="$work/layer"
mkdir -p "$l/usr/sbin" "$l/etc/nginx/conf.d" "$l/usr/share/nginx/html" "$l/var/log/nginx" "$l/var/cache/nginx" "$l/var/lib/nginx" "$l/var/run" "$l/run"
cp "$work/x/usr/sbin/nginx" "$l/usr/sbin/nginx"
cp "$work/x/etc/nginx/mime.types" "$l/etc/nginx/"
ldd "$work/x/usr/sbin/nginx" >"$work/ldd.txt" 2>&1 || { cat "$work/ldd.txt" >&2; exit 1; }
if grep -q 'not found' "$work/ldd.txt"; then
  echo "nginx needs shared libraries this machine lacks (install them, e.g. apt-get install -y libssl3 libpcre2-8-0 zlib1g libcrypt1):" >&2
  grep 'not found' "$work/ldd.txt" >&2
  exit 1
fi
awk '/=> \// {print $3} /^[ \t]*\/lib64\// {print $1}' "$work/ldd.txt" | sort -u | while read -r lib; do
  mkdir -p "$l$(dirname "$lib")"
  cp -L "$lib" "$l$lib"
done
# Upstream's image: user nginx (101:101); logs to the container's stdout and stderr.
printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$l/etc/passwd"
printf 'root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnginx:x:101:\nnobody:x:65534:\n' >"$l/etc/group"
ln -s /dev/stdout "$l/var/log/nginx/access.log"
ln -s /dev/stderr "$l/var/log/nginx/error.log"
cat >"$l/etc/nginx/nginx.conf" <<'CONF'
user  nginx;
worker_processes  1;

error_log  /var/log/nginx/error.log warn;
pid        /var/run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    access_log  /var/log/nginx/access.log  main;

    sendfile        on;
    keepalive_timeout  65;

    include /etc/nginx/conf.d/*.conf;
}
CONF
cat >"$l/etc/nginx/conf.d/default.conf" <<'CONF'
server {
    listen       80;
    server_name  localhost;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
CONF
cat >"$l/usr/share/nginx/html/index.html" <<'HTML'
<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
HTML
cat >"$l/usr/share/nginx/html/50x.html" <<'HTML'
<!DOCTYPE html>
<html>
<head>
<title>Error</title>
</head>
<body>
<h1>An error occurred.</h1>
</body>
</html>
HTML
# nginx must start from the layer alone (no library left out) and accept its configuration.
out=$(env -i "$l/lib64/ld-linux-x86-64.so.2" --library-path "$l/lib/x86_64-linux-gnu:$l/usr/lib/x86_64-linux-gnu" "$l/usr/sbin/nginx" -V 2>&1) || { echo "nginx does not run from its layer: $out" >&2; exit 1; }
echo "nginx $version: $(echo "$out" | head -1)" >&2
rm -rf "$work/debs" "$work/x" "$work/ldd.txt"
mv "$l" "$OUT"
rm -rf "$work"
echo "$OUT"
