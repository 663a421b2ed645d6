// The JavaScript client in Chromium while its node goes down and comes
// back on the same port: killed (the connection is refused until the
// restart) and stopped gracefully (1001). The page is the node's /health,
// which stays open in the tab while the node is away.
import assert from "node:assert/strict";
import { test } from "node:test";
import { collectErrors, sharedBrowser, startNode } from "./helpers.js";

const { cleanups, newPage } = sharedBrowser();

/** A tab with a connected client whose state events are kept in `globalThis.events`. */
async function clientTab(node, options) {
  const page = await newPage();
  cleanups.push(() => page.close());
  const errors = collectErrors(page);
  await page.goto(`${node.http}/health`);
  await page.evaluate(
    async ({ url, options }) => {
      const { Duplex } = await import("/duplex.js");
      const client = new Duplex(url, options);
      globalThis.client = client;
      globalThis.events = [];
      client.on("state", (e) => globalThis.events.push({ state: e.state, code: e.code, delay: e.delay, at: Date.now() }));
      const up = new Promise((resolve) => client.on("connected", resolve));
      client.connect();
      await up;
    },
    { url: node.url, options },
  );
  return { page, errors, events: () => page.evaluate(() => globalThis.events) };
}

/** Waits until the page's client has logged `n` events of `state`; returns those. */
async function eventsOf(page, state, n, ms) {
  await page.waitForFunction(({ state, n }) => globalThis.events.filter((e) => e.state === state).length >= n, { state, n }, { timeout: ms });
  return (await page.evaluate(() => globalThis.events)).filter((e) => e.state === state);
}

/** No two `disconnected` events in a row: each attempt ended once, whatever events the browser fired. */
function assertOneOutcomePerAttempt(events) {
  for (let i = 1; i < events.length; i++) {
    assert.ok(!(events[i - 1].state === "disconnected" && events[i].state === "disconnected"), JSON.stringify(events));
  }
}

test("a killed node restarted a second later: the page's client is connected again within seconds", async () => {
  let node = await startNode();
  cleanups.push(() => node.stop());
  const tab = await clientTab(node, { minReconnectDelay: 100, maxReconnectDelay: 1000 });

  await node.stop("SIGKILL");
  const killed = Date.now();
  // The lost connection, then a refused attempt: both noticed without waiting for `timeout`.
  const downs = await eventsOf(tab.page, "disconnected", 2, 4000);
  assert.deepEqual(downs.map((e) => e.code), [1006, 1006]);
  await new Promise((r) => setTimeout(r, Math.max(0, killed + 1000 - Date.now()))); // the scenario's restart delay
  node = await startNode({ port: node.port });
  const up = Date.now();
  const [, back] = await eventsOf(tab.page, "connected", 2, 4000);
  assert.ok(back.at - up < 4000, `connected ${back.at - up} ms after the restart`);
  assertOneOutcomePerAttempt(await tab.events());
});

test("a graceful restart (1001, back 1.5 s later): quick retries, connected within about a second", async () => {
  let node = await startNode();
  cleanups.push(() => node.stop());
  // The client's default backoff settings, as a page has them.
  const tab = await clientTab(node, {});

  await node.stop("SIGTERM");
  const [away] = await eventsOf(tab.page, "disconnected", 1, 10000);
  assert.equal(away.code, 1001);
  assert.ok(away.delay >= 100 && away.delay <= 300, `going-away delay ${away.delay} is a quick retry`);
  await new Promise((r) => setTimeout(r, Math.max(0, away.at + 1500 - Date.now()))); // the scenario's restart delay
  node = await startNode({ port: node.port });
  const up = Date.now();
  const [, back] = await eventsOf(tab.page, "connected", 2, 4000);
  assert.ok(back.at - up < 1500, `connected ${back.at - up} ms after the node was up (the bug: ~5 s)`);
  const retries = (await tab.events()).filter((e) => e.state === "disconnected" && e.at < back.at).slice(0, 10);
  assert.ok(retries.length >= 3, JSON.stringify(retries));
  for (const r of retries) assert.ok(r.delay >= 100 && r.delay <= 300, `retry delay ${r.delay} is quick: ${JSON.stringify(retries)}`);
  assertOneOutcomePerAttempt(await tab.events());
  // The refused attempts are the browser's own notes in the console; nothing else.
  assert.deepEqual(tab.errors.filter((e) => !e.includes("ERR_CONNECTION_REFUSED")), []);
});
