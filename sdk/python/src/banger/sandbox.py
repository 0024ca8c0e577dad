"""Sandboxes: banger VMs as Python objects.

``with Sandbox() as sb:`` creates a VM (waiting for its guest agent, as
``banger vm create`` does) and deletes it on leaving the block, also when
the block raises, unless ``keep=True``.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .client import BangerError, Client, without_none

#: Called with each chunk of a stream as it arrives.
ChunkSink = Callable[[bytes], None]

# How long one `vm.exec.io` call waits for output (ms).
EXEC_POLL_MS = 1000
# Stdin bytes per vm.exec.io call: base64 of it stays well inside the
# daemon's 1 MiB request line.
STDIN_CALL_BYTES = 512 << 10


@dataclass
class ExecResult:
    """How a command ended. ``stdout``/``stderr`` hold what was not given
    to a callback (empty when one was); ``*_dropped`` count bytes the
    daemon dropped for a reader slower than the command (it holds at most
    16 MiB of a stream)."""

    exit_code: Optional[int]
    signal: Optional[str]
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class ExecTimeout(BangerError):
    """A command ran past its ``timeout``; it was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, result: ExecResult):
        self.result = result
        super().__init__("timeout", f"{list(argv)!r} ran longer than {timeout} s and was killed")


def _argv(cmd: Union[str, Sequence[str]]) -> List[str]:
    # A string is a shell command line, as with `banger vm exec -- sh -c`.
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    return [str(a) for a in cmd]


def _egress(egress: Union[str, Mapping[str, Any], None]) -> Optional[Dict[str, Any]]:
    if egress is None:
        return None
    if isinstance(egress, str):
        return {"mode": egress}
    return dict(egress)


class Files:
    """A sandbox's files, through the guest agent (``vm.cp``)."""

    def __init__(self, sandbox: "Sandbox"):
        self._sb = sandbox

    def write(self, path: str, data: Union[bytes, str]) -> None:
        """Writes ``data`` to ``path`` in the guest (absolute)."""
        if isinstance(data, str):
            data = data.encode()
        with tempfile.TemporaryDirectory(prefix="banger-sdk-") as tmp:
            host = Path(tmp) / "file"
            host.write_bytes(data)
            self._sb.client.call(
                "vm.cp",
                {"name": self._sb.name, "to_guest": True, "host_path": str(host), "guest_path": path},
            )

    def read(self, path: str, *, max_bytes: int = 64 << 20) -> bytes:
        """The bytes of the guest file ``path`` (absolute). A guest picks
        a file's size: one larger than ``max_bytes`` raises
        :class:`BangerError` (``too_large``) instead of filling memory."""
        with tempfile.TemporaryDirectory(prefix="banger-sdk-") as tmp:
            host = Path(tmp) / "file"
            copied = self._sb.client.call(
                "vm.cp",
                {"name": self._sb.name, "to_guest": False, "host_path": str(host), "guest_path": path},
            )
            if copied["bytes"] > max_bytes:
                raise BangerError(
                    "too_large", f"{path} is {copied['bytes']} bytes, more than max_bytes={max_bytes}"
                )
            return host.read_bytes()

    def read_text(self, path: str, *, max_bytes: int = 64 << 20) -> str:
        return self.read(path, max_bytes=max_bytes).decode("utf-8", "replace")


def _workspace(
    directory: Union[str, "os.PathLike[str]", None], guest_path: Optional[str]
) -> Optional[Dict[str, Any]]:
    if directory is None:
        return None
    return without_none(
        {"host_dir": os.path.abspath(os.fspath(directory)), "guest_path": guest_path}
    )


