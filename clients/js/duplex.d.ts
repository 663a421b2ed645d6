// Types for duplex.js, the Duplex native-protocol client (protocol 1).

/** Version of this client. */
export const VERSION: string;
/** Native protocol version this client speaks. */
export const PROTOCOL_VERSION: 1;
/** Ms `rpc` and `send` wait past the server's `rpc_timeout` (2000), so the server's RPC_TIMEOUT comes first. */
export const RPC_TIMEOUT_MARGIN: number;

/** Server error codes (100-116) and client-side failure codes (1-4). */
export const ErrorCode: Readonly<{
  INTERNAL: 100;
  BAD_REQUEST: 101;
  UNKNOWN_METHOD: 102;
  INVALID_CHANNEL: 103;
  ALREADY_CONNECTED: 104;
  PERMISSION_DENIED: 105;
  LIMIT_EXCEEDED: 106;
  BROKER_UNAVAILABLE: 107;
  TOO_MANY_REQUESTS: 108;
  TIMEOUT: 109;
  UNSUPPORTED_VERSION: 110;
  TOKEN_EXPIRED: 111;
  UNAUTHORIZED: 112;
  /** An rpc got no reply from the backends within the server's `rpc_timeout`. Temporary. */
  RPC_TIMEOUT: 113;
  /** Too many rpcs waiting for replies (this connection or the node). Temporary. */
  TOO_MANY_PENDING: 114;
  /** The node's HTTP upstream failed. Temporary. Backends' own codes are 1000–9999. */
  UPSTREAM_FAILED: 115;
  /** `history` on a channel whose namespace keeps no history. */
  NO_HISTORY: 116;
  /** `presence` or `presenceStats` on a channel whose namespace keeps no presence. */
  NO_PRESENCE: 117;
  /** No reply (or no connection) within `timeout`. Temporary. */
  CLIENT_TIMEOUT: 1;
  /** The connection closed before the reply; the command may or may not have run. Temporary. */
  CONNECTION_LOST: 2;
  /** `disconnect()` was called, the client was never started, or it stopped for good. */
  CLIENT_CLOSED: 3;
  /** Not sent by this version (presence once needed a newer server). */
  NOT_SUPPORTED: 4;
}>;

/** Close codes the client treats specially. */
export const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  SLOW_CONSUMER: 3001;
  HEARTBEAT_TIMEOUT: 3002;
  TOO_MANY_REQUESTS: 3004;
  CONNECT_TIMEOUT: 3005;
  TOKEN_EXPIRED: 3006;
  TOO_MANY_CONNECTIONS: 3007;
  INVALID_TOKEN: 3500;
  BAD_REQUEST: 3501;
}>;

/** The server's rule: 1001, 1006, 1011-1014 and 3000-3499 allow reconnecting. */
export function reconnectAllowed(code: number): boolean;

/** A failed command: a server error reply, or a client-side failure (code below 100). */
export class DuplexError extends Error {
  constructor(code: number, message: string, temporary?: boolean);
  readonly name: "DuplexError";
  /** Server error code (100-116, more in later versions) or an ErrorCode client code (1-4). */
  code: number;
  /** True when the same command may succeed if retried later. */
  temporary: boolean;
}

/** A WebSocket constructor compatible with the browser's (e.g. the `ws` package). */
export interface WebSocketLike {
  new (url: string): {
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: any) => void) | null;
    onmessage: ((ev: { data: any }) => void) | null;
    onerror: ((ev: any) => void) | null;
    onclose: ((ev: { code: number; reason: string }) => void) | null;
  };
}

