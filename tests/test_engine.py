"""The training engine (prefgame.train.engine): the one optimizer step every trainer calls, its metric
averaging, and the shared optimization config section."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from accelerate import Accelerator

from prefgame.errors import PrefgameError
from prefgame.train.engine import MetricMeter, NonFiniteGuard, OptimConfig, TrainConfig, make_optimizer, optimizer_step
from prefgame.train.ppo import PPOTrainConfig
from prefgame.train.selfplay import SelfPlayTrainConfig


def test_metric_meter_weights_by_examples_and_drops_non_finite() -> None:
    meter = MetricMeter()
    meter.add({"acc": 1.0, "margin": 2.0, "bad": float("nan")}, weight=3)
    meter.add({"acc": 0.0, "margin": 4.0, "bad": 1.0}, weight=1)
    assert meter.mean() == {"acc": 0.75, "margin": 2.5}
    assert MetricMeter().mean() == {}


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    cfg = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant")
    optimizer, scheduler = make_optimizer(model.parameters(), cfg, total_steps=10)
    return model, x, y, optimizer, scheduler


def _step(micro_batches, *, poison: bool = False):
    model, x, y, optimizer, scheduler = _setup()
    acc = Accelerator(cpu=True)

    def micro_loss(mb):
        err = model(x[mb]) - y[mb]
        loss = (err**2).sum() / 8  # a sum over the micro-batch / the step's 8 examples
        if poison:
            loss = loss * float("nan")
        return loss, {"abs_err": err.abs().mean()}

    guard = NonFiniteGuard(limit=2)
    before = [p.detach().clone() for p in model.parameters()]
    result = optimizer_step(acc, model, optimizer, scheduler, guard, 0, micro_batches, micro_loss, max_grad_norm=0)
    return model, before, result, scheduler, x, y


def test_accumulated_micro_batches_take_the_full_batch_step() -> None:
    whole, _, r1, _, x, y = _step([list(range(8))])
    split, _, r2, _, _, _ = _step([[0, 1, 2], [3, 4, 5, 6, 7]])
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert r1.applied and r2.applied and math.isclose(r1.loss, r2.loss, rel_tol=1e-6)
    assert math.isclose(r1.grad_norm, r2.grad_norm, rel_tol=1e-5)
    # the logged metric is the example-weighted mean of the micro-batches' means
    model, *_ = _setup()
    with torch.no_grad():
        errs = (model(x) - y).abs()
    assert math.isclose(r2.metrics["abs_err"], float(errs.mean()), rel_tol=1e-5)


def test_a_non_finite_step_is_skipped_and_the_schedule_advances() -> None:
    model, before, result, scheduler, _, _ = _step([[0, 1, 2, 3], [4, 5, 6, 7]], poison=True)
    assert not result.applied and math.isnan(result.loss)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # nothing applied
    assert scheduler.last_epoch == 1  # the learning-rate schedule counts the step anyway


def test_guard_stops_the_run_after_its_limit() -> None:
    guard = NonFiniteGuard(limit=2)
    assert not guard.check(0, torch.tensor(float("nan")), 1.0)
    with pytest.raises(PrefgameError, match="2 consecutive non-finite steps"):
        guard.check(1, torch.tensor(1.0), float("inf"))


@pytest.mark.parametrize("section", [TrainConfig, SelfPlayTrainConfig, PPOTrainConfig])
def test_every_train_section_is_the_shared_optimization_config(section) -> None:
    """One definition of the optimization settings: each trainer's section extends it (a default may
    differ, its meaning may not)."""
    shared = {f.name for f in dataclasses.fields(OptimConfig)}
    assert issubclass(section, OptimConfig)
    assert shared <= {f.name for f in dataclasses.fields(section)}
