// A plain WebSocket with its token in the only place a browser can put one,
// the subprotocol list (issue 14, finding 8d): an empty `?token=` beside it
// does not hide it, the node echoes the entry (Chromium fails the handshake
// otherwise), a fractional `exp` is a valid token, and two different tokens
// are refused with a close the page can read.
import assert from "node:assert/strict";
import { test } from "node:test";
import { apiPost, collectErrors, sharedBrowser, signToken, startNode } from "./helpers.js";

const SECRET = "browser-test-secret-of-decent-length";
const { cleanups, newPage } = sharedBrowser();

async function tokenNode() {
  const node = await startNode({ args: ["--token-secret", SECRET] });
  cleanups.push(() => node.stop());
  return node;
}

/** A page served by the node (Chromium refuses WebSockets to localhost from about:blank). */
async function page(node) {
  const page = await newPage();
  cleanups.push(() => page.close());
  const errors = collectErrors(page);
  await page.goto(`http://localhost:${node.port}/health`);
  return { page, errors };
}

test("new WebSocket(url + '?token=', ['token.' + jwt]) opens, echoes the protocol and receives", async () => {
  const node = await tokenNode();
  const { page: tab, errors } = await page(node);
  // A fractional exp, as some JWT libraries write it (RFC 7519 allows it).
  const jwt = signToken(SECRET, { sub: "42", exp: Date.now() / 1000 + 600.5 });
  const opened = await tab.evaluate(
    async ({ port, jwt }) => {
      const ws = new WebSocket(`ws://localhost:${port}/?token=`, ["token." + jwt]);
      globalThis.ws = ws;
      globalThis.received = [];
      ws.onmessage = (e) => globalThis.received.push(e.data);
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onclose = (e) => reject(new Error(`closed ${e.code} ${e.reason}`));
      });
      return { protocol: ws.protocol };
    },
    { port: node.port, jwt },
  );
  assert.equal(opened.protocol, "token." + jwt);

  // The node knows it is user 42: a backend reaches it on #user:42 and on its channel.
  assert.equal((await apiPost(node, "/api/publish", { channel: "#user:42", data: "for 42" })).status, 200);
  assert.equal((await apiPost(node, "/api/publish", { channel: "channel", data: "for all" })).status, 200);
  await tab.waitForFunction(() => globalThis.received.length >= 2);
  assert.deepEqual(await tab.evaluate(() => globalThis.received), ["for 42", "for all"]);
  assert.equal(await tab.evaluate(() => globalThis.ws.readyState), 1, "still open");
  await tab.evaluate(() => globalThis.ws.close());
  assert.deepEqual(errors, []);
});

test("two different tokens: the page sees close 3500 and the reason", async () => {
  const node = await tokenNode();
  const { page: tab } = await page(node);
  const inQuery = signToken(SECRET, { sub: "42", ttl: 600 });
  const inProtocol = signToken(SECRET, { sub: "7", ttl: 600 });
  const closed = await tab.evaluate(
    async ({ port, inQuery, inProtocol }) => {
      const ws = new WebSocket(`ws://localhost:${port}/?token=${inQuery}`, ["token." + inProtocol]);
      const messages = [];
      ws.onmessage = (e) => messages.push(e.data);
      return await new Promise((resolve) => {
        ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, protocol: ws.protocol, messages });
      });
    },
    { port: node.port, inQuery, inProtocol },
  );
  assert.equal(closed.code, 3500, JSON.stringify(closed));
  assert.match(closed.reason, /two different tokens/);
  assert.equal(closed.protocol, "token." + inProtocol, "the handshake succeeded: the entry was echoed");
  assert.deepEqual(closed.messages, []);
});
