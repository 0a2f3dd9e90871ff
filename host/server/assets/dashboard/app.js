// The Ash dashboard: one page over the REST API, signed in with a cookie the server sets
// (HttpOnly: this script never sees it, nor the API key). Every change sends the sign-in's
// CSRF token. Everything shown is set as text, never parsed as HTML.

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let csrf = null;
/// The live stream the current view holds, closed when the view changes.
let live = null;

/// An element: `h("td", {class: "x"}, "text", child…)`.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

function show(...children) {
  main.replaceChildren(...children);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/// Calls the API with the sign-in cookie; a change carries the CSRF token.
async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== "/dashboard/session") {
    signIn("Your sign-in has ended; sign in again.");
    throw new ApiError(401, "signed out");
  }
  const type = response.headers.get("content-type") || "";
  if (!type.includes("application/json")) {
    if (!response.ok) throw new ApiError(response.status, `${response.status}`);
    return response;
  }
  const data = await response.json();
  if (!response.ok) throw new ApiError(response.status, data.error || `${response.status}`);
  return data;
}

function failure(error) {
  return h("p", { class: "error", role: "alert" }, error.message);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function signIn(message) {
  csrf = null;
  nav.hidden = true;
  const key = h("input", { type: "password", name: "key", autocomplete: "off", placeholder: "API key", required: true });
  const said = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", {
    id: "sign-in",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const signed = await api("POST", "/dashboard/session", { key: key.value });
        key.value = "";
        csrf = signed.csrfToken;
        nav.hidden = false;
        route();
      } catch (e) {
        said.textContent = e.status === 401 ? "That key is not accepted." : e.message;
      }
    },
  }, h("label", {}, "API key ", key), h("button", { type: "submit" }, "Sign in"));
  show(h("h1", {}, "Sign in"), h("p", { class: "muted" },
    "The key stays on the server: the page keeps only a sign-in cookie it cannot read."), form, said);
}

// Views --------------------------------------------------------------------------------

async function agents() {
  const { agents } = await api("GET", "/api/agents");
  const rows = agents.map((a) => [
    h("a", { href: `#/agents/${encodeURIComponent(a.name)}` }, a.name),
    a.version, a.activeVersion ?? "—", when(a.updatedAt),
  ]);
  show(h("h1", {}, "Agents"), table(["name", "version", "active version", "updated"], rows));
}

async function agent(name) {
  const path = `/api/agents/${encodeURIComponent(name)}`;
  const [{ agent: a }, { versions }, { files }] = await Promise.all([
    api("GET", path), api("GET", `${path}/versions`), api("GET", `${path}/files`),
  ]);
  const said = h("p", { role: "status" });
  const activate = (v) => h("button", {
    type: "button", class: "activate", "data-version": v.versionNumber,
    onclick: async () => {
      try {
        await api("POST", `${path}/versions/${v.versionNumber}/activate`, {});
        route();
      } catch (e) { said.textContent = e.message; }
    },
  }, "Activate");
  const start = h("button", {
    type: "button", id: "new-session",
    onclick: async () => {
      try {
        const { session } = await api("POST", "/api/sessions", { agent: name });
        location.hash = `#/sessions/${session.id}`;
      } catch (e) { said.textContent = e.message; }
    },
  }, "New session");
  show(
    h("h1", {}, `Agent ${a.name}`),
    h("p", {}, `Version ${a.version}, deployed ${when(a.updatedAt)}. `, start,
      " ", h("a", { href: `#/sessions?agent=${encodeURIComponent(name)}` }, "Its sessions")),
    said,
    h("h2", {}, "Versions"),
    versions.length === 0 ? h("p", { class: "muted" }, "No named versions.") :
      table(["number", "name", "active", "system prompt", "notes", ""], versions.map((v) => [
        v.versionNumber, v.name, v.isActive ? "active" : "", (v.systemPrompt || "").slice(0, 120),
        v.releaseNotes || "", v.isActive ? "" : activate(v),
      ])),
    h("h2", {}, "Files"),
    table(["path", "size"], files.map((f) => [f.path, f.size])),
  );
}

