import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Duplex, ErrorCode } from "../duplex.js";
import { nextEvent, signToken, startNode } from "./helpers.js";

// Presence channels (docs/PRESENCE.md): members with their user and token
// `info`, `join` / `leave` events per user, counts. A real node (memory
// broker), real sockets.

const SECRET = "js-presence-test-secret";
const CONFIG = `
token_secret = "${SECRET}"
allow_anonymous = true

[[namespaces]]
pattern = "room:*"
presence = true
join_leave = true

[[namespaces]]
pattern = "staff:*"
subscribe = "authenticated"
presence = true
`;

let dir;
let node;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "duplex-presence-"));
  const config = join(dir, "duplex.toml");
  await writeFile(config, CONFIG);
  node = await startNode({ args: ["--config", config] });
});

after(async () => {
  await node?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function client(t, user, info) {
  const token = user ? signToken(SECRET, { sub: user, ttl: 600, ...(info ? { info } : {}) }) : undefined;
  const c = new Duplex(node.url, { token });
  t.after(() => c.disconnect());
  c.connect();
  return c;
}

test("members, counts, and one join and one leave per user across tabs", async (t) => {
  const watcher = client(t, "watcher");
  const joins = [];
  const leaves = [];
  const room = watcher.subscribe("room:js", {
    onJoin: (e) => joins.push(e),
    onLeave: (e) => leaves.push(e),
  });
  // A subscriber's own join may come before or after its subscribe reply.
  const own = nextEvent(room, "join", (e) => e.user === "watcher");
  await room.ready();
  await own;

  const tab1 = client(t, "ada", { name: "Ada" });
  const adaJoined = nextEvent(room, "join", (e) => e.user === "ada");
  await tab1.subscribe("room:js").ready();
  const joined = await adaJoined;
  assert.deepEqual({ ...joined, conn: undefined }, { channel: "room:js", user: "ada", conn: undefined, info: { name: "Ada" } });
  assert.equal(joined.conn, tab1.info.client);

  const tab2 = client(t, "ada", { name: "Ada" });
  await tab2.subscribe("room:js").ready();
  const members = await room.presence();
  assert.deepEqual(members.map((m) => m.user).sort(), ["ada", "ada", "watcher"]);
  assert.deepEqual(members.find((m) => m.conn === tab2.info.client).info, { name: "Ada" });
  assert.deepEqual(await watcher.presenceStats("room:js"), { connections: 3, users: 2 });

  tab1.disconnect();
  const adaLeft = nextEvent(room, "leave", (e) => e.user === "ada");
  // The first tab going is no leave: the counts show it gone, and no event came.
  for (;;) {
    const { connections } = await room.presenceStats();
    if (connections === 2) break;
    await new Promise((r) => setTimeout(r, 20)); // polling the server's answer
  }
  assert.deepEqual(leaves, []);
  const lastTab = tab2.info.client;
  tab2.disconnect();
  const left = await adaLeft;
  assert.equal(left.conn, lastTab);
  assert.deepEqual(joins.map((e) => e.user), ["watcher", "ada"]);
  assert.deepEqual((await room.presence()).map((m) => m.user), ["watcher"]);
});

test("presence follows the subscribe rule and says when a channel has none", async (t) => {
  const anonymous = client(t);
  await assert.rejects(anonymous.subscribe("staff:1").ready(), (e) => e.code === ErrorCode.PERMISSION_DENIED);
  await assert.rejects(anonymous.presence("staff:1"), (e) => e.code === ErrorCode.PERMISSION_DENIED);
  await assert.rejects(anonymous.presenceStats("staff:1"), (e) => e.code === ErrorCode.PERMISSION_DENIED);
  await assert.rejects(anonymous.presence("lobby"), (e) => e.code === ErrorCode.NO_PRESENCE);
  const staff = client(t, "sam");
  const sub = staff.subscribe("staff:1");
  await sub.ready();
  assert.deepEqual(await sub.presenceStats(), { connections: 1, users: 1 });
  assert.deepEqual(await sub.presence(), [{ conn: staff.info.client, user: "sam", info: undefined }]);
});

test("join and leave only where asked: a subscription's joinLeave, and the token's channels at client level", async (t) => {
  // Subscribed without asking: no events, even with a listener added later.
  const quiet = client(t, "quiet");
  const q = quiet.subscribe("room:ask");
  const heard = [];
  q.on("join", (e) => heard.push(e));
  q.on("leave", (e) => heard.push(e));
  await q.ready();
  // A token's channel, with joinLeave asked at connect: client-level events.
  const token = signToken(SECRET, { sub: "tok", ttl: 600, channels: ["room:ask"] });
  const tok = new Duplex(node.url, { token, joinLeave: true });
  t.after(() => tok.disconnect());
  const tokJoined = nextEvent(tok, "join", (e) => e.user === "late");
  tok.connect();
  await nextEvent(tok, "connected");
  const late = client(t, "late");
  await late.subscribe("room:ask").ready();
  const joined = await tokJoined;
  assert.deepEqual({ channel: joined.channel, user: joined.user }, { channel: "room:ask", user: "late" });
  // The push to `quiet`, had there been one, was queued before this message.
  const marker = nextEvent(q, "message", (data) => data?.marker === 1);
  await quiet.publish("room:ask", { marker: 1 });
  await marker;
  assert.deepEqual(heard, []);
});