class Workspace:
    """A host project in the sandbox (``workspace=DIR`` at create, or
    ``push``): the guest's changes back as a git patch, applied to the
    host only over files unchanged there; the host's changes pushed in."""

    def __init__(self, sandbox: "Sandbox"):
        self._sb = sandbox

    def push(
        self, directory: Union[str, "os.PathLike[str]"], guest_path: Optional[str] = None
    ) -> Dict[str, Any]:
        """Puts ``directory`` into the guest (at /root/work unless told)."""
        params = dict(_workspace(directory, guest_path) or {})
        params["name"] = self._sb.name
        return self._sb.client.call("vm.workspace.push", params)

    def diff(self) -> Dict[str, Any]:
        """The guest's changes: ``changes`` (``path``, ``change``) and the
        git ``patch`` (``patch_base64`` when it is not UTF-8)."""
        return self._sb.client.call("vm.workspace.diff", {"name": self._sb.name})

    def patch(self) -> bytes:
        """The guest's changes as the bytes of a git patch."""
        d = self.diff()
        if d.get("patch_base64"):
            return base64.b64decode(d["patch_base64"])
        return (d.get("patch") or "").encode()

    def apply(self) -> Dict[str, Any]:
        """Applies the guest's changes to the host project; a file they
        touch that changed on the host makes it a ``conflict`` (nothing
        changed)."""
        return self._sb.client.call("vm.workspace.apply", {"name": self._sb.name})

    def sync(self) -> Dict[str, Any]:
        """Pushes the host's changes since into the guest; a file the
        guest changed too makes it a ``conflict`` (nothing pushed)."""
        return self._sb.client.call("vm.workspace.sync", {"name": self._sb.name})


