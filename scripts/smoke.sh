#!/usr/bin/env bash
# Smoke test: walks banger's main commands against a fresh home, in a few
# minutes once the kernel and the default image are cached: ping, doctor,
# kernel list, image list, vm create, list/show --json, exec, ssh, cp,
# stats, ports, stop, start, snapshot, fork, delete, ops.
#
# Run by hand (CI runs the VM end-to-end tests instead), after
# ./scripts/quickstart.sh or a build:
#
#   ./scripts/smoke.sh                         # the banger on PATH
#   BANGER=target/release/banger ./scripts/smoke.sh
#
# HOME and the XDG config, data, state and runtime directories are a new
# temporary directory; XDG_CACHE_HOME stays yours (default ~/.cache), so the
# cached kernel package and image base are reused, not fetched again. The
# script starts its own daemon and, on any exit, deletes its VMs, stops
# that daemon and removes the directory. Exits 0 when every step passed.
set -euo pipefail

banger=${BANGER:-$(command -v banger || true)}
if [ -z "$banger" ] || [ ! -x "$banger" ]; then
  echo "error: no banger binary: run ./scripts/quickstart.sh or set BANGER=PATH" >&2
  exit 2
fi
banger=$(cd "$(dirname "$banger")" && pwd)/$(basename "$banger")
command -v python3 >/dev/null || { echo "error: python3 is needed to read --json output" >&2; exit 2; }

cache_home=${XDG_CACHE_HOME:-$HOME/.cache}
work=$(mktemp -d "${TMPDIR:-/tmp}/banger-smoke.XXXXXX")
mkdir -m 0700 "$work/run"
export HOME="$work/home" XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
export XDG_STATE_HOME="$work/state" XDG_RUNTIME_DIR="$work/run" XDG_CACHE_HOME="$cache_home"
mkdir -p "$HOME"
vm=smoke
fork=smoke-fork

cleanup() {
  local status=$?
  set +e
  if [ -S "$XDG_RUNTIME_DIR/banger/bangerd.sock" ]; then
    for name in "$fork" "$vm"; do
      "$banger" vm kill "$name" >/dev/null 2>&1
      "$banger" vm delete "$name" >/dev/null 2>&1 || "$banger" vm delete --force "$name" >/dev/null 2>&1
    done
    "$banger" daemon stop >/dev/null 2>&1
  fi
  rm -rf "$work"
  if [ "$status" -eq 0 ]; then
    echo "smoke: all steps passed in $SECONDS s"
  else
    echo "smoke: FAILED (exit $status) after $SECONDS s" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME CMD...: runs CMD, prints its output under a header.
step() {
  local name=$1
  shift
  echo "==> $name"
  "$@"
}

# json_check EXPR: reads JSON on stdin; fails unless the Python expression
# EXPR (over `d`) is true.
json_check() {
  python3 -c '
import json, sys
d = json.load(sys.stdin)
ok = eval(sys.argv[1])
if not ok:
    print("check failed:", sys.argv[1], "on", json.dumps(d)[:500], file=sys.stderr)
sys.exit(0 if ok else 1)' "$1"
}

b() { "$banger" "$@"; }

echo "smoke: $banger, home $work, cache $cache_home"
step "ping" b ping
step "doctor" b doctor
step "kernel list" b kernel list
step "image list" b image list
step "vm create $vm" b vm create --name "$vm"
echo "==> vm list --json"
b vm list --json | json_check 'any(v["name"] == "smoke" for v in d)'
echo "==> vm show --json"
b vm show "$vm" --json | json_check 'd["name"] == "smoke" and d["state"] == "running"'
echo "==> vm exec"
out=$(b vm exec "$vm" -- uname -s)
[ "$out" = Linux ] || { echo "vm exec printed '$out', not Linux" >&2; exit 1; }
step "vm ssh -- true" b vm ssh "$vm" -- true
echo "==> vm cp (in and out)"
printf 'smoke %s\n' "$RANDOM" >"$work/in.txt"
b vm cp "$work/in.txt" "$vm:/root/in.txt"
b vm cp "$vm:/root/in.txt" "$work/out.txt"
cmp "$work/in.txt" "$work/out.txt"
echo "==> vm stats --json"
b vm stats "$vm" --json | json_check 'isinstance(d, dict) and len(d) > 0'
step "vm ports" b vm ports "$vm"
step "vm stop" b vm stop "$vm"
b vm show "$vm" --json | json_check 'd["state"] == "stopped"'
step "vm start" b vm start "$vm"
b vm show "$vm" --json | json_check 'd["state"] == "running"'
step "vm snapshot" b vm snapshot "$vm" --name smoke-s1
step "snapshot list" b snapshot list
step "vm fork" b vm fork "$vm" --name "$fork"
out=$(b vm exec "$fork" -- cat /root/in.txt)
[ "$out" = "$(cat "$work/in.txt")" ] || { echo "the fork has not the VM's file: '$out'" >&2; exit 1; }
step "vm stop $fork" b vm stop "$fork"
step "vm delete $fork" b vm delete "$fork"
step "vm stop $vm" b vm stop "$vm"
step "vm delete $vm" b vm delete "$vm"
b vm list --json | json_check 'not any(v["name"] in ("smoke", "smoke-fork") for v in d)'
step "ops" b ops
b ops --json | json_check 'isinstance(d, list) and len(d) > 0'
