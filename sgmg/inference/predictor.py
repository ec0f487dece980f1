"""Referring video object segmentation for users: frames (or a video file) plus a sentence -> one mask per frame.

Follows the official inference recipe (SgMg ``inference_ytvos.py``/``inference_davis.py``): frames are resized so the
short side is 360 pixels, ImageNet-normalised, the model pads them to a multiple of 16, the best query is chosen per
window from its mean score over the window's frames, and the chosen query's refined mask logits are resized
bilinearly to the original resolution and thresholded at probability 0.5. Long videos are processed in windows of
``window`` frames (36, as the official Ref-DAVIS protocol) so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgmg.data.schema import ClipBatch
from sgmg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sgmg.inference.sources import FrameSource
from sgmg.model.outputs import SgMgOutput


@dataclass
class Prediction:
    """Result of :meth:`RVOSPredictor.predict`.

    Attributes:
        masks: bool ``[T, H, W]`` at the input frames' resolution.
        probs: float32 ``[T, H, W]`` mask probabilities (only when ``keep_probs=True``, else None).
        scores: float32 ``[T]`` score (sigmoid) of the chosen query in each frame.
        best_query: the chosen query index of each window.
    """

    masks: np.ndarray
    scores: np.ndarray
    best_query: list[int]
    probs: np.ndarray | None = None


class RVOSPredictor:
    """Wraps an SgMg model (composition, like SAM's ``SamPredictor``) for inference on raw frames.

    Args:
        model: an ``SgMg`` model; it is put in eval mode.
        tokenizer: the Hugging Face tokenizer of the model's text encoder.
        device: where to run (``"cpu"``, ``"cuda"``, ...).
        short_side: frames are resized so their short side has this many pixels (official: 360).
        max_side: optional cap on the long side after resizing.
        threshold: probability above which a pixel is foreground.
        amp_dtype: optional autocast dtype (e.g. ``torch.bfloat16`` on GPU); None runs in float32.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        device: str | torch.device = "cpu",
        short_side: int = 360,
        max_side: int | None = None,
        threshold: float = 0.5,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        if short_side < 32:
            raise ValueError(f"short_side must be >= 32 pixels, got {short_side}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability in (0, 1), got {threshold}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.short_side = short_side
        self.max_side = max_side
        self.threshold = threshold
        self.amp_dtype = amp_dtype

    def tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``text`` -> ``input_ids [1, S]``, ``attention_mask [1, S]`` on the predictor's device."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the referring expression must be a non-empty string, got {text!r}")
        enc = self.tokenizer([text.strip()], padding="longest", return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        scale = self.short_side / min(h, w)
        if self.max_side is not None and max(h, w) * scale > self.max_side:
            scale = self.max_side / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float ``[1, T, 3, h, w]`` resized and ImageNet-normalised."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        video = video.permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, H, W]
        size = self._input_size(*frames.shape[1:3])
        if size != tuple(frames.shape[1:3]):
            video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return ((video - mean) / std).unsqueeze(0)  # [1, T, 3, h, w]

    @torch.inference_mode()
    def predict_batch(self, batch: ClipBatch) -> SgMgOutput:
        """The tensor API: run the model on a collated batch (eval mode)."""
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model(batch.video, batch.input_ids, batch.attention_mask, pad_mask=batch.pad_mask)

    @torch.inference_mode()
    def predict_window(
        self, frames: np.ndarray, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One window: uint8 ``[t, H, W, 3]`` -> probabilities ``[t, H, W]``, scores ``[t]``, best query."""
        video = self.preprocess(frames)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(video, input_ids, attention_mask)
        best = int(out.best_query[0])
        scores = out.pred_logits[0, :, best].float().sigmoid()  # [t]
        logits = out.pred_masks[0].float().unsqueeze(1)  # [t, 1, h, w]
        logits = F.interpolate(logits, size=frames.shape[1:3], mode="bilinear", align_corners=False)
        return logits[:, 0].sigmoid(), scores, best

    def iter_predict(
        self, video: str | Path | np.ndarray, text: str, *, window: int = 36
    ) -> Iterator[tuple[int, np.ndarray, float]]:
        """Stream ``(frame_index, mask bool [H, W], score)`` over a video file, frame folder or uint8 array."""
        input_ids, attention_mask = self.tokenize(text)
        for start, frames in _windows(video, window):
            probs, scores, _ = self.predict_window(frames, input_ids, attention_mask)
            masks = (probs > self.threshold).cpu().numpy()
            for i, (mask, score) in enumerate(zip(masks, scores.tolist(), strict=True)):
                yield start + i, mask, score

    def predict(
        self, video: str | Path | np.ndarray, text: str, *, window: int = 36, keep_probs: bool = False
    ) -> Prediction:
        """Segment the object ``text`` refers to in every frame of ``video`` (uint8 ``[T,H,W,3]``, file or folder)."""
        input_ids, attention_mask = self.tokenize(text)
        masks, scores, best, probs = [], [], [], []
        for _, frames in _windows(video, window):
            p, s, b = self.predict_window(frames, input_ids, attention_mask)
            masks.append((p > self.threshold).cpu().numpy())
            scores.append(s.cpu().numpy())
            best.append(b)
            if keep_probs:
                probs.append(p.cpu().numpy())
        return Prediction(
            masks=np.concatenate(masks),
            scores=np.concatenate(scores).astype(np.float32),
            best_query=best,
            probs=np.concatenate(probs).astype(np.float32) if keep_probs else None,
        )


def _windows(video: str | Path | np.ndarray, window: int) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(video, np.ndarray):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        for start in range(0, len(video), window):
            yield start, video[start : start + window]
    else:
        yield from FrameSource.open(video).windows(window)
