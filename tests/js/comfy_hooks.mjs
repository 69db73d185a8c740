// Module resolve hook (node:module register): ComfyUI's ../../scripts/{app,api}.js, which exist only
// in a browser served by ComfyUI, resolve to comfy_stubs.mjs when web/birefnet.js imports them.
const STUBS = new URL("./comfy_stubs.mjs", import.meta.url).href;

const isExtension = (url) => url !== undefined && new URL(url).pathname.endsWith("/web/birefnet.js");

export async function resolve(specifier, context, nextResolve) {
  if (/^\.\.\/\.\.\/scripts\/(app|api)\.js$/.test(specifier) && isExtension(context.parentURL)) {
    return { url: STUBS, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
