#!/bin/sh
# shellcheck disable=SC1091,SC2015 # /etc/os-release is the target's own; `A && B || die` is meant
# Cello cell image installer ("bring your own image").
#
# Turns a plain Debian, Ubuntu or Amazon Linux machine (or image build) into a Cello cell
# image: runc, the cell-agent bundle (checksum verified), a first-boot job that reads the cell's
# bootstrap from the cloud's metadata service, a hardened systemd unit for the agent, and the
# kernel settings the agent needs. Safe to run again: it changes only what differs and says so.
#
# POSIX sh on purpose: it runs before anything else is installed.
set -eu

PROG=install.sh
PREFIX=/opt/cello
STATE_DIR=/var/lib/cello
CONF_DIR=/etc/cello
UNIT_DIR=/etc/systemd/system
BIN_LINK=/usr/local/bin/cell-agent
LIB_DIR=/usr/local/lib/cello

usage() {
  cat <<'EOF'
Usage: install.sh --bundle FILE [--sha256 HEX] [--metadata aws|gce|auto] [--skip-runc]

Installs Cello's cell agent onto this machine or image build (as root), on Debian 11+,
Ubuntu 20.04+ and Amazon Linux 2023 (amd64 or arm64):

  - runc, from the distribution's packages (apt-get / dnf)
  - nftables (`nft`: the cell's Service proxy and hostPorts), from the distribution's packages
  - the agent bundle FILE (cell-agent-VERSION-linux-ARCH.tar.gz from `npm run package:agent`)
    into /opt/cello/agent/VERSION, after checking its SHA-256 against --sha256 or FILE.sha256
    and every file inside against the bundle's SHA256SUMS; /usr/local/bin/cell-agent links to it
  - cello-first-boot.service: on the first boot, `cell-agent first-boot` reads the cell's
    bootstrap (controller CA, agent port, one-time token) from the user data of AWS IMDSv2 or
    the GCE metadata server and writes /etc/cello/agent.env and /var/lib/cello/bootstrap/
  - cell-agent.service: restarts on failure, starts after the network is online, and leaves
    the pod's units running when the agent itself restarts
  - kernel settings: the overlay module and net.ipv4.ip_forward=1, at every boot

Nothing is started: the agent must bootstrap on the instance that runs the pod, not on the
machine that builds the image. Reboot (or `systemctl start cell-agent`) to start it.

Options:
  --bundle FILE     the agent bundle (required)
  --sha256 HEX      expected SHA-256 of FILE (default: read from FILE.sha256)
  --metadata WHICH  where the first boot reads user data: aws, gce, or auto (default auto:
                    decided from the machine's DMI vendor); written to /etc/cello/first-boot.env
  --skip-runc       do not install runc (you provide /usr/bin/runc or /usr/sbin/runc yourself)
  -h, --help        this help

Examples:
  sudo ./install.sh --bundle cell-agent-0.1.0-linux-amd64.tar.gz
  sudo ./install.sh --bundle /tmp/cell-agent.tar.gz --sha256 3f5c... --metadata aws

Check an installed image by hand: images/README.md ("Checking an image").
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

BUNDLE=
SHA256=
METADATA=auto
SKIP_RUNC=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --bundle) [ $# -ge 2 ] || die "--bundle needs a file"; BUNDLE=$2; shift 2 ;;
    --bundle=*) BUNDLE=${1#*=}; shift ;;
    --sha256) [ $# -ge 2 ] || die "--sha256 needs a value"; SHA256=$2; shift 2 ;;
    --sha256=*) SHA256=${1#*=}; shift ;;
    --metadata) [ $# -ge 2 ] || die "--metadata needs aws, gce or auto"; METADATA=$2; shift 2 ;;
    --metadata=*) METADATA=${1#*=}; shift ;;
    --skip-runc) SKIP_RUNC=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ---------------------------------------------------------------- checks before any change
[ "$(id -u)" = 0 ] || die "run as root (it installs packages, systemd units and kernel settings)"
[ -n "$BUNDLE" ] || die "--bundle: required (the cell-agent-VERSION-linux-ARCH.tar.gz from 'npm run package:agent'; see --help)"
[ -f "$BUNDLE" ] || die "--bundle: no such file: $BUNDLE"
case "$METADATA" in aws|gce|auto) ;; *) die "--metadata: expected aws, gce or auto, got '$METADATA'" ;; esac

