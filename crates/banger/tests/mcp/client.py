"""A real MCP client (the `mcp` package from PyPI) driving `banger mcp`
over stdio, for crates/banger/tests/mcp_e2e.rs: it prints one line per
check and exits non-zero at the first that fails."""

import asyncio
import json
import os
import sys
import tempfile

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BANGER = os.environ["BANGER_BIN"]
EXPECTED_TOOLS = {
    "vm_create", "vm_run", "vm_exec", "vm_write_file", "vm_read_file", "vm_list",
    "vm_show", "vm_start", "vm_stop", "vm_delete", "vm_ports", "vm_snapshot", "vm_fork",
    "vm_workspace_push", "vm_workspace_diff", "vm_workspace_apply", "vm_workspace_sync",
}


def check(ok, what, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def structured(result):
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main():
    params = StdioServerParameters(command=BANGER, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()

            tools = {t.name: t for t in (await session.list_tools()).tools}
            check(EXPECTED_TOOLS <= set(tools), "list tools", sorted(tools))
            create_schema = tools["vm_create"].input_schema
            check("name" in create_schema.get("properties", {}) and "name" in create_schema.get("required", []),
                  "vm_create's input schema is the daemon's VmCreateParams", create_schema)

            stages = []

            async def progress(done, total, message):
                stages.append(message)

            ran = await session.call_tool("vm_run", {"command": "echo hi; exit 3"}, progress_callback=progress)
            out = structured(ran)
            check(not ran.is_error, "vm_run answers", out)
            check(out["stdout"] == "hi\n" and out["exit_code"] == 3, "vm_run: hi and 3", out)
            check(len(stages) > 0, "vm_run reports the create's stages as progress", stages)
            listed = structured(await session.call_tool("vm_list", {}))
            check(out["vm"] not in [v["name"] for v in listed["vms"]], "vm_run deleted its vm", listed)

            created = await session.call_tool("vm_create", {"name": "mcp1"})
            check(not created.is_error and structured(created)["state"] == "running", "vm_create", structured(created))
            wrote = await session.call_tool(
                "vm_write_file", {"name": "mcp1", "path": "/root/hello.txt", "content": "from mcp\n"})
            check(not wrote.is_error, "vm_write_file", structured(wrote))
            cat = structured(await session.call_tool("vm_exec", {"name": "mcp1", "argv": ["cat", "/root/hello.txt"]}))
            check(cat["stdout"] == "from mcp\n" and cat["exit_code"] == 0, "vm_exec cat", cat)
            read = structured(await session.call_tool("vm_read_file", {"name": "mcp1", "path": "/root/hello.txt"}))
            check(read["content"] == "from mcp\n" and read["encoding"] == "utf-8", "vm_read_file", read)
            ports = structured(await session.call_tool("vm_ports", {"name": "mcp1"}))
            check(any(p["port"] == 22 for p in ports["ports"]), "vm_ports sees sshd", ports)

            # A workspace: a plain directory (no git) minus its .bangerignore.
            project = tempfile.mkdtemp(prefix="mcp-ws-")
            for rel, text in (("notes.txt", "one\n"), ("skip.tmp", "x\n"), (".bangerignore", "*.tmp\n")):
                with open(os.path.join(project, rel), "w") as f:
                    f.write(text)
            pushed = await session.call_tool("vm_workspace_push", {"name": "mcp1", "host_dir": project})
            check(not pushed.is_error and structured(pushed)["guest_path"] == "/root/work",
                  "vm_workspace_push", structured(pushed))
            listing = structured(await session.call_tool(
                "vm_exec", {"name": "mcp1", "command": "cd /root/work && ls -A | sort && echo two >> notes.txt"}))
            check(listing["stdout"] == ".bangerignore\nnotes.txt\n", "the workspace minus .bangerignore", listing)
            diff = structured(await session.call_tool("vm_workspace_diff", {"name": "mcp1"}))
            check(diff["changes"] == [{"path": "notes.txt", "change": "modified"}] and "+two" in diff.get("patch", ""),
                  "vm_workspace_diff", diff)
            applied = await session.call_tool("vm_workspace_apply", {"name": "mcp1"})
            check(not applied.is_error, "vm_workspace_apply", structured(applied))
            with open(os.path.join(project, "notes.txt")) as f:
                check(f.read() == "one\ntwo\n", "the guest's change is on the host")

            forked = await session.call_tool("vm_fork", {"name": "mcp1", "new_name": "mcp2"})
            check(not forked.is_error, "vm_fork", structured(forked))
            names = [v["name"] for v in structured(forked)["vms"]]
            check(names == ["mcp2"], "vm_fork made mcp2", names)
            cat2 = structured(await session.call_tool("vm_exec", {"name": "mcp2", "command": "cat /root/hello.txt"}))
            check(cat2["stdout"] == "from mcp\n", "the fork has the file", cat2)

            for name in ("mcp2", "mcp1"):
                gone = await session.call_tool("vm_delete", {"name": name, "force": True})
                check(not gone.is_error, f"vm_delete {name}", structured(gone))
            listed = structured(await session.call_tool("vm_list", {}))
            check([v["name"] for v in listed["vms"]] == [], "both deleted", listed)

            bad = await session.call_tool("vm_show", {"name": "no-such-vm"})
            err = structured(bad)
            check(bad.is_error and err.get("code") == "not_found", "a missing vm: not_found", err)
            check(str(err.get("op_id", "")).startswith("op-"), "the error carries an op id", err)
            bad = await session.call_tool("vm_exec", {"name": "mcp1"})
            err = structured(bad)
            check(bad.is_error and err.get("code") == "bad_params" and err.get("op_id", "").startswith("op-"),
                  "an exec with no command: bad_params with an op id", err)
            # A vm_run the client gives up on (its read timeout passes
            # mid-create, and it cancels the request): nothing is left.
            try:
                await session.call_tool("vm_run", {"command": "echo late"}, read_timeout_seconds=3)
                check(False, "a vm_run with a 3 s read timeout should time out")
            except Exception as e:  # noqa: BLE001 - the client's timeout error
                print(f"ok   vm_run cancelled by the client ({type(e).__name__})", flush=True)
            deadline = asyncio.get_running_loop().time() + 120
            while True:
                left = [v["name"] for v in structured(await session.call_tool("vm_list", {}))["vms"]]
                if not left:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    check(False, "a cancelled vm_run leaves no vm", left)
                await asyncio.sleep(0.5)
            print("ok   a cancelled vm_run leaves no vm", flush=True)
    print("all mcp checks passed", flush=True)


asyncio.run(main())
