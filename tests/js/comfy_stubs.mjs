// Stand-ins for ComfyUI's "../../scripts/app.js" and "../../scripts/api.js" (see comfy_hooks.mjs):
// just the parts of the public extension API that web/birefnet.js uses. Like the current frontend,
// app.extensions and app.graph are deprecated: the stand-in counts every read of them.
export const registeredExtensions = [];

export const app = {
  deprecatedReads: 0,
  rootGraph: undefined,
  legacyGraph: null,
  canvas: null,
  get extensions() {
    this.deprecatedReads += 1;
    return registeredExtensions;
  },
  get graph() {
    this.deprecatedReads += 1;
    return this.legacyGraph;
  },
  registerExtension(extension) {
    if (registeredExtensions.some((e) => e.name === extension.name)) throw new Error(`${extension.name} registered twice`);
    registeredExtensions.push(extension);
  },
};

// ComfyApi is an EventTarget; server messages arrive as CustomEvent(type, {detail: data})
export const api = new EventTarget();
