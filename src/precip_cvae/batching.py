"""The batch size a run trains with and the learning rate that goes with it: ``train.batch_size=auto`` (the batch
that fills the GPU) and ``train.lr_scaling`` (the learning rate scaled from the batch it was chosen for).

The reference trains with 6 days per step, which leaves a large GPU idle between kernel launches. ``auto`` measures
training samples/s at 6, 12, 24, ... days on the run's own model and data and keeps doubling while each doubling
raises the rate by at least :data:`AUTO_GAIN` and the step fits in :data:`AUTO_MEMORY_SHARE` of the GPU's memory.
A larger batch takes fewer steps per epoch, so its learning rate is usually raised with it: ``sqrt`` multiplies
``train.lr`` by sqrt(batch / ``train.lr_reference_batch``) (the rule for Adam-type optimizers), ``linear`` by
batch / reference (Goyal et al.'s rule for SGD). The batch is ``train.batch_size`` × ``train.accumulate``.

The resolved numbers are what the run's ``config.yaml`` and checkpoints record (``lr_scaling`` then ``none``), and
a resumed run takes them from its checkpoint, so a resume never measures again and never scales twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

from precip_cvae.config import Config, TrainConfig
from precip_cvae.errors import InputError

logger = logging.getLogger(__name__)

#: The batches ``train.batch_size=auto`` tries, from the reference's 6 up.
AUTO_BATCHES = (6, 12, 24, 48, 96, 192, 384, 768)
#: A doubling of the batch is taken when it raises training samples/s by at least this factor.
AUTO_GAIN = 1.15
#: ... and when its training step's peak memory stays within this share of the GPU's.
AUTO_MEMORY_SHARE = 0.85
#: The device types on which ``auto`` measures its batches (elsewhere it takes the first of :data:`AUTO_BATCHES`).
MEASURED_ON = ("cuda",)


def scaled_lr(lr: float, batch: int, reference: int, rule: str) -> float:
    """``lr`` (chosen for batches of ``reference`` days) for batches of ``batch`` days under ``rule``: "none",
    "sqrt" or "linear"."""
    if rule == "none":
        return lr
    ratio = batch / reference
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    if rule == "linear":
        return lr * ratio
    raise ValueError(f"unknown learning-rate scaling {rule!r}")


def choose_batch(rate: Callable[[int], float | None], largest: int) -> tuple[int, dict[int, float]]:
    """The batch of :data:`AUTO_BATCHES` (at most ``largest``, at least the first) that ``auto`` takes, and the rates
    measured on the way: doubling goes on while ``rate(batch)`` (samples/s; None where the step does not fit in
    memory) is at least :data:`AUTO_GAIN` × the previous batch's."""
    chosen, rates = AUTO_BATCHES[0], {}
    for batch in AUTO_BATCHES:
        if batch > largest and batch != AUTO_BATCHES[0]:
            break
        value = rate(batch)
        if value is None:
            break
        rates[batch] = value
        if batch != AUTO_BATCHES[0] and value < AUTO_GAIN * rates[chosen]:
            break
        chosen = batch
    return chosen, rates


def resolves(train: TrainConfig) -> bool:
    """Whether ``train`` has anything for :func:`resolve` to decide: ``batch_size`` "auto" or a
    learning-rate scaling."""
    return train.batch_size == "auto" or train.lr_scaling != "none"


def resolve(
    config: Config,
    *,
    rate: Callable[[int], float | None] | None,
    train_days: int,
    world: int = 1,
    stored: dict[str, Any] | None = None,
) -> tuple[Config, str | None]:
    """``config`` with a number for ``train.batch_size`` and the learning rate scaled to it (``lr_scaling`` set
    to "none"), and a sentence saying what was chosen (None where nothing changed).

    ``rate``: training samples/s at a batch (None where it does not fit), or None where it cannot be measured (not
    on a GPU: ``auto`` keeps the reference's 6). ``stored``: the ``train`` section of the checkpoint a run resumes
    from, whose resolved numbers are taken as they are.
    """
    t = config.train
    if not resolves(t):
        return config, None
    if stored is not None:
        batch, lr = int(stored["batch_size"]), float(stored["lr"])
        said = f"train.batch_size {batch} and train.lr {lr:.4g}, as the checkpoint resumed from was trained"
    else:
        if t.batch_size != "auto":
            batch, said = int(t.batch_size), f"train.batch_size {t.batch_size}"
        elif world > 1:
            raise InputError(
                "config key train.batch_size: auto is measured on one GPU; under torchrun give the global batch "
                "(e.g. what auto chose on one GPU times the number of processes)"
            )
        elif rate is None:
            batch, said = AUTO_BATCHES[0], f"train.batch_size=auto: {AUTO_BATCHES[0]} (measured on CUDA only)"
        else:
            batch, rates = choose_batch(rate, train_days)
            tried = ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())
            said = f"train.batch_size=auto: {batch} (training samples/s by batch: {tried})"
        lr = scaled_lr(t.lr, batch * t.accumulate, t.lr_reference_batch, t.lr_scaling)
        if t.lr_scaling != "none":
            said += (f"; train.lr {t.lr:.4g} x {t.lr_scaling}({batch * t.accumulate}/{t.lr_reference_batch}) = "
                     f"{lr:.4g}")  # fmt: skip
    train = dataclasses.replace(t, batch_size=batch, lr=lr, lr_scaling="none")
    return dataclasses.replace(config, train=train), said
