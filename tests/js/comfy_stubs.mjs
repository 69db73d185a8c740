// Stand-ins for ComfyUI's "../../scripts/app.js" and "../../scripts/api.js" (see comfy_hooks.mjs):
// just the parts of the public extension API that web/birefnet.js uses.
export const app = {
  extensions: [],
  graph: null,
  canvas: null,
  registerExtension(extension) {
    if (this.extensions.some((e) => e.name === extension.name)) throw new Error(`${extension.name} registered twice`);
    this.extensions.push(extension);
  },
};

// ComfyApi is an EventTarget; server messages arrive as CustomEvent(type, {detail: data})
export const api = new EventTarget();
