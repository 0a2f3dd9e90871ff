// Talks to Ash's /mcp with the official MCP TypeScript SDK (npm @modelcontextprotocol/sdk):
// connects over Streamable HTTP with the key, lists the tools, calls one, refuses bad
// arguments, and reconnects with a new transport. Prints what it saw as one JSON line.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(`${process.env.ASH_URL}/mcp`);
const headers = { Authorization: `Bearer ${process.env.ASH_KEY}` };

async function connect() {
  const client = new Client({ name: "ash-ts-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
  await client.connect(transport);
  return { client, transport };
}

const seen = {};
const first = await connect();
seen.server = first.client.getServerVersion()?.name;
seen.sessionId = first.transport.sessionId ?? null;
const { tools } = await first.client.listTools();
seen.tools = tools.map((t) => t.name).sort();
const ok = await first.client.callTool({ name: "greet", arguments: { name: "Grace" } });
seen.ok = { isError: ok.isError ?? false, text: ok.content[0].text };
try {
  await first.client.callTool({ name: "greet", arguments: { name: 7 } });
  seen.badArguments = null;
} catch (e) {
  seen.badArguments = { code: e.code, message: e.message };
}
await first.transport.terminateSession();
await first.client.close();

// A new connection is a new session, and works the same.
const second = await connect();
seen.secondSessionId = second.transport.sessionId ?? null;
const again = await second.client.callTool({ name: "greet", arguments: { name: "Lin" } });
seen.again = again.content[0].text;
await second.client.close();
console.log(JSON.stringify(seen));
