"""Training throughput of the cVAE on this machine: the default generator and the reference design, at the default
and at the demo sizes.

    python benchmarks/train_throughput.py [--steps 5] [--threads 2]

For each config it prints parameters, forward FLOPs per sample, training samples/s (forward + backward +
AdamW through the real loss) and the achieved FLOP rate (3 x forward FLOPs per training sample) as a ratio
of a plain float32 matrix multiply's rate measured in the same run: how close the model runs to what this
CPU's BLAS can do.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from precip_cvae.config import Config, load_config
from precip_cvae.data.normalize import Normalization
from precip_cvae.loop import train_step
from precip_cvae.losses import cvae_loss
from precip_cvae.model import CVAE, count_parameters, flops_per_sample
from precip_cvae.train import cvae_forward

DEMO = ["model.d_z=16", "model.base_filters=16", "model.d_x=64", "model.d_y=64", "loss.crps_members=2"]
#: name -> (config, input channels, lr_shape, hr_shape, batch size)
CASES = {
    "default generator, default size (6x13x11 -> 156x132, batch 6)": (load_config(), 6, (13, 11), (156, 132), 6),
    "reference design, default size": (load_config("reference"), 6, (13, 11), (156, 132), 6),
    "default generator, demo size (6x8x7 -> 96x84, batch 16)": (load_config(None, DEMO), 6, (8, 7), (96, 84), 16),
    "reference design, demo size": (load_config("reference", DEMO), 6, (8, 7), (96, 84), 16),
}  # fmt: skip


def matmul_flops_per_second(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def measure(config: Config, channels: int, lr_shape, hr_shape, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    statics = torch.rand(1, 4, *hr_shape)
    identity = Normalization(np.zeros(hr_shape), np.ones(hr_shape))
    model = CVAE(channels, 4, lr_shape, hr_shape, config.model, identity.dry_z)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {
        "inputs": torch.randn(batch_size, channels, *lr_shape),
        "target": torch.randn(batch_size, 1, *hr_shape),
        "mask": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool),
        "land": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool),
        "statics": statics,
    }
    zeros = torch.zeros(hr_shape)
    n_prior = config.loss.crps_members if config.loss.crps_weight > 0 else 0

    def loss_fn(out, b):
        return cvae_loss(out, b["target"], b["mask"], b["land"], zeros, identity, 2.0, config.loss, 0.5)

    def forward(m, b, generator):
        return cvae_forward(m, b, generator, n_prior)

    train_step(model, batch, optimizer, loss_fn, forward=forward)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, optimizer, loss_fn, forward=forward, grad_clip=1.0)
    seconds = time.perf_counter() - started
    flops = flops_per_sample(model, channels, 4, lr_shape, hr_shape, n_prior)
    return {"params": count_parameters(model), "flops": flops, "samples_per_s": steps * batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = matmul_flops_per_second()
    print(f"reference: float32 1024x1024 matmul at {reference / 1e9:.1f} GFLOP/s on {args.threads} threads")
    for name, (config, channels, lr_shape, hr_shape, batch_size) in CASES.items():
        r = measure(config, channels, lr_shape, hr_shape, batch_size, args.steps)
        achieved = 3 * r["flops"] * r["samples_per_s"]
        print(
            f"{name}: {r['params']:,} parameters, {r['flops'] / 1e9:.3f} GFLOPs forward per sample, "
            f"{r['samples_per_s']:.1f} training samples/s, achieved/matmul FLOP rate = {achieved / reference:.2f}"
        )


if __name__ == "__main__":
    main()
