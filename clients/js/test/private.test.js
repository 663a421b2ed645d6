import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Duplex, ErrorCode } from "../duplex.js";
import { apiPublish, nextEvent, signToken, startNode, within } from "./helpers.js";

const SECRET = "js-private-secret";
// Namespaces live in the config file only (docs/AUTH.md).
const CONFIG = `token_secret = "${SECRET}"

[[namespaces]]
pattern = "private:*"
subscribe = "token"
publish = "nobody"
`;

test("private channels: subscription tokens, refetched after 111, reused on resubscribe", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "duplex-js-"));
  const config = join(dir, "duplex.toml");
  writeFileSync(config, CONFIG);
  let node = await startNode({ args: ["--config", config] });
  const c = new Duplex(node.url, {
    minReconnectDelay: 100,
    maxReconnectDelay: 800,
    getToken: () => signToken(SECRET, { sub: "42", ttl: 3600 }),
  });
  t.after(async () => {
    c.disconnect();
    await node.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const channels = [];
  // The first subscription token is already expired: the client must ask again.
  const sub = c.subscribe("private:7", {
    getToken: (channel) => (channels.push(channel), signToken(SECRET, { sub: "42", channel, ttl: channels.length === 1 ? -5 : 3600 })),
  });
  const denied = c.subscribe("private:8"); // no token: 105, dropped for good
  const deniedEnd = nextEvent(denied, "unsubscribed", (e) => e.error);
  c.connect();
  await within(sub.ready(), 15000, "private subscribe");
  assert.deepEqual(channels, ["private:7", "private:7"]);
  const { error } = await deniedEnd;
  assert.equal(error.code, ErrorCode.PERMISSION_DENIED);

  let arrived = nextEvent(sub, "message");
  await apiPublish(node, "private:7", "secret");
  assert.equal((await arrived)[0], "secret");

  // Restart: the held subscription token is sent again, no new fetch.
  const resubscribed = nextEvent(sub, "subscribed", () => true, 30000);
  await node.stop("SIGKILL");
  node = await startNode({ port: node.port, args: ["--config", config] });
  await resubscribed;
  assert.equal(channels.length, 2);
  assert.equal(c.getSubscription("private:8"), null);
  arrived = nextEvent(sub, "message");
  await apiPublish(node, "private:7", "again");
  assert.equal((await arrived)[0], "again");
  assert.equal(c.state, "connected");
});
