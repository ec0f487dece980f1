"""The ``SgMgModel`` deployment's class in-process (no Ray): ``reconfigure`` with a new ``user_config.model_uri``
(a RayService upgrade) moves the replica to the new model, and a request that started on the old one is still
answered by it. Behind real Serve (alias polling, SIGTERM): ``test_serve_e2e.py``."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
from serve_fixtures import SHORT_SIDE, TEXT, square_frames

import sgmg
from pipelines.serve.model import SgMgModel
from pipelines.serve.runner import WindowJob
from sgmg.inference.predictor import preprocess_frames


def test_reconfigure_moves_to_the_new_model_and_keeps_requests_in_flight_on_the_old(
    serve_checkpoint: str, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    sgmg.save_checkpoint(sgmg.build_model("sgmg_tiny"), other)  # untrained: answers differently
    replica = SgMgModel.func_or_class(model_uri=serve_checkpoint, reload_interval_s=0)
    replica._loading.result(timeout=120)
    frames = square_frames()
    job = WindowJob(
        video=preprocess_frames(frames, short_side=SHORT_SIDE).numpy(),
        texts=[TEXT],
        size=frames.shape[1:3],
        threshold=0.5,
    )

    # `@serve.batch` queues only inside a replica; its body (grouping by model, forward passes) is called directly
    forward = SgMgModel.func_or_class._segment_batch.__wrapped__

    async def scenario():
        (first,) = await forward(replica, [job])
        replica.reconfigure({"model_uri": str(other), "max_batch_size": 4})
        await asyncio.wrap_future(replica._loading)
        info = await replica.info()
        second, pinned = await forward(replica, [job, dataclasses.replace(job, model_uri=first.model["uri"])])
        return first, info, second, pinned

    first, info, second, pinned = asyncio.run(scenario())
    assert str(other) in info["uri"] and info["settings"]["max_batch_size"] == 4
    assert second.model["uri"] == info["uri"] != first.model["uri"]
    assert pinned.model == first.model  # a later window of a request that started on the old model
    assert np.array_equal(pinned.masks[0], first.masks[0])
    assert not np.array_equal(second.masks[0], first.masks[0])
