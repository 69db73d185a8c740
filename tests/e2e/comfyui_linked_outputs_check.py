"""Manual check with ComfyUI's own executor (not collected by pytest): Segment and Video Frames
compute only the outputs the prompt links, ComfyUI's output cache never hands on a placeholder
after another output is linked, and an unchanged prompt is still served from the cache.

Usage: COMFY_PYTHON comfyui_linked_outputs_check.py COMFY_DIR PACK_DIR
(a ComfyUI checkout and its Python, see ../shared/notes/comfyui-runtime.md; no model needed:
a randomly initialised PVT-b0 checkpoint is written to a temporary model folder). Runs
execution.PromptExecutor in-process, as main.py's prompt worker does, with a stub server.
Prints one line per check and "LINKED OUTPUTS PASS" or "LINKED OUTPUTS FAIL (n)".
"""
import asyncio
import copy
import importlib.util
import os
import sys
import tempfile

COMFY, PACK = sys.argv[1], os.path.abspath(sys.argv[2])
sys.path.insert(0, COMFY)
os.chdir(COMFY)
import utils.install_util  # noqa: E402,F401  (ComfyUI's import-order requirement)
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import execution  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))  # MaskToImage and the like
spec = importlib.util.spec_from_file_location("birefnet_pack", PACK + "/__init__.py", submodule_search_locations=[PACK])
pack = importlib.util.module_from_spec(spec)
sys.modules["birefnet_pack"] = pack
spec.loader.exec_module(pack)
nodes.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)

work = tempfile.mkdtemp(prefix="birefnet_linked_")
folder_paths.set_output_directory(work)
folder_paths.set_temp_directory(work)
folder_paths.add_model_folder_path("birefnet", work)
save_file(pack.birefnet_core.build_model("pvt_v2_b0").state_dict(), os.path.join(work, "tiny.safetensors"))


class Server:
    """What PromptExecutor needs of main.py's PromptServer."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


executor = execution.PromptExecutor(Server())
failures = []


def check(label, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + label + (f"  [{detail}]" if detail else ""), flush=True)
    if not ok:
        failures.append(label)


def run(prompt, outputs, number):
    executor.execute(prompt, f"check-{number}", {}, outputs)
    messages = dict(executor.status_messages)
    if "execution_error" in messages:
        error = messages["execution_error"]
        raise RuntimeError(f"{error['node_type']}: {error['exception_message']}")
    return set(messages.get("execution_cached", {}).get("nodes", []))


def cached_output(node_id, slot):
    entry = executor.caches.outputs.get(node_id)
    entry = getattr(entry, "outputs", entry)  # newer ComfyUI: a CacheEntry
    return entry[slot][0]


N, H, W = 4, 64, 96
base = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": N, "color": 0x3366CC}},
    "2": {"class_type": "BiRefNetLoader",
          "inputs": {"model": "tiny.safetensors", "device": "cpu", "dtype": "float32", "patch_order": "auto"}},
    "3": {"class_type": "BiRefNetVideoMatte",
          "inputs": {"model": ["2", 0], "frames": ["1", 0], "batch_size": 2, "resolution": "custom", "width": 64,
                     "height": 64, "long_side": 64, "temporal_smoothing": "off", "smoothing_strength": 0.5,
                     "foreground": "none", "background_color": "#00ff00"}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
}


def prompt_a():
    return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in base.items()}


def prompt_b():
    p = prompt_a()
    p["5"] = {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}}
    p["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    return p


a = prompt_a()
cached = run(a, ["4"], 1)
check("A (rgba linked): the video node ran", "3" not in cached)
check("A: IS_CHANGED read the running prompt (not NaN)", a["3"].get("is_changed") == ["outputs:rgba"],
      str(a["3"].get("is_changed")))
check("A: rgba is full size", tuple(cached_output("3", 1).shape) == (N, H, W, 4),
      str(tuple(cached_output("3", 1).shape)))
check("A: mask is a 1-pixel placeholder", tuple(cached_output("3", 0).shape) == (N, 1, 1),
      str(tuple(cached_output("3", 0).shape)))

b = prompt_b()
cached = run(b, ["4", "6"], 2)
check("B (mask linked too): the video node ran again, not served from the cache", "3" not in cached,
      f"cached {sorted(cached)}")
check("B: the loader was served from the cache", "2" in cached)
check("B: the mask is full size", tuple(cached_output("3", 0).shape) == (N, H, W),
      str(tuple(cached_output("3", 0).shape)))
check("B: MaskToImage got the full mask", tuple(cached_output("5", 0).shape) == (N, H, W, 3),
      str(tuple(cached_output("5", 0).shape)))

b2 = prompt_b()
cached = run(b2, ["4", "6"], 3)
check("B again: the video node is served from the cache", "3" in cached, f"cached {sorted(cached)}")

a2 = prompt_a()
cached = run(a2, ["4"], 4)
check("A again (mask unlinked): the video node ran (the key changed back)", "3" not in cached)

half = prompt_b()
half["3"]["inputs"]["output_precision"] = "float16"
half["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "half_rgba"}}
run(half, ["4", "6", "7"], 5)
rgba = cached_output("3", 1)
check("float16: rgba is float16 and SaveImage wrote it", rgba.dtype == torch.float16 and any(
    name.startswith("half_rgba") for name in os.listdir(work)), str(rgba.dtype))

segment = {
    "1": base["1"], "2": base["2"],
    "3": {"class_type": "BiRefNetSegment",
          "inputs": {"model": ["2", 0], "image": ["1", 0], "resolution": "custom", "width": 64, "height": 64,
                     "long_side": 64, "batch_size": 2, "mask_threshold": 0.0, "background": "transparent",
                     "background_color": "#ffffff", "foreground": "blur_fusion"}},
    "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
}
run(copy.deepcopy(segment), ["5"], 6)  # a fresh prompt each time, as /prompt gives (ComfyUI stores
# IS_CHANGED's value in the prompt's node dict and reuses it from there)
check("Segment (mask linked): rgba and composite are placeholders",
      tuple(cached_output("3", 1).shape) == (N, 1, 1, 4) and tuple(cached_output("3", 2).shape) == (N, 1, 1, 3))
segment["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}}
cached = run(copy.deepcopy(segment), ["5", "6"], 7)
check("Segment (composite linked too): ran again, composite full size",
      "3" not in cached and tuple(cached_output("3", 2).shape) == (N, H, W, 3))

print(f"LINKED OUTPUTS {'PASS' if not failures else f'FAIL ({len(failures)})'}")
sys.exit(1 if failures else 0)
