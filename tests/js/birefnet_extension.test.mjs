// node --test tests/js/ : web/birefnet.js against stand-ins of ComfyUI's app/api and of LiteGraph nodes
import assert from "node:assert/strict";
import { register } from "node:module";
import { after, before, describe, it } from "node:test";

register("./comfy_hooks.mjs", import.meta.url);
const { app, api, registeredExtensions } = await import("./comfy_stubs.mjs");
await import("../../web/birefnet.js");

/** The parts of a LiteGraph node the extension touches; addWidget appends like LGraphNode.addWidget. */
class FakeNode {
  constructor(comfyClass, widgets = {}) {
    this.comfyClass = comfyClass;
    this.type = comfyClass;
    this.widgets = Object.entries(widgets).map(([name, value]) => ({ name, value, options: {} }));
    this.redraws = 0;
  }
  addWidget(type, name, value, callback, options) {
    const widget = { type, name, value, callback, options: options ?? {} };
    this.widgets.push(widget);
    return widget;
  }
  setDirtyCanvas() {
    this.redraws += 1;
  }
  /** widgets_values as LGraphNode.serialize writes them (indexed by widget position). */
  widgetsValues() {
    const values = [];
    this.widgets.forEach((w, i) => {
      if (w.serialize !== false) values[i] = w.value;
    });
    return values;
  }
}

const SEGMENT_VALUES = {
  resolution: "native", width: 1024, height: 1024, long_side: 1024, batch_size: 4,
  mask_threshold: 0, background: "transparent", background_color: "#123",
};
const extension = () => registeredExtensions[0];
const segmentNode = () => {
  const node = new FakeNode("BiRefNetSegment", SEGMENT_VALUES);
  extension().nodeCreated(node, app);
  return node;
};
const widget = (node, name) => node.widgets.find((w) => w.name === name);

function fakeDocument() {
  const appended = [];
  const document = {
    appended,
    body: { appendChild: (el) => appended.push(el) },
    createElement(tag) {
      return { tag, type: "", value: "", style: {}, pickerCalls: 0, showPicker() { this.pickerCalls += 1; } };
    },
  };
  return document;
}

describe("registration", () => {
  it("registers one extension named birefnet.pack", () => {
    assert.equal(registeredExtensions.length, 1);
    assert.equal(extension().name, "birefnet.pack");
    assert.equal(typeof extension().nodeCreated, "function");
    extension().setup(app);
  });

  it("does not register again when ComfyUI serves web/ twice", async () => {
    await import("../../web/birefnet.js?second-copy");
    assert.equal(registeredExtensions.length, 1);
    assert.equal(app.deprecatedReads, 0); // app.extensions is never read
  });
});

describe("colour picker on BiRefNet Segment", () => {
  after(() => {
    delete globalThis.document;
  });

  it("appends one non-serialized button and keeps widgets_values", () => {
    const plain = new FakeNode("BiRefNetSegment", SEGMENT_VALUES);
    const node = segmentNode();
    assert.equal(node.widgets.length, plain.widgets.length + 1);
    const button = node.widgets.at(-1);
    assert.equal(button.type, "button");
    assert.equal(button.serialize, false);
    assert.equal(button.options.serialize, false);
    assert.deepEqual(node.widgetsValues(), plain.widgetsValues());
    assert.equal(JSON.stringify(node.widgetsValues()), JSON.stringify(Object.values(SEGMENT_VALUES)));
  });

  it("leaves other nodes and malformed nodes alone", () => {
    const other = new FakeNode("SaveImage", { filename_prefix: "x" });
    extension().nodeCreated(other, app);
    assert.equal(other.widgets.length, 1);
    const noColor = new FakeNode("BiRefNetSegment", { resolution: "native" });
    extension().nodeCreated(noColor, app);
    assert.equal(noColor.widgets.length, 1);
    for (const node of [null, undefined, {}, { comfyClass: "BiRefNetSegment" },
      { comfyClass: "BiRefNetSegment", widgets: [{ name: "background_color", value: "#fff" }] }]) {
      assert.doesNotThrow(() => extension().nodeCreated(node, app));
    }
  });

  it("does nothing without a DOM", () => {
    const node = segmentNode();
    assert.doesNotThrow(() => node.widgets.at(-1).callback());
    assert.equal(widget(node, "background_color").value, "#123");
  });

  it("opens an <input type=color> seeded with the colour and writes the pick back", () => {
    const document = (globalThis.document = fakeDocument());
    const node = segmentNode();
    const color = widget(node, "background_color");
    const changes = [];
    color.callback = (value) => changes.push(value);

    node.widgets.at(-1).callback(node.widgets.at(-1), null, node, [0, 0], { clientX: 10, clientY: 20 });
    assert.equal(document.appended.length, 1);
    const input = document.appended[0];
    assert.equal(input.type, "color");
    assert.equal(input.value, "#112233");
    assert.equal(input.pickerCalls, 1);
    assert.equal(input.style.left, "10px");

    input.value = "#ABCDEF";
    input.oninput();
    assert.equal(color.value, "#abcdef");
    assert.deepEqual(changes, ["#abcdef"]);
    assert.ok(node.redraws > 0);

    input.value = "not a colour";
    input.onchange();
    assert.equal(color.value, "#abcdef");
  });

  it("reuses one input and seeds white for an invalid colour", () => {
    const document = (globalThis.document = fakeDocument());
    const node = segmentNode();
    widget(node, "background_color").value = "banana";
    node.widgets.at(-1).callback(); // the Vue node renderer calls it with no arguments
    node.widgets.at(-1).callback();
    assert.ok(document.appended.length <= 1);
  });
});

