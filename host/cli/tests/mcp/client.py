"""Talks to Ash's /mcp with the official MCP Python SDK (PyPI `mcp`): initializes, lists the
tools, calls one with good and with bad arguments, and an unknown one; then asks the test to
change the registry (printing {"ask": "change"}, reading "ok") and waits for
notifications/tools/list_changed. Prints what it saw as one JSON line."""

import asyncio
import json
import os
import sys

from ashmcp import after_a_registry_change, list_changed_watch, refused
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main():
    url = os.environ["ASH_URL"] + "/mcp"
    headers = {"Authorization": f"Bearer {os.environ['ASH_KEY']}"}
    seen = {}
    changed, notified = list_changed_watch()

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
                seen["afterChange"] = await after_a_registry_change(session, changed, sys.stdout)
    print(json.dumps(seen))


asyncio.run(main())
