import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Duplex, DuplexError, ErrorCode } from "../duplex.js";
import { apiPost, apiPublish, nextEvent, nextState, signToken, startNode, within } from "./helpers.js";

// History channels (docs/PROTOCOL.md 3.4): the client keeps each
// subscription's position, sends it as `recover` when it resubscribes, and
// tells the app whether everything missed follows (recovered) or it must
// reload. Real nodes (memory broker), real sockets.

const CONFIG = `
[[namespaces]]
pattern = "news:*"
history_size = 100
history_ttl = "1h"

[[namespaces]]
pattern = "small:*"
history_size = 100
history_ttl = "1h"
recovery_max_publications = 2

[[namespaces]]
pattern = "fleeting:*"
history_size = 10
history_ttl = "1s"
history_meta_ttl = "1s"
`;

let dir;
let config;
let node; // shared by the tests that do not restart it

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "duplex-history-"));
  config = join(dir, "duplex.toml");
  await writeFile(config, CONFIG);
  node = await startNode({ args: ["--config", config] });
});

after(async () => {
  await node?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function client(t, url, options = {}) {
  const c = new Duplex(url, options);
  t.after(() => c.disconnect());
  c.connect();
  return c;
}

/**
 * A subscription whose events are logged in order: "subscribed" entries
 * (with their detail) and messages as [offset, data].
 */
function logged(c, channel, options = {}) {
  const log = [];
  const sub = c.subscribe(channel, {
    ...options,
    onSubscribed: (e) => log.push(["subscribed", e]),
    onMessage: (data, ctx) => log.push([ctx.offset, data]),
  });
  const messages = () => log.filter((e) => e[0] !== "subscribed");
  /** Resolves once `n` messages are logged. */
  const until = (n) =>
    within(
      (async () => {
        while (messages().length < n) await nextEvent(sub, "message");
      })(),
      15000,
      `${n} messages on ${channel}`,
    );
  return { sub, log, messages, until };
}

/** Publishes `values` through the HTTP API, one after the other; the last answer. */
async function publishAll(target, channel, values) {
  let answer;
  for (const v of values) answer = await apiPublish(target, channel, v);
  return answer;
}

test("positions and offsets: the subscribe reply's, every message's, the publish answer's", async (t) => {
  const c = client(t, node.url);
  const log = [];
  c.on("message", (data, ctx) => log.push(ctx));
  const sub = c.subscribe("news:a");
  const first = await within(sub.ready(), 15000, "subscribed");
  assert.equal(typeof first.position.epoch, "string");
  assert.deepEqual(first, { recovered: false, wasRecovering: false, position: { epoch: first.position.epoch, offset: 0 } });
  assert.deepEqual(sub.position, { epoch: first.position.epoch, offset: 0 });
  const epoch = first.position.epoch;

  const one = nextEvent(sub, "message");
  assert.deepEqual(await apiPublish(node, "news:a", "one"), { ok: true, offset: 1, epoch });
  assert.deepEqual(await one, ["one", { channel: "news:a", encoding: "json", offset: 1 }]);
  // The client's own publish answers its place too.
  const two = nextEvent(sub, "message");
  assert.deepEqual(await c.publish("news:a", { n: 2 }), { offset: 2, epoch });
  assert.deepEqual((await two)[1].offset, 2);
  assert.deepEqual(sub.position, { epoch, offset: 2 });
  assert.deepEqual(await sub.ready(), first, "ready() again: the last subscribed event");

  // A channel without history: no position, no offset.
  const plain = c.subscribe("plain");
  assert.deepEqual(await plain.ready(), { recovered: false, wasRecovering: false, position: null });
  const live = nextEvent(plain, "message");
  assert.deepEqual(await apiPublish(node, "plain", "x"), { ok: true });
  assert.deepEqual((await live)[1], { channel: "plain", encoding: "json" });
  assert.equal(plain.position, null);
  assert.deepEqual(
    log.map((ctx) => ctx.offset),
    [1, 2, undefined],
    "the client's message event carries the offset too",
  );
});

test("history(): kept publications, since/limit/reverse, binary data, 116 without history", async (t) => {
  const c = client(t, node.url);
  const sub = c.subscribe("news:h");
  const { position } = await within(sub.ready(), 15000, "subscribed");
  await publishAll(node, "news:h", ["a", "b", { c: 3 }]);
  const bytes = new Uint8Array([0, 255, 7]);
  const arrived = nextEvent(sub, "message", (_, ctx) => ctx.offset === 4);
  await c.publish("news:h", bytes);
  await arrived;

  const all = await sub.history();
  assert.equal(all.epoch, position.epoch);
  assert.equal(all.offset, 4);
  assert.deepEqual(all.publications, [
    { offset: 1, data: "a", encoding: "json" },
    { offset: 2, data: "b", encoding: "json" },
    { offset: 3, data: { c: 3 }, encoding: "json" },
    { offset: 4, data: bytes, encoding: "base64" },
  ]);
  const page = await c.history("news:h", { since: 1, limit: 2 });
  assert.deepEqual(page.publications.map((p) => p.offset), [2, 3]);
  const newest = await sub.history({ reverse: true, limit: 1 });
  assert.deepEqual(newest.publications.map((p) => p.offset), [4]);
  const top = await c.history("news:h", { limit: 0 });
  assert.deepEqual(top, { epoch: position.epoch, offset: 4, publications: [] });
  // Not subscribed is fine (the client may subscribe there).
  assert.deepEqual((await c.history("news:other")).publications, []);

  await assert.rejects(c.history("plain"), (e) => e instanceof DuplexError && e.code === ErrorCode.NO_HISTORY && e.code === 116);
});

test("disconnected by the server (3003), history kept: recovered, exactly the missed messages in order, then live ones", async (t) => {
  // A fixed 1 s retry delay: the test publishes while the client is away (and checks it was).
  const c = client(t, node.url, { minReconnectDelay: 1000, maxReconnectDelay: 1000 });
  const { sub, log, messages, until } = logged(c, "news:b");
  await within(sub.ready(), 15000, "subscribed");
  await apiPublish(node, "news:b", 1);
  await until(1);
  const { epoch } = sub.position;

  const away = nextState(c, "disconnected");
  await apiPost(node, "/api/disconnect", { connection: c.info.client });
  const e = await away;
  assert.equal(e.code, 3003);
  assert.equal(e.reconnect, true);
  assert.equal(sub.state, "subscribing");
  const back = nextEvent(sub, "subscribed");
  await publishAll(node, "news:b", [2, 3, 4, 5, 6]);
  assert.notEqual(c.state, "connected", "the messages were published while the client was away");

  assert.deepEqual(await back, { recovered: true, wasRecovering: true, position: { epoch, offset: 6 } });
  await until(6);
  await apiPublish(node, "news:b", 7);
  await until(7);
  const subscribed = log.filter((x) => x[0] === "subscribed").map((x) => x[1].wasRecovering);
  assert.deepEqual(subscribed, [false, true]);
  // The subscribed event came before the missed messages; no gap, no repeat.
  assert.deepEqual(log.slice(2).map((x) => x[0]), ["subscribed", 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(messages(), [1, 2, 3, 4, 5, 6, 7].map((n) => [n, n]));
  assert.deepEqual(sub.position, { epoch, offset: 7 });
  assert.equal(sub.duplicatesDropped, 0);
});

test("more missed than recovery_max_publications: recovered false, nothing replayed, live ones after", async (t) => {
  const c = client(t, node.url, { minReconnectDelay: 1000, maxReconnectDelay: 1000 });
  const { sub, messages, until } = logged(c, "small:a");
  await within(sub.ready(), 15000, "subscribed");
  await apiPublish(node, "small:a", 1);
  await until(1);
  const { epoch } = sub.position;

  const away = nextState(c, "disconnected");
  await apiPost(node, "/api/disconnect", { connection: c.info.client });
  await away;
  const back = nextEvent(sub, "subscribed");
  await publishAll(node, "small:a", [2, 3, 4]);
  assert.notEqual(c.state, "connected", "published while the client was away");
  assert.deepEqual(await back, { recovered: false, wasRecovering: true, position: { epoch, offset: 4 } });
  assert.deepEqual(sub.position, { epoch, offset: 4 });
  await apiPublish(node, "small:a", 5);
  await until(2);
  assert.deepEqual(messages(), [[1, 1], [5, 5]]);
});

test("a restarted node (memory broker: its history is gone): a new epoch, recovered false, then live ones from offset 1", async (t) => {
  let own = await startNode({ args: ["--config", config] });
  t.after(() => own.stop());
  const c = client(t, own.url, { minReconnectDelay: 100, maxReconnectDelay: 500 });
  const { sub, messages, until } = logged(c, "news:r");
  await within(sub.ready(), 15000, "subscribed");
  await publishAll(own, "news:r", ["a", "b"]);
  await until(2);
  const before = sub.position;
  assert.equal(before.offset, 2);

  const lost = nextState(c, "disconnected");
  await own.stop("SIGKILL");
  await lost;
  const back = nextEvent(sub, "subscribed", () => true, 30000);
  own = await startNode({ port: own.port, args: ["--config", config] });
  const e = await back;
  assert.equal(e.wasRecovering, true);
  assert.equal(e.recovered, false);
  assert.notEqual(e.position.epoch, before.epoch);
  assert.equal(e.position.offset, 0);
  // Offset 1 again, in the new epoch: delivered, not taken for a repeat.
  assert.deepEqual(await apiPublish(own, "news:r", "c"), { ok: true, offset: 1, epoch: e.position.epoch });
  await until(3);
  assert.deepEqual(messages(), [[1, "a"], [2, "b"], [1, "c"]]);
  assert.deepEqual(sub.position, { epoch: e.position.epoch, offset: 1 });
});

test("since: a new subscription resumes from a saved position", async (t) => {
  const a = client(t, node.url);
  const first = a.subscribe("news:s");
  await within(first.ready(), 15000, "subscribed");
  const got = nextEvent(first, "message");
  await apiPublish(node, "news:s", 1);
  await got;
  const saved = JSON.parse(JSON.stringify(first.position)); // as an app would store it
  a.disconnect();
  await publishAll(node, "news:s", [2, 3]);

  const b = client(t, node.url);
  const { sub, messages, until } = logged(b, "news:s", { since: saved });
  assert.deepEqual(await within(sub.ready(), 15000, "subscribed"), {
    recovered: true,
    wasRecovering: true,
    position: { epoch: saved.epoch, offset: 3 },
  });
  await until(2);
  assert.deepEqual(messages(), [[2, 2], [3, 3]]);
  assert.throws(() => b.subscribe("news:bad", { since: { offset: 1 } }), TypeError);
});

test("a repeated offset in the same epoch is dropped; later messages keep their order", async (t) => {
  const c = client(t, node.url);
  const { sub, messages, until } = logged(c, "news:d");
  await within(sub.ready(), 15000, "subscribed");
  await publishAll(node, "news:d", [1, 2]);
  await until(2);
  // A correct server never repeats one: the frame is made up here.
  c._onFrame(JSON.stringify({ push: "message", channel: "news:d", offset: 2, data: "again" }));
  await apiPublish(node, "news:d", 3);
  await until(3);
  assert.deepEqual(messages(), [[1, 1], [2, 2], [3, 3]]);
  assert.equal(sub.duplicatesDropped, 1);
});

test("the history starts a new epoch under a live subscription: offsets from 1 again are delivered", async (t) => {
  // fleeting:* forgets a channel (epoch and offsets) 1 s after its last publication.
  const c = client(t, node.url);
  const { sub, messages, until } = logged(c, "fleeting:a");
  await within(sub.ready(), 15000, "subscribed");
  const { epoch } = await apiPublish(node, "fleeting:a", "old");
  await until(1);
  assert.deepEqual(sub.position, { epoch, offset: 1 });
  // Wait for the server to forget the epoch (polling what it says, not sleeping a guess).
  await within(
    (async () => {
      while ((await c.history("fleeting:a", { limit: 0 })).epoch === epoch) await new Promise((r) => setTimeout(r, 100));
    })(),
    10000,
    "a new epoch",
  );
  const answer = await apiPublish(node, "fleeting:a", "new");
  assert.notEqual(answer.epoch, epoch);
  await until(2);
  assert.deepEqual(messages(), [[1, "old"], [answer.offset, "new"]]);
  assert.deepEqual(sub.position, { epoch: answer.epoch, offset: answer.offset });
  assert.equal(sub.duplicatesDropped, 0);
});

test("channels the token subscribed: positions kept, recovered on every reconnect, subscribed events first", async (t) => {
  const secret = "js-token-channel-secret";
  const own = await startNode({ args: ["--config", config, "--token-secret", secret] });
  t.after(() => own.stop());
  const token = signToken(secret, { sub: "9", ttl: 3600, channels: ["news:tok", "plain"] });
  const c = client(t, own.url, { token, minReconnectDelay: 1000, maxReconnectDelay: 1000 });
  const log = [];
  c.on("subscribed", (e) => log.push(["subscribed", e]));
  c.on("message", (data, ctx) => log.push([ctx.channel, ctx.offset, data]));
  const first = await nextEvent(c, "subscribed");
  const { epoch } = first.position;
  assert.deepEqual(first, { channel: "news:tok", recovered: false, wasRecovering: false, position: { epoch, offset: 0 } });
  const second = nextEvent(c, "message", (_, ctx) => ctx.offset === 2);
  await publishAll(own, "news:tok", [1, 2]);
  await second;
  assert.deepEqual(c.tokenPositions.get("news:tok"), { epoch, offset: 2 });
  assert.equal(c.tokenPositions.has("plain"), false, "no history there");

  const away = nextState(c, "disconnected");
  await apiPost(own, "/api/disconnect", { connection: c.info.client });
  await away;
  const back = nextEvent(c, "subscribed");
  const fourth = nextEvent(c, "message", (_, ctx) => ctx.offset === 4);
  await publishAll(own, "news:tok", [3, 4]);
  assert.notEqual(c.state, "connected", "published while the client was away");
  assert.deepEqual(await back, { channel: "news:tok", recovered: true, wasRecovering: true, position: { epoch, offset: 4 } });
  await fourth;
  const fifth = nextEvent(c, "message", (_, ctx) => ctx.offset === 5);
  await apiPublish(own, "news:tok", 5);
  await fifth;
  // The subscribed event before the missed messages; no gap, no repeat.
  assert.deepEqual(
    log.filter((e) => e[0] !== "subscribed" || e[1].wasRecovering).map((e) => (e[0] === "subscribed" ? "subscribed" : e[2])),
    [1, 2, "subscribed", 3, 4, 5],
  );
  assert.deepEqual(c.tokenPositions.get("news:tok"), { epoch, offset: 5 });
});