export interface DuplexOptions {
  /** A fixed connection token (JWT). Without `getToken` it cannot be renewed. */
  token?: string;
  /**
   * Fetches a connection token from your backend. Called before the first
   * connect (when `token` is not given), after an expired-token reply (111)
   * or close (3006), and before `expires` to `refresh` the connection.
   * A rejection is reported as an `error` event and retried with backoff.
   */
  getToken?: () => Promise<string> | string;
  /** Client software name sent in `connect` (logged by the server). Default "duplex-js". */
  name?: string;
  /** Client software version sent in `connect`. Default: this client's VERSION. */
  version?: string;
  /** WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketLike;
  /** Smallest backoff delay in ms. Default 500. The backoff starts again from it after every successful connect. */
  minReconnectDelay?: number;
  /** Largest backoff delay in ms. Default 20000. */
  maxReconnectDelay?: number;
  /**
   * Ms to wait for a reply, for the connection (handshake plus `connect`
   * reply), and for a command queued while disconnected. Default 10000.
   * Once sent, `rpc` and `send` wait the server's `rpc_timeout` plus
   * RPC_TIMEOUT_MARGIN instead (their own `timeout` option overrides that).
   */
  timeout?: number;
  /**
   * Ask for `join` / `leave` events on the token's presence channels
   * (namespaces with `join_leave = true`): client-level `join` / `leave`
   * events. Default false.
   */
  joinLeave?: boolean;
}

/** The `connect` result (docs/PROTOCOL.md 3.2). Unknown fields may appear. */
export interface ConnectInfo {
  client: string;
  node: string;
  version: string;
  protocol: number;
  ping_interval: number;
  /** The server's `rpc_timeout` in ms (absent from servers before it was added: 10000 is assumed). */
  rpc_timeout_ms?: number;
  user?: string;
  /** Token expiry, Unix seconds. */
  expires?: number;
  /** Channels the token subscribed the connection to. */
  channels?: string[];
  /** Those of them that keep history: where each stands (`recovered` when `connect` sent `recover`). */
  positions?: Record<string, StreamPosition & { recovered?: boolean }>;
  [key: string]: unknown;
}

export type ConnectionState = "disconnected" | "connecting" | "connected";

export interface ConnectingEvent {
  state: "connecting";
  /** Failed attempts since the last successful connect. */
  attempt: number;
}
export interface ConnectedEvent {
  state: "connected";
  info: ConnectInfo;
}
export interface DisconnectedEvent {
  state: "disconnected";
  /**
   * The close code (1000-4999), or, when `connect` itself was refused, the
   * server's error code (110 unsupported version, 111 token expired, 112 unauthorized).
   */
  code: number;
  reason: string;
  /** Whether the client will try again; false means it stopped for good. */
  reconnect: boolean;
  /** When `reconnect`: ms until the next attempt. */
  delay?: number;
}
export type StateEvent = ConnectingEvent | ConnectedEvent | DisconnectedEvent;

/** Context of a received message. */
export interface MessageContext {
  channel: string;
  /** "base64" when `data` is a Uint8Array (a binary message), else "json". */
  encoding: "json" | "base64";
  /** On a history channel: the message's offset in the channel's epoch (+1 per message). */
  offset?: number;
}

/** Where a history channel stands: offsets count its publications within one epoch. */
export interface StreamPosition {
  /** Names the run of offsets; it changes when the server's history lost data. Compare offsets only within one. */
  epoch: string;
  /** The last publication (0: none yet). */
  offset: number;
}

/** The `subscribed` event, also what `sub.ready()` resolves with. */
export interface SubscribedEvent {
  /** Whether `recover` was sent: a resubscribe (or `since`) on a channel with a known position. */
  wasRecovering: boolean;
  /**
   * True: every message missed while away follows, as ordinary `message`
   * events in order, before live ones. False after a `wasRecovering`
   * subscribe: nothing was replayed, the app must reload its state.
   */
  recovered: boolean;
  /** The channel's position when the subscription took effect (null: the channel keeps no history). */
  position: StreamPosition | null;
}

/** Options of `history`. */
export interface HistoryOptions {
  /** Only publications after this offset (of the result's epoch); all kept without it. */
  since?: number;
  /** At most this many (capped by the namespace's history_size); 0: just the position. */
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
}

/** One publication the history kept. */
export interface HistoryPublication {
  offset: number;
  /** JSON value, or a Uint8Array for a binary message. */
  data: MessageData;
  encoding: "json" | "base64";
}

/** The `history` result. */
export interface HistoryResult {
  /** The channel's epoch: offsets of another epoch mean nothing here. */
  epoch: string;
  /** The channel's last offset. */
  offset: number;
  publications: HistoryPublication[];
}

/** The `publish` result: on a history channel, the message's place in it. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
}

/** JSON value from the message, or the bytes of a binary message. */
export type MessageData = unknown;

export type MessageHandler = (data: MessageData, ctx: MessageContext) => void;

