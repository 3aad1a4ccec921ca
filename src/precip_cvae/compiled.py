"""The generator's training step through ``torch.compile`` (``train.compile``), drawing the same noise as eager mode.

A compiled graph cannot call a ``torch.Generator``: each draw of the reparameterization noise would split the
forward pass into pieces (26 at the default config). So the draws are made before the pass, from the same generator
in the same order, and the compiled pass reads them back in turn: the first step of each batch shape runs eagerly
through a :class:`NoiseRecorder`, which notes the shapes it draws; every later step draws those shapes ahead into a
:class:`NoiseTape`. The generator's stream, and with it its state in a checkpoint, is the one an eager run has; the
outputs agree with eager mode to float rounding (the compiled kernels sum in another order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from precip_cvae.config import COMPILE_MODES
from precip_cvae.errors import InputError
from precip_cvae.loop import Forward
from precip_cvae.model._layers import draw_noise


class NoiseRecorder:
    """Draws from ``source`` (a generator, or anything with a ``randn(shape)``) and notes each draw's shape."""

    def __init__(self, source):
        self.source = source
        self.shapes: list[tuple[int, ...]] = []

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        self.shapes.append(tuple(shape))
        return draw_noise(shape, self.source)


class NoiseTape:
    """Noise drawn ahead, handed out in the order it was drawn (``randn`` checks that the shape asked for is the one
    drawn)."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws = draws
        self.used = 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        eps = self.draws[self.used]
        if tuple(eps.shape) != tuple(shape):
            raise RuntimeError(f"noise draw {self.used}: the pass asks for {tuple(shape)}, not {tuple(eps.shape)}")
        self.used += 1
        return eps

    @classmethod
    def ahead(cls, source, shapes: list[tuple[int, ...]]) -> NoiseTape:
        return cls([draw_noise(shape, source) for shape in shapes])


class CompiledForward:
    """``forward`` compiled with ``torch.compile(mode=mode)``, drawing its noise from the generator it is given exactly
    as ``forward`` would (see the module's text). A call without a generator runs ``forward`` eagerly."""

    def __init__(self, forward: Forward, mode: str):
        if mode not in COMPILE_MODES[1:]:
            raise InputError(f"config key train.compile: {mode!r} is not one of {', '.join(COMPILE_MODES[1:])} here")
        self.forward = forward
        self.compiled = torch.compile(forward, mode=mode)
        self.shapes: dict[tuple, list[tuple[int, ...]]] = {}  # batch shapes -> the noise shapes one pass draws

    def __call__(self, model: torch.nn.Module, batch: dict, generator) -> object:
        if generator is None:
            return self.forward(model, batch, None)
        key = tuple((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor))
        shapes = self.shapes.get(key)
        if shapes is None:  # the first batch of this shape: eagerly, noting the draws
            recorder = NoiseRecorder(generator)
            out = self.forward(model, batch, recorder)
            self.shapes[key] = recorder.shapes
            return out
        tape = NoiseTape.ahead(generator, shapes)
        out = self.compiled(model, batch, tape)
        if tape.used != len(shapes):
            raise RuntimeError(f"the compiled pass drew {tape.used} noise tensors, the eager one {len(shapes)}")
        return out


def compile_step(
    model: torch.nn.Module, forward: Forward, loss: Callable, mode: str
) -> tuple[CompiledForward, Callable]:
    """What ``train.compile`` does to a training step, for the trainer and the benchmarks alike: ``model``'s weights
    to channels-last (what the compiled convolutions run fastest on), ``forward`` through :class:`CompiledForward`
    and ``loss`` through ``torch.compile``, both in ``mode``; returns the two."""
    model.to(memory_format=torch.channels_last)
    return CompiledForward(forward, mode), torch.compile(loss, mode=mode)
