"""Conditional patch kernels of SgMg (Miao et al., ICCV 2023, Sec. 3.3).

A controller MLP turns every query embedding into the parameters of a small dynamic network of 1x1 convs. The network
runs on the summed encoder memory at stride 8, with the raw-pixel offsets from the query's predicted box centre to
every stride-8 cell centre appended as two channels, and outputs a 16-channel "patch mask" per query and frame;
``pixel_shuffle(4)`` turns it into a 1-channel mask at stride 2 (github.com/bo-miao/SgMg ``models/sgmg.py``
``dynamic_mask_with_coords``; facts only). The per-query convs are batched einsums instead of a grouped conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.layers import MLP


class ConditionalMaskHead(nn.Module):
    """Dynamic 1x1-conv mask head.

    Args:
        dim: query / mask-feature width C.
        mask_channels: output channels of the dynamic network (patch_size**2).
        num_layers: dynamic conv layers.
        rel_coord: append relative coordinates (2 channels) to the mask features.
        feat_stride: stride of the mask features (8).
    """

    def __init__(self, *, dim: int, mask_channels: int, num_layers: int, rel_coord: bool, feat_stride: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.mask_channels = mask_channels
        self.rel_coord = rel_coord
        self.feat_stride = feat_stride
        in_ch = dim + (2 if rel_coord else 0)
        self.weight_nums = [in_ch * mask_channels] + [mask_channels * mask_channels] * (num_layers - 1)
        self.bias_nums = [mask_channels] * num_layers
        self.controller = MLP(
            input_dim=dim, hidden_dim=dim, output_dim=sum(self.weight_nums) + sum(self.bias_nums), num_layers=3
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Controller: xavier-uniform weights, zero biases."""
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, mask_feats: Tensor, queries: Tensor, centers: Tensor, image_size: Tensor) -> Tensor:
        """Predict patch-mask logits.

        Args:
            mask_feats: ``[B, T, C, h, w]`` stride-8 mask features.
            queries: ``[B, T, Q, C]`` decoder output of one layer.
            centers: ``[B, T, Q, 2]`` predicted box centres (cx, cy) in [0, 1] of the unpadded input.
            image_size: ``[B, 2]`` unpadded input size (h, w) in pixels.

        Returns:
            ``[B, T, Q, mask_channels, h, w]`` patch-mask logits.
        """
        b, t, c, h, w = mask_feats.shape
        q = queries.shape[2]
        params = self.controller(queries)  # [B, T, Q, n_params]
        chunks = torch.split(params, self.weight_nums + self.bias_nums, dim=-1)
        n = len(self.weight_nums)
        weights, biases = chunks[:n], chunks[n:]
        k = self.mask_channels
        feats = mask_feats.flatten(3)  # [B, T, C, h*w]
        w0 = weights[0].reshape(b, t, q, k, -1)  # [B, T, Q, k, C(+2)]
        x = torch.einsum("btqkc,btcp->btqkp", w0[..., :c], feats)  # [B, T, Q, k, h*w]
        if self.rel_coord:
            stride = self.feat_stride
            ys = torch.arange(h, device=feats.device, dtype=torch.float32) * stride + stride // 2
            xs = torch.arange(w, device=feats.device, dtype=torch.float32) * stride + stride // 2
            locs = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0).reshape(2, h * w)  # [2, h*w] as (x, y)
            scale = image_size.flip(-1).to(centers.dtype)  # [B, 2] as (w, h)
            ref = centers * scale[:, None, None, :]  # [B, T, Q, 2] pixels
            rel = ref[..., None] - locs  # [B, T, Q, 2, h*w]
            x = x + torch.einsum("btqkc,btqcp->btqkp", w0[..., c:], rel)
        x = x + biases[0].reshape(b, t, q, k, 1)
        for i in range(1, n):
            x = torch.einsum("btqkc,btqcp->btqkp", weights[i].reshape(b, t, q, k, k), F.relu(x))
            x = x + biases[i].reshape(b, t, q, k, 1)
        return x.view(b, t, q, k, h, w)
