#!/usr/bin/env bash
# The main job on built-in defaults: installs what is missing, builds banger
# in release mode and talks to the daemon, which the CLI starts on demand.
# Usage: ./scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

ensure_deps
use_cached_target_dir
echo "==> building banger (release)"
cargo build --release --locked --bin banger --bin bangerd
bin="$CARGO_TARGET_DIR/release"

echo "==> banger ping"
"$bin/banger" ping
echo "==> banger daemon status"
"$bin/banger" daemon status

cat <<MSG

banger is built in $bin. Put it on your PATH with
  export PATH="$bin:\$PATH"
The daemon keeps running in the background; stop it with: banger daemon stop
MSG
