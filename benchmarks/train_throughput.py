"""Training throughput of the cVAE on this machine: the default generator and the reference design, at the default
and at the demo sizes.

    python benchmarks/train_throughput.py [--steps 5] [--threads 2]

For each config it prints parameters, forward FLOPs per sample, training samples/s (forward + backward +
AdamW through the real loss) and the achieved FLOP rate (3 x forward FLOPs per training sample) as a ratio
of this CPU's float32 matrix-product rate measured in the same run (:func:`run.matmul_rate`, the best over square
sizes): how close the model runs to what this CPU's BLAS can do. The training step is
:func:`run.train_step_rate`'s (best of ``--steps`` timed steps).
"""

from __future__ import annotations

import argparse

import torch
from run import matmul_rate, model_and_batch, train_step_rate

from precip_cvae.config import load_config
from precip_cvae.model import count_parameters, flops_per_sample

DEMO = ["model.d_z=16", "model.base_filters=16", "model.d_x=64", "model.d_y=64", "loss.crps_members=2"]
#: name -> (config, (input channels, lr_shape, hr_shape), batch size)
CASES = {
    "default generator, default size (6x13x11 -> 156x132, batch 6)": (load_config(), (6, (13, 11), (156, 132)), 6),
    "reference design, default size": (load_config("reference"), (6, (13, 11), (156, 132)), 6),
    "default generator, demo size (6x8x7 -> 96x84, batch 16)": (load_config(None, DEMO), (6, (8, 7), (96, 84)), 16),
    "reference design, demo size": (load_config("reference", DEMO), (6, (8, 7), (96, 84)), 16),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    reference = matmul_rate(cpu, torch.float32, (2048, 3072, 4096))
    print(f"reference: float32 matmul, best of 2048/3072/4096, {reference / 1e9:.1f} GFLOP/s on {args.threads} threads")
    for name, (config, geometry, batch_size) in CASES.items():
        r = train_step_rate(config, geometry, batch_size, cpu, amp=False, repeats=args.steps)
        channels, lr_shape, hr_shape = geometry
        model, _, _ = model_and_batch(config, geometry, 1, cpu)
        n_prior = config.loss.crps_members if config.loss.crps_weight > 0 else 0
        flops = flops_per_sample(model, channels, 4, lr_shape, hr_shape, n_prior)
        achieved = 3 * flops * r["samples_per_s"]
        print(
            f"{name}: {count_parameters(model):,} parameters, {flops / 1e9:.3f} GFLOPs forward per sample, "
            f"{r['samples_per_s']:.1f} training samples/s, achieved/matmul FLOP rate = {achieved / reference:.2f}"
        )


if __name__ == "__main__":
    main()
