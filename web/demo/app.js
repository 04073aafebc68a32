// The demo app's page: calls the device's blink_morse and read_temperature,
// and shows the temperature events the device raises.
import { connect } from "/_/ferrolink.js";

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
