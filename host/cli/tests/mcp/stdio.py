"""Starts `ash mcp` (the stdio bridge) as a desktop MCP client would, with the official MCP
Python SDK's stdio client (PyPI `mcp`): initializes, lists the tools, asks an agent with
progress, and is told when the registry changes (after printing {"ask": "change"} to stderr
and reading "ok" on its own stdin). Prints what it saw as one JSON line."""

import asyncio
import json
import os
import sys

from ashmcp import after_a_registry_change, list_changed_watch
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main():
    params = StdioServerParameters(
        command=os.environ["ASH_BIN"],
        args=["--server", os.environ["ASH_URL"], "mcp"],
        env={"ASH_API_KEY": os.environ["ASH_KEY"]},
    )
    seen = {"progress": 0}
    changed, notified = list_changed_watch()

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
            seen["afterChange"] = await after_a_registry_change(session, changed, sys.stderr)
    print(json.dumps(seen))


asyncio.run(main())
