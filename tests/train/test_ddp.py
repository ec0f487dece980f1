"""train_step under DistributedDataParallel (2 CPU processes, gloo on loopback)."""

from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp


@pytest.mark.integration
@pytest.mark.timeout(120)  # the bug this guards against is a hang
def test_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(tmp_path) -> None:
    from train_toys import ddp_nonfinite_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_nonfinite_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:  # step 0 skipped everywhere (rank 0's loss was finite), step 1 taken everywhere
        assert r["seen"] == [{"skipped": True, "stepped": False}, {"skipped": False, "stepped": True}]
    assert ranks[0]["params"] == ranks[1]["params"]  # still in sync
