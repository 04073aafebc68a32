// Shared by the browser test scripts: Debian's chromium through
// playwright-core, with the flags this machine needs (no background
// networking: the sandbox has no outside network).
import { chromium } from "playwright-core";
import path from "node:path";

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
}

export async function launch() {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.setDefaultTimeout(15_000);
  return { browser, context, page, problems };
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(env("SCREENSHOTS"), `${name}.png`), fullPage: true });
}

export async function adminLogin(page, base, name, password) {
  await page.goto(`${base}/_/admin`);
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.click("#login");
  await page.waitForSelector("#live:text('live')");
}

/** Runs `body`; on failure saves a screenshot and exits 1 with the error. */
export async function run(name, body) {
  const b = await launch();
  try {
    await body(b);
    console.log(`${name}: ok`);
  } catch (e) {
    await shot(b.page, `${name}-failure`).catch(() => {});
    console.error(`${name} failed: ${e.stack ?? e}`);
    if (b.problems.length) console.error(b.problems.join("\n"));
    process.exitCode = 1;
  } finally {
    await b.browser.close();
  }
}
