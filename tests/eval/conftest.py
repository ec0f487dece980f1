"""Fixtures for the evaluation tests: the DAVIS toolkit golden numbers and the shared DAVIS masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the repo root is tests/eval/../..; CI keeps the project's shared/ folder beside it (e.g. /work/main + /work/shared)
SHARED_MASKS = Path(__file__).resolve().parents[3] / "shared" / "data" / "davis_masks"


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads((FIXTURES / "davis_toolkit_golden.json").read_text())


@pytest.fixture(scope="session")
def davis_masks() -> Path:
    if not (SHARED_MASKS / "edge_cases.npz").is_file() or not (SHARED_MASKS / "setA").is_dir():
        pytest.skip(f"shared DAVIS masks not found at {SHARED_MASKS} (the project's shared/ folder beside the repo)")
    return SHARED_MASKS


def read_labels(folder: Path) -> np.ndarray:
    """uint8 [T, H, W] of the sorted PNGs of a folder."""
    return np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="session")
def davis_labels(davis_masks: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sequence -> (setB labels = annotation, setA labels = segmentation)."""
    return {
        seq.name: (read_labels(seq), read_labels(davis_masks / "setA" / seq.name))
        for seq in sorted((davis_masks / "setB").iterdir())
    }


@pytest.fixture(scope="session")
def edge_cases(davis_masks: Path) -> dict[str, np.ndarray]:
    with np.load(davis_masks / "edge_cases.npz") as data:
        return {k: data[k] for k in data.files}
