// Opens a page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and prints what it reported, as one JSON object on stdout:
//
//   node open_preview.mjs URL [--click SELECTOR]... [--timeout-ms N] [--status-only]
//
// A page reports by setting `window.sbxResult` (any JSON value) once its
// scripts have done their work; the driver waits for it, bounded by
// --timeout-ms (per page), then clicks each --click selector in turn,
// waits for the page that click leads to, and waits for its result too.
// Output: {"pages": [{"url", "status", "title", "text", "result"}...],
// "console_errors": [...]}. --status-only loads URL and reports its
// status without waiting for a result (a revoked preview's 404).
//
// Fails (exit 1) when a page does not load, answers an error status while a
// result is awaited, or reports nothing in time; the page's console errors,
// uncaught exceptions and failed requests go to stderr.
//
// playwright-core comes from the node_modules that scripts/lib.sh's
// sbx_node_modules makes (SBX_BROWSER_NODE_MODULES), or, without it, from
// one next to this file (`npm ci` here).

import { createRequire } from "node:module";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

const CHROMIUM = "/usr/bin/chromium";

function usage(message) {
  process.stderr.write(
    `${message}\nusage: open_preview.mjs URL [--click SELECTOR]... [--timeout-ms N] [--status-only]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const options = { url: null, clicks: [], timeoutMs: 30000, statusOnly: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--click") {
      if (i + 1 >= argv.length) usage("--click needs a selector");
      options.clicks.push(argv[++i]);
    } else if (arg === "--timeout-ms") {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value <= 0) usage("--timeout-ms needs a positive integer");
      options.timeoutMs = value;
    } else if (arg === "--status-only") {
      options.statusOnly = true;
    } else if (arg.startsWith("--")) {
      usage(`unknown option ${arg}`);
    } else if (options.url === null) {
      options.url = arg;
    } else {
      usage(`one URL only (got ${arg} too)`);
    }
  }
  if (options.url === null) usage("no URL");
  return options;
}

function loadPlaywright() {
  const nodeModules = process.env.SBX_BROWSER_NODE_MODULES;
  // createRequire resolves from the directory of the file it is given: a
  // file inside node_modules finds the packages beside it.
  const from = nodeModules
    ? path.join(nodeModules, "resolve-from-here.js")
    : new URL(import.meta.url).pathname;
  try {
    return createRequire(from)("playwright-core");
  } catch (error) {
    process.stderr.write(
      `open_preview: no playwright-core (${error.message.split("\n")[0]}); ` +
        "SBX_BROWSER_NODE_MODULES names the node_modules that scripts/lib.sh's sbx_node_modules makes\n",
    );
    process.exit(1);
  }
}

// What the page has shown of itself, once it reported.
async function describe(page, response) {
  return {
    url: page.url(),
    status: response ? response.status() : null,
    title: await page.title(),
    text: await page.evaluate(() => document.body?.innerText ?? ""),
    result: await page.evaluate(() => window.sbxResult ?? null),
  };
}

async function awaitResult(page, timeoutMs) {
  await page.waitForFunction(() => window.sbxResult !== undefined, null, { timeout: timeoutMs });
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { chromium } = loadPlaywright();
  const errors = [];
  // A profile of its own per run: nothing carries over between tests.
  const profile = await mkdtemp(path.join(tmpdir(), "sbx-chromium-"));
  let context = null;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // As root in a VM: no setuid sandbox. The machine has no network but
      // loopback, so nothing may call home (each such call is refused, and
      // slows the start).
      chromiumSandbox: false,
      args: [
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => errors.push(`exception: ${error.message}`));
    page.on("requestfailed", (request) =>
      errors.push(`request failed: ${request.url()}: ${request.failure()?.errorText}`),
    );

    const pages = [];
    const response = await page.goto(options.url, { timeout: options.timeoutMs });
    if (options.statusOnly) {
      pages.push({ url: page.url(), status: response ? response.status() : null });
    } else {
      if (!response || !response.ok()) {
        throw new Error(`${options.url} answered ${response ? response.status() : "nothing"}`);
      }
      await awaitResult(page, options.timeoutMs);
      pages.push(await describe(page, response));
      for (const selector of options.clicks) {
        const [next] = await Promise.all([
          page.waitForNavigation({ timeout: options.timeoutMs }),
          page.click(selector, { timeout: options.timeoutMs }),
        ]);
        if (!next || !next.ok()) {
          throw new Error(`${selector} led to ${page.url()}, which answered ${next?.status()}`);
        }
        await awaitResult(page, options.timeoutMs);
        pages.push(await describe(page, next));
      }
    }
    process.stdout.write(`${JSON.stringify({ pages, console_errors: errors })}\n`);
  } catch (error) {
    process.stderr.write(`open_preview: ${error.message}\n`);
    for (const line of errors) process.stderr.write(`${line}\n`);
    process.exitCode = 1;
  } finally {
    if (context) await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

await main();
