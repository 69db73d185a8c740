// ComfyUI frontend extension of the BiRefNet pack (served at /extensions/<pack>/birefnet.js).
// - BiRefNet Segment: a "pick background colour" button that opens the browser's colour picker and
//   writes "#rrggbb" into the background_color STRING widget.
// - Load BiRefNet Model: shows the progress of a model download ("birefnet.download" server events).
// Widgets added here are appended after the node's own widgets and never serialized, so saved
// workflows keep the same widgets_values. All logic lives in birefnet_logic.js (unit-tested).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  DOWNLOAD_COMPLETE,
  DOWNLOAD_STOPPED,
  downloadStatus,
  findWidget,
  graphNodes,
  isDownloadDone,
  matchesLoaderValue,
  normalizeHexColor,
  pickerColor,
} from "./birefnet_logic.js";

const SEGMENT = "BiRefNetSegment";
const LOADER = "BiRefNetLoader";
const COLOR_WIDGET = "background_color";
const PICKER_WIDGET = "colour picker";
const STATUS_WIDGET = "download status";

function warn(what, error) {
  console.warn(`[birefnet] ${what}:`, error);
}

function redraw(node) {
  try {
    node?.setDirtyCanvas?.(true, true);
  } catch (error) {
    warn("redraw failed", error);
  }
}

/** Canvas widgets draw .label; the Vue node renderer's button shows options.label. */
function setLabel(widget, text) {
  widget.label = text;
  if (widget.options && typeof widget.options === "object") widget.options.label = text;
}

/** A widget that is neither saved in the workflow (serialize) nor sent with the prompt (options.serialize). */
function addLocalWidget(node, type, name, label, callback) {
  if (typeof node?.addWidget !== "function") return null;
  const widget = node.addWidget(type, name, null, callback, { serialize: false });
  if (!widget) return null;
  widget.serialize = false;
  setLabel(widget, label);
  return widget;
}

// ---- colour picker (BiRefNet Segment) ----

let colorInput = null; // one shared, invisible <input type="color">

function getColorInput() {
  if (typeof document === "undefined" || !document?.body || typeof document.createElement !== "function") {
    return null;
  }
  if (!colorInput) {
    colorInput = document.createElement("input");
    colorInput.type = "color";
    Object.assign(colorInput.style, {
      position: "fixed", left: "0px", top: "0px", width: "1px", height: "1px",
      opacity: "0", border: "0", padding: "0", pointerEvents: "none",
    });
    document.body.appendChild(colorInput);
  }
  return colorInput;
}

function setColor(node, widget, value) {
  const color = normalizeHexColor(value);
  if (!color || widget.value === color) return;
  widget.value = color;
  try {
    widget.callback?.(color, app?.canvas, node);
  } catch (error) {
    warn("background_color callback failed", error);
  }
  redraw(node);
}

function openColorPicker(node, event) {
  const widget = findWidget(node, COLOR_WIDGET);
  const input = widget && getColorInput();
  if (!input) return;
  input.value = pickerColor(widget.value);
  // the browser opens the picker next to the input: put it where the user clicked
  if (Number.isFinite(event?.clientX) && Number.isFinite(event?.clientY)) {
    input.style.left = `${event.clientX}px`;
    input.style.top = `${event.clientY}px`;
  }
  input.oninput = () => setColor(node, widget, input.value);
  input.onchange = input.oninput;
  try {
    if (typeof input.showPicker === "function") input.showPicker();
    else input.click();
  } catch {
    input.click?.(); // showPicker refuses without a user gesture in some browsers
  }
}

function addColorPicker(node) {
  if (!findWidget(node, COLOR_WIDGET) || findWidget(node, PICKER_WIDGET)) return;
  addLocalWidget(node, "button", PICKER_WIDGET, "pick background colour", (_widget, _canvas, _node, _pos, event) => {
    try {
      openColorPicker(node, event);
    } catch (error) {
      warn("colour picker failed", error);
    }
  });
}

// ---- download progress (Load BiRefNet Model) ----

function setStatus(node, text, active) {
  let widget = findWidget(node, STATUS_WIDGET);
  if (!widget) {
    widget = addLocalWidget(node, "button", STATUS_WIDGET, text, () => {});
    if (!widget) return;
  }
  setLabel(widget, text);
  widget.value = text;
  widget.birefnetActive = active;
  redraw(node);
}

/** The top-level graph: app.rootGraph on current frontends (where app.graph is deprecated), app.graph on older ones. */
function rootGraph() {
  return app?.rootGraph ?? app?.graph;
}

function loaderNodes() {
  return graphNodes(rootGraph()).filter((node) => node.comfyClass === LOADER || node.type === LOADER);
}

function onDownload(event) {
  const detail = event?.detail;
  if (!detail || typeof detail !== "object") return;
  const text = downloadStatus(detail.done, detail.total);
  const active = !isDownloadDone(detail.done, detail.total);
  for (const node of loaderNodes()) {
    if (matchesLoaderValue(findWidget(node, "model")?.value, detail.model)) setStatus(node, text, active);
  }
}

/** When the run ends, a download still marked as running has either finished or failed. */
function onRunEnd(text) {
  for (const node of loaderNodes()) {
    if (findWidget(node, STATUS_WIDGET)?.birefnetActive) setStatus(node, text, false);
  }
}

function listen(type, handler) {
  api?.addEventListener?.(type, (event) => {
    try {
      handler(event);
    } catch (error) {
      warn(`${type} handler failed`, error);
    }
  });
}

const EXTENSION = "birefnet.pack";

// ComfyUI serves web/ twice when the pack folder's name differs from pyproject's project name (once for
// WEB_DIRECTORY, once for [tool.comfy] web): the second copy of this module must not register again. The
// mark lives on globalThis, not in app.extensions, which newer frontends deprecate (for an extension store
// that extensions cannot import).
const REGISTERED = Symbol.for("birefnet.pack.registered");
const extension = {
  name: EXTENSION,

  setup() {
    listen("birefnet.download", onDownload);
    listen("execution_success", () => onRunEnd(DOWNLOAD_COMPLETE));
    listen("execution_error", () => onRunEnd(DOWNLOAD_STOPPED));
    listen("execution_interrupted", () => onRunEnd(DOWNLOAD_STOPPED));
  },

  nodeCreated(node) {
    try {
      if (node?.comfyClass === SEGMENT) addColorPicker(node);
    } catch (error) {
      warn("could not set up BiRefNet Segment", error);
    }
  },
};

if (!globalThis[REGISTERED]) {
  app.registerExtension(extension);
  globalThis[REGISTERED] = true;
}
