"""The daemon's socket protocol (docs/rpc.md): one JSON object per line
over a Unix socket, ``{"version", "method", "params", "op_id"}`` in,
``{"result"}`` or ``{"error": {"code", "message", "op_id"}}`` out.

Written with the standard library only, so the SDK installs anywhere
Python does; the protocol is small enough that a client library would
add more than it saves.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from . import methods

PROTOCOL_VERSION = 1

# How long a daemon started by the SDK gets to answer (the CLI's own
# start timeout is 15 s; the CLI call below waits for it).
START_TIMEOUT_S = 60.0


class BangerError(Exception):
    """An error the daemon answered: its ``code`` (``not_found``,
    ``bad_params``, ``conflict``, ...), ``message`` and the ``op_id`` that
    ties it to the daemon's log lines."""

    def __init__(self, code: str, message: str, op_id: Optional[str] = None):
        self.code = code
        self.message = message
        self.op_id = op_id
        suffix = f" ({op_id})" if op_id else ""
        super().__init__(f"{code}: {message}{suffix}")


class DaemonUnavailable(BangerError):
    """No daemon answers and none could be started."""

    def __init__(self, message: str):
        super().__init__("daemon_unavailable", message, None)


def socket_path() -> Path:
    """Where the daemon listens: ``$XDG_RUNTIME_DIR/banger/bangerd.sock``,
    else ``/tmp/banger-UID/bangerd.sock`` (as ``crates/paths`` has it)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "banger" / "bangerd.sock"
    return Path(f"/tmp/banger-{os.getuid()}") / "bangerd.sock"


def new_op_id() -> str:
    """An op id of the caller's (``op-`` and 10 random characters)."""
    return "op-py" + secrets.token_hex(4)


def find_cli() -> Optional[str]:
    """The ``banger`` CLI: ``BANGER_BIN``, else on ``PATH``."""
    explicit = os.environ.get("BANGER_BIN")
    if explicit:
        return explicit
    return shutil.which("banger")


