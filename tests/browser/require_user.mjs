// A device function that requires a logged-in user (checked by the device
// through anvil.private.users.get_current_user_email): refused for an
// anonymous session, accepted once the browser's user has logged in.
import assert from "node:assert/strict";
import { env, run, shot } from "./lib.mjs";

const fn = env("FUNCTION");

await run("require_user", async ({ page }) => {
  await page.goto(env("APP_URL"));
  const anonymous = await page.evaluate(async (fn) => {
    const { connect } = await import("/_/ferrolink.js");
    const link = await connect();
    try {
      return { ok: await link.call(fn) };
    } catch (e) {
      return { type: e.type, message: e.message, user: link.user };
    }
  }, fn);
  assert.equal(anonymous.ok, undefined, "an anonymous call must be refused");
  assert.equal(anonymous.user, null);
  assert.match(anonymous.message, /log in/i);

  const email = `ada.${Date.now()}@example.org`;
  const loggedIn = await page.evaluate(async ([fn, email]) => {
    const { connect } = await import("/_/ferrolink.js");
    const link = await connect();
    const user = await link.signup(email, "correct horse battery");
    return { user, sessionUser: link.user, result: await link.call(fn) };
  }, [fn, email]);
  assert.equal(loggedIn.user, email);
  assert.equal(loggedIn.sessionUser, email);
  assert.equal(loggedIn.result, `hello ${email}`);

  // A new page of the same browser is still logged in (the cookie), and
  // logging out makes calls anonymous again.
  const again = await page.evaluate(async (fn) => {
    const { connect } = await import("/_/ferrolink.js");
    const link = await connect();
    const before = await link.call(fn);
    await link.logout();
    try { await link.call(fn); return { before, after: "accepted" }; }
    catch (e) { return { before, after: e.message }; }
  }, fn);
  assert.equal(again.before, `hello ${email}`);
  assert.match(again.after, /log in/i);
  await shot(page, "require-user");
});
