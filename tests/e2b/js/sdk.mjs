// The official E2B JavaScript SDK (`e2b`, pinned in package-lock.json)
// against `sbx serve`'s E2B surface, unchanged: configured only through its
// environment, as any E2B user's code would be.
//
//   E2B_API_URL=<server>/e2b E2B_SANDBOX_URL=<server>/e2b E2B_API_KEY=<token> \
//   E2B_DOMAIN=sbx.localhost SBX_E2B_NODE_MODULES=<node_modules> node sdk.mjs
//
// tests/e2b/test_js_sdk.py runs it on each runtime. It walks the SDK's core
// flow, step by step (create with envs, metadata and a timeout; commands in
// the foreground with output callbacks, with envs, cwd and users, in the
// background with wait and kill, with stdin; CommandExitError; files:
// write, read, list, makeDir, exists, rename, remove, watchDir; setTimeout;
// connect; pause and connect again; list; kill), and stops at the first
// wrong result: exit 1, naming the step and what was wrong on stderr.
// Progress goes to stderr ("ok STEP"); on success stdout has one JSON
// object, {"sandboxes": [ids it created], "steps": N}, and the exit is 0.
// Every sandbox it created is killed before it exits, pass or fail.
//
// `e2b` comes from the node_modules that scripts/lib.sh's
// sbx_e2b_node_modules makes (SBX_E2B_NODE_MODULES), or, without it, from
// one next to this file (`npm ci` here).

import { createRequire } from "node:module";
import path from "node:path";
import { createHash, randomBytes } from "node:crypto";

// Same conventions as the Python suite (test_python_sdk.py): a SIGKILLed
// command's exit code is sbx's 128 + 9 (envd's would be -1); a create
// without a timeout gets E2B's 300 s; `base` runs commands as `user` by
// default.
const KILLED_EXIT_CODES = [137];
const CLOCK_SLACK_S = 15;

function loadE2b() {
  const nodeModules = process.env.SBX_E2B_NODE_MODULES;
  // createRequire resolves from the directory of the file it is given: a
  // file inside node_modules finds the packages beside it.
  const from = nodeModules
    ? path.join(nodeModules, "resolve-from-here.js")
    : new URL(import.meta.url).pathname;
  try {
    return createRequire(from)("e2b");
  } catch (error) {
    process.stderr.write(
      `sdk.mjs: no e2b package (${error.message.split("\n")[0]}); ` +
        "SBX_E2B_NODE_MODULES names the node_modules that scripts/lib.sh's sbx_e2b_node_modules makes\n",
    );
    process.exit(1);
  }
}

const {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  FilesystemEventType,
  FileType,
  NotFoundError,
  Sandbox,
  SandboxError,
  SandboxNotFoundError,
} = loadE2b();

for (const name of ["E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"]) {
  if (!process.env[name]) {
    process.stderr.write(`sdk.mjs: ${name} is not set: run it through tests/e2b/test_js_sdk.py\n`);
    process.exit(2);
  }
}

class Wrong extends Error {}

function check(condition, message) {
  if (!condition) throw new Wrong(typeof message === "function" ? message() : message);
}

function show(value) {
  return JSON.stringify(value, (_key, v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v));
}

function checkEqual(actual, expected, what) {
  check(
    show(actual) === show(expected),
    () => `${what}: got ${show(actual)}, expected ${show(expected)}`,
  );
}

// Keys in order, so that two objects with the same entries compare equal.
function sorted(record) {
  return Object.fromEntries(Object.entries(record ?? {}).sort(([a], [b]) => a.localeCompare(b)));
}

async function expectError(promise, errorClass, what) {
  try {
    await promise;
  } catch (error) {
    check(
      error instanceof errorClass,
      () => `${what}: threw ${error?.constructor?.name}: ${error?.message}, expected ${errorClass.name}`,
    );
    return error;
  }
  throw new Wrong(`${what}: did not throw, expected ${errorClass.name}`);
}

