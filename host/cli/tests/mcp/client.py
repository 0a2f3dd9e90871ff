"""Talks to Ash's /mcp with the official MCP Python SDK (PyPI `mcp`): initializes, lists the
tools, calls one with good and with bad arguments, and an unknown one; then asks the test to
change the registry (printing {"ask": "change"}, reading "ok") and waits for
notifications/tools/list_changed. Prints what it saw as one JSON line."""

import asyncio
import json
import os
import sys

import anyio
import mcp_types

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


async def refused(session, name, arguments):
    try:
        await session.call_tool(name, arguments)
    except MCPError as e:
        return {"code": e.code, "message": e.message}
    return None


async def main():
    url = os.environ["ASH_URL"] + "/mcp"
    headers = {"Authorization": f"Bearer {os.environ['ASH_KEY']}"}
    seen = {}
    changed = anyio.Event()

    async def notified(message):
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, message_handler=notified) as session:
                init = await session.initialize()
                seen["protocolVersion"] = init.protocol_version
                seen["server"] = init.server_info.name
                listed = await session.list_tools()
                seen["tools"] = {t.name: t.input_schema for t in listed.tools}
                ok = await session.call_tool("greet", {"name": "Ada"})
                seen["ok"] = {"isError": ok.is_error, "text": ok.content[0].text}
                down = await session.call_tool("down", {})
                seen["down"] = {"isError": down.is_error, "text": down.content[0].text}
                seen["badArguments"] = await refused(session, "greet", {"name": 7})
                seen["unknown"] = await refused(session, "nothing-here", {})
                print(json.dumps({"ask": "change"}), flush=True)
                await anyio.to_thread.run_sync(sys.stdin.readline)
                with anyio.fail_after(30):
                    await changed.wait()
                relisted = await session.list_tools()
                seen["afterChange"] = sorted(t.name for t in relisted.tools)
    print(json.dumps(seen))


asyncio.run(main())
