"""Device and precision rules of a training run."""

from __future__ import annotations

import pytest
import torch

from sgmg.train.precision import amp_settings, select_device


def test_device_and_precision_rules() -> None:
    cpu = torch.device("cpu")
    assert amp_settings("auto", cpu) == (None, False)
    assert amp_settings("bf16", cpu) == (torch.bfloat16, False)
    assert amp_settings("fp32", cpu) == (None, False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp_settings("fp16", cpu)
    assert select_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert select_device("auto") == cpu
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
