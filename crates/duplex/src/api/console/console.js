// Duplex console: polls /api/info and /api/channels, watches a channel with
// the node's own JavaScript client (/duplex.js over /ws), publishes through
// /api/publish. With an API key configured, every /api call carries
// "Authorization: apikey <key>"; the key lives in sessionStorage (this tab).
// Whether a key is needed, and whether a typed one works, comes from
// /console/access, which answers 200 either way (no 401 in the console).

const POLL_MS = 1000;
/** Polling slows down while the tab is hidden. */
const HIDDEN_POLL_MS = 5000;
const TOP_CHANNELS = 100;
const MAX_MESSAGES = 200;
const MAX_SHOWN_CHARS = 2000;
const KEY_STORE = "duplex.console.apiKey";
/** Counters that mean something went wrong: shown in red when not zero. */
const PROBLEMS = new Set([
  "publish_failures", "plain_publish_dropped", "slow_consumer_disconnects", "heartbeat_timeouts",
  "protocol_errors", "handshake_timeouts", "connect_timeouts", "auth_denials", "token_expirations",
  "connections_refused", "upstream_failures", "upstream_throttled", "subscriptions_refused",
  "hosts_refused", "request_timeouts", "http_evictions", "sockets_refused",
]);

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let previous = null; // last sample, for the rates
let pollTimer = null;
let watcher = null; // { client, channel }

