#!/usr/bin/env bash
# The main job on built-in defaults: installs what is missing, builds
# banger's four binaries (banger, bangerd, banger-helper in release mode,
# and the static guest agent), installs them on PATH with their man pages
# and shell completions, checks the host with `banger doctor` (stopping on
# a FAIL) and runs a command in a fresh VM. The first run pulls the default
# kernel and builds the default image (cached afterwards).
#
# Where it installs: as root, /usr/local/bin and /usr/local/share (man
# pages, completions); as a user, ~/.local/bin and ~/.local/share.
# BANGER_PREFIX=DIR installs into DIR/bin and DIR/share instead.
# bangerd finds the agent beside itself (banger-agent), and
# `sudo banger system install` finds banger-helper beside banger.
#
# Usage: ./scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

ensure_deps
use_cached_target_dir
echo "==> building banger, bangerd and banger-helper (release)"
cargo build --release --locked --bin banger --bin bangerd --bin banger-helper
echo "==> building the guest agent (static, baked into new images)"
agent=$(./scripts/build-agent.sh)
release="$CARGO_TARGET_DIR/release"

if [ -n "${BANGER_PREFIX:-}" ]; then
  prefix=$BANGER_PREFIX
elif [ "$(id -u)" -eq 0 ]; then
  prefix=/usr/local
else
  prefix="$HOME/.local"
fi
bindir="$prefix/bin"
share="$prefix/share"

# install_file SRC DST: copies through a temporary name and a rename, so a
# running copy of DST (a daemon) is never written over in place.
install_file() {
  cp "$1" "$2.new.$$"
  chmod 0755 "$2.new.$$"
  mv -f "$2.new.$$" "$2"
}

echo "==> installing banger, bangerd, banger-helper and banger-agent into $bindir"
mkdir -p "$bindir"
for b in banger bangerd banger-helper; do
  install_file "$release/$b" "$bindir/$b"
done
install_file "$agent" "$bindir/banger-agent"
banger="$bindir/banger"

echo "==> installing man pages and shell completions under $share"
"$banger" man --dir "$share/man/man1"
if [ "$prefix" = "$HOME/.local" ]; then
  # bash-completion's per-user directory.
  bash_dir="${BASH_COMPLETION_USER_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion}/completions"
else
  bash_dir="$share/bash-completion/completions"
fi
mkdir -p "$bash_dir" "$share/zsh/site-functions" "$share/fish/vendor_completions.d"
"$banger" completions bash >"$bash_dir/banger"
"$banger" completions zsh >"$share/zsh/site-functions/_banger"
"$banger" completions fish >"$share/fish/vendor_completions.d/banger.fish"

echo "==> banger doctor"
# Every FAIL doctor reports is something `vm create` needs (a tool, disk
# space); WARNs (no KVM, no root helper) leave it working. doctor exits 1
# on a FAIL, 3 when no daemon can be started.
status=0
"$banger" doctor || status=$?
if [ "$status" -ne 0 ]; then
  if [ "$status" -eq 1 ]; then
    echo "error: banger doctor reported a FAIL above; fix it (the fix: line says how)" \
      "and run ./scripts/quickstart.sh again" >&2
  else
    echo "error: banger doctor could not run (exit $status)" >&2
  fi
  exit "$status"
fi

echo "==> banger vm run --rm -- cat /proc/version"
"$banger" vm run --rm -- cat /proc/version

# Would a new login shell find banger? (As a user, Debian's ~/.profile adds
# ~/.local/bin to PATH when it exists; a home without that ~/.profile does not.)
# shellcheck disable=SC2016 # $PATH is the login shell's, not ours.
login_path=$(env -i HOME="$HOME" USER="$(id -un)" SHELL=/bin/bash bash -lc 'printf %s "$PATH"' 2>/dev/null || true)
found=yes
case ":$login_path:" in
  *":$bindir:"*) ;;
  *) found=no ;;
esac

if [ "$(id -u)" -eq 0 ]; then
  helper_cmd="banger system install"
else
  helper_cmd="sudo $banger system install"
fi
cat <<MSG

banger is installed in $bindir (man banger, man banger-vm-create; completions
for bash, zsh and fish). The daemon keeps running in the background; stop it
with: banger daemon stop. To have systemd run it: banger daemon install --user.
Bridged networking (own addresses, NAME.vm names) needs the root helper:
  $helper_cmd
MSG
if [ "$found" = no ]; then
  cat <<MSG

warning: a new login shell will not find banger: $bindir is not on its PATH.
Add it, e.g.:
  echo 'export PATH="$bindir:\$PATH"' >> ~/.profile
MSG
fi