async function waitFor(condition, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) {
      throw new Wrong(`not in ${timeoutMs} ms: ${typeof what === "function" ? what() : what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function checkExpiresIn(date, seconds, what) {
  check(date instanceof Date && !Number.isNaN(date.getTime()), `${what}: not a date: ${date}`);
  const left = (date.getTime() - Date.now()) / 1000;
  check(
    left >= seconds - CLOCK_SLACK_S && left <= seconds + 2,
    `${what}: ${left.toFixed(1)} s from now, expected about ${seconds} s`,
  );
}

function isBase(info) {
  // E2B reports a template's id and its alias apart; sbx's images have
  // names only, so `base` may be either.
  return info.templateId === "base" || info.name === "base";
}

async function listAll(opts) {
  const paginator = Sandbox.list(opts);
  const items = [];
  let pages = 0;
  while (paginator.hasNext) {
    items.push(...(await paginator.nextItems()));
    pages += 1;
    check(pages < 100, "Sandbox.list() pages without end");
  }
  return items;
}

const created = [];
let steps = 0;
let current = "start";

async function step(name, body) {
  current = name;
  await body();
  steps += 1;
  process.stderr.write(`ok ${name}\n`);
}

async function main() {
  const run = randomBytes(4).toString("hex");
  const metadata = { suite: "e2b-js", run };
  const secret = `value with spaces ${run}`;
  let sandbox;

  await step("create with template, envs, metadata and timeout", async () => {
    sandbox = await Sandbox.create("base", {
      envs: { SBX_E2B_SECRET: secret },
      metadata,
      timeoutMs: 600_000,
    });
    created.push(sandbox.sandboxId);
    check(typeof sandbox.sandboxId === "string" && sandbox.sandboxId.length > 0, "no sandboxId");
    const info = await sandbox.getInfo();
    checkEqual(info.sandboxId, sandbox.sandboxId, "getInfo().sandboxId");
    check(isBase(info), `template: id ${info.templateId}, name ${info.name}`);
    checkEqual(sorted(info.metadata), sorted(metadata), "getInfo().metadata");
    checkEqual(info.state, "running", "getInfo().state");
    checkExpiresIn(info.endAt, 600, "getInfo().endAt");
    check(await sandbox.isRunning(), "isRunning() is false");
  });

  await step("commands.run with onStdout and onStderr", async () => {
    const out = [];
    const err = [];
    const result = await sandbox.commands.run("echo out1; echo err1 >&2; echo out2", {
      onStdout: (data) => out.push(data),
      onStderr: (data) => err.push(data),
    });
    checkEqual(result.exitCode, 0, "exitCode");
    checkEqual(result.stdout, "out1\nout2\n", "stdout");
    checkEqual(result.stderr, "err1\n", "stderr");
    checkEqual(out.join(""), result.stdout, "what onStdout saw");
    checkEqual(err.join(""), result.stderr, "what onStderr saw");
  });

  await step("envs, cwd and users of commands", async () => {
    checkEqual((await sandbox.commands.run('printf %s "$SBX_E2B_SECRET"')).stdout, secret, "the sandbox's envs");
    checkEqual(
      (await sandbox.commands.run('printf %s "$GREETING"', { envs: { GREETING: "hi there" } })).stdout,
      "hi there",
      "a command's envs",
    );
    checkEqual((await sandbox.commands.run("pwd", { cwd: "/tmp" })).stdout, "/tmp\n", "cwd");
    checkEqual((await sandbox.commands.run("id -un; id -u; pwd", { user: "root" })).stdout, "root\n0\n/root\n", "user root");
    checkEqual((await sandbox.commands.run("id -un; id -u; pwd", { user: "user" })).stdout, "user\n1000\n/home/user\n", "user user");
    checkEqual((await sandbox.commands.run("id -un; id -u; pwd")).stdout, "user\n1000\n/home/user\n", "the default user");
  });

  await step("a non-zero exit throws CommandExitError", async () => {
    const error = await expectError(
      sandbox.commands.run("echo partial; echo oops >&2; exit 3"),
      CommandExitError,
      "exit 3",
    );
    checkEqual(error.exitCode, 3, "exitCode");
    checkEqual(error.stdout, "partial\n", "stdout");
    checkEqual(error.stderr, "oops\n", "stderr");
    check(error instanceof SandboxError, "CommandExitError is a SandboxError");
  });

  let sleeper;
  await step("background commands: wait and kill", async () => {
    const out = [];
    const finished = await sandbox.commands.run("sleep 0.5; echo done", {
      background: true,
      onStdout: (data) => out.push(data),
    });
    check(finished.pid > 0, `pid ${finished.pid}`);
    const result = await finished.wait();
    checkEqual([result.exitCode, result.stdout], [0, "done\n"], "the background command's result");
    checkEqual(out.join(""), "done\n", "what onStdout saw");

    const doomed = await sandbox.commands.run("sleep 600", { background: true });
    const listed = await sandbox.commands.list();
    const entry = listed.find((p) => p.pid === doomed.pid);
    check(entry, () => `pid ${doomed.pid} not in commands.list(): ${show(listed)}`);
    checkEqual([entry.cmd, entry.args], ["/bin/bash", ["-l", "-c", "sleep 600"]], "the listed command");
    checkEqual(await doomed.kill(), true, "kill()");
    const error = await expectError(doomed.wait(), CommandExitError, "wait() on a killed command");
    check(KILLED_EXIT_CODES.includes(error.exitCode), `a killed command's exit code: ${error.exitCode}`);
    await waitFor(
      async () => !(await sandbox.commands.list()).some((p) => p.pid === doomed.pid),
      10_000,
      "the killed command left commands.list()",
    );
    checkEqual(await sandbox.commands.kill(doomed.pid), false, "killing it again");

    // One left running, for the pause below.
    sleeper = await sandbox.commands.run("sleep 600", { background: true });
    await sleeper.disconnect();
  });

  await step("stdin of a background command", async () => {
    const cat = await sandbox.commands.run("cat", { background: true, stdin: true });
    await cat.sendStdin("hello\n");
    await cat.sendStdin(new TextEncoder().encode("bytes too\n"));
    await cat.closeStdin();
    checkEqual((await cat.wait()).stdout, "hello\nbytes too\n", "cat's stdout");
  });

  const base = `/home/user/files-${run}`;
  await step("files: write, read, list, makeDir, exists, rename, remove", async () => {
    const written = await sandbox.files.write(`${base}/nested/a.txt`, "hello\n");
    checkEqual([written.name, written.path, written.type], ["a.txt", `${base}/nested/a.txt`, FileType.FILE], "write()");
    checkEqual(await sandbox.files.read(`${base}/nested/a.txt`), "hello\n", "read()");

    const blob = new Uint8Array(256 * 64).map((_, i) => i % 256);
    await sandbox.files.write(`${base}/nested/blob.bin`, blob.buffer);
    const back = await sandbox.files.read(`${base}/nested/blob.bin`, { format: "bytes" });
    check(back instanceof Uint8Array, `read({format: "bytes"}) gave ${back?.constructor?.name}`);
    check(Buffer.from(back).equals(Buffer.from(blob)), `read back ${back.length} bytes, not what was written`);
    const sum = (await sandbox.commands.run(`sha256sum < ${base}/nested/blob.bin`)).stdout.split(" ")[0];
    checkEqual(sum, createHash("sha256").update(blob).digest("hex"), "the blob's sha256 inside");

    checkEqual(await sandbox.files.makeDir(`${base}/nested/sub/deeper`), true, "makeDir()");
    checkEqual(await sandbox.files.makeDir(`${base}/nested/sub/deeper`), false, "makeDir() again");

    const entries = await sandbox.files.list(`${base}/nested`);
    checkEqual(entries.map((e) => e.name).sort(), ["a.txt", "blob.bin", "sub"], "list() names");
    const byName = Object.fromEntries(entries.map((e) => [e.name, e]));
    checkEqual([byName["a.txt"].type, byName["a.txt"].path, byName["a.txt"].size], [FileType.FILE, `${base}/nested/a.txt`, 6], "a.txt listed");
    checkEqual(byName["blob.bin"].size, blob.length, "blob.bin's size");
    checkEqual(byName.sub.type, FileType.DIR, "sub's type");

    checkEqual(await sandbox.files.exists(`${base}/nested/a.txt`), true, "exists()");
    checkEqual(await sandbox.files.exists(`${base}/nested/missing.txt`), false, "exists() of a missing file");

    const renamed = await sandbox.files.rename(`${base}/nested/a.txt`, `${base}/nested/b.txt`);
    checkEqual([renamed.name, renamed.path], ["b.txt", `${base}/nested/b.txt`], "rename()");
    checkEqual(await sandbox.files.exists(`${base}/nested/a.txt`), false, "the old name after rename()");
    checkEqual(await sandbox.files.read(`${base}/nested/b.txt`), "hello\n", "the new name's content");

    await sandbox.files.remove(`${base}/nested/b.txt`);
    checkEqual(await sandbox.files.exists(`${base}/nested/b.txt`), false, "exists() after remove()");
    await sandbox.files.remove(`${base}/nested/sub`);
    checkEqual(await sandbox.files.exists(`${base}/nested/sub`), false, "a directory after remove()");

    const missing = await expectError(sandbox.files.read(`${base}/nested/missing.txt`), NotFoundError, "read() of a missing file");
    check(missing instanceof FileNotFoundError, `read() of a missing file threw ${missing.constructor.name}`);
  });

  await step("watchDir", async () => {
    const watched = `${base}/watched`;
    await sandbox.files.makeDir(`${watched}/sub`);
    const events = [];
    let exited = null;
    const handle = await sandbox.files.watchDir(watched, (event) => events.push(event), {
      recursive: true,
      timeoutMs: 120_000,
      onExit: (err) => {
        exited = err ?? "ended";
      },
    });
    const saw = (name, ...types) => events.some((e) => e.name === name && types.includes(e.type));
    try {
      await sandbox.commands.run(`printf data > ${watched}/new.txt`);
      await waitFor(() => saw("new.txt", FilesystemEventType.CREATE), 15_000, () => `create new.txt in ${show(events)}`);
      await waitFor(() => saw("new.txt", FilesystemEventType.WRITE), 15_000, () => `write new.txt in ${show(events)}`);
      await sandbox.files.write(`${watched}/written.txt`, "through the SDK");
      await waitFor(
        () => saw("written.txt", FilesystemEventType.CREATE, FilesystemEventType.WRITE),
        15_000,
        () => `create or write written.txt in ${show(events)}`,
      );
      await sandbox.commands.run(`rm ${watched}/new.txt`);
      await waitFor(() => saw("new.txt", FilesystemEventType.REMOVE), 15_000, () => `remove new.txt in ${show(events)}`);
      await sandbox.commands.run(`touch ${watched}/sub/deep.txt`);
      await waitFor(() => saw("sub/deep.txt", FilesystemEventType.CREATE), 15_000, () => `create sub/deep.txt in ${show(events)}`);
      // Nothing from before the watch (sub was made before it), and every
      // name is relative to the watched directory.
      check(
        !events.some((e) => (e.name === "sub" && e.type === FilesystemEventType.CREATE) || e.name.startsWith("/")),
        () => `unexpected events: ${show(events)}`,
      );
      check(exited === null, `the watch ended early: ${exited}`);
    } finally {
      await handle.stop();
    }
  });

  await step("setTimeout", async () => {
    await sandbox.setTimeout(900_000);
    checkExpiresIn((await sandbox.getInfo()).endAt, 900, "endAt after setTimeout(900 s)");
    await Sandbox.setTimeout(sandbox.sandboxId, 1_200_000);
    checkExpiresIn((await Sandbox.getInfo(sandbox.sandboxId)).endAt, 1200, "endAt after Sandbox.setTimeout(1200 s)");
  });

  await step("connect from a second client", async () => {
    await sandbox.files.write("/tmp/shared.txt", "from the first client");
    const second = await Sandbox.connect(sandbox.sandboxId);
    checkEqual(second.sandboxId, sandbox.sandboxId, "the connected sandbox's id");
    checkEqual(await second.files.read("/tmp/shared.txt"), "from the first client", "a file, read by the second client");
    await second.files.write("/tmp/shared.txt", "from the second client");
    checkEqual(await sandbox.files.read("/tmp/shared.txt"), "from the second client", "a file, read by the first client");
    await expectError(Sandbox.connect(`no-such-sandbox-${run}`), SandboxNotFoundError, "connect() to an unknown id");
  });

  await step("pause, then connect resumes", async () => {
    await sandbox.files.write("/home/user/kept.txt", "across the pause");
    checkEqual(await sandbox.pause(), true, "pause()");
    checkEqual((await sandbox.getInfo()).state, "paused", "the state while paused");
    checkEqual(await Sandbox.pause(sandbox.sandboxId), false, "pause() of a paused sandbox");
    const resumed = await Sandbox.connect(sandbox.sandboxId);
    checkEqual((await resumed.getInfo()).state, "running", "the state after connect()");
    checkEqual(await resumed.files.read("/home/user/kept.txt"), "across the pause", "a file across the pause");
    const pids = (await resumed.commands.list()).map((p) => p.pid);
    check(pids.includes(sleeper.pid), `the background command ${sleeper.pid} did not live through the pause: ${show(pids)}`);
    checkEqual((await resumed.commands.run("echo awake")).stdout, "awake\n", "a command after the pause");
  });

  let other;
  await step("list", async () => {
    other = await Sandbox.create({ metadata: { suite: "e2b-js", run, n: "2" } });
    created.push(other.sandboxId);
    const all = await listAll();
    const mine = all.find((s) => s.sandboxId === sandbox.sandboxId);
    check(mine, () => `${sandbox.sandboxId} not in Sandbox.list(): ${show(all.map((s) => s.sandboxId))}`);
    checkEqual(sorted(mine.metadata), sorted(metadata), "its listed metadata");
    checkEqual(mine.state, "running", "its listed state");
    check(isBase(mine), `listed template: id ${mine.templateId}, name ${mine.name}`);

    const ids = async (query) => (await listAll({ query })).map((s) => s.sandboxId).sort();
    checkEqual(await ids({ metadata: { run } }), [sandbox.sandboxId, other.sandboxId].sort(), "listed by metadata");
    checkEqual(await ids({ metadata: { run, n: "2" } }), [other.sandboxId], "listed by two metadata");
    checkEqual(await other.pause(), true, "pause() of the second sandbox");
    checkEqual(await ids({ metadata: { run }, state: ["paused"] }), [other.sandboxId], "listed paused");
    checkEqual(await ids({ metadata: { run }, state: ["running"] }), [sandbox.sandboxId], "listed running");
    checkEqual(
      await ids({ metadata: { run }, state: ["running", "paused"] }),
      [sandbox.sandboxId, other.sandboxId].sort(),
      "listed running and paused",
    );
  });

  await step("kill", async () => {
    const id = sandbox.sandboxId;
    checkEqual(await sandbox.kill(), true, "kill()");
    checkEqual(await sandbox.isRunning(), false, "isRunning() after kill()");
    checkEqual(await Sandbox.kill(id), false, "Sandbox.kill() of a killed sandbox");
    checkEqual(await Sandbox.kill(`no-such-sandbox-${run}`), false, "Sandbox.kill() of an unknown id");
    await expectError(Sandbox.getInfo(id), SandboxNotFoundError, "getInfo() of a killed sandbox");
    checkEqual(await Sandbox.kill(other.sandboxId), true, "Sandbox.kill() of a paused sandbox");
    const left = (await listAll({ query: { metadata: { run } } })).map((s) => s.sandboxId);
    checkEqual(left, [], "listed after the kills");
  });

  await step("a wrong key is an AuthenticationError", async () => {
    await expectError(Sandbox.create({ apiKey: `not-a-token-${run}` }), AuthenticationError, "create() with a wrong key");
  });
}

try {
  await main();
  process.stdout.write(`${JSON.stringify({ sandboxes: created, steps })}\n`);
} catch (error) {
  const what = error instanceof Wrong ? error.message : `${error?.constructor?.name}: ${error?.message}\n${error?.stack}`;
  process.stderr.write(`sdk.mjs: FAILED at "${current}": ${what}\n`);
  process.exitCode = 1;
} finally {
  for (const id of created) {
    await Sandbox.kill(id).catch(() => undefined);
  }
}
