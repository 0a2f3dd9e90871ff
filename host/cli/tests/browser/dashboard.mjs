// Drives the dashboard at /dashboard in Debian's Chromium, against a server the test set up:
// a transform plugin loaded, an agent `gated` with one named version, and a session of it
// whose turn waits at a gate (ASH_GATED). The script asks the test to open the gate by printing {"ask":"gate"} and reads
// "ok" back on stdin. At the end it prints what it saw as one JSON line.
import { chromium } from "playwright-core";
import * as readline from "node:readline";

const url = process.env.ASH_URL;
const key = process.env.ASH_KEY;
const gated = process.env.ASH_GATED;
const answers = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(JSON.stringify({ ask: what }));
  const { value } = await answers.next();
  if (value !== "ok") throw new Error(`the test answered ${value}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const seen = {};
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const outside = [];
  const served = [];
  page.on("request", (r) => { if (!r.url().startsWith(url + "/")) outside.push(r.url()); });
  page.on("response", async (r) => {
    if (r.url().includes("/dashboard") && r.request().method() === "GET" && r.status() === 200) {
      served.push(await r.text().catch(() => ""));
    }
  });
  const text = (selector) => page.$eval(selector, (e) => e.textContent);

  await page.goto(`${url}/dashboard`);
  await page.waitForSelector("#sign-in");
  await page.fill("#sign-in input", "ash_not-a-key");
  await page.click("#sign-in button");
  await page.waitForSelector("#sign-in + p:not(:empty)");
  seen.wrongKey = await text("#sign-in + p");
  await page.fill("#sign-in input", key);
  await page.click("#sign-in button");
  await page.waitForSelector("table td a[href='#/agents/gated']");
  seen.agents = await page.$$eval("table tbody tr td:first-child", (els) => els.map((e) => e.textContent));
  const cookie = (await context.cookies()).find((c) => c.name === "ash_dashboard");
  seen.cookie = { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite, secure: cookie.secure };
  seen.scriptSeesCookie = await page.evaluate(() => document.cookie);
  seen.storage = await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage));

  // A plugin's counters, before the turns below.
  const pluginCalls = async () => {
    await page.goto(`${url}/dashboard#/plugins`);
    // The view is drawn once its heading is (the page before may still show a table).
    await page.waitForFunction(() => document.querySelector("main h1")?.textContent === "Plugins");
    return page.$$eval("main table tbody tr", (rows) => rows.map((r) => [r.children[0].textContent, Number(r.children[3].textContent)]));
  };
  seen.pluginsBefore = await pluginCalls();

  // An agent and its versions: activate one.
  await page.goto(`${url}/dashboard#/agents`);
  await page.click("a[href='#/agents/gated']");
  await page.waitForSelector("button.activate");
  await page.click("button.activate");
  await page.waitForFunction(() => [...document.querySelectorAll("td")].some((td) => td.textContent === "active"));
  seen.activated = true;

  // Sessions, filtered; the gated one's live stream, across a reload.
  await page.goto(`${url}/dashboard#/sessions`);
  await page.waitForSelector("#filter");
  await page.fill("#filter input[name=agent]", "gated");
  await page.click("#filter button");
  await page.waitForSelector(`a[href='#/sessions/${gated}']`);
  seen.filtered = await page.$$eval("table tbody tr", (rows) => rows.length);
  await page.click(`a[href='#/sessions/${gated}']`);
  await page.waitForFunction(() => document.querySelector("#events")?.textContent.includes("started"));
  await page.reload();
  await page.waitForFunction(() => document.querySelector("#events")?.textContent.includes("started"));
  await ask("gate");
  await page.waitForFunction(() => [...document.querySelectorAll("#events .kind")].some((k) => k.textContent.endsWith(" done")));
  seen.sequences = await page.$$eval("#events li", (els) => els.map((e) => Number(e.dataset.seq)));

  // A new session of the example agent, a message sent from the page, its files.
  await page.goto(`${url}/dashboard#/agents/hello-agent`);
  await page.waitForSelector("#new-session");
  await page.click("#new-session");
  await page.waitForSelector("#send");
  await page.fill("#send input", "hi from the browser");
  await page.click("#send button");
  await page.waitForFunction(() => document.querySelector("#events")?.textContent.includes("Echo: hi from the browser"));
  seen.echoed = true;
  await page.click("a[href$='/files']");
  await page.waitForSelector("table tbody tr td a");
  await page.click("table tbody tr td a");
  await page.waitForFunction(() => document.querySelector("#file")?.textContent.length > 0);
  seen.fileShown = true;

  // The registry's tools: one called from the page (the test stored `echo-args`).
  await page.goto(`${url}/dashboard#/tools`);
  await page.waitForSelector("#call-tool");
  await page.selectOption("#call-tool select", "echo-args");
  await page.fill("#call-tool input", '{"word": "from the page"}');
  await page.click("#call-tool button");
  await page.waitForFunction(() => document.querySelector("#tool-result")?.textContent.includes("from the page"));
  seen.toolCalled = true;

  // The other views.
  await page.goto(`${url}/dashboard#/queue`);
  await page.waitForSelector("#enqueue");
  await page.fill("#enqueue input[name=agentName]", "hello-agent");
  await page.fill("#enqueue input[name=prompt]", "queued from the browser");
  await page.click("#enqueue button");
  await page.waitForFunction(() => document.querySelector("main")?.textContent.includes("queued from the browser"));
  seen.pluginsAfter = await pluginCalls();
  for (const view of ["pool", "usage"]) {
    await page.goto(`${url}/dashboard#/${view}`);
    await page.waitForFunction((v) => document.querySelector("main h1")?.textContent.toLowerCase().startsWith(v.slice(0, 4)), view);
  }
  seen.usage = await page.$eval("main table tbody tr", (row) => [...row.children].map((c) => c.textContent));

  // Signing out ends the sign-in on the server: the old cookie is refused.
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in");
  const reused = await fetch(`${url}/api/agents`, { headers: { cookie: `ash_dashboard=${cookie.value}` } });
  seen.afterSignOut = reused.status;
  seen.keyServed = served.some((body) => body.includes(key));
  seen.keyInPage = (await page.content()).includes(key);
  seen.outside = outside;
  console.log(JSON.stringify({ seen }));
} catch (e) {
  console.log(JSON.stringify({ seen, error: String(e.stack || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
