"""MaskPostProcessor: select, crop, resize, threshold, RLE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgmg.data import rle
from sgmg.eval.postprocess import MaskPostProcessor
from sgmg.model.outputs import SgMgOutput


def _output(n: int = 2, t: int = 3, q: int = 4, h: int = 12, w: int = 16) -> SgMgOutput:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, t, q, generator=gen)
    best = logits.sigmoid().mean(1).argmax(-1)
    return SgMgOutput(logits, torch.rand(n, t, q, 4, generator=gen), best, torch.randn(n, t, h, w, generator=gen))


def test_select_gives_the_chosen_query_scores() -> None:
    out = _output()
    sel = MaskPostProcessor.select(out)
    for i in range(2):
        torch.testing.assert_close(sel.scores[i], out.pred_logits[i, :, out.best_query[i]].sigmoid())
    assert sel.mask_logits.dtype == torch.float32 and torch.equal(sel.best_query, out.best_query)


def test_masks_crop_resize_and_threshold() -> None:
    out = _output()
    post = MaskPostProcessor(threshold=0.4, chunk=2)
    masks = post(out, sizes=[(20, 30), (7, 9)], valid_sizes=[(10, 16), (12, 16)])
    want = F.interpolate(out.pred_masks[0, :, None, :10], size=(20, 30), mode="bilinear", align_corners=False)
    assert torch.equal(masks[0], want[:, 0].sigmoid() > 0.4)
    assert masks[1].shape == (3, 7, 9) and masks[1].dtype == torch.bool
    # chunking does not change the result; no resize at the same size
    whole = MaskPostProcessor(threshold=0.4, chunk=100).masks(out.pred_masks[0], (20, 30), (10, 16))
    assert torch.equal(whole, masks[0])
    same = post.masks(out.pred_masks[1], (12, 16), threshold=0.5)
    assert torch.equal(same, out.pred_masks[1] > 0)


def test_rle_round_trips() -> None:
    masks = np.random.default_rng(0).random((3, 5, 7)) > 0.5
    encoded = MaskPostProcessor.rle(masks)
    assert [r["size"] for r in encoded] == [[5, 7]] * 3 and isinstance(encoded[0]["counts"], str)
    np.testing.assert_array_equal(np.stack([rle.decode(r) for r in encoded]), masks)


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"chunk": 0}])
def test_bad_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="threshold|chunk"):
        MaskPostProcessor(**kwargs)
