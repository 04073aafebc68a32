// ferrolink dashboard. Every value from the server (device names, function
// names, payloads: things devices and users choose) goes into the page via
// textContent or element properties, never as markup.

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel) => document.querySelector(sel);
let state = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = v;
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c); else td.textContent = c ?? "";
    tr.append(td);
  }
  return tr;
}

const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "—");
const date = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : "—");

async function api(path, body) {
  const res = await fetch(`/_/admin/api/${path}`, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (res.status === 401) location.reload();
  if (!res.ok) throw new Error(json.error ?? `${path}: HTTP ${res.status}`);
  return json;
}

function fillSelect(select, names) {
  const keep = select.value;
  select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  if (names.includes(keep)) select.value = keep;
}

function toggle(app, setting) {
  const b = el("button", app[setting] ? "allowed" : "refused");
  b.type = "button";
  b.addEventListener("click", async () => {
    try { await api("apps/settings", { name: app.name, [setting]: !app[setting] }); await refresh(); }
    catch (e) { alert(e.message); }
  });
  return b;
}

function renderApps() {
  const body = $("#apps tbody");
  body.replaceChildren(...state.apps.map((a) => {
    let site = "none (ferrolink app deploy)";
    if (a.site) { site = el("a", a.url); site.href = a.url; }
    // A name served by several devices is flagged: calls are shared among
    // them, which a device with a stolen key could use to take calls.
    const fns = a.functions.map((f) => `${f.name} ← ${f.provided_by.join(" + ")}${f.shared ? " ⚠ shared" : ""}`).join(", ");
    return row([a.name, site, a.sessions, fns || "—", toggle(a, "anonymous_calls"), toggle(a, "signup")], { app: a.name });
  }));
  const names = state.apps.map((a) => a.name);
  fillSelect($("#new-key select[name=app]"), names);
  fillSelect($("#call select[name=app]"), names);
  renderFunctions();
}

function renderFunctions() {
  const app = state.apps.find((a) => a.name === $("#call select[name=app]").value);
  $("#functions").replaceChildren(...(app?.functions ?? []).map((f) => { const o = el("option"); o.value = f.name; return o; }));
}

function renderDevices() {
  const rows = [];
  const liveKeys = new Set();
  for (const d of state.devices) {
    liveKeys.add(d.key);
    const name = d.device ?? `key ${d.key}`;
    rows.push(row([name, d.app, el("span", "online", "online status"), time(d.last_seen_ms), d.address, d.protocol_version,
      d.library ?? "—", d.functions.join(", ") || "—"], { device: name, key: d.key }));
  }
  for (const k of state.keys) {
    // Devices that are not connected: active keys, and revoked ones that
    // were connected since the server started.
    if (k.privilege !== "server" || liveKeys.has(k.id)) continue;
    if (k.revoked_at && !k.last_seen_ms) continue;
    const name = k.device ?? `key ${k.id}`;
    const status = el("span", "offline", "offline status");
    const cell = k.revoked_at ? el("span") : status;
    if (k.revoked_at) cell.append(status, " (key revoked)");
    rows.push(row([name, k.app, cell, time(k.last_seen_ms), k.last_address ?? "—", "—", "—", "—"],
      { device: name, key: k.id }));
  }
  $("#devices tbody").replaceChildren(...rows);
}

function renderKeys() {
  $("#keys tbody").replaceChildren(...state.keys.map((k) => {
    let action = "";
    if (!k.revoked_at) {
      action = el("button", "Revoke");
      action.type = "button";
      action.addEventListener("click", async () => {
        if (!confirm(`Revoke key ${k.id}? Devices using it are disconnected.`)) return;
        try { await api("keys/revoke", { id: k.id }); await refresh(); } catch (e) { alert(e.message); }
      });
    }
    const st = k.revoked_at ? el("span", `revoked ${date(k.revoked_at)}`, "revoked") : (k.online ? el("span", "online", "online") : "active");
    return row([k.id, k.app, k.privilege, k.device ?? "—", date(k.created_at), st, action], { key: k.id });
  }));
}

function callRow(c) {
  return row([time(c.at_ms), c.app, c.caller, c.function, `${c.duration_ms} ms`, el("span", c.outcome, c.outcome === "ok" ? "" : "error")]);
}

function eventRow(e) {
  return row([time(e.at_ms), e.app, e.from, e.name, el("code", e.payload), e.delivered]);
}

const KEPT = 200;
function prepend(tbody, tr) {
  tbody.prepend(tr);
  while (tbody.children.length > KEPT) tbody.lastElementChild.remove();
}

async function refresh() {
  state = await api("state");
  renderApps();
  renderDevices();
  renderKeys();
}

async function start() {
  await refresh();
  $("#calls tbody").replaceChildren(...state.calls.slice(-KEPT).reverse().map(callRow));
  $("#events tbody").replaceChildren(...state.events.slice(-KEPT).reverse().map(eventRow));

  let pending = null;
  const later = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh().catch(console.error); }, 150); };
  const live = new EventSource("/_/admin/api/live");
  live.addEventListener("open", () => { $("#live").textContent = "live"; });
  live.addEventListener("error", () => { $("#live").textContent = "reconnecting…"; });
  live.addEventListener("changed", later);
  live.addEventListener("call", (m) => prepend($("#calls tbody"), callRow(JSON.parse(m.data))));
  live.addEventListener("event", (m) => prepend($("#events tbody"), eventRow(JSON.parse(m.data))));
  // Last-seen times age even when nothing changes.
  setInterval(later, 15_000);

  $("#call select[name=app]").addEventListener("change", renderFunctions);

  $("#new-app").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try { await api("apps", { name: f.name.value }); f.reset(); await refresh(); } catch (e) { alert(e.message); }
  });

  $("#new-key").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      const k = await api("keys", { app: f.app.value, privilege: f.privilege.value, device: f.device.value || null });
      const box = $("#new-key-secret");
      box.querySelector("code").textContent = k.key;
      box.hidden = false;
      f.device.value = "";
      await refresh();
    } catch (e) { alert(e.message); }
  });

  $("#call").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const out = $("#call-result");
    out.className = "result";
    out.textContent = "calling…";
    try {
      const r = await api("call", { app: f.app.value, function: f.function.value, args: f.args.value, kwargs: f.kwargs.value, device: f.device.value || null });
      if (r.error) {
        out.className = "result failed";
        out.textContent = `${r.error.type ?? "error"}: ${r.error.message ?? JSON.stringify(r.error)}`;
      } else {
        out.textContent = JSON.stringify(r.response, null, 2);
      }
    } catch (e) {
      out.className = "result failed";
      out.textContent = e.message;
    }
  });
}

start().catch((e) => { $("#live").textContent = `error: ${e.message}`; });
