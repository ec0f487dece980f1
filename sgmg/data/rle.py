"""COCO run-length encoding of binary masks (pycocotools): the one encoder and decoder of the project.

Used by the dataset readers (MeViS and RefCOCO annotations), the MeViS and RefCOCO evaluations, the ingest shards,
the MLflow pyfunc and the Serve answers. ``encode_json`` gives the JSON form ``{"size": [H, W], "counts": str}``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs ``{"size": [H, W], "counts": bytes}`` of bool ``[N, H, W]`` masks (one per mask)."""
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # from [H, W, N]


def encode_json(masks: np.ndarray) -> list[dict[str, Any]]:
    """:func:`encode` with JSON values: ``{"size": [H, W] ints, "counts": ASCII str}`` per mask."""
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in encode(masks)]


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """bool ``[H, W]`` of one COCO RLE: compressed ``counts`` as str or bytes, or uncompressed (a list).

    Raises:
        ValueError: a malformed RLE (the pycocotools error is the ``__cause__``).
    """
    from pycocotools import mask as mask_utils

    try:
        rle = dict(rle)
        if isinstance(rle["counts"], list):
            height, width = rle["size"]
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return mask_utils.decode(rle).astype(bool)
    except Exception as err:  # pycocotools raises assorted types on malformed input
        raise ValueError(f"not a valid COCO RLE ({err})") from err


def decode_segmentation(segmentation: object, height: int, width: int) -> np.ndarray:
    """bool ``[H, W]`` of a COCO annotation's ``segmentation``: polygons (a list of ``[x0, y0, x1, y1, ...]``; none:
    an empty mask), an uncompressed RLE or a compressed one.

    Raises:
        ValueError: a segmentation of another type or a malformed one (the pycocotools error is the ``__cause__``).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        return decode(segmentation)
    if not isinstance(segmentation, list):
        raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")
    if not segmentation:
        return np.zeros((height, width), dtype=bool)
    try:
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))).astype(bool)
    except Exception as err:  # pycocotools raises assorted types on malformed input
        raise ValueError(f"not valid COCO polygons ({err})") from err


def decode_counts(counts: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """bool ``[N, H, W]`` of compressed ``counts`` of masks of one size (the inverse of ``encode``'s counts)."""
    from pycocotools import mask as mask_utils

    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [height, width], "counts": bytes(c)} for c in counts]
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning, harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rles)  # [H, W, N]
    return decoded.transpose(2, 0, 1).astype(bool)  # [N, H, W]
