// The demo app: type text, get the Morse pattern from the device, and see
// temperature events arrive in the page.
import assert from "node:assert/strict";
import { env, run, shot } from "./lib.mjs";

await run("demo", async ({ page, problems }) => {
  await page.goto(env("APP_URL"));
  await page.locator("#status:text('connected')").waitFor();
  await page.fill("#text", "SOS hi");
  await page.click("#blink");
  await page.locator("#pattern:text('... --- ... / .... ..')").waitFor();
  // Events: the simulated device raises one every second in this test.
  await page.waitForFunction(() => /^\d+\.\d\d$/.test(document.getElementById("temp").textContent));
  const t = Number(await page.textContent("#temp"));
  assert.ok(t > 15 && t < 30, `temperature ${t}`);
  // History: the readings the simulated device logged through the app's
  // log_reading, charted from the readings table (logged every 0.5 s here).
  await page.waitForFunction(() => Number(document.getElementById("chart").dataset.points) >= 2, null, { timeout: 30_000 });
  const count = Number(await page.textContent("#history-count"));
  assert.ok(count >= 2, `readings counted ${count}`);
  const line = await page.getAttribute("#chart-line", "d");
  assert.match(line, /^M[\d.]+,[\d.]+(L[\d.]+,[\d.]+)+$/);
  assert.equal(await page.textContent("#history-error"), "");
  await shot(page, "demo-app");
  assert.deepEqual(problems, []);
});
