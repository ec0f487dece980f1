"""Referring video object segmentation for users: frames (or a video file) plus a sentence -> one mask per frame.

Follows the official inference recipe (SgMg ``inference_ytvos.py``/``inference_davis.py``): frames are resized so the
short side is 360 pixels, ImageNet-normalised, the model pads them to a multiple of 16, the best query is chosen per
window from its mean score over the window's frames, and the chosen query's refined mask logits are resized
bilinearly to the original resolution and thresholded at probability 0.5 (:class:`sgmg.eval.postprocess.
MaskPostProcessor`). Long videos are processed in windows of ``window`` frames (36, as the official Ref-DAVIS
protocol) so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgmg.data.schema import ClipBatch
from sgmg.data.transforms import EVAL_SHORT_SIDE, IMAGENET_MEAN, IMAGENET_STD
from sgmg.eval.postprocess import MaskPostProcessor, SelectedQuery
from sgmg.inference.sources import FrameSource
from sgmg.model.outputs import SgMgOutput
from sgmg.model.precision import set_inference_precision


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

    The normalisation (mean/std) and the default short side are those of the model's variant
    (:func:`sgmg.zoo.pretrained_config`).

    Args:
        model: an ``SgMg`` model; it is put in eval mode.
        tokenizer: the Hugging Face tokenizer of the model's text encoder; None: the one its config records
            (:func:`sgmg.data.tokenizer.load_tokenizer_for`).
        device: where to run (``"cpu"``, ``"cuda"``, ...).
        short_side: frames are resized so their short side has this many pixels; None: the variant's (official: 360).
        max_side: optional cap on the long side after resizing.
        threshold: probability above which a pixel is foreground.
        precision: ``"fp32"`` (the official numerics) or ``"bf16"`` (faster: the Swin blocks and the encoder FFNs in
            bfloat16, the rest float32; :mod:`sgmg.model.precision`; casts ``model`` in place, one-way).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        device: str | torch.device = "cpu",
        short_side: int | None = None,
        max_side: int | None = None,
        threshold: float = 0.5,
        precision: str = "fp32",
    ) -> None:
        from sgmg.data.tokenizer import load_tokenizer_for
        from sgmg.zoo import pretrained_config

        self.pretrained = pretrained_config(model.config)
        short_side = self.pretrained.short_side if short_side is None else short_side
        if short_side < 32:
            raise ValueError(f"short_side must be >= 32 pixels, got {short_side}")
        self.postprocessor = MaskPostProcessor(threshold=threshold)
        self.device = torch.device(device)
        self.model = set_inference_precision(model.to(self.device).eval(), precision)
        self.precision = precision
        self.tokenizer = load_tokenizer_for(model) if tokenizer is None else tokenizer
        self.short_side = short_side
        self.max_side = max_side

    def tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``text`` -> ``input_ids [1, S]``, ``attention_mask [1, S]`` on the predictor's device."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the referring expression must be a non-empty string, got {text!r}")
        enc = self.tokenizer([text.strip()], padding="longest", return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float ``[1, T, 3, h, w]`` resized and ImageNet-normalised."""
        mean, std = self.pretrained.mean, self.pretrained.std
        return preprocess_frames(frames, self.short_side, self.max_side, self.device, mean=mean, std=std).unsqueeze(0)

    @torch.inference_mode()
    def predict_batch(self, batch: ClipBatch) -> SgMgOutput:
        """The tensor API: run the model on a collated batch (eval mode)."""
        batch = batch.to(self.device)
        return self.model(batch.video, batch.input_ids, batch.attention_mask, pad_mask=batch.pad_mask)

    def tokenize_many(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``N`` expressions -> ``input_ids [N, S]``, ``attention_mask [N, S]`` (padded to the longest)."""
        if not texts:
            raise ValueError("give at least one referring expression")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"a referring expression must be a non-empty string, got {text!r}")
        enc = self.tokenizer([t.strip() for t in texts], padding="longest", return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.inference_mode()
    def forward_windows(
        self,
        video: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_index: torch.Tensor | None = None,
    ) -> SelectedQuery:
        """The model's part: the visual encoder once per window, the rest once per expression.

        Args:
            video: ``[B, t, 3, h, w]`` preprocessed windows (:meth:`preprocess`) of one shape.
            input_ids: ``[N, S]``, attention_mask ``[N, S]``: the expressions.
            video_index: ``[N]`` long, the window each expression refers to (None: N = B, row i -> window i).

        Returns:
            :class:`~sgmg.eval.postprocess.SelectedQuery` with N rows.
        """
        video = video.to(self.device)
        if video_index is not None:
            video_index = video_index.to(self.device)
        visual = self.model.encode_video(video)
        out = self.model.decode(visual, input_ids.to(self.device), attention_mask.to(self.device), video_index)
        return self.postprocessor.select(out)

    @property
    def threshold(self) -> float:
        """The mask probability threshold (:attr:`postprocessor`'s)."""
        return self.postprocessor.threshold

    @torch.inference_mode()
    def segment_window(
        self, frames: np.ndarray, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One window, N expressions: uint8 ``[t, H, W, 3]`` -> bool masks ``[N, t, H, W]``, scores ``[N, t]``,
        best queries ``[N]``. The visual encoder runs once for all N."""
        video = self.preprocess(frames)
        index = torch.zeros(input_ids.shape[0], dtype=torch.long)
        out = self.forward_windows(video, input_ids, attention_mask, index)
        masks = torch.stack([self.postprocessor.masks(row, frames.shape[1:3]) for row in out.mask_logits])
        return masks, out.scores, out.best_query

    @torch.inference_mode()
    def predict_window(
        self, frames: np.ndarray, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One window, one expression: uint8 ``[t, H, W, 3]`` -> probabilities ``[t, H, W]``, scores ``[t]``, best
        query."""
        out = self.forward_windows(self.preprocess(frames), input_ids, attention_mask)
        probs = self.postprocessor.probabilities(out.mask_logits[0], frames.shape[1:3])
        return probs, out.scores[0], int(out.best_query[0])

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


def input_size(h: int, w: int, short_side: int, max_side: int | None = None) -> tuple[int, int]:
    """The model input size of ``h x w`` frames: short side ``short_side``, long side at most ``max_side``."""
    scale = short_side / min(h, w)
    if max_side is not None and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def preprocess_frames(
    frames: np.ndarray,
    short_side: int = EVAL_SHORT_SIDE,
    max_side: int | None = None,
    device: str | torch.device = "cpu",
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, h, w]``: resized (bilinear, antialiased) so the short side is
    ``short_side`` and normalised with ``mean``/``std`` (ImageNet's: the official inference recipe)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    video = video.permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, H, W]
    size = input_size(*frames.shape[1:3], short_side, max_side)
    if size != tuple(frames.shape[1:3]):
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=video.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=video.device).view(1, 3, 1, 1)
    return (video - mean_t) / std_t  # [T, 3, h, w]


def _windows(video: str | Path | np.ndarray, window: int) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(video, np.ndarray):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        for start in range(0, len(video), window):
            yield start, video[start : start + window]
    else:
        yield from FrameSource.open(video).windows(window)
