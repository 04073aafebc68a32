// ferrolink browser client: call device functions from an app's page and
// receive the events devices raise. Served by every ferrolink server at
// /_/ferrolink.js (types: /_/ferrolink.d.ts). No build step, no
// dependencies.
//
//   import { connect } from "/_/ferrolink.js";
//   const link = await connect();
//   const pattern = await link.call("blink_morse", "SOS");
//   link.on("temperature", (reading) => show(reading.celsius));
//
// The session websocket speaks the Anvil Uplink protocol with client
// privilege; it is authenticated by the app's login cookie (or anonymous),
// so pages never hold keys. See docs/web.md.

/** An error raised by the called function (or the server on its behalf). */
export class RemoteError extends Error {
  constructor(type, message, trace) {
    super(message);
    this.name = "RemoteError";
    /** The remote exception type, e.g. "anvil.server.NoServerFunctionError". */
    this.type = type;
    /** The remote traceback, if the function's side sent one. */
    this.trace = trace ?? null;
  }
}

/** The connection to the server was lost or could not be made. */
export class ConnectionError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionError";
  }
}

const HEARTBEAT_MS = 10_000;
const HEARTBEAT_TIMEOUT_MS = 20_000;

function appFromLocation() {
  const m = /^\/app\/([^/]+)\//.exec(location.pathname);
  return m ? decodeURIComponent(m[1]) : null;
}

/** A live session with the server. Create one with `connect()`. */
export class Link {
  constructor(options = {}) {
    this.app = options.app ?? appFromLocation();
    this.callTimeoutMs = options.callTimeoutMs ?? 30_000;
    this.session = null;
    this.status = "connecting";
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._handlers = new Map();
    this._statusHandlers = new Set();
    this._channels = new Set();
    this._closed = false;
    this._attempt = 0;
    this._waiters = [];
    this._heartbeat = null;
    this._open();
  }

  _url(path) {
    const q = this.app ? `?app=${encodeURIComponent(this.app)}` : "";
    return `${path}${q}`;
  }

  _setStatus(status, detail) {
    this.status = status;
    for (const h of this._statusHandlers) {
      try { h(status, detail); } catch (e) { console.error(e); }
    }
  }

