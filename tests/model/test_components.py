"""Unit tests of SgMg components: Video Swin + Kinetics loading, spectral fusion, deformable attention, heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sgmg.model.fusion import SpectralFilterBlock, SpectrumGuidedFusion, TextCrossAttention, gaussian_map
from sgmg.model.mask_head import ConditionalMaskHead
from sgmg.model.multi_granularity_refiner import MultiGranularityRefiner
from sgmg.model.ops.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn
from sgmg.model.position_encoding import PositionEmbeddingSine1D, PositionEmbeddingSine2D
from sgmg.model.visual_encoder import VideoSwinTransformer, load_kinetics_weights


def tiny_swin() -> VideoSwinTransformer:
    return VideoSwinTransformer(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)


def test_video_swin_stage_shapes_and_per_frame_features() -> None:
    torch.manual_seed(0)
    enc = tiny_swin().eval()
    video = torch.randn(2, 3, 3, 64, 96)
    outs = enc(video)
    assert [tuple(o.shape) for o in outs] == [(6, 8, 16, 24), (6, 16, 8, 12), (6, 32, 4, 6), (6, 64, 2, 3)]
    # patch 1x4x4 keeps frames apart in the embedding; the 3 frames (<= window 8) attend to each other
    video2 = video.clone()
    video2[0, 2] += 1.0
    outs2 = enc(video2)
    assert torch.equal(outs[0][3:], outs2[0][3:])  # video 1 untouched
    assert not torch.allclose(outs[0][0], outs2[0][0])  # temporal attention mixes frames of video 0


def test_video_swin_long_clip_uses_temporal_windows() -> None:
    """T=10 > window 8: two temporal windows and a temporal shift of 4 in the shifted block."""
    torch.manual_seed(0)
    enc = tiny_swin().eval()
    video = torch.randn(1, 10, 3, 32, 32)
    outs = enc(video)
    assert outs[0].shape == (10, 8, 8, 8)
    video2 = video.clone()
    video2[0, 0] += 1.0
    changed = (enc(video2)[0] - outs[0]).flatten(1).abs().amax(1) > 0  # [T]
    assert changed[0] and changed[1:8].any()  # frame 0 reaches frames of its (shifted) windows


@pytest.mark.parametrize("shift", [(0, 0, 0), (4, 3, 3)])
@pytest.mark.parametrize("shape", [(2, 3, 20, 22, 16), (1, 10, 14, 15, 16)])
def test_fused_window_attention_equals_torchvision(shift: tuple, shape: tuple) -> None:
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    from sgmg.model.visual_encoder import WindowAttention3d

    torch.manual_seed(0)
    ref = ShiftedWindowAttention3d(16, [8, 7, 7], list(shift), 2)
    ours = WindowAttention3d(16, [8, 7, 7], list(shift), 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours(x).square().sum(), x)
    (grad_ref,) = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-6, rtol=1e-5)
    ours(x).sum().backward()
    assert ours.relative_position_bias_table.grad is not None and ours.relative_position_bias_table.grad.abs().sum() > 0
    with torch.inference_mode():  # the edge windows written in place
        torch.testing.assert_close(ours(x.detach()), ref(x.detach()), atol=1e-6, rtol=1e-5)


def test_shift_masks_follow_the_input_grid() -> None:
    """The cached edge-window masks are rebuilt when the grid changes (one module, clips of two sizes in turn)."""
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    from sgmg.model.visual_encoder import WindowAttention3d

    torch.manual_seed(0)
    ref = ShiftedWindowAttention3d(16, [8, 7, 7], [4, 3, 3], 2)
    ours = WindowAttention3d(16, [8, 7, 7], [4, 3, 3], 2)
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for shape in [(1, 9, 14, 21, 16), (2, 3, 28, 14, 16), (1, 9, 14, 21, 16)]:
            x = torch.randn(shape)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


def test_kinetics_release_format_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_swin()
    release = {}
    for key, value in source.state_dict().items():
        parts = key.split(".")
        if parts[0] == "downsamples":
            key = ".".join(["layers", parts[1], "downsample", *parts[2:]])
        release[f"backbone.{key}"] = value.clone()
    kernel = torch.randn(8, 3, 2, 4, 4)
    release["backbone.patch_embed.proj.weight"] = kernel
    release["backbone.norm.weight"] = torch.ones(64)
    release["backbone.norm.bias"] = torch.zeros(64)
    release["cls_head.fc_cls.weight"] = torch.zeros(400, 64)
    path = tmp_path / "swin_kinetics.pth"
    torch.save({"state_dict": release, "meta": {"epoch": 30}}, path)

    target = tiny_swin()
    load_kinetics_weights(target, path)
    torch.testing.assert_close(target.patch_embed.proj.weight, kernel.sum(2, keepdim=True))
    torch.testing.assert_close(target.downsamples[1].reduction.weight, source.downsamples[1].reduction.weight)
    qkv = target.layers[0].blocks[1].attn.qkv.weight
    torch.testing.assert_close(qkv, source.layers[0].blocks[1].attn.qkv.weight)

    release["backbone.layers.0.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": release}, path)
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.mlp\.fc1\.weight"):
        load_kinetics_weights(tiny_swin(), path)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="state_dict"):
        load_kinetics_weights(tiny_swin(), path)
    with pytest.raises(FileNotFoundError):
        load_kinetics_weights(tiny_swin(), tmp_path / "missing.pth")


def test_gaussian_is_centred_on_the_unshifted_nyquist_bin() -> None:
    g = gaussian_map(6, 9, 2.0, torch.device("cpu"))[0, 0]
    assert g.shape == (6, 9) and g[3, 4] == 1.0
    assert g[0, 0] < 0.1 and g[3, 5] == pytest.approx(torch.exp(torch.tensor(-1 / 8)).item())


def test_spectral_block_runs_fp32_under_autocast_and_chains_the_map() -> None:
    torch.manual_seed(0)
    block = SpectralFilterBlock(channels=8, sigma=7.0)
    x = torch.randn(2, 8, 12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, g = block(x.bfloat16(), None)
    assert y.dtype == torch.float32 and g.shape == (1, 1, 12, 10)
    y2, g2 = block(x, g)
    assert g2.shape == (1, 1, 12, 10)
    torch.testing.assert_close(g2, g)  # same size: the resize is the identity
    _, g3 = block(torch.randn(2, 8, 6, 5), g)
    torch.testing.assert_close(g3, F.interpolate(g, size=(6, 5), mode="bilinear", align_corners=False))
    # zero spectrum mixing => output equals the input (residual only)
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    out, _ = block(x, None)
    torch.testing.assert_close(out, x)


def test_fusion_gates_every_level_and_respects_text_padding() -> None:
    torch.manual_seed(0)
    dim, levels = 32, 2
    fusion = SpectrumGuidedFusion(
        pre=torch.nn.ModuleList(SpectralFilterBlock(channels=dim, sigma=7.0) for _ in range(levels)),
        post=torch.nn.ModuleList(SpectralFilterBlock(channels=dim, sigma=7.0) for _ in range(levels)),
        cross_attn=TextCrossAttention(dim=dim, num_heads=4),
    ).eval()
    srcs = [torch.randn(4, dim, 8, 8), torch.randn(4, dim, 4, 4)]  # B=2, T=2
    txt = torch.randn(2, 5, dim)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    pos = PositionEmbeddingSine1D(num_feats=dim)(pad)
    out = fusion(srcs, 2, txt, pos, pad)
    assert [o.shape for o in out] == [s.shape for s in srcs]
    txt2 = txt.clone()
    txt2[1, 3:] = 100.0  # padded words must not matter
    out2 = fusion(srcs, 2, txt2, pos, pad)
    for a, b in zip(out, out2, strict=True):
        torch.testing.assert_close(a, b)


def _reference_ms_deform_attn(value, shapes, loc, weights):
    """Straightforward per-level, per-point bilinear sampling (float64)."""
    b, _, m, d = value.shape
    out = torch.zeros(b, loc.shape[1], m, d, dtype=value.dtype)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        start += h * w
        for p in range(loc.shape[4]):
            grid = (2 * loc[:, :, :, lvl, p] - 1).transpose(1, 2).reshape(b * m, -1, 1, 2)
            s = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*M, D, Lq, 1]
            s = s[..., 0].view(b, m, d, -1).permute(0, 3, 1, 2)
            out += s * weights[:, :, :, lvl, p, None]
    return out.flatten(2)


def test_ms_deform_attn_matches_reference() -> None:
    torch.manual_seed(0)
    shapes = [(6, 7), (3, 4)]
    value = torch.randn(2, 6 * 7 + 3 * 4, 2, 4, dtype=torch.float64)
    loc = torch.rand(2, 5, 2, 2, 3, 2, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 5, 2, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(
        ms_deform_attn(value, shapes, loc, weights), _reference_ms_deform_attn(value, shapes, loc, weights)
    )


def test_deformable_attention_ignores_padded_values() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=16, num_levels=1, num_heads=2, num_points=2)
    query = torch.randn(1, 3, 16)
    ref = torch.rand(1, 3, 1, 2)
    value = torch.randn(1, 20, 16)
    pad = torch.zeros(1, 20, dtype=torch.bool)
    pad[0, 10:] = True
    a = attn(query, ref, value, [(4, 5)], pad)
    value2 = value.clone()
    value2[0, 10:] = 50.0
    torch.testing.assert_close(a, attn(query, ref, value2, [(4, 5)], pad))


def test_position_embeddings_follow_the_valid_region() -> None:
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 4:] = True
    pos = PositionEmbeddingSine2D(num_feats=8)(mask)
    assert pos.shape == (1, 16, 4, 6)
    full = PositionEmbeddingSine2D(num_feats=8)(torch.zeros(1, 4, 4, dtype=torch.bool))
    torch.testing.assert_close(pos[..., :4], full)


def test_conditional_mask_head_relative_coordinates_in_pixels() -> None:
    torch.manual_seed(0)
    head = ConditionalMaskHead(dim=8, mask_channels=4, num_layers=1, rel_coord=True)
    feats = torch.zeros(1, 1, 8, 2, 3)
    queries = torch.randn(1, 1, 1, 8)
    # one layer; make the output = x-offset channel only
    with torch.no_grad():
        last = head.controller.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        bias = torch.zeros(4 * 10 + 4)
        for k in range(4):
            bias[k * 10 + 8] = 1.0  # weight of the x-offset input for output channel k
        last.bias.copy_(bias)
    centers = torch.tensor([[[[0.5, 0.5]]]])
    out = head(feats, queries, centers, torch.tensor([[16, 24]]))  # image h=16, w=24 -> centre x = 12 px
    expected = 12.0 - (torch.arange(3) * 8 + 4.0)  # minus cell centres x*8+4
    torch.testing.assert_close(out[0, 0, 0, 0], expected.expand(2, 3))


def test_refiner_output_is_full_resolution() -> None:
    refiner = MultiGranularityRefiner(mask_channels=16, feat_channels_s4=4, feat_channels_s8=8, patch_size=4)
    out = refiner(torch.randn(3, 16, 5, 6), torch.randn(3, 4, 10, 12), torch.randn(3, 8, 5, 6))
    assert out.shape == (3, 40, 48)


def test_text_encoder_mean_pooling_ignores_padding() -> None:
    from transformers import BertConfig, BertModel

    from sgmg.model.text_encoder import TextEncoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    bert = BertModel(cfg, add_pooling_layer=True).eval()
    mean, pooler = TextEncoder(model=bert, freeze=True, pooling="mean"), TextEncoder(model=bert, freeze=True)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    words, sentence, pad = mean(ids, am)
    assert torch.allclose(sentence[0], words[0, :3].mean(0)) and torch.allclose(sentence[1], words[1].mean(0))
    _, alone, _ = mean(ids[:1, :3], am[:1, :3])  # the same sentence without padding
    assert torch.allclose(alone[0], sentence[0], atol=1e-6)
    assert torch.equal(pooler(ids, am)[1], bert(input_ids=ids, attention_mask=am).pooler_output)
    assert pad.tolist() == [[False, False, False, True, True], [False] * 5]
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(model=bert, freeze=True, pooling="max")


def test_text_feature_cache_gives_the_encoders_features_once_per_sentence() -> None:
    from transformers import BertConfig, BertModel

    from sgmg.config import TextEncoderConfig
    from sgmg.model.text_encoder import TextEncoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.5  # train mode would show
    bert = BertModel(cfg, add_pooling_layer=True)
    plain = TextEncoder(model=bert, freeze=True, pooling="mean").eval()
    cached = TextEncoder(model=bert, freeze=True, pooling="mean", frozen_dropout=False, cache_size=2).train()
    assert not bert.training  # a dropout-free frozen encoder stays in eval mode under model.train()
    calls = []
    bert.register_forward_hook(lambda _m, _i, _o: calls.append(1))
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want_words, want_sentence, want_pad = plain(ids, am)
    calls.clear()
    for _ in range(2):  # cold, then warm: the same features, the encoder run once for the 2 distinct sentences
        words, sentence, pad = cached(ids, am)
        assert torch.equal(pad, want_pad)
        torch.testing.assert_close(sentence, want_sentence, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(words[~pad], want_words[~pad], atol=1e-6, rtol=1e-6)
        assert not words[pad].any()  # padding positions are zeros (every consumer masks them)
    assert len(calls) == 1
    cached(ids[:1, :4] + 1, am[:1, :4])  # a third sentence: the least recently used one goes
    assert len(cached._cache) == 2
    cached.load_state_dict(cached.state_dict())  # new weights: nothing kept
    assert len(cached._cache) == 0
    with pytest.raises(ValueError, match="frozen_dropout"):
        TextEncoder(model=bert, freeze=True, cache_size=2)
    with pytest.raises(ValueError, match="frozen_dropout=false"):
        TextEncoderConfig(feature_cache=8)
    with pytest.raises(ValueError, match=">= 0"):
        TextEncoderConfig(feature_cache=-1, frozen_dropout=False)
