// Operator flow: log in, see the simulated device online, call blink_morse
// from the console, revoke the device's key and see it go offline.
import assert from "node:assert/strict";
import { adminLogin, env, run, shot } from "./lib.mjs";

const base = env("BASE");
const device = env("DEVICE");

await run("dashboard", async ({ page, problems }) => {
  // A dialog still open when the page closes rejects its accept(): ignore that.
  page.on("dialog", (d) => d.accept().catch(() => {}));
  await adminLogin(page, base, env("OP_NAME"), env("OP_PASSWORD"));
  const row = page.locator(`#devices tr[data-device="${device}"]`);
  await row.locator(".status:text('online')").waitFor();
  assert.match(await row.innerText(), /blink_morse/);
  assert.match(await row.innerText(), /this server/);
  await shot(page, "dashboard-online");

  await page.selectOption("#call select[name=app]", "demo");
  await page.fill("#call input[name=function]", "blink_morse");
  await page.fill("#call textarea[name=args]", '["SOS"]');
  await page.click("#call button[type=submit]");
  await page.locator("#call-result:text('... --- ...')").waitFor();
  // The live call log shows the console's call.
  await page.locator("#calls tbody tr", { hasText: "blink_morse" }).first().waitFor();
  await shot(page, "dashboard-console");

  const key = await row.getAttribute("data-key");
  await page.click(`#keys tr[data-key="${key}"] button`);
  await row.locator(".status:text('offline')").waitFor();
  await page.locator(`#keys tr[data-key="${key}"] .revoked`).waitFor();
  await shot(page, "dashboard-revoked");
  assert.deepEqual(problems, []);
});
