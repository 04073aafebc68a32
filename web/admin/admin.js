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
    return row([a.name, site, a.sessions, fns || "—", toggle(a, "anonymous_calls"), toggle(a, "signup"), toggle(a, "auto_columns")], { app: a.name });
  }));
  const names = state.apps.map((a) => a.name);
  fillSelect($("#new-key select[name=app]"), names);
  fillSelect($("#call select[name=app]"), names);
  const before = $("#tables-app").value;
  fillSelect($("#tables-app"), names);
  if ($("#tables-app").value !== before) loadTables().catch(showTablesError);
  renderFunctions();
}

// --- Data tables -----------------------------------------------------
const PAGE = 50;
let tables = [];
let current = null; // { name, columns, offset, query }

function showTablesError(e) { $("#import-result").textContent = e.message; alert(e.message); }

async function loadTables() {
  const app = $("#tables-app").value;
  if (!app) return;
  tables = await api(`tables?app=${encodeURIComponent(app)}`);
  $("#tables-list tbody").replaceChildren(...tables.map((t) => {
    const access = document.createElement("select");
    for (const a of ["none", "add", "read", "write"]) { const o = el("option", a); o.value = a; access.append(o); }
    access.value = t.client_access;
    access.addEventListener("change", async () => {
      try { await api("tables/access", { app, table: t.name, client: access.value, logged_in: t.client_login }); await loadTables(); }
      catch (e) { showTablesError(e); }
    });
    const open = el("button", "Open");
    open.type = "button";
    open.addEventListener("click", () => openTable(t.name).catch(showTablesError));
    const cols = t.columns.map((c) => `${c.name}:${c.type}`).join(" ");
    return row([t.name, t.rows, cols || "—", access, open], { table: t.name });
  }));
  if (current) {
    const t = tables.find((x) => x.name === current.name);
    if (t) current.columns = t.columns; else { current = null; $("#table-view").hidden = true; }
  }
}

function options(select, names) {
  select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
}

async function openTable(name) {
  const t = tables.find((x) => x.name === name);
  current = { name, columns: t.columns, offset: 0, query: {} };
  $("#table-view").hidden = false;
  $("#table-title").textContent = name;
  const names = t.columns.map((c) => c.name);
  options($("#filter select[name=column]"), names);
  options($("#schema select[name=column]"), names);
  options($("#filter select[name=order]"), ["(row id)", ...names]);
  options($("#chart-form select[name=time]"), t.columns.filter((c) => c.type === "datetime").map((c) => c.name));
  options($("#chart-form select[name=value]"), t.columns.filter((c) => c.type === "number").map((c) => c.name));
  const app = $("#tables-app").value;
  $("#export").href = `/_/admin/api/tables/csv?app=${encodeURIComponent(app)}&table=${encodeURIComponent(name)}`;
  $("#export").download = `${name}.csv`;
  await showRows();
}

function filterQuery() {
  const f = $("#filter");
  const query = { filters: [], order: [] };
  const raw = f.value.value.trim();
  if (raw !== "") {
    let value;
    try { value = JSON.parse(raw); } catch { value = raw; }
    const column = f.column.value;
    const op = f.op.value;
    if (op === "eq") query.filters.push({ op: "eq", column, value });
    else if (op === "like") query.filters.push({ op: "like", column, pattern: String(value), ignore_case: true });
    else query.filters.push({ op: "compare", column, cmp: op, value });
  }
  if (f.order.value !== "(row id)") query.order.push([f.order.value, !f.desc.checked]);
  return query;
}

async function showRows() {
  const app = $("#tables-app").value;
  const page = await api("tables/rows", { app, table: current.name, query: current.query, offset: current.offset, limit: PAGE });
  const names = current.columns.map((c) => c.name);
  $("#rows thead").replaceChildren(row(["id", ...names]));
  $("#rows tbody").replaceChildren(...page.rows.map((r) => row([r.id, ...names.map((n) => {
    const v = r.values[n];
    return v === null || v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
  })], { row: r.id })));
  const last = current.offset + page.rows.length;
  $("#page-info").textContent = page.total === 0 ? "no rows" : `rows ${current.offset + 1}–${last} of ${page.total}`;
  $("#prev").disabled = current.offset === 0;
  $("#next").disabled = !page.more;
}

const localInput = (secs) => new Date(secs * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 19);

