// Duplex JavaScript client: one dependency-free ES module for browsers and
// Node 20+ that speaks the native protocol (docs/PROTOCOL.md, version 1).
//
//   import { Duplex } from "duplex-client"; // npm install /path/to/duplex/clients/js
//   const client = new Duplex("ws://localhost:1234/ws", { getToken });
//   client.subscribe("news", { onMessage(data) { console.log(data); } });
//   client.connect();
//
// Types: duplex.d.ts next to this file. Policy and examples: README.md.

/** Version of this client. */
export const VERSION = "0.1.0";
/** Native protocol version this client speaks (sent in `connect`). */
export const PROTOCOL_VERSION = 1;

/** Server error codes (docs/PROTOCOL.md section 4). */
export const ErrorCode = Object.freeze({
  INTERNAL: 100,
  BAD_REQUEST: 101,
  UNKNOWN_METHOD: 102,
  INVALID_CHANNEL: 103,
  ALREADY_CONNECTED: 104,
  PERMISSION_DENIED: 105,
  LIMIT_EXCEEDED: 106,
  BROKER_UNAVAILABLE: 107,
  TOO_MANY_REQUESTS: 108,
  TIMEOUT: 109,
  UNSUPPORTED_VERSION: 110,
  TOKEN_EXPIRED: 111,
  UNAUTHORIZED: 112,
  /** An rpc got no reply from the backends within the server's `rpc_timeout`. */
  RPC_TIMEOUT: 113,
  /** Too many rpcs waiting for replies (this connection or the node). */
  TOO_MANY_PENDING: 114,
  /** The node's HTTP upstream failed. Backends' own codes are 1000–9999. */
  UPSTREAM_FAILED: 115,
  /** `history` on a channel whose namespace keeps no history. */
  NO_HISTORY: 116,
  /** `presence` or `presenceStats` on a channel whose namespace keeps no presence. */
  NO_PRESENCE: 117,
  // Client-side failures (never sent by a server): below 100.
  /** No reply (or no connection) within `timeout`. */
  CLIENT_TIMEOUT: 1,
  /** The connection closed before the reply came; the command may or may not have run. */
  CONNECTION_LOST: 2,
  /** `disconnect()` was called, or the client stopped for good. */
  CLIENT_CLOSED: 3,
  /** Not sent by this version (presence once needed a newer server); kept for code that tests for it. */
  NOT_SUPPORTED: 4,
});

/** After a 1001 (going away), this many retries come quickly (the node is restarting, or a load balancer has another). */
const GOING_AWAY_RETRIES = 10;
/** Quick retries wait 100–300 ms each (jittered, so a node's clients spread out). */
const QUICK_RETRY_MIN = 100;
const QUICK_RETRY_MAX = 300;
/** The server's rpc_timeout when its `connect` reply does not say (servers before `rpc_timeout_ms`). */
const DEFAULT_SERVER_RPC_TIMEOUT = 10000;
/** How much longer than the server's rpc_timeout `rpc` and `send` wait, so the server's RPC_TIMEOUT (113) comes first. */
export const RPC_TIMEOUT_MARGIN = 2000;

/** Close codes the client treats specially (docs/PROTOCOL.md section 5). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  SLOW_CONSUMER: 3001,
  HEARTBEAT_TIMEOUT: 3002,
  TOO_MANY_REQUESTS: 3004,
  CONNECT_TIMEOUT: 3005,
  TOKEN_EXPIRED: 3006,
  TOO_MANY_CONNECTIONS: 3007,
  INVALID_TOKEN: 3500,
  BAD_REQUEST: 3501,
});

/**
 * Whether a close code allows reconnecting; the same rule as the server's
 * `reconnect_allowed` (crates/duplex-protocol/src/code.rs).
 * @param {number} code
 * @returns {boolean}
 */
export function reconnectAllowed(code) {
  return (
    code === 1001 ||
    code === 1006 ||
    (code >= 1011 && code <= 1014) ||
    (code >= 3000 && code <= 3499)
  );
}

/** A failed command: a server error reply or a client-side failure. */
export class DuplexError extends Error {
  /**
   * @param {number} code
   * @param {string} message
   * @param {boolean} [temporary]
   */
  constructor(code, message, temporary = false) {
    super(message);
    this.name = "DuplexError";
    this.code = code;
    this.temporary = temporary;
  }
}

