"""From a FOCUS checkpoint's tensors to the inference weights.

The released FOCUS files are detectron2 checkpoints: ``{"model": state_dict, "optimizer": ...,
"scheduler": ..., "iteration": n}``. Their ``"model"`` entry holds the whole training model
(1488 tensors for DINOv2-L), of which 335 never change an inference output (see
``shared/notes/focus-reference.md`` §8):

* ``sem_seg_head.predictor.clip_refiner.*``: the CLIP ViT-B/16 refiner, run only in training;
* ``sem_seg_head.predictor.text_embed.*``, ``...image_embed.*``: CLIP-loss projections;
* ``sem_seg_head.predictor.bbox_embed.*``: a box head, evaluated at inference but discarded;
* ``criterion.*``: the loss's class weights.

:func:`inference_state_dict` drops those and applies the renames the official code applies to
state dicts saved by older Mask2Former code (which it recognises by missing version metadata;
here by the key names themselves, so a renamed key is renamed only where it needs to be):

* ``sem_seg_head.X`` -> ``sem_seg_head.pixel_decoder.X`` for a head key saved without the
  ``pixel_decoder`` level (anything under ``sem_seg_head.`` but ``pixel_decoder.`` and
  ``predictor.``);
* ``static_query`` -> ``query_feat`` in the transformer decoder's keys.

Only key names are looked at: the tensors are neither read nor copied, so a memory-mapped
checkpoint's dropped tensors are never read from disk.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

#: key prefixes of the tensors that exist only for training (dropped)
TRAINING_ONLY_PREFIXES = (
    "sem_seg_head.predictor.clip_refiner.",
    "sem_seg_head.predictor.text_embed.",
    "sem_seg_head.predictor.image_embed.",
    "sem_seg_head.predictor.bbox_embed.",
    "criterion.",
)

_HEAD = "sem_seg_head."
_HEAD_PARTS = ("pixel_decoder", "predictor")
_DECODER = "sem_seg_head.predictor."


def is_training_only(key: str) -> bool:
    """True for a tensor name that only training uses (see :data:`TRAINING_ONLY_PREFIXES`)."""
    return key.startswith(TRAINING_ONLY_PREFIXES)


def current_name(key: str) -> str:
    """``key`` under the current layout: the official legacy renames, where they apply."""
    if key.startswith(_HEAD) and key[len(_HEAD):].split(".", 1)[0] not in _HEAD_PARTS:
        key = _HEAD + "pixel_decoder." + key[len(_HEAD):]
    if key.startswith(_DECODER) and "static_query" in key:
        key = key.replace("static_query", "query_feat")
    return key


def inference_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The inference weights of a FOCUS state dict (a detectron2 checkpoint's ``"model"`` entry,
    or weights already reduced): training-only tensors dropped, legacy names renamed; the order
    of the remaining keys is kept, the tensors are the same objects.

    Raises ValueError when a legacy name and its current name are both present (the checkpoint
    is ambiguous: two tensors for one weight).
    """
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    for key, value in sd.items():
        if is_training_only(key):
            continue
        name = current_name(key)
        if name in out:
            raise ValueError(f"FOCUS checkpoint holds both {origin[name]!r} and {key!r}, which are the same weight "
                             f"({name!r}) under its old and current names; re-save it with one of them")
        out[name] = value
        origin[name] = key
    return out


__all__ = ["TRAINING_ONLY_PREFIXES", "current_name", "inference_state_dict", "is_training_only"]