async function sessions(params) {
  const agentFilter = params.get("agent") || "";
  const statusFilter = params.get("status") || "";
  const query = agentFilter ? `?agent=${encodeURIComponent(agentFilter)}` : "";
  const { sessions: all } = await api("GET", `/api/sessions${query}`);
  const shown = all.filter((s) => !statusFilter || s.status === statusFilter);
  const agentInput = h("input", { name: "agent", value: agentFilter, placeholder: "agent" });
  const statusSelect = h("select", { name: "status" },
    ["", "active", "paused", "stopped", "ended"].map((s) =>
      h("option", { value: s, selected: s === statusFilter }, s || "any status")));
  const filter = h("form", {
    id: "filter",
    onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      if (agentInput.value) next.set("agent", agentInput.value);
      if (statusSelect.value) next.set("status", statusSelect.value);
      location.hash = `#/sessions?${next}`;
    },
  }, agentInput, statusSelect, h("button", { type: "submit" }, "Filter"));
  const rows = shown.map((s) => [
    h("a", { href: `#/sessions/${s.id}` }, s.id), s.agentName,
    h("span", { class: `status-${s.status}` }, s.status), s.runnerId || "", when(s.lastActiveAt),
  ]);
  show(h("h1", {}, "Sessions"), filter,
    h("p", { class: "muted" }, `${shown.length} of ${all.length}`),
    table(["id", "agent", "status", "runner", "last active"], rows));
}

/// One logged frame as a line: its sequence, its kind, and what it says.
function frameLine(sequence, kind, data) {
  let text = data;
  try {
    const parsed = JSON.parse(data);
    text = (typeof parsed.delta === "string" ? parsed.delta : parsed.delta?.text) ?? parsed.text ?? parsed.error ?? parsed.message?.content?.map?.((b) => b.text || b.type).join(" ") ?? data;
  } catch { /* shown as sent */ }
  return h("li", { "data-seq": sequence }, h("span", { class: "kind" }, `${sequence} ${kind}`), String(text).slice(0, 400));
}

async function session(id) {
  const path = `/api/sessions/${id}`;
  const { session: s } = await api("GET", path);
  const list = h("ul", { class: "events", id: "events" });
  let last = 0;
  const add = (sequence, kind, data) => {
    if (sequence <= last) return;
    last = sequence;
    list.append(frameLine(sequence, kind, data));
    list.scrollTop = list.scrollHeight;
  };
  // What the log holds so far, then the live stream from there: a reload picks up where the
  // log is, without a gap or a repeat.
  for (;;) {
    const { events } = await api("GET", `${path}/events?after=${last}&limit=1000`);
    for (const e of events) add(e.sequence, e.type, e.data || "");
    if (events.length < 1000) break;
  }
  const said = h("p", { role: "status" });
  const content = h("input", { name: "content", class: "wide", placeholder: "message", required: true });
  const send = h("form", {
    id: "send",
    onsubmit: async (event) => {
      event.preventDefault();
      said.textContent = "";
      try {
        const response = await api("POST", `${path}/messages`, { content: content.value });
        content.value = "";
        // The turn's frames come through the live stream; this reply's copy is not read.
        response.body?.cancel();
      } catch (e) { said.textContent = e.message; }
    },
  }, content, h("button", { type: "submit" }, "Send"));
  const action = (name) => h("button", {
    type: "button", "data-action": name,
    onclick: async () => {
      try { await api("POST", `${path}/${name}`, {}); route(); } catch (e) { said.textContent = e.message; }
    },
  }, name);
  show(
    h("h1", {}, `Session ${s.id}`),
    h("p", {}, `Agent `, h("a", { href: `#/agents/${encodeURIComponent(s.agentName)}` }, s.agentName),
      `, `, h("span", { class: `status-${s.status}`, id: "status" }, s.status),
      s.runnerId ? `, on ${s.runnerId}` : "", ". ",
      h("a", { href: `#/sessions/${s.id}/files` }, "Files")),
    h("p", {}, action("pause"), " ", action("resume"), " ", action("stop")),
    send, said,
    h("h2", {}, "Stream"), list,
  );
  live = new EventSource(`${path}/stream?after=${last}`);
  for (const kind of ["session_start", "text_delta", "thinking_delta", "message", "tool_use",
    "tool_result", "turn_complete", "error", "done", "limit", "lifecycle", "shutdown"]) {
    live.addEventListener(kind, (event) => add(Number(event.lastEventId), kind, event.data));
  }
}

