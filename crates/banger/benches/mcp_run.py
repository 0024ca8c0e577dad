"""Driver of crates/banger/benches/mcp.rs: `vm_run` of `echo hi` over one
MCP session vs `banger vm run -- echo hi` from a shell, interleaved;
prints one JSON object of the times (seconds)."""

import asyncio
import json
import os
import subprocess
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BANGER = os.environ["BANGER_BIN"]
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


async def main():
    times = {"cli": [], "mcp_call": [], "mcp_session": 0.0}
    started = time.monotonic()
    params = StdioServerParameters(command=BANGER, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            times["mcp_session"] = time.monotonic() - started
            for _ in range(RUNS):
                t = time.monotonic()
                done = subprocess.run([BANGER, "vm", "run", "--rm", "--", "echo", "hi"],
                                      capture_output=True, check=False)
                times["cli"].append(time.monotonic() - t)
                assert done.returncode == 0 and done.stdout == b"hi\n", done
                t = time.monotonic()
                result = await session.call_tool("vm_run", {"argv": ["echo", "hi"]})
                times["mcp_call"].append(time.monotonic() - t)
                out = result.structured_content
                assert not result.is_error and out["stdout"] == "hi\n", out
    print(json.dumps(times))


asyncio.run(main())
