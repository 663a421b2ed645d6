import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { Duplex, ErrorCode } from "../duplex.js";
import { nextState, startNode } from "./helpers.js";

// A backend worker as a user would write one for the HTTP upstream: the
// node POSTs each call as JSON and relays the answer to the caller.
let backend;
let node;
const calls = [];
const clients = [];

before(async () => {
  backend = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const call = JSON.parse(body);
    calls.push(call);
    if (call.method === "add") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ sum: call.data.a + call.data.b }));
    } else if (call.method === "refuse") {
      res.writeHead(422, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: 4022, message: "not today" } }));
    } else {
      res.writeHead(204).end(); // send: acknowledged
    }
  });
  backend.listen(0, "127.0.0.1");
  await once(backend, "listening");
  const url = `http://127.0.0.1:${backend.address().port}/calls`;
  node = await startNode({ args: ["--upstream-url", url, "--rpc-timeout", "2s"] });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await node?.stop();
  backend?.close();
});

async function connected() {
  const c = new Duplex(node.url, { timeout: 5000 });
  clients.push(c);
  const up = nextState(c, "connected");
  c.connect();
  await up;
  return c;
}

test("rpc resolves with the backend's reply, matched to each call", async () => {
  const c = await connected();
  const [one, two] = await Promise.all([c.rpc("add", { a: 1, b: 2 }), c.rpc("add", { a: 40, b: 2 })]);
  assert.deepEqual([one, two], [{ sum: 3 }, { sum: 42 }]);
  const call = calls.find((x) => x.method === "add");
  assert.equal(call.kind, "rpc");
  assert.match(call.connection, /\./);
  assert.deepEqual(await c.send({ typing: true }), {});
  assert.equal(calls.at(-1).kind, "send");
});

test("rpc rejects with the backend's own error code", async () => {
  const c = await connected();
  await assert.rejects(c.rpc("refuse"), (e) => e.code === 4022 && e.message === "not today" && !e.temporary);
  await assert.rejects(c.rpc(""), TypeError);
  assert.ok(ErrorCode.RPC_TIMEOUT === 113);
});
