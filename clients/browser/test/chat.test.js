// The browser chat example (examples/chat): served by `python3 -m http.server`
// as its README says, two Chromium pages chat through a node.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { test } from "node:test";
import { apiPost, collectErrors, freePort, repoRoot, screenshot, startNode, waitText, within, sharedBrowser } from "./helpers.js";

const { cleanups, newPage } = sharedBrowser();

/** `python3 -m http.server` on a free port serving examples/chat, once it answers. */
async function staticServer() {
  const port = await freePort();
  const proc = spawn("python3", ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", join(repoRoot, "examples/chat")], {
    stdio: ["ignore", "ignore", "ignore"],
  });
  const exited = once(proc, "exit");
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await within(exited, 10000, "http.server exit");
  });
  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 15000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`http.server exited with ${proc.exitCode}`);
    try {
      if ((await fetch(url)).ok) return url;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error("http.server did not start");
    await new Promise((r) => setTimeout(r, 50)); // startup poll, not a test delay
  }
}

async function chatter(url, name) {
  const page = await newPage();
  cleanups.push(() => page.close());
  const errors = collectErrors(page);
  await page.goto(url);
  await waitText(page, "#state", "connected");
  await page.fill("#name", name);
  return { page, errors };
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send button");
}

test("two pages chat with each other through a node, and a backend joins in", async () => {
  const node = await startNode();
  cleanups.push(() => node.stop());
  const site = await staticServer();
  // The page is on another origin (another port) than the node: a node on loopback allows it.
  const url = `${site}?node=${encodeURIComponent(node.http)}&room=lobby`;
  const alice = await chatter(url, "Alice");
  const bob = await chatter(url, "Bob");

  await say(alice.page, "hi Bob");
  await waitText(bob.page, "#log li:nth-child(1)", "Alice:hi Bob");
  await say(bob.page, "hello Alice <b>!</b>");
  for (const { page } of [alice, bob]) {
    await waitText(page, "#log li:nth-child(2)", "Bob:hello Alice <b>!</b>");
    assert.equal(await page.textContent("#log li:nth-child(1)"), "Alice:hi Bob");
  }
  // What people type is shown as text, never run as markup.
  assert.equal(await bob.page.locator("#log li:nth-child(2) b").count(), 1);
  assert.equal(await bob.page.getAttribute("#log li:nth-child(1)", "class"), null);
  assert.equal(await alice.page.getAttribute("#log li:nth-child(1)", "class"), "me");

  // A backend speaks in the room with one HTTP call.
  assert.equal((await apiPost(node, "/api/publish", { channel: "lobby", data: { name: "bot", text: "welcome" } })).status, 200);
  await waitText(alice.page, "#log li:nth-child(3)", "bot:welcome");
  await waitText(bob.page, "#log li:nth-child(3)", "bot:welcome");
  assert.equal(await alice.page.inputValue("#text"), "");
  await screenshot(bob.page, "chat");
  for (const { errors } of [alice, bob]) assert.deepEqual(errors, []);
});
