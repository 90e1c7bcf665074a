// Builds example_workflows/*.json in the real ComfyUI frontend, so they are exactly what the editor saves.
// usage: node tests/browser/make_example_workflows.mjs http://127.0.0.1:PORT OUT_DIR
// (a server with this pack loaded; tests/integration/comfy_harness.py starts one)
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { openComfy } from "./lib.mjs";

const [url, outDir] = process.argv.slice(2);
if (!url || !outDir) {
  console.error("usage: make_example_workflows.mjs URL OUT_DIR");
  process.exit(2);
}

const CKPT = "v1-5-pruned-emaonly-fp16.safetensors";

// One graph per example: nodes with widget values, then links [from, output, to, input].
// Columns: loaders/concepts | CARE nodes | prompts | samplers | decoders | result.
const SAMPLE = (x) => ({
  pos: { type: "CLIPTextEncode", at: [x, 60], size: [320, 150], w: { text: "a photo of a boat on the water, harbour, sunny day" } },
  neg: { type: "CLIPTextEncode", at: [x, 250], size: [320, 150], w: { text: "blurry, low quality" } },
  latent: { type: "EmptyLatentImage", at: [x, 440], w: { width: 512, height: 512, batch_size: 1 } },
  ks_orig: {
    type: "KSampler", at: [x + 360, 60], title: "KSampler (original model)",
    w: { seed: 42, control_after_generate: "fixed", steps: 20, cfg: 7.0, sampler_name: "euler", scheduler: "normal", denoise: 1.0 },
  },
  ks_erased: {
    type: "KSampler", at: [x + 360, 400], title: "KSampler (erased model)",
    w: { seed: 42, control_after_generate: "fixed", steps: 20, cfg: 7.0, sampler_name: "euler", scheduler: "normal", denoise: 1.0 },
  },
  dec_orig: { type: "VAEDecode", at: [x + 700, 60] },
  dec_erased: { type: "VAEDecode", at: [x + 700, 400] },
  stitch: {
    type: "ImageStitch", at: [x + 920, 200], title: "original | erased",
    w: { direction: "right", match_image_size: true, spacing_width: 16, spacing_color: "white" },
  },
  save: { type: "SaveImage", at: [x + 1200, 200], size: [400, 300], w: { filename_prefix: "care/original_vs_erased" } },
});
const SAMPLE_LINKS = (model) => [
  ["ckpt", 1, "pos", "clip"], ["ckpt", 1, "neg", "clip"],
  ["ckpt", 0, "ks_orig", "model"], [model[0], model[1], "ks_erased", "model"],
  ["pos", 0, "ks_orig", "positive"], ["neg", 0, "ks_orig", "negative"], ["latent", 0, "ks_orig", "latent_image"],
  ["pos", 0, "ks_erased", "positive"], ["neg", 0, "ks_erased", "negative"], ["latent", 0, "ks_erased", "latent_image"],
  ["ks_orig", 0, "dec_orig", "samples"], ["ckpt", 2, "dec_orig", "vae"],
  ["ks_erased", 0, "dec_erased", "samples"], ["ckpt", 2, "dec_erased", "vae"],
  ["dec_orig", 0, "stitch", "image1"], ["dec_erased", 0, "stitch", "image2"], ["stitch", 0, "save", "images"],
];

