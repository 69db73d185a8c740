"""From FOCUS's query outputs to the mask of interest (official ``FOCUS.forward`` at eval with
``TEST.INSTANCE_ON``; ``shared/notes/focus-reference.md`` section 6), vectorised over the batch.

Mask logits are resized to the padded size, cropped to the resized image, resized to the output
size (bilinear, align_corners False; logits throughout), then:

* soft = sum over queries of softmax(class)[foreground] * sigmoid(mask) (official ``sem_seg[0]``);
* binary (official ``instances.pred_masks``): with P = softmax(class)[:, :2], s_q = sigmoid(mask
  of query q) and mean_q = sum(s_q^2) / (sum(s_q) + 1e-6), score[q, c] = P[q, c] * mean_q. If
  exactly two (q, c) score > 0.5 and their classes differ, the mask is s_fg > s_bg (the two
  queries' maps compared); otherwise the best (q, c): s_q > 0.5 for foreground, s_q < 0.5 for
  background.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from .common import resize

THRESHOLD = 0.5  # hard-coded in the official code
FOREGROUND, BACKGROUND = 0, 1


def mask_of_interest(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded_size: Sequence[int],
                     resized_size: Sequence[int], output_size: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """class_logits [B, Q, K+1], mask_logits [B, Q, h, w] (h, w = padded size / 4 for FOCUS);
    ``padded_size`` the network input (Hp, Wp), ``resized_size`` the image inside it (top-left),
    ``output_size`` the wanted size (H, W) -> (soft [B, H, W] float32 in [0, 1],
    binary [B, H, W] bool). Computed in float32 whatever the inputs' dtype."""
    logits = resize(mask_logits.float(), padded_size)[..., :resized_size[0], :resized_size[1]]
    probs = resize(logits, output_size).sigmoid()  # [B, Q, H, W]
    class_probs = class_logits.float().softmax(-1)[..., :-1]  # [B, Q, K]
    soft = torch.einsum("bq,bqhw->bhw", class_probs[..., FOREGROUND], probs)

    flat = probs.flatten(2)  # [B, Q, HW]
    mean = (flat * flat).sum(-1) / (flat.sum(-1) + 1e-6)  # [B, Q]
    scores = class_probs[..., :2] * mean[..., None]  # [B, Q, 2]
    confident = scores > THRESHOLD
    batch = torch.arange(scores.shape[0], device=scores.device)
    # two confident (query, class) pairs of different classes: fg query's map vs bg query's map
    two = (confident.sum((1, 2)) == 2) & confident[..., FOREGROUND].any(1) & confident[..., BACKGROUND].any(1)
    fg_query = confident[..., FOREGROUND].int().argmax(1)
    bg_query = confident[..., BACKGROUND].int().argmax(1)
    versus = probs[batch, fg_query] > probs[batch, bg_query]
    # otherwise the best pair decides alone
    best = scores.flatten(1).argmax(1)
    best_probs = probs[batch, best // 2]
    alone = torch.where((best % 2 == FOREGROUND)[:, None, None], best_probs > THRESHOLD, best_probs < THRESHOLD)
    binary = torch.where(two[:, None, None], versus, alone)
    return soft, binary
