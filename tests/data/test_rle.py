"""sgmg.data.rle: the one COCO RLE codec (compressed, uncompressed, polygons)."""

from __future__ import annotations

import numpy as np
import pytest

from sgmg.data import rle


def test_encode_decode_round_trip() -> None:
    masks = np.random.default_rng(0).random((3, 6, 5)) > 0.5
    np.testing.assert_array_equal(np.stack([rle.decode(r) for r in rle.encode_json(masks)]), masks)
    np.testing.assert_array_equal(rle.decode_counts([r["counts"] for r in rle.encode(masks)], 6, 5), masks)


def test_decode_segmentation_of_every_coco_form() -> None:
    square = np.zeros((6, 8), dtype=bool)
    square[1:4, 2:6] = True
    compressed = rle.encode_json(square[None])[0]
    np.testing.assert_array_equal(rle.decode_segmentation(compressed, 6, 8), square)
    flat = square.flatten(order="F")  # uncompressed: run lengths in column-major order, starting with 0s
    edges = np.flatnonzero(np.diff(np.r_[False, flat, not flat[-1]]))
    counts = np.diff(np.r_[0, edges]).tolist()
    np.testing.assert_array_equal(rle.decode_segmentation({"size": [6, 8], "counts": counts}, 6, 8), square)
    polygon = rle.decode_segmentation([[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]], 6, 8)
    assert polygon.shape == (6, 8) and polygon[2, 3] and not polygon[5, 7]
    assert not rle.decode_segmentation([], 6, 8).any()
    with pytest.raises(ValueError, match="segmentation type"):
        rle.decode_segmentation("nope", 6, 8)
    with pytest.raises(ValueError, match="COCO"):
        rle.decode_segmentation({"size": [6, 8], "counts": "@@@bad"}, 6, 8)
