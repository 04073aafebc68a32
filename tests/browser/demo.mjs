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
  await shot(page, "demo-app");
  assert.deepEqual(problems, []);
});
