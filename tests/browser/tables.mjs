// Data tables from an app page through link.table(): what each table's
// client access allows, paging, filters, changes — and a table for
// logged-in users only.
import assert from "node:assert/strict";
import { env, run } from "./lib.mjs";

await run("tables", async ({ page, problems }) => {
  await page.goto(env("APP_URL"));
  const r = await page.evaluate(async () => {
    const { connect, q } = await import("/_/ferrolink.js");
    const link = await connect();
    const out = {};
    const attempt = async (name, f) => {
      try { out[name] = { ok: await f() }; } catch (e) { out[name] = { type: e.type, message: e.message }; }
    };
    await attempt("list", async () => (await link.callWith("ferrolink.tables.list")).map((t) => `${t.name}:${t.access}`));
    const notes = link.table("notes");
    const rows = Array.from({ length: 150 }, (_, i) => ({ title: `note ${i}`, n: i }));
    await attempt("add", async () => (await notes.addRows(rows)).length);
    await attempt("count", () => notes.count());
    await attempt("count_filtered", () => notes.count({ filters: [q.ge("n", 100), q.like("title", "note 1%")] }));
    await attempt("iterate", async () => { let n = 0; for await (const _ of notes.rows({ filters: [q.ge("n", 20)] }, 40)) n += 1; return n; });
    await attempt("page", async () => {
      const p = await notes.search({ order: [["n", false]] }, { limit: 3 });
      return [p.rows.map((x) => x.values.n), p.more];
    });
    await attempt("any", () => notes.count({ filters: [q.any(q.eq("n", 1), q.eq("n", 2), q.eq("title", "nope"))] }));
    const id = (await notes.search({ filters: [q.eq("n", 7)] })).rows[0].id;
    await attempt("update", async () => { await notes.update(id, { title: "seven" }); return (await notes.get(id)).values.title; });
    await attempt("delete", async () => [await notes.delete(id), await notes.get(id)]);
    await attempt("bad_type", () => notes.addRow({ n: "many" }));
    await attempt("log_add", () => link.table("log").addRow({ line: "hello" }));
    await attempt("log_read", () => link.table("log").count());
    await attempt("secret_add", () => link.table("secret").addRow({ v: "x" }));
    await attempt("members_anonymous", () => link.table("members").count());
    await link.signup(`ada.${Date.now()}@example.org`, "correct horse battery");
    await attempt("members_user", () => link.table("members").count());
    return out;
  });
  const ok = (k) => r[k].ok;
  assert.deepEqual(ok("list"), ["log:add", "notes:write"], JSON.stringify(r));
  assert.equal(ok("add"), 150);
  assert.equal(ok("count"), 150);
  assert.equal(ok("count_filtered"), 50);
  assert.equal(ok("iterate"), 130);
  assert.deepEqual(ok("page"), [[149, 148, 147], true]);
  assert.equal(ok("any"), 2);
  assert.equal(ok("update"), "seven");
  assert.deepEqual(ok("delete"), [true, null]);
  assert.equal(r.bad_type.type, "anvil.tables.TableError", JSON.stringify(r.bad_type));
  assert.equal(typeof ok("log_add"), "number");
  assert.equal(r.log_read.type, "anvil.server.PermissionDenied");
  assert.equal(r.secret_add.type, "anvil.server.PermissionDenied");
  assert.equal(r.members_anonymous.type, "anvil.server.PermissionDenied");
  assert.equal(ok("members_user"), 1, JSON.stringify(r.members_user));
  assert.deepEqual(problems, []);
});
