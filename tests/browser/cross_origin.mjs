// A page from another origin cannot open a session websocket (cross-site
// websocket hijacking), while the same code on the server's own page can.
import assert from "node:assert/strict";
import http from "node:http";
import { env, run } from "./lib.mjs";

const base = env("BASE");
const wsUrl = `${base.replace(/^http/, "ws")}/_/session?app=demo`;

const other = http.createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>elsewhere</title><p>another site</p>");
});
await new Promise((r) => other.listen(0, "127.0.0.1", r));
const otherUrl = `http://127.0.0.1:${other.address().port}/`;

const tryOpen = (url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  const t = setTimeout(() => resolve("timeout"), 5000);
  ws.onmessage = (m) => { clearTimeout(t); ws.close(); resolve(`message ${m.data}`); };
  ws.onerror = () => { clearTimeout(t); resolve("refused"); };
});

await run("cross_origin", async ({ page }) => {
  await page.goto(otherUrl);
  const foreign = await page.evaluate(tryOpen, wsUrl);
  assert.equal(foreign, "refused", "a foreign page opened a session");

  await page.goto(`${base}/_/auth/me?app=demo`);
  const own = await page.evaluate(tryOpen, wsUrl);
  assert.match(own, /^message \{"session"/, own);
});
other.close();
