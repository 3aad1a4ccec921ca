"""Data-parallel training over several processes (PyTorch DDP, started by ``torchrun``): the one place that knows
about ranks.

``torchrun --nproc_per_node N -m precip_cvae train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`context` reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and picks this rank's device.
A run of N processes is the run of one process with the same ``train.batch_size``, split N ways:

- ``train.batch_size`` is the **global** batch; each rank trains on its own contiguous block of
  ``batch_size / N`` days of every global batch (:class:`BlockSampler`), so the batches, in order, are those one
  process would draw with the same seed;
- every random draw of the model (latent noise) is made for the whole global batch, identically on every rank
  from the same seed, and each rank keeps its block's rows (:class:`RankNoise`), so each day gets the noise it gets
  in one process;
- DDP averages the gradients, so after each step the weights are those of one process (to float rounding) — tested
  with gloo on CPU (``tests/test_distributed.py``);
- the decision to skip a step with a non-finite loss is taken by all ranks together (:meth:`Context.all_true`);
- rank 0 alone writes logs, checkpoints and the progress bar; training metrics are averaged over ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from precip_cvae.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when there is more than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the process that writes (rank 0)."""
        return self.rank == 0

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """``flag`` and-ed over all ranks (every rank must call it)."""
        if not self.active:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) == 0.0

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Each value averaged over the ranks (every rank must call it with the same keys)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def share_of_count(self, count: torch.Tensor) -> torch.Tensor:
        """The number of points of all ranks' blocks of a global batch (at least 1), divided by the number of ranks:
        what a rank's masked mean divides by so that DDP's average of the ranks' losses is the global batch's mean
        (:data:`precip_cvae.losses.Count`)."""
        total = count.detach().clone()
        if self.active:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.clamp_min(1.0) / self.world

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (pickled), in rank order, on rank 0; ``[obj]`` elsewhere and in one process."""
        if not self.active:
            return [obj]
        out: list[object] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out if self.main else [obj]

    def all_gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (pickled), in rank order, on every rank; ``[obj]`` in one process."""
        if not self.active:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mine(self, n_batches: int) -> range:
        """The indices of this rank's batches among ``n_batches``: every N-th, from its rank."""
        return range(self.rank, n_batches, self.world)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a pass seeded by ``seed`` (evaluation, sampling, validation): a batch's draws
    depend on nothing else, not on the process that draws it nor on the batches drawn before it."""
    return seed + 1_000_003 * (index + 1)


def context(device: torch.device) -> Context:
    """The process group torchrun describes in the environment (joined on first call), or a single process.

    ``device`` is what the config asks for: with CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL, on a CPU gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        logger.info(f"rank {rank} of {world}: process group joined ({backend})")
    return Context(rank, world, local_rank)


def leave() -> None:
    """Leave the process group, if this process joined one. Called before the interpreter exits: a gloo group torn
    down by the interpreter's own shutdown can abort the process ("terminate called without an active exception")
    after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, ctx: Context) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under a multi-process CUDA run, else ``device``."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def local_batch(batch_size: int, ctx: Context) -> int:
    """Days per rank of a global batch of ``batch_size`` days."""
    if batch_size % ctx.world:
        raise InputError(
            f"config key train.batch_size: {batch_size} days cannot be split evenly over {ctx.world} processes "
            f"(it is the global batch; use a multiple of {ctx.world})"
        )
    return batch_size // ctx.world


class BlockSampler(Sampler[int]):
    """Rank ``rank``'s block of every global batch that ``base`` yields: indices ``[r b, (r + 1) b)`` of each run of
    ``world * b`` indices (an incomplete last global batch is dropped, as one process drops it)."""

    def __init__(self, base: Sampler[int], batch: int, ctx: Context):
        self.base, self.batch, self.ctx = base, int(batch), ctx

    def __iter__(self) -> Iterator[int]:
        size = self.batch * self.ctx.world
        chunk: list[int] = []
        for index in self.base:
            chunk.append(int(index))
            if len(chunk) == size:
                yield from chunk[self.ctx.rank * self.batch : (self.ctx.rank + 1) * self.batch]
                chunk = []

    def __len__(self) -> int:
        return len(self.base) // (self.batch * self.ctx.world) * self.batch  # type: ignore[arg-type]


class RankNoise:
    """A noise source for one rank of a data-parallel run: every draw of shape ``(B, ...)`` is made as
    ``(world * B, ...)`` from ``generator`` (seeded alike on every rank) and the rank's block of rows is kept."""

    def __init__(self, generator: torch.Generator, ctx: Context):
        self.generator, self.ctx = generator, ctx

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        rows = shape[0]
        full = torch.randn(
            (rows * self.ctx.world, *shape[1:]), generator=self.generator, device=self.device, dtype=torch.float32
        )
        return full[self.ctx.rank * rows : (self.ctx.rank + 1) * rows]

    # what a checkpoint stores of a torch.Generator
    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
