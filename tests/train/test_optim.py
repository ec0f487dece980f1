"""Parameter groups, LR scaling, step schedule, score-head re-initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from train_toys import ToyModel

from sgmg.train.config import OptimConfig
from sgmg.train.optim import build_optimizer, lr_scale, param_groups, reinit_score_heads
from sgmg.train.schedule import build_scheduler, milestone_steps


def test_groups_cover_trainable_parameters_exactly_once() -> None:
    model = ToyModel()
    model.text_encoder.weight.requires_grad_(False)
    groups = param_groups(model, OptimConfig())
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"visual_encoder", "linear_proj", "rest"}  # the frozen text group is dropped
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable) and len(set(listed)) == len(listed)
    assert by_name["visual_encoder"]["lr"] == 5e-5
    assert by_name["linear_proj"]["param_names"] == [
        "transformer.sampling_offsets.weight",
        "transformer.sampling_offsets.bias",
    ]
    assert by_name["rest"]["lr"] == 1e-4 and all(g["weight_decay"] == 5e-4 for g in groups)


def test_sgmg_tiny_groups_cover_every_trainable_parameter() -> None:
    from sgmg.zoo import build_model

    model = build_model("sgmg_tiny", **{"text.freeze": False})
    groups = param_groups(model, OptimConfig(lr_linear_proj_mult=0.5))
    names = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(set(names)) == len(names)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"visual_encoder", "text_encoder", "linear_proj", "rest"}
    assert all(n.startswith("visual_encoder.") for n in by_name["visual_encoder"]["param_names"])
    assert all(n.startswith("text_encoder.") for n in by_name["text_encoder"]["param_names"])
    assert by_name["linear_proj"]["param_names"]
    assert all("sampling_offsets" in n or "reference_points" in n for n in by_name["linear_proj"]["param_names"])
    assert by_name["linear_proj"]["lr"] == pytest.approx(5e-5) and by_name["text_encoder"]["lr"] == 1e-5


def test_linear_lr_scaling_reproduces_the_official_two_gpu_rates() -> None:
    cfg = OptimConfig(lr_scaling="linear", lr_reference_world_size=8)
    assert lr_scale(cfg, 2) == 0.25
    lrs = {g["name"]: g["lr"] for g in param_groups(ToyModel(), cfg, world_size=2)}
    assert lrs["rest"] == pytest.approx(2.5e-5) and lrs["visual_encoder"] == pytest.approx(1.25e-5)
    assert lrs["text_encoder"] == pytest.approx(2.5e-6)
    scratch = OptimConfig(lr_scaling="linear", lr_reference_world_size=4)
    assert {g["name"]: g["lr"] for g in param_groups(ToyModel(), scratch, 2)}["rest"] == pytest.approx(5e-5)
    assert lr_scale(OptimConfig(), 16) == 1.0  # "none" ignores the world size
    with pytest.raises(ValueError, match="world_size"):
        lr_scale(cfg, 0)


def test_optimizer_is_adamw_with_the_groups() -> None:
    opt = build_optimizer(ToyModel(), OptimConfig(betas=(0.8, 0.9)))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["visual_encoder", "text_encoder", "linear_proj", "rest"]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_optimizer_uses_the_fused_kernel_on_cpu_with_the_same_updates() -> None:
    torch.manual_seed(0)
    fused_model, plain_model = ToyModel(), ToyModel()
    plain_model.load_state_dict(fused_model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=1e-4)
    fused = build_optimizer(fused_model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.AdamW(
        param_groups(plain_model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    assert not any(g["fused"] for g in plain.param_groups)
    for step in range(5):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            grads = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=grads)
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_step_schedule_in_epochs_and_steps() -> None:
    cfg = OptimConfig(lr_milestones=(3, 5))
    assert milestone_steps(cfg, steps_per_epoch=10) == [30, 50]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        milestone_steps(cfg)
    opt = build_optimizer(ToyModel(), OptimConfig(lr_milestones=(2, 4), schedule_unit="step"))
    sched = build_scheduler(opt, OptimConfig(lr_milestones=(2, 4), schedule_unit="step"))
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[-1]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6])


def test_default_milestones_follow_the_unit() -> None:
    # the official (3, 5) are epochs; read as steps they would cut the LR 100x by step 5 (a sweep trained at lr/100)
    assert milestone_steps(OptimConfig(), steps_per_epoch=10) == [30, 50]
    assert milestone_steps(OptimConfig(schedule_unit="step")) == []
    assert milestone_steps(OptimConfig(schedule_unit="step", lr_milestones=(7,))) == [7]
    assert milestone_steps(OptimConfig(schedule_unit="epoch", lr_milestones=()), steps_per_epoch=10) == []


def test_reinit_score_heads_only_touches_class_embed() -> None:
    model = ToyModel()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    names = reinit_score_heads(model)
    assert sorted(names) == sorted(f"class_embed.{i}.{k}" for i in range(2) for k in ("weight", "bias"))
    for head in model.class_embed:
        assert torch.allclose(head.bias, torch.full_like(head.bias, -math.log(99)))
        assert not torch.equal(head.weight, torch.full_like(head.weight, 0.5))
    assert torch.equal(model.box_logits, torch.full_like(model.box_logits, 0.5))
    with pytest.raises(ValueError, match="class_embed"):
        reinit_score_heads(torch.nn.Linear(2, 2))
