// Strings a device chooses (its library name, its function names) appear
// in the dashboard as text, never as markup.
import assert from "node:assert/strict";
import { adminLogin, env, run, shot } from "./lib.mjs";

const evil = env("EVIL");

await run("escaping", async ({ page }) => {
  await adminLogin(page, env("BASE"), env("OP_NAME"), env("OP_PASSWORD"));
  const cell = page.locator("#devices td", { hasText: evil }).first();
  await cell.waitFor();
  assert.equal(await cell.textContent(), evil);
  await page.locator("#apps td", { hasText: env("EVIL_FUNCTION") }).first().waitFor();
  const pwned = await page.evaluate(() => window.__pwned ?? null);
  assert.equal(pwned, null, "device-provided markup ran");
  assert.equal(await page.locator("#devices script, #devices img, #apps img").count(), 0);
  await shot(page, "dashboard-escaping");
});