[ -r /etc/os-release ] || die "unsupported OS: /etc/os-release is missing (supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023)"
OS_ID=$(. /etc/os-release && printf '%s' "${ID:-}")
OS_VERSION=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
OS_MAJOR=${OS_VERSION%%.*}
case "$OS_ID" in
  debian) [ -n "$OS_MAJOR" ] && [ "$OS_MAJOR" -ge 11 ] 2>/dev/null || die "unsupported OS: Debian ${OS_VERSION:-(no VERSION_ID: testing/sid)}; supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023"; PKG=apt ;;
  ubuntu) [ -n "$OS_MAJOR" ] && [ "$OS_MAJOR" -ge 20 ] 2>/dev/null || die "unsupported OS: Ubuntu $OS_VERSION; supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023"; PKG=apt ;;
  amzn) case "$OS_VERSION" in 2023) PKG=dnf ;; 2) die "unsupported OS: Amazon Linux 2 has glibc 2.26, older than the 2.28 the bundled Node 20 needs; use Amazon Linux 2023" ;; *) die "unsupported OS: Amazon Linux $OS_VERSION; supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023" ;; esac ;;
  *) die "unsupported OS: ID=${OS_ID:-?} VERSION_ID=${OS_VERSION:-?} in /etc/os-release; supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023" ;;
esac

case "$(uname -m)" in
  x86_64|amd64) ARCH=amd64 ;;
  aarch64|arm64) ARCH=arm64 ;;
  *) die "unsupported CPU architecture: $(uname -m) (supported: x86_64, aarch64)" ;;
esac

[ -d /usr/lib/systemd/system ] || [ -d /lib/systemd/system ] || die "systemd is required (no /lib/systemd/system on this machine)"
for c in tar gzip sha256sum; do
  command -v "$c" >/dev/null 2>&1 || die "'$c' is required and missing"
done

# ---------------------------------------------------------------- helpers
CHANGED=0
# install_file MODE PATH: installs stdin at PATH when its content or mode differs.
install_file() {
  mode=$1 path=$2
  tmp=$(mktemp "${path}.cello-XXXXXX" 2>/dev/null) || { mkdir -p "$(dirname "$path")"; tmp=$(mktemp "${path}.cello-XXXXXX"); }
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c %a "$path")" = "$(stat -c %a "$tmp")" ]; then
    rm -f "$tmp"
    say "unchanged $path"
  else
    mv -f "$tmp" "$path"
    say "wrote $path"
    CHANGED=1
  fi
}

# install_default MODE PATH: like install_file, but never replaces an existing file (settings
# an operator may have edited).
install_default() {
  if [ -e "$2" ]; then
    cat >/dev/null
    say "kept $2 (exists; edit it or delete it to get the default)"
  else
    install_file "$1" "$2"
  fi
}

booted_with_systemd() { [ -d /run/systemd/system ]; }

# ---------------------------------------------------------------- runc
install_packages() {
  case "$PKG" in
    apt)
      export DEBIAN_FRONTEND=noninteractive
      # Only refresh the package lists when they do not know the package (fresh images).
      for p in "$@"; do
        if ! apt-cache show "$p" >/dev/null 2>&1; then apt-get update -q; break; fi
      done
      apt-get install -y -q --no-install-recommends "$@" ;;
    dnf) dnf install -y -q "$@" ;;
  esac
}