  _open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${this._url("/_/session")}`);
    this._ws = ws;
    this._lastError = null;
    ws.onmessage = (m) => this._onMessage(m.data);
    ws.onclose = () => this._onClose(ws);
    ws.onerror = () => {};
  }

  _onMessage(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (msg.session) {
      this.session = msg.session;
      this._attempt = 0;
      this._setStatus("connected", msg.session);
      for (const ch of this._channels) this._send("ferrolink.session.subscribe", [ch], {}).catch(() => {});
      this._startHeartbeat();
      const waiters = this._waiters;
      this._waiters = [];
      for (const w of waiters) w.resolve();
      return;
    }
    if (msg.event) {
      const handlers = [...(this._handlers.get(msg.event.name) ?? []), ...(this._handlers.get("*") ?? [])];
      for (const h of handlers) {
        try { h(msg.event.payload, msg.event.name); } catch (e) { console.error(e); }
      }
      return;
    }
    if (msg.id !== undefined && this._pending.has(msg.id)) {
      const p = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        const e = msg.error;
        p.reject(new RemoteError(e.type ?? "Exception", e.message ?? String(e), e.trace));
      } else {
        p.resolve(msg.response);
      }
      return;
    }
    if (msg.error && msg.id === undefined) {
      // The server is closing the session and says why.
      this._lastError = typeof msg.error === "string" ? msg.error : JSON.stringify(msg.error);
    }
  }

  _onClose(ws) {
    if (ws !== this._ws) return;
    clearInterval(this._heartbeat);
    const why = this._lastError ?? "the connection to the server was lost";
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionError(why));
    }
    this._pending.clear();
    this.session = null;
    if (this._closed) {
      this._setStatus("closed", why);
      for (const w of this._waiters) w.reject(new ConnectionError("the link was closed"));
      this._waiters = [];
      return;
    }
    // Full-jitter backoff: 0.25 s doubling to 10 s.
    const cap = Math.min(10_000, 250 * 2 ** this._attempt);
    this._attempt += 1;
    this._setStatus("reconnecting", why);
    setTimeout(() => { if (!this._closed) this._open(); }, Math.random() * cap);
  }

  _startHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      this._send("anvil.private.echo", ["ping"], {}, HEARTBEAT_TIMEOUT_MS).catch(() => {
        if (ws === this._ws && ws.readyState === WebSocket.OPEN) ws.close();
      });
    }, HEARTBEAT_MS);
  }

  /** Resolves once the session is open (immediately if it is). */
  ready() {
    if (this.session) return Promise.resolve();
    if (this._closed) return Promise.reject(new ConnectionError("the link was closed"));
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  _send(command, args, kwargs, timeoutMs) {
    const id = `b${this._nextId++}`;
    const frame = JSON.stringify({ type: "CALL", id, command, args, kwargs });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RemoteError("anvil.server.TimeoutError", `no answer to ${command} within ${(timeoutMs ?? this.callTimeoutMs) / 1000} s`));
      }, timeoutMs ?? this.callTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      this._ws.send(frame);
    });
  }

  /** Calls a function registered by a device or uplink; resolves to its result. */
  async call(name, ...args) {
    return this.callWith(name, args, {});
  }

  /** Calls `name` with positional `args` and keyword `kwargs`. */
  async callWith(name, args = [], kwargs = {}, options = {}) {
    await this.ready();
    const target = options.device ? `${name}@${options.device}` : name;
    return this._send(target, args, kwargs, options.timeoutMs);
  }

  /** The app's data table `name`, as far as its client access allows (docs/tables.md). */
  table(name) {
    return new Table(this, name);
  }

  /** Runs `handler(payload, name)` for each event `name` ("*": every event). Returns an unsubscribe function. */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this.off(name, handler);
  }

  /** Stops `handler` receiving event `name`. */
  off(name, handler) {
    this._handlers.get(name)?.delete(handler);
  }

  /** Receives events raised to `channel` (kept across reconnects). */
  async subscribe(channel) {
    this._channels.add(channel);
    await this.ready();
    await this._send("ferrolink.session.subscribe", [channel], {});
  }

  /** Stops receiving events raised to `channel`. */
  async unsubscribe(channel) {
    this._channels.delete(channel);
    await this.ready();
    await this._send("ferrolink.session.unsubscribe", [channel], {});
  }

  /** Runs `handler(status, detail)` on "connected", "reconnecting" and "closed". */
  onStatus(handler) {
    this._statusHandlers.add(handler);
    return () => this._statusHandlers.delete(handler);
  }

  /** The logged-in user's email, or null. */
  get user() {
    return this.session?.user ?? null;
  }

  async _auth(path, body) {
    const res = await fetch(this._url(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body ?? {}),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(json.error ?? `${path} failed (${res.status})`);
    await this.reconnect();
    return json.user ?? null;
  }

  /** Creates an account and logs in; resolves to the user's email. */
  signup(email, password) { return this._auth("/_/auth/signup", { email, password }); }

  /** Logs in; resolves to the user's email. The session reconnects as that user. */
  login(email, password) { return this._auth("/_/auth/login", { email, password }); }

  /** Logs out; the session reconnects anonymously. */
  logout() { return this._auth("/_/auth/logout"); }

  /** Re-opens the session (after logging in or out, so it carries the new identity). */
  async reconnect() {
    const old = this._ws;
    this.session = null;
    this._attempt = 0;
    this._open();
    if (old) { old.onclose = null; old.close(); }
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionError("the session reconnected"));
    }
    this._pending.clear();
    await this.ready();
  }

  /** Closes the session for good. */
  close() {
    this._closed = true;
    clearInterval(this._heartbeat);
    this._ws?.close();
  }
}

/** Opens a session and resolves once it is ready. */
/**
 * Conditions for `Table.search` and `Table.count`: a query is
 * `{ filters: [q.eq("device", "pico-1"), q.gt("celsius", 30)], order: [["t", false]] }`.
 * Values are as the server stores them: datetimes as RFC 3339 strings,
 * dates as "YYYY-MM-DD", links as row ids.
 */
export const q = {
  eq: (column, value) => ({ op: "eq", column, value }),
  gt: (column, value) => ({ op: "compare", column, cmp: "gt", value }),
  ge: (column, value) => ({ op: "compare", column, cmp: "ge", value }),
  lt: (column, value) => ({ op: "compare", column, cmp: "lt", value }),
  le: (column, value) => ({ op: "compare", column, cmp: "le", value }),
  like: (column, pattern) => ({ op: "like", column, pattern, ignore_case: false }),
  ilike: (column, pattern) => ({ op: "like", column, pattern, ignore_case: true }),
  words: (column, query) => ({ op: "words", column, query }),
  all: (...of) => ({ op: "all", of }),
  any: (...of) => ({ op: "any", of }),
  none: (...of) => ({ op: "none_of", of }),
};

/** A data table of the app. Get one with `link.table(name)`. */
export class Table {
  constructor(link, name) {
    this.link = link;
    this.name = name;
  }

  _call(fn, ...args) {
    return this.link.callWith(`ferrolink.tables.${fn}`, [this.name, ...args]);
  }

  /** Adds a row; resolves to its id. */
  async addRow(values) {
    return (await this._call("add_rows", [values]))[0];
  }

  /** Adds rows in one transaction, all or none; resolves to their ids. */
  addRows(rows) { return this._call("add_rows", rows); }

  /** Row `id` as `{id, values}`, or null. */
  get(id) { return this._call("get", id); }

  /** One page: `{rows: [{id, values}], more}`. */
  search(query = {}, { offset = 0, limit = 100 } = {}) {
    return this._call("search", query, offset, limit);
  }

  /** Every row `query` finds, a page at a time: `for await (const row of table.rows(query))`. */
  async *rows(query = {}, pageSize = 100) {
    let offset = 0;
    for (;;) {
      const page = await this.search(query, { offset, limit: pageSize });
      yield* page.rows;
      if (!page.more || page.rows.length === 0) return;
      offset += page.rows.length;
    }
  }

  /** How many rows `query` finds. */
  count(query = {}) { return this._call("count", query); }

  /** Changes some values of row `id`. */
  update(id, values) { return this._call("update", id, values); }

  /** Deletes row `id`; resolves to whether it existed. */
  delete(id) { return this._call("delete", id); }

  /**
   * A number column over a datetime column from `from` to `to` (RFC 3339)
   * in at most `buckets` buckets: `[{start, min, max, mean, count}]`, start
   * in seconds since the epoch.
   */
  chart(time, value, from, to, buckets = 100) {
    return this._call("chart", time, value, from, to, buckets);
  }
}

export async function connect(options = {}) {
  const link = new Link(options);
  await link.ready();
  return link;
}
