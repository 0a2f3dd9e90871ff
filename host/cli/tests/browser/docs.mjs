// Drives the API explorer at /docs in Debian's Chromium: it renders this server's document;
// "Try it out" of GET /api/agents is refused without the key, then answers 200 once
// "Authorize" has it; no request leaves the server. Prints what it saw as JSON.
import { chromium } from "playwright-core";

const url = process.env.ASH_URL;
const key = process.env.ASH_KEY;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const outside = [];
  const failed = [];
  page.on("request", (r) => { if (!r.url().startsWith(url + "/")) outside.push(r.url()); });
  page.on("response", (r) => { if (r.status() >= 400 && !r.url().includes("/api/")) failed.push(`${r.status()} ${r.url()}`); });
  await page.goto(`${url}/docs`);
  await page.waitForSelector(".opblock-tag", { timeout: 30000 });
  const tags = await page.$$eval(".opblock-tag", (els) => els.map((e) => e.getAttribute("data-tag")));
  const operation = "#operations-agents-list";
  const status = async () => {
    await page.click(`${operation} .execute`);
    const cell = `${operation} .live-responses-table tbody .response-col_status`;
    await page.waitForSelector(cell);
    const text = (await page.$eval(cell, (e) => e.textContent.trim())).slice(0, 3);
    await page.click(`${operation} .btn-clear`);
    return Number(text);
  };
  await page.click(`${operation} .opblock-summary`);
  await page.click(`${operation} .try-out__btn`);
  const withoutKey = await status();
  await page.click(".authorize");
  await page.fill(".modal-ux input", key);
  await page.click(".modal-ux .authorize");
  await page.click(".modal-ux .close-modal");
  const withKey = await status();
  console.log(JSON.stringify({ tags, withoutKey, withKey, outside, failed }));
} finally {
  await browser.close();
}
