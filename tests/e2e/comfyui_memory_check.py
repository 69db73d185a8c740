"""Manual check inside a ComfyUI checkout (not collected by pytest): the loader's model is under
ComfyUI's memory management. Usage: COMFY_PYTHON comfyui_memory_check.py COMFY_DIR PACK_DIR MODELS_DIR
(MODELS_DIR holding tiny_pvt_b0.safetensors)."""
import sys, importlib.util
COMFY, PACK, MODELS = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, COMFY)
import utils.install_util  # noqa: F401  (ComfyUI's import-order requirement)
from comfy.cli_args import args; args.cpu = True
import comfy.model_management as mm
spec = importlib.util.spec_from_file_location("birefnet_pack", PACK + "/__init__.py", submodule_search_locations=[PACK])
pack = importlib.util.module_from_spec(spec); sys.modules["birefnet_pack"] = pack; spec.loader.exec_module(pack)
import folder_paths
folder_paths.add_model_folder_path("birefnet", MODELS)
print("IN_COMFYUI", pack.nodes.comfy.IN_COMFYUI, "folders", folder_paths.get_folder_paths("birefnet"))
print("choices", pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"].INPUT_TYPES()["required"]["model"][0][:3])
(m,) = pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"]().load("tiny_pvt_b0.safetensors", "auto", "auto", "auto")
m.ready()
print("loaded models after ready():", [type(x.model.model).__name__ for x in mm.current_loaded_models])
mm.unload_all_models()
print("loaded models after unload_all_models():", len(mm.current_loaded_models))
import torch
out = pack.NODE_CLASS_MAPPINGS["BiRefNetSegment"]().segment(m, torch.rand(1, 64, 64, 3), "custom", 64, 64, 64, 1, 0.0, "transparent", "#fff")
print("segment after unload re-loads:", [type(x.model.model).__name__ for x in mm.current_loaded_models], out[0].shape)
