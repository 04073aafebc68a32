// Types for /_/ferrolink.js, the ferrolink browser client.

/** An error raised by the called function (or the server on its behalf). */
export class RemoteError extends Error {
  /** The remote exception type, e.g. "anvil.server.NoServerFunctionError". */
  readonly type: string;
  /** The remote traceback, if sent. */
  readonly trace: string | null;
}

/** The connection to the server was lost or could not be made. */
export class ConnectionError extends Error {}

/** What the server says about the session when it opens. */
export interface SessionInfo {
  /** Public session id; devices can target it with raise_event(session_id=...). */
  id: string;
  app: string;
  /** The logged-in user's email, or null. */
  user: string | null;
  /** Whether the app accepts calls from sessions without a user. */
  anonymous_calls: boolean;
}

export type Status = "connecting" | "connected" | "reconnecting" | "closed";

export interface LinkOptions {
  /** The app; defaults to the one in the page's /app/NAME/ path, else the server's default app. */
  app?: string | null;
  /** Deadline of a call in milliseconds (default 30000). */
  callTimeoutMs?: number;
}

export interface CallOptions {
  /** Only this device may serve the call (name@device). */
  device?: string;
  /** Deadline of this call in milliseconds. */
  timeoutMs?: number;
}

export class Link {
  constructor(options?: LinkOptions);
  readonly app: string | null;
  readonly session: SessionInfo | null;
  readonly status: Status;
  /** The logged-in user's email, or null. */
  readonly user: string | null;
  ready(): Promise<void>;
  call<T = unknown>(name: string, ...args: unknown[]): Promise<T>;
  callWith<T = unknown>(name: string, args?: unknown[], kwargs?: Record<string, unknown>, options?: CallOptions): Promise<T>;
  /** The app's data table `name`, as far as its client access allows. */
  table(name: string): Table;
  on<P = unknown>(name: string, handler: (payload: P, name: string) => void): () => void;
  off(name: string, handler: (payload: any, name: string) => void): void;
  subscribe(channel: string): Promise<void>;
  unsubscribe(channel: string): Promise<void>;
  onStatus(handler: (status: Status, detail: unknown) => void): () => void;
  signup(email: string, password: string): Promise<string | null>;
  login(email: string, password: string): Promise<string | null>;
  logout(): Promise<null>;
  reconnect(): Promise<void>;
  close(): void;
}

/** A condition on rows (build them with `q`). */
export type Filter =
  | { op: "eq"; column: string; value: unknown }
  | { op: "compare"; column: string; cmp: "gt" | "ge" | "lt" | "le"; value: unknown }
  | { op: "like"; column: string; pattern: string; ignore_case: boolean }
  | { op: "words"; column: string; query: string }
  | { op: "all" | "any" | "none_of"; of: Filter[] };

/** Which rows, in which order (`[column, ascending]`; the row id breaks ties). */
export interface Query {
  filters?: Filter[];
  order?: [string, boolean][];
}

export const q: {
  eq(column: string, value: unknown): Filter;
  gt(column: string, value: unknown): Filter;
  ge(column: string, value: unknown): Filter;
  lt(column: string, value: unknown): Filter;
  le(column: string, value: unknown): Filter;
  like(column: string, pattern: string): Filter;
  ilike(column: string, pattern: string): Filter;
  words(column: string, query: string): Filter;
  all(...of: Filter[]): Filter;
  any(...of: Filter[]): Filter;
  none(...of: Filter[]): Filter;
};

/** A row: its id and its values by column name. */
export interface Row {
  id: number;
  values: Record<string, unknown>;
}

/** A downsampled bucket; `start` in seconds since the epoch. */
export interface Bucket {
  start: number;
  min: number;
  max: number;
  mean: number;
  count: number;
}

/** A data table of the app. */
export class Table {
  readonly name: string;
  addRow(values: Record<string, unknown>): Promise<number>;
  addRows(rows: Record<string, unknown>[]): Promise<number[]>;
  get(id: number): Promise<Row | null>;
  search(query?: Query, page?: { offset?: number; limit?: number }): Promise<{ rows: Row[]; more: boolean }>;
  rows(query?: Query, pageSize?: number): AsyncIterable<Row>;
  count(query?: Query): Promise<number>;
  update(id: number, values: Record<string, unknown>): Promise<null>;
  delete(id: number): Promise<boolean>;
  chart(time: string, value: string, from: string, to: string, buckets?: number): Promise<Bucket[]>;
}

/** Opens a session and resolves once it is ready. */
export function connect(options?: LinkOptions): Promise<Link>;
