"""What a model replica does, without Ray: load a checkpoint from wherever the URI points, and run batches of windows
(several requests, several expressions each) through the model, one forward pass per group of equal shape.

The model half of :class:`sgmg.inference.predictor.RVOSPredictor` is used as is (the visual encoder once per window,
the rest once per expression), and its post-processor (:class:`sgmg.eval.postprocess.MaskPostProcessor`: the same
bilinear resize and threshold), so an answer equals ``sgmg predict`` on the
same checkpoint, file, sentences and threshold when its windows are not batched with another request's. Batched with
others, mask logits can differ in the last bits (float sums in another order), which flips a
pixel only when its probability is that close to the threshold.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class WindowJob:
    """One window of one request, preprocessed by the ingress.

    Attributes:
        video: float32 ``[t, 3, h, w]`` resized and ImageNet-normalised frames.
        texts: the request's expressions (E of them).
        size: ``(H, W)`` of the original frames (masks come back at this size).
        threshold: mask probability threshold.
        model_uri: the model (``info["uri"]``) that answered the request's first window, so that every window of a
            request is answered by the same model across a reload; None: the current one.
    """

    video: np.ndarray
    texts: list[str]
    size: tuple[int, int]
    threshold: float
    model_uri: str | None = None


@dataclass
class WindowResult:
    """Answer to a :class:`WindowJob`.

    Attributes:
        masks: per expression, ``np.packbits`` of the bool ``[t, H, W]`` masks (flattened).
        scores: float32 ``[E, t]``.
        best_query: the chosen query per expression.
        model: ``{"name", "version", "uri"}`` of the model that answered.
        batch_size: windows in the forward pass that answered (for the service's metrics).
    """

    masks: list[np.ndarray]
    scores: np.ndarray
    best_query: list[int]
    model: dict[str, Any]
    batch_size: int = 1

    def unpack(self, expression: int, shape: tuple[int, int, int]) -> np.ndarray:
        """Bool ``[t, H, W]`` masks of ``expression``."""
        n = int(np.prod(shape))
        return np.unpackbits(self.masks[expression], count=n).astype(bool).reshape(shape)


@dataclass
class LoadedModel:
    """A model ready to answer: its predictor and what ``GET /v1/model`` shows."""

    predictor: Any  # sgmg.inference.predictor.RVOSPredictor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> dict[str, Any]:
        """``{"name", "version", "uri"}``."""
        return {k: self.info.get(k) for k in ("name", "version", "uri")}


def is_registry_uri(model_uri: str) -> bool:
    """True for ``models:/...``."""
    return model_uri.startswith("models:/")


def resolve_version(model_uri: str, tracking_uri: str | None) -> str | None:
    """The registry version ``model_uri`` names now (None for a checkpoint location)."""
    if not is_registry_uri(model_uri):
        return None
    from pipelines import model_uris

    return model_uris.resolve_model_version(_tracking(tracking_uri), model_uri).version


def _tracking(tracking_uri: str | None) -> str:
    from pipelines import tracking

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(os.getcwd())


def load_model(
    model_uri: str, tracking_uri: str | None = None, *, device: str | None = None, precision: str = "fp32"
) -> LoadedModel:
    """Load ``model_uri`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint folder or file, ``file://``
    or ``s3://``) into a predictor on ``device`` (default: CUDA when present, else CPU).

    Raises:
        ValueError, LookupError, FileNotFoundError: the URI is malformed or names nothing (the message says which).
    """
    import torch

    import sgmg
    from sgmg.zoo import variant_of

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="sgmg-serve-") as tmp:
        if is_registry_uri(model_uri):
            from pipelines import model_uris

            uri = _tracking(tracking_uri)
            ref = model_uris.resolve_model_version(uri, model_uri)
            model = model_uris.load_registered_model(uri, ref.uri)
            name, version, fixed = ref.name, ref.version, ref.uri
        else:
            model = sgmg.load_checkpoint(_local_checkpoint(model_uri, Path(tmp)))
            name, version, fixed = Path(model_uri.rstrip("/")).name, None, model_uri
    predictor = sgmg.RVOSPredictor(model, device=device, precision=precision)  # its config's tokenizer
    info = {
        "name": name,
        "version": version,
        "uri": fixed,
        "requested_uri": model_uri,
        "variant": variant_of(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(predictor.device),
        "precision": precision,
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return LoadedModel(predictor, info)


def _local_checkpoint(uri: str, tmp: Path) -> str:
    """A local path of the checkpoint at ``uri``: itself when local, else its two files copied into ``tmp``."""
    from pipelines import storage

    if not storage.is_s3(uri):
        return uri
    from sgmg.checkpoint.io import CONFIG_NAME, WEIGHTS_NAME

    if uri.endswith(".safetensors"):
        pairs = [(uri, tmp / "model.safetensors"), (uri[: -len(".safetensors")] + ".json", tmp / "model.json")]
        local = tmp / "model.safetensors"
    else:
        pairs = [(storage.join(uri, n), tmp / n) for n in (WEIGHTS_NAME, CONFIG_NAME)]
        local = tmp
    for src, dst in pairs:
        dst.write_bytes(storage.read_bytes(src))
    return str(local)


def run_jobs(loaded: LoadedModel, jobs: list[WindowJob]) -> list[WindowResult]:
    """Answer ``jobs``: one forward pass per group of windows of equal shape (after the ingress's resize), the visual
    encoder once per window and the rest once per expression."""
    import torch

    predictor = loaded.predictor
    results: list[WindowResult | None] = [None] * len(jobs)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[tuple(job.video.shape)].append(i)
    for members in groups.values():
        video = torch.from_numpy(np.stack([jobs[i].video for i in members]))  # [B, t, 3, h, w]
        texts = [text for i in members for text in jobs[i].texts]
        index = torch.tensor([b for b, i in enumerate(members) for _ in jobs[i].texts], dtype=torch.long)
        input_ids, attention_mask = predictor.tokenize_many(texts)
        out = predictor.forward_windows(video, input_ids, attention_mask, index)
        row = 0
        for i in members:
            job, n = jobs[i], len(jobs[i].texts)
            masks = [
                np.packbits(
                    predictor.postprocessor.masks(out.mask_logits[r], job.size, threshold=job.threshold).numpy()
                )
                for r in range(row, row + n)
            ]
            results[i] = WindowResult(
                masks=masks,
                scores=out.scores[row : row + n].cpu().numpy().astype(np.float32),
                best_query=[int(q) for q in out.best_query[row : row + n]],
                model=loaded.ref,
                batch_size=len(members),
            )
            row += n
    return results
