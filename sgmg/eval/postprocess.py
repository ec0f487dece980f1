"""Post-processing of SgMg's eval-mode outputs into masks at the frames' size (one object, like DETR's
``PostProcessSegm``).

Every user of predicted masks goes through :class:`MaskPostProcessor`: the predictor (``sgmg predict``, the MLflow
pyfunc), Serve and validation. The steps, in order:

1. select: the scores of the query the model chose (``best_query``, the official rule: highest mean score over the
   frames). The model itself picks that query in eval mode, because only the chosen query goes through the
   multi-granularity refiner and its ``pred_masks [B, T, H, W]`` is part of the model's output contract;
2. crop: the bottom/right padding of a collated batch (each video's valid input size);
3. resize: the mask logits bilinearly to the frames' original size (official inference: ``align_corners=False``);
4. threshold: ``sigmoid(logits) > threshold`` (probability 0.5 by default);
5. RLE: COCO run-length encoding of the masks (:func:`sgmg.data.rle.encode_json`, the one codec).

Axis legend as in :mod:`sgmg.model`: N rows (expressions or videos), t frames, h w model input size, H W original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgmg.data import rle
from sgmg.model.outputs import SgMgOutput


@dataclass
class SelectedQuery:
    """The chosen query of each row of an eval-mode :class:`SgMgOutput` (:meth:`MaskPostProcessor.select`).

    Attributes:
        mask_logits: float32 ``[N, t, h, w]`` refined mask logits of each row's chosen query, at the model's input size.
        scores: float32 ``[N, t]`` score (sigmoid) of that query in each frame.
        best_query: long ``[N]`` the chosen query of each row.
    """

    mask_logits: torch.Tensor
    scores: torch.Tensor
    best_query: torch.Tensor


class MaskPostProcessor:
    """Eval-mode model outputs -> bool masks (and COCO RLEs) at the original frame size.

    Args:
        threshold: probability above which a pixel is foreground.
        chunk: frames resized at a time in :meth:`masks`, so memory stays bounded at high resolution (each frame is
            resized on its own: the values do not depend on it).

    Raises:
        ValueError: ``threshold`` not in (0, 1) or ``chunk < 1``.
    """

    def __init__(self, *, threshold: float = 0.5, chunk: int = 8) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability in (0, 1), got {threshold}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
        self.threshold = threshold
        self.chunk = chunk

    @staticmethod
    def select(out: SgMgOutput) -> SelectedQuery:
        """Step 1: the chosen query's mask logits and per-frame scores of eval-mode ``out`` (``pred_logits [N, t, Q]``,
        ``best_query [N]``, ``pred_masks [N, t, h, w]``), in float32."""
        best = out.best_query  # [N]
        logits = out.pred_logits.float()  # [N, t, Q]
        scores = logits.gather(2, best[:, None, None].expand(-1, logits.shape[1], 1))[..., 0].sigmoid()  # [N, t]
        return SelectedQuery(out.pred_masks.float(), scores, best)

    @staticmethod
    def probabilities(
        mask_logits: torch.Tensor, size: tuple[int, int], valid_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Steps 2-3 and the sigmoid: mask logits ``[t, h, w]`` -> float32 probabilities ``[t, H, W]``.

        Args:
            mask_logits: ``[t, h, w]`` one row's mask logits.
            size: ``(H, W)`` of the result.
            valid_size: ``(h', w')``: the logits are cropped to ``[:, :h', :w']`` first (a padded batch); None: no crop.
        """
        if valid_size is not None:
            mask_logits = mask_logits[:, : valid_size[0], : valid_size[1]]  # [t, h', w']
        logits = mask_logits.float()
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
        return logits.sigmoid()  # [t, H, W]

    def masks(
        self,
        mask_logits: torch.Tensor,
        size: tuple[int, int],
        valid_size: tuple[int, int] | None = None,
        threshold: float | None = None,
    ) -> torch.Tensor:
        """Steps 2-4: mask logits ``[t, h, w]`` -> bool masks ``[t, H, W]``, :attr:`chunk` frames at a time.

        Args:
            mask_logits: ``[t, h, w]`` one row's mask logits.
            size: ``(H, W)`` of the result.
            valid_size: as in :meth:`probabilities`.
            threshold: this call's probability threshold (a request's); None: :attr:`threshold`.
        """
        threshold = self.threshold if threshold is None else threshold
        parts = [
            self.probabilities(mask_logits[i : i + self.chunk], size, valid_size) > threshold
            for i in range(0, len(mask_logits), self.chunk)
        ]
        return torch.cat(parts)

    def __call__(
        self,
        out: SgMgOutput,
        sizes: list[tuple[int, int]],
        valid_sizes: list[tuple[int, int]] | None = None,
    ) -> list[torch.Tensor]:
        """Steps 1-4 for every row of eval-mode ``out``: bool masks ``[t, H_i, W_i]`` of row i at ``sizes[i]``
        (cropped to ``valid_sizes[i]`` first when given)."""
        logits = self.select(out).mask_logits  # [N, t, h, w]
        crops = valid_sizes if valid_sizes is not None else [None] * len(logits)
        return [self.masks(row, size, crop) for row, size, crop in zip(logits, sizes, crops, strict=True)]

    @staticmethod
    def rle(masks: np.ndarray) -> list[dict[str, Any]]:
        """Step 5: bool ``[t, H, W]`` -> one COCO RLE ``{"size": [H, W], "counts": str}`` per frame (JSON values)."""
        return rle.encode_json(masks)