export interface SubscribeOptions {
  onMessage?: MessageHandler;
  /**
   * The server confirmed the subscription (again after every reconnect).
   * `recovered: false` with `wasRecovering: true`: messages were missed, reload.
   */
  onSubscribed?: (event: SubscribedEvent) => void;
  /** A subscribe failed; the subscription stays only if the error was temporary. */
  onError?: (error: unknown) => void;
  /** The subscription ended: by `unsubscribe()` or a permanent error (`error` set). */
  onUnsubscribed?: (event: { error?: DuplexError }) => void;
  /** A subscription token for a private channel (docs/AUTH.md). */
  token?: string;
  /** Fetches a subscription token; called when none is held and after 111 (expired). */
  getToken?: (channel: string) => Promise<string> | string;
  /**
   * On a history channel: recover from this position (a `sub.position`
   * saved earlier, e.g. across a page reload) at the first subscribe.
   */
  since?: StreamPosition;
  /**
   * Ask for `join` / `leave` events (the namespace must set `join_leave`;
   * each costs every listener a write). Default: true when `onJoin` or
   * `onLeave` is given, else false.
   */
  joinLeave?: boolean;
  /** Presence (`join_leave` channels): a user joined (their first connection). */
  onJoin?: (event: PresenceEvent) => void;
  /** Presence (`join_leave` channels): a user left (their last connection). */
  onLeave?: (event: PresenceEvent) => void;
}

/** One connection on a presence channel. */
export interface PresenceMember {
  /** Its connection id (`<node>.<n>`, as `info.client` says). */
  conn: string;
  /** Its user (the token's `sub`); "" when anonymous. */
  user: string;
  /** Its token's `info` claim; undefined when there was none. */
  info?: unknown;
}

/** A presence channel's counts. */
export interface PresenceStats {
  /** Member connections. */
  connections: number;
  /** Distinct users (each anonymous connection counts as one). */
  users: number;
}

/** A `join` or `leave` event: a user's first connection came, or their last went. */
export interface PresenceEvent extends PresenceMember {
  /** The channel. */
  channel: string;
}

/** Options of `send` and `rpc`. */
export interface UpstreamOptions {
  /**
   * The channel the message is about: its namespace may route it to its own
   * backend (docs/UPSTREAM.md), and the client must be allowed to publish
   * there (else PERMISSION_DENIED).
   */
  channel?: string;
  /**
   * Ms for the whole call, queue included; when it passes, the call
   * rejects with CLIENT_TIMEOUT. Default: `options.timeout` while queued,
   * then the server's `rpc_timeout` (`info.rpc_timeout_ms`) plus
   * RPC_TIMEOUT_MARGIN once sent, so the server's RPC_TIMEOUT comes first.
   */
  timeout?: number;
}

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

export interface SubscriptionEvents {
  message: MessageHandler;
  subscribed: (event: SubscribedEvent) => void;
  subscribing: (event: {}) => void;
  /** `server` is true when a backend took the connection off the channel (`POST /api/unsubscribe`). */
  unsubscribed: (event: { error?: DuplexError; server?: boolean }) => void;
  error: (error: unknown) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
}

export class Subscription {
  readonly client: Duplex;
  readonly channel: string;
  readonly state: SubscriptionState;
  /**
   * On a history channel: the last message delivered (or the position the
   * subscription started at), sent as `recover` on every resubscribe; null
   * otherwise. Save it to resume later with `since`.
   */
  readonly position: StreamPosition | null;
  /** Messages dropped because they were delivered already (a server bug if ever above 0). */
  readonly duplicatesDropped: number;
  on<E extends keyof SubscriptionEvents>(event: E, handler: SubscriptionEvents[E]): () => void;
  off<E extends keyof SubscriptionEvents>(event: E, handler: SubscriptionEvents[E]): void;
  /** Resolves once subscribed (with the last `subscribed` event); rejects if the subscription ends first. */
  ready(): Promise<SubscribedEvent>;
  /** Ends the subscription (no resubscribe after reconnect). */
  unsubscribe(): Promise<void>;
  publish(data: unknown): Promise<PublishResult>;
  /** Who is on the channel; NO_PRESENCE (117) if it keeps no presence. */
  presence(): Promise<PresenceMember[]>;
  /** How many are on the channel; NO_PRESENCE (117) if it keeps no presence. */
  presenceStats(): Promise<PresenceStats>;
  /** What the channel's history keeps; NO_HISTORY (116) if it keeps none. */
  history(options?: HistoryOptions): Promise<HistoryResult>;
}