class Sandbox:
    """A banger VM. Made by ``Sandbox.create(...)`` or on entering
    ``with Sandbox(...)``; deleted on leaving the block unless ``keep``."""

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        image: Optional[str] = None,
        kernel: Optional[str] = None,
        vcpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        disk_size_bytes: Optional[int] = None,
        network: Optional[str] = None,
        egress: Union[str, Mapping[str, Any], None] = None,
        publish: Optional[Sequence[str]] = None,
        from_snapshot: Optional[str] = None,
        vmm: Optional[str] = None,
        wait_for: Optional[str] = None,
        workspace: Union[str, "os.PathLike[str]", None] = None,
        workspace_path: Optional[str] = None,
        keep: bool = False,
        client: Optional[Client] = None,
        on_stage: Optional[Callable[[Dict[str, Any]], None]] = None,
        timeout: Optional[float] = None,
    ):
        self.name = name or "sb-" + secrets.token_hex(4)
        self.keep = keep
        self.client = client if client is not None else Client()
        self.files = Files(self)
        self.workspace = Workspace(self)
        self.info: Optional[Dict[str, Any]] = None
        self._on_stage = on_stage
        self._timeout = timeout
        self._params = without_none(
            {
                "name": self.name,
                "image": image,
                "kernel": kernel,
                "vcpus": vcpus,
                "memory_mib": memory_mib,
                "disk_size_bytes": disk_size_bytes,
                "network": network,
                "egress": _egress(egress),
                "publish": list(publish) if publish else None,
                "from_snapshot": from_snapshot,
                "vmm": vmm,
                "wait_for": wait_for,
                "workspace": _workspace(workspace, workspace_path),
            }
        )

    # -- life ----------------------------------------------------------------

    @classmethod
    def create(cls, name: Optional[str] = None, **options: Any) -> "Sandbox":
        """Creates the VM now and returns it (delete it yourself, or use
        ``with``)."""
        sandbox = cls(name, **options)
        sandbox._create()
        return sandbox

    @classmethod
    def attach(cls, name: str, *, client: Optional[Client] = None) -> "Sandbox":
        """A sandbox for an existing VM; kept on leaving a ``with`` block."""
        sandbox = cls(name, keep=True, client=client)
        sandbox.refresh()
        return sandbox

    def _create(self) -> None:
        try:
            self.info = self.client.begin_and_wait(
                "vm.create.begin", self._params, on_stage=self._on_stage, timeout=self._timeout
            )
        except BaseException:
            # A failed create rolls back; a VM left in `error` goes too.
            self._delete_quietly()
            raise

    def __enter__(self) -> "Sandbox":
        if self.info is None:
            self._create()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.keep:
            self.delete()

    def refresh(self) -> Dict[str, Any]:
        """The VM as the daemon shows it now."""
        self.info = self.client.call("vm.show", {"name": self.name})
        return self.info

    @property
    def state(self) -> str:
        return self.refresh()["state"]

    def start(self) -> Dict[str, Any]:
        self.info = self.client.call("vm.start", {"name": self.name})
        return self.info

    def stop(self) -> Dict[str, Any]:
        self.info = self.client.call("vm.stop", {"name": self.name})
        return self.info

    def delete(self) -> None:
        """Deletes the VM (killed first if it runs); gone already is fine."""
        try:
            self.client.call("vm.delete", {"name": self.name, "force": True})
        except BangerError as e:
            if e.code != "not_found":
                raise

    def _delete_quietly(self) -> None:
        try:
            self.delete()
        except Exception:  # noqa: BLE001 - the first error is the one to raise
            pass

    # -- work ------------------------------------------------------------------

    def exec(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        on_stdout: Optional[ChunkSink] = None,
        on_stderr: Optional[ChunkSink] = None,
        stdin: Union[bytes, str, None] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ExecResult:
        """Runs ``cmd`` in the guest through its agent (a string is a
        shell command line) and returns how it ended. Output given to
        ``on_stdout``/``on_stderr`` is passed on chunk by chunk as it
        arrives and not kept, so a command may print more than fits in
        memory; without them it is collected in the result."""
        argv = _argv(cmd)
        begun = self.client.call(
            "vm.exec.begin",
            without_none(
                {
                    "name": self.name,
                    "argv": argv,
                    "cwd": cwd,
                    "env": [[k, v] for k, v in env.items()] if env else None,
                }
            ),
        )
        exec_id = begun["exec_id"]
        out: List[bytes] = []
        err: List[bytes] = []
        sinks = (on_stdout or out.append, on_stderr or err.append)
        dropped = [0, 0]
        data_in = stdin.encode() if isinstance(stdin, str) else stdin
        deadline = None if timeout is None else time.monotonic() + timeout
        killed = False
        # Stdin not yet taken: the daemon takes what the guest's window
        # allows (``stdin_accepted``); its end goes with the last of it.
        pending = memoryview(data_in or b"")
        eof_sent = False
        while True:
            io: Dict[str, Any] = {"exec_id": exec_id, "wait_ms": EXEC_POLL_MS}
            if len(pending):
                io["stdin"] = base64.b64encode(pending[:STDIN_CALL_BYTES]).decode()
            if not eof_sent and len(pending) <= STDIN_CALL_BYTES:
                io["stdin_eof"] = True
            if deadline is not None and not killed and time.monotonic() > deadline:
                io["signal"] = "KILL"
                killed = True
            got = self.client.call("vm.exec.io", io)
            if "stdin" in io:
                sent = min(len(pending), STDIN_CALL_BYTES)
                pending = pending[got.get("stdin_accepted", sent):]
            if io.get("stdin_eof") and not len(pending):
                eof_sent = True
            for key, sink in zip(("stdout", "stderr"), sinks):
                data = got.get(key)
                if data:
                    sink(base64.b64decode(data))
            dropped[0] += got.get("stdout_dropped", 0)
            dropped[1] += got.get("stderr_dropped", 0)
            if got.get("done"):
                result = ExecResult(
                    exit_code=got.get("exit_code"),
                    signal=got.get("signal"),
                    stdout=b"".join(out),
                    stderr=b"".join(err),
                    stdout_dropped=dropped[0],
                    stderr_dropped=dropped[1],
                )
                if killed:
                    raise ExecTimeout(argv, timeout or 0.0, result)
                return result

    def ports(self) -> List[Dict[str, Any]]:
        """Sockets listening in the guest (``proto``, ``address``, ``port``,
        ``process``)."""
        return self.client.call("vm.ports", {"name": self.name})

    def snapshot(self, name: Optional[str] = None) -> Dict[str, Any]:
        """Snapshots the VM (memory, devices, disks); it keeps running.
        Returns the snapshot as ``banger snapshot show`` does."""
        return self.client.begin_and_wait(
            "vm.snapshot.begin",
            without_none({"name": self.name, "snapshot": name}),
            on_stage=self._on_stage,
        )

    def fork(self, name: Optional[str] = None, *, keep: bool = False) -> "Sandbox":
        """A new VM continuing from this one's current state (this one
        keeps running), as a sandbox of its own."""
        new_name = name or self.name + "-" + secrets.token_hex(2)
        forked = self.client.begin_and_wait(
            "vm.fork.begin",
            {"name": self.name, "new_name": new_name, "count": 1},
            on_stage=self._on_stage,
        )
        child = Sandbox(forked["vms"][0]["name"], keep=keep, client=self.client)
        child.info = forked["vms"][0]
        return child

    def __repr__(self) -> str:
        state = self.info.get("state") if self.info else "not created"
        return f"Sandbox({self.name!r}, {state})"


def list_sandboxes(client: Optional[Client] = None) -> List[Dict[str, Any]]:
    """Every VM, as ``banger vm list --json`` shows them."""
    return (client or Client()).call("vm.list")
