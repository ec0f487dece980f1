"""Training-test helpers: a fast stand-in for SgMg with its training forward contract, and toy batches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sgmg.data.schema import ClipBatch, VideoTarget
from sgmg.model.outputs import LayerOutput, SgMgOutput


class ToyModel(nn.Module):
    """Per-pixel linear masks, text-conditioned scores, learnable boxes; ``poison`` makes the output NaN."""

    def __init__(self, num_queries: int = 3, num_layers: int = 2) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.visual_encoder = nn.Conv2d(3, num_queries, 1)
        self.text_encoder = nn.Embedding(16, 4)
        self.transformer = nn.Module()
        self.transformer.sampling_offsets = nn.Linear(4, 4)
        self.class_embed = nn.ModuleList(nn.Linear(4, num_queries) for _ in range(num_layers))
        self.box_logits = nn.Parameter(torch.zeros(num_queries, 4))
        self.poison = False

    def forward(
        self,
        video: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        pad_mask: Tensor | None = None,
        query_selector=None,
        video_index: Tensor | None = None,
    ) -> SgMgOutput:
        if video_index is not None:  # several expressions per clip: the clip's rows repeated
            video = video[video_index]
        b, t, _, h, w = video.shape
        q = self.num_queries
        masks = self.visual_encoder(video.flatten(0, 1)).view(b, t, q, h, w)  # [B, T, Q, H, W]
        if self.poison:
            masks = masks * float("nan")
        low = masks[..., 1::2, 1::2]  # [B, T, Q, H/2, W/2]
        txt = self.text_encoder(input_ids).mean(1)  # [B, 4]
        txt = txt + self.transformer.sampling_offsets(txt)
        boxes = self.box_logits.sigmoid().expand(b, t, q, 4)
        layers = []
        for i, head in enumerate(self.class_embed):
            logits = head(txt)[:, None].expand(b, t, q) + masks.mean((-1, -2))  # [B, T, Q]
            if query_selector is not None and self.training:
                selected = query_selector(i, logits.detach(), boxes.detach(), low.detach())
            else:
                selected = logits.sigmoid().mean(1).argmax(-1)[:, None]
            idx = selected[:, None, :, None, None].expand(b, t, -1, h, w)
            layers.append(LayerOutput(logits, boxes, low, selected, masks.gather(2, idx)))
        last = layers[-1]
        masks_out = last.pred_masks if self.training else last.pred_masks[:, :, 0]  # eval: [B, T, H, W]
        return SgMgOutput(last.pred_logits, last.pred_boxes, last.refined_queries[:, 0], masks_out, layers)


def toy_batch(b: int = 2, t: int = 2, h: int = 8, w: int = 8, seed: int = 0) -> ClipBatch:
    """Random clips with one square object per video, invisible in the last frame of the second video."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for i in range(b):
        masks = torch.zeros(1, t, h, w)
        masks[0, :, 2:6, 2:6] = 1
        valid = torch.ones(1, t, dtype=torch.bool)
        if i == 1:
            masks[0, -1] = 0
            valid[0, -1] = False
        boxes = torch.tensor([0.5, 0.5, 0.5, 0.5]).expand(1, t, 4).clone() * valid[..., None]
        targets.append(VideoTarget(masks, boxes, valid, (h, w)))
    return ClipBatch(
        video=torch.randn(b, t, 3, h, w, generator=gen),
        pad_mask=torch.zeros(b, h, w, dtype=torch.bool),
        input_ids=torch.randint(0, 16, (b, 5), generator=gen),
        attention_mask=torch.ones(b, 5, dtype=torch.long),
        targets=targets,
    )


def ddp_nonfinite_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo DDP run where only rank 1's loss is NaN on step 0; writes what it saw."""
    import json
    import os

    import torch.distributed as dist

    from sgmg.loss.criterion import SgMgCriterion
    from sgmg.loss.matcher import InstanceSequenceMatcher
    from sgmg.train.step import NonFiniteGuard, train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        toy = ToyModel()
        model = nn.parallel.DistributedDataParallel(toy)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        crit = SgMgCriterion(matcher=InstanceSequenceMatcher())
        guard = NonFiniteGuard(3)
        seen = []
        for step in range(2):
            toy.poison = rank == 1 and step == 0
            m = train_step(model, crit, toy_batch(seed=rank), opt, step_index=step, clip_max_norm=0, nonfinite=guard)
            seen.append({"skipped": m.skipped_nonfinite, "stepped": m.stepped})
        params = [p.detach().flatten().tolist() for p in toy.parameters()]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"seen": seen, "params": params}, f)
    finally:
        dist.destroy_process_group()
