import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { Duplex, ErrorCode, RPC_TIMEOUT_MARGIN } from "../duplex.js";
import { nextState, startNode } from "./helpers.js";

// A backend that never answers, behind a node whose rpc_timeout (1 s) is as
// long as the client's `timeout`: the client must wait for the node's
// RPC_TIMEOUT (113) rather than give up first with CLIENT_TIMEOUT.
let backend;
let node;
const clients = [];

before(async () => {
  backend = createServer(() => {}); // takes every request and never answers
  backend.listen(0, "127.0.0.1");
  await once(backend, "listening");
  const url = `http://127.0.0.1:${backend.address().port}/calls`;
  node = await startNode({ args: ["--upstream-url", url, "--rpc-timeout", "1s"] });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await node?.stop();
  backend?.closeAllConnections();
  backend?.close();
});

async function connected(options) {
  const c = new Duplex(node.url, options);
  clients.push(c);
  const up = nextState(c, "connected");
  c.connect();
  await up;
  return c;
}

test("the connect reply says the node's rpc_timeout", async () => {
  const c = await connected();
  assert.equal(c.info.rpc_timeout_ms, 1000);
  assert.equal(RPC_TIMEOUT_MARGIN, 2000);
});

test("an unanswered rpc rejects with the node's RPC_TIMEOUT, not CLIENT_TIMEOUT", async () => {
  const c = await connected({ timeout: 1000 });
  const start = Date.now();
  await assert.rejects(c.rpc("never"), (e) => {
    assert.equal(e.code, ErrorCode.RPC_TIMEOUT, `${e.code} ${e.message}`);
    assert.equal(e.temporary, true);
    return true;
  });
  assert.ok(Date.now() - start >= 900, "the node waited its rpc_timeout");
  // `send` to an HTTP upstream waits for its answer too, with the same bound.
  await assert.rejects(c.send({ x: 1 }), (e) => e.code === ErrorCode.RPC_TIMEOUT);
});

test("an explicit per-call timeout still wins", async () => {
  const c = await connected();
  const start = Date.now();
  await assert.rejects(c.rpc("never", null, { timeout: 200 }), (e) => e.code === ErrorCode.CLIENT_TIMEOUT && /200 ms/.test(e.message));
  assert.ok(Date.now() - start < 900, "the client gave up before the node's rpc_timeout");
  await assert.rejects(c.rpc("never", null, { timeout: -1 }), TypeError);
});
