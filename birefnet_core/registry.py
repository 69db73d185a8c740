"""The released checkpoints (BiRefNet and FOCUS): where they live, what they were trained for and
how to run them.

All data is in :data:`VARIANTS`, one frozen :class:`Variant` per released weights file (one per
Hugging Face repository, but for ``Comfy-Org/BiRefNet``, which holds two). Users type the registry
name, mostly the repository's (``"BiRefNet"``, ``"BiRefNet_lite"``, ``"RMBG-2.0"``, ``"ToonOut"``,
``"focus_large_sod"``); :func:`get_variant` looks names up case-insensitively and also accepts the
full repo id (``"ZhengPeng7/BiRefNet_lite"``, ``"geshang/focus_large_sod"``; a repository holding
several entries names its first).

FOCUS (``family="focus"``): one network per size (DINOv2-L ``focus_dinov2_l``, DINOv2-G
``focus_dinov2_g``), one checkpoint per task. The released files are detectron2 checkpoints
(``.pth``, 5 GB for L, 15 GB for G, optimiser state included); :mod:`birefnet_core.hub` keeps only
their inference weights as ``<name>.safetensors``.

Patch orders (see :class:`~birefnet_core.config.PatchOrder`): the official code changed the channel
order of the decoder's image patches on 2024-11-05 (commits 5198d3f, 42928fd, 5d9f562 of
github.com/ZhengPeng7/BiRefNet, "Upgrade patches merging and split methods to einops version");
checkpoints trained before then use ``LEGACY``, later ones ``CURRENT``. The order is a property of
the training run, so each entry's comment gives the evidence it rests on: upload and training
dates, the code the checkpoint was trained with, what its own inference code does. No public
source maps every checkpoint to its order, and none of them was checked against real weights
here; ``patch_order`` stays overridable everywhere (``load_model(patch_order=)``, the CLI's
``--patch-order``, the loader node's ``patch_order`` widget).

Architecture: every entry holds the architecture of the official code since 2024-05-02 (commit
b0c7031: image patches also at the deepest decoder stage, gradient attention at stage 4, three
deformable ASPP branches); the maintainer states that all released weights share it
(ZhengPeng7/BiRefNet#171). The weights of the code before that date (``BiRefNet-ep480.pth``,
``BiRefNet-DIS_ep580.pth``, which other packs run with a separate "old" copy of the code) are
refused by :func:`birefnet_core.checkpoint.identify` with a one-line reason. Note that
``BiRefNet-legacy`` is *not* such a file: it is the general-use checkpoint of May 2024.

``copies``: where ComfyUI's own nodes and other ComfyUI packs keep the same checkpoint, relative to
ComfyUI's ``models`` folder, so that a file already there is used in place instead of being
downloaded again (see :func:`birefnet_core.hub.find_copy`). A copy is used only when it is complete
and its tensors have the entry's architecture.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .config import PatchOrder

MIT = "MIT"
CC_BY_NC = "CC BY-NC 4.0"
APACHE = "Apache-2.0"

#: FOCUS's test-time resize: shortest side to ``Variant.width`` (512), longest side at most this
FOCUS_MAX_SIDE = 2048


@dataclass(frozen=True)
class Variant:
    """One released checkpoint.

    ``family``: ``"birefnet"`` or ``"focus"`` (see :mod:`birefnet_core.models.families`);
    ``backbone``: the architecture the family builds (a BiRefNet backbone such as ``"swin_v1_l"``,
    a FOCUS configuration such as ``"focus_dinov2_l"``); ``task``: what the mask marks, for
    families with one checkpoint per task (FOCUS: sod, cod, sd, dbd, fd), else "".

    ``width`` x ``height``: for BiRefNet the native (training) resolution, the size images are
    resized to; ``size_range`` is set for the dynamic-resolution checkpoint: it was trained on any
    size in that range (both sides multiples of 32), so callers may keep the image's aspect ratio
    instead of resizing to the native size. For FOCUS, ``width == height == 512`` means the
    official test-time resize: the *shortest* side to 512, the longest at most
    :data:`FOCUS_MAX_SIDE` (2048), aspect ratio kept (see :attr:`max_side`, :attr:`test_size`).

    ``patch_order``: BiRefNet's image-patch channel order; None for FOCUS (no image patches).
    ``filename``: the file in the repository, possibly in a sub-folder of it
    (``background_removal/birefnet.safetensors``); a ``.pth`` (FOCUS's detectron2 checkpoints,
    ToonOut's training checkpoint) is reduced to its inference weights on download.
    ``gated`` repositories need an accepted licence on the Hub and a token (``HF_TOKEN``).
    ``copies``: the same checkpoint as ComfyUI's own nodes and other packs store it, as
    '/'-separated paths relative to ComfyUI's ``models`` folder (see the module docstring).
    """

    name: str
    repo_id: str
    backbone: str
    width: int
    height: int
    patch_order: Optional[PatchOrder]
    licence: str
    description: str
    filename: str = "model.safetensors"
    size_range: Optional[Tuple[int, int]] = None
    gated: bool = False
    family: str = "birefnet"
    task: str = ""
    copies: Tuple[str, ...] = ()

    @property
    def resolution(self) -> Tuple[int, int]:
        """Native resolution as (width, height) (FOCUS: (512, 512), the shortest side's size)."""
        return self.width, self.height

    @property
    def max_side(self) -> Optional[int]:
        """FOCUS: the longest side's limit of the test-time resize (2048); None for BiRefNet, whose
        images are resized to ``width`` x ``height``."""
        return FOCUS_MAX_SIDE if self.family == "focus" else None

    @property
    def test_size(self) -> str:
        """The test-time resize in words."""
        if self.family == "focus":
            return f"shortest side {self.width}, longest at most {self.max_side}, aspect ratio kept"
        if self.size_range is not None:
            return (f"any size from {self.size_range[0]} to {self.size_range[1]} (multiples of 32), aspect ratio "
                    f"kept; {self.width}x{self.height} native")
        return f"{self.width}x{self.height} (W x H)"

    @property
    def dynamic(self) -> bool:
        """True when the checkpoint was trained on many sizes (use keep-aspect resizing)."""
        return self.size_range is not None

    @property
    def url(self) -> str:
        """Direct download URL of the weights file."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    @property
    def page(self) -> str:
        """The repository's page on the Hub (where a gated licence is accepted)."""
        return f"https://huggingface.co/{self.repo_id}"


def _zp(name: str, backbone: str, size: Tuple[int, int], order: PatchOrder, description: str,
        size_range: Optional[Tuple[int, int]] = None, copies: Tuple[str, ...] = ()) -> Variant:
    """A ``ZhengPeng7/<name>`` checkpoint (MIT licence). Its ``copies`` get the snapshot folder
    ``BiRefNet/<name>/model.safetensors`` that moon7star9/ComfyUI_BiRefNet_Universal (a local folder
    of that name, nodes.py ``MODEL_VERSIONS``) and chflame163/ComfyUI_LayerStyle_Advance's
    ``LoadBiRefNetModelV2`` (``snapshot_download`` into ``models/BiRefNet/<version>``) load."""
    return Variant(name, f"ZhengPeng7/{name}", backbone, size[0], size[1], order, MIT, description,
                   size_range=size_range, copies=copies + (f"BiRefNet/{name}/model.safetensors",))


# Where other tools keep checkpoints, relative to ComfyUI's models folder (read in their code):
# - ComfyUI itself (comfy_extras/nodes_bg_removal.py, folder key "background_removal"): the files of
#   huggingface.co/Comfy-Org/BiRefNet, whose README says to place them as
#   models/background_removal/{birefnet,lucida}.safetensors;
# - 1038lab/ComfyUI-RMBG (py/AILab_BiRefNet.py MODEL_CONFIG, HEAD 58f1947 of 2026-08-22): the
#   files of its mirror huggingface.co/1038lab/BiRefNet, hf_hub_download(local_dir=models/RMBG/BiRefNet);
#   RMBG-2.0 from huggingface.co/1038lab/RMBG-2.0 in models/RMBG/RMBG-2.0 (py/AILab_RMBG.py);
# - lldacing/ComfyUI_BiRefNet_ll (birefnetNode.py usage_to_weights_file, HEAD 5443a2a of 2025-06-02):
#   ZhengPeng7/<repo>/model.safetensors downloaded as models/BiRefNet/<its name>.safetensors;
# - chflame163/ComfyUI_LayerStyle_Advance (py/birefnet_ultra_v2.py): models/BiRefNet/pth/
#   BiRefNet-general-epoch_244.pth (the official GitHub release file) and snapshots in
#   models/BiRefNet/BiRefNet-General and models/BiRefNet/RMBG-2.0;
# - a Lucida node pack (models/lucida/model.safetensors, from egeorcun/lucida resolve/main/model.safetensors).
_RMBG = "RMBG/BiRefNet/"  # 1038lab
_LL = "BiRefNet/"  # lldacing


#: FOCUS tasks: registry suffix -> what the mask (the official class 0, "foreground") marks
FOCUS_TASKS = {
    "sod": "Salient object detection: the mask marks the salient (most eye-catching) objects.",
    "cod": "Camouflaged object detection: the mask marks objects hidden in their surroundings.",
    "sd": "Shadow detection: the mask marks the shadows.",
    "dbd": ("Defocus blur detection: the mask marks the region the DBD ground truth marks white (the in-focus vs "
            "blurred split as in the DBD datasets the model was trained on)."),
    "fd": "Forgery detection: the mask marks the forged (manipulated) regions of an image.",
}
_FOCUS_SIZES = {"large": ("focus_dinov2_l", "DINOv2-L, 374 M parameters, 1.5 GB once slimmed"),
                "giant": ("focus_dinov2_g", "DINOv2-G, 1.2 B parameters, 5 GB once slimmed")}


def _focus(size: str, task: str) -> Variant:
    """A ``geshang/focus_<size>_<task>`` checkpoint (Apache-2.0), a detectron2 ``.pth``."""
    name = f"focus_{size}_{task}"
    architecture, about = _FOCUS_SIZES[size]
    return Variant(name, f"geshang/{name}", architecture, 512, 512, None, APACHE,
                   f"FOCUS ({about}). {FOCUS_TASKS[task]}", filename=f"{name}.pth", family="focus", task=task)


_L, _C = PatchOrder.LEGACY, PatchOrder.CURRENT
_1K, _2K = (1024, 1024), (2048, 2048)
_DYNAMIC = (256, 2304)

# Patch-order evidence, entry by entry ("legacy": trained before 2024-11-05, "current": after).
# Dates of Hugging Face uploads are from the repositories' commit pages; "fp16 file" marks a
# model.safetensors stored in float16, which the official code writes since 2025-02-11 (commit
# 52cc3ff "upgrade the weights saving and loading in FP16 mode"); the 2024 uploads are float32.
VARIANTS: Tuple[Variant, ...] = (
    # legacy: the general checkpoint of 2024-07-28 (GitHub commit 2ccc960 "Update the weights of
    # BiRefNet for general use with training on portrait seg data"; release file
    # BiRefNet-general-epoch_244.pth, from which ToonOut was fine-tuned in 2025). The Hub file was
    # re-saved in float16 later: model.safetensors at revision e2bf8e44 has sha256 9ab37426...a154,
    # 444,473,596 bytes, byte-identical to Comfy-Org/BiRefNet background_removal/birefnet.safetensors;
    # ComfyUI's own implementation (comfy/background_removal/birefnet.py, get_patches_batch) runs it
    # in the legacy order.
    _zp("BiRefNet", "swin_v1_l", _1K, _L, "General-purpose dichotomous segmentation / background removal.",
        copies=("background_removal/birefnet.safetensors", _RMBG + "BiRefNet-general.safetensors",
                _LL + "General.safetensors", "BiRefNet/pth/BiRefNet-general-epoch_244.pth",
                "BiRefNet/BiRefNet-General/model.safetensors")),
    # legacy: uploaded 2024-08-02 (GitHub commit 7237101 "Update the BiRefNet for general use with
    # swin_v1_tiny as bb"); nuzky's ONNX exporter and onnx-community's ONNX reproduce the old order.
    _zp("BiRefNet_lite", "swin_v1_t", _1K, _L, "General use, Swin-T backbone: about 5x smaller and 4x faster.",
        copies=(_RMBG + "BiRefNet_lite.safetensors", _LL + "General-Lite.safetensors")),
    # legacy: General-2K training added on 2024-09-07 (commit 30008a9), released September 2024 (float32 file).
    _zp("BiRefNet_lite-2K", "swin_v1_t", (2560, 1440), _L, "General use, Swin-T, trained at 2560x1440 (W x H).",
        copies=(_RMBG + "BiRefNet_lite-2K.safetensors", _LL + "General-Lite-2K.safetensors")),
    # current: released 2025-02-01 (commit 8d5560d "Add BiRefNet_HR"), trained with the einops code; fp16 file.
    _zp("BiRefNet_HR", "swin_v1_l", _2K, _C, "General use at high resolution (trained at 2048x2048).",
        copies=(_RMBG + "BiRefNet-HR.safetensors", _LL + "General-HR.safetensors")),
    # current: released 2025-02-12 (README news; commit 52cc3ff); fp16 file.
    _zp("BiRefNet_HR-matting", "swin_v1_l", _2K, _C, "Soft alpha mattes at high resolution (2048x2048).",
        copies=(_RMBG + "BiRefNet-HR-matting.safetensors", _LL + "Matting-HR.safetensors",
                "BiRefNet/BiRefNet_HR-Matting/model.safetensors")),
    # legacy: model.safetensors uploaded 2024-10-06 ("Initial uploading of BiRefNet for matting"), float32.
    _zp("BiRefNet-matting", "swin_v1_l", _1K, _L, "General matting: soft alpha (hair, fur, glass).",
        copies=(_RMBG + "BiRefNet-matting.safetensors", _LL + "Matting.safetensors")),
    # current (circumstantial): absent from the 2024 model zoo, first offered by other packs in 2025
    # (lldacing 'Matting-Lite' by 2025-06-02, 1038lab v2.4.x), and stored in float16 (85 MiB, set-soft's
    # known_models.json) like every 2025 release; no upload date or statement found.
    _zp("BiRefNet_lite-matting", "swin_v1_t", _1K, _C, "Matting with the Swin-T backbone (soft alpha, fast).",
        copies=(_RMBG + "BiRefNet_lite-matting.safetensors", _LL + "Matting-Lite.safetensors")),
    # legacy: P3M-10k portrait training added 2024-05-02 (commit b0c7031); the repository's first
    # weights are BiRefNet-portrait-TR_P3M_10k-epoch_120.pth, published May 2024; float32 file.
    _zp("BiRefNet-portrait", "swin_v1_l", _1K, _L, "Portrait matting (people).",
        copies=(_RMBG + "BiRefNet-portrait.safetensors", _LL + "Portrait.safetensors")),
    # current: dynamic-size training added 2025-03-10 (commit a201306), released 2025-03-31; fp16 file.
    _zp("BiRefNet_dynamic", "swin_v1_l", _1K, _C,
        "General use, trained on any resolution from 256 to 2304 (multiples of 32): keep the aspect ratio.",
        size_range=_DYNAMIC,
        copies=(_RMBG + "BiRefNet_dynamic.safetensors", _LL + "General-dynamic.safetensors")),
    # current: huggingface.co/ZhengPeng7/BiRefNet_dynamic-matting (model.safetensors, 444 MB fp16:
    # Swin-L; MIT like every ZhengPeng7 repository), added to the official demo in 2025 ("Add a new
    # model for matting: BiRefNet_dynamic-matting"), i.e. trained with the dynamic-size code of
    # 2025-03 and later. Its model card compares it "for dynamic input shapes" with the fixed-size
    # models; the 256-2304 range is BiRefNet_dynamic's (the card's own range was not found).
    _zp("BiRefNet_dynamic-matting", "swin_v1_l", _1K, _C,
        "Matting (soft alpha), trained on many resolutions like BiRefNet_dynamic: keep the aspect ratio.",
        size_range=_DYNAMIC),
    # current (circumstantial): never mentioned in the official README, stored in float16 (424 MiB in
    # set-soft's known_models.json) like the 2025 releases; no upload date or statement found.
    _zp("BiRefNet_512x512", "swin_v1_l", (512, 512), _C, "General use at low resolution (512x512), fast.",
        copies=(_RMBG + "BiRefNet_512x512.safetensors", _LL + "General-reso_512.safetensors")),
    # legacy (DIS5K, DIS5K-TR_TEs, HRSOD, COD): benchmark checkpoints published in 2024 (float32
    # files, 844 MiB in set-soft's known_models.json), after the architecture fix of 2024-05-02
    # (commit b0c7031 "corresponding ckpts need to be updated"; they load into that architecture like
    # every Hub checkpoint, ZhengPeng7/BiRefNet#171) and before 2024-11-05. No per-file upload date found.
    _zp("BiRefNet-DIS5K", "swin_v1_l", _1K, _L, "Trained on DIS5K-TR only (dichotomous image segmentation benchmark).",
        copies=(_LL + "DIS.safetensors",)),
    _zp("BiRefNet-DIS5K-TR_TEs", "swin_v1_l", _1K, _L, "Trained on DIS5K-TR plus the DIS5K test sets.",
        copies=(_LL + "DIS-TR_TEs.safetensors",)),
    _zp("BiRefNet-HRSOD", "swin_v1_l", _1K, _L, "High-resolution salient object detection (HRSOD benchmark).",
        copies=(_LL + "HRSOD.safetensors",)),
    _zp("BiRefNet-COD", "swin_v1_l", _1K, _L, "Camouflaged object detection.", copies=(_LL + "COD.safetensors",)),
    # legacy: BiRefNet-massive-epoch_240.pth uploaded 2024-05-13 (after the architecture fix of
    # 2024-05-02, so the current architecture), converted to safetensors 2024-08-24; the official
    # demo calls it "the legacy general use weights without training on portrait seg data".
    _zp("BiRefNet-legacy", "swin_v1_l", _1K, _L,
        "The general-use checkpoint of May 2024 (before portrait data was added); current architecture.",
        copies=(_LL + "General-legacy.safetensors",)),
    # legacy: released at the end of October 2024, before the change; the copy of its remote code
    # seen on GitHub has the old get_patches_batch (shared/notes/birefnet-reference.md).
    Variant("RMBG-2.0", "briaai/RMBG-2.0", "swin_v1_l", 1024, 1024, _L, CC_BY_NC,
            "BRIA background removal (BiRefNet trained on licensed data); non-commercial licence. Gated: accept "
            "the licence on https://huggingface.co/briaai/RMBG-2.0 and set HF_TOKEN (or pass token=).",
            gated=True, copies=("RMBG/RMBG-2.0/model.safetensors", "BiRefNet/RMBG-2.0/model.safetensors")),
    # ToonOut (arXiv:2509.06839; code github.com/MatteoKartoon/BiRefNet, "LICENSE: MIT (code +
    # weights)"): current. The fork's birefnet/models/birefnet.py uses the einops image2patches
    # ('b c (hg h) (wg w) -> b (c hg wg) h w'); bash_scripts/train_finetuning.sh (2025-05) resumes
    # BiRefNet-general-epoch_244.pth at 1024x1024 (config.py size (1024, 1024), bb swin_v1_l), so the
    # legacy-trained weights were fine-tuned in the current order. The Hub file is the training
    # checkpoint birefnet_finetuned_toonout.pth (DDP + torch.compile prefixes, loadable with
    # weights_only=True: sprited-ai/birefnet-toonout predict.py), reduced to safetensors on download.
    # The fork's code dates from 2025-04/05 (git log), the release from 2025-09.
    Variant("ToonOut", "joelseytre/toonout", "swin_v1_l", 1024, 1024, _C, MIT,
            "Anime / cartoon characters: BiRefNet fine-tuned on 1,228 annotated anime images (ToonOut).",
            filename="birefnet_finetuned_toonout.pth", copies=(_RMBG + "BiRefNet_toonout.safetensors",)),
    # Lucida (github.com/egeorcun/lucida README, MIT code and weights): a fine-tune of BiRefNet_HR
    # trained at 1024x1024 with the official train.py of the GitHub main branch in 2026
    # (training/train_colab_lib.py patches its config.py), i.e. the einops order; its bundled
    # birefnet.py is byte-identical to BiRefNet_HR's (measured by a third-party export tool, whose
    # notes were read here). Weights: model.safetensors at the root
    # (884,878,856 bytes, float32; the README links resolve/main/model.safetensors). Not
    # lucida-m35-comfy.safetensors, whose first convolutions have the ImageNet normalisation folded in.
    # ComfyUI core runs Lucida in the legacy order (it has only that one).
    Variant("Lucida", "egeorcun/lucida", "swin_v1_l", 1024, 1024, _C, MIT,
            "Fine-tune of BiRefNet_HR for transparency, camouflage, text/logos, glow and illustrations (Lucida).",
            copies=(_RMBG + "Lucida.safetensors", "lucida/model.safetensors")),
    # The ComfyUI repackage (huggingface.co/Comfy-Org/BiRefNet, MIT, base_model ZhengPeng7/BiRefNet and
    # egeorcun/lucida), what ComfyUI's "BiRefNet: Remove Background" template downloads into
    # models/background_removal. birefnet.safetensors is the general BiRefNet (byte-identical, see
    # above); lucida.safetensors (884,878,856 bytes) is a Lucida release that can lag behind
    # egeorcun/lucida's current file (Lucida's README: "the bundled copy can lag behind releases";
    # Comfy-Org/BiRefNet discussion #2 "The Lucida model has been updated to a new version"). Patch
    # orders as for the checkpoints they repackage.
    Variant("Comfy-Org_birefnet", "Comfy-Org/BiRefNet", "swin_v1_l", 1024, 1024, _L, MIT,
            "ComfyUI's repackaged general BiRefNet (the same weights as BiRefNet, float16).",
            filename="background_removal/birefnet.safetensors", copies=("background_removal/birefnet.safetensors",)),
    Variant("Comfy-Org_lucida", "Comfy-Org/BiRefNet", "swin_v1_l", 1024, 1024, _C, MIT,
            "ComfyUI's repackaged Lucida (possibly an older release than the Lucida entry's).",
            filename="background_removal/lucida.safetensors", copies=("background_removal/lucida.safetensors",)),
    *(_focus(size, task) for size in _FOCUS_SIZES for task in FOCUS_TASKS),
)

_BY_KEY: Dict[str, Variant] = {}
for _variant in reversed(VARIANTS):  # a repository holding several entries names the first
    _BY_KEY[_variant.repo_id.lower()] = _variant
_BY_KEY.update({v.name.lower(): v for v in VARIANTS})
del _variant


def variant_names() -> Tuple[str, ...]:
    """The registry keys, in table order."""
    return tuple(v.name for v in VARIANTS)


def find_variant(name: str) -> Optional[Variant]:
    """The variant called ``name`` (its registry name or repo id, any case), else None."""
    return _BY_KEY.get(str(name).strip().lower())


def variant_of_copy(relative: str) -> Optional[Variant]:
    """The first entry whose ``copies`` hold ``relative`` (a path under ComfyUI's models folder,
    '/' or '\\' separated, any case), else None."""
    wanted = str(relative).replace("\\", "/").strip("/").lower()
    return next((v for v in VARIANTS if any(c.lower() == wanted for c in v.copies)), None)


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (its registry name or repo id, any case).

    Raises ValueError naming close matches when there is none.
    """
    found = find_variant(name)
    if found is not None:
        return found
    lowered = {v.name.lower(): v.name for v in VARIANTS}
    query = str(name).strip().lower()
    matches = difflib.get_close_matches(query, list(lowered), n=4, cutoff=0.5)
    matches += [key for key in lowered if query and query in key and key not in matches]
    close = [lowered[m] for m in matches[:5]]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown BiRefNet model {name!r}; {hint}known models: {', '.join(variant_names())}")
