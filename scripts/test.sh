#!/usr/bin/env bash
# Runs banger's whole test suite: formatting, lints (clippy, and ShellCheck
# on scripts/*.sh and .ci/run) and every test (unit, integration against
# the real binaries, golden protocol snapshots).
# Installs what it needs first. Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh

ensure_test_deps
use_cached_target_dir
echo "==> $(cargo --version), target dir $CARGO_TARGET_DIR"

echo "==> shellcheck scripts/*.sh .ci/run"
shellcheck -x scripts/*.sh .ci/run
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# No doc-tests: the crates have none, and their empty runs would close the log.
set +e
cargo test --workspace --locked --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
