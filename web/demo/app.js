// The demo app's page: calls the device's blink_morse and read_temperature,
// shows the temperature events the device raises, and charts the readings
// logged into the app's `readings` table.
import { connect, q } from "/_/ferrolink.js";

const $ = (id) => document.getElementById(id);

const link = await connect();
const showUser = () => { $("user").textContent = link.user ?? "nobody"; };
link.onStatus((status) => { $("status").textContent = status; showUser(); });
$("status").textContent = link.status;
showUser();

function showReading(r) {
  $("temp").textContent = Number(r.celsius ?? r).toFixed(2);
  if (r.device) $("temp-device").textContent = r.device;
  $("temp-at").textContent = new Date().toLocaleTimeString();
}
link.on("temperature", showReading);

$("morse").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("morse-error").textContent = "";
  $("pattern").textContent = "…";
  try {
    $("pattern").textContent = await link.call("blink_morse", $("text").value);
  } catch (e) {
    $("pattern").textContent = "—";
    $("morse-error").textContent = `${e.type ?? e.name}: ${e.message}`;
  }
});

$("read").addEventListener("click", async () => {
  try { showReading(await link.call("read_temperature")); }
  catch (e) { $("morse-error").textContent = `${e.type ?? e.name}: ${e.message}`; }
});

async function account(action) {
  $("account-error").textContent = "";
  try {
    if (action === "logout") await link.logout();
    else await link[action]($("email").value, $("password").value);
  } catch (e) {
    $("account-error").textContent = e.message;
  }
  showUser();
}
$("account").addEventListener("submit", (ev) => { ev.preventDefault(); account("login"); });
$("signup").addEventListener("click", () => account("signup"));
$("logout").addEventListener("click", () => account("logout"));

// History: at most the last ten minutes of the readings table (from the
// first reading in them), downsampled by the server into 60 buckets
// (min/max band, mean line).
const SPAN_MS = 10 * 60 * 1000;
async function drawHistory() {
  const readings = link.table("readings");
  const to = new Date(Date.now() + 1000);
  let from = new Date(to.getTime() - SPAN_MS);
  let buckets;
  try {
    const first = await readings.search(
      { filters: [q.ge("t", from.toISOString())], order: [["t", true]] }, { limit: 1 });
    if (first.rows.length) from = new Date(Math.max(from.getTime(), Date.parse(first.rows[0].values.t) - 1000));
    buckets = await readings.chart("t", "celsius", from.toISOString(), to.toISOString(), 60);
    $("history-error").textContent = "";
  } catch (e) {
    $("history-error").textContent = `${e.type ?? e.name}: ${e.message}`;
    return;
  }
  $("history-count").textContent = String(buckets.reduce((n, b) => n + b.count, 0));
  const chart = $("chart");
  chart.dataset.points = String(buckets.length);
  if (buckets.length === 0) return;
  const lo = Math.min(...buckets.map((b) => b.min)) - 0.2;
  const hi = Math.max(...buckets.map((b) => b.max)) + 0.2;
  const span = to.getTime() - from.getTime();
  $("history-span").textContent = span >= 120_000 ? `${Math.round(span / 60_000)} minutes` : `${Math.round(span / 1000)} seconds`;
  const x = (b) => (((b.start * 1000) - from.getTime()) / span) * 600;
  const y = (v) => 200 - ((v - lo) / (hi - lo)) * 200;
  const pts = (f) => buckets.map((b) => `${x(b).toFixed(1)},${y(f(b)).toFixed(1)}`);
  $("chart-line").setAttribute("d", `M${pts((b) => b.mean).join("L")}`);
  $("chart-band").setAttribute("d", `M${pts((b) => b.max).join("L")}L${pts((b) => b.min).reverse().join("L")}Z`);
  $("chart-max").textContent = `${hi.toFixed(1)} °C`;
  $("chart-min").textContent = `${lo.toFixed(1)} °C`;
}
drawHistory();
setInterval(drawHistory, 5000);
