// Pure helpers for the BiRefNet frontend extension (birefnet.js): no DOM, no ComfyUI imports,
// so `node --test` covers them (tests/js/). Nodes, widgets and graphs are duck-typed objects.

export const DEFAULT_COLOR = "#ffffff";
export const DOWNLOAD_COMPLETE = "download complete";
export const DOWNLOAD_STOPPED = "download stopped";

const hex2 = (v) => Math.round(v).toString(16).padStart(2, "0");

/** "#rrggbb", "#rgb" (with or without "#") or "r,g,b" (0-255) -> "#rrggbb" in lower case; null if invalid.
 * Accepts what the Python side (birefnet_core.matting.parse_color) accepts. */
export function normalizeHexColor(text) {
  if (typeof text !== "string") return null;
  const s = text.trim().toLowerCase();
  let m = /^#?([0-9a-f]{6})$/.exec(s);
  if (m) return "#" + m[1];
  m = /^#?([0-9a-f]{3})$/.exec(s);
  if (m) return "#" + [...m[1]].map((c) => c + c).join("");
  const parts = s.split(/[,\s]+/).filter(Boolean);
  if (parts.length !== 3 || !parts.every((p) => /^\d+(\.\d+)?$/.test(p))) return null;
  const values = parts.map(Number);
  if (!values.every((v) => v >= 0 && v <= 255)) return null;
  return "#" + values.map(hex2).join("");
}

/** The colour an <input type="color"> starts with: the widget's colour, or white if it is invalid. */
export function pickerColor(text) {
  return normalizeHexColor(text) ?? DEFAULT_COLOR;
}

/** 400000000 -> "400 MB" (decimal units; one decimal below 10, "1.5 GB"); "?" for anything but a number >= 0. */
export function formatBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  const digits = i > 0 && Number(n.toFixed(1)) < 10 ? 1 : 0;
  // 999.6 KB would round to "1000 KB": say "1 MB" instead
  if (Number(n.toFixed(digits)) >= 1000 && i < units.length - 1) return formatBytes(1000 ** (i + 1));
  return `${n.toFixed(digits).replace(/\.0$/, "")} ${units[i]}`;
}

const isCount = (v) => typeof v === "number" && Number.isFinite(v) && v >= 0;

/** True once a download with a known size has all its bytes. */
export function isDownloadDone(done, total) {
  return isCount(done) && isCount(total) && total > 0 && done >= total;
}

/** Short status text for a "birefnet.download" message {done, total} (bytes; total 0 = unknown). */
export function downloadStatus(done, total) {
  if (isDownloadDone(done, total)) return DOWNLOAD_COMPLETE;
  if (!isCount(done)) return "downloading…";
  if (!isCount(total) || total === 0) return `downloading ${formatBytes(done)}`;
  const percent = Math.floor((100 * done) / total); // never shows 100% before the end
  return `downloading ${percent}% (${formatBytes(done)} of ${formatBytes(total)})`;
}

/** "BiRefNet_lite (download)", "BiRefNet_lite.safetensors" and "BiRefNet_lite" name the same model. */
export function modelKey(value) {
  if (typeof value !== "string") return null;
  const name = value.trim().replace(/\s*\(download\)$/, "").replace(/\.safetensors$/i, "");
  return name || null;
}

/** Whether a loader whose `model` widget holds widgetValue is the one a download message names. */
export function matchesLoaderValue(widgetValue, messageModel) {
  const a = modelKey(widgetValue);
  return a !== null && a === modelKey(messageModel);
}

/** The widget called name on a node, or null. */
export function findWidget(node, name) {
  const widgets = node?.widgets;
  if (!Array.isArray(widgets)) return null;
  return widgets.find((w) => w?.name === name) ?? null;
}

/** Every node of a LiteGraph graph, including the nodes inside its subgraphs. */
export function graphNodes(graph) {
  if (!graph) return [];
  const own = (g) => {
    const nodes = g?.nodes ?? g?._nodes;
    return Array.isArray(nodes) ? nodes : [];
  };
  const result = [...own(graph)];
  const subgraphs = graph.subgraphs;
  if (subgraphs && typeof subgraphs.values === "function") {
    for (const sub of subgraphs.values()) result.push(...own(sub));
  }
  return result.filter(Boolean);
}