async function drawChart() {
  const app = $("#tables-app").value;
  const f = $("#chart-form");
  const time = f.time.value;
  const value = f.value.value;
  if (!time || !value) { $("#chart-info").textContent = "the table needs a datetime and a number column"; return; }
  // Without a range: the whole table, from its first to its last time.
  if (!f.from.value || !f.to.value) {
    const ends = await Promise.all([true, false].map((asc) => api("tables/rows", {
      app, table: current.name, query: { filters: [{ op: "compare", column: time, cmp: "ge", value: "0001-01-01T00:00:00Z" }], order: [[time, asc]] }, limit: 1,
    })));
    if (!ends[0].rows.length) { $("#chart-info").textContent = "no rows with a time"; return; }
    f.from.value = localInput(Date.parse(ends[0].rows[0].values[time]) / 1000);
    f.to.value = localInput(Date.parse(ends[1].rows[0].values[time]) / 1000 + 1);
  }
  const from = new Date(f.from.value).toISOString();
  const to = new Date(f.to.value).toISOString();
  const buckets = await api("tables/chart", { app, table: current.name, time, value, from, to, buckets: 200 });
  const svg = $("#table-chart");
  svg.dataset.points = String(buckets.length);
  const n = buckets.reduce((k, b) => k + b.count, 0);
  $("#chart-info").textContent = `${n} rows in ${buckets.length} buckets`;
  if (!buckets.length) { svg.querySelector(".line").setAttribute("d", ""); svg.querySelector(".band").setAttribute("d", ""); return; }
  const t0 = Date.parse(from) / 1000;
  const span = Date.parse(to) / 1000 - t0;
  const lo = Math.min(...buckets.map((b) => b.min));
  const hi = Math.max(...buckets.map((b) => b.max));
  const pad = (hi - lo) * 0.05 || 1;
  const x = (b) => ((b.start - t0) / span) * 800;
  const y = (v) => 200 - ((v - lo + pad) / (hi - lo + 2 * pad)) * 200;
  const pts = (g) => buckets.map((b) => `${x(b).toFixed(1)},${y(g(b)).toFixed(1)}`);
  svg.querySelector(".line").setAttribute("d", `M${pts((b) => b.mean).join("L")}`);
  svg.querySelector(".band").setAttribute("d", `M${pts((b) => b.max).join("L")}L${pts((b) => b.min).reverse().join("L")}Z`);
}

function tableControls() {
  $("#tables-app").addEventListener("change", () => { current = null; $("#table-view").hidden = true; loadTables().catch(showTablesError); });
  $("#new-table").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      await api("tables", { app: $("#tables-app").value, name: f.name.value, columns: f.columns.value.split(/\s+/).filter(Boolean) });
      f.reset();
      await loadTables();
    } catch (e) { showTablesError(e); }
  });
  $("#add-column").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("tables/columns", { app: $("#tables-app").value, table: current.name, column: ev.target.column.value });
      ev.target.reset();
      await loadTables();
      await openTable(current.name);
    } catch (e) { showTablesError(e); }
  });
  const schema = async (path, body, question) => {
    if (question && !confirm(question)) return;
    try {
      await api(path, { app: $("#tables-app").value, table: current.name, ...body });
      $("#schema input[name=to]").value = "";
      if (path === "tables/rename" && !body.column) current.name = body.to;
      if (path === "tables/drop" && !body.column) { current = null; $("#table-view").hidden = true; }
      await loadTables();
      if (current) await openTable(current.name);
    } catch (e) { showTablesError(e); }
  };
  $("#rename-column").addEventListener("click", () => schema("tables/rename", { column: $("#schema select[name=column]").value, to: $("#schema input[name=to]").value }));
  $("#drop-column").addEventListener("click", () => {
    const column = $("#schema select[name=column]").value;
    schema("tables/drop", { column }, `Delete column ${column} of ${current.name} and every value in it?`);
  });
  $("#rename-table").addEventListener("click", () => schema("tables/rename", { to: $("#schema input[name=to]").value }));
  $("#drop-table").addEventListener("click", () => schema("tables/drop", {}, `Delete table ${current.name} and all its rows?`));
  $("#filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    current.query = filterQuery();
    current.offset = 0;
    showRows().catch(showTablesError);
  });
  $("#prev").addEventListener("click", () => { current.offset = Math.max(0, current.offset - PAGE); showRows().catch(showTablesError); });
  $("#next").addEventListener("click", () => { current.offset += PAGE; showRows().catch(showTablesError); });
  $("#import").addEventListener("click", async () => {
    const file = $("#import-file").files[0];
    if (!file) { $("#import-result").textContent = "choose a CSV file first"; return; }
    const app = $("#tables-app").value;
    const res = await fetch(`/_/admin/api/tables/import?app=${encodeURIComponent(app)}&table=${encodeURIComponent(current.name)}`, {
      method: "POST", headers: { "Content-Type": "text/csv", "X-CSRF-Token": csrf }, body: await file.text(),
    });
    const json = await res.json().catch(() => ({}));
    $("#import-result").textContent = res.ok ? `added ${json.added} rows` : (json.error ?? `HTTP ${res.status}`);
    await loadTables();
    await showRows();
  });
  $("#chart-form").addEventListener("submit", (ev) => { ev.preventDefault(); drawChart().catch(showTablesError); });
}

function renderFunctions() {
  const app = state.apps.find((a) => a.name === $("#call select[name=app]").value);
  $("#functions").replaceChildren(...(app?.functions ?? []).map((f) => { const o = el("option"); o.value = f.name; return o; }));
}

// Which server of a cluster holds a connection: "this server", or the
// other server's id (alone, there is only this one).
function serverOf(d) {
  return !d.node || d.node === state.node ? "this server" : d.node;
}

function renderDevices() {
  const rows = [];
  const liveKeys = new Set();
  for (const d of state.devices) {
    liveKeys.add(d.key);
    const name = d.device ?? `key ${d.key}`;
    rows.push(row([name, d.app, el("span", "online", "online status"), serverOf(d), time(d.last_seen_ms), d.address,
      d.protocol_version, d.library ?? "—", d.functions.join(", ") || "—"], { device: name, key: d.key }));
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
    rows.push(row([name, k.app, cell, "—", time(k.last_seen_ms), k.last_address ?? "—", "—", "—", "—"],
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
  tableControls();

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
