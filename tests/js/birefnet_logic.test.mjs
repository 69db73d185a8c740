// node --test tests/js/ : the pure helpers of web/birefnet_logic.js
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  DEFAULT_COLOR,
  DOWNLOAD_COMPLETE,
  downloadStatus,
  findWidget,
  formatBytes,
  graphNodes,
  isDownloadDone,
  matchesLoaderValue,
  modelKey,
  normalizeHexColor,
  pickerColor,
} from "../../web/birefnet_logic.js";

describe("normalizeHexColor", () => {
  it("accepts #rrggbb, #rgb, without # and any case", () => {
    for (const text of ["#fff", "fff", "#FFFFFF", "ffffff", " #FfF ", "255,255,255"]) {
      assert.equal(normalizeHexColor(text), "#ffffff", text);
    }
    assert.equal(normalizeHexColor("#1A2b3C"), "#1a2b3c");
    assert.equal(normalizeHexColor("#123"), "#112233");
  });

  it("accepts r,g,b in 0..255 with commas or spaces, rounding decimals", () => {
    assert.equal(normalizeHexColor("0,128,255"), "#0080ff");
    assert.equal(normalizeHexColor("0 128 255"), "#0080ff");
    assert.equal(normalizeHexColor(" 1, 2 ,3 "), "#010203");
    assert.equal(normalizeHexColor("127.6,0,0"), "#800000");
  });

  it("returns null for anything else", () => {
    const bad = ["", "#", "#ff", "#ffff", "#fffffff", "#ggg", "red", "256,0,0", "-1,0,0", "1,2",
      "1,2,3,4", "1,,2", "a,b,c", "1e2,0,0", null, undefined, 0xffffff, ["#fff"], {}];
    for (const value of bad) assert.equal(normalizeHexColor(value), null, String(value));
  });

  it("seeds the picker with white when the text is invalid", () => {
    assert.equal(pickerColor("#0F0"), "#00ff00");
    assert.equal(pickerColor("nope"), DEFAULT_COLOR);
    assert.equal(pickerColor(undefined), "#ffffff");
  });
});

describe("formatBytes", () => {
  it("uses decimal units with one decimal below 10", () => {
    assert.equal(formatBytes(0), "0 B");
    assert.equal(formatBytes(999), "999 B");
    assert.equal(formatBytes(1000), "1 KB");
    assert.equal(formatBytes(1500), "1.5 KB");
    assert.equal(formatBytes(12e6), "12 MB");
    assert.equal(formatBytes(400e6), "400 MB");
    assert.equal(formatBytes(884_878_856), "885 MB");
    assert.equal(formatBytes(1.2e9), "1.2 GB");
    assert.equal(formatBytes(5e15), "5000 TB");
  });

  it("never shows 10.0 or 1000 of a unit", () => {
    assert.equal(formatBytes(9.99e6), "10 MB");
    assert.equal(formatBytes(999_600), "1 MB");
  });

  it("returns ? for bad input", () => {
    for (const value of [-1, NaN, Infinity, "12", null, undefined, {}]) assert.equal(formatBytes(value), "?");
  });
});

describe("downloadStatus / isDownloadDone", () => {
  it("shows percent and sizes while downloading", () => {
    assert.equal(downloadStatus(400e6, 885e6), "downloading 45% (400 MB of 885 MB)");
    assert.equal(downloadStatus(0, 885e6), "downloading 0% (0 B of 885 MB)");
    assert.equal(downloadStatus(884_999_999, 885e6), "downloading 99% (885 MB of 885 MB)");
  });

  it("is complete once done reaches total", () => {
    assert.equal(downloadStatus(885e6, 885e6), DOWNLOAD_COMPLETE);
    assert.equal(downloadStatus(900e6, 885e6), "download complete");
    assert.equal(isDownloadDone(885e6, 885e6), true);
    assert.equal(isDownloadDone(1, 885e6), false);
  });

  it("shows bytes only when the size is unknown", () => {
    assert.equal(downloadStatus(12e6, 0), "downloading 12 MB");
    assert.equal(downloadStatus(12e6, undefined), "downloading 12 MB");
    assert.equal(downloadStatus(12e6, -5), "downloading 12 MB");
    assert.equal(isDownloadDone(12e6, 0), false);
    assert.equal(isDownloadDone(0, 0), false);
  });

  it("copes with bad values", () => {
    assert.equal(downloadStatus(undefined, 100), "downloading…");
    assert.equal(downloadStatus("5", "10"), "downloading…");
    assert.equal(downloadStatus(NaN, NaN), "downloading…");
    assert.equal(isDownloadDone("10", "10"), false);
    assert.equal(isDownloadDone(NaN, 1), false);
  });
});

describe("matchesLoaderValue / modelKey", () => {
  it("matches the same widget value", () => {
    assert.equal(matchesLoaderValue("BiRefNet_lite (download)", "BiRefNet_lite (download)"), true);
    assert.equal(matchesLoaderValue("my.safetensors", "my.safetensors"), true);
  });

  it("treats the download mark and the .safetensors extension as the same model", () => {
    assert.equal(modelKey("BiRefNet_lite (download)"), "BiRefNet_lite");
    assert.equal(modelKey("BiRefNet_lite.SafeTensors"), "BiRefNet_lite");
    assert.equal(matchesLoaderValue("BiRefNet_lite.safetensors", "BiRefNet_lite (download)"), true);
  });

  it("does not match other models", () => {
    assert.equal(matchesLoaderValue("BiRefNet (download)", "BiRefNet_lite (download)"), false);
    assert.equal(matchesLoaderValue("BiRefNet_lite-2K (download)", "BiRefNet_lite (download)"), false);
    assert.equal(matchesLoaderValue("background_removal/BiRefNet_lite.safetensors", "BiRefNet_lite (download)"), false);
  });

  it("never matches missing or non-string values", () => {
    for (const [a, b] of [[undefined, undefined], [null, null], ["", ""], [" (download)", " (download)"],
      ["x", undefined], [undefined, "x"], [1, 1], [{}, {}]]) {
      assert.equal(matchesLoaderValue(a, b), false, `${a} / ${b}`);
    }
  });
});

describe("findWidget", () => {
  it("finds a widget by name", () => {
    const w = { name: "background_color", value: "#fff" };
    assert.equal(findWidget({ widgets: [{ name: "a" }, w] }, "background_color"), w);
  });

  it("returns null when absent or malformed", () => {
    assert.equal(findWidget({ widgets: [{ name: "a" }] }, "b"), null);
    assert.equal(findWidget({ widgets: [null, undefined] }, "b"), null);
    assert.equal(findWidget({}, "b"), null);
    assert.equal(findWidget({ widgets: "x" }, "b"), null);
    assert.equal(findWidget(null, "b"), null);
    assert.equal(findWidget(undefined, "b"), null);
  });
});

describe("graphNodes", () => {
  it("lists a graph's nodes and those of its subgraphs", () => {
    const a = { id: 1 }, b = { id: 2 }, c = { id: 3 };
    const graph = { nodes: [a, null, b], subgraphs: new Map([["s", { nodes: [c] }], ["t", {}]]) };
    assert.deepEqual(graphNodes(graph), [a, b, c]);
  });

  it("falls back to _nodes (older LiteGraph)", () => {
    const a = { id: 1 };
    assert.deepEqual(graphNodes({ _nodes: [a] }), [a]);
  });

  it("returns [] for no graph", () => {
    for (const graph of [null, undefined, {}, { nodes: "x" }, { subgraphs: 5 }]) {
      assert.deepEqual(graphNodes(graph), []);
    }
  });
});