async function files(id) {
  const path = `/api/sessions/${id}/files`;
  const { files: all, source } = await api("GET", path);
  const view = h("pre", { id: "file" });
  const open = (file) => h("a", {
    href: "#", onclick: async (event) => {
      event.preventDefault();
      try {
        const { content } = await api("GET", `${path}/${file.path.split("/").map(encodeURIComponent).join("/")}?format=json`);
        view.textContent = content;
      } catch (e) { view.textContent = e.message; }
    },
  }, file.path);
  show(h("h1", {}, "Files of ", h("a", { href: `#/sessions/${id}` }, id)),
    h("p", { class: "muted" }, `From its ${source}.`),
    table(["path", "size", "modified"], all.map((f) => [open(f), f.size, when(f.modifiedAt)])), view);
}

async function health() {
  return api("GET", "/health");
}

async function plugins() {
  const { plugins: all } = await health();
  show(h("h1", {}, "Plugins"), all.length === 0 ? h("p", { class: "muted" }, "No plugins are loaded.") :
    table(["plugin", "version", "kind", "calls", "failures", "dropped", "quarantined", "last error"], all.map((p) => [
      p.id, p.version, p.kind, p.calls, p.failures, p.dropped, p.quarantined ? "yes" : "no", p.lastError || "",
    ])));
}

async function pool() {
  const state = await health();
  const p = state.pool;
  show(h("h1", {}, "Pool and runners"),
    table(["", ""], [
      ["status", state.status], ["storage", state.storage],
      ["sandboxes", `${p.total} of ${p.maxCapacity}`], ["running a turn", p.running],
      ["warm", p.warm], ["warming", p.warming], ["cold", p.cold],
      ["warm pool hits", p.preWarmHits], ["warm resumes", p.resumeWarmHits], ["cold resumes", p.resumeColdHits],
    ]),
    h("h2", {}, "Runners"),
    state.runners.length === 0 ? h("p", { class: "muted" }, "This server holds its sandboxes itself.") :
      table(["runner", "address", "state", "sandboxes", "running", "capacity", "last heartbeat"], state.runners.map((r) => [
        r.id, r.address, r.state, r.sandboxes, r.running, r.capacity, `${r.heartbeatAgeMs} ms ago`,
      ])));
}

async function tools() {
  const { tools: all } = await api("GET", "/api/tools");
  const output = h("pre", { id: "tool-result" });
  const said = h("p", { role: "status" });
  const name = h("select", { name: "tool" }, all.map((t) => h("option", { value: t.name }, t.name)));
  const args = h("input", { name: "arguments", class: "wide", value: "{}" });
  const form = h("form", {
    id: "call-tool", onsubmit: async (event) => {
      event.preventDefault();
      said.textContent = "";
      let parsed;
      try { parsed = JSON.parse(args.value); } catch { said.textContent = "The arguments are not JSON."; return; }
      try {
        const reply = await api("POST", `/api/tools/${encodeURIComponent(name.value)}/call`, { arguments: parsed });
        output.textContent = (reply.isError ? "error: " : "") + JSON.stringify(reply.result, null, 2);
      } catch (e) { said.textContent = e.message; }
    },
  }, name, args, h("button", { type: "submit" }, "Call"));
  show(h("h1", {}, "Tools"),
    all.length === 0 ? h("p", { class: "muted" }, "The registry holds no tools (docs/tools.md).") :
      table(["name", "kind", "version", "description"], all.map((t) => [t.name, t.kind, t.version, t.description])),
    all.length === 0 ? null : form, said, output);
}

