// A cluster's dashboard: logged in on one server, the operator sees a
// device held by another server, with that server's id, and a device that
// connects there later appears without a reload.
import assert from "node:assert/strict";
import { adminLogin, env, run, shot } from "./lib.mjs";

const base = env("BASE");
const node = env("NODE");

await run("dashboard_cluster", async ({ page, problems }) => {
  await adminLogin(page, base, env("OP_NAME"), env("OP_PASSWORD"));
  const row = page.locator(`#devices tr[data-device="pico-a"]`);
  await row.locator(".status:text('online')").waitFor();
  const text = await row.innerText();
  assert.ok(text.includes(node), `pico-a's row names server ${node}: ${text}`);
  assert.match(text, /blink/);
  // Connected to the other server after the page loaded: shown live.
  const later = page.locator(`#devices tr[data-device="pico-later"]`);
  await later.locator(".status:text('online')").waitFor({ timeout: 20000 });
  assert.ok((await later.innerText()).includes(node));
  await shot(page, "dashboard-cluster");
  assert.deepEqual(problems, []);
});
