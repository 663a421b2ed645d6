// Browser test helpers: headless Chromium through playwright-core, a private
// redis-server, plain WebSocket clients, HTTP API calls. Nodes are started by
// the JavaScript client's helpers (a real `duplex serve` on a free port).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before } from "node:test";
import { chromium } from "playwright-core";
import { freePort, within } from "../../js/test/helpers.js";

export { freePort, signToken, startNode, within } from "../../js/test/helpers.js";

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
/** Where screenshots go (under target/, ignored by git). */
export const shotsDir = join(repoRoot, "target", "browser");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

/**
 * Debian's Chromium, headless, with a fresh profile. Playwright cannot
 * download browsers here; it drives the system one.
 */
export async function launchBrowser() {
  const profile = await mkdtemp(join(tmpdir(), "duplex-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1440, height: 900 },
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/** Collects what a user would see as errors in the page's DevTools console. */
export function collectErrors(page) {
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  return errors;
}

/** Requests of the page that failed (no answer) or were answered 4xx/5xx, as "STATUS url". */
export function collectFailedRequests(page) {
  const failed = [];
  page.on("requestfailed", (r) => failed.push(`failed ${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`);
  });
  return failed;
}

/** Lines the page logs with console.log, and a way to wait for one. */
export function consoleLines(page) {
  const lines = [];
  const waiters = [];
  page.on("console", (m) => {
    if (m.type() !== "log") return;
    const text = m.text();
    lines.push(text);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].pred(text)) waiters.splice(i, 1)[0].resolve(text);
    }
  });
  return {
    lines,
    /** Resolves with the first line (already logged or to come) that passes `pred`. */
    next(pred, ms = 10000) {
      const seen = lines.find(pred);
      if (seen !== undefined) return Promise.resolve(seen);
      return within(new Promise((resolve) => waiters.push({ pred, resolve })), ms, "a console.log line");
    },
  };
}

/**
 * Waits until `selector`'s text passes `pred` (a string means equality) and
 * returns it. Polls the page from here, as Rust tests' `eventually` does:
 * evaluating a predicate inside the page would need `eval`, which the
 * console's Content-Security-Policy rightly forbids.
 */
export async function waitText(page, selector, pred, ms = 10000) {
  const test = typeof pred === "string" ? (t) => t === pred : pred;
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = ((await page.locator(selector).first().textContent({ timeout: ms })) ?? "").trim();
    if (test(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting on ${selector}: last text ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50)); // poll interval, not a test delay
  }
}

/** Saves a screenshot under target/browser/ and returns its path. */
export async function screenshot(page, name) {
  await mkdir(shotsDir, { recursive: true });
  const path = join(shotsDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** POSTs JSON to the node's HTTP API, with an API key when given. */
export async function apiPost(node, path, body, key) {
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `apikey ${key}`;
  const res = await fetch(`${node.http}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/** A plain WebSocket client in Node (the classic demo's kind) that queues what it receives. */
export async function plainClient(url) {
  const ws = new WebSocket(url);
  const messages = [];
  const waiters = [];
  ws.onmessage = (e) => {
    messages.push(e.data);
    for (const w of waiters.splice(0)) w();
  };
  await within(once(ws, "open"), 10000, `open ${url}`);
  return {
    ws,
    messages,
    /** Resolves with the first message that passes `pred`. */
    async next(pred = () => true, ms = 10000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const found = messages.find(pred);
        if (found !== undefined) return found;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no matching message on ${url}; got ${JSON.stringify(messages)}`);
        await within(new Promise((r) => waiters.push(r)), left, `message on ${url}`).catch(() => {});
      }
    },
    close() {
      ws.close();
    },
  };
}

/** A private redis-server on a free port; `stop()` kills it. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on("data", (d) => {
      log += d;
      if (log.includes("Ready to accept connections")) resolve();
    });
    proc.on("exit", (code) => reject(new Error(`redis-server exited with ${code}:\n${log}`)));
  });
  const exited = once(proc, "exit");
  await within(ready, 10000, "redis-server ready");
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    /** Runs redis-cli against this server; resolves with its output. */
    async cli(...args) {
      const cli = spawn("redis-cli", ["-p", String(port), ...args], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      cli.stdout.on("data", (d) => (out += d));
      const [code] = await within(once(cli, "exit"), 10000, "redis-cli");
      if (code !== 0) throw new Error(`redis-cli ${args.join(" ")} exited with ${code}`);
      return out.trim();
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await within(exited, 10000, "redis-server exit");
    },
  };
}

/**
 * One Chromium for a test file: launched before its tests; after them, the
 * `cleanups` the tests pushed run (last first) and the browser closes.
 */
export function sharedBrowser() {
  let browser;
  const cleanups = [];
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await browser?.close();
  });
  return { cleanups, newPage: () => browser.context.newPage() };
}
