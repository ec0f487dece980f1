"""Spectrum-guided cross-modal fusion (SCF) of SgMg (Miao et al., ICCV 2023, Sec. 3.2).

Each of the 4 projected visual levels goes through a spectral filter block, a text cross-attention gate shared by
all levels, and a second spectral filter block. The spectral block (``LFMResizeAdaptive`` upstream,
github.com/bo-miao/SgMg ``models/modules.py``; facts only) works on the *unshifted* 2D FFT: a Gaussian centred at
``(h//2, w//2)`` (the highest frequencies) scaled by a per-frame ``alpha`` in (0, 1) damps the spectrum
(``Y * (1 - alpha * G)``), two 1x1 convs mix real and imaginary parts, and the real part of the inverse FFT is added
back. The Gaussian is built once at the first (stride-8) call and then bilinearly resized from call to call across
all 8 blocks, exactly like the official chain. The FFT path always runs in float32 (also under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.ops.linear import channel_mix


def gaussian_map(height: int, width: int, sigma: float, device: torch.device) -> Tensor:
    """``exp(-((y - h//2)^2 + (x - w//2)^2) / (2 sigma^2))`` as ``[1, 1, h, w]`` float32."""
    yy = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xx = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    g = torch.exp(-((yy - height // 2) ** 2 + (xx - width // 2) ** 2) / (2 * sigma**2))
    return g[None, None]  # [1, 1, h, w]


def mean_of_valid_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x).mean(dim=(2, 3))`` of an unpadded, stride-1, undilated, ungrouped conv, without the conv.

    ``[N, C, h, w] -> [N, C_out]``. The mean of a linear map is the map of the means: every kernel tap's weights
    meet the mean of the input window that tap sees over all output positions. Three column sums and nine small
    row sums instead of a ``kh*kw*C*C_out`` multiply per pixel (the stride-8 level's 3x3 conv at 5 x 360 x 640 was
    a quarter of the fusion's time); the same value up to float32 summation order.
    """
    kh, kw = conv.kernel_size
    _, _, h, w = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = torch.stack([x[..., j : j + ow].sum(-1) for j in range(kw)], -1)  # [N, C, h, kw]
    means = torch.stack([cols[:, :, i : i + oh].sum(2) for i in range(kh)], 2) / (oh * ow)  # [N, C, kh, kw]
    out = means.flatten(1) @ conv.weight.flatten(1).t()  # [N, C_out]
    return out if conv.bias is None else out + conv.bias


def pointwise_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` of a 1x1, stride-1, ungrouped conv as a matrix multiply per frame, ``[N, C_in, h, w] ->
    [N, C_out, h, w]``: the ``[C_out, C_in]`` weight times each frame's ``[C_in, h*w]``
    (:func:`sgmg.model.ops.linear.channel_mix`: oneDNN at inference on CPU, else one batched multiply; no copy of the
    weight or of ``x``). oneDNN's 1x1 convolution on NCHW took 1.2x (float32) to 1.6x (bfloat16) as long as the
    batched multiply for the spectral blocks' 512-channel convs at the stride-8 level of 5 x 360 x 640; the same value
    up to float summation order.
    """
    n, c, h, w = x.shape
    out = channel_mix(conv.weight.view(conv.out_channels, c), conv.bias, x.view(n, c, h * w))  # [N, C_out, h*w]
    return out.view(n, -1, h, w)


class SpectralFilterBlock(nn.Module):
    """Adaptive spectral low-pass block with a residual connection.

    Args:
        channels: feature channels C.
        sigma: Gaussian width in frequency bins, used when no map is passed in.
    """

    def __init__(self, *, channels: int, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.conv1 = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.conv2 = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        # A learnable 3x3 conv without padding (named "laplace" upstream; ordinary default init).
        self.laplace = nn.Conv2d(channels, channels, kernel_size=3, padding=0)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor, gauss: Tensor | None) -> tuple[Tensor, Tensor]:
        """Filter one level.

        Args:
            x: ``[B*T, C, h, w]``.
            gauss: ``[1, 1, h', w']`` map returned by the previous block, or None for the first block.

        Returns:
            ``(x + filtered)`` as float32 ``[B*T, C, h, w]`` and the Gaussian map used, ``[1, 1, h, w]``.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            n, c, h, w = x.shape
            lap_in = x
            if h < 3 or w < 3:  # the official code fails here; zero-pad so tiny inputs still run
                lap_in = F.pad(x, (0, max(0, 3 - w), 0, max(0, 3 - h)))
            coef = mean_of_valid_conv(self.laplace, lap_in)  # [B*T, C]: the conv's output, average-pooled
            alpha = self.fc(coef).view(n, 1, 1, 1)  # [B*T, 1, 1, 1]
            spec = torch.fft.fft2(x)  # complex [B*T, C, h, w]
            if gauss is None:
                gauss = gaussian_map(h, w, self.sigma, x.device)
            else:
                gauss = F.interpolate(gauss, size=(h, w), mode="bilinear", align_corners=False)
            spec = spec * (1 - alpha * gauss)
            z = torch.cat([spec.real, spec.imag], dim=1)  # [B*T, 2C, h, w]
            z = z.to(self.conv1.weight.dtype)  # bf16 weights: sgmg.model.precision
            z = pointwise_conv(self.conv2, F.relu(pointwise_conv(self.conv1, z))).float()
            real, imag = torch.chunk(z, 2, dim=1)
            y = torch.fft.ifft2(torch.complex(real, imag), s=(h, w)).real
            return x + y, gauss


class TextCrossAttention(nn.Module):
    """Visual tokens attend to words; the result gates the visual features (``visual * attn``; no residual/norm).

    Args:
        dim: model width C.
        num_heads: attention heads.
    """

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)

    def forward(self, vis: Tensor, txt_feats: Tensor, txt_pos: Tensor, txt_pad_mask: Tensor) -> Tensor:
        """Gate visual tokens by text.

        Args:
            vis: ``[B, T*h*w, C]`` visual tokens of each video (no position embedding).
            txt_feats: ``[B, S, C]`` word features (values).
            txt_pos: ``[B, S, C]`` 1D position embedding added to the keys.
            txt_pad_mask: bool ``[B, S]``, True at padding.

        Returns:
            ``[B, T*h*w, C]``.
        """
        attended = self.attn(vis, txt_feats + txt_pos, txt_feats, key_padding_mask=txt_pad_mask, need_weights=False)
        return vis * attended[0]


class SpectrumGuidedFusion(nn.Module):
    """Spectral block -> shared text cross-attention -> spectral block, for every level, chaining the Gaussian map.

    Args:
        pre: one :class:`SpectralFilterBlock` per level (before the text gate).
        post: one :class:`SpectralFilterBlock` per level (after the text gate).
        cross_attn: the shared :class:`TextCrossAttention`.
    """

    def __init__(self, *, pre: nn.ModuleList, post: nn.ModuleList, cross_attn: TextCrossAttention) -> None:
        super().__init__()
        self.pre = pre
        self.post = post
        self.cross_attn = cross_attn

    def forward(
        self, srcs: list[Tensor], num_frames: int, txt_feats: Tensor, txt_pos: Tensor, txt_pad_mask: Tensor
    ) -> list[Tensor]:
        """Fuse text into every level.

        Args:
            srcs: per level ``[B*T, C, h, w]`` (finest first; the Gaussian starts at ``srcs[0]``).
            num_frames: T.
            txt_feats: ``[B, S, C]``.
            txt_pos: ``[B, S, C]``.
            txt_pad_mask: bool ``[B, S]``.

        Returns:
            Per level ``[B*T, C, h, w]`` float32.
        """
        gauss = None
        outs = []
        for lvl, x in enumerate(srcs):
            bt, c, h, w = x.shape
            x, gauss = self.pre[lvl](x, gauss)
            tokens = (
                x.view(bt // num_frames, num_frames, c, h * w)
                .permute(0, 1, 3, 2)
                .reshape(bt // num_frames, num_frames * h * w, c)
            )  # [B, T*h*w, C]
            tokens = self.cross_attn(tokens, txt_feats, txt_pos, txt_pad_mask)
            x = tokens.view(bt // num_frames, num_frames, h * w, c).permute(0, 1, 3, 2).reshape(bt, c, h, w)
            x, gauss = self.post[lvl](x, gauss)
            outs.append(x)
        return outs
