// The web console in Chromium: it loads cleanly, shows live numbers, watches
// and publishes, and asks for the API key when the node has one.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  apiPost,
  collectErrors,
  collectFailedRequests,
  plainClient,
  screenshot,
  startNode,
  waitText,
  sharedBrowser,
} from "./helpers.js";

const KEY = "browser-test-key";
const SECRET = "browser-test-secret";
const { cleanups, newPage } = sharedBrowser();

async function node(args = []) {
  const n = await startNode({ args });
  cleanups.push(() => n.stop());
  return n;
}

async function client(url) {
  const c = await plainClient(url);
  cleanups.push(() => c.close());
  return c;
}

async function openConsole(n, path = "/") {
  const page = await newPage();
  cleanups.push(() => page.close());
  const errors = collectErrors(page);
  const failed = collectFailedRequests(page);
  await page.goto(`${n.http}${path}`);
  return { page, errors, failed };
}

test("the console loads without errors and its numbers follow the node live", async () => {
  const n = await node();
  const { page, errors } = await openConsole(n);
  const info = await (await fetch(`${n.http}/api/info`)).json();
  await waitText(page, "#node-id", info.node);
  await waitText(page, "#broker", "memory broker: connected");
  assert.equal(await page.isVisible("#login"), false);
  await waitText(page, "#connections", "0");
  assert.equal(await page.isVisible("#channels-empty"), true);

  // A plain client connects: the numbers and the channel list follow.
  const ws = await client(`ws://127.0.0.1:${n.port}/?channel=room`);
  await waitText(page, "#connections", "1");
  await waitText(page, "#channels", "1");
  await waitText(page, "#channels-body tr:first-child td:first-child", "room");
  await waitText(page, "#channels-body tr:first-child td.num", "1");

  // Messages flow: the per-second rates leave zero while they do.
  const published = [];
  const rates = waitText(page, "#rate-out", (t) => Number(t.replaceAll(",", "")) > 0, 15000);
  let stop = false;
  const pump = (async () => {
    for (let i = 0; !stop && i < 2000; i++) {
      await apiPost(n, "/api/publish", { channel: "room", data: `m${i}` });
      published.push(i);
    }
  })();
  await rates;
  stop = true;
  await pump;
  assert.ok(Number((await page.textContent("#rate-in")).replaceAll(",", "")) >= 0);
  await ws.next((m) => m === "m0");
  await waitText(page, '[data-counter="deliveries"]', (t) => Number(t.replaceAll(",", "")) >= published.length);

  // Screenshots for people to look at: a large and a small laptop screen.
  assert.ok((await screenshot(page, "console")).endsWith("console.png"));
  await page.setViewportSize({ width: 1280, height: 720 });
  await screenshot(page, "console-1280");
  assert.deepEqual(errors, []);

  // `/console` is the same page.
  const other = await openConsole(n, "/console");
  await waitText(other.page, "#node-id", info.node);
  assert.deepEqual(other.errors, []);
});

test("publishing from the console reaches a plain WebSocket client", async () => {
  const n = await node();
  const ws = await client(`ws://127.0.0.1:${n.port}/?channel=news`);
  const { page, errors } = await openConsole(n);
  await page.waitForSelector("#main", { state: "visible" });

  await page.fill("#publish-channel", "news");
  await page.fill("#publish-data", "hello from the console");
  await page.click("#publish-form button[type=submit]");
  assert.equal(await ws.next((m) => m.startsWith("hello")), "hello from the console");
  await waitText(page, "#publish-status", (t) => t.startsWith("Published to news"));

  // As JSON: the client gets the JSON text; bad JSON is caught in the page.
  await page.check("#publish-json");
  await page.fill("#publish-data", '{"price": 42}');
  await page.click("#publish-form button[type=submit]");
  assert.equal(await ws.next((m) => m.startsWith("{")), '{"price":42}');
  await page.fill("#publish-data", "{oops");
  await page.click("#publish-form button[type=submit]");
  await waitText(page, "#publish-status", (t) => t.startsWith("Not JSON"));
  assert.deepEqual(errors, []);
});

