"""train_step / validation_step: stepping, accumulation, non-finite policy, precision."""

from __future__ import annotations

import copy

import pytest
import torch
from train_toys import ToyModel, toy_batch

from sgmg.loss.criterion import SgMgCriterion
from sgmg.loss.matcher import InstanceSequenceMatcher
from sgmg.train.step import NonFiniteGuard, train_step


def make_criterion() -> SgMgCriterion:
    return SgMgCriterion(matcher=InstanceSequenceMatcher())


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_step_updates_parameters_and_reports(toy_model: ToyModel, batch) -> None:
    opt = torch.optim.AdamW(toy_model.parameters(), lr=1e-2)
    before = params_of(toy_model)
    m = train_step(toy_model, make_criterion(), batch, opt, clip_max_norm=0.1, nonfinite=NonFiniteGuard(3))
    assert m.stepped and not m.skipped_nonfinite
    assert m.grad_norm is not None and m.grad_norm > 0.1  # reported before clipping
    assert m.num_boxes == 3.0  # 2 + 1 visible frames
    assert {"loss", "loss_ce", "loss_dice_low", "loss_mask_0"} <= set(m.terms)
    assert m.loss == pytest.approx(m.terms["loss"])
    changed = [n for n, p in toy_model.named_parameters() if not torch.equal(p, before[n])]
    assert set(changed) == set(before)  # every parameter of the toy model is reached by the loss
    assert all(p.grad is None for p in toy_model.parameters())  # zeroed after the step


def test_grad_norm_is_the_pre_clipping_norm(toy_model: ToyModel, batch) -> None:
    ref = copy.deepcopy(toy_model)
    make = make_criterion()
    from sgmg.loss.matcher import make_query_selector

    sel = make_query_selector(make.matcher, batch.targets)
    ref.train()
    out = ref(batch.video, batch.input_ids, batch.attention_mask, query_selector=sel)
    make(out, batch.targets, sel.matches).total.backward()
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    opt = torch.optim.SGD(toy_model.parameters(), lr=0.0)
    m = train_step(toy_model, make, batch, opt, clip_max_norm=1e-3, nonfinite=NonFiniteGuard(3))
    assert m.grad_norm == pytest.approx(float(want), rel=1e-5)


def test_accumulation_of_the_same_batch_equals_one_step(batch) -> None:
    torch.manual_seed(0)
    one = ToyModel()
    two = copy.deepcopy(one)
    opt_one = torch.optim.SGD(one.parameters(), lr=0.1)
    opt_two = torch.optim.SGD(two.parameters(), lr=0.1)
    guard = NonFiniteGuard(3)
    train_step(one, make_criterion(), batch, opt_one, clip_max_norm=0, nonfinite=guard)
    first = train_step(
        two, make_criterion(), batch, opt_two, accum_steps=2, step_index=0, clip_max_norm=0, nonfinite=guard
    )
    assert not first.stepped and first.grad_norm is None
    second = train_step(
        two, make_criterion(), batch, opt_two, accum_steps=2, step_index=1, clip_max_norm=0, nonfinite=guard
    )
    assert second.stepped
    for (name, p1), p2 in zip(one.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, msg=name)


def test_nonfinite_loss_skips_then_raises(toy_model: ToyModel, batch) -> None:
    opt = torch.optim.AdamW(toy_model.parameters(), lr=1e-2)
    guard = NonFiniteGuard(max_in_a_row=3)
    crit = make_criterion()
    toy_model.poison = True
    before = params_of(toy_model)
    for i in range(2):
        m = train_step(toy_model, crit, batch, opt, step_index=i, nonfinite=guard)
        assert m.skipped_nonfinite and not m.stepped and m.nonfinite_total == i + 1
    assert all(torch.equal(p, before[n]) for n, p in toy_model.named_parameters())
    toy_model.poison = False  # a finite step resets the run of bad ones
    assert train_step(toy_model, crit, batch, opt, step_index=2, nonfinite=guard).stepped
    assert guard.in_a_row == 0 and guard.total == 2
    toy_model.poison = True
    for i in range(2):
        train_step(toy_model, crit, batch, opt, step_index=3 + i, nonfinite=guard)
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row"):
        train_step(toy_model, crit, batch, opt, step_index=5, nonfinite=guard)


def test_nonfinite_gradient_skips_step(toy_model: ToyModel, batch) -> None:
    opt = torch.optim.SGD(toy_model.parameters(), lr=0.1)
    guard = NonFiniteGuard(3)
    toy_model.box_logits.register_hook(lambda g: g * float("inf"))
    before = params_of(toy_model)
    m = train_step(toy_model, make_criterion(), batch, opt, nonfinite=guard)
    assert m.skipped_nonfinite and not m.stepped and guard.total == 1
    assert all(torch.equal(p, before[n]) for n, p in toy_model.named_parameters())


