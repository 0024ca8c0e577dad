# shellcheck shell=bash
# Installs what building and testing banger needs on Debian, idempotently:
# nothing is fetched when everything is already there. Sourced by
# scripts/quickstart.sh and scripts/test.sh.

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_ensure PKG...: installs the packages that are not installed yet.
# Twice at most: installing one package can remove another of the list
# (qemu-system-x86 7.2 removes a newer qemu-utils from backports), which
# the second pass puts back in a version that fits.
apt_ensure() {
  local pass pkg missing
  for pass in 1 2; do
    missing=()
    for pkg in "$@"; do
      if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
      fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    [ "$pass" -eq 1 ] && as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  done
}

# The oldest Rust banger builds with (rust-version in Cargo.toml).
BANGER_MIN_RUST=1.85

rust_ok() {
  command -v cargo >/dev/null 2>&1 || return 1
  local v
  v=$(rustc --version 2>/dev/null | awk '{print $2}')
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$BANGER_MIN_RUST" "$v" | sort -V | head -n1)" = "$BANGER_MIN_RUST" ]
}

# Uses the Rust toolchain on PATH (e.g. rustup's) when it is new enough,
# otherwise Debian's packaged one (rustc-web and friends, Rust 1.85 on
# bookworm).
ensure_rust() {
  [ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
  if rust_ok && cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    return 0
  fi
  if rust_ok; then
    # A rustup toolchain without the components: add them if we can.
    if command -v rustup >/dev/null 2>&1; then
      rustup component add rustfmt clippy >/dev/null 2>&1 || true
    fi
    if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
      return 0
    fi
  fi
  apt_ensure rustc-web cargo-web rust-web-clippy rustfmt-web
  export PATH="/usr/bin:$PATH"
  rust_ok || { echo "error: no Rust >= $BANGER_MIN_RUST available" >&2; return 1; }
}

# Everything the build and the VMs use (and most tests): QEMU and qemu-img
# (the VMM and copy-on-write disks), mmdebstrap and e2fsprogs (images),
# the OpenSSH client (guest access), iproute2 and nftables (banger-helper's
# bridge, TAPs and NAT; nft also filters a user-mode VM's namespace),
# iptables (the helper's chain on hosts whose FORWARD policy is DROP, and
# the test that uninstall restores the firewall), passt (its pasta connects
# a user-mode VM's namespace to the outside), python3 (the bridged test's "outside" server),
# ShellCheck (the lint gate of scripts/test.sh), man-db and bash-completion
# (the man pages and completions quickstart installs).
ensure_deps() {
  apt_ensure build-essential pkg-config git sqlite3 util-linux procps ca-certificates \
    binutils qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client \
    iproute2 nftables iptables passt python3 shellcheck man-db bash-completion
  check_tools "$BANGER_TOOLS"
  ensure_rust
}

# What only the test suite uses, besides ensure_deps: docker-registry,
# skopeo, umoci and apache2-utils' htpasswd (crates/oci's tests: a registry
# on loopback, images built and pushed to it, a password file), zstd
# (zstd-compressed layers in crates/image's tests), busybox-static (the
# busybox image the end-to-end OCI test pushes and boots), btrfs-progs
# and xfsprogs (crates/daemon's reflink tests make a btrfs and an XFS in a
# file and loop-mount them), python3-pytest (the Python SDK's tests,
# sdk/python, run by crates/banger/tests/sdk_python.rs), tmux (a terminal
# for `banger tui` in crates/banger/tests/tui_e2e.rs). Debian's
# docker-registry package starts a registry on every interface (port 5000)
# where systemd runs; the tests start their own, so when this installs the
# package it also stops and disables that service.
ensure_test_deps() {
  ensure_deps
  local had_registry=0
  if dpkg-query -W -f='${Status}' docker-registry 2>/dev/null | grep -q 'install ok installed'; then
    had_registry=1
  fi
  apt_ensure docker-registry skopeo umoci apache2-utils zstd busybox-static \
    btrfs-progs xfsprogs python3-pytest tmux
  if [ "$had_registry" -eq 0 ] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-enabled --quiet docker-registry 2>/dev/null; then
    as_root systemctl disable --now docker-registry
  fi
  check_tools "$BANGER_TEST_TOOLS"
  ensure_mcp_client
}

# The MCP client of crates/banger/tests/mcp_e2e.rs: the `mcp` package,
# with pip, in a virtual environment in the cache (made once; checked each
# time). Needs a Python 3.10 or newer and its venv module.
ensure_mcp_client() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/banger/mcp-venv"
  if ! "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
    python3 -m venv "$venv" 2>/dev/null || {
      apt_ensure python3-venv
      python3 -m venv "$venv"
    }
    "$venv/bin/pip" install -q 'mcp==2.3.0'
  fi
  "$venv/bin/python" -c 'import mcp' ||
    { echo "error: no MCP client in $venv" >&2; return 1; }
}

# TOOL:PACKAGE for every program banger, most tests and its scripts run.
# An installed package does not prove its programs are there: installing
# qemu-system-x86 from backports can remove a stock qemu-utils' qemu-img.
BANGER_TOOLS="qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86
  mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs resize2fs:e2fsprogs
  ssh:openssh-client ssh-keygen:openssh-client ip:iproute2 nft:nftables
  iptables:iptables iptables-save:iptables
  python3:python3 sqlite3:sqlite3 cc:build-essential pkg-config:pkg-config
  git:git readelf:binutils apt-get:apt setsid:util-linux unshare:util-linux
  mount:mount pasta:passt
  shellcheck:shellcheck man:man-db"

# TOOL:PACKAGE for the programs only tests run (ensure_test_deps).
BANGER_TEST_TOOLS="docker-registry:docker-registry skopeo:skopeo umoci:umoci
  htpasswd:apache2-utils zstd:zstd busybox:busybox-static
  mkfs.btrfs:btrfs-progs mkfs.xfs:xfsprogs pytest-3:python3-pytest
  tmux:tmux"

# Finds TOOL on PATH or in the sbin directories (ip and nft live there,
# and a user's PATH may not have them).
have_tool() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# check_tools LIST: fails, naming each missing program and its package,
# when a program of LIST (TOOL:PACKAGE words) is not there (exits: deps.sh
# is sourced by scripts that cannot go on without them).
check_tools() {
  local entry tool pkg absent=0
  for entry in $1; do
    tool=${entry%%:*}
    pkg=${entry#*:}
    if ! have_tool "$tool"; then
      echo "error: $tool (package $pkg) is missing after installing packages;" \
        "another package may have removed it (as qemu-system-x86 from backports" \
        "removes qemu-img); fix: apt-get install --reinstall $pkg" >&2
      absent=1
    fi
  done
  if [ "$absent" -ne 0 ]; then
    echo "error: programs banger needs are missing (see above)" >&2
    exit 1
  fi
}

# Build outputs live in the user's cache so a fresh clone builds fast.
use_cached_target_dir() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/banger/cargo-target}"
}
