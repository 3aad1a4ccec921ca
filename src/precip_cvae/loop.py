"""The training-loop pieces every model here trains through (the cVAE and the downstream SRDRN): mixed precision,
a pure :func:`train_step` with gradient accumulation, clipping and a NaN guard, and :func:`run_steps`, which feeds
it batches from a DataLoader and turns a diverging or out-of-memory run into a :class:`RunFailed` that says what
to change."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from precip_cvae.errors import RunFailed

#: (model, batch on the device, noise generator) -> model output
Forward = Callable[[torch.nn.Module, dict, torch.Generator | None], object]
#: (model output, batch) -> dict with "total" and other scalar terms
LossFn = Callable[[object, dict], dict]


class TrainingDiverged(RunFailed):
    """Too many non-finite losses in a row."""


@dataclass(frozen=True)
class Precision:
    """Mixed precision: autocast to ``dtype`` (None: off) and, for float16, a gradient scaler."""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> Precision:
        """bf16 on CUDA where supported, else float16 with a scaler; off on other devices or when ``amp`` is False."""
        if not amp or device.type != "cuda":
            return cls()
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))

    @property
    def name(self) -> str:
        """The dtype the steps compute in: "float32", or the autocast dtype ("bfloat16", "float16")."""
        return str(self.dtype or torch.float32).removeprefix("torch.")


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    forward: Forward,
    accumulate: int = 1,
    step: bool = True,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> dict[str, float] | None:
    """One forward/backward pass, and an optimizer step when ``step`` (the last of ``accumulate`` passes).

    No I/O, logging or device logic: ``batch`` is already on the model's device. Returns the loss terms
    as floats, or None when the loss or the gradients were not finite (the step is then skipped and the
    accumulated gradients dropped).

    Parameters
    ----------
    forward : (model, batch, generator) -> output, run under autocast
    loss_fn : (output, batch) -> dict with "total" and other scalar terms, run outside autocast
    agree : in a data-parallel run, whether every rank's loss is finite given this one's (all skip, or none)
    """
    model.train()
    device_type = next(v for v in batch.values() if isinstance(v, torch.Tensor)).device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = forward(model, batch, generator)
    terms = loss_fn(out, batch)
    total = terms["total"]
    finite = bool(torch.isfinite(total))
    if not (agree(finite) if agree is not None else finite):
        optimizer.zero_grad(set_to_none=True)
        return None
    scaled = total / accumulate
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    result = {k: float(v.detach()) for k, v in terms.items() if v.ndim == 0}
    if step:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            return None
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result["grad_norm"] = float(norm)
    return result


@dataclass
class StepStats:
    """What :func:`run_steps` saw: the mean of each loss term over the finite steps, and the skipped steps."""

    means: dict[str, float]
    done: int
    skipped: int


def scheduled_lr(lr: float, schedule: str, step: float, total: float) -> float:
    """The learning rate at ``step`` of ``total`` (epochs or steps): ``lr`` for "constant", a cosine decay from ``lr``
    to 0 for "cosine"."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return lr


def run_steps(
    model: torch.nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    loss_for_step: Callable[[int], LossFn],
    *,
    forward: Forward,
    to_device: Callable[[dict], dict],
    n_steps: int,
    precision: Precision = Precision(),
    accumulate: int = 1,
    grad_clip: float = 0.0,
    max_bad_steps: int = 20,
    generator: torch.Generator | None = None,
    desc: str = "train",
    progress: bool = True,
    batch_size_key: str = "train.batch_size",
    advice: str = "lower the learning rate, set a gradient clip, or set train.amp=false",
    lr_for_step: Callable[[int], float] | None = None,
    after_step: Callable[[], None] | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> StepStats:
    """Train on the first ``n_steps`` batches of ``batches`` through :func:`train_step`.

    ``loss_for_step(i)`` gives the loss of step ``i`` (a KL weight may change within an epoch). Raises
    :class:`TrainingDiverged` after more than ``max_bad_steps`` non-finite steps in a row or when no step was finite,
    and :class:`RunFailed` when the device runs out of memory (naming ``batch_size_key``). ``lr_for_step(i)``, when
    given, sets the learning rate of every parameter group before step ``i``; ``after_step()``, when given, runs after
    each step whose loss was finite (e.g. :meth:`WeightAverage.update`).
    """
    sums: dict[str, float] = {}
    done = skipped = bad_in_a_row = 0
    bar = tqdm(total=n_steps, desc=desc, disable=not progress, leave=False)
    for i, batch in enumerate(batches):
        if i >= n_steps:
            break
        if lr_for_step is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_for_step(i)
        try:
            terms = train_step(
                model, to_device(batch), optimizer, loss_for_step(i), forward=forward, accumulate=accumulate,
                step=(i + 1) % accumulate == 0 or i + 1 == n_steps, grad_clip=grad_clip, scaler=precision.scaler,
                autocast_dtype=precision.dtype, generator=generator, agree=agree,
            )  # fmt: skip
        except torch.cuda.OutOfMemoryError:
            raise RunFailed(
                f"CUDA out of memory at {batch_size_key}: lower it (and raise train.accumulate to keep the effective "
                "batch), set train.amp=true, or use a smaller model"
            ) from None
        bar.update(1)
        if terms is None:
            skipped += 1
            bad_in_a_row += 1
            if bad_in_a_row > max_bad_steps:
                raise TrainingDiverged(
                    f"training diverged: {bad_in_a_row} non-finite losses in a row ({desc}); {advice}"
                )
            continue
        bad_in_a_row = 0
        done += 1
        if after_step is not None:
            after_step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{sums['total'] / done:.3f}")
    bar.close()
    if done == 0:
        raise TrainingDiverged(f"training diverged: no finite loss ({desc}); {advice}")
    return StepStats({k: v / done for k, v in sums.items()}, done, skipped)


class WeightAverage:
    """An exponential moving average of a model's floating-point parameters and buffers (BatchNorm running
    statistics included): ``avg ← decay·avg + (1 − decay)·current`` after each step, starting from the weights it is
    created with. Integer buffers (BatchNorm's batch counter) follow the model. The averaged weights of a noisy
    optimizer path are steadier than its last point (Polyak averaging).

    With ``warmup``, update n (0-based) uses ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): the first averages forget the random initial weights at once
    instead of carrying a share ``decay^n`` of them (37 % after 200 steps at 0.995)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_now(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - self.decay_now()
        self.updates += 1
        averaged, current = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                averaged.append(self.state[k])
                current.append(v.detach())
            else:
                self.state[k].copy_(v)
        if averaged:  # one fused pass over all tensors instead of one per tensor
            torch._foreach_lerp_(averaged, current, weight)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)