def test_bf16_autocast_on_cpu(toy_model: ToyModel) -> None:
    opt = torch.optim.AdamW(toy_model.parameters(), lr=1e-3)
    m = train_step(
        toy_model, make_criterion(), toy_batch(seed=1), opt, amp_dtype=torch.bfloat16, nonfinite=NonFiniteGuard(3)
    )
    assert m.stepped and torch.isfinite(torch.tensor(m.loss))


def test_train_step_needs_targets(toy_model: ToyModel, batch) -> None:
    batch.targets = None
    with pytest.raises(ValueError, match="targets"):
        train_step(
            toy_model,
            make_criterion(),
            batch,
            torch.optim.SGD(toy_model.parameters(), lr=0.1),
            nonfinite=NonFiniteGuard(3),
        )


def test_guard_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_in_a_row"):
        NonFiniteGuard(0)


def test_validation_step_scores_best_query_and_restores_mode(toy_model: ToyModel, batch) -> None:
    from sgmg.eval.metrics import jaccard
    from sgmg.train.step import validation_step

    toy_model.train()
    metrics = validation_step(toy_model, batch, make_criterion())
    assert toy_model.training  # restored
    toy_model.eval()
    with torch.no_grad():
        pred = toy_model(batch.video, batch.input_ids, batch.attention_mask).pred_masks > 0  # [B, T, H, W]
    want = [float(jaccard(t.masks[0].bool().numpy(), pred[i].numpy()).mean()) for i, t in enumerate(batch.targets)]
    assert [j for j, _ in metrics.per_video] == pytest.approx(want)
    assert metrics.j == pytest.approx(sum(want) / 2) and 0 <= metrics.f <= 1
    assert metrics.loss is not None and metrics.loss > 0
    assert not toy_model.training  # an eval-mode model stays in eval mode
    validation_step(toy_model, batch)
    assert not toy_model.training


def test_accumulation_skips_ddp_sync_inside_the_window(batch) -> None:
    import contextlib

    class SyncCounting(ToyModel):
        def __init__(self) -> None:
            super().__init__()
            self.no_sync_calls = 0

        @contextlib.contextmanager
        def no_sync(self):
            self.no_sync_calls += 1
            yield

    model = SyncCounting()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteGuard(3)
    for i in range(4):
        train_step(model, make_criterion(), batch, opt, accum_steps=2, step_index=i, nonfinite=guard)
    assert model.no_sync_calls == 2  # micro-batches 0 and 2; 1 and 3 end a window and synchronise


def test_grad_scaler_path_skips_overflow_without_counting_it(toy_model: ToyModel, batch) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt = torch.optim.SGD(toy_model.parameters(), lr=0.1)
    guard = NonFiniteGuard(1)
    before = params_of(toy_model)
    assert train_step(toy_model, make_criterion(), batch, opt, scaler=scaler, nonfinite=guard).stepped
    assert any(not torch.equal(p, before[n]) for n, p in toy_model.named_parameters())
    handle = toy_model.box_logits.register_hook(lambda g: g * float("inf"))
    m = train_step(toy_model, make_criterion(), batch, opt, scaler=scaler, nonfinite=guard)
    handle.remove()
    assert not m.stepped and not m.skipped_nonfinite and guard.total == 0
    assert scaler.get_scale() == 2.0**7  # halved by the overflow


def test_trainer_logs_the_time_spent_waiting_for_batches(toy_model, batch) -> None:
    """``StepInfo.window.data_seconds``: the seconds the loop waited for its batches (here, a slow input pipeline)."""
    import time

    from sgmg.train.config import TrainConfig
    from sgmg.train.trainer import Trainer, TrainerHooks

    def slow_batches():
        while True:
            time.sleep(0.05)
            yield 0, batch

    cfg = TrainConfig(max_steps=4, log_every=2, checkpoint_every=100)
    windows = []
    hooks = TrainerHooks(
        log=lambda info: windows.append(info.window), validate=lambda info: {}, checkpoint=lambda *a: None
    )
    Trainer(cfg, toy_model, device=torch.device("cpu"), steps_per_epoch=10).fit(slow_batches(), hooks)
    assert [w.steps for w in windows] == [2, 2]
    for w in windows:
        assert 0.1 <= w.data_seconds <= w.seconds and 0 < w.data_share <= 1
