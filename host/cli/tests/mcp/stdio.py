"""Starts `ash mcp` (the stdio bridge) as a desktop MCP client would, with the official MCP
Python SDK's stdio client (PyPI `mcp`): initializes, lists the tools, asks an agent with
progress, and is told when the registry changes (after printing {"ask": "change"} to stderr
and reading "ok" on its own stdin). Prints what it saw as one JSON line."""

import asyncio
import json
import os
import sys

import anyio
import mcp_types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main():
    params = StdioServerParameters(
        command=os.environ["ASH_BIN"],
        args=["--server", os.environ["ASH_URL"], "mcp"],
        env={"ASH_API_KEY": os.environ["ASH_KEY"]},
    )
    seen = {"progress": 0}
    changed = anyio.Event()

    async def notified(message):
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    async def progressed(progress, total, message):
        seen["progress"] += 1

    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, message_handler=notified) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            listed = await session.list_tools()
            seen["tools"] = sorted(t.name for t in listed.tools)
            asked = await session.call_tool(
                "agent.hello-agent", {"message": "over stdio"}, progress_callback=progressed
            )
            seen["reply"] = asked.structured_content["reply"]
            print(json.dumps({"ask": "change"}), file=sys.stderr, flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            with anyio.fail_after(30):
                await changed.wait()
            relisted = await session.list_tools()
            seen["afterChange"] = sorted(t.name for t in relisted.tools)
    print(json.dumps(seen))


asyncio.run(main())