describe("download progress on Load BiRefNet Model", () => {
  let lite, other, segment;
  const status = (node) => widget(node, "download status");
  const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, { detail }));

  before(() => {
    lite = new FakeNode("BiRefNetLoader", { model: "BiRefNet_lite (download)", device: "auto", dtype: "auto", patch_order: "auto" });
    other = new FakeNode("BiRefNetLoader", { model: "BiRefNet (download)", device: "auto", dtype: "auto", patch_order: "auto" });
    segment = new FakeNode("BiRefNetSegment", SEGMENT_VALUES);
    app.legacyGraph = { nodes: [lite, segment], subgraphs: new Map([["sub", { nodes: [other] }]]) }; // an older frontend
  });
  after(() => {
    app.legacyGraph = null;
    app.rootGraph = undefined;
  });

  it("shows the status on matching loaders only, without changing widgets_values", () => {
    const before = lite.widgetsValues();
    send("birefnet.download", { model: "BiRefNet_lite (download)", done: 400e6, total: 885e6 });
    assert.equal(status(lite).label, "downloading 45% (400 MB of 885 MB)");
    assert.equal(status(lite).serialize, false);
    assert.equal(status(lite).options.serialize, false);
    assert.deepEqual(lite.widgetsValues(), before);
    assert.equal(status(other), undefined);
    assert.equal(status(segment), undefined);
  });

  it("updates the same widget and finishes at done >= total", () => {
    const count = lite.widgets.length;
    send("birefnet.download", { model: "BiRefNet_lite (download)", done: 885e6, total: 885e6 });
    assert.equal(lite.widgets.length, count);
    assert.equal(status(lite).label, "download complete");
  });

  it("marks an unfinished download stopped when the run fails", () => {
    send("birefnet.download", { model: "BiRefNet (download)", done: 12e6, total: 0 });
    assert.equal(status(other).label, "downloading 12 MB");
    send("execution_error", {});
    assert.equal(status(other).label, "download stopped");
    assert.equal(status(lite).label, "download complete");
    send("birefnet.download", { model: "BiRefNet (download)", done: 12e6, total: 0 });
    send("execution_success", {});
    assert.equal(status(other).label, "download complete");
  });

  it("ignores malformed messages and a missing graph", () => {
    for (const detail of [null, undefined, "x", 5, {}, { model: 3 }, { model: "BiRefNet_lite (download)" }]) {
      assert.doesNotThrow(() => send("birefnet.download", detail));
    }
    assert.equal(status(lite).label, "downloading…");
    app.legacyGraph = null;
    assert.doesNotThrow(() => send("birefnet.download", { model: "BiRefNet_lite (download)", done: 1, total: 2 }));
  });

  it("uses app.rootGraph where the frontend has it, without reading the deprecated app.graph", () => {
    app.legacyGraph = { nodes: [] };
    app.rootGraph = { nodes: [lite] };
    const reads = app.deprecatedReads;
    send("birefnet.download", { model: "BiRefNet_lite (download)", done: 1e6, total: 4e6 });
    assert.equal(status(lite).label, "downloading 25% (1 MB of 4 MB)");
    assert.equal(app.deprecatedReads, reads);
  });
});
