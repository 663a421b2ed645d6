import assert from "node:assert/strict";
import { test } from "node:test";
import { Duplex } from "../duplex.js";
import { apiPublish, freePort, nextEvent, nextState, startNode, within } from "./helpers.js";

// Nodes are restarted on the same port: the client must come back by itself,
// soon, and renew its subscription (at-most-once: only messages published
// after the resubscription are expected).

/** Every state event of `client` (with its time), and a check that each attempt ended once. */
function stateLog(client) {
  const events = [];
  client.on("state", (e) => events.push({ ...e, at: Date.now() }));
  return {
    events,
    /** Each attempt or connection ends in one `disconnected` event, never two (error and close). */
    assertOneOutcomePerAttempt() {
      for (let i = 1; i < events.length; i++) {
        const pair = `${events[i - 1].state} then ${events[i].state}`;
        assert.notEqual(pair, "disconnected then disconnected", JSON.stringify(events));
      }
    },
  };
}

async function subscribedClient(t, node, options = {}) {
  const c = new Duplex(node.url, options);
  const sub = c.subscribe("news");
  t.after(() => c.disconnect());
  c.connect();
  await within(sub.ready(), 15000, "first subscribe");
  const arrived = nextEvent(sub, "message");
  await apiPublish(node, "news", "before");
  assert.equal((await arrived)[0], "before");
  return { c, sub };
}

async function receivesAgain(node, sub) {
  const arrived = nextEvent(sub, "message");
  await apiPublish(node, "news", "after");
  assert.equal((await arrived)[0], "after");
}

test("a killed node: refused attempts are noticed at once and the client is back soon after the restart", async (t) => {
  let node = await startNode();
  t.after(() => node.stop());
  // Default `timeout` (10 s): a refused attempt that went unnoticed would wait for it.
  const { c, sub } = await subscribedClient(t, node, { minReconnectDelay: 100, maxReconnectDelay: 1000 });
  const log = stateLog(c);

  const lost = nextState(c, "disconnected");
  // The second disconnected event is a refused attempt (nothing listens on the port).
  let seen = 0;
  const refused = nextState(c, "disconnected", () => ++seen === 2, 4000);
  await node.stop("SIGKILL");
  const killed = Date.now();
  const e = await lost;
  assert.equal(e.code, 1006);
  assert.equal(e.reconnect, true);
  assert.ok(e.delay >= 100, `backoff delay ${e.delay} is at least minReconnectDelay`);
  const r = await refused;
  assert.equal(r.code, 1006);
  assert.equal(r.reconnect, true);
  assert.equal(sub.state, "subscribing");

  // Restarted about a second after the kill, as a supervisor would.
  await new Promise((r) => setTimeout(r, Math.max(0, killed + 1000 - Date.now()))); // the scenario's restart delay
  const resubscribed = nextEvent(sub, "subscribed", () => true, 30000);
  const back = nextState(c, "connected", () => true, 30000);
  node = await startNode({ port: node.port });
  // The bug: each refused attempt waited for `timeout` (10 s) before the next.
  await within(back, 4000, "connected again within 4 s of the restart");
  await resubscribed;
  await receivesAgain(node, sub);
  log.assertOneOutcomePerAttempt();
});

test("a graceful shutdown (1001): quick retries, and the client is back within about a second of the restart", async (t) => {
  let node = await startNode();
  t.after(() => node.stop());
  // Default backoff settings, as a page would have them.
  const { c, sub } = await subscribedClient(t, node);
  const log = stateLog(c);

  const goingAway = nextState(c, "disconnected");
  await node.stop("SIGTERM");
  const e = await goingAway;
  assert.equal(e.code, 1001);
  assert.equal(e.reconnect, true);
  assert.ok(e.delay >= 100 && e.delay <= 300, `going-away delay ${e.delay} is a quick retry (100–300 ms)`);

  // Restarted 1.5 s after the 1001, as a supervisor would.
  await new Promise((r) => setTimeout(r, 1500)); // the scenario's restart delay, not a wait for an event
  const back = nextState(c, "connected", () => true, 30000);
  node = await startNode({ port: node.port });
  const up = Date.now();
  const { at } = await within(
    back.then(() => log.events.find((x) => x.state === "connected")),
    4000,
    "connected again",
  );
  assert.ok(at - up < 1500, `connected ${at - up} ms after the node was up (the bug: ~5 s)`);
  // The attempts in between were the quick ones, not a growing backoff.
  const retries = log.events.filter((x) => x.state === "disconnected" && x.at < at).slice(0, 10);
  assert.ok(retries.length >= 3, `refused attempts while the node was down: ${JSON.stringify(retries)}`);
  for (const r of retries) assert.ok(r.delay >= 100 && r.delay <= 300, `retry delay ${r.delay} is quick`);
  await within(sub.ready(), 10000, "resubscribed");
  await receivesAgain(node, sub);
  log.assertOneOutcomePerAttempt();
});

test("the backoff starts again from its first step after every successful connect", async (t) => {
  const port = await freePort();
  // Started with nothing listening: a few refused attempts grow the backoff.
  const c = new Duplex(`ws://127.0.0.1:${port}/ws`, { minReconnectDelay: 100, maxReconnectDelay: 400 });
  t.after(() => c.disconnect());
  const log = stateLog(c);
  let seen = 0;
  const refusals = nextState(c, "disconnected", () => ++seen === 3, 4000);
  c.connect();
  await refusals;
  const up = nextState(c, "connected", () => true, 10000);
  const node = await startNode({ port });
  t.after(() => node.stop());
  await up;

  const lost = nextState(c, "disconnected");
  await node.stop("SIGKILL");
  const e = await lost;
  assert.equal(e.code, 1006);
  // Before the connect, three refusals had grown the step (up to 400 ms).
  assert.ok(e.delay >= 100 && e.delay < 200, `first retry after a connect: ${e.delay} in [min, 2·min)`);
  log.assertOneOutcomePerAttempt();
});
