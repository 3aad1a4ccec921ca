"""The training-loop pieces both models train through: accumulation, clipping, the NaN guard, clear failures."""

from __future__ import annotations

import pytest
import torch

from precip_cvae.errors import RunFailed
from precip_cvae.loop import Precision, TrainingDiverged, run_steps, train_step


def _forward(model, batch, generator):
    return model(batch["x"])


def _mse(out, batch):
    return {"total": ((out - batch["y"]) ** 2).mean()}


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def test_two_accumulated_half_batches_equal_one_full_batch():
    x, y = _data()
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 1)
    b = torch.nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    train_step(a, {"x": x, "y": y}, opt_a, _mse, forward=_forward)
    halves = [{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}]
    run_steps(b, halves, opt_b, lambda i: _mse, forward=_forward, to_device=lambda d: d, n_steps=2, accumulate=2,
              progress=False)  # fmt: skip
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_clipping_bounds_the_update():
    x, y = _data()
    model = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    terms = train_step(model, {"x": x, "y": 100 * y}, torch.optim.SGD(model.parameters(), lr=1.0), _mse,
                       forward=_forward, grad_clip=0.5)  # fmt: skip
    with torch.no_grad():
        step = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before, strict=True)))
    assert terms["grad_norm"] > 0.5 and float(step) == pytest.approx(0.5, rel=1e-5)


def test_non_finite_losses_are_skipped_then_stop_the_run_with_advice():
    x, y = _data()
    model = torch.nn.Linear(3, 1)
    nan = lambda out, b: {"total": out.sum() * float("nan")}  # noqa: E731
    batches = [{"x": x, "y": y}] * 10
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row .*lower experiment.lr"):
        run_steps(model, batches, opt, lambda i: nan, forward=_forward, to_device=lambda d: d, n_steps=10,
                  max_bad_steps=2, progress=False, advice="lower experiment.lr")  # fmt: skip
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    # one bad step among good ones is skipped and counted
    flaky = lambda i: nan if i == 1 else _mse  # noqa: E731
    stats = run_steps(model, batches, opt, flaky, forward=_forward, to_device=lambda d: d, n_steps=4, progress=False)
    assert (stats.done, stats.skipped) == (3, 1)
    assert issubclass(TrainingDiverged, RunFailed)


def test_mixed_precision_is_off_on_the_cpu():
    assert Precision.for_device(torch.device("cpu"), amp=True) == Precision()


def test_a_learning_rate_per_step_is_set_before_each_step():
    x, y = _data()
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss_for_step(i):
        seen.append(opt.param_groups[0]["lr"])
        return _mse

    run_steps(model, [{"x": x, "y": y}] * 4, opt, loss_for_step, forward=_forward, to_device=lambda d: d, n_steps=4,
              progress=False, lr_for_step=lambda i: 0.5 / (i + 1))  # fmt: skip
    assert seen == pytest.approx([0.5, 0.25, 0.5 / 3, 0.125])


def test_the_weight_average_after_each_finite_step_by_hand():
    """SGD on w with the gradient 1 each step (loss = w): w goes 1, 0.5, 0, -0.5; the average with decay 0.5 starts at
    1 and takes each new w with weight 0.5. A BatchNorm's integer counter follows the model, its statistics average."""
    from precip_cvae.loop import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    average = WeightAverage(model, 0.5)
    batches = [{"x": torch.ones(1, 1)}] * 3
    run_steps(model, batches, opt, lambda i: lambda out, b: {"total": out.sum()}, forward=lambda m, b, g: m(b["x"]),
              to_device=lambda d: d, n_steps=3, progress=False, after_step=lambda: average.update(model))  # fmt: skip
    assert model.weight.item() == pytest.approx(-0.5)
    # 1 -> 0.5·1 + 0.5·0.5 = 0.75 -> 0.5·0.75 + 0 = 0.375 -> 0.5·0.375 + 0.5·(−0.5) = −0.0625
    assert average.state["weight"].item() == pytest.approx(-0.0625)
    average.copy_to(model)
    assert model.weight.item() == pytest.approx(-0.0625)
    bn = torch.nn.BatchNorm1d(1, momentum=1.0)
    bn_average = WeightAverage(bn, 0.5)
    bn(torch.tensor([[2.0], [4.0]]))  # momentum 1: running mean 3, counter 1
    bn_average.update(bn)
    assert bn_average.state["running_mean"].item() == pytest.approx(0.5 * 0 + 0.5 * 3)
    assert bn_average.state["num_batches_tracked"].item() == 1


def test_the_weight_average_warmup_by_hand():
    """With warmup, update n uses decay min(0.9, (1 + n) / (10 + n)): 0.1, 2/11, 3/12, ... until it reaches 0.9 at
    n = 80. The weight goes 1 -> 3 -> 5 (set by hand); the average starts at 0."""
    from precip_cvae.loop import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.0)
    average = WeightAverage(model, 0.9, warmup=True)
    expected = 0.0
    for n, w in enumerate([1.0, 3.0, 5.0]):
        decay = (1 + n) / (10 + n)
        assert average.decay_now() == pytest.approx(decay)
        torch.nn.init.constant_(model.weight, w)
        average.update(model)
        expected = decay * expected + (1 - decay) * w
    # 0.9·1 = 0.9 -> (2/11)·0.9 + (9/11)·3 = 2.6182 -> (3/12)·2.6182 + (9/12)·5 = 4.4045
    assert expected == pytest.approx(4.40454545)
    assert average.state["weight"].item() == pytest.approx(expected)
    average.updates = 80
    assert average.decay_now() == pytest.approx(0.9)
    average.updates = 79
    assert average.decay_now() == pytest.approx(80 / 89)
    assert WeightAverage(model, 0.9).decay_now() == 0.9  # no warmup: the decay from the first step


def test_scheduled_learning_rates_by_hand():
    from precip_cvae.config import load_config
    from precip_cvae.loop import scheduled_lr
    from precip_cvae.train import lr_at

    assert scheduled_lr(0.2, "constant", 7, 10) == 0.2
    assert [scheduled_lr(0.2, "cosine", s, 4) for s in range(5)] == pytest.approx(
        [0.2, 0.1 * (1 + 2**-0.5), 0.1, 0.1 * (1 - 2**-0.5), 0.0]
    )
    config = load_config(None, ["train.lr=0.3", "train.epochs=5", "train.lr_warmup_epochs=1", "train.schedule=cosine"])
    # warm-up epoch 0: lr * 1 / 2; then cosine over the 4 epochs after it
    assert [lr_at(e, config) for e in range(5)] == pytest.approx(
        [0.15, 0.3, 0.15 * (1 + 2**-0.5), 0.15, 0.15 * (1 - 2**-0.5)]
    )
