#!/usr/bin/env bash
# The main job on built-in defaults: installs what is missing, builds banger
# in release mode, and runs a command in a fresh VM. The first run pulls the
# default kernel and builds the default image (cached afterwards).
# Usage: ./scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

ensure_deps
use_cached_target_dir
echo "==> building banger (release)"
cargo build --release --locked --bin banger --bin bangerd
echo "==> building the guest agent (static, baked into new images)"
./scripts/build-agent.sh
bin="$CARGO_TARGET_DIR/release"

echo "==> banger doctor"
"$bin/banger" doctor || true
echo "==> banger vm run --rm -- cat /proc/version"
"$bin/banger" vm run --rm -- cat /proc/version

cat <<MSG

banger is built in $bin. Put it on your PATH with
  export PATH="$bin:\$PATH"
The daemon keeps running in the background; stop it with: banger daemon stop
MSG
