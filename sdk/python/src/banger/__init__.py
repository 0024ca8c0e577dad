"""banger's Python SDK: disposable microVM sandboxes, driven over the
daemon's socket (docs/agents.md).

    from banger import Sandbox

    with Sandbox() as sb:
        print(sb.exec("uname -r").text)
"""

from .client import BangerError, Client, DaemonUnavailable, EventStream, StreamEnded
from .sandbox import ExecResult, ExecTimeout, Files, Sandbox, Workspace, list_sandboxes

__all__ = [
    "BangerError",
    "Client",
    "DaemonUnavailable",
    "EventStream",
    "ExecResult",
    "ExecTimeout",
    "Files",
    "Sandbox",
    "StreamEnded",
    "Workspace",
    "list_sandboxes",
]
__version__ = "0.1.0"
