"""SgMg: Spectrum-guided Multi-granularity referring video object segmentation (Miao et al., ICCV 2023).

Wiring only: visual and text encoders -> input projections -> spectrum-guided fusion -> deformable transformer with
language-guided queries -> class/box heads with iterative refinement -> conditional patch kernels -> multi-granularity
refiner. Follows github.com/bo-miao/SgMg ``models/sgmg.py`` (facts only; re-implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.layers import MLP, refine_boxes, resize_bicubic
from sgmg.model.outputs import LayerOutput, SgMgOutput, VisualFeatures
from sgmg.model.position_encoding import PositionEmbeddingSine1D, PositionEmbeddingSine2D

QuerySelector = Callable[[int, Tensor, Tensor, Tensor], Tensor]

TRAIN_PAD_MULTIPLE = 32
"""Training inputs are zero-padded (bottom/right) to a multiple of this many pixels (official)."""
EVAL_PAD_MULTIPLE = 16
"""Eval inputs are zero-padded to a multiple of this many pixels (official inference)."""


class SgMg(nn.Module):
    """The SgMg model.

    Args:
        visual_encoder: video backbone, ``[B, T, 3, H, W] -> 4 maps [B*T, C_i, H/s, W/s]``, s = 4, 8, 16, 32.
        visual_channels: channels of those 4 maps.
        text_encoder: :class:`~sgmg.model.text_encoder.TextEncoder`.
        text_proj: word-feature projection to ``hidden_dim``.
        sentence_proj: sentence-feature projection to ``hidden_dim``.
        fusion: :class:`~sgmg.model.fusion.SpectrumGuidedFusion`.
        transformer: :class:`~sgmg.model.deformable_transformer.DeformableTransformer`.
        mask_head: :class:`~sgmg.model.mask_head.ConditionalMaskHead`.
        refiner: :class:`~sgmg.model.multi_granularity_refiner.MultiGranularityRefiner`.
        hidden_dim: model width C.
        num_queries: queries per frame Q.
        num_decoder_layers: N.
    """

    def __init__(
        self,
        *,
        visual_encoder: nn.Module,
        visual_channels: list[int],
        text_encoder: nn.Module,
        text_proj: nn.Module,
        sentence_proj: nn.Module,
        fusion: nn.Module,
        transformer: nn.Module,
        mask_head: nn.Module,
        refiner: nn.Module,
        hidden_dim: int,
        num_queries: int,
        num_decoder_layers: int,
    ) -> None:
        super().__init__()
        self.visual_encoder = visual_encoder
        self.text_encoder = text_encoder
        self.text_proj = text_proj
        self.sentence_proj = sentence_proj
        self.fusion = fusion
        self.transformer = transformer
        self.mask_head = mask_head
        self.refiner = refiner
        self.num_queries = num_queries
        self.position_encoding = PositionEmbeddingSine2D(num_feats=hidden_dim // 2)
        self.text_pos = PositionEmbeddingSine1D(num_feats=hidden_dim)
        dim = hidden_dim
        proj = [nn.Sequential(nn.Conv2d(ch, dim, 1), nn.GroupNorm(32, dim)) for ch in visual_channels[1:]]
        proj.append(nn.Sequential(nn.Conv2d(visual_channels[-1], dim, 3, stride=2, padding=1), nn.GroupNorm(32, dim)))
        self.input_proj = nn.ModuleList(proj)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(num_decoder_layers))
        self.bbox_embed = nn.ModuleList(
            MLP(input_dim=dim, hidden_dim=dim, output_dim=4, num_layers=3) for _ in range(num_decoder_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Init of the parts owned here: heads cloned from one init (class bias -4.595, last box layer 0 with w,h
        bias -2 on layer 0 only), input projections xavier/0, query embedding N(0,1)."""
        nn.init.normal_(self.query_embed.weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.class_embed[0].reset_parameters()
        nn.init.constant_(self.class_embed[0].bias, -math.log((1 - 0.01) / 0.01))
        for layer in self.bbox_embed[0].layers:
            layer.reset_parameters()
        nn.init.zeros_(self.bbox_embed[0].layers[-1].weight)
        nn.init.zeros_(self.bbox_embed[0].layers[-1].bias)
        for cls_head, box_head in zip(self.class_embed[1:], self.bbox_embed[1:], strict=True):
            cls_head.load_state_dict(self.class_embed[0].state_dict())
            box_head.load_state_dict(self.bbox_embed[0].state_dict())
        with torch.no_grad():
            self.bbox_embed[0].layers[-1].bias[2:] = -2.0

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute Swin blocks and transformer layers in backward (training only)."""
        self.visual_encoder.set_gradient_checkpointing(enabled)
        self.transformer.gradient_checkpointing = enabled

    def forward(
        self,
        video: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        pad_mask: Tensor | None = None,
        query_selector: QuerySelector | None = None,
        video_index: Tensor | None = None,
    ) -> SgMgOutput:
        """Segment the referred object: :meth:`encode_video` then :meth:`decode`.

        Args:
            video: ``[B, T, 3, H, W]`` ImageNet-normalised frames; padded here to a multiple of 32 (train) or 16 (eval).
            input_ids: ``[B, S]`` token ids of the text encoder's tokenizer (``[N, S]`` with ``video_index``).
            attention_mask: ``[B, S]`` 1 at tokens, 0 at padding (``[N, S]`` with ``video_index``).
            pad_mask: optional bool ``[B, H, W]``, True where ``video`` is already padding (bottom/right).
            query_selector: training only; ``(layer, logits [B,T,Q], boxes [B,T,Q,4], masks_low [B,T,Q,H/2,W/2])
                -> [B, K]`` picks the queries refined for each decoder layer (called under no_grad). None: all Q.
            video_index: optional long ``[N]``: expression n refers to video ``video_index[n]`` (several expressions
                per video share its visual encoding); the outputs then have N rows instead of B.

        Returns:
            :class:`SgMgOutput`. Eval: ``pred_logits [B,T,Q]``, ``pred_boxes [B,T,Q,4]``, ``best_query [B]``,
            ``pred_masks [B,T,H,W]`` (best query, cropped to the input size) and ``layers`` = [last layer]. Train:
            ``layers`` has one :class:`LayerOutput` per decoder layer and ``pred_masks`` is ``[B,T,K,H',W']`` (padded).
        """
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        b = video.shape[0] if video_index is None else video_index.shape[0]
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or input_ids.shape[0] != b:
            raise ValueError(
                f"input_ids and attention_mask must both be [{'B' if video_index is None else 'N'}={b}, S], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        visual = self.encode_video(video, pad_mask)
        return self.decode(visual, input_ids, attention_mask, video_index=video_index, query_selector=query_selector)

    def encode_video(self, video: Tensor, pad_mask: Tensor | None = None) -> VisualFeatures:
        """The text-independent half: backbone, input projections, padding masks and position embeddings.

        Args:
            video: ``[B, T, 3, H, W]`` ImageNet-normalised frames; padded here to a multiple of 32 (train) or 16 (eval).
            pad_mask: optional bool ``[B, H, W]``, True where ``video`` is already padding (bottom/right).

        Returns:
            :class:`VisualFeatures`, to :meth:`decode` with one or several expressions per video.
        """
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        b, t, _, h, w = video.shape
        if pad_mask is not None and pad_mask.shape != (b, h, w):
            raise ValueError(f"pad_mask must be bool [B, H, W] = {(b, h, w)}, got {tuple(pad_mask.shape)}")
        mult = TRAIN_PAD_MULTIPLE if self.training else EVAL_PAD_MULTIPLE
        hp, wp = -(-h // mult) * mult, -(-w // mult) * mult
        video = F.pad(video, (0, wp - w, 0, hp - h))
        mask = torch.ones(b, hp, wp, dtype=torch.bool, device=video.device)
        mask[:, :h, :w] = False if pad_mask is None else pad_mask
        image_size = torch.stack([(~mask).any(2).sum(1), (~mask).any(1).sum(1)], -1)  # [B, 2] as (h, w)
        frame_mask = mask.repeat_interleave(t, 0)[None].float()  # [1, B*T, H, W]

        feats = self.visual_encoder(video)  # 4 x [B*T, C_i, h_i, w_i]
        srcs = [proj(f) for proj, f in zip(self.input_proj[:-1], feats[1:], strict=True)]
        srcs.append(self.input_proj[-1](feats[-1]))
        masks = [F.interpolate(frame_mask, size=s.shape[-2:])[0].bool() for s in srcs]  # L x [B*T, h, w]
        poses = [self.position_encoding(m).to(s.dtype) for s, m in zip(srcs, masks, strict=True)]
        return VisualFeatures(list(feats), srcs, masks, poses, image_size, t, (h, w), (hp, wp))

    def decode(
        self,
        visual: VisualFeatures,
        input_ids: Tensor,
        attention_mask: Tensor,
        video_index: Tensor | None = None,
        query_selector: QuerySelector | None = None,
    ) -> SgMgOutput:
        """The text-dependent half: text encoder, spectrum-guided fusion, transformer, heads and refiner.

        Args:
            visual: :meth:`encode_video` of B videos.
            input_ids: ``[N, S]`` token ids, one expression per row.
            attention_mask: ``[N, S]``.
            video_index: ``[N]`` long, the video (in ``visual``) each expression refers to; None: row i is video i
                (N = B). Several expressions of one video share its visual features.
            query_selector: as in :meth:`forward` (training).

        Returns:
            :class:`SgMgOutput` with N rows, as :meth:`forward` describes.
        """
        if video_index is not None:
            visual = visual.select(video_index.to(visual.image_size.device))
        b, t = visual.num_videos, visual.num_frames
        (h, w), (hp, wp) = visual.input_size, visual.padded_size
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or input_ids.shape[0] != b:
            raise ValueError(
                f"input_ids and attention_mask must both be [N={b}, S], got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        feats, masks, poses, image_size = visual.backbone, visual.masks, visual.poses, visual.image_size
        txt, sentence, txt_pad_mask = self.text_encoder(input_ids, attention_mask)
        txt, sentence = self.text_proj(txt), self.sentence_proj(sentence)  # [B, S, C], [B, C]
        srcs = self.fusion(list(visual.srcs), t, txt, self.text_pos(txt_pad_mask), txt_pad_mask)

        c = sentence.shape[-1]
        q = self.num_queries
        tgt = sentence[:, None, None].expand(b, t, q, c).reshape(b * t, q, c)  # [B*T, Q, C]
        query_pos = self.query_embed.weight[None].expand(b * t, q, c)  # [B*T, Q, C]
        hs, memory, init_ref, refs = self.transformer(srcs, masks, poses, tgt, query_pos, self.bbox_embed)

        mask_feats = memory[0] + sum(resize_bicubic(m, memory[0].shape[-2:]) for m in memory[1:])
        mask_feats = mask_feats.view(b, t, *mask_feats.shape[1:])  # [B, T, C, h8, w8]
        feats_s4 = feats[0].view(b, t, *feats[0].shape[1:])  # [B, T, C4, H/4, W/4]
        feats_s8 = feats[1].view(b, t, *feats[1].shape[1:])  # [B, T, C8, H/8, W/8]

        layers = []
        layer_ids = range(len(hs)) if self.training else [len(hs) - 1]
        for lvl in layer_ids:
            logits = self.class_embed[lvl](hs[lvl])[..., 0].view(b, t, q)  # [B, T, Q]
            delta = self.bbox_embed[lvl](hs[lvl])  # [B*T, Q, 4]
            boxes = refine_boxes(delta, init_ref if lvl == 0 else refs[lvl - 1]).view(b, t, q, 4)
            centers = refs[lvl][..., :2].reshape(b, t, q, 2)
            patch = self.mask_head(mask_feats, hs[lvl].view(b, t, q, c), centers, image_size)  # [B,T,Q,16,h8,w8]
            low = F.pixel_shuffle(patch.flatten(0, 2), self.refiner.patch_size).view(b, t, q, hp // 2, wp // 2)
            if self.training:
                if query_selector is None:
                    selected = torch.arange(q, device=image_size.device).expand(b, q)
                else:
                    with torch.no_grad():
                        selected = query_selector(lvl, logits.detach(), boxes.detach(), low.detach())
                    selected = torch.as_tensor(selected, dtype=torch.long, device=image_size.device)
                    if selected.dim() != 2 or selected.shape[0] != b:
                        raise ValueError(f"query_selector must return [B={b}, K] indices, got {tuple(selected.shape)}")
            else:
                selected = _best_query(logits)[:, None]
            refined = self._refine(patch, selected, feats_s4, feats_s8)  # [B, T, K, H, W]
            layers.append(LayerOutput(logits, boxes, low, selected, refined))

        last = layers[-1]
        best = _best_query(last.pred_logits)
        if self.training:
            return SgMgOutput(last.pred_logits, last.pred_boxes, best, last.pred_masks, layers)
        return SgMgOutput(last.pred_logits, last.pred_boxes, best, last.pred_masks[:, :, 0, :h, :w], layers)

    def _refine(self, patch: Tensor, selected: Tensor, feats_s4: Tensor, feats_s8: Tensor) -> Tensor:
        """Refine the selected queries: ``patch [B,T,Q,16,h8,w8]``, ``selected [B,K]`` -> ``[B,T,K,H,W]``."""
        b, t = patch.shape[:2]
        k = selected.shape[1]
        idx = selected[:, None, :, None, None, None].expand(b, t, k, *patch.shape[3:])
        picked = torch.gather(patch, 2, idx).transpose(1, 2).flatten(0, 2)  # [B*K*T, 16, h8, w8]
        s4 = feats_s4[:, None].expand(b, k, *feats_s4.shape[1:]).flatten(0, 2)  # [B*K*T, C4, H/4, W/4]
        s8 = feats_s8[:, None].expand(b, k, *feats_s8.shape[1:]).flatten(0, 2)  # [B*K*T, C8, H/8, W/8]
        out = self.refiner(picked, s4, s8)  # [B*K*T, H, W]
        return out.view(b, k, t, *out.shape[-2:]).transpose(1, 2)  # [B, T, K, H, W]


def _best_query(logits: Tensor) -> Tensor:
    """Official rule: ``argmax_q mean_t sigmoid(logits)``; ``[B, T, Q] -> [B]``."""
    return logits.sigmoid().mean(1).argmax(-1)
