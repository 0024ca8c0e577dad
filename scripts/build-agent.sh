#!/usr/bin/env bash
# Builds banger-agent, the guest agent, as a statically linked x86-64
# binary (guests' libc is not ours to choose), checks that it is static
# and prints its path. Honours CARGO_TARGET_DIR (else the cache dir of
# scripts/deps.sh).
#
#   scripts/build-agent.sh            # prints the binary's path on stdout
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/deps.sh
. "$here/deps.sh"
use_cached_target_dir
cd "$here/.."

target=x86_64-unknown-linux-gnu
# The explicit --target applies RUSTFLAGS to the agent only: build
# scripts and proc-macros stay dynamic host binaries. Debug info is
# stripped (9 MB -> 2.4 MB); symbols stay, so a panic still names its
# functions in the journal.
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static -C strip=debuginfo" \
  cargo build -p banger-agent --release --target "$target" >&2

bin="$CARGO_TARGET_DIR/$target/release/banger-agent"
[ -x "$bin" ] || { echo "error: $bin was not built" >&2; exit 1; }

# Static means no program interpreter (PT_INTERP). A static-pie binary
# still has a DYNAMIC segment (it relocates itself): that is fine.
if command -v readelf >/dev/null 2>&1; then
  if readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "error: $bin is dynamically linked (it has a program interpreter)" >&2
    exit 1
  fi
elif command -v ldd >/dev/null 2>&1; then
  # ldd exits non-zero on static binaries; its words are what count.
  out=$(ldd "$bin" 2>&1 || true)
  case "$out" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) echo "error: $bin is dynamically linked: $out" >&2; exit 1 ;;
  esac
else
  echo "error: neither readelf nor ldd is installed: cannot check $bin is static" >&2
  exit 1
fi

echo "$bin"