export interface DuplexEvents {
  state: (event: StateEvent) => void;
  connecting: (event: Omit<ConnectingEvent, "state">) => void;
  connected: (event: Omit<ConnectedEvent, "state">) => void;
  disconnected: (event: Omit<DisconnectedEvent, "state">) => void;
  /** Every message on every subscribed channel (also those the token subscribed). */
  message: MessageHandler;
  /**
   * After every connect, for each history channel the token subscribed:
   * its position, and whether what was missed since `tokenPositions` follows.
   */
  subscribed: (event: SubscribedEvent & { channel: string }) => void;
  /** Presence on a token's channel (with `joinLeave`): a user joined. */
  join: (event: PresenceEvent) => void;
  /** Presence on a token's channel (with `joinLeave`): a user left. */
  leave: (event: PresenceEvent) => void;
  /** A `refresh` succeeded; `expires` is the new expiry (Unix seconds) if any. */
  refreshed: (result: { expires?: number }) => void;
  /** Failures not tied to a command: getToken, refused connect, unreadable frames. */
  error: (error: unknown) => void;
  /** Push types this client does not know. */
  push: (push: { push: string; [key: string]: unknown }) => void;
}

export class Duplex {
  constructor(url: string, options?: DuplexOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The current connection's `connect` result, or null. */
  readonly info: ConnectInfo | null;
  /**
   * The last position delivered on each history channel the token
   * subscribed; sent as `recover` on every connect. Set an entry before
   * `connect()` to resume from a saved position.
   */
  readonly tokenPositions: Map<string, StreamPosition>;

  on<E extends keyof DuplexEvents>(event: E, handler: DuplexEvents[E]): () => void;
  off<E extends keyof DuplexEvents>(event: E, handler: DuplexEvents[E]): void;

  /** Starts connecting; reconnects by the close-code policy until `disconnect()`. */
  connect(): void;
  /** Closes for good (code 1000); pending and queued commands reject with CLIENT_CLOSED. */
  disconnect(): void;

  /** Subscribes now and after every reconnect. Throws if already subscribed to `channel`. */
  subscribe(channel: string, options?: SubscribeOptions | MessageHandler): Subscription;
  getSubscription(channel: string): Subscription | null;
  subscriptions(): Subscription[];

  /**
   * Publishes to `channel`: JSON values as JSON (a string arrives as text),
   * a Uint8Array / ArrayBuffer / DataView as a binary message (base64 on the wire).
   */
  publish(channel: string, data: unknown): Promise<PublishResult>;
  /** Application-level ping; resolves with the round trip in ms. */
  ping(): Promise<number>;

  /**
   * Asks the backends (a Redis Stream worker or the HTTP upstream) and
   * resolves with the reply's data; rejects with the backend's code
   * (1000–9999), RPC_TIMEOUT (no answer within the server's `rpc_timeout`),
   * TOO_MANY_PENDING, UNKNOWN_METHOD (no upstream), or CLIENT_TIMEOUT (see
   * UpstreamOptions.timeout).
   */
  rpc<T = unknown>(method: string, data?: unknown, options?: UpstreamOptions): Promise<T>;
  /** Sends data up to the backends (a Redis Stream or the HTTP upstream); resolves once handed over. */
  send(data: unknown, options?: UpstreamOptions): Promise<{}>;
  /**
   * Who is on a presence channel, one entry per connection, on every node.
   * Rejects with NO_PRESENCE (117) on a channel that keeps none,
   * PERMISSION_DENIED if it may not subscribe.
   */
  presence(channel: string): Promise<PresenceMember[]>;
  /** Connections and distinct users on a presence channel; rejects as `presence`. */
  presenceStats(channel: string): Promise<PresenceStats>;
  /**
   * What `channel`'s history keeps (publications after `since`, at most
   * `limit`, newest first with `reverse`). Rejects with NO_HISTORY (116) on
   * a channel that keeps none, PERMISSION_DENIED if it may not subscribe.
   */
  history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
}

export default Duplex;
