"""Uses Ash's agents and sessions as MCP tools with the official MCP Python SDK (PyPI `mcp`):
a turn of an agent with its text streamed as progress, a second turn in the same session,
the session listed and ended, and bad calls. Prints what it saw as one JSON line."""

import asyncio
import json
import os

from ashmcp import refused
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main():
    url = os.environ["ASH_URL"] + "/mcp"
    headers = {"Authorization": f"Bearer {os.environ['ASH_KEY']}"}
    seen = {"progress": []}

    async def progressed(progress, total, message):
        seen["progress"].append(message)

    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                seen["tools"] = sorted(t.name for t in listed.tools)
                first = await session.call_tool(
                    "agent.hello-agent", {"message": "hi there"}, progress_callback=progressed
                )
                seen["first"] = first.structured_content
                sid = first.structured_content["sessionId"]
                second = await session.call_tool(
                    "agent.hello-agent", {"message": "again", "sessionId": sid}
                )
                seen["second"] = second.structured_content
                sessions = await session.call_tool("ash.sessions.list", {"agent": "hello-agent"})
                seen["sessions"] = [s["id"] for s in sessions.structured_content["sessions"]]
                ended = await session.call_tool("ash.session.end", {"sessionId": sid})
                seen["ended"] = ended.structured_content["session"]["status"]
                seen["noAgent"] = await refused(session, "agent.nobody", {"message": "x"})
                seen["noMessage"] = await refused(session, "agent.hello-agent", {})
                seen["noSession"] = await refused(
                    session, "ash.session.pause", {"sessionId": "00000000-0000-4000-8000-000000000000"}
                )
    print(json.dumps(seen))


asyncio.run(main())
