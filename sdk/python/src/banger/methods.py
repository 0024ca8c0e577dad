"""The daemon methods the SDK calls and the parameters it may send to
each. ``tests/test_schema.py`` checks this table against the checked-in
method schemas (``docs/schemas/rpc.json``, generated from the daemon's
wire types): every method exists, every parameter is one the method
takes, and every parameter the method requires is here. A request whose
parameters are not in the table is refused before it is sent.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional

PARAMS: Dict[str, FrozenSet[str]] = {
    "ping": frozenset(),
    "daemon.status": frozenset(),
    "vm.create.begin": frozenset(
        {
            "name",
            "image",
            "kernel",
            "vcpus",
            "memory_mib",
            "disk_size_bytes",
            "network",
            "egress",
            "publish",
            "from_snapshot",
            "vmm",
            "wait_for",
            "start",
            "workspace",
        }
    ),
    "vm.show": frozenset({"name"}),
    "vm.list": frozenset(),
    "vm.start": frozenset({"name"}),
    "vm.stop": frozenset({"name"}),
    "vm.delete": frozenset({"name", "force"}),
    "vm.ports": frozenset({"name"}),
    "vm.exec.begin": frozenset({"name", "argv", "env", "cwd"}),
    "vm.exec.io": frozenset({"exec_id", "stdin", "stdin_eof", "signal", "wait_ms"}),
    "vm.cp": frozenset({"name", "to_guest", "host_path", "guest_path", "recursive"}),
    "vm.snapshot.begin": frozenset({"name", "snapshot"}),
    "vm.fork.begin": frozenset({"name", "new_name", "count"}),
    "vm.workspace.push": frozenset({"name", "host_dir", "guest_path"}),
    "vm.workspace.diff": frozenset({"name"}),
    "vm.workspace.apply": frozenset({"name"}),
    "vm.workspace.sync": frozenset({"name"}),
    "snapshot.delete": frozenset({"name"}),
    "op.status": frozenset({"op_id", "wait_ms"}),
    "op.cancel": frozenset({"op_id"}),
    "events.subscribe": frozenset({"since", "epoch"}),
}


def check_params(method: str, params: Optional[Dict[str, Any]]) -> None:
    """Raises ``ValueError`` for a method or parameter the SDK does not
    know (a typo here would otherwise reach the daemon as ``bad_params``)."""
    known = PARAMS.get(method)
    if known is None:
        raise ValueError(f"the SDK does not call {method!r}")
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ValueError(f"{method}: unknown parameters {unknown}")
