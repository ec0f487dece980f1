"""sgmg.allocator: after tune_malloc, a forward's freed tensors are reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sgmg.allocator import tune_malloc

# In a fresh interpreter (the setting is process-wide and one-way): minor page faults of an eval forward of
# Swin-T on a 3 x 192 x 256 clip, the median of 5 warm forwards, before and after tune_malloc.
CHILD = """
import json, resource, statistics, torch
import sgmg
from sgmg.allocator import tune_malloc

torch.manual_seed(0)
model = sgmg.build_model("sgmg_video_swin_t").eval()
video = torch.randn(1, 3, 3, 192, 256)
ids = torch.randint(3, 1000, (1, 8))

def faults():
    # the median of 5 forwards after 3 warm-up ones (oneDNN's own buffers settle over the first few; single
    # forwards vary)
    counts = []
    with torch.inference_mode():
        for _ in range(3):
            model(video, ids, torch.ones_like(ids))
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(video, ids, torch.ones_like(ids))
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(counts)

default = faults()
tuned = tune_malloc()
print(json.dumps({"default": default, "tuned": tuned, "after": faults()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tune_malloc_stops_page_faults_of_a_forward():
    env = {k: v for k, v in os.environ.items() if k != "SGMG_TUNE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["tuned"] is True
    # fresh pages for the large intermediates: 1-15 thousand a forward here (glibc raises its own threshold over time)
    assert figures["default"] > 300, figures
    assert figures["after"] < figures["default"] / 10, figures


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_tune_malloc_can_be_switched_off(monkeypatch, value):
    monkeypatch.setenv("SGMG_TUNE_MALLOC", value)
    assert tune_malloc() is False


def test_tune_malloc_leaves_other_platforms_alone(monkeypatch):
    monkeypatch.delenv("SGMG_TUNE_MALLOC", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_malloc() is False
