// The client as a package, installed and used exactly as README.md says: its
// marked snippets (<!-- package-test: NAME --> before a code block) run in
// fresh projects made by `npm init -y`: CommonJS, ES module, and TypeScript
// type-checked against duplex.d.ts with `tsc --noEmit`. The JavaScript ones
// connect to a real node. npm's cache is target/npm-cache, so TypeScript is
// downloaded once.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, test } from "node:test";
import { startNode } from "./helpers.js";

const run = promisify(execFile);
const clientDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoRoot = resolve(clientDir, "../..");
/** The TypeScript the test type-checks with: pinned, so a release cannot break the suite unseen. */
const TYPESCRIPT = "typescript@7.0.2";
const npmEnv = {
  ...process.env,
  npm_config_cache: join(repoRoot, "target/npm-cache"),
  npm_config_audit: "false",
  npm_config_fund: "false",
  npm_config_update_notifier: "false",
};
// Node 20 and 21 need a flag for the global WebSocket (clients/js/test.sh passes it to the tests).
const nodeFlags = Number(process.versions.node.split(".")[0]) < 22 ? ["--experimental-websocket"] : [];

let readme;
let node;
let work;

/** The code block after `<!-- package-test: name -->` in README.md, with the test's paths and node. */
function snippet(name) {
  const marker = `<!-- package-test: ${name} -->`;
  const at = readme.indexOf(marker);
  assert.ok(at >= 0, `README.md has no ${marker}`);
  const block = readme.slice(at + marker.length).match(/^\s*```\w*\n([\s\S]*?)\n```/);
  assert.ok(block, `no code block after ${marker}`);
  return block[1].replaceAll("/path/to/duplex", repoRoot).replaceAll("ws://localhost:1234/ws", node.url);
}

/** A fresh project from `npm init -y` (npm writes "type": "commonjs"), optionally an ES module one. */
async function project(name, { esm = false } = {}) {
  const dir = join(work, name);
  await mkdir(dir);
  await run("npm", ["init", "-y"], { cwd: dir, env: npmEnv });
  if (esm) await run("npm", ["pkg", "set", "type=module"], { cwd: dir, env: npmEnv });
  return dir;
}

/** Runs README shell lines in `dir`, as a user would paste them. */
async function shell(dir, script) {
  return run("bash", ["-euo", "pipefail", "-c", script], { cwd: dir, env: npmEnv });
}

async function nodeRun(dir, file) {
  const { stdout } = await run(process.execPath, [...nodeFlags, file], { cwd: dir, env: npmEnv, timeout: 20000 });
  return stdout;
}

before(async () => {
  readme = await readFile(join(clientDir, "README.md"), "utf8");
  node = await startNode();
  work = await mkdtemp(join(tmpdir(), "duplex-package-"));
});

after(async () => {
  await node?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test("a fresh CommonJS project: installed from the repository path, require()d, connects", async () => {
  const dir = await project("cjs");
  assert.equal(JSON.parse(await readFile(join(dir, "package.json"), "utf8")).type ?? "commonjs", "commonjs");
  await shell(dir, snippet("install-path"));
  await writeFile(join(dir, "index.js"), snippet("cjs"));
  const info = await (await fetch(`${node.http}/api/info`)).json();
  assert.equal((await nodeRun(dir, "index.js")).trim(), `connected to node ${info.node}`);
});

test("a fresh ES module project: installed from a packed tarball, imported, connects", async () => {
  const dir = await project("esm", { esm: true });
  await shell(dir, snippet("install-tarball"));
  await writeFile(join(dir, "index.js"), snippet("esm"));
  const info = await (await fetch(`${node.http}/api/info`)).json();
  assert.equal((await nodeRun(dir, "index.js")).trim(), `connected to node ${info.node}`);
});

test("a TypeScript project type-checks against duplex.d.ts (nodenext and bundler resolution)", async () => {
  const dir = await project("ts", { esm: true });
  await shell(dir, snippet("install-path"));
  await run("npm", ["install", "--no-save", "--prefer-offline", TYPESCRIPT], { cwd: dir, env: npmEnv });
  await writeFile(join(dir, "index.ts"), snippet("ts"));
  // The history section's sample: positions, offsets, recovery, history().
  await writeFile(join(dir, "history.ts"), snippet("ts-history"));
  const tsc = (args) =>
    run(join(dir, "node_modules/.bin/tsc"), ["--noEmit", "--strict", "--lib", "es2022,dom", ...args, "index.ts", "history.ts"], { cwd: dir });
  await tsc(["--module", "nodenext"]);
  await tsc(["--module", "esnext", "--moduleResolution", "bundler"]);
  // The types are really read: misuse fails to type-check.
  await writeFile(join(dir, "index.ts"), `${snippet("ts")}\nnew Duplex(42);\n`);
  await assert.rejects(tsc(["--module", "nodenext"]), (e) => /TS2345/.test(e.stdout));
  await writeFile(join(dir, "index.ts"), snippet("ts"));
  await writeFile(join(dir, "history.ts"), `${snippet("ts-history")}\nconst epoch: number = news.position!.epoch;\n`);
  await assert.rejects(tsc(["--module", "nodenext"]), (e) => /TS2322/.test(e.stdout) && /history\.ts/.test(e.stdout));
});
