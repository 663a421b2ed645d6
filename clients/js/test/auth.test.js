import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Duplex, ErrorCode } from "../duplex.js";
import { nextEvent, nextState, signToken, startNode } from "./helpers.js";

const SECRET = "js-client-test-secret";
let node;
const clients = [];
function client(options) {
  const c = new Duplex(node.url, { minReconnectDelay: 100, maxReconnectDelay: 500, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  node = await startNode({ args: ["--token-secret", SECRET] });
});
after(async () => {
  for (const c of clients) c.disconnect();
  await node?.stop();
});

test("a short-lived token is refreshed before it expires and the connection survives", async () => {
  let calls = 0;
  const c = client({ getToken: async () => (calls++, signToken(SECRET, { sub: "42", ttl: 3 })) });
  const drops = [];
  c.on("disconnected", (e) => drops.push(e));
  const connected = nextState(c, "connected");
  c.connect();
  const { info } = await connected;
  assert.equal(info.user, "42");
  const firstExpiry = info.expires * 1000;
  assert.ok(firstExpiry > Date.now());

  // Three refreshes take the connection well past the first token's expiry
  // (and past a server heartbeat sweep, which is what would close it).
  for (let i = 0; i < 3; i++) {
    const { expires } = await nextEvent(c, "refreshed", () => true, 10000);
    assert.ok(expires * 1000 > firstExpiry);
  }
  assert.ok(Date.now() > firstExpiry + 1000, "past the first expiry");
  await c.ping();
  assert.equal(c.state, "connected");
  assert.deepEqual(drops, []);
  assert.equal(calls, 4);
});

test("an expired token at connect is replaced through getToken", async () => {
  const tokens = [signToken(SECRET, { sub: "7", ttl: -10 }), signToken(SECRET, { sub: "7", ttl: 3600 })];
  let calls = 0;
  const c = client({ getToken: async () => tokens[calls++] });
  const errors = [];
  c.on("disconnected", (e) => errors.push(e));
  const connected = nextState(c, "connected");
  c.connect();
  const { info } = await connected;
  assert.equal(info.user, "7");
  assert.equal(calls, 2);
  assert.deepEqual(errors, []);
});

test("a refresh that keeps failing ends in 3006, and the reconnect fetches a new token", async () => {
  let calls = 0;
  // Call 1: connect. Calls 2 and 3: the refresh and its retry fail. Call 4:
  // the reconnect after the server's 3006 close.
  const c = client({
    getToken: async () => {
      calls++;
      if (calls === 2 || calls === 3) throw new Error("backend down");
      return signToken(SECRET, { sub: "9", ttl: calls === 1 ? 2 : 3600 });
    },
  });
  c.on("error", () => {});
  c.connect();
  await nextState(c, "connected");
  const dropped = await nextState(c, "disconnected", () => true, 20000);
  assert.equal(dropped.code, 3006);
  assert.equal(dropped.reconnect, true);
  await nextState(c, "connected", () => true, 20000);
  assert.equal(calls, 4);
  await c.ping();
});

test("an invalid token stops the client with 3500 and no reconnect", async () => {
  let calls = 0;
  const c = client({ getToken: async () => (calls++, signToken("wrong-secret", { sub: "1", ttl: 3600 })) });
  const states = [];
  c.on("state", (e) => states.push(e.state));
  const down = nextState(c, "disconnected");
  c.connect();
  const e = await down;
  assert.equal(e.code, 3500);
  assert.equal(e.reconnect, false);
  await assert.rejects(c.ping(), (err) => err.code === ErrorCode.CLIENT_CLOSED);
  // Watch for a while longer than the largest backoff: no new attempt.
  await new Promise((r) => setTimeout(r, 1500));
  assert.deepEqual(states, ["connecting", "disconnected"]);
  assert.equal(calls, 1);
});

test("without a token the server's 112 stops the client", async () => {
  const c = client({});
  const down = nextState(c, "disconnected");
  c.connect();
  const e = await down;
  assert.equal(e.code, ErrorCode.UNAUTHORIZED);
  assert.equal(e.reconnect, false);
});

test("a fixed token that expires: 3006, then the refused reconnect (111) stops the client", async () => {
  const c = client({ token: signToken(SECRET, { sub: "5", ttl: 2 }) });
  const seen = [];
  c.on("disconnected", (e) => seen.push([e.code, e.reconnect]));
  c.connect();
  await nextState(c, "connected");
  await nextState(c, "disconnected", (e) => !e.reconnect, 20000);
  assert.deepEqual(seen, [
    [3006, true],
    [ErrorCode.TOKEN_EXPIRED, false],
  ]);
});
