import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Duplex, ErrorCode } from "../duplex.js";
import { nextState, startNode } from "./helpers.js";

// `send` and `rpc` naming a channel: the `orders:*` namespace has its own
// HTTP upstream (docs/UPSTREAM.md), the rest go to the node's.
test("send and rpc take a channel: its namespace's backend gets them", async (t) => {
  const calls = [];
  const backend = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const call = JSON.parse(body);
    calls.push({ path: req.url, ...call });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ path: req.url }));
  });
  backend.listen(0, "127.0.0.1");
  await once(backend, "listening");
  const base = `http://127.0.0.1:${backend.address().port}`;
  const dir = mkdtempSync(join(tmpdir(), "duplex-js-"));
  const config = join(dir, "duplex.toml");
  writeFileSync(
    config,
    `upstream_url = "${base}/default"

[[namespaces]]
pattern = "orders:*"
upstream_url = "${base}/orders"

[[namespaces]]
pattern = "locked:*"
publish = "nobody"
`,
  );
  const node = await startNode({ args: ["--config", config] });
  const c = new Duplex(node.url, { timeout: 5000 });
  t.after(async () => {
    c.disconnect();
    await node.stop();
    backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const up = nextState(c, "connected");
  c.connect();
  await up;

  assert.deepEqual(await c.rpc("status", { id: 9 }, { channel: "orders:9" }), { path: "/orders" });
  assert.deepEqual(await c.rpc("status", { id: 9 }), { path: "/default" });
  assert.deepEqual(await c.send(new Uint8Array([1, 2]), { channel: "orders:9" }), {});
  assert.deepEqual(
    calls.map((x) => [x.path, x.kind, x.channel]),
    [
      ["/orders", "rpc", "orders:9"],
      ["/default", "rpc", undefined],
      ["/orders", "send", "orders:9"],
    ],
  );
  assert.equal(calls[2].encoding, "base64");

  await assert.rejects(c.rpc("status", null, { channel: "locked:1" }), (e) => e.code === ErrorCode.PERMISSION_DENIED);
  await assert.rejects(c.send("x", { channel: "locked:1" }), (e) => e.code === ErrorCode.PERMISSION_DENIED);
  await assert.rejects(c.send("x", { channel: 7 }), TypeError);
  assert.equal(calls.length, 3, "refused calls never reach a backend");
});