async function queue() {
  const [{ stats }, { items }] = await Promise.all([api("GET", "/api/queue/stats"), api("GET", "/api/queue?limit=100")]);
  const said = h("p", { role: "status" });
  const cancel = (item) => h("button", {
    type: "button", onclick: async () => {
      try { await api("DELETE", `/api/queue/${item.id}`); route(); } catch (e) { said.textContent = e.message; }
    },
  }, "Cancel");
  const agentName = h("input", { name: "agentName", placeholder: "agent", required: true });
  const prompt = h("input", { name: "prompt", class: "wide", placeholder: "prompt", required: true });
  const priority = h("input", { name: "priority", type: "number", min: 0, value: 0 });
  const form = h("form", {
    id: "enqueue", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("POST", "/api/queue", { agentName: agentName.value, prompt: prompt.value, priority: Number(priority.value) });
        route();
      } catch (e) { said.textContent = e.message; }
    },
  }, agentName, prompt, priority, h("button", { type: "submit" }, "Queue"));
  show(h("h1", {}, "Queue"),
    table(Object.keys(stats), [Object.values(stats)]),
    form, said,
    table(["created", "agent", "prompt", "priority", "status", "retries", "session", "error", ""], items.map((i) => [
      when(i.createdAt), i.agentName, i.prompt.slice(0, 80), i.priority,
      h("span", { class: `status-${i.status}` }, i.status), `${i.retryCount}/${i.maxRetries}`,
      i.sessionId ? h("a", { href: `#/sessions/${i.sessionId}` }, i.sessionId.slice(0, 8)) : "",
      i.error || "", i.status === "pending" ? cancel(i) : "",
    ])));
}

async function usage() {
  const [{ stats }, { events }] = await Promise.all([api("GET", "/api/usage/stats"), api("GET", "/api/usage?limit=100")]);
  show(h("h1", {}, "Usage"),
    table(["input tokens", "output tokens", "cache writes", "cache reads", "tool calls", "messages", "compute seconds"], [[
      stats.totalInputTokens, stats.totalOutputTokens, stats.totalCacheCreationTokens, stats.totalCacheReadTokens,
      stats.totalToolCalls, stats.totalMessages, stats.totalComputeSeconds.toFixed(2),
    ]]),
    h("h2", {}, "Latest events"),
    table(["when", "session", "agent", "kind", "value"], events.map((e) => [
      when(e.createdAt), h("a", { href: `#/sessions/${e.sessionId}` }, e.sessionId.slice(0, 8)), e.agentName, e.eventType, e.value,
    ])));
}

// Routing ------------------------------------------------------------------------------

async function route() {
  if (live) { live.close(); live = null; }
  if (!csrf) return;
  const [path, query] = (location.hash.slice(1) || "/agents").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("current", link.getAttribute("href") === `#/${parts[0]}`);
  }
  try {
    if (parts[0] === "agents" && parts[1]) await agent(parts[1]);
    else if (parts[0] === "sessions" && parts[1] && parts[2] === "files") await files(parts[1]);
    else if (parts[0] === "sessions" && parts[1]) await session(parts[1]);
    else if (parts[0] === "sessions") await sessions(params);
    else if (parts[0] === "plugins") await plugins();
    else if (parts[0] === "pool") await pool();
    else if (parts[0] === "tools") await tools();
    else if (parts[0] === "queue") await queue();
    else if (parts[0] === "usage") await usage();
    else await agents();
  } catch (e) {
    if (e.status !== 401) show(failure(e));
  }
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("DELETE", "/dashboard/session"); } finally { signIn("Signed out."); }
});
window.addEventListener("hashchange", route);

try {
  const signed = await api("GET", "/dashboard/session");
  csrf = signed.csrfToken;
  nav.hidden = false;
  route();
} catch {
  signIn();
}