if [ "$SKIP_RUNC" = 1 ]; then
  command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || [ -x /usr/bin/runc ] || die "--skip-runc: no runc on this machine"
  say "runc: skipped (--skip-runc)"
elif command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || [ -x /usr/bin/runc ]; then
  say "runc: already installed"
else
  say "runc: installing from the $OS_ID packages"
  install_packages runc
  CHANGED=1
fi

# ---------------------------------------------------------------- nftables
# The agent programs the cell's Service proxy and hostPorts with `nft` (never the distribution's
# nftables.service, which stays as the distribution ships it: disabled on Debian and Ubuntu).
if command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; then
  say "nftables: already installed"
else
  say "nftables: installing from the $OS_ID packages"
  install_packages nftables
  CHANGED=1
fi

# ---------------------------------------------------------------- the agent bundle
if [ -z "$SHA256" ]; then
  [ -f "$BUNDLE.sha256" ] || die "no checksum for $BUNDLE: give --sha256 HEX or put $(basename "$BUNDLE").sha256 beside it"
  SHA256=$(cut -d' ' -f1 <"$BUNDLE.sha256")
fi
printf '%s' "$SHA256" | grep -Eq '^[0-9a-fA-F]{64}$' || die "--sha256: '$SHA256' is not a SHA-256 (64 hex digits)"
GOT=$(sha256sum "$BUNDLE" | cut -d' ' -f1)
[ "$GOT" = "$(printf '%s' "$SHA256" | tr 'A-F' 'a-f')" ] || die "checksum mismatch for $BUNDLE: expected $SHA256, got $GOT (corrupt or tampered download)"
say "bundle checksum ok ($GOT)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
tar -xzf "$BUNDLE" -C "$WORK" --no-same-owner
set -- "$WORK"/cell-agent-*-linux-*
[ $# = 1 ] && [ -d "$1" ] || die "$BUNDLE is not a cell-agent bundle (expected one top directory cell-agent-VERSION-linux-ARCH)"
SRC=$1
NAME=$(basename "$SRC")
BUNDLE_ARCH=${NAME##*-linux-}
VERSION=${NAME#cell-agent-}; VERSION=${VERSION%-linux-*}
[ "$BUNDLE_ARCH" = "$ARCH" ] || die "bundle is for $BUNDLE_ARCH, this machine is $ARCH: use cell-agent-$VERSION-linux-$ARCH.tar.gz"
[ -f "$SRC/SHA256SUMS" ] && [ -x "$SRC/bin/cell-agent" ] || die "$BUNDLE is not a cell-agent bundle (no SHA256SUMS or bin/cell-agent)"
( cd "$SRC" && sha256sum --quiet -c SHA256SUMS ) || die "files inside $BUNDLE do not match its SHA256SUMS"

DEST=$PREFIX/agent/$VERSION
if [ -f "$DEST/SHA256SUMS" ] && cmp -s "$DEST/SHA256SUMS" "$SRC/SHA256SUMS" && ( cd "$DEST" && sha256sum --quiet -c SHA256SUMS ) 2>/dev/null; then
  say "unchanged $DEST (cell-agent $VERSION)"
else
  mkdir -p "$PREFIX/agent"
  rm -rf "$DEST.new"
  cp -a "$SRC" "$DEST.new"
  chown -R 0:0 "$DEST.new"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
  say "installed cell-agent $VERSION into $DEST"
  CHANGED=1
fi
if [ "$(readlink "$PREFIX/agent/current" 2>/dev/null || true)" != "$VERSION" ]; then
  ln -sfn "$VERSION" "$PREFIX/agent/current"
  say "linked $PREFIX/agent/current -> $VERSION"
  CHANGED=1
fi
if [ "$(readlink "$BIN_LINK" 2>/dev/null || true)" != "$PREFIX/agent/current/bin/cell-agent" ]; then
  mkdir -p "$(dirname "$BIN_LINK")"
  ln -sfn "$PREFIX/agent/current/bin/cell-agent" "$BIN_LINK"
  say "linked $BIN_LINK"
  CHANGED=1
fi
"$BIN_LINK" --version >/dev/null || die "the installed agent does not run: $BIN_LINK --version failed"

# ---------------------------------------------------------------- directories
mkdir -p "$CONF_DIR" "$STATE_DIR" "$LIB_DIR"
chmod 0755 "$CONF_DIR"
chmod 0700 "$STATE_DIR"

# ---------------------------------------------------------------- kernel settings
# overlay: image layers are stacked with overlayfs; ip_forward: pod traffic is routed.
install_file 0644 /etc/modules-load.d/cello.conf <<'EOF'
# Cello cell agent: image layers are mounted with overlayfs.
overlay
EOF
install_file 0644 /etc/sysctl.d/90-cello.conf <<'EOF'
# Cello cell agent: pods' traffic is forwarded between the pod network and the instance's.
net.ipv4.ip_forward = 1
EOF

# ---------------------------------------------------------------- first boot
install_default 0644 "$CONF_DIR/first-boot.env" <<EOF
# Read by cello-first-boot.service (cell-agent first-boot --help). Where the cell's user data comes from:
#   aws: IMDSv2 (token, then user-data); gce: the metadata server's "user-data" attribute;
#   auto: aws or gce by the machine's DMI vendor (fails on anything else rather than guess).
CELLO_METADATA=$METADATA
# Metadata endpoints (EC2-compatible clouds and tests point these elsewhere).
CELLO_AWS_IMDS_ENDPOINT=http://169.254.169.254
CELLO_GCE_METADATA_ENDPOINT=http://metadata.google.internal
# The address the agent listens on (its port comes from the user data).
CELLO_AGENT_LISTEN_HOST=0.0.0.0
# How long to wait for the metadata service to answer at boot.
CELLO_METADATA_TIMEOUT_SECONDS=120
EOF

# The first boot is `cell-agent first-boot` (packages/cell-agent/src/bootstrap/first-boot.ts), so
# the user data is read by the same code as the agent's. Images installed by an older install.sh
# carry it as a script of their own: it goes, or it would outlive the agent it was written for.
if [ -e "$LIB_DIR/first-boot.mjs" ]; then
  rm -f "$LIB_DIR/first-boot.mjs"
  say "removed $LIB_DIR/first-boot.mjs (now cell-agent first-boot)"
  CHANGED=1
fi

install_file 0755 "$LIB_DIR/prepare-cgroups" <<'EOF'
#!/bin/sh
# cell-agent.service ExecStartPre, on cgroup v2 hosts only (no-op on v1 and hybrid hosts): enables
# the cpu, memory and pids controllers from the root down to the agent's cgroup parent
# /cello/pod, so each unit's cgroup under it has the interface files (memory.max, cpu.max,
# pids.max) that the agent writes whether or not the pod sets limits.
set -u
root=/sys/fs/cgroup
[ -f "$root/cgroup.controllers" ] || exit 0
dir=$root
for next in cello pod ""; do
  for c in cpu memory pids; do
    grep -qw "$c" "$dir/cgroup.controllers" 2>/dev/null || continue
    grep -qw "$c" "$dir/cgroup.subtree_control" 2>/dev/null && continue
    echo "+$c" >"$dir/cgroup.subtree_control" || echo "prepare-cgroups: could not enable $c in $dir" >&2
  done
  [ -n "$next" ] || break
  dir=$dir/$next
  mkdir -p "$dir"
done
EOF

install_file 0644 "$UNIT_DIR/cello-first-boot.service" <<EOF
# Cello: reads this cell's bootstrap from the cloud's metadata service, once.
[Unit]
Description=Cello cell first boot (bootstrap from instance user data)
Wants=network-online.target
After=network-online.target
Before=cell-agent.service
ConditionPathExists=!$STATE_DIR/bootstrap/done

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=-$CONF_DIR/first-boot.env
ExecStart=$BIN_LINK first-boot
# It only talks to the metadata service and writes two directories.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$CONF_DIR $STATE_DIR
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_CHOWN CAP_FOWNER
UMask=0077

[Install]
WantedBy=multi-user.target
EOF

install_file 0644 "$UNIT_DIR/cell-agent.service" <<EOF
# Cello cell agent: serves cello.cell.v1 over mTLS and runs this cell's pod under runc.
[Unit]
Description=Cello cell agent
Wants=network-online.target
After=network-online.target cello-first-boot.service
Requires=cello-first-boot.service
ConditionPathExists=$CONF_DIR/agent.env

[Service]
Type=simple
EnvironmentFile=$CONF_DIR/agent.env
# Until the controller has installed this cell's certificate the agent serves only the
# bootstrap service (one-time token from the user data); from then on only mTLS. A restarted
# agent reuses the certificate in its state directory. CELLO_AGENT_ARGS (unquoted: split into
# words) carries the agentConfig flags from the user data.
ExecStartPre=$LIB_DIR/prepare-cgroups
ExecStart=$BIN_LINK serve --listen \${CELLO_AGENT_LISTEN} --state-dir $STATE_DIR/agent --bootstrap-user-data $STATE_DIR/bootstrap/user-data.json \$CELLO_AGENT_ARGS
Restart=always
RestartSec=2
# The pod's units are runc containers in their own cgroups: when the agent restarts (crash or
# upgrade) they keep running and the agent re-adopts them, so only the agent's own process is
# stopped, and systemd hands the cgroup subtree to the agent.
KillMode=process
Delegate=yes
TimeoutStopSec=30
OOMScoreAdjust=-900
LimitNOFILE=1048576
TasksMax=infinity
# Hardening is limited to what the pod's containers do not inherit. The agent runs runc,
# mounts overlayfs and creates namespaces and cgroups, so it keeps root's capabilities.
# NoNewPrivileges, seccomp-based options (LockPersonality, RestrictRealtime, ProtectClock,
# SystemCallFilter), device policies and UMask are all inherited by every container, and
# would break pods that Kubernetes allows (setuid binaries, realtime scheduling, 0644 files
# in configMap volumes), so they are deliberately not set here.
ProtectSystem=full
ProtectHome=read-only
ProtectKernelModules=yes

[Install]
WantedBy=multi-user.target
EOF

# ---------------------------------------------------------------- enable (never start here)
enable_unit() {
  unit=$1
  if [ -L "/etc/systemd/system/multi-user.target.wants/$unit" ]; then
    say "unchanged: $unit enabled"
  else
    if command -v systemctl >/dev/null 2>&1; then
      systemctl enable "$unit" >/dev/null 2>&1 || { mkdir -p /etc/systemd/system/multi-user.target.wants; ln -sf "$UNIT_DIR/$unit" "/etc/systemd/system/multi-user.target.wants/$unit"; }
    else
      mkdir -p /etc/systemd/system/multi-user.target.wants
      ln -sf "$UNIT_DIR/$unit" "/etc/systemd/system/multi-user.target.wants/$unit"
    fi
    say "enabled $unit"
    CHANGED=1
  fi
}
enable_unit cello-first-boot.service
enable_unit cell-agent.service
if booted_with_systemd; then
  [ "$CHANGED" = 0 ] || systemctl daemon-reload
  modprobe overlay 2>/dev/null || say "warning: could not load the overlay module now (it loads at boot)"
  sysctl -q -p /etc/sysctl.d/90-cello.conf >/dev/null || say "warning: could not set net.ipv4.ip_forward now (it is set at boot)"
fi

if [ "$CHANGED" = 0 ]; then
  say "done: nothing to change (cell-agent $VERSION)"
else
  say "done: cell-agent $VERSION installed; it starts on the next boot of an instance launched by Cello"
fi