const EXAMPLES = {
  care_erase_side_by_side: {
    nodes: {
      ckpt: { type: "CheckpointLoaderSimple", at: [20, 60], w: { ckpt_name: CKPT } },
      concepts: {
        type: "CAREConceptSet", at: [20, 200], size: [300, 420],
        w: {
          targets: "boat", retained: "car\ndog\ntree\nhouse", care: "water\nsea\nharbour\nfishing net",
          templates: "{}\na photo of {}", retain_weight: 1.0, care_weight: 2.0, contexts: "a boat on the water => water",
        },
      },
      note: {
        type: "Note", at: [20, 660], size: [300, 230],
        w: { text: "CARE erasure: the targets are erased from the model in closed form, the retained and CARE concepts are kept.\n\nLeft: original model. Right: erased model, same seed and prompt.\n\nThe report lists, per target, the residual to its anchor (0 = erased) and, per retained concept, its drift (0 = untouched)." },
      },
      erase: { type: "CAREErase", at: [360, 60], size: [300, 280] },
      report: { type: "CAREShowReport", at: [360, 400], size: [440, 330] },
      ...SAMPLE(840),
    },
    links: [
      ["ckpt", 0, "erase", "model"], ["ckpt", 1, "erase", "clip"], ["concepts", 0, "erase", "concepts"],
      ["erase", 1, "report", "erasure"], ...SAMPLE_LINKS(["erase", 0]),
    ],
  },
  care_merge_strict_save_lora: {
    nodes: {
      ckpt: { type: "CheckpointLoaderSimple", at: [20, 60], w: { ckpt_name: CKPT } },
      set_a: {
        type: "CAREConceptSet", at: [20, 200], size: [300, 380],
        w: { targets: "boat", retained: "", care: "water\nsea", templates: "a photo of {}", retain_weight: 1.0, care_weight: 2.0, contexts: "" },
      },
      set_b: {
        type: "CAREConceptSet", at: [20, 620], size: [300, 380],
        w: { targets: "sports car -> car", retained: "road\nbicycle", care: "street", templates: "a photo of {}", retain_weight: 1.0, care_weight: 2.0, contexts: "" },
      },
      merge: {
        type: "CAREMergeConcepts", at: [360, 60], size: [300, 330],
        w: { more_targets: "", more_retained: "tree\nhouse", more_care: "harbour", retain_weight: 1.0, care_weight: 2.0 },
      },
      erase: { type: "CAREErase", at: [360, 430], size: [300, 280], w: { strict: true, lambda_: 0.1 } },
      save_lora: { type: "CARESaveErasureLoRA", at: [360, 750], size: [300, 160], w: { filename: "care_boat_sportscar", key_format: "comfy", overwrite: false } },
      note: {
        type: "Note", at: [700, 620], size: [320, 200],
        w: { text: "Two concept sets are merged and extended, erased with strict preservation (the retained concepts' vectors are kept exactly) and saved as a LoRA into the loras folder.\n\nLoad it later with CARE Load Erasure LoRA or the stock LoraLoaderModelOnly." },
      },
      report: { type: "CAREShowReport", at: [700, 860], size: [440, 330] },
      ...SAMPLE(1060),
    },
    links: [
      ["set_a", 0, "merge", "concepts"], ["set_b", 0, "merge", "other"],
      ["ckpt", 0, "erase", "model"], ["ckpt", 1, "erase", "clip"], ["merge", 0, "erase", "concepts"],
      ["erase", 1, "save_lora", "erasure"], ["erase", 1, "report", "erasure"], ...SAMPLE_LINKS(["erase", 0]),
    ],
  },
  care_load_erasure_lora: {
    nodes: {
      ckpt: { type: "CheckpointLoaderSimple", at: [20, 60], w: { ckpt_name: CKPT } },
      load: { type: "CARELoadErasureLoRA", at: [20, 220], size: [320, 200], w: { lora_name: "care_boat_sportscar.safetensors", strength: 1.0 } },
      note: {
        type: "Note", at: [20, 460], size: [320, 180],
        w: { text: "Applies an erasure saved by CARE Save Erasure as LoRA (run the 'care_merge_strict_save_lora' example first) and compares the original and the erased model side by side." },
      },
      ...SAMPLE(380),
    },
    links: [["ckpt", 0, "load", "model"], ...SAMPLE_LINKS(["load", 0])],
  },
};

const { browser, page, logs } = await openComfy(url);
mkdirSync(outDir, { recursive: true });
for (const [name, spec] of Object.entries(EXAMPLES)) {
  const workflow = await page.evaluate(async (spec) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const made = {};
    for (const [key, n] of Object.entries(spec.nodes)) {
      const node = LiteGraph.createNode(n.type);
      if (!node) throw new Error(`cannot create ${n.type}`);
      if (n.title) node.title = n.title;
      node.pos = n.at;
      app.graph.add(node);
      for (const [wname, value] of Object.entries(n.w || {})) {
        const widget = node.widgets?.find((w) => w.name === wname);
        if (!widget) throw new Error(`${n.type} has no widget ${wname}`);
        widget.value = value;
        widget.callback?.(value);
      }
      if (n.size) node.setSize(n.size);
      made[key] = node;
    }
    for (const [from, slot, to, input] of spec.links) {
      const target = made[to];
      const index = target.inputs.findIndex((i) => i.name === input);
      if (index < 0) throw new Error(`${target.type} has no input ${input}`);
      if (!made[from].connect(slot, target, index)) throw new Error(`cannot link ${from}:${slot} -> ${to}.${input}`);
    }
    const { workflow } = await app.graphToPrompt();
    return workflow;
  }, spec);
  writeFileSync(join(outDir, `${name}.json`), JSON.stringify(workflow, null, 2) + "\n");
  console.log(`wrote ${name}.json (${workflow.nodes.length} nodes, ${workflow.links.length} links)`);
}
const errors = logs.filter((l) => l.startsWith("pageerror"));
if (errors.length) console.log(errors.join("\n"));
await browser.close();
