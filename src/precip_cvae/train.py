"""Training the cVAE: a pure :func:`train_step`, and :func:`fit`, which orchestrates data, device, logging,
checkpoints, resume and the collapse alarms."""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler, default_collate

from precip_cvae import batching, distributed, loop
from precip_cvae.checkpoint import check_against, load_checkpoint, save_checkpoint, training_state
from precip_cvae.compiled import compile_step
from precip_cvae.config import HIGHER_IS_BETTER, TRAIN_LOG_COLUMNS, Config, dump_config
from precip_cvae.data.dataset import DayDataset, PreparedData
from precip_cvae.errors import InputError
from precip_cvae.fileio import output_lock, remove_temporaries, write_text
from precip_cvae.generator import BEST_CHECKPOINT, CHECKPOINT_DIR, build_model, select_device
from precip_cvae.loop import Precision, TrainingDiverged  # noqa: F401  (TrainingDiverged: the API's name)
from precip_cvae.losses import cvae_loss, kl_weight
from precip_cvae.metrics import CRPS, Deterministic, Intensities, Scores, TwCRPS

logger = logging.getLogger(__name__)

WET_MM_PER_DAY = 0.1
#: Scores of the prior samples logged as ``val_<name>``, with the meaning they have in `evaluate`'s metrics.json
#: (``MAE_all``, ``MAE_tail``, ``RMSE_all``, ``mass_bias``: of the pixelwise median of the samples, over valid pixels;
#: ``MAE_member``: of one sample).
VALIDATION_SCORES = ("MAE_all", "MAE_member", "MAE_tail", "RMSE_all", "mass_bias", "CRPS", "twCRPS_P95")


def cvae_forward(model: torch.nn.Module, batch: dict, generator: torch.Generator | None, n_prior: int = 0) -> dict:
    """The cVAE's training forward pass (posterior sample, reconstruction, prior parameters; ``n_prior`` prior draws
    for the ensemble term)."""
    return model(batch["inputs"], batch["target"], batch["statics"], generator=generator, n_prior=n_prior)


def train_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, loss_fn, **kwargs):
    """:func:`precip_cvae.loop.train_step` with the cVAE's forward pass.

    ``batch``: "inputs" (B, C, h, w), "target" (B, 1, H, W) normalized, "mask", "land" (B, 1, H, W) bool,
    "statics" (1, S, H, W), already on the model's device.
    """
    return loop.train_step(model, batch, optimizer, loss_fn, forward=cvae_forward, **kwargs)


def lr_at(epoch: int, config: Config) -> float:
    """Learning rate of an epoch: linear warm-up, then constant or cosine decay to 0."""
    t = config.train
    if t.lr_warmup_epochs > 0 and epoch < t.lr_warmup_epochs:
        return t.lr * (epoch + 1) / (t.lr_warmup_epochs + 1)
    return loop.scheduled_lr(t.lr, t.schedule, epoch - t.lr_warmup_epochs, t.epochs - t.lr_warmup_epochs)


