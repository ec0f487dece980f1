"""Video Swin Transformer visual encoder of SgMg (Miao et al., ICCV 2023).

Video Swin (Liu et al., CVPR 2022) with patch ``1x4x4`` (no temporal downsampling, one feature map per frame),
window ``8x7x7`` and four stages whose *raw* outputs (no final LayerNorm, taken before patch merging) are returned at
strides 4/8/16/32, as in github.com/bo-miao/SgMg ``models/video_swin_transformer.py`` (facts only).

The window attention is torchvision's :class:`~torchvision.models.video.swin_transformer.ShiftedWindowAttention3d`
(with its softmax step fused: :mod:`sgmg.model.ops.window_attention`) and the merging is torchvision's ``PatchMerging``:
they reproduce the original numerics (window and shift shrink to the input size per axis, relative-position index
truncated to the used window volume, the -100 shift mask computed on the padded grid, the same 2x2 merge order), and
their parameter names match the released state dicts.
The block, stage and encoder wrappers are ours, to return the raw stage outputs and support activation checkpointing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp
from torch import Tensor, nn
from torchvision.models.swin_transformer import PatchMerging
from torchvision.models.video.swin_transformer import (
    ShiftedWindowAttention3d,
    _compute_attention_mask_3d,
    _compute_pad_size_3d,
    _get_window_and_shift_size,
)

from sgmg.model.ops.linear import feed_forward, linear
from sgmg.model.ops.window_attention import window_attention

logger = logging.getLogger(__name__)


class PatchEmbed3d(nn.Module):
    """Non-overlapping 3D patch embedding (Conv3d) followed by LayerNorm.

    Args:
        patch_size: (t, h, w).
        in_channels: input channels.
        embed_dim: output channels.
    """

    def __init__(self, *, patch_size: tuple[int, int, int], in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, video: Tensor) -> Tensor:
        """``[B, 3, T, H, W] -> [B, T', H/4, W/4, C]`` (channels last), padding to the patch size first."""
        _, _, t, h, w = video.shape
        pt, ph, pw = self.patch_size
        pad = ((pw - w % pw) % pw, (ph - h % ph) % ph, (pt - t % pt) % pt)
        if any(pad):
            video = F.pad(video, (0, pad[0], 0, pad[1], 0, pad[2]))
        x = self.proj(video).permute(0, 2, 3, 4, 1)  # [B, T, h, w, C]
        return self.norm(x)


class WindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's (shifted) 3D window attention, with the attention itself done by
    :func:`~sgmg.model.ops.window_attention.window_attention`.

    Parameters, buffers, window/shift shrinking, padding, the relative-position bias and the -100 shift mask are
    torchvision's; only the softmax(QK^T + bias + mask)V step is fused (our C++ kernel in inference on AVX-512 CPUs,
    ``scaled_dot_product_attention`` elsewhere, about 25% faster on CPU than torchvision's steps; same numerics up to
    float rounding), and the shift mask, zero in all windows but those on the far edge of a shifted axis, is added only
    there instead of to a ``[windows, heads, N, N]`` copy of the bias. Dropout is not supported (the official model
    uses none).
    """

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, H, W, C] -> [B, T, H, W, C]`` (a view, not contiguous, when the windows needed padding)."""
        b, t, h, w, c = x.shape
        ws, ss = _get_window_and_shift_size(list(self.shift_size), [t, h, w], list(self.window_size))
        bias = self.get_relative_position_bias(ws)  # [1, heads, N, N]
        pad = _compute_pad_size_3d((t, h, w), (ws[0], ws[1], ws[2]))
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        _, tp, hp, wp, _ = x.shape
        shifted = sum(ss) > 0
        if shifted:
            x = torch.roll(x, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
        grid = (tp // ws[0], hp // ws[1], wp // ws[2])
        nw, n, heads = grid[0] * grid[1] * grid[2], ws[0] * ws[1] * ws[2], self.num_heads
        x = x.view(b, grid[0], ws[0], grid[1], ws[1], grid[2], ws[2], c)
        x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * nw, n, c)  # [B*nW, N, C]
        qkv = linear(x, self.qkv.weight, self.qkv.bias).view(b * nw, n, 3, heads, c // heads)
        if shifted:
            window_mask, masks = self._shift_masks(x.device, (tp, hp, wp), ws, ss)  # [nW], [k, N, N]
            window_mask = window_mask.repeat(b)  # [B*nW]
        else:
            window_mask, masks = x.new_full((b * nw,), -1, dtype=torch.long), x.new_empty(0, n, n)
        out = window_attention(qkv, bias[0], window_mask, masks)  # [B*nW, N, C]
        out = linear(out, self.proj.weight, self.proj.bias)
        out = out.view(b, grid[0], grid[1], grid[2], ws[0], ws[1], ws[2], c)
        out = out.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, tp, hp, wp, c)  # [B, T', H', W', C]
        if shifted:
            out = torch.roll(out, shifts=(ss[0], ss[1], ss[2]), dims=(1, 2, 3))
        return out[:, :t, :h, :w]  # a view when padded: the caller's residual add reads it

    def _shift_masks(
        self, device: torch.device, size: tuple[int, int, int], ws: list[int], ss: list[int]
    ) -> tuple[Tensor, Tensor]:
        """torchvision's -100 shift mask of the padded grid ``size``, kept only for the windows where it is not all
        zero: ``[nW]`` int64, each window's index among the kept masks or -1, and the kept masks ``[k, N, N]``
        float32. Cached for the last grid and device (at stage 1 of a 5 x 360 x 640 clip the whole mask is 322
        windows x 245 x 245, the kept part 36)."""
        key = (size, tuple(ws), tuple(ss), device)
        cached = getattr(self, "_shift_mask_cache", None)
        if cached is None or cached[0] != key:
            grid = torch.empty(0, device=device)  # torchvision takes the mask's device and dtype from a tensor
            full = _compute_attention_mask_3d(grid, size, (ws[0], ws[1], ws[2]), (ss[0], ss[1], ss[2]))  # [nW, N, N]
            kept = full.flatten(1).ne(0).any(1)  # [nW]
            window_mask = torch.full((len(full),), -1, dtype=torch.long, device=device)
            window_mask[kept] = torch.arange(int(kept.sum()), device=device)
            cached = (key, (window_mask, full[kept]))
            self._shift_mask_cache = cached
        return cached[1]


class SwinBlock3d(nn.Module):
    """Pre-norm (shifted) window attention block.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: (t, h, w) window.
        shift_size: (t, h, w) cyclic shift (zeros for a regular block).
        mlp_ratio: MLP hidden size / channels.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int, int],
        shift_size: tuple[int, int, int],
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, list(window_size), list(shift_size), num_heads, qkv_bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, H, W, C] -> [B, T, H, W, C]``."""
        # the attention and the MLP run in their weights' dtype (bfloat16 after sgmg.model.precision's "bf16"),
        # the residual stream and the LayerNorms in x's
        attn = self.attn(self.norm1(x).to(self.attn.qkv.weight.dtype))
        x = x + self.drop_path(attn)  # float32 + bfloat16 adds in float32
        if self.training:
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # x + MLP(norm2(x)) in row blocks (no drop path in eval)
        return feed_forward(x, self.mlp.fc1, self.mlp.act, self.mlp.fc2, pre=self.norm2, residual=True)


class SwinStage3d(nn.Module):
    """A stack of Swin blocks alternating regular and shifted windows (no downsampling: see ``downsamples``)."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: tuple[int, int, int],
        mlp_ratio: float,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window_size)
        self.blocks = nn.ModuleList(
            SwinBlock3d(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=(0, 0, 0) if i % 2 == 0 else shift,
                mlp_ratio=mlp_ratio,
                drop_path=drop_paths[i],
            )
            for i in range(depth)
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, H, W, C] -> [B, T, H, W, C]``."""
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VideoSwinTransformer(nn.Module):
    """Video Swin backbone returning the raw output of each of its 4 stages.

    Args:
        embed_dim: channels of stage 1.
        depths: blocks per stage.
        num_heads: heads per stage.
        patch_size: (t, h, w) patch size.
        window_size: (t, h, w) window size.
        mlp_ratio: MLP ratio.
        drop_path_rate: final stochastic depth rate (linear schedule over all blocks).

    Raises:
        ValueError: if ``depths`` and ``num_heads`` differ in length.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        patch_size: tuple[int, int, int] = (1, 4, 4),
        window_size: tuple[int, int, int] = (8, 7, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length")
        self.patch_embed = PatchEmbed3d(patch_size=patch_size, in_channels=3, embed_dim=embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            self.layers.append(
                SwinStage3d(
                    dim=self.channels[i],
                    depth=depth,
                    num_heads=heads,
                    window_size=tuple(window_size),
                    mlp_ratio=mlp_ratio,
                    drop_paths=rates[start : start + depth],
                )
            )
            start += depth
            if i < len(depths) - 1:
                self.downsamples.append(PatchMerging(self.channels[i]))

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute every Swin block during backward (saves activation memory)."""
        for stage in self.layers:
            stage.gradient_checkpointing = enabled

    def forward(self, video: Tensor) -> list[Tensor]:
        """Encode a batch of clips.

        Args:
            video: ``[B, T, 3, H, W]``.

        Returns:
            One ``[B*T, C_i, H/s_i, W/s_i]`` map per stage, strides ``s_i`` = 4, 8, 16, 32 (frame-major within a
            video: index ``b*T + t``).
        """
        x = self.patch_embed(video.transpose(1, 2))  # [B, T, h, w, C]
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outs.append(x.flatten(0, 1).permute(0, 3, 1, 2).contiguous())  # [B*T, C, h, w]
            if i < len(self.downsamples):
                x = self.downsamples[i](x)  # [B, T, h/2, w/2, 2C]
        return outs


def window_relative_position_index(window_size: tuple[int, int, int]) -> Tensor:
    """The constant ``relative_position_index`` buffer of a window attention, ``[Wd*Wh*Ww, Wd*Wh*Ww]`` int64."""
    with torch.device("cpu"):
        return ShiftedWindowAttention3d(1, list(window_size), [0, 0, 0], 1).relative_position_index


def load_kinetics_weights(encoder: VideoSwinTransformer, path: str | Path) -> None:
    """Load Kinetics-pretrained Video Swin weights in the original release format into ``encoder``.

    The file is ``{'state_dict': {'backbone.<name>': tensor, 'cls_head.*': ...}}`` (mmaction2 Video Swin release, e.g.
    ``swin_tiny_patch244_window877_kinetics400_1k.pth``). Only ``backbone.*`` is used; the temporal kernel of
    ``patch_embed.proj.weight`` (2 in the release) is summed to 1, ``layers.{i}.downsample.*`` becomes
    ``downsamples.{i}.*`` and the final ``norm.*`` (unused by SgMg) is dropped. Loaded with
    ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not in that format, or keys or shapes do not match the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Kinetics Video Swin weights not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise ValueError(f"{path}: expected a dict with a 'state_dict' entry (Video Swin release format)")
    state = {}
    for key, value in blob["state_dict"].items():
        if not key.startswith("backbone."):
            continue
        name = key[len("backbone.") :]
        if name.startswith("norm."):
            continue  # final LayerNorm: SgMg uses raw stage outputs
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "downsample":
            name = ".".join(["downsamples", parts[1], *parts[3:]])
        state[name] = value
    if not state:
        raise ValueError(f"{path}: no 'backbone.*' keys in state_dict; is this a Video Swin checkpoint?")
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() == 5 and proj.shape[2] != 1:
        state["patch_embed.proj.weight"] = proj.sum(dim=2, keepdim=True)
    own = encoder.state_dict()
    optional = {k for k in own if k.endswith("relative_position_index")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(state) & set(own)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: Kinetics weights do not fit this Video Swin (check the variant: embed_dim/depths).\n"
            f"missing: {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
            f"unexpected: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}\nwrong shapes: {wrong[:20]}"
        )
    encoder.load_state_dict(state, strict=False)
    logger.info("loaded Kinetics Video Swin weights from %s (%d tensors)", path, len(state))
