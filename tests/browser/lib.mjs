// Shared helpers for the browser scripts: start Debian's chromium through playwright-core (never a
// downloaded browser) and open the ComfyUI frontend of a running server.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export async function openComfy(url, { width = 1400, height = 900 } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = await browser.newPage({ viewport: { width, height } });
  // nothing but the local server: the frontend's calls to outside hosts are answered locally with an abort
  const origin = new URL(url).origin;
  await page.route((u) => !u.href.startsWith(origin) && !u.href.startsWith("data:"), (route) => route.abort());
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  // no first-run template dialog
  await fetch(`${url}/api/settings/Comfy.TutorialCompleted`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "true",
  }).catch(() => {});
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 90000 });
  // the node definitions are registered once the extensions have run their setup
  await page.waitForFunction(() => Object.keys(window.LiteGraph.registered_node_types).length > 50, null, {
    timeout: 90000,
  });
  return { browser, page, logs };
}
