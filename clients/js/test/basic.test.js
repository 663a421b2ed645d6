import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Duplex, DuplexError, ErrorCode, PROTOCOL_VERSION } from "../duplex.js";
import { apiPublish, nextEvent, nextState, startNode, within } from "./helpers.js";

let node;
const clients = [];
function client(options = {}) {
  const c = new Duplex(node.url, { minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  node = await startNode();
});
after(async () => {
  for (const c of clients) c.disconnect();
  await node?.stop();
});

test("connect reports the server's connect result", async () => {
  const c = client({ name: "test" });
  const connected = nextState(c, "connected");
  c.connect();
  const { info } = await connected;
  assert.equal(info.protocol, PROTOCOL_VERSION);
  assert.match(info.client, /\./);
  assert.equal(c.state, "connected");
  assert.equal(typeof (await c.ping()), "number");
});

test("a message published through the HTTP API reaches the subscription", async () => {
  const c = client();
  const got = [];
  const sub = c.subscribe("news", { onMessage: (data, ctx) => got.push([data, ctx.channel]) });
  c.connect();
  await within(sub.ready(), 15000, "subscribed");
  const arrived = nextEvent(sub, "message");
  await apiPublish(node, "news", { headline: "hi" });
  await arrived;
  assert.deepEqual(got, [[{ headline: "hi" }, "news"]]);
});

test("a client's publish reaches another client, JSON and binary", async () => {
  const a = client();
  const b = client();
  const sub = b.subscribe("chat");
  a.connect();
  b.connect();
  await within(sub.ready(), 15000, "subscribed");
  let arrived = nextEvent(sub, "message");
  await a.publish("chat", { text: "hello", n: 1 });
  assert.deepEqual((await arrived)[0], { text: "hello", n: 1 });

  arrived = nextEvent(sub, "message");
  await a.publish("chat", new Uint8Array([0, 255, 7]));
  const [data, ctx] = await arrived;
  assert.equal(ctx.encoding, "base64");
  assert.deepEqual([...data], [0, 255, 7]);
});

test("commands issued while connecting wait for the connection", async () => {
  const c = client();
  c.connect();
  assert.notEqual(c.state, "connected");
  const result = await c.publish("queued", "early");
  assert.deepEqual(result, {});
});

test("unsubscribe stops delivery", async () => {
  const c = client();
  const sub = c.subscribe("a");
  const other = c.subscribe("b");
  c.connect();
  await within(Promise.all([sub.ready(), other.ready()]), 15000, "subscribed");
  const seen = [];
  sub.on("message", (d) => seen.push(d));
  await sub.unsubscribe();
  assert.equal(sub.state, "unsubscribed");
  assert.equal(c.getSubscription("a"), null);
  // Publish to a, then to b on the same connection: b's message arriving
  // proves a's (published first, same broker order) was not delivered.
  const onB = nextEvent(other, "message");
  await apiPublish(node, "a", "dropped");
  await apiPublish(node, "b", "marker");
  await onB;
  assert.deepEqual(seen, []);
});

test("server errors reject with DuplexError", async () => {
  const c = client();
  c.connect();
  await assert.rejects(c.publish("#reserved", 1), (e) => e instanceof DuplexError && e.code === ErrorCode.PERMISSION_DENIED);
  const sub = c.subscribe("bad name");
  const failed = nextEvent(sub, "unsubscribed");
  const { error } = await failed;
  assert.equal(error.code, ErrorCode.INVALID_CHANNEL);
  assert.equal(c.getSubscription("bad name"), null);
});

test("send and rpc reach the server: a node on the memory broker with no upstream answers 102", async () => {
  const c = client();
  c.connect();
  await assert.rejects(c.send({ order: 1 }), (e) => e.code === ErrorCode.UNKNOWN_METHOD && /--redis/.test(e.message));
  await assert.rejects(c.rpc("m", {}), (e) => e.code === ErrorCode.UNKNOWN_METHOD && /--upstream-url/.test(e.message));
});

test("presence on a channel without it rejects with NO_PRESENCE (presence: presence.test.js)", async () => {
  const c = client();
  c.connect();
  await assert.rejects(c.presence("x"), (e) => e.code === ErrorCode.NO_PRESENCE && /presence/.test(e.message));
});

test("commands on a client that is not started reject at once", async () => {
  const c = client();
  await assert.rejects(c.ping(), (e) => e.code === ErrorCode.CLIENT_CLOSED);
});

test("disconnect() rejects pending commands and stays down", async () => {
  const c = client();
  c.connect();
  await nextState(c, "connected");
  const down = nextState(c, "disconnected");
  c.disconnect();
  const e = await down;
  assert.equal(e.code, 1000);
  assert.equal(e.reconnect, false);
  await assert.rejects(c.ping(), (err) => err.code === ErrorCode.CLIENT_CLOSED);
});

test("a backend's unsubscribe ends the subscription and forgets it (not resubscribed on reconnect)", async () => {
  const c = client();
  const sub = c.subscribe("revoked");
  const connected = nextState(c, "connected");
  c.connect();
  const { info } = await connected;
  await within(sub.ready(), 15000, "subscribed");
  const ended = nextEvent(sub, "unsubscribed");
  const res = await fetch(`${node.http}/api/unsubscribe`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ connection: info.client, channel: "revoked" }),
  });
  assert.equal(res.status, 200, await res.text());
  const event = await within(ended, 15000, "unsubscribed by the server");
  assert.equal(event.server, true);
  assert.equal(sub.state, "unsubscribed");
  assert.equal(c.getSubscription("revoked"), null);
  // Subscribing again is the application's choice, and works.
  const again = c.subscribe("revoked");
  await within(again.ready(), 15000, "subscribed again");
});