class Client:
    """A connection to the daemon. Thread-safe: one request at a time
    travels on the connection. Closing it (or the process exiting)
    cancels the request in flight, as for the CLI."""

    def __init__(
        self,
        path: Optional[os.PathLike] = None,
        *,
        start_daemon: bool = True,
    ):
        self.path = Path(path) if path is not None else socket_path()
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._reader = None
        self._connect(start_daemon)

    # -- connection -----------------------------------------------------

    def _connect(self, start_daemon: bool) -> None:
        try:
            self._open()
            self.call("ping")
            return
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            self._drop()
            if not start_daemon:
                raise DaemonUnavailable(f"no daemon answers on {self.path}")
        self._start_daemon()
        self._open()
        self.call("ping")

    def _open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _start_daemon(self) -> None:
        """Starts the daemon as the CLI does when none answers: through
        the CLI itself, whose every daemon command finds ``bangerd``,
        starts it detached and waits until it answers (``banger vm list``,
        the cheapest of them)."""
        cli = find_cli()
        if cli is None:
            raise DaemonUnavailable(
                f"no daemon answers on {self.path}, and no banger CLI to start "
                "one (put banger on PATH or set BANGER_BIN)"
            )
        try:
            done = subprocess.run(
                [cli, "vm", "list", "--json"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DaemonUnavailable(f"could not start the daemon with {cli}: {e}") from e
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip()
            raise DaemonUnavailable(f"could not start the daemon with {cli}: {why}")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests -------------------------------------------------------

    def call(
        self,
        method: str,
        params: Optional[Dict[str, Any]] = None,
        *,
        op_id: Optional[str] = None,
    ) -> Any:
        """Sends one request and returns its result; raises
        :class:`BangerError` with the daemon's code, message and op id."""
        methods.check_params(method, params)
        request: Dict[str, Any] = {"version": PROTOCOL_VERSION, "method": method}
        if params is not None:
            request["params"] = params
        if op_id is not None:
            request["op_id"] = op_id
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._sock is None:
                self._open()
            assert self._sock is not None and self._reader is not None
            try:
                self._sock.sendall(line)
                answer = self._reader.readline()
            except BaseException:
                # Interrupted or broken: the daemon cancels what the
                # request started once the connection closes.
                self._drop()
                raise
            if not answer:
                self._drop()
                raise ConnectionResetError("the daemon closed the connection")
        response = json.loads(answer)
        if "error" in response:
            error = response["error"]
            raise BangerError(error.get("code", "unknown"), error.get("message", ""), error.get("op_id"))
        return response.get("result")

    def wait_op(
        self,
        op_id: str,
        *,
        on_stage: Optional[Callable[[Dict[str, Any]], None]] = None,
        timeout: Optional[float] = None,
        skip: int = 0,
    ) -> Dict[str, Any]:
        """Waits for an asynchronous operation (``vm.create.begin`` and the
        like) to end, calling ``on_stage`` with each stage as it starts
        (after the first ``skip``, already reported); returns its result,
        or raises :class:`BangerError` with the error it ended with (a
        ``cancelled`` one when ``timeout`` passes first: the operation is
        cancelled and rolled back)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = skip
        while True:
            view = self.call("op.status", {"op_id": op_id, "wait_ms": 1000})
            stages = view.get("stages", [])
            if on_stage is not None:
                for stage in stages[seen:]:
                    on_stage(stage)
            seen = len(stages)
            state = view["state"]
            if state == "succeeded":
                return view.get("result")
            if state in ("failed", "cancelled"):
                error = view.get("error") or {}
                raise BangerError(
                    error.get("code", state),
                    error.get("message", f"operation {state}"),
                    error.get("op_id", op_id),
                )
            if deadline is not None and time.monotonic() > deadline:
                self.call("op.cancel", {"op_id": op_id})
                deadline = None  # wait for the rollback to finish

    def begin_and_wait(
        self,
        method: str,
        params: Dict[str, Any],
        *,
        on_stage: Optional[Callable[[Dict[str, Any]], None]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Begins an asynchronous operation and waits for it (the op id of
        the request is the operation's), following it on the daemon's
        event stream, subscribed before it begins so that no stage is
        missed; should the stream end first, ``op.status`` is polled for
        the rest."""
        op_id = new_op_id()
        seen = 0
        with self.events() as stream:
            self.call(method, params, op_id=op_id)
            # When the time is up, cancel: the operation rolls back and
            # ends, which the stream then says.
            timer = None
            if timeout is not None:
                timer = threading.Timer(timeout, self._cancel_quietly, (op_id,))
                timer.daemon = True
                timer.start()
            try:
                for event in stream:
                    if event.get("op_id") != op_id:
                        continue
                    if event["type"] == "op_stage":
                        seen += 1
                        if on_stage is not None:
                            on_stage({"name": event["stage"], "depth": event.get("depth", 0)})
                    elif event["type"] == "op_ended":
                        break
            except StreamEnded:
                pass  # dropped as a slow reader: poll the rest
            finally:
                if timer is not None:
                    timer.cancel()
        # The result (or error), and any stage the stream did not bring.
        return self.wait_op(op_id, on_stage=on_stage, skip=seen)

    def _cancel_quietly(self, op_id: str) -> None:
        try:
            self.call("op.cancel", {"op_id": op_id})
        except (BangerError, OSError):
            pass  # already ended, or the daemon went away: the wait says

    def events(
        self, since: Optional[int] = None, epoch: Optional[str] = None
    ) -> "EventStream":
        """Subscribes to the daemon's events (``events.subscribe``, docs/rpc.md
        "Events") on a connection of its own: VMs, images, kernels and
        snapshots made, changed or removed, and operations' stages, as
        dicts ``{"seq", "at_ms", "type", ...}``. With ``since`` (and the
        ``epoch`` it was seen in) the held events after it come first."""
        params: Dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if epoch is not None:
            params["epoch"] = epoch
        sub = Client(self.path, start_daemon=False)
        answer = sub.call("events.subscribe", params)
        return EventStream(sub, answer)


class StreamEnded(BangerError):
    """The daemon ended an event stream for this subscriber (``lagged``:
    it fell too far behind; ``stalled``: it did not read): resume with
    ``client.events(since=e.last_seq, epoch=...)``."""

    def __init__(self, reason: str, message: str, last_seq: int):
        self.reason = reason
        self.last_seq = last_seq
        super().__init__(reason, message, None)


class EventStream:
    """The events of one subscription, in order (iterate it); its
    ``epoch``, ``last_seq`` (the last event published before it began),
    ``replayed`` and ``complete`` are the daemon's answer. Iteration ends
    when the daemon stops (``end`` then holds why) or the connection
    closes; it raises :class:`StreamEnded` when the daemon dropped this
    subscriber. Close it (or use ``with``) to unsubscribe."""

    def __init__(self, client: Client, answer: Dict[str, Any]):
        self._client = client
        self.epoch: str = answer["epoch"]
        self.last_seq: int = answer["last_seq"]
        self.replayed: int = answer["replayed"]
        self.complete: bool = answer["complete"]
        self.end: Optional[Dict[str, Any]] = None

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        reader = self._client._reader
        if reader is None or self.end is not None:
            raise StopIteration
        line = reader.readline()
        if not line or not line.endswith(b"\n"):
            self.close()
            raise StopIteration
        frame = json.loads(line)
        if "end" in frame:
            self.end = frame["end"]
            self.close()
            if self.end["reason"] != "shutdown":
                raise StreamEnded(self.end["reason"], self.end["message"], self.end["last_seq"])
            raise StopIteration
        event = frame["event"]
        self.last_seq = event["seq"]
        return event

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def without_none(params: Dict[str, Any]) -> Dict[str, Any]:
    """Drops the parameters left unset (optional fields are omitted)."""
    return {k: v for k, v in params.items() if v is not None}