/** An API call that failed: `status` 0 when the node could not be reached. */
class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, body) {
  const headers = {};
  if (apiKey) headers.authorization = `apikey ${apiKey}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiFailure(0, "unreachable", `node unreachable: ${e.message}`);
  }
  const json = await res.json().catch(() => null);
  if (!res.ok) {
    const err = json?.error ?? {};
    throw new ApiFailure(res.status, err.code ?? "http", err.message ?? `HTTP ${res.status}`);
  }
  return json;
}

// ---------------------------------------------------------------- API key

/**
 * Whether the node needs an API key and accepts `key`: GET /console/access
 * answers 200 either way, so finding out logs no failed request.
 */
async function access(key) {
  let res;
  try {
    res = await fetch("/console/access", { headers: key ? { authorization: `apikey ${key}` } : {}, cache: "no-store" });
  } catch (e) {
    throw new ApiFailure(0, "unreachable", `node unreachable: ${e.message}`);
  }
  if (!res.ok) throw new ApiFailure(res.status, "http", `HTTP ${res.status}`);
  return res.json();
}

/** On load: straight to the numbers, or the login form when a key is needed first. */
async function start() {
  let found;
  try {
    found = await access(apiKey);
  } catch (err) {
    setLive("off", err.status === 0 ? "node unreachable, retrying" : err.message);
    pollTimer = setTimeout(start, POLL_MS);
    return;
  }
  if (found.api_key_accepted) return startPolling();
  apiKey = "";
  sessionStorage.removeItem(KEY_STORE);
  showLogin("");
}

function showLogin(message) {
  stopPolling();
  stopWatching();
  $("main").hidden = true;
  $("ident").hidden = true;
  $("broker").hidden = true;
  $("forget-key").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  setLive("off", "locked");
  $("api-key").focus();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  let found;
  try {
    found = await access(key);
  } catch (err) {
    found = { error: err.message };
  }
  if (!found.api_key_accepted) {
    showLogin(found.error ?? "That key was not accepted.");
    $("api-key").select();
    return;
  }
  apiKey = key;
  sessionStorage.setItem(KEY_STORE, apiKey);
  $("api-key").value = "";
  startPolling();
});

$("forget-key").addEventListener("click", () => {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORE);
  showLogin("");
});

// ---------------------------------------------------------------- live numbers

function setLive(kind, text) {
  const live = $("live");
  live.className = `live ${kind}`;
  live.textContent = text;
}

function startPolling() {
  $("login").hidden = true;
  stopPolling();
  previous = null;
  poll();
}

function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
}

async function poll() {
  pollTimer = null;
  let info, channels;
  try {
    [info, channels] = await Promise.all([api("/api/info"), api(`/api/channels?limit=${TOP_CHANNELS}`)]);
  } catch (err) {
    if (err.status === 401) {
      apiKey = "";
      sessionStorage.removeItem(KEY_STORE);
      showLogin("");
      return;
    }
    setLive("off", err.status === 0 ? "node unreachable, retrying" : err.message);
    pollTimer = setTimeout(poll, POLL_MS);
    return;
  }
  render(info, channels);
  $("main").hidden = false;
  $("ident").hidden = false;
  $("broker").hidden = false;
  $("forget-key").hidden = !apiKey;
  setLive("on", "live");
  pollTimer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

function render(info, channels) {
  const now = performance.now();
  const stats = info.stats ?? {};
  $("node-id").textContent = info.node;
  $("version").textContent = info.version;
  const broker = info.broker ?? {};
  const pill = $("broker");
  pill.textContent = `${broker.kind} broker: ${broker.status}`;
  pill.className = `pill ${broker.status === "connected" ? "ok" : "bad"}`;
  pill.title = broker.last_error ? `last error: ${broker.last_error}` : `reconnects: ${broker.reconnects ?? 0}`;
  $("uptime").textContent = duration(info.uptime_seconds);
  $("connections").textContent = count(info.connections);
  $("subscriptions").textContent = count(info.subscriptions);
  $("channels").textContent = count(info.channels);
  const rate = (field) => {
    if (!previous) return "–";
    const seconds = (now - previous.at) / 1000;
    const delta = Math.max(0, (stats[field] ?? 0) - (previous.stats[field] ?? 0));
    return seconds > 0 ? count(Math.round(delta / seconds)) : "–";
  };
  $("rate-in").textContent = rate("messages_received");
  $("rate-out").textContent = rate("deliveries");
  $("rate-published").textContent = rate("messages_published");
  previous = { at: now, stats };
  renderChannels(channels);
  renderCounters(stats);
}

function renderChannels({ channels, total }) {
  const body = $("channels-body");
  body.replaceChildren(
    ...channels.map(({ name, subscribers }) => {
      const row = document.createElement("tr");
      const cell = document.createElement("td");
      const link = document.createElement("a");
      link.href = "#";
      link.textContent = name;
      link.title = "watch and publish here";
      link.addEventListener("click", (e) => {
        e.preventDefault();
        $("watch-channel").value = name;
        $("publish-channel").value = name;
        watch(name);
      });
      cell.append(link);
      const subs = document.createElement("td");
      subs.className = "num";
      subs.textContent = count(subscribers);
      row.append(cell, subs);
      return row;
    }),
  );
  $("channels-empty").hidden = channels.length > 0;
  $("channels-note").textContent = total > channels.length ? `top ${channels.length} of ${count(total)}` : "";
}

function renderCounters(stats) {
  $("counters").replaceChildren(
    ...Object.entries(stats).map(([name, value]) => {
      const item = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = name.replaceAll("_", " ");
      const dd = document.createElement("dd");
      dd.textContent = count(value);
      dd.dataset.counter = name;
      if (PROBLEMS.has(name) && value > 0) dd.className = "nonzero";
      item.append(dt, dd);
      return item;
    }),
  );
}

const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");

function duration(s) {
  if (typeof s !== "number") return "–";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

// ---------------------------------------------------------------- watch

let DuplexClass = null;
async function duplexClient() {
  DuplexClass ??= (await import("/duplex.js")).Duplex;
  return DuplexClass;
}

function watchStatus(text, isError = false) {
  const p = $("watch-status");
  p.textContent = text;
  p.className = isError ? "error" : "muted";
}

function stopWatching() {
  if (watcher) watcher.client.disconnect();
  watcher = null;
  $("stop-button").hidden = true;
}

async function watch(channel) {
  stopWatching();
  $("messages").replaceChildren();
  watchStatus(`Connecting to watch ${channel}…`);
  let first;
  try {
    // Tokens off: {token: null}. Tokens on: a short-lived token whose
    // `channels` claim subscribes the connection (docs/CONSOLE.md).
    first = (await api("/api/console/token", { channel })).token;
  } catch (err) {
    if (err.status === 401) return showLogin("");
    return watchStatus(err.message, true);
  }
  const Duplex = await duplexClient();
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const options = { minReconnectDelay: 500, maxReconnectDelay: 5000 };
  if (first) {
    options.getToken = async () => {
      if (first) {
        const token = first;
        first = null;
        return token;
      }
      return (await api("/api/console/token", { channel })).token;
    };
  }
  const client = new Duplex(wsUrl, options);
  const me = { client, channel };
  watcher = me;
  $("stop-button").hidden = false;
  client.on("message", (data, ctx) => {
    if (ctx.channel === channel) addMessage(data, ctx.encoding);
  });
  client.on("error", (err) => {
    if (watcher === me) watchStatus(`Error: ${err?.message ?? err}`, true);
  });
  client.on("state", (e) => {
    if (watcher !== me) return;
    if (e.state === "connected" && options.getToken) watchStatus(`Watching ${channel}`);
    if (e.state === "disconnected") {
      const why = `${e.code}${e.reason ? ` ${e.reason}` : ""}`;
      watchStatus(e.reconnect ? `Disconnected (${why}), reconnecting…` : `Stopped: ${why}`, true);
    }
  });
  if (!options.getToken) {
    client.subscribe(channel, {
      onSubscribed: () => watcher === me && watchStatus(`Watching ${channel}`),
      onError: (err) => watcher === me && watchStatus(`Cannot watch ${channel}: ${err.message}`, true),
    });
  }
  client.connect();
}

function addMessage(data, encoding) {
  const list = $("messages");
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString("en-GB");
  const text = document.createElement("span");
  text.className = "data";
  if (encoding === "base64" && data instanceof Uint8Array) {
    text.classList.add("binary");
    const hex = Array.from(data.subarray(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
    text.textContent = `binary, ${data.length} bytes: ${hex}${data.length > 64 ? " …" : ""}`;
  } else {
    const shown = typeof data === "string" ? data : JSON.stringify(data);
    text.textContent = shown.length > MAX_SHOWN_CHARS ? `${shown.slice(0, MAX_SHOWN_CHARS)} … (${shown.length} chars)` : shown;
  }
  item.append(time, text);
  list.prepend(item);
  while (list.childElementCount > MAX_MESSAGES) list.lastElementChild.remove();
}

$("watch-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const channel = $("watch-channel").value.trim();
  if (channel) watch(channel);
});

$("stop-button").addEventListener("click", () => {
  stopWatching();
  watchStatus("Stopped.");
});

// ---------------------------------------------------------------- publish

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = $("publish-status");
  const channel = $("publish-channel").value.trim();
  const text = $("publish-data").value;
  let data = text;
  if ($("publish-json").checked) {
    try {
      data = JSON.parse(text);
    } catch (err) {
      status.className = "error";
      status.textContent = `Not JSON: ${err.message}`;
      return;
    }
  }
  try {
    await api("/api/publish", { channel, data });
  } catch (err) {
    if (err.status === 401) return showLogin("");
    status.className = "error";
    status.textContent = err.message;
    return;
  }
  status.className = "ok";
  status.textContent = `Published to ${channel} at ${new Date().toLocaleTimeString("en-GB")}`;
});

start();