// Tiny event emitter: on() returns a function that removes the handler.
class Emitter {
  constructor() {
    this._handlers = new Map();
  }
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
  }
  _emit(event, ...args) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        // A throwing handler must not break the connection logic.
        console.error(`duplex: "${event}" handler threw`, err);
      }
    }
  }
}

/** `params` with `channel` added when one is given (`send`, `rpc`). */
function withChannel(params, channel) {
  if (channel === undefined || channel === null) return params;
  if (typeof channel !== "string" || channel === "") throw new TypeError("channel must be a non-empty string");
  return { ...params, channel };
}

function toBase64(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes.buffer ?? bytes, bytes.byteOffset ?? 0, bytes.byteLength);
  let s = "";
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** One channel subscription; made by `client.subscribe()`. */
export class Subscription extends Emitter {
  constructor(client, channel, options) {
    super();
    this.client = client;
    this.channel = channel;
    /** @type {"subscribing"|"subscribed"|"unsubscribed"} */
    this.state = "subscribing";
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._retries = 0;
    this._retryTimer = null;
    /**
     * On a history channel: the last position delivered to the app,
     * `{ epoch, offset }` (offset 0: nothing yet), or null. Sent as `recover`
     * on every resubscribe, so what was missed while away arrives first.
     */
    this.position = null;
    if (options.since !== undefined && options.since !== null) {
      const { epoch, offset } = options.since;
      if (typeof epoch !== "string" || !Number.isSafeInteger(offset) || offset < 0) {
        throw new TypeError("since must be { epoch: string, offset: integer >= 0 } (a position saved from sub.position)");
      }
      this.position = { epoch, offset };
    }
    // Asks for `join` / `leave` events (the namespace must set join_leave):
    // `joinLeave: true`, implied by `onJoin` / `onLeave`.
    this._joinLeave = options.joinLeave ?? Boolean(options.onJoin || options.onLeave);
    this._subscribed = null; // detail of the last `subscribed` event
    this._held = null; // messages held while an epoch check runs (see _accept)
    this.duplicatesDropped = 0; // messages dropped as already delivered (a server bug if ever above 0)
    for (const [event, key] of [
      ["message", "onMessage"],
      ["subscribed", "onSubscribed"],
      ["error", "onError"],
      ["unsubscribed", "onUnsubscribed"],
      ["join", "onJoin"],
      ["leave", "onLeave"],
    ]) {
      if (typeof options[key] === "function") this.on(event, options[key]);
    }
  }

  /**
   * Resolves once the server confirmed the subscription (at once if it
   * already has), with the `subscribed` event's detail.
   */
  ready() {
    if (this.state === "subscribed") return Promise.resolve(this._subscribed);
    if (this.state === "unsubscribed") {
      return Promise.reject(new DuplexError(ErrorCode.CLIENT_CLOSED, `not subscribed to ${this.channel}`));
    }
    return new Promise((resolve, reject) => {
      const offs = [
        this.on("subscribed", (e) => (offs.forEach((f) => f()), resolve(e))),
        this.on("unsubscribed", (e) => (offs.forEach((f) => f()), reject(e?.error ?? new DuplexError(ErrorCode.CLIENT_CLOSED, "unsubscribed")))),
      ];
    });
  }

  /** Stops the subscription: no more messages, and no resubscribe after a reconnect. */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  /** Who is on the channel: `client.presence(this.channel)`. */
  presence() {
    return this.client.presence(this.channel);
  }
  /** How many are on the channel: `client.presenceStats(this.channel)`. */
  presenceStats() {
    return this.client.presenceStats(this.channel);
  }
  /** What the channel's history keeps: `client.history(this.channel, options)`. */
  history(options) {
    return this.client.history(this.channel, options);
  }
  /** Publishes on this subscription's channel. */
  publish(data) {
    return this.client.publish(this.channel, data);
  }

  _setState(state, detail) {
    if (this.state === state) return;
    this.state = state;
    if (state !== "subscribed") this._held = null; // an epoch check of the lost connection is void
    this._emit(state, detail ?? {});
  }

  // The subscribe reply's position for this channel (`at`, or none: no
  // history there), `from` the position sent as `recover` (or null).
  // Returns the `subscribed` event's detail.
  _subscribedAt(at, from) {
    const known = at && typeof at.epoch === "string" && Number.isSafeInteger(at.offset);
    const recovered = Boolean(from) && known && at.recovered === true;
    // Recovered: the missed messages follow and move `position` on from
    // `from`. Otherwise the channel's position is where the live messages
    // start (what came before was not replayed: `recovered: false`).
    if (!recovered) this.position = known ? { epoch: at.epoch, offset: at.offset } : null;
    return {
      recovered,
      wasRecovering: Boolean(from),
      position: known ? { epoch: at.epoch, offset: at.offset } : null,
    };
  }

