// Drives the real ComfyUI frontend against a running server with this pack loaded and prints one JSON
// object with what it saw (tests/browser/test_frontend.py asserts on it).
// usage: node tests/browser/frontend_check.mjs URL EXAMPLES_DIR [SCREENSHOT.png] [CHECKPOINT_NAME]
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { openComfy } from "./lib.mjs";

const [url, examplesDir, screenshot, checkpoint] = process.argv.slice(2);
const result = { examples: {}, run: null };
const { browser, page, logs } = await openComfy(url);
try {
  result.frontend = await page.evaluate(() => ({
    version: window.__COMFYUI_FRONTEND_VERSION__ || null,
    careNodes: Object.keys(window.LiteGraph.registered_node_types).filter((n) => n.startsWith("CARE")).sort(),
    extensions: (window.app.extensions || []).map((e) => e.name),
    marker: window.CARE_ERASURE ? { extensionLoaded: !!window.CARE_ERASURE.extensionLoaded } : null,
  }));

  for (const file of readdirSync(examplesDir).filter((f) => f.endsWith(".json")).sort()) {
    const workflow = JSON.parse(readFileSync(join(examplesDir, file), "utf8"));
    const seen = await page.evaluate(async (workflow) => {
      const { app, LiteGraph } = window;
      document.querySelectorAll(".p-dialog-close-button").forEach((b) => b.click());
      await app.loadGraphData(workflow, true, true, "care-example");
      await new Promise((r) => setTimeout(r, 800));
      const dialogs = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText);
      const nodes = app.graph.nodes;
      const missing = nodes
        .filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors)
        .map((n) => n.type);
      const care = nodes.filter((n) => n.type.startsWith("CARE"));
      const { output } = await app.graphToPrompt();
      document.querySelectorAll(".p-dialog-close-button").forEach((b) => b.click());
      return {
        nodes: nodes.length,
        missing,
        dialogs,
        careNodes: care.length,
        careColoured: care.filter((n) => n.color === "#2b4a3f").length,
        api: output,
      };
    }, workflow);
    result.examples[file] = seen;
  }

  if (checkpoint) {
    // run the first example from the editor with quick settings and read the report the extension shows
    const file = readdirSync(examplesDir).filter((f) => f.includes("side_by_side"))[0];
    const workflow = JSON.parse(readFileSync(join(examplesDir, file), "utf8"));
    result.run = await page.evaluate(
      async ({ workflow, checkpoint }) => {
        const { app } = window;
        await app.loadGraphData(workflow, true, true, "care-run");
        const set = (type, name, value) =>
          app.graph.nodes.filter((n) => n.type === type).forEach((n) => {
            const w = n.widgets.find((w) => w.name === name);
            w.value = value;
          });
        set("CheckpointLoaderSimple", "ckpt_name", checkpoint);
        set("EmptyLatentImage", "width", 64);
        set("EmptyLatentImage", "height", 64);
        set("KSampler", "steps", 2);
        await app.queuePrompt(0, 1);
        const report = app.graph.nodes.find((n) => n.type === "CAREShowReport");
        const started = Date.now();
        while (Date.now() - started < 400000) {
          const w = report.widgets?.find((w) => w.name === "care_text");
          const text = w?.care_area?.value || "";
          if (text.includes("residual")) {
            return { reportText: text, seconds: (Date.now() - started) / 1000, domWidget: !!w.care_area.isConnected };
          }
          await new Promise((r) => setTimeout(r, 1000));
        }
        return { reportText: null, seconds: (Date.now() - started) / 1000 };
      },
      { workflow, checkpoint },
    );
    await page.evaluate(() => window.app.canvas.ds && (window.app.canvas.ds.scale = 0.62));
    await page.evaluate(() => window.app.graph.setDirtyCanvas(true, true));
    await page.waitForTimeout(1500);
  }
  if (screenshot) await page.screenshot({ path: screenshot });
} catch (err) {
  result.error = String(err?.stack || err);
} finally {
  result.pageErrors = logs.filter((l) => l.startsWith("pageerror"));
  result.careLogs = logs.filter((l) => /care/i.test(l));
  await browser.close();
}
console.log(JSON.stringify(result));
