"""What the MCP client scripts of the tests share."""

import json
import sys

import anyio
import mcp_types
from mcp.shared.exceptions import MCPError


async def refused(session, name, arguments):
    """The JSON-RPC error a call gets, or None when it succeeds."""
    try:
        await session.call_tool(name, arguments)
    except MCPError as e:
        return {"code": e.code, "message": e.message}
    return None


def list_changed_watch():
    """An event set on notifications/tools/list_changed, and the message handler setting it."""
    changed = anyio.Event()

    async def notified(message):
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    return changed, notified


async def after_a_registry_change(session, changed, ask_stream):
    """Asks the test to change the registry ({"ask": "change"} on ask_stream, "ok" back on
    stdin), waits to be told, and lists the tools again: their names."""
    print(json.dumps({"ask": "change"}), file=ask_stream, flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    with anyio.fail_after(30):
        await changed.wait()
    relisted = await session.list_tools()
    return sorted(t.name for t in relisted.tools)
