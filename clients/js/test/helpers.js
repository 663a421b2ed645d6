// Test helpers: start a real Duplex node on a free port, publish through its
// HTTP API, sign tokens, and wait for events without fixed sleeps.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { dirname, isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const envBin = process.env.DUPLEX_BIN;
export const DUPLEX_BIN = envBin ? (isAbsolute(envBin) ? envBin : resolve(repoRoot, envBin)) : resolve(repoRoot, "target/debug/duplex");

if (typeof globalThis.WebSocket !== "function") {
  throw new Error("no global WebSocket: run with Node 22+, or Node 20 with --experimental-websocket (npm test does)");
}

/** A TCP port nobody listens on right now. */
export async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Rejects after `ms` with `label`, unless `promise` settles first. */
export function within(promise, ms, label) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Resolves with the first `event` from `emitter` (a Duplex or Subscription) that passes `pred`. */
export function nextEvent(emitter, event, pred = () => true, ms = 15000) {
  let off;
  const p = new Promise((resolve) => {
    off = emitter.on(event, (...args) => {
      if (pred(...args)) {
        off();
        resolve(args.length > 1 ? args : args[0]);
      }
    });
  });
  return within(p, ms, `${event} event`).finally(() => off());
}

/** Resolves with the next state event whose state is `state` (and passes `pred`). */
export function nextState(client, state, pred = () => true, ms = 15000) {
  return nextEvent(client, "state", (e) => e.state === state && pred(e), ms);
}

/**
 * Starts `duplex serve` on `port` (a free one by default) and waits for /health.
 * The environment is stripped of DUPLEX_* so a developer's settings do not leak in.
 */
export async function startNode({ port, args = [] } = {}) {
  port ??= await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("DUPLEX_")));
  env.RUST_LOG ??= "warn";
  const proc = spawn(DUPLEX_BIN, ["serve", "--listen", `127.0.0.1:${port}`, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const exited = once(proc, "exit");
  const node = {
    port,
    proc,
    url: `ws://127.0.0.1:${port}/ws`,
    http: `http://127.0.0.1:${port}`,
    log: () => log,
    /** Stops the process with `signal` and waits for it to exit. */
    async stop(signal = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await within(exited, 15000, `duplex exit after ${signal}`);
    },
  };
  const deadline = Date.now() + 20000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`duplex exited with ${proc.exitCode}:\n${log}`);
    try {
      const res = await fetch(`${node.http}/health`);
      if (res.ok) return node;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await node.stop();
      throw new Error(`duplex did not become healthy on port ${port}:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50)); // health poll, not a test delay
  }
}

/** POSTs `body` to the node's HTTP API (no API key: the test node has none); resolves with the JSON answer. */
export async function apiPost(node, path, body) {
  const res = await fetch(`${node.http}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Publishes through the node's HTTP API; on a history channel the answer has `offset` and `epoch`. */
export function apiPublish(node, channel, data) {
  return apiPost(node, "/api/publish", { channel, data });
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 JWT with `claims`; `ttl` seconds sets `exp`. */
export function signToken(secret, { ttl, ...claims }) {
  const now = Math.floor(Date.now() / 1000);
  const body = { iat: now, ...claims };
  if (ttl !== undefined) body.exp = now + ttl;
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" })) + "." + b64url(JSON.stringify(body));
  return head + "." + b64url(createHmac("sha256", secret).update(head).digest());
}
