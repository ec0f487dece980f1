"""Fixtures of the training tests (helpers in ``train_toys.py``)."""

from __future__ import annotations

import pytest
import torch
from train_toys import ToyModel, toy_batch

from sgmg.data.schema import ClipBatch


@pytest.fixture
def toy_model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel()


@pytest.fixture
def batch() -> ClipBatch:
    return toy_batch()