class Trainer:
    """Everything :func:`fit` needs, built once from the config and the prepared dataset."""

    def __init__(self, config: Config, progress: bool = True, resume: bool = False):
        self.config = config
        self.progress = progress
        self.data = PreparedData(config.data.data_root)
        requested = select_device(config.train.device)
        self.ctx = distributed.context(requested)  # one process, or a rank of a torchrun
        if self.ctx.active and config.train.compile != "none":
            raise InputError("config key train.compile: not supported under torchrun yet; set train.compile=none")
        self.device = distributed.rank_device(requested, self.ctx)
        self.out_dir = Path(config.data.outputs_root)
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.log_path = self.out_dir / "logs" / "train_log.csv"
        t = config.train
        self.train_set = DayDataset(self.data, self.data.ids("train"))
        if len(self.train_set) == 0:
            raise InputError(f"{self.data.root}: the train split is empty")
        torch.manual_seed(t.seed)
        self.model = build_model(self.data, config.model).to(self.device)
        self.trained = self.model  # what the steps run: the model, or its DDP wrapper (see wrap())
        self.precision = Precision.for_device(self.device, t.amp)
        self.scaler = self.precision.scaler
        d = self.device
        self.statics = torch.from_numpy(self.data.statics)[None].to(d)
        self.threshold_z = torch.from_numpy(self.data.threshold_z(config.loss.extreme_threshold)).to(d)
        self.normalization = self.data.normalization
        self.p95_mm = self.data.thresholds_mm["P95"]
        self.weights = config.loss
        self.n_prior = config.loss.crps_members if config.loss.crps_weight > 0 else 0
        self.config = config = self._resolve_batch(resume)  # a number of days per step from here on
        t = config.train
        self.val_set = DayDataset(self.data, self.data.ids("val") or self.data.ids("train")[-max(1, t.batch_size) :])
        self.data.check_days(self.train_set.ids + self.val_set.ids)
        self.local_batch = distributed.local_batch(t.batch_size, self.ctx)
        if self.ctx.active and len(self.train_set) < t.batch_size:
            raise InputError(
                f"config key train.batch_size: {t.batch_size} is more than the {len(self.train_set)} training days"
            )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.noise = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        # what the training steps draw from: under torchrun, this rank's rows of the global batch's noise
        self.step_noise = distributed.RankNoise(self.noise, self.ctx) if self.ctx.active else self.noise
        # the training steps' forward pass and loss: compiled with train.compile (precip_cvae.compiled)
        self.step_forward: loop.Forward = self.forward
        self.step_loss = self._loss
        if t.compile != "none":
            forward = functools.partial(cvae_forward, n_prior=self.n_prior)
            self.step_forward, self.step_loss = compile_step(self.model, forward, self._loss, t.compile)

    def _resolve_batch(self, resume: bool) -> Config:
        """The config with ``train.batch_size=auto`` and ``train.lr_scaling`` resolved (:mod:`precip_cvae.batching`):
        measured on a GPU, taken from the checkpoint a resume continues."""
        t = self.config.train
        last = self.ckpt_dir / "cvae_last.pt"
        stored = None
        if resume and last.exists() and batching.resolves(t):
            stored = load_checkpoint(last)["config"]["train"]
        config, said = batching.resolve(
            self.config, rate=self.samples_per_s if self.device.type in batching.MEASURED_ON else None,
            train_days=len(self.train_set), world=self.ctx.world, stored=stored,
        )  # fmt: skip
        if said and self.ctx.main:
            logger.info(said)
        return config

    def samples_per_s(self, batch_size: int, steps: int = 3) -> float | None:
        """Training samples/s of a copy of the model at ``batch_size`` days (the first training days, repeated where
        there are fewer), after one step of warm-up; None where the step does not fit in memory (on a GPU: within
        :data:`~precip_cvae.batching.AUTO_MEMORY_SHARE` of it). The model, the optimizer and every random state are
        left as they were."""
        cuda = self.device.type == "cuda"
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                seconds, peak = self._time_steps(batch_size, steps)
        except torch.cuda.OutOfMemoryError:
            seconds = peak = None
        if cuda:
            torch.cuda.empty_cache()  # the copy's memory, freed on return from _time_steps
            total = torch.cuda.get_device_properties(self.device).total_memory
            if peak is not None and peak > batching.AUTO_MEMORY_SHARE * total:
                return None
        return None if seconds is None else batch_size * steps / seconds

    def _time_steps(self, batch_size: int, steps: int) -> tuple[float, int]:
        """Seconds of ``steps`` training steps of a copy of the model and optimizer (after one of warm-up), and the
        peak GPU memory they took (0 on other devices)."""
        cuda = self.device.type == "cuda"
        items = [self.train_set[i % len(self.train_set)] for i in range(batch_size)]
        batch = self.to_device(default_collate(items))
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)
        scaler = torch.amp.GradScaler(self.device.type) if self.scaler is not None else None
        noise = torch.Generator(device=self.device).manual_seed(0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        for i in range(steps + 1):
            if i == 1:
                started = time.perf_counter()
            # the run's eager step, its prior draws included (the compiled step and the loss that a torchrun
            # shares over ranks are set up after the batch is chosen)
            loop.train_step(model, batch, optimizer, lambda out, b: self._loss(out, b, 1.0, None),
                            forward=self.forward, grad_clip=self.config.train.grad_clip, scaler=scaler,
                            autocast_dtype=self.precision.dtype, generator=noise)  # fmt: skip
            if cuda:
                torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        return seconds, torch.cuda.max_memory_allocated(self.device) if cuda else 0

    # -- pieces ------------------------------------------------------------------------------------
    def wrap(self) -> None:
        """Under torchrun, wrap the model for DDP (after a resume has loaded its weights)."""
        if self.ctx.active and self.trained is self.model:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def forward(self, model: torch.nn.Module, batch: dict, generator: torch.Generator | None) -> dict:
        return cvae_forward(model, batch, generator, self.n_prior)

    def loss_fn(self, beta: float, training: bool = True) -> Callable[[dict, dict], dict]:
        """The loss of a (model output, batch) pair with KL weight ``beta``; a training step's masked means divide
        by the count over all ranks of a torchrun (validation scores each batch on its own)."""
        count = self.ctx.share_of_count if training and self.ctx.active else None
        terms = self.step_loss if training else self._loss
        return lambda out, batch: terms(out, batch, beta, count)

    def _loss(self, out: dict, batch: dict, beta: float, count: Callable | None) -> dict:
        return cvae_loss(
            out, batch["target"], batch["mask"], batch["land"], self.threshold_z, self.normalization,
            self.data.mean_land_mm_per_day, self.weights, beta, count=count,
        )  # fmt: skip

    def to_device(self, batch: dict) -> dict:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out["statics"] = self.statics
        return out

    def train_loader(self, epoch: int) -> DataLoader:
        t = self.config.train
        order = torch.Generator().manual_seed(t.seed * 100_003 + epoch)  # same order on resume
        if t.heavy_share > 0:
            heavy = self.train_set.heavy_flags()
            if not heavy.any():
                raise InputError("config key train.heavy_share: the train split has no heavy day")
            weights = np.where(heavy, t.heavy_share / heavy.sum(), (1 - t.heavy_share) / max(1, (~heavy).sum()))
            sampler = WeightedRandomSampler(weights.tolist(), len(self.train_set), replacement=True, generator=order)
        else:
            sampler = RandomSampler(self.train_set, generator=order)
        if self.ctx.active:  # this rank's block of each global batch that one process would draw
            sampler = distributed.BlockSampler(sampler, self.local_batch, self.ctx)
        return DataLoader(
            self.train_set, batch_size=self.local_batch, sampler=sampler, num_workers=self.config.data.num_workers,
            drop_last=len(self.train_set) > t.batch_size,
        )  # fmt: skip

    # -- one epoch ---------------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict:
        t = self.config.train
        lr = lr_at(epoch, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loader = self.train_loader(epoch)
        n_batches = len(loader) if t.max_batches_per_epoch <= 0 else min(len(loader), t.max_batches_per_epoch)

        def beta_at(i: int) -> float:
            return kl_weight(epoch + i / n_batches, self.config.loss.beta_kl, t.warmup_epochs)

        self.wrap()
        stats = loop.run_steps(
            self.trained, loader, self.optimizer, lambda i: self.loss_fn(beta_at(i)), forward=self.step_forward,
            to_device=self.to_device, n_steps=n_batches, precision=self.precision, accumulate=t.accumulate,
            grad_clip=t.grad_clip, max_bad_steps=t.max_bad_steps, generator=self.step_noise,
            desc=f"epoch {epoch + 1}/{t.epochs}", progress=self.progress and self.ctx.main,
            advice="lower train.lr, lower train.grad_clip, or set train.amp=false",
            agree=(lambda finite: self.ctx.all_true(finite, self.device)) if self.ctx.active else None,
        )  # fmt: skip
        mean, beta, skipped = self.ctx.mean(stats.means, self.device), beta_at(n_batches - 1), stats.skipped
        scales = ";".join(f"{k[len('L_kl_') :]}:{v:.4g}" for k, v in mean.items() if k.startswith("L_kl_x"))
        return {
            "train_loss": mean["total"],
            "train_L_rec": mean["L_rec"],
            "train_L_mass": mean["L_mass"],
            "train_L_kl": mean["L_kl"],
            "train_L_crps": mean["L_crps"],
            "train_L_kl_scales": scales,
            "beta": beta,
            "lr": lr,
            "skipped_steps": skipped,
        }

    @torch.no_grad()
    def validate(self, epoch: int, beta: float) -> dict:
        """Loss terms (posterior, as in training, KL weighted by ``beta``) and, from prior samples, metrics in
        mm/day and alarms.

        Validation batch b draws its noise from a generator seeded by the seed, the epoch and b; under torchrun each
        rank scores every N-th batch and the ranks' sums and scores are merged on every rank, so every rank gets
        the row one process gets."""
        self.model.eval()
        t = self.config.train
        n = len(self.val_set)
        batches = [list(range(s, min(s + t.batch_size, n))) for s in range(0, n, t.batch_size)]
        mine = list(self.ctx.mine(len(batches)))
        loader = DataLoader(
            self.val_set, batch_sampler=[batches[b] for b in mine], num_workers=self.config.data.num_workers
        )
        part = _Validation.empty(self.p95_mm)
        acc, diag = part.losses, part.diagnostics
        loss_fn = self.loss_fn(beta, training=False)
        for index, batch in zip(mine, loader, strict=True):
            seed = distributed.batch_seed(t.seed * 7919 + epoch, index)
            gen = torch.Generator(device=self.device).manual_seed(seed)
            b = self.to_device(batch)
            out = self.forward(self.model, b, gen)
            terms = loss_fn(out, b)
            size = b["target"].shape[0]
            part.n_days += size
            for k in acc:
                acc[k] += float(terms["total" if k == "loss" else k]) * size
            part.mus.append(out["mu"].float().cpu())
            for factor, kl in out.get("scale_kl", {}).items():
                part.scale_kl[factor] = part.scale_kl.get(factor, 0.0) + kl.float().sum(dim=0).cpu()
                part.scale_pixels[factor] = out["scale_pixels"][factor]
            obs = self.normalization.to_mm(b["target"])
            mask, land = b["mask"], b["land"]
            samples = self.model.sample(b["inputs"], b["statics"], n_samples=t.val_samples, mode="prior", generator=gen)
            sim = self.normalization.to_mm(samples.float())  # (B, n, 1, H, W)
            for k in range(sim.shape[1]):
                diag["std_s"] += float(_masked_std(sim[:, k], land).sum())
            diag["std_o"] += float(_masked_std(obs, land).sum())
            if sim.shape[1] >= 2:
                diag["spread"] += float(((sim[:, 0] - sim[:, 1]).abs() * mask).sum())
                diag["spread_n"] += float(mask.sum())
            # on a GPU scored where the model is, on a CPU in NumPy (Scores.add_tensors: the same sums)
            ens, o, valid = sim[:, :, 0], obs[:, 0], mask[:, 0]
            rec = self.normalization.to_mm(out["recon"].float())[:, :1]
            part.samples.add_tensors(ens, o, valid)
            heavy = torch.as_tensor(batch["heavy"], dtype=torch.bool).to(ens.device)
            if bool(heavy.any()):
                part.heavy.add_tensors(ens[heavy], o[heavy], valid[heavy])
            part.recon.add_tensors(rec, o, valid)
        # every rank merges the ranks' parts in rank order, so every rank computes the same row
        parts = self.ctx.all_gather(part)
        whole = parts[0]
        for other in parts[1:]:
            whole.merge(other)
        acc, diag, n_days, scale_kl, scale_pixels = (
            whole.losses,
            whole.diagnostics,
            whole.n_days,
            whole.scale_kl,
            whole.scale_pixels,
        )
        k = t.val_samples
        mu = torch.cat(whole.mus)
        active = int((mu.var(dim=0) > 0.01).sum()) if mu.shape[0] > 1 else 0
        obs_mean = self.data.mean_land_mm_per_day
        scores, heavy = whole.samples.compute(), whole.heavy.compute()
        row = {
            "val_loss": acc["loss"] / n_days,
            "val_L_rec": acc["L_rec"] / n_days,
            "val_L_mass": acc["L_mass"] / n_days,
            "val_L_kl": acc["L_kl"] / n_days,
            "val_L_crps": acc["L_crps"] / n_days,
            **{f"val_{key}": scores[key] for key in VALIDATION_SCORES},
            "val_rec_MAE_tail": whole.recon.compute()["MAE_tail"],
            "val_heavy_twCRPS_P95": heavy["twCRPS_P95"],
            "val_active_units": active,
            "val_sample_spread_mm": diag["spread"] / diag["spread_n"] if diag["spread_n"] else float("nan"),
            "val_wet_fraction_samples": scores["wet_day_frequency_sim"],
            "val_wet_fraction_obs": scores["wet_day_frequency_obs"],
            "val_spatial_std_ratio": (diag["std_s"] / k) / max(diag["std_o"], 1e-9),
            # a latent map is active when its KL averages more than 0.01 nats per pixel
            "val_L_kl_scales": ";".join(f"x{f}:{float(kl.sum()) / n_days:.4g}" for f, kl in scale_kl.items()),
            "val_active_scales": ";".join(
                f"x{f}:{int((kl / n_days / scale_pixels[f] > 0.01).sum())}/{kl.numel()}" for f, kl in scale_kl.items()
            ),
        }
        row["alarms"] = ";".join(collapse_alarms(row, obs_mean, self.config.model.d_z))
        return row


@dataclass
class _Validation:
    """What one rank's validation batches add up to, and how two ranks' parts merge (in rank order)."""

    losses: dict[str, float]  # loss terms summed over days
    diagnostics: dict[str, float]  # sums behind the collapse alarms
    samples: Scores  # prior samples, all days: the same accumulators and names as `evaluate`'s metrics.json
    heavy: Scores  # the same, heavy days
    recon: Scores  # the posterior reconstruction
    n_days: int = 0
    mus: list[torch.Tensor] = field(default_factory=list)  # posterior means, for the active units
    scale_kl: dict[int, torch.Tensor] = field(default_factory=dict)  # per latent scale: each map's KL, summed
    scale_pixels: dict[int, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, p95_mm: float) -> _Validation:
        p95 = {"P95": p95_mm}
        samples = Scores({"crps": CRPS(), "twcrps": TwCRPS(p95), "deterministic": Deterministic(tail=p95_mm),
                          "intensities": Intensities(quantiles=(), wet=WET_MM_PER_DAY)})  # fmt: skip
        return cls(
            losses=dict.fromkeys(("loss", "L_rec", "L_mass", "L_kl", "L_crps"), 0.0),
            diagnostics=dict.fromkeys(("spread", "spread_n", "std_s", "std_o"), 0.0),
            samples=samples,
            heavy=Scores({"twcrps": TwCRPS(p95)}),
            recon=Scores({"deterministic": Deterministic(tail=p95_mm)}),
        )

    def merge(self, other: _Validation) -> None:
        for mine, theirs in ((self.losses, other.losses), (self.diagnostics, other.diagnostics)):
            for key in mine:
                mine[key] += theirs[key]
        self.n_days += other.n_days
        self.samples.merge(other.samples)
        self.heavy.merge(other.heavy)
        self.recon.merge(other.recon)
        self.mus.extend(other.mus)
        for factor, kl in other.scale_kl.items():
            self.scale_kl[factor] = self.scale_kl.get(factor, 0.0) + kl
        self.scale_pixels.update(other.scale_pixels)


def _masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spatial std over masked pixels of each field: (B, 1, H, W) -> (B,)."""
    w = mask.to(x.dtype)
    n = w.sum(dim=(1, 2, 3)).clamp_min(1)
    mean = (x * w).sum(dim=(1, 2, 3)) / n
    var = (((x - mean[:, None, None, None]) ** 2) * w).sum(dim=(1, 2, 3)) / n
    return var.sqrt()


def collapse_alarms(row: dict, mean_land_mm: float, d_z: int) -> list[str]:
    """Names of the known failure modes this validation row shows."""
    alarms = []
    if row["val_active_units"] == 0:
        alarms.append(f"posterior collapse: 0 of {d_z} latent units active")
    for scale in filter(None, row.get("val_active_scales", "").split(";")):
        factor, counts = scale.split(":")
        if counts.startswith("0/"):
            alarms.append(f"posterior collapse at scale {factor}: 0 of {counts[2:]} latent maps active")
    spread = row["val_sample_spread_mm"]
    if np.isfinite(spread) and spread < 0.02 * mean_land_mm:
        alarms.append(f"samples of one day are near copies ({spread:.3g} mm/day apart): the decoder ignores z")
    wet_s, wet_o = row["val_wet_fraction_samples"], row["val_wet_fraction_obs"]
    if wet_s > min(0.98, wet_o + 0.2):
        alarms.append(f"drizzle everywhere: samples wet on {wet_s:.0%} of pixels, observations on {wet_o:.0%}")
    if row["val_spatial_std_ratio"] < 0.3:
        alarms.append(f"mean collapse: samples' spatial std is {row['val_spatial_std_ratio']:.0%} of the observed")
    return alarms


# -- log file -------------------------------------------------------------------------------------
def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRAIN_LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())


def _better(value: float, best: float | None, metric: str) -> bool:
    if not np.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


def fit(
    config: Config,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train the cVAE as ``config`` says; returns the paths written and the last log row.

    Writes ``<outputs_root>/checkpoints/cvae_{last,best,epoch_XXX}.pt``, ``logs/train_log.csv`` and the
    resolved ``config.yaml``. With ``resume``, continues from ``cvae_last.pt``. Started by ``torchrun``, each process
    trains one rank of a DDP run (:mod:`precip_cvae.distributed`) and rank 0 alone writes.
    """
    trainer = Trainer(config, progress=progress, resume=resume)
    with contextlib.ExitStack() as stack:
        if trainer.ctx.main:  # one run writes into outputs_root at a time
            stack.enter_context(output_lock(trainer.out_dir))
        return _fit(trainer, resume, overwrite)


def _fit(trainer: Trainer, resume: bool, overwrite: bool) -> dict:
    config = trainer.config
    t = config.train
    ctx = trainer.ctx
    say = logger.info if ctx.main else (lambda *args, **kwargs: None)
    last_path = trainer.ckpt_dir / "cvae_last.pt"
    if last_path.exists() and not (resume or overwrite):
        raise InputError(f"{last_path}: a run exists here; pass --resume to continue it or --overwrite to start again")
    start_epoch, best, best_epoch, stale = 0, None, -1, 0
    rows: list[dict] = []
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=trainer.device)
        check_against(state, trainer.data, last_path)
        trainer.model.load_state_dict(state["model_state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer_state_dict"])
        if trainer.scaler is not None and state.get("scaler_state_dict"):
            trainer.scaler.load_state_dict(state["scaler_state_dict"])
        trainer.noise.set_state(state["noise_rng_state"].cpu())
        torch.set_rng_state(state["torch_rng_state"].cpu())
        start_epoch = int(state["epoch"]) + 1
        best, best_epoch, stale = state["best_value"], int(state["best_epoch"]), int(state["stale_epochs"])
        rows = [r for r in read_log(trainer.log_path) if int(r["epoch"]) <= int(state["epoch"]) + 1]
        say(f"resuming from {last_path} after epoch {start_epoch}")
    elif resume:
        say(f"nothing to resume at {last_path}: starting from scratch")
    board = None
    if ctx.main:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(trainer.out_dir, trainer.ckpt_dir, trainer.log_path.parent)  # left by a killed run
        write_text(trainer.out_dir / "config.yaml", dump_config(config))
        board = _tensorboard(trainer) if t.tensorboard else None
        if start_epoch == 0:  # a fresh start: nothing of an overwritten run may pass for this one's
            trainer.log_path.unlink(missing_ok=True)
            for old in trainer.ckpt_dir.glob("cvae_*.pt"):
                old.unlink()
    ctx.barrier()  # every rank has read what it resumes from before rank 0 writes anything new
    if ctx.active:
        say(f"DDP over {ctx.world} processes: {trainer.local_batch} of each global batch of {t.batch_size} days each")

    metric = t.select_metric
    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        train_row = trainer.run_epoch(epoch)
        row = {"epoch": epoch + 1, **train_row, **trainer.validate(epoch, beta=train_row["beta"])}
        row["seconds"] = time.perf_counter() - started
        if row["alarms"] and ctx.main:
            for alarm in row["alarms"].split(";"):
                logger.warning(f"epoch {epoch + 1}: {alarm}")
        improved = _better(float(row[metric]), best, metric)
        if improved:
            best, best_epoch, stale = float(row[metric]), epoch + 1, 0
        else:
            stale += 1
        rows.append(row)
        if ctx.main:
            write_log(trainer.log_path, rows)  # the log first: a resume drops rows past its checkpoint
            state = training_state(
                model=trainer.model, optimizer=trainer.optimizer, scaler=trainer.scaler, epoch=epoch,
                config=config.to_dict(), data=trainer.data, best_value=best, best_epoch=best_epoch,
                stale_epochs=stale, select_metric=t.select_metric, noise=trainer.noise,
            )  # fmt: skip
            # cvae_last.pt last: it is what a resume starts from, so a kill before it makes the resume redo this
            # epoch and write the other two again (the same bytes), and a kill after it finds them written
            if (epoch + 1) % t.save_every == 0 or epoch + 1 == t.epochs:
                save_checkpoint(trainer.ckpt_dir / f"cvae_epoch_{epoch + 1:03d}.pt", state)
            if improved:
                save_checkpoint(trainer.ckpt_dir / BEST_CHECKPOINT, state)
            save_checkpoint(last_path, state)
        say(format_row(row, metric))
        if board is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    board.add_scalar(key, value, epoch + 1)
            board.flush()
        if t.patience > 0 and stale >= t.patience:
            say(f"early stop: {metric} has not improved for {stale} epochs (best {best:.4g} at epoch {best_epoch})")
            break
    ctx.barrier()  # the checkpoints are written before any rank returns
    return {
        "checkpoints": trainer.ckpt_dir,
        "log": trainer.log_path,
        "last_row": rows[-1] if rows else None,
        "first_row": rows[0] if rows else None,
        "best_epoch": best_epoch,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "rank": ctx.rank,
    }


def _tensorboard(trainer: Trainer):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            'config key train.tensorboard: needs the tensorboard package (pip install "precip-cvae[tensorboard]")'
        ) from None
    return SummaryWriter(str(trainer.out_dir / "logs" / "tensorboard"))


def format_row(row: dict, metric: str) -> str:
    """One line per epoch for the terminal."""
    keys = ("train_loss", "val_loss", "val_CRPS", "val_twCRPS_P95", "val_MAE_tail", "val_mass_bias", "val_active_units")
    parts = [f"epoch {row['epoch']:>3}"] + [f"{k} {float(row[k]):.4g}" for k in keys]
    parts.append(f"beta {float(row['beta']):.3g}")
    if row.get("val_active_scales"):
        parts.append(f"active maps {row['val_active_scales']}")
    return "  ".join(parts) + f"  [{metric}]"