  // Whether a message push with an offset is delivered now (moving
  // `position` on). Offsets only grow within an epoch, so one at or below
  // `position` is a repeat, or the channel's history started a new epoch
  // while we were connected (its offsets start from 1 again; pushes carry
  // no epoch). The client holds the channel's messages, in order, while it
  // asks the server which (Duplex._checkEpoch).
  _accept(msg) {
    if (this._held) {
      this._held.push(msg);
      return false;
    }
    const at = this.position;
    if (!at || msg.offset > at.offset) {
      if (at) this.position = { epoch: at.epoch, offset: msg.offset };
      return true;
    }
    this._held = [msg];
    this.client._checkEpoch(this, this._held);
    return false;
  }
}

/** A client for one Duplex node (or a load balancer in front of several). */
export class Duplex extends Emitter {
  /**
   * @param {string} url  e.g. "ws://localhost:1234/ws"
   * @param {object} [options]  see duplex.d.ts (DuplexOptions)
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      name: "duplex-js",
      version: VERSION,
      minReconnectDelay: 500,
      maxReconnectDelay: 20000,
      timeout: 10000,
      ...options,
    };
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket)");
    }
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    /** @type {"disconnected"|"connecting"|"connected"} */
    this.state = "disconnected";
    /** The `connect` result of the current connection, or null. */
    this.info = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._queue = []; // commands waiting for a connection
    this._subs = new Map(); // channel -> Subscription
    /**
     * The token's history channels (those the server subscribed at
     * connect): channel -> the last position delivered, `{ epoch, offset }`.
     * Sent as `recover` on every connect, like a subscription's position.
     * @type {Map<string, {epoch: string, offset: number}>}
     */
    this.tokenPositions = new Map();
    this._wanted = false; // connect() called and not disconnect()
    this._attempt = 0; // attempts since the last successful connect
    this._backoffStep = 0; // exponent of the next backoff delay
    this._quickRetries = 0; // quick retries left after a 1001
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._connectTimer = null;
    this._gen = 0; // bumped by every _open() and _stop(): stale async steps give up
  }

  // ---- connection ------------------------------------------------------

  /** Starts connecting (and keeps reconnecting per the close-code policy). */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this._attempt = this._backoffStep = this._quickRetries = 0;
    this._open();
  }

  /** Closes the connection for good; pending and queued commands are rejected. */
  disconnect() {
    if (!this._wanted && this.state === "disconnected") return;
    this._wanted = false;
    this._stop(1000, "client disconnect", ErrorCode.CLIENT_CLOSED);
  }

  async _open() {
    const gen = ++this._gen;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._setState("connecting", { attempt: this._attempt });
    let token = this._token;
    try {
      if (!token && this._getToken) token = this._token = await this._getToken();
    } catch (err) {
      this._emit("error", err);
      if (gen === this._gen && this._wanted && this.state === "connecting") this._lost(CloseCode.ABNORMAL, `getToken failed: ${err?.message ?? err}`, true);
      return;
    }
    if (gen !== this._gen || !this._wanted || this.state !== "connecting") return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._emit("error", err);
      this._wanted = false;
      this._stop(CloseCode.ABNORMAL, `cannot open WebSocket: ${err?.message ?? err}`, ErrorCode.CLIENT_CLOSED);
      return;
    }
    this._ws = ws;
    this._serverDisconnect = null;
    this._tokenRetried = false;
    // Connection plus `connect` reply must finish within `timeout`.
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && this.state === "connecting") {
        this._dropSocket(ws);
        this._lost(CloseCode.ABNORMAL, "connect timed out", true);
      }
    }, this.options.timeout);
    ws.onopen = () => {
      if (this._ws === ws) this._sendConnect(ws, token);
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onFrame(event.data);
    };
    // One loss per attempt, whichever event comes first: browsers fire
    // `error` then `close`, but Node 20 fires only `error` when the
    // connection is refused. The later one finds this._ws changed.
    const ended = (code, reason) => {
      if (this._ws !== ws) return;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      // An error on an open socket: make sure it does not linger half-open.
      if (ws.readyState === 1) {
        try {
          ws.close(1000);
        } catch {
          // already closing
        }
      }
      // The disconnect push carries the untruncated reason and the server's verdict.
      const push = this._serverDisconnect;
      const finalCode = push?.code ?? code;
      const finalReason = push?.reason ?? reason;
      const reconnect = push ? push.reconnect === true : reconnectAllowed(finalCode);
      this._lost(finalCode, finalReason, reconnect);
    };
    // An error event means the connection failed: 1006, as the close event that may follow says.
    ws.onerror = (event) => ended(CloseCode.ABNORMAL, event?.message || "connection failed");
    ws.onclose = (event) => ended(event.code, event.reason ?? "");
  }

  _sendConnect(ws, token) {
    const params = { name: this.options.name, version: this.options.version, protocol: PROTOCOL_VERSION };
    if (token) params.token = token;
    if (this.options.joinLeave) params.join_leave = true;
    const from = new Map(this.tokenPositions);
    if (from.size) params.recover = Object.fromEntries([...from].map(([ch, at]) => [ch, { epoch: at.epoch, offset: at.offset }]));
    // Handled as the reply is read, before the frames after it (the
    // replayed messages of the token's channels follow their `subscribed`).
    const onResult = (result) => {
      if (this._ws !== ws) return;
      clearTimeout(this._connectTimer);
      this.info = result;
      this._attempt = this._backoffStep = this._quickRetries = 0;
      const tokenChannels = this._tokenChannelsAt(result.positions ?? {}, from);
      this._setState("connected", { info: result });
      for (const event of tokenChannels) this._emit("subscribed", event);
      this._scheduleRefresh(result.expires);
      for (const sub of this._subs.values()) this._sendSubscribe(sub);
      const queued = this._queue;
      this._queue = [];
      for (const cmd of queued) this._write(cmd);
    };
    this._command("connect", params, { direct: true, onResult }).then(
      () => {},
      async (err) => {
        if (this._ws !== ws) return;
        if (err.code === ErrorCode.TOKEN_EXPIRED && this._getToken && !this._tokenRetried) {
          // Expired: fetch a fresh token and send connect again, once.
          this._tokenRetried = true;
          try {
            this._token = await this._getToken();
          } catch (e) {
            this._emit("error", e);
            this._dropSocket(ws);
            this._lost(CloseCode.ABNORMAL, `getToken failed: ${e?.message ?? e}`, true);
            return;
          }
          if (this._ws === ws) this._sendConnect(ws, this._token);
          return;
        }
        this._emit("error", err);
        this._dropSocket(ws);
        if (err.code === ErrorCode.TOKEN_EXPIRED) {
          // A second expired token (or no getToken to ask): try later with a new one.
          if (this._getToken) this._token = null;
          this._lost(err.code, err.message, Boolean(this._getToken));
        } else if (err.temporary || err.code === ErrorCode.CLIENT_TIMEOUT || err.code === ErrorCode.CONNECTION_LOST) {
          this._lost(CloseCode.ABNORMAL, err.message, true);
        } else {
          // 110 unsupported version, 112 unauthorized, ...: retrying will not help.
          this._lost(err.code, err.message, false);
        }
      },
    );
  }

  // Called once per lost connection (or failed attempt).
  _lost(code, reason, reconnect) {
    clearTimeout(this._connectTimer);
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this.info = null;
    this._rejectPending(new DuplexError(ErrorCode.CONNECTION_LOST, `connection closed: ${code} ${reason}`.trim(), true));
    for (const sub of this._subs.values()) {
      clearTimeout(sub._retryTimer);
      if (sub.state === "subscribed") sub._setState("subscribing");
    }
    // Ask getToken for a new one; a fixed token is kept (the server will say 111).
    if (code === CloseCode.TOKEN_EXPIRED && this._getToken) this._token = null;
    if (!this._wanted || !reconnect) {
      this._wanted = false;
      this._rejectQueue(new DuplexError(ErrorCode.CLIENT_CLOSED, `disconnected: ${code} ${reason}`.trim()));
      this._setState("disconnected", { code, reason, reconnect: false });
      return;
    }
    if (code === CloseCode.GOING_AWAY) this._quickRetries = GOING_AWAY_RETRIES;
    const delay = this._reconnectDelay();
    this._attempt++;
    this._setState("disconnected", { code, reason, reconnect: true, delay });
    this._reconnectTimer = setTimeout(() => {
      if (this._wanted) this._open();
    }, delay);
  }

  _reconnectDelay() {
    // After a going away: a few quick tries, jittered so a node's clients spread out.
    if (this._quickRetries > 0) {
      this._quickRetries--;
      return Math.floor(QUICK_RETRY_MIN + Math.random() * (QUICK_RETRY_MAX - QUICK_RETRY_MIN));
    }
    // Exponential backoff with full jitter above the floor `min`; the first
    // retry is jittered too (between min and 2·min), so the clients of a
    // node that crashed do not all come back in the same millisecond.
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const cap = Math.min(max, min * 2 ** Math.min(1 + this._backoffStep++, 30));
    return Math.floor(min + Math.random() * (cap - min));
  }

  _stop(code, reason, errorCode) {
    this._gen++;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._refreshTimer);
    this._reconnectTimer = this._refreshTimer = null;
    for (const sub of this._subs.values()) {
      clearTimeout(sub._retryTimer);
      if (sub.state === "subscribed") sub._setState("subscribing");
    }
    const ws = this._ws;
    this._ws = null;
    if (ws) this._dropSocket(ws);
    this.info = null;
    const err = new DuplexError(errorCode, `disconnected: ${reason}`);
    this._rejectPending(err);
    this._rejectQueue(err);
    this._setState("disconnected", { code, reason, reconnect: false });
  }

  _dropSocket(ws) {
    if (this._ws === ws) this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      ws.close(1000); // browsers refuse to send other codes below 3000
    } catch {
      // already closing, or a code the implementation will not send
    }
  }

  // "disconnected" is emitted for every lost connection (with `reconnect`);
  // the other states only on change.
  _setState(state, detail) {
    if (this.state === state && state !== "disconnected") return;
    this.state = state;
    this._emit("state", { state, ...detail });
    this._emit(state, detail);
  }

  // ---- token refresh ---------------------------------------------------

  _scheduleRefresh(expires) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!expires || !this._getToken) return;
    const remaining = expires * 1000 - Date.now();
    // Refresh when a third of the remaining life is left, at most 60 s early.
    const delay = Math.max(0, remaining - Math.min(60000, remaining / 3));
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  async _refresh(retried = false) {
    const ws = this._ws;
    try {
      const token = await this._getToken();
      if (this._ws !== ws || this.state !== "connected") return;
      this._token = token;
      const result = await this._command("refresh", { token });
      this._emit("refreshed", result);
      if (this._ws === ws) this._scheduleRefresh(result?.expires);
    } catch (err) {
      if (this._ws !== ws) return;
      this._emit("error", err);
      if (err?.code === ErrorCode.CONNECTION_LOST || err?.code === ErrorCode.CLIENT_CLOSED) return;
      // Try once more shortly; if that fails too the server closes with 3006
      // and the reconnect fetches a new token.
      if (!retried) this._refreshTimer = setTimeout(() => this._refresh(true), this.options.minReconnectDelay);
    }
  }

  // ---- commands --------------------------------------------------------

  // `timeout`: ms for the whole command (default `options.timeout`).
  // `replyTimeout()`: when `timeout` is not given, ms to wait for the reply
  // once the command is sent (rpc, send); queued, it waits `options.timeout`.
  // `onResult(result)`: called as the result is read, before later frames.
  _command(method, params, { direct = false, timeout, replyTimeout, onResult } = {}) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const frame = JSON.stringify(params === undefined ? { id, method } : { id, method, params });
      const entry = { id, frame, resolve, reject, onResult, timer: null };
      entry.arm = (ms) => {
        clearTimeout(entry.timer);
        entry.timer = setTimeout(() => {
          this._pending.delete(id);
          const i = this._queue.indexOf(entry);
          if (i >= 0) this._queue.splice(i, 1);
          reject(new DuplexError(ErrorCode.CLIENT_TIMEOUT, `${method}: no reply within ${ms} ms`, true));
        }, ms);
      };
      entry.replyTimeout = timeout === undefined ? replyTimeout : undefined;
      entry.arm(timeout ?? this.options.timeout);
      if (direct || this.state === "connected") {
        this._write(entry);
      } else if (this._wanted) {
        this._queue.push(entry); // sent once connected, or rejected at `timeout`
      } else {
        clearTimeout(entry.timer);
        reject(new DuplexError(ErrorCode.CLIENT_CLOSED, `${method}: client is not connected (call connect() first)`));
      }
    });
  }

  _write(entry) {
    this._pending.set(entry.id, entry);
    if (entry.replyTimeout) entry.arm(entry.replyTimeout());
    try {
      this._ws.send(entry.frame);
    } catch (err) {
      this._pending.delete(entry.id);
      clearTimeout(entry.timer);
      entry.reject(new DuplexError(ErrorCode.CONNECTION_LOST, `send failed: ${err?.message ?? err}`, true));
    }
  }

  _rejectPending(err) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  _rejectQueue(err) {
    const queued = this._queue;
    this._queue = [];
    for (const p of queued) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  _onFrame(data) {
    let msg;
    try {
      msg = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      this._emit("error", new DuplexError(ErrorCode.BAD_REQUEST, "server sent a frame that is not JSON"));
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    if (typeof msg.push === "string") {
      this._onPush(msg);
      return;
    }
    const entry = typeof msg.id === "number" ? this._pending.get(msg.id) : undefined;
    if (!entry) {
      if (msg.error) this._emit("error", new DuplexError(msg.error.code, msg.error.message, msg.error.temporary === true));
      return;
    }
    this._pending.delete(msg.id);
    clearTimeout(entry.timer);
    if (msg.error) {
      entry.reject(new DuplexError(msg.error.code, msg.error.message, msg.error.temporary === true));
    } else {
      entry.onResult?.(msg.result ?? {});
      entry.resolve(msg.result ?? {});
    }
  }

  // The connect result's positions of the token's history channels, `from`
  // the positions sent as `recover`: the `subscribed` events to emit, each
  // channel's position set where its live messages start unless recovered
  // (then the replayed messages move it on).
  _tokenChannelsAt(positions, from) {
    const events = [];
    const now = new Map();
    for (const [channel, at] of Object.entries(positions)) {
      if (!at || typeof at.epoch !== "string" || typeof at.offset !== "number") continue;
      const before = from.get(channel) ?? null;
      const recovered = Boolean(before) && at.recovered === true;
      now.set(channel, recovered ? { ...this.tokenPositions.get(channel) } : { epoch: at.epoch, offset: at.offset });
      events.push({ channel, recovered, wasRecovering: Boolean(before), position: { epoch: at.epoch, offset: at.offset } });
    }
    this.tokenPositions = now;
    return events;
  }

  _onPush(msg) {
    switch (msg.push) {
      case "message": {
        const sub = this._subs.get(msg.channel);
        if (sub && typeof msg.offset === "number" && !sub._accept(msg)) break; // held or a repeat
        const token = sub ? undefined : this.tokenPositions.get(msg.channel);
        if (token && typeof msg.offset === "number") {
          if (typeof msg.epoch === "string") token.epoch = msg.epoch;
          token.offset = msg.offset;
        }
        this._deliver(msg, sub);
        break;
      }
      case "disconnect":
        this._serverDisconnect = msg;
        break;
      case "unsubscribe": {
        // A backend took this connection off the channel (POST /api/unsubscribe):
        // forget it, so it is not subscribed again after a reconnect.
        const sub = this._subs.get(msg.channel);
        if (sub) {
          this._subs.delete(msg.channel);
          clearTimeout(sub._retryTimer);
          sub._setState("unsubscribed", { server: true });
        }
        break;
      }
      case "join":
      case "leave": {
        // Presence (join_leave channels, asked for): a user's first connection
        // came, or their last went; on a token's channel, a client event.
        const sub = this._subs.get(msg.channel);
        const event = { channel: msg.channel, user: msg.user, conn: msg.conn, info: msg.info };
        if (sub) sub._emit(msg.push, event);
        else this._emit(msg.push, event);
        break;
      }
      default:
        this._emit("push", msg); // unknown push types are ignored by the client
    }
  }

  _deliver(msg, sub) {
    const data = msg.encoding === "base64" ? fromBase64(msg.data) : msg.data;
    const ctx = { channel: msg.channel, encoding: msg.encoding ?? "json" };
    if (typeof msg.offset === "number") ctx.offset = msg.offset;
    this._emit("message", data, ctx);
    if (sub) sub._emit("message", data, ctx);
  }

  // A message at or below `sub.position` arrived (`held` starts with it):
  // the channel's epoch says whether it is a repeat (same epoch: dropped)
  // or the history restarted (new epoch: everything held is delivered).
  // If the connection drops meanwhile, the held messages go too: the
  // resubscribe's `recover` gets them back or says `recovered: false`.
  async _checkEpoch(sub, held) {
    let epoch = null;
    try {
      ({ epoch } = await this._command("history", { channel: sub.channel, limit: 0 }));
    } catch {
      // Cannot tell: deliver (a repeat is better than a loss).
    }
    if (sub._held !== held) return; // the connection dropped, or unsubscribed, meanwhile
    sub._held = null;
    const same = epoch === sub.position.epoch;
    if (!same) sub.position = { epoch: typeof epoch === "string" ? epoch : sub.position.epoch, offset: 0 };
    for (const msg of held) {
      // Same epoch: a repeat, which a correct server never sends; counted, not delivered.
      if (same && !sub._held && msg.offset <= sub.position.offset) sub.duplicatesDropped++;
      else if (sub._accept(msg)) this._deliver(msg, sub);
    }
  }

  /** Sends `ping` and resolves with the round trip time in ms. */
  async ping() {
    const start = Date.now();
    await this._command("ping");
    return Date.now() - start;
  }

  /**
   * Publishes `data` to `channel`. Strings and JSON values go as JSON;
   * a Uint8Array / ArrayBuffer / DataView goes as base64 (a binary message).
   */
  publish(channel, data) {
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      return this._command("publish", { channel, data: toBase64(data), encoding: "base64" });
    }
    if (data === undefined) return Promise.reject(new TypeError("publish: data is required"));
    return this._command("publish", { channel, data });
  }

  /**
   * Asks the application's backends: `method` names the call, `data` is
   * any JSON (see docs/UPSTREAM.md). Resolves with the backend's reply
   * data; rejects with a backend's own code (1000–9999), RPC_TIMEOUT (113)
   * when no backend answered within the server's `rpc_timeout`, or
   * UNKNOWN_METHOD (102) when the node has no upstream. Once sent, it waits
   * the server's `rpc_timeout` (`info.rpc_timeout_ms`) plus
   * RPC_TIMEOUT_MARGIN for the reply, so the server's answer comes first;
   * `options.timeout` (ms, the whole call) overrides that.
   * `options.channel` names the channel the call is about: its namespace
   * may route it to its own backend, and the client must be allowed to
   * publish there (else PERMISSION_DENIED, 105).
   */
  async rpc(method, data = null, { channel, timeout } = {}) {
    if (typeof method !== "string" || method === "") throw new TypeError("rpc: method must be a non-empty string");
    const result = await this._command("rpc", withChannel({ method, data }, channel), this._upstreamTimeouts(timeout));
    return result?.data ?? null;
  }
  /**
   * Sends `data` up to the application's backends (a Redis Stream the
   * workers read, or the node's HTTP upstream; see docs/UPSTREAM.md).
   * Resolves once the node has handed it over; a node with neither answers
   * UNKNOWN_METHOD (102). `options` as for `rpc` (an HTTP upstream may take
   * up to the server's `rpc_timeout` to take it).
   */
  async send(data, { channel, timeout } = {}) {
    const timeouts = this._upstreamTimeouts(timeout);
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      return this._command("send", withChannel({ data: toBase64(data), encoding: "base64" }, channel), timeouts);
    }
    if (data === undefined) throw new TypeError("send: data is required");
    return this._command("send", withChannel({ data }, channel), timeouts);
  }

  // rpc and send: an explicit `timeout` for the whole call, else the
  // server's rpc_timeout plus the margin once sent.
  _upstreamTimeouts(timeout) {
    if (timeout !== undefined && !(typeof timeout === "number" && timeout > 0)) {
      throw new TypeError("timeout must be a positive number of ms");
    }
    return { timeout, replyTimeout: () => this._serverRpcTimeout() + RPC_TIMEOUT_MARGIN };
  }

  _serverRpcTimeout() {
    const ms = this.info?.rpc_timeout_ms;
    return typeof ms === "number" && ms > 0 ? ms : DEFAULT_SERVER_RPC_TIMEOUT;
  }
  /**
   * Who is on a presence channel, on every node (docs/PRESENCE.md):
   * resolves with `[{ conn, user, info }]`, one per connection (`user` ""
   * when anonymous; `info` the token's `info` claim, undefined without).
   * Rejects with NO_PRESENCE (117) on a channel that keeps none,
   * PERMISSION_DENIED (105) if the client may not subscribe to it.
   */
  async presence(channel) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("presence: channel must be a non-empty string");
    const result = await this._command("presence", { channel });
    return (result.members ?? []).map(({ conn, user, info }) => ({ conn, user, info }));
  }
  /**
   * How many are on a presence channel: resolves with `{ connections,
   * users }` (distinct users; each anonymous connection counts as one).
   * Rejects as `presence` does.
   */
  async presenceStats(channel) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("presenceStats: channel must be a non-empty string");
    const { connections, users } = await this._command("presence_stats", { channel });
    return { connections, users };
  }
  /**
   * Reads what `channel`'s history keeps (docs/PROTOCOL.md 3.4): the
   * publications after `since` (all kept without it), at most `limit`
   * (capped by the namespace's `history_size`; 0 for the position alone),
   * newest first with `reverse`. Resolves with `{ epoch, offset,
   * publications: [{ offset, data, encoding }] }` (`offset`: the channel's
   * last one; binary data as a Uint8Array, as in `message` events).
   * Rejects with NO_HISTORY (116) on a channel that keeps none,
   * PERMISSION_DENIED (105) if the client may not subscribe to it.
   */
  async history(channel, { since, limit, reverse } = {}) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("history: channel must be a non-empty string");
    const params = { channel };
    if (since !== undefined) params.since = since;
    if (limit !== undefined) params.limit = limit;
    if (reverse) params.reverse = true;
    const result = await this._command("history", params);
    const publications = (result.publications ?? []).map((p) => ({
      offset: p.offset,
      data: p.encoding === "base64" ? fromBase64(p.data) : p.data,
      encoding: p.encoding ?? "json",
    }));
    return { epoch: result.epoch, offset: result.offset, publications };
  }

  // ---- subscriptions ---------------------------------------------------

  /**
   * Subscribes to `channel` now and after every reconnect.
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (typeof options === "function") options = { onMessage: options };
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}: unsubscribe first or use getSubscription()`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /** The live subscription to `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel) ?? null;
  }

  /** All live subscriptions. */
  subscriptions() {
    return [...this._subs.values()];
  }

  async _sendSubscribe(sub, tokenRetried = false) {
    const ws = this._ws;
    const params = { channel: sub.channel };
    if (sub._joinLeave) params.join_leave = true;
    try {
      if (sub._getToken && (!sub._token || tokenRetried)) sub._token = await sub._getToken(sub.channel);
      if (sub._token) params.token = sub._token;
    } catch (err) {
      if (this._subs.get(sub.channel) !== sub) return;
      sub._emit("error", err);
      this._retrySubscribe(sub, ws);
      return;
    }
    if (this._ws !== ws || this._subs.get(sub.channel) !== sub || this.state !== "connected") return;
    // Back on a history channel: ask for what was missed since the last
    // message delivered (they follow the reply, before live ones).
    const from = sub.position;
    if (from) params.recover = { [sub.channel]: { epoch: from.epoch, offset: from.offset } };
    // Handled as the reply is read, not a promise tick later: the server
    // sends the missed messages right behind it, and a WebSocket may hand
    // over several frames in one task, so the app must hear `subscribed`
    // (and `recovered`) before them.
    const onResult = (result) => {
      if (this._subs.get(sub.channel) !== sub || this._ws !== ws) return;
      sub._retries = 0;
      sub._subscribed = sub._subscribedAt(result?.positions?.[sub.channel], from);
      sub._setState("subscribed", sub._subscribed);
    };
    try {
      await this._command("subscribe", params, { onResult });
    } catch (err) {
      if (this._subs.get(sub.channel) !== sub || this._ws !== ws) return;
      if (err.code === ErrorCode.CONNECTION_LOST || err.code === ErrorCode.CLIENT_CLOSED) return; // resubscribed on reconnect
      if (err.code === ErrorCode.TOKEN_EXPIRED && sub._getToken && !tokenRetried) {
        this._sendSubscribe(sub, true);
        return;
      }
      sub._emit("error", err);
      if (err.temporary) {
        this._retrySubscribe(sub, ws);
      } else {
        // Permanent (105 denied, 103 invalid, 106 limit, expired token without getToken): give up.
        this._subs.delete(sub.channel);
        sub._setState("unsubscribed", { error: err });
      }
    }
  }

  _retrySubscribe(sub, ws) {
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const cap = Math.min(max, min * 2 ** Math.min(sub._retries++, 30));
    clearTimeout(sub._retryTimer);
    sub._retryTimer = setTimeout(() => {
      if (this._ws === ws && this.state === "connected" && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
    }, min + Math.random() * (cap - min));
  }

  async _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    clearTimeout(sub._retryTimer);
    const wasOnServer = this.state === "connected";
    sub._setState("unsubscribed", {});
    if (wasOnServer) {
      try {
        await this._command("unsubscribe", { channel: sub.channel });
      } catch {
        // Lost connection: nothing to undo, the server dropped it anyway.
      }
    }
  }
}

export default Duplex;
