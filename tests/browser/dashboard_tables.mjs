// Operator flow for data tables: browse the demo's readings (logged by the
// simulated device), page, filter, chart them; create a table, import a
// CSV into it (a bad one changes nothing), export it, change its access.
import assert from "node:assert/strict";
import { adminLogin, env, run, shot } from "./lib.mjs";

const base = env("BASE");

await run("dashboard-tables", async ({ page, problems }) => {
  const dialogs = [];
  // A dialog still open when the page closes rejects its accept(): ignore that.
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept().catch(() => {}); });
  await adminLogin(page, base, env("OP_NAME"), env("OP_PASSWORD"));
  await page.selectOption("#tables-app", "demo");
  const readings = page.locator('#tables-list tr[data-table="readings"]');
  await readings.waitFor();
  assert.match(await readings.innerText(), /t:datetime celsius:number/);
  await readings.locator("button").click();
  await page.locator("#rows tbody tr").first().waitFor();
  assert.match(await page.textContent("#page-info"), /^rows 1–\d+ of \d+$/);

  // Filter: celsius above 0 finds them all, above 1000 none.
  await page.selectOption("#filter select[name=column]", "celsius");
  await page.selectOption("#filter select[name=op]", "gt");
  await page.fill("#filter input[name=value]", "1000");
  await page.click("#filter button[type=submit]");
  await page.locator("#page-info:text('no rows')").waitFor();
  await page.fill("#filter input[name=value]", "0");
  await page.selectOption("#filter select[name=order]", "t");
  await page.check("#filter input[name=desc]");
  await page.click("#filter button[type=submit]");
  await page.locator("#rows tbody tr").first().waitFor();
  const times = await page.locator("#rows tbody tr td:nth-child(2)").allTextContents();
  assert.deepEqual([...times].sort().reverse(), times, "newest first");

  // Chart of the whole table.
  await page.click("#chart-form button[type=submit]");
  await page.waitForFunction(() => Number(document.getElementById("table-chart").dataset.points) >= 1);
  assert.match(await page.textContent("#chart-info"), /^\d+ rows in \d+ buckets$/);
  await shot(page, "dashboard-tables");

  // A new table, filled from a CSV file.
  await page.fill("#new-table input[name=name]", "notes");
  await page.fill("#new-table input[name=columns]", "title:text n:number done:bool");
  await page.click("#new-table button[type=submit]");
  const notes = page.locator('#tables-list tr[data-table="notes"]');
  await notes.waitFor();
  await notes.locator("button").click();
  await page.locator("#table-title:text('notes')").waitFor();
  const csv = 'title,n,done\r\n"Hello, world",1,true\r\n"<b>not markup</b>",2.5,false\r\nthird,,\r\n';
  await page.setInputFiles("#import-file", { name: "notes.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  await page.click("#import");
  await page.locator("#import-result:text('added 3 rows')").waitFor();
  await page.locator("#page-info:text('rows 1–3 of 3')").waitFor();
  assert.equal(await page.textContent('#rows tr[data-row="2"] td:nth-child(2)'), "<b>not markup</b>");
  assert.equal(await page.locator("#rows b").count(), 0);
  // A bad file: an error naming the line, and nothing added.
  const bad = "title,n\r\nok,1\r\nbad,many\r\n";
  await page.setInputFiles("#import-file", { name: "bad.csv", mimeType: "text/csv", buffer: Buffer.from(bad) });
  await page.click("#import");
  await page.locator("#import-result:text('CSV line 3')").waitFor();
  assert.match(await page.textContent("#import-result"), /column "n" \(number\): a number, not "many"/);
  await page.locator("#page-info:text('rows 1–3 of 3')").waitFor();
  // Export: the same rows back.
  const href = await page.getAttribute("#export", "href");
  const exported = await page.evaluate(async (u) => (await fetch(u)).text(), href);
  assert.equal(exported, 'title,n,done\r\n"Hello, world",1.0,true\r\n<b>not markup</b>,2.5,false\r\nthird,,\r\n');
  // Client access.
  await notes.locator("select").selectOption("read");
  await page.waitForFunction(() => document.querySelector('#tables-list tr[data-table="notes"] select').value === "read");
  // The next line waits for what it needs; "load" (every subresource)
  // can take long on a loaded machine and is not needed here.
  await page.reload({ waitUntil: "domcontentloaded" });
  await page.waitForSelector("#live:text('live')");
  await page.selectOption("#tables-app", "demo");
  await page.locator('#tables-list tr[data-table="notes"]').waitFor();
  assert.equal(await page.locator('#tables-list tr[data-table="notes"] select').inputValue(), "read");
  // Schema: rename a column and the table, delete a column, then the table.
  await notes.locator("button").click();
  await page.selectOption("#schema select[name=column]", "n");
  await page.fill("#schema input[name=to]", "count");
  await page.click("#rename-column");
  await page.locator("#rows thead td:text-is('count')").waitFor();
  assert.equal(await page.textContent('#rows tr[data-row="1"] td:nth-child(3)'), "1");
  await page.selectOption("#schema select[name=column]", "done");
  await page.click("#drop-column");
  await page.waitForFunction(() => ![...document.querySelectorAll("#rows thead td")].some((th) => th.textContent === "done"));
  await page.fill("#schema input[name=to]", "memos");
  await page.click("#rename-table");
  await page.locator('#tables-list tr[data-table="memos"]').waitFor();
  await page.locator("#table-title:text('memos')").waitFor();
  await page.click("#drop-table");
  await page.waitForFunction(() => !document.querySelector('#tables-list tr[data-table="memos"]'));
  assert.equal(await page.isHidden("#table-view"), true);
  // Dialogs: the failed import's message and the two confirmations.
  assert.deepEqual(dialogs.filter((d) => !d.includes("CSV line 3")), [
    "Delete column done of notes and every value in it?",
    "Delete table memos and all its rows?",
  ]);
  // The bad import's 400 is the one failed request the browser reports.
  assert.deepEqual(problems.filter((p) => !p.includes("status of 400")), []);
  assert.equal(problems.length, 1, JSON.stringify(problems));
});
