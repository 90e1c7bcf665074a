// CARE Concept Erasure: a small frontend extension.
// - gives every CARE node one colour, so the erasure part of a graph stands out;
// - shows the text a CARE node returns (erasure report, saved file, LoRA info) on the node itself.
// It imports only ComfyUI's app object and registers under the "care.erasure" name.
import { app } from "../../scripts/app.js";

const CARE_COLOR = "#2b4a3f";
const CARE_BGCOLOR = "#1f3a31";
const TEXT_WIDGET = "care_text";

function isCareNode(name) {
  return typeof name === "string" && name.startsWith("CARE");
}

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.className = "care-report";
    area.style.cssText = "width:100%;height:100%;font-family:monospace;font-size:11px;white-space:pre;overflow:auto;";
    widget = node.addDOMWidget(TEXT_WIDGET, "care_text", area, {
      getValue: () => area.value,
      setValue: (v) => { area.value = v; },
      serialize: false,
    });
    widget.care_area = area;
  }
  widget.care_area.value = text;
  node.setSize?.([Math.max(node.size[0], 420), Math.max(node.size[1], 220)]);
  app.graph?.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "care.erasure",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isCareNode(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = CARE_COLOR;
      this.bgcolor = CARE_BGCOLOR;
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text && text.length) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
      return r;
    };
  },
  async setup() {
    // a marker the browser test (and curious users) can read
    window.CARE_ERASURE = Object.assign(window.CARE_ERASURE || {}, { extensionLoaded: true, isCareNode });
  },
});
