import assert from "node:assert/strict";
import { test } from "node:test";
import { Duplex } from "../duplex.js";
import { apiPublish, nextEvent, nextState, startNode, within } from "./helpers.js";

// Both tests restart a node on the same port and check that the client comes
// back by itself and that its subscription is renewed (at-most-once: only
// messages published after the resubscription are expected).

async function restartScenario(t, signal, checkDown) {
  let node = await startNode();
  const c = new Duplex(node.url, { minReconnectDelay: 100, maxReconnectDelay: 800 });
  const sub = c.subscribe("news");
  t.after(async () => {
    c.disconnect();
    await node.stop();
  });
  c.connect();
  await within(sub.ready(), 15000, "first subscribe");
  let arrived = nextEvent(sub, "message");
  await apiPublish(node, "news", "before");
  assert.equal((await arrived)[0], "before");

  const down = nextState(c, "disconnected");
  const resubscribed = nextEvent(sub, "subscribed", () => true, 30000);
  await node.stop(signal);
  checkDown(await down);
  assert.equal(sub.state, "subscribing");

  node = await startNode({ port: node.port });
  await resubscribed;
  assert.equal(c.state, "connected");
  arrived = nextEvent(sub, "message");
  await apiPublish(node, "news", "after");
  assert.equal((await arrived)[0], "after");
}

test("reconnects with backoff after the node is killed, and resubscribes", async (t) => {
  await restartScenario(t, "SIGKILL", (e) => {
    assert.equal(e.code, 1006);
    assert.equal(e.reconnect, true);
    assert.ok(e.delay >= 100, `backoff delay ${e.delay} is at least minReconnectDelay`);
  });
});

test("reconnects at once after a graceful shutdown (1001 going away)", async (t) => {
  await restartScenario(t, "SIGTERM", (e) => {
    assert.equal(e.code, 1001);
    assert.equal(e.reconnect, true);
    assert.ok(e.delay < 100, `going-away delay ${e.delay} is below minReconnectDelay`);
  });
});
