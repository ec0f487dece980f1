"""RVOSPredictor and ``sgmg predict`` with the real tiny model (random init, so masks are checked for form, not
quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sgmg
from sgmg.cli import main
from sgmg.data.tokenizer import load_tokenizer
from sgmg.inference.predictor import RVOSPredictor


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return sgmg.build_model("sgmg_tiny")


@pytest.fixture(scope="module")
def predictor(tiny: torch.nn.Module) -> RVOSPredictor:
    return RVOSPredictor(tiny, load_tokenizer(tiny.config.text.tokenizer_source), short_side=96)


def _frames(t: int = 5, h: int = 72, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)


def test_predict_returns_one_mask_per_frame_at_input_resolution(predictor: RVOSPredictor) -> None:
    pred = predictor.predict(_frames(), "the red square on the left", keep_probs=True)
    assert pred.masks.shape == (5, 72, 100) and pred.masks.dtype == bool
    assert pred.scores.shape == (5,) and np.all((pred.scores > 0) & (pred.scores < 1))
    assert pred.probs is not None and pred.probs.shape == (5, 72, 100)
    np.testing.assert_array_equal(pred.masks, pred.probs > 0.5)
    assert len(pred.best_query) == 1 and 0 <= pred.best_query[0] < 3


def test_windows_are_independent_forward_passes(predictor: RVOSPredictor) -> None:
    frames = _frames(t=5)
    whole = predictor.predict(frames, "a blue circle", window=2, keep_probs=True)
    parts = [predictor.predict(frames[s : s + 2], "a blue circle", keep_probs=True) for s in (0, 2, 4)]
    assert len(whole.best_query) == 3
    np.testing.assert_allclose(whole.probs, np.concatenate([p.probs for p in parts]), atol=1e-6)
    streamed = list(predictor.iter_predict(frames, "a blue circle", window=2))
    assert [i for i, _, _ in streamed] == list(range(5))
    np.testing.assert_array_equal(np.stack([m for _, m, _ in streamed]), whole.masks)


def test_bad_inputs_are_rejected(predictor: RVOSPredictor, tiny: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        predictor.predict(_frames(), "   ")
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        predictor.predict(_frames().astype(np.float32), "x")
    with pytest.raises(ValueError, match="threshold"):
        RVOSPredictor(tiny, predictor.tokenizer, threshold=1.5)


def test_predict_command_writes_masks_overlay_and_summary(tiny: torch.nn.Module, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    sgmg.save_checkpoint(tiny, ckpt)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, f in enumerate(_frames(t=4)):
        Image.fromarray(f).save(frames_dir / f"{i:05d}.jpg")
    out = tmp_path / "out"
    argv = ["predict", str(frames_dir), "the square", "--checkpoint", str(ckpt), "--out", str(out), "--window", "3"]
    assert main([*argv, "--short-side", "96"]) == 0
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == [f"{i:05d}.png" for i in range(4)]
    assert np.asarray(Image.open(out / "masks" / "00000.png")).shape == (72, 100)
    assert (out / "overlay.mp4").stat().st_size > 0
    summary = json.loads((out / "prediction.json").read_text())
    assert len(summary["scores"]) == 4 and len(summary["best_query_per_window"]) == 2
    # a second run must not overwrite the user's results silently
    assert main([*argv, "--short-side", "96"]) == 2
    assert main([*argv, "--short-side", "96", "--overwrite", "--no-overlay", "--precision", "bf16"]) == 0
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["precision"] == "bf16" and len(summary["scores"]) == 4


def test_bf16_predictor_masks_agree_with_fp32(predictor: RVOSPredictor, tiny: torch.nn.Module) -> None:
    import copy

    fast = RVOSPredictor(copy.deepcopy(tiny), predictor.tokenizer, short_side=96, precision="bf16")
    assert fast.model.visual_encoder.layers[0].blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    exact, quick = (p.predict(_frames(), "the red square", keep_probs=True) for p in (predictor, fast))
    assert quick.masks.shape == exact.masks.shape and quick.best_query == exact.best_query
    assert np.abs(quick.probs - exact.probs).max() < 0.1
    with pytest.raises(ValueError, match="precision='fp16'"):
        RVOSPredictor(copy.deepcopy(tiny), predictor.tokenizer, precision="fp16")


def test_predict_command_reports_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["predict", str(tmp_path / "nope.mp4"), "x", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nope.mp4" in capsys.readouterr().err
