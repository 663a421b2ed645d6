// The classic demo and the JavaScript client, in Chromium tabs, exactly as
// the README tells a user to try them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { apiPost, collectErrors, consoleLines, startNode, startRedis, waitText, sharedBrowser } from "./helpers.js";

const { cleanups, newPage } = sharedBrowser();

async function tab(url) {
  const page = await newPage();
  cleanups.push(() => page.close());
  const errors = collectErrors(page);
  const logged = consoleLines(page);
  await page.goto(url);
  return { page, errors, logged };
}

test("classic demo: two tabs chat over plain WebSockets and a redis-cli PUBLISH reaches both", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const node = await startNode({ args: ["--redis", redis.url] });
  cleanups.push(() => node.stop());

  // README: open http://localhost:1234/health (recent Chromium refuses
  // WebSockets to localhost from about:blank) and type in its console:
  const typed = `ws = new WebSocket("ws://localhost:${node.port}"); ws.onmessage = e => console.log(e.data)`;
  const tabs = [];
  for (let i = 0; i < 2; i++) {
    const t = await tab(`http://localhost:${node.port}/health`);
    await t.page.evaluate(typed);
    await t.page.waitForFunction(() => globalThis.ws.readyState === WebSocket.OPEN);
    tabs.push(t);
  }
  const [a, b] = tabs;

  await a.page.evaluate(() => globalThis.ws.send("hello world!"));
  assert.equal(await b.logged.next((l) => l === "hello world!"), "hello world!");
  // The sender gets its own message back, as in the classic demo.
  assert.equal(await a.logged.next((l) => l === "hello world!"), "hello world!");

  // A backend with nothing but a Redis client.
  assert.equal(await redis.cli("PUBLISH", "channel", "data from PHP"), "1");
  for (const t of tabs) assert.equal(await t.logged.next((l) => l === "data from PHP"), "data from PHP");

  await b.page.evaluate(() => globalThis.ws.send("hi back"));
  assert.equal(await a.logged.next((l) => l === "hi back"), "hi back");
  for (const t of tabs) assert.deepEqual(t.errors, []);
});

test("the JavaScript client served by the node connects, subscribes, publishes and receives in Chromium", async () => {
  const node = await startNode();
  cleanups.push(() => node.stop());
  const { page, errors } = await tab(`${node.http}/health`);
  // Everything below runs in the page: the module comes from the node itself.
  const connected = await page.evaluate(async (wsUrl) => {
    const { Duplex, VERSION } = await import("/duplex.js");
    const client = new Duplex(wsUrl);
    globalThis.client = client;
    globalThis.received = [];
    const sub = client.subscribe("js-news", (data, ctx) => globalThis.received.push({ data, channel: ctx.channel }));
    const ready = new Promise((resolve) => client.on("connected", ({ info }) => resolve(info)));
    client.connect();
    const info = await ready;
    await sub.ready();
    await client.publish("js-news", { from: "browser", n: 1 });
    return { version: VERSION, node: info.node, state: client.state };
  }, node.url);
  assert.equal(connected.state, "connected");
  assert.match(connected.version, /^\d+\.\d+\.\d+$/);
  const info = await (await fetch(`${node.http}/api/info`)).json();
  assert.equal(connected.node, info.node);

  // Its own publish comes back; a backend's publish arrives too.
  assert.equal((await apiPost(node, "/api/publish", { channel: "js-news", data: "from the backend" })).status, 200);
  await page.waitForFunction(() => globalThis.received.length >= 2);
  const received = await page.evaluate(() => globalThis.received);
  assert.deepEqual(received, [
    { data: { from: "browser", n: 1 }, channel: "js-news" },
    { data: "from the backend", channel: "js-news" },
  ]);
  await page.evaluate(() => globalThis.client.disconnect());
  await page.waitForFunction(() => globalThis.client.state === "disconnected");
  assert.deepEqual(errors, []);
});