test("watching a channel shows what the HTTP API publishes there", async () => {
  const n = await node();
  const { page, errors } = await openConsole(n);
  await page.waitForSelector("#main", { state: "visible" });
  await page.fill("#watch-channel", "alerts");
  await page.click("#watch-button");
  await waitText(page, "#watch-status", "Watching alerts");
  // The console's own connection shows in its numbers.
  await waitText(page, "#connections", "1");

  assert.equal((await apiPost(n, "/api/publish", { channel: "alerts", data: "disk almost full" })).status, 200);
  await waitText(page, "#messages li:first-child .data", "disk almost full");
  await apiPost(n, "/api/publish", { channel: "alerts", data: { level: "high" } });
  await waitText(page, "#messages li:first-child .data", '{"level":"high"}');
  await apiPost(n, "/api/publish", { channel: "other", data: "not watched" });
  await apiPost(n, "/api/publish", { channel: "alerts", data: "third" });
  await waitText(page, "#messages li:first-child .data", "third");
  assert.equal(await page.locator("#messages li").count(), 3);

  // A channel in the list is one click from being watched.
  await client(`ws://127.0.0.1:${n.port}/?channel=lobby`);
  await page.click('#channels-body a:text-is("lobby")');
  await waitText(page, "#watch-status", "Watching lobby");
  assert.equal(await page.inputValue("#publish-channel"), "lobby");
  await page.click("#stop-button");
  await waitText(page, "#watch-status", "Stopped.");
  await waitText(page, "#connections", "1"); // the lobby client only
  assert.deepEqual(errors, []);
});

test("with an API key the console asks for it and works only with it", async () => {
  const n = await node(["--api-key", KEY]);
  const ws = await client(`ws://127.0.0.1:${n.port}/?channel=ops`);
  const { page, errors, failed } = await openConsole(n);
  await page.waitForSelector("#login", { state: "visible" });
  assert.equal(await page.isVisible("#main"), false);
  assert.equal(await page.isVisible("#ident"), false, "nothing about the node shows without the key");
  assert.equal(await page.textContent("#node-id"), "–");
  // The page learned that it needs a key without a refused request (the
  // browser logs each 401 as an error in its console).
  assert.deepEqual(failed, []);
  assert.deepEqual(errors, []);

  await page.fill("#api-key", "wrong");
  await page.click("#login-form button");
  await waitText(page, "#login-error", "That key was not accepted.");
  await screenshot(page, "console-login");
  assert.equal(await page.isVisible("#main"), false);
  assert.deepEqual(failed, [], "a wrong key is refused without a failed request too");

  await page.fill("#api-key", KEY);
  await page.click("#login-form button");
  await page.waitForSelector("#main", { state: "visible" });
  await waitText(page, "#connections", "1");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("duplex.console.apiKey")), KEY);

  // The key works for publishing, and survives a reload of the tab.
  await page.reload();
  await page.waitForSelector("#main", { state: "visible" });
  await page.fill("#publish-channel", "ops");
  await page.fill("#publish-data", "deploy done");
  await page.click("#publish-form button[type=submit]");
  assert.equal(await ws.next(), "deploy done");

  await page.click("#forget-key");
  await page.waitForSelector("#login", { state: "visible" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("duplex.console.apiKey")), null);
  assert.deepEqual(failed, []);
  assert.deepEqual(errors, []);
});

test("with token auth the console watches through a short-lived token it gets with the API key", async () => {
  const n = await node(["--api-key", KEY, "--token-secret", SECRET]);
  // Token auth is really on: an anonymous plain client is refused.
  const refused = new WebSocket(`ws://127.0.0.1:${n.port}/?channel=x`);
  const closed = await new Promise((resolve) => (refused.onclose = (e) => resolve(e.code)));
  assert.equal(closed, 3500);

  const { page, errors, failed } = await openConsole(n);
  await page.waitForSelector("#login", { state: "visible" });
  await page.fill("#api-key", KEY);
  await page.click("#login-form button");
  await page.waitForSelector("#main", { state: "visible" });
  await page.fill("#watch-channel", "#user:42");
  await page.click("#watch-button");
  await waitText(page, "#watch-status", "Watching #user:42");
  const sent = await apiPost(n, "/api/publish", { channel: "#user:42", data: "for user 42" }, KEY);
  assert.equal(sent.status, 200);
  await waitText(page, "#messages li:first-child .data", "for user 42");
  await waitText(page, "#connections", "1"); // the console's own watch connection
  await screenshot(page, "console-watch");
  assert.deepEqual(failed, []);
  assert.deepEqual(errors, []);
});
