"""Training throughput of the cVAE on this machine, at the default and at the demo config.

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

from precip_cvae.config import ModelConfig
from precip_cvae.data.normalize import Normalization
from precip_cvae.losses import LossWeights, cvae_loss
from precip_cvae.model import CVAE, count_parameters, flops_per_sample
from precip_cvae.train import train_step

CASES = {
    "default (6x13x11 -> 156x132, batch 6)": (ModelConfig(), 6, (13, 11), (156, 132), 6),
    "demo (6x8x7 -> 96x84, batch 16)": (
        ModelConfig(d_z=16, base_filters=16, d_x=64, d_y=64, prior="conditional", decoder_statics=True),
        6, (8, 7), (96, 84), 16,
    ),
}  # fmt: skip


def matmul_flops_per_second(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def measure(config: ModelConfig, channels: int, lr_shape, hr_shape, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    statics = torch.rand(1, 4, *hr_shape)
    model = CVAE(channels, 4, lr_shape, hr_shape, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {
        "inputs": torch.randn(batch_size, channels, *lr_shape),
        "target": torch.randn(batch_size, 1, *hr_shape),
        "mask": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool),
        "land": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool),
        "statics": statics,
    }
    zeros, identity = torch.zeros(hr_shape), Normalization(np.zeros(hr_shape), np.ones(hr_shape))

    def loss_fn(out, b):
        return cvae_loss(out, b["target"], b["mask"], b["land"], zeros, identity, 2.0, LossWeights(), 0.5)

    train_step(model, batch, optimizer, loss_fn)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, optimizer, loss_fn, grad_clip=1.0)
    seconds = time.perf_counter() - started
    flops = flops_per_sample(model, channels, 4, lr_shape, hr_shape)
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
