"""The downstream proof: train SRDRN in several arms on the same split, budget and seeds; say which helps extremes.

Arms (all train on the train split and are scored on the test days, in mm/day):

- ``baseline``: real days, intensity-weighted MAE (SRDRN's loss);
- ``augment``: real days plus accepted cVAE samples of heavy training days, weighted MAE;
- ``oversample``: real days, heavy days drawn more often, to the heavy share of ``augment``;
- ``reweight``: real days with DenseWeight sample weights of their land-mean precipitation;
- ``quantile``: real days, multi-quantile pinball loss (the 0.5 quantile is the point prediction);
- ``quantile_augment``: real plus synthetic, pinball loss;
- ``augment_newx``: real plus synthetic pairs whose coarse precipitation channel is re-derived from the synthetic
  target (see :func:`coarse_precipitation`) and put on the channel's scale by a straight line fitted, over
  training days, from coarse-grained observations to the channel; so a synthetic day is a new (X, Y) pair, not a
  second label of a real X. Every other channel is kept as it is; the arm is skipped when X has no
  precipitation channel;
- ``augment_pairs``: real plus synthetic pairs whose every X channel is made from the synthetic target by the operator
  that made the real X (recorded by `prepare --coarsen` when the predictors are the target block-averaged, see
  :mod:`precip_cvae.data.coarsen`): each synthetic day is a new, consistent (X, Y) pair. Skipped, with the reason,
  when some channel has no recorded operator or the operator does not reproduce the prepared X of training days.

Every run has the same number of gradient steps and batch size; batches are drawn with replacement, with the
arm's row probabilities, from a generator seeded by the seed alone (so arms share initial weights per seed). Runs
are saved as they finish: a re-run skips them (an interrupted experiment resumes).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from precip_cvae import loop
from precip_cvae.config import ARMS, Config, ExperimentConfig
from precip_cvae.data import coarsen
from precip_cvae.data.dataset import PreparedData
from precip_cvae.data.sample_store import MANIFEST, SampleStore
from precip_cvae.downstream.losses import crps_from_quantiles, density_weights, pinball, weighted_mae
from precip_cvae.downstream.srdrn import SRDRN, recalibrate_batchnorm, set_bn_momentum
from precip_cvae.downstream.stats import paired_difference
from precip_cvae.errors import InputError
from precip_cvae.fileio import content_sha256, output_lock, remove_temporaries, save_npy, write_json
from precip_cvae.generator import select_device
from precip_cvae.heap import keep_freed_memory
from precip_cvae.loop import Precision
from precip_cvae.metrics import Categorical, Deterministic, Fields, Intensities, Mean, Scores
from precip_cvae.quality import mean_mass_ratio

PRECIP_CHANNELS = ("pr", "pr_coarse", "tp", "rr", "prate", "precip", "precipitation", "prcp", "tprate")
#: Metrics where lower is better (others: "zero" = closest to 0, "higher").
RULES = {"MAE_all": "lower", "MAE_tail": "lower", "RMSE_all": "lower", "quantile_bias_P99": "zero",
         "quantile_bias_P99.9": "zero", "CRPS_q": "lower"}  # fmt: skip


#: Settings shared by every arm: the config's ``experiment`` section (the name kept for callers of the API).
ExperimentOptions = ExperimentConfig


@dataclass
class Row:
    """One training example: a real day, or a synthetic sample of a day whose X is, by ``x_from``, the real day's
    ("real"), the real day's with its coarse precipitation channel re-derived from the synthetic target ("precip"), or
    every channel made from the synthetic target by the operator `prepare` recorded ("target")."""

    day: int
    sample: int = -1
    x_from: str = "real"

    @property
    def synthetic(self) -> bool:
        return self.sample >= 0


def coarse_precipitation(field_mm: np.ndarray, data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """Conservative coarse-graining of a high-resolution field onto the coarse grid, by cell membership.

    Each high-resolution pixel belongs to the coarse cell whose bounds (midpoints between coarse centres) contain its
    centre; a coarse cell's value is the mean of its valid member pixels. Returns ``(values (h, w), covered (h, w)
    bool)``: cells without a valid member pixel (outside the high-resolution domain) are not covered, and the
    caller keeps the real day's value there. Without coordinates the two grids are taken to span the same domain.
    """
    H, W = data.hr_shape
    h, w = data.lr_shape
    if data.hr_lat is not None and data.lr_lat is not None:
        rows = _cell_index(data.hr_lat[:, 0], data.lr_lat[:, 0])
        cols = _cell_index(data.hr_lon[0, :], data.lr_lon[0, :])
    else:
        rows = np.minimum((np.arange(H) + 0.5) * h / H, h - 1e-9).astype(int)
        cols = np.minimum((np.arange(W) + 0.5) * w / W, w - 1e-9).astype(int)
    valid = np.isfinite(field_mm)
    sums = np.zeros((h + 2, w + 2))
    counts = np.zeros((h + 2, w + 2))
    r, c = np.meshgrid(rows + 1, cols + 1, indexing="ij")  # +1: index 0 and h+1 collect pixels outside the grid
    np.add.at(sums, (r[valid], c[valid]), field_mm[valid])
    np.add.at(counts, (r[valid], c[valid]), 1)
    sums, counts = sums[1:-1, 1:-1], counts[1:-1, 1:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan), counts > 0


def _cell_index(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the coarse cell (bounds at midpoints of ascending centres) holding each point; -1 / n outside."""
    if centres.size == 1:
        return np.zeros(points.size, int)
    edges = np.r_[centres[0] - (centres[1] - centres[0]) / 2, (centres[1:] + centres[:-1]) / 2,
                  centres[-1] + (centres[-1] - centres[-2]) / 2]  # fmt: skip
    return np.searchsorted(edges, points, side="right") - 1


#: Arms trained on synthetic samples.
SAMPLE_ARMS = ("augment", "quantile_augment", "augment_newx", "augment_pairs")
#: Arms whose rows do not depend on the sample store: a finished run of one is kept when only the samples changed
#: (``oversample`` is not among them: its heavy share follows the number of accepted samples).
SAMPLE_FREE_ARMS = ("baseline", "quantile", "reweight")

#: Largest in-memory copy of an arm's rows, in bytes, shared by an experiment's processes (``experiment.jobs``): below
#: its share a run loads every row once and draws its batches from memory (on its device); above it a DataLoader reads
#: each batch's rows from disk.
IN_MEMORY_BYTES = 2 * 1024**3


class Examples:
    """Loads rows as tensors: (inputs (C, h, w), target (1, H, W) normalized, 0 where missing, mask (1, H, W))."""

    def __init__(self, data: PreparedData, store: SampleStore | None):
        self.data, self.store = data, store
        self._real: dict[str, torch.Tensor] | None = None  # the real training days, stacked (see stacked())
        self.precip_channel = next(
            (i for i, v in enumerate(data.variables) if v["name"].lower() in PRECIP_CHANNELS), None
        )
        self.valid = torch.from_numpy(data.valid_mask)[None]
        if self.precip_channel is not None:
            self.alpha, self.beta = self._calibrate()
        self.derived = [v.get("derived_from_target") for v in data.variables]
        self.x_mean = np.array([v["mean"] for v in data.variables], np.float32)[:, None, None]
        self.x_std = np.array([v["std"] for v in data.variables], np.float32)[:, None, None]

    def derive_inputs(self, field_mm: np.ndarray) -> np.ndarray:
        """(C, h, w) normalized predictors made from a high-resolution field in mm/day by the operators `prepare`
        recorded (every channel must have one)."""
        raw = np.stack([coarsen.derive(record, field_mm) for record in self.derived])
        return ((raw - self.x_mean) / self.x_std).astype(np.float32)

    def derivation_error(self, n_days: int = 8) -> float:
        """Largest |X re-derived from the observed target - the prepared X| over a few training days, in channel
        standard deviations: ~1e-6 when the recorded operator is the one that made X (an input check)."""
        ids = self.data.ids("train")
        ids = ids[:: max(1, len(ids) // n_days)][:n_days]
        return max(float(np.nanmax(np.abs(self.derive_inputs(self.data.target_mm(d)) - self.data.inputs(d))))
                   for d in ids)  # fmt: skip

    def _calibrate(self, max_days: int = 400) -> tuple[float, float]:
        """Least-squares line from coarse-grained observed precipitation (mm/day) to the normalized precipitation
        channel, over training days: the channel's own scale, whatever normalization (SRDRN's included) made it."""
        ids = self.data.ids("train")
        ids = ids[:: max(1, len(ids) // max_days)]
        xs, ys = [], []
        for day in ids:
            coarse, covered = coarse_precipitation(self.data.target_mm(day), self.data)
            xs.append(coarse[covered])
            ys.append(self.data.inputs(day)[self.precip_channel][covered])
        x, y = np.concatenate(xs), np.concatenate(ys)
        beta, alpha = np.polyfit(x, y, 1) if x.size > 1 and x.std() > 0 else (0.0, float(y.mean()))
        return float(alpha), float(beta)

    def load(self, row: Row) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not row.synthetic:
            inputs, target = self.data.inputs(row.day), self.data.target(row.day)
        else:
            inputs, target = self.store.load(row.day, row.sample)
            if row.x_from != "real":
                mm = self.data.normalization.to_mm(target[0])
                mm = np.where(self.data.valid_mask, mm, np.nan)
            if row.x_from == "precip":
                inputs = inputs.copy()
                coarse, covered = coarse_precipitation(mm, self.data)
                channel = inputs[self.precip_channel]
                channel[covered] = (self.alpha + self.beta * coarse)[covered]
            elif row.x_from == "target":
                inputs = np.where(np.isfinite(derived := self.derive_inputs(mm)), derived, inputs)
        target = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
        mask = torch.isfinite(target) & self.valid
        return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)), torch.where(mask, target, 0.0), mask

    def row_bytes(self) -> int:
        """Bytes of one loaded row: float32 inputs and target, a bool mask."""
        d = self.data
        return 4 * d.n_channels * math.prod(d.lr_shape) + 5 * math.prod(d.hr_shape)

    def stacked(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        """``rows`` loaded and stacked: ``inputs`` (N, C, h, w), ``target`` and ``mask`` (N, 1, H, W), what
        :meth:`load` gives row by row. The real training days, with which every arm's rows begin, are loaded once per
        process and shared by its runs."""

        def stack(part: list[Row]) -> dict[str, torch.Tensor]:
            loaded = [self.load(r) for r in part]
            return {k: torch.stack([x[i] for x in loaded]) for i, k in enumerate(("inputs", "target", "mask"))}

        real = [Row(d) for d in self.data.ids("train")]
        if rows[: len(real)] != real:
            return stack(rows)
        if self._real is None:
            self._real = stack(real)
        if len(rows) == len(real):
            return self._real
        rest = stack(rows[len(real) :])
        return {k: torch.cat([self._real[k], rest[k]]) for k in rest}


@dataclass
class ArmPlan:
    """What one arm trains on: rows, their draw probabilities, per-row loss weights, the loss."""

    name: str
    rows: list[Row]
    probabilities: np.ndarray
    weights: np.ndarray
    quantile: bool
    note: str = ""
    heavy_share: float = field(default=0.0)


def plan_arms(data: PreparedData, options: ExperimentOptions, examples: Examples) -> dict[str, ArmPlan | str]:
    """Each arm's plan, or a string saying why it cannot run on this dataset."""
    real = [Row(d) for d in data.ids("train")]
    heavy = np.array([data.is_heavy(r.day) for r in real])
    synth: list[Row] = []
    if examples.store is not None and examples.store.exists():
        accepted = examples.store.accepted()
        train = set(data.ids("train"))
        synth = [Row(d, k) for d in sorted(accepted) if d in train for k in accepted[d][: options.per_day]]
    n_real, n_syn = len(real), len(synth)
    uniform = lambda n: np.full(n, 1.0 / n)  # noqa: E731
    ones = lambda n: np.ones(n)  # noqa: E731
    # oversample matches augment's heavy share unless told otherwise (without samples: twice the natural share)
    augmented_share = (heavy.sum() + n_syn) / (n_real + n_syn) if n_syn else min(0.5, 2 * heavy.mean())
    if options.oversample_share is not None:
        augmented_share = options.oversample_share
    plans: dict[str, ArmPlan | str] = {}
    for arm in options.arms:
        if arm not in ARMS:
            raise InputError(f"--arms: unknown arm {arm!r} (known: {', '.join(ARMS)})")
        if arm in SAMPLE_ARMS and not synth:
            plans[arm] = "no accepted synthetic samples of training days (run `precip-cvae sample` first)"
            continue
        if arm == "augment_newx" and examples.precip_channel is None:
            plans[arm] = "X_lr has no precipitation channel to re-derive"
            continue
        if arm == "augment_pairs" and (why := _pairs_unavailable(examples)):
            plans[arm] = why
            continue
        if arm in ("baseline", "quantile"):
            plans[arm] = ArmPlan(arm, real, uniform(n_real), ones(n_real), arm == "quantile")
        elif arm in ("augment", "quantile_augment"):
            rows = real + synth
            plans[arm] = ArmPlan(arm, rows, uniform(len(rows)), ones(len(rows)), arm == "quantile_augment")
        elif arm in ("augment_newx", "augment_pairs"):
            x_from = "precip" if arm == "augment_newx" else "target"
            rows = real + [Row(r.day, r.sample, x_from) for r in synth]
            plans[arm] = ArmPlan(arm, rows, uniform(len(rows)), ones(len(rows)), False)
        elif arm == "oversample":
            p = np.where(heavy, augmented_share / max(heavy.sum(), 1), (1 - augmented_share) / max((~heavy).sum(), 1))
            plans[arm] = ArmPlan(arm, real, p / p.sum(), ones(n_real), False, f"heavy share {augmented_share:.3f}")
        elif arm == "reweight":
            w = density_weights(data.land_means[[r.day for r in real]], alpha=options.reweight_alpha)
            plans[arm] = ArmPlan(arm, real, uniform(n_real), w, False, f"DenseWeight alpha {options.reweight_alpha}")
        plan = plans[arm]
        if isinstance(plan, ArmPlan):
            is_heavy = np.array([r.synthetic or data.is_heavy(r.day) for r in plan.rows])
            plan.heavy_share = float((plan.probabilities * is_heavy).sum())
    return plans


def _pairs_unavailable(examples: Examples, tolerance: float = 1e-3) -> str:
    """Why ``augment_pairs`` cannot run on this dataset ("" when it can)."""
    names = [v["name"] for v, d in zip(examples.data.variables, examples.derived, strict=True) if d is None]
    if names:
        return (f"X_lr channel(s) {', '.join(names)} not made from the target by a recorded operator "
                "(only `prepare --coarsen` from the target's own file records one)")  # fmt: skip
    error = examples.derivation_error()
    if error > tolerance:
        return f"the recorded operator does not reproduce the prepared X_lr (off by up to {error:.3g} sd)"
    return ""


def input_distance(plan: ArmPlan, examples: Examples, max_rows: int = 200) -> dict | None:
    """How far an arm's synthetic inputs are from their real day's, per channel: mean |X_syn - X_real| over grid
    points and synthetic rows (up to ``max_rows``), in standard deviations of that channel over training days. 0 means
    the model sees the real day's X with another target (the case a deterministic model averages away). None when the
    arm has no synthetic row."""
    rows = [r for r in plan.rows if r.synthetic]
    if not rows:
        return None
    rows = rows[:: max(1, len(rows) // max_rows)]
    data = examples.data
    train = data.ids("train")
    real = np.stack([data.inputs(d) for d in train[:: max(1, len(train) // max_rows)]])
    sd = real.std(axis=(0, 2, 3))
    diffs = np.stack([np.abs(examples.load(r)[0].numpy() - data.inputs(r.day)).mean(axis=(1, 2)) for r in rows])
    per_channel = diffs.mean(axis=0) / np.where(sd > 0, sd, 1.0)
    return {"mean_abs_dx_sd": float(per_channel.mean()), "per_channel": {v["name"]: float(x) for v, x in
            zip(data.variables, per_channel, strict=True)}, "rows": len(rows)}  # fmt: skip


def target_mass_ratio(plan: ArmPlan, examples: Examples, key: str = "mass_ratio") -> float | None:
    """The mean land total of an arm's synthetic targets ÷ their real day's, from the gate's record of each sample in
    the store's manifest (1: as wet as the days they stand for; ``key`` drawn_mass_ratio: before `sample` rescaled
    them). None when the arm has no synthetic row or the manifest records no ratio."""
    keys = {(r.day, r.sample) for r in plan.rows if r.synthetic}
    if not keys:
        return None
    records = examples.store.manifest().get("samples", [])
    return mean_mass_ratio([s for s in records if (s.get("day"), s.get("sample")) in keys], key)


def target_mass(plan: ArmPlan, examples: Examples) -> dict:
    """``target_mass_ratio`` and ``drawn_mass_ratio`` (:func:`target_mass_ratio`) of an arm's synthetic targets, and
    the store's ``preserve_mass`` (None for an arm without synthetic rows)."""
    ratio = target_mass_ratio(plan, examples)
    if ratio is None:
        return {"target_mass_ratio": None, "drawn_mass_ratio": None, "preserve_mass": None}
    return {"target_mass_ratio": ratio, "drawn_mass_ratio": target_mass_ratio(plan, examples, "drawn_mass_ratio"),
            "preserve_mass": examples.store.manifest().get("options", {}).get("preserve_mass", "none")}  # fmt: skip


class ArmRows(Dataset):
    """The rows of one arm as DataLoader items: ``inputs`` (C, h, w), ``target`` (1, H, W) normalized (0 where
    missing), ``mask`` (1, H, W) bool and the row's loss ``weight``."""

    def __init__(self, plan: ArmPlan, examples: Examples):
        self.plan, self.examples = plan, examples

    def __len__(self) -> int:
        return len(self.plan.rows)

    def __getitem__(self, i: int) -> dict:
        inputs, target, mask = self.examples.load(self.plan.rows[i])
        return {"inputs": inputs, "target": target, "mask": mask, "weight": torch.tensor(float(self.plan.weights[i]))}


def _srdrn_forward(model: torch.nn.Module, batch: dict, generator: torch.Generator | None) -> torch.Tensor:
    return model(batch["inputs"], batch["statics"])


def train_run(
    plan: ArmPlan, examples: Examples, data: PreparedData, options: ExperimentConfig, seed: int, config: Config,
    device: torch.device, progress: bool = False, memory_bytes: int = IN_MEMORY_BYTES,
) -> tuple[SRDRN, dict]:  # fmt: skip
    """Train one SRDRN for ``options.steps`` steps on the arm's rows, through the cVAE's training-loop pieces
    (:mod:`precip_cvae.loop`: DataLoader, mixed precision per ``train.amp``, ``experiment.grad_clip``, NaN guard).

    Batches are drawn with replacement with the arm's row probabilities, from a generator seeded by ``seed`` alone.
    ``experiment.schedule`` sets the learning rate per step, ``experiment.bn_momentum`` the BatchNorm momentum, and
    ``experiment.bn_recalibrate`` > 0 re-estimates the BatchNorm statistics over that many batches afterwards.
    ``experiment.ema`` > 0 trains as usual but validates, keeps and returns the moving average of the weights
    (:class:`~precip_cvae.loop.WeightAverage` with that decay) instead of the optimizer's last point.
    ``experiment.val_every`` > 0 scores the validation days every that many steps (never test days) and keeps the
    weights with the best :func:`validation_score`. The arm's rows are held in memory when they take at most
    ``memory_bytes``, else read from disk batch by batch (the same batches either way). Returns the model (in eval
    mode) and the selection record: the validation scores by step, the best step and score."""
    torch.manual_seed(seed)
    n_out = len(options.quantiles) if plan.quantile else 1
    model = SRDRN(data.n_channels, data.lr_shape, data.hr_shape, len(data.static_names), options.filters,
                  options.n_blocks, n_out).to(device)  # fmt: skip
    if options.channels_last or (options.channels_last is None and device.type == "cpu"):
        model = model.to(memory_format=torch.channels_last)
    set_bn_momentum(model, options.bn_momentum)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    draws = torch.Generator().manual_seed(seed)
    memory = None
    if len(plan.rows) * examples.row_bytes() <= memory_bytes:
        weights = torch.as_tensor(plan.weights, dtype=torch.float32)
        memory = {k: v.to(device) for k, v in {**examples.stacked(plan.rows), "weight": weights}.items()}

    def loader(n_batches: int) -> Iterable[dict]:
        """Batches of rows drawn with replacement by the arm's probabilities: from memory, or by a DataLoader (the
        same rows in the same order either way)."""
        sampler = WeightedRandomSampler(
            plan.probabilities.tolist(), n_batches * options.batch_size, replacement=True, generator=draws
        )
        if memory is not None:
            return _batches_in_memory(memory, sampler, options.batch_size)
        return DataLoader(ArmRows(plan, examples), batch_size=options.batch_size, sampler=sampler,
                          num_workers=config.data.num_workers)  # fmt: skip

    statics = torch.from_numpy(data.statics)[None].to(device)

    def to_device(batch: dict) -> dict:
        return {**{k: v.to(device, non_blocking=True) for k, v in batch.items()}, "statics": statics}

    def loss_fn(pred: torch.Tensor, b: dict) -> dict:
        pred = pred.float()
        if plan.quantile:
            return {"total": pinball(pred, b["target"], b["mask"], options.quantiles, weights=b["weight"])}
        return {"total": weighted_mae(pred, b["target"], b["mask"], data.normalization, weights=b["weight"])}

    def lr_for_step(i: int) -> float:
        return loop.scheduled_lr(options.lr, options.schedule, i, options.steps)

    average = loop.WeightAverage(model, options.ema, options.ema_warmup) if options.ema > 0 else None
    # the weights validated, kept and returned: the moving average when there is one, else the optimizer's
    scored = copy.deepcopy(model) if average is not None else model

    def current() -> torch.nn.Module:
        if average is not None:
            average.copy_to(scored)
        return scored

    batches = iter(loader(options.steps))
    every = options.val_every if options.val_every > 0 else options.steps
    selection: dict = {"val_every": options.val_every, "scores": []}
    best: tuple[float, dict] | None = None
    for start in range(0, options.steps, every):
        n = min(every, options.steps - start)
        loop.run_steps(
            model, itertools.islice(batches, n), optimizer, lambda i: loss_fn, forward=_srdrn_forward,
            to_device=to_device, n_steps=n, precision=Precision.for_device(device, config.train.amp),
            grad_clip=options.grad_clip, desc=f"{plan.name} seed {seed}", progress=progress,
            batch_size_key="experiment.batch_size", lr_for_step=lambda i, start=start: lr_for_step(start + i),
            advice="lower experiment.lr, set experiment.grad_clip, or set train.amp=false",
            after_step=None if average is None else lambda: average.update(model),
        )  # fmt: skip
        if options.val_every > 0:
            scores = score_run(current().eval(), plan, data, options, device, split="val", heavy_only=True)
            score = validation_score(scores)
            model.train()
            selection["scores"].append([start + n, score])
            if best is None or score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in scored.state_dict().items()})
                selection["best_step"], selection["best_score"] = start + n, score
    model = current()
    if best is not None:
        model.load_state_dict(best[1])
    if options.bn_recalibrate > 0:  # after the training draws, from the same generator: reproducible per seed
        recalibrate_batchnorm(model, (to_device(b) for b in loader(options.bn_recalibrate)),
                              lambda m, b: _srdrn_forward(m, b, None))  # fmt: skip
    return model.eval(), selection


def _batches_in_memory(rows: dict[str, torch.Tensor], sampler: WeightedRandomSampler, batch_size: int):
    """The DataLoader's batches, indexed from stacked rows: the sampler draws its indices when iteration starts, as
    it does under a DataLoader."""
    order = torch.tensor(list(sampler), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size].to(rows["inputs"].device)
        yield {k: v[index] for k, v in rows.items()}


def validation_score(scores: dict) -> float:
    """What selects a run's checkpoint: MAE above P95 on heavy validation days (on all validation days when there is
    no heavy one or no tail pixel on them); lower is better, NaN counts as worst."""
    for subset in ("heavy", "all"):
        value = (scores.get(subset) or {}).get("MAE_tail")
        if value is not None and np.isfinite(value):
            return float(value)
    return float("inf")


#: Scores kept day by day (numerator and denominator sums of the Deterministic accumulator), for the bootstrap.
DAILY_SCORES = {"MAE_tail": ("tail_abs", "tail_n"), "MAE_all": ("abs", "n")}
#: Consecutive test days per bootstrap block: daily weather is autocorrelated over a few days.
BOOTSTRAP_BLOCK_DAYS = 7


def point_scores(thresholds: dict[str, float]) -> Scores:
    """The scores of a point prediction on test days, in mm/day: the accumulators (and names) of `evaluate`'s."""
    return Scores(
        {
            "deterministic": Deterministic(tail=thresholds["P95"]),
            "categorical": Categorical(thresholds),
            "intensities": Intensities(quantiles=(0.99, 0.999)),
        }
    )


@torch.no_grad()
def score_run(
    model: SRDRN, plan: ArmPlan, data: PreparedData, options: ExperimentOptions, device, split: str = "test",
    heavy_only: bool = False,
) -> dict:  # fmt: skip
    """Scores of one trained model on all days and on heavy days of ``split`` (test; val to choose settings), or on
    its heavy days alone with ``heavy_only`` (all its days when it has none)."""
    thresholds = {k: data.thresholds_mm[k] for k in ("P95", "P99")}
    thresholds.update({f"{t:g}mm": t for t in options.fixed_thresholds_mm})
    scores = {"all": point_scores(thresholds), "heavy": point_scores(thresholds)}
    crps_q = {"all": Mean("CRPS_q"), "heavy": Mean("CRPS_q")}
    daily: dict = {"day": [], "heavy": [], **{m: {"num": [], "den": []} for m in DAILY_SCORES}}
    statics = torch.from_numpy(data.statics)[None].to(device)
    days = heavy_days(data, split) if heavy_only else data.ids(split)
    median = options.quantiles.index(0.5) if plan.quantile and 0.5 in options.quantiles else 0
    map_day_, map_mm = map_day(data, split), None
    for start in range(0, len(days), 32):
        batch = days[start : start + 32]
        inputs = torch.from_numpy(np.stack([data.inputs(d) for d in batch])).to(device)
        out = model(inputs, statics).float().cpu().numpy()
        # An extrapolating network can ask for exp(40): the transform's cap (about 3000 mm/day) makes one absurd
        # pixel cost what it should, not infinity.
        mm = data.normalization.to_mm(out)
        for b, day in enumerate(batch):
            obs = data.target_mm(day)
            mask = data.valid_mask & np.isfinite(obs)
            crps = None
            if plan.quantile:
                crps = crps_from_quantiles(torch.from_numpy(mm[b][None]), torch.from_numpy(obs[None, None]),
                                           options.quantiles, torch.from_numpy(mask[None, None]))  # fmt: skip
            fields = Fields.single(mm[b, median], obs, mask)
            if day == map_day_:
                map_mm = mm[b, median].astype(np.float32)
            one = Deterministic(tail=thresholds["P95"])  # this day's sums, for the bootstrap over days
            one.accum(fields)
            daily["day"].append(int(day))
            daily["heavy"].append(bool(data.is_heavy(day)))
            for m, (num, den) in DAILY_SCORES.items():
                daily[m]["num"].append(float(one.get(num)))
                daily[m]["den"].append(float(one.get(den)))
            for subset in ("all", "heavy") if data.is_heavy(day) else ("all",):
                scores[subset].add(fields)
                if crps is not None:
                    crps_q[subset].accum(crps, weight=fields.n)
    levels = np.round(1 - np.logspace(-4, np.log10(0.5), 30), 6)

    def qq(subset: str) -> dict | None:
        intensities = scores[subset]["intensities"]
        if intensities.obs.n == 0:
            return None
        return {"levels": levels.tolist(), "sim": [intensities.sim.quantile(q) for q in levels],
                "obs": [intensities.obs.quantile(q) for q in levels]}  # fmt: skip

    return {**{k: {**v.compute(), **crps_q[k].compute()} for k, v in scores.items()}, "qq": qq("all"),
            "qq_heavy": qq("heavy"), "daily": daily, "map": {"day": map_day_, "mm": map_mm}}  # fmt: skip


def heavy_days(data: PreparedData, split: str) -> list[int]:
    """The heavy days of ``split``, or all its days when it has none."""
    days = data.ids(split)
    return [d for d in days if data.is_heavy(d)] or days


def map_day(data: PreparedData, split: str = "test") -> int:
    """The day every arm's map shows: the heavy day of ``split`` with the largest land mean (any day if none)."""
    return max(heavy_days(data, split), key=lambda d: np.nan_to_num(data.land_means[d], nan=-np.inf))


#: A run "blows up" on heavy days when its P99 there is off by more than this fraction of the observed P99.
BLOWUP_RELATIVE = 1.0


def blowups(results: dict[str, list[dict]]) -> list[dict]:
    """Runs whose P99 on heavy test days is off by more than :data:`BLOWUP_RELATIVE` of the observed P99 (on all test
    days when there is no heavy one): arm, seed (its position), the two P99s and the relative bias."""
    out = []
    for arm, runs in results.items():
        for seed, run in enumerate(runs):
            scores = run.get("heavy") if (run.get("heavy") or {}).get("quantile_ratio_P99") is not None else run["all"]
            ratio = scores.get("quantile_ratio_P99")
            if ratio is not None and np.isfinite(ratio) and abs(ratio - 1.0) > BLOWUP_RELATIVE:
                out.append({"arm": arm, "seed": seed, "sim": scores["quantile_sim_P99"],
                            "obs": scores["quantile_obs_P99"], "relative_bias": ratio - 1.0})  # fmt: skip
    return out


def beyond_training_range(data: PreparedData, results: dict[str, list[dict]], split: str = "test",
                          top: int = 10) -> dict:  # fmt: skip
    """The days of ``split`` whose predictors leave the range the training days span, and what they cost each arm.

    The days and their excess are :meth:`~precip_cvae.data.dataset.PreparedData.beyond_training_range`'s. A network
    trained on the record extrapolates on such a day; the downstream SRDRN predicts log1p(mm/day), so its
    error there can grow exponentially and one day can carry much of a pooled score. Returned: ``count`` (excess
    > 0), ``beyond_1sd``, ``heavy``, ``days`` (the ``top`` furthest, each with its channel, value, the training
    bound, and per arm the mean over seeds of its MAE on that day and of its share of the arm's MAE above P95 on
    heavy days), ``median_day_mae`` per arm (the median over days of the seed-mean daily MAE).
    """
    found = data.beyond_training_range(data.ids(split))
    daily_mae, heavy_share, median = {}, {}, {}
    for arm, runs in results.items():
        runs = [r for r in runs if "daily" in r]
        if not runs:
            continue
        num = np.array([r["daily"]["MAE_all"]["num"] for r in runs])
        den = np.array([r["daily"]["MAE_all"]["den"] for r in runs])
        with np.errstate(invalid="ignore", divide="ignore"):
            per_day = np.nanmean(num / den, axis=0)
        index = {d: i for i, d in enumerate(runs[0]["daily"]["day"])}
        heavy = np.array(runs[0]["daily"]["heavy"], bool)
        tail_num = np.array([r["daily"]["MAE_tail"]["num"] for r in runs])
        tail_den = np.array([r["daily"]["MAE_tail"]["den"] for r in runs])[:, heavy].sum(axis=1)
        median[arm] = float(np.nanmedian(per_day))
        for f in found[:top]:
            i = index.get(f["day"])
            if i is None:
                continue
            daily_mae.setdefault(f["day"], {})[arm] = float(per_day[i])
            if heavy[i]:
                heavy_share.setdefault(f["day"], {})[arm] = float(np.mean(tail_num[:, i] / np.maximum(tail_den, 1)))
    days = [{**f, "mae": daily_mae.get(f["day"], {}), "heavy_mae_tail_share": heavy_share.get(f["day"], {})}
            for f in found[:top]]  # fmt: skip
    return {"split_days": len(data.ids(split)), "training_days": len(data.ids("train")), "count": len(found),
            "beyond_1sd": sum(f["excess_sd"] > 1 for f in found), "heavy": sum(f["heavy"] for f in found),
            "days": days, "median_day_mae": median, "day_ids": [f["day"] for f in found]}  # fmt: skip


#: The baseline "has stopped improving" when its best validation score over the last quarter of the budget is less
#: than this fraction below its best before it (mean over seeds).
CONVERGED_GAIN = 0.02


def convergence(runs: list[dict]) -> dict | None:
    """Whether the budget was long enough, from the validation curves the runs recorded (``experiment.val_every``):
    the relative gain of the best score in the last quarter of the steps over the best before, per seed and on
    average, and whether that average is below :data:`CONVERGED_GAIN`. None without curves."""
    gains = []
    for run in runs:
        curve = (run.get("selection") or {}).get("scores") or []
        if len(curve) < 4:
            continue
        last = curve[-1][0]
        before = [score for step, score in curve if step <= 0.75 * last]
        after = [score for step, score in curve if step > 0.75 * last]
        if before and after and np.isfinite(min(before)) and min(before) > 0:
            gains.append(float((min(before) - min(after)) / min(before)))
    if not gains:
        return None
    mean = float(np.mean(gains))
    return {"last_quarter_gain": gains, "mean_gain": mean, "converged": mean < CONVERGED_GAIN,
            "steps": int(runs[0]["selection"]["scores"][-1][0])}  # fmt: skip


def _interval(values: list[float]) -> dict:
    """Mean and 95 % confidence interval (Student t over seeds)."""
    x = np.array([v for v in values if v is not None and np.isfinite(v)], float)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if x.size == 1:
        return {"mean": float(x[0]), "low": None, "high": None, "n": 1}
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return {"mean": float(x.mean()), "low": float(x.mean() - half), "high": float(x.mean() + half), "n": int(x.size)}


def _kept_days(run: dict, subset: str, exclude: frozenset[int] = frozenset()) -> np.ndarray:
    """Which of a run's daily records belong to ``subset`` ("all", or "heavy" test days), less the days of
    ``exclude``."""
    keep = np.ones(len(run["daily"]["day"]), bool)
    if subset == "heavy":
        keep = np.array(run["daily"]["heavy"], bool)
    if exclude:
        keep &= ~np.isin(np.array(run["daily"]["day"]), list(exclude))
    return keep


def _paired(runs: list[dict], base: list[dict], subset: str, metric: str,
            exclude: frozenset[int] = frozenset()) -> dict | None:  # fmt: skip
    """The seed-and-day bootstrap of ``metric``'s difference to ``baseline`` on ``subset``'s test days, less those of
    ``exclude`` (None for runs stored before per-day sums were kept, or runs of other days)."""
    n = min(len(runs), len(base))
    pairs = list(zip(runs[:n], base[:n], strict=True))
    if n == 0 or any("daily" not in r or "daily" not in b or r["daily"]["day"] != b["daily"]["day"] for r, b in pairs):
        return None
    keep = _kept_days(base[0], subset, exclude)
    if not keep.any():
        return None

    def arrays(group: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        num = np.array([g["daily"][metric]["num"] for g in group])[:, keep]
        den = np.array([g["daily"][metric]["den"] for g in group])[:, keep]
        return num, den

    return paired_difference(*arrays(runs[:n]), *arrays(base[:n]), block=BOOTSTRAP_BLOCK_DAYS)


def summarize(results: dict[str, list[dict]], beyond_range: frozenset[int] = frozenset()) -> dict:
    """Per arm and metric: mean and 95 % CI over seeds, and the paired difference to ``baseline`` (its interval over
    seeds, and for :data:`DAILY_SCORES` the seed-and-day bootstrap with the minimum detectable effect, "paired").

    With ``beyond_range`` (test days whose predictors leave the training days' range) holding a heavy day, a third
    subset, "heavy_in_range": the :data:`DAILY_SCORES` on the heavy test days without them, from the runs' per-day
    sums."""
    summary = _summarize_full(results)
    base = results.get("baseline")
    runs0 = next(iter(results.values()), [])
    if not beyond_range or not runs0 or any("daily" not in r for runs in results.values() for r in runs):
        return summary
    if _kept_days(runs0[0], "heavy").sum() == _kept_days(runs0[0], "heavy", beyond_range).sum():
        return summary
    for arm, runs in results.items():
        block = {}
        for m in DAILY_SCORES:
            per_seed = [_daily_score(r, m, _kept_days(r, "heavy", beyond_range)) for r in runs]
            entry = {"value": _interval(per_seed)}
            if base and arm != "baseline":
                base_seed = [_daily_score(b, m, _kept_days(b, "heavy", beyond_range)) for b in base]
                entry["minus_baseline"] = _interval([a - b for a, b in zip(per_seed, base_seed, strict=False)
                                                     if a is not None and b is not None])  # fmt: skip
                paired = _paired(runs, base, "heavy", m, beyond_range)
                if paired is not None:
                    entry["paired"] = paired
            block[m] = entry
        summary[arm]["heavy_in_range"] = block
    return summary


def _daily_score(run: dict, metric: str, keep: np.ndarray) -> float | None:
    """A run's ``metric`` over the kept days, from its per-day sums (a ratio of sums, as the pooled score)."""
    num = np.asarray(run["daily"][metric]["num"], float)[keep].sum()
    den = np.asarray(run["daily"][metric]["den"], float)[keep].sum()
    return float(num / den) if den > 0 else None


def _summarize_full(results: dict[str, list[dict]]) -> dict:
    summary: dict = {}
    base = results.get("baseline")
    for arm, runs in results.items():
        summary[arm] = {}
        for subset in ("all", "heavy"):
            metrics = runs[0][subset].keys()
            block = {}
            for m in metrics:
                entry = {"value": _interval([r[subset][m] for r in runs])}
                if base and arm != "baseline":
                    pairs = [r[subset][m] - b[subset][m] for r, b in zip(runs, base, strict=False)
                             if r[subset][m] is not None and b[subset][m] is not None]  # fmt: skip
                    entry["minus_baseline"] = _interval(pairs)
                    if m in DAILY_SCORES:
                        paired = _paired(runs, base, subset, m)
                        if paired is not None:
                            entry["paired"] = paired
                block[m] = entry
            summary[arm][subset] = block
    return summary


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _worse_than_baseline(summary: dict, subset: str, key: str) -> str:
    """A sentence naming the arms whose paired difference to ``baseline`` lies above zero (worse beyond the noise),
    or "" when none does: an arm that hurts is as much an answer as one that helps."""
    worse = []
    for arm, entry in summary.items():
        paired = entry[subset][key].get("paired") if arm != "baseline" else None
        if paired is not None and np.isfinite(paired["se"]) and paired["low"] > 0:
            worse.append(f"{arm} ({paired['mean']:+.2f} mm/day, [{paired['low']:+.2f}, {paired['high']:+.2f}])")
    if not worse:
        return ""
    return " Worse than the baseline beyond the noise (paired difference, 95 % interval): " + ", ".join(worse) + "."


def verdict(summary: dict) -> str:
    """The first paragraph of experiment.md: which arm is best for extremes, by how much, is it noise, and how small a
    difference the run could have seen — in sentences a reader can quote; and the same on the heavy days within the
    training days' range when some are not (:func:`summarize`'s "heavy_in_range")."""
    return _verdict_all(summary) + _in_range_sentence(summary)


def _in_range_sentence(summary: dict, key: str = "MAE_tail") -> str:
    """The verdict's sentence on the heavy test days within the training days' range ("" when all are)."""
    if "baseline" not in summary or "heavy_in_range" not in summary["baseline"]:
        return ""
    scores = {
        a: summary[a]["heavy_in_range"][key]
        for a in summary
        if summary[a]["heavy_in_range"][key]["value"]["mean"] is not None
    }
    base = scores.get("baseline", {}).get("value", {}).get("mean")
    others = sorted(
        (a for a in scores if a != "baseline" and scores[a].get("paired")), key=lambda a: scores[a]["value"]["mean"]
    )
    if base is None or not others:
        return ""
    best = others[0]
    p = scores[best]["paired"]
    if not np.isfinite(p["se"]):
        return ""
    text = (f" Without the heavy test days whose predictors leave the range of the training days (where the networks "
            f"extrapolate; see below), on the other {p['n_days']}: the baseline scored {base:.2f} mm/day and the best "
            f"other arm, {best}, {scores[best]['value']['mean']:.2f} (paired difference {p['mean']:+.2f} mm/day, 95 % "
            f"interval [{p['low']:+.2f}, {p['high']:+.2f}], ")  # fmt: skip
    text += "beyond the noise" if p["high"] < 0 or p["low"] > 0 else "not distinguishable from the noise"
    text += f"; smallest detectable difference {p['mde']:.2f} mm/day, {p['mde'] / base:.0%} of the baseline's"
    if p["n_seeds"] < 2:
        text += "; one seed: the interval covers the choice of test days, not seed-to-seed variation"
    return text + ")."


def _verdict_all(summary: dict) -> str:
    key = "MAE_tail"
    has_heavy = any(summary[a]["heavy"][key]["value"]["mean"] is not None for a in summary)
    subset = "heavy" if has_heavy else "all"
    ranked = sorted(
        (a for a in summary if summary[a][subset][key]["value"]["mean"] is not None),
        key=lambda a: summary[a][subset][key]["value"]["mean"],
    )
    if not ranked:
        return "No arm produced a score on the test days."
    best = ranked[0]
    value = summary[best][subset][key]["value"]
    base = summary["baseline"][subset][key]["value"]["mean"] if "baseline" in summary else None
    ranking = _worse_than_baseline(summary, subset, key) + " Ranking by this metric: " + " < ".join(ranked) + "."
    paired = summary[best][subset][key].get("paired") if best != "baseline" and base is not None else None
    if paired is not None and np.isfinite(paired["se"]):
        where = f"On the {paired['n_days']} {subset} test days"
        interval = (f"95 % interval [{paired['low']:+.2f}, {paired['high']:+.2f}] over "
                    f"{_seeds(paired['n_seeds'])} and test days resampled in {paired['block']}-day blocks")  # fmt: skip
        if paired["n_seeds"] < 2:
            interval += "; one seed: the interval covers the choice of test days, not seed-to-seed variation"
        detect = (f"the smallest difference this run could detect with 80 % power is {paired['mde']:.2f} mm/day "
                  f"({paired['mde'] / base:.0%} of the baseline's)")  # fmt: skip
        if paired["high"] < 0 or paired["low"] > 0:
            text = (f"Best for extremes: **{best}**. {where}, it brought SRDRN's mean absolute error on pixels at or "
                    f"above P95 from {base:.2f} to {value['mean']:.2f} mm/day (paired difference {paired['mean']:+.2f} "
                    f"mm/day, {interval}): larger than the noise; {detect}.")  # fmt: skip
        else:
            text = (f"Best for extremes: **{best}**, but not distinguishable from the noise. {where}, no arm changed "
                    "SRDRN's mean absolute error on pixels at or above P95 by more than this run could detect: the "
                    f"best, {best}, scored {value['mean']:.2f} mm/day against {base:.2f} for the baseline (paired "
                    f"difference {paired['mean']:+.2f} mm/day, {interval}), and {detect}.")  # fmt: skip
        return text + ranking
    text = (f"Best for extremes: **{best}**, with an MAE over pixels at or above P95 on {subset} test days of "
            f"{value['mean']:.2f} mm/day")  # fmt: skip
    if base is not None and best != "baseline":
        diff = summary[best][subset][key]["minus_baseline"]
        text += f" against {base:.2f} for the baseline (paired difference {diff['mean']:+.2f} mm/day"
        if diff["low"] is not None:
            beyond = diff["high"] < 0 or diff["low"] > 0
            text += f", 95 % interval [{diff['low']:+.2f}, {diff['high']:+.2f}] over {_seeds(diff['n'])}: "
            text += (
                "larger than the seed-to-seed noise)." if beyond else "not distinguishable from seed-to-seed noise)."
            )
        else:
            text += "; one seed, no interval)."
    elif best == "baseline":
        text += ": no alternative beat the plain baseline"
        nearest = ranked[1] if len(ranked) > 1 else None
        near = summary[nearest][subset][key].get("paired") if nearest else None
        if near is not None and np.isfinite(near["se"]) and base:
            text += (
                f" (the nearest, {nearest}, by {near['mean']:+.2f} mm/day, 95 % interval [{near['low']:+.2f}, "
                f"{near['high']:+.2f}]; the smallest difference this run could detect with 80 % power is "
                f"{near['mde']:.2f} mm/day, {near['mde'] / base:.0%} of the baseline's)"
            )
        text += "."
    return text + ranking


def run_experiment(
    config: Config, options: ExperimentConfig | None = None, out_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """Run every (arm, seed) not yet done, then write experiment.json, experiment.md and figures into out_dir
    (holding its :func:`~precip_cvae.fileio.output_lock`: one experiment writes there at a time).

    ``options`` default to ``config.experiment``; the device is ``config.train.device``."""
    out_dir = Path(out_dir) if out_dir else Path(config.data.outputs_root) / "experiment"
    options = options or config.experiment
    benchmark = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
        with output_lock(out_dir):
            return _run_experiment(config, options, out_dir, progress)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _run_experiment(config: Config, options: ExperimentConfig, out_dir: Path, progress: bool) -> dict:
    data = PreparedData(config.data.data_root)
    synth_dir = options.source or str(Path(config.data.outputs_root) / "synth")
    changes = {"source": synth_dir}
    if options.epochs:  # the budget in passes over the real training days
        changes["steps"] = options.epochs * math.ceil(len(data.ids("train")) / options.batch_size)
    options = replace(options, **changes)
    device = select_device(config.train.device)
    data.check_days([i for split in ("train", "val", "test") for i in data.ids(split)])
    examples = Examples(data, SampleStore(synth_dir, data))
    plans = plan_arms(data, options, examples)
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir, runs_dir)  # left by a killed run
    skipped = {arm: why for arm, why in plans.items() if isinstance(why, str)}
    runs = [(arm, s) for arm, p in plans.items() if isinstance(p, ArmPlan) for s in range(options.seeds)]
    settings = run_settings(options, config, data, examples, device)
    finished = {
        run: json.loads(run_path(runs_dir, *run).read_text()) for run in runs if run_path(runs_dir, *run).is_file()
    }
    for run, record in finished.items():
        recorded = record.get("settings") or {}
        if "metadata_sha256" in recorded and data.matches_metadata_sha256(recorded["metadata_sha256"]):
            # this dataset's hash, or the one recorded before prepare's report was left out of it
            record = {**record, "settings": {**recorded, "metadata_sha256": settings["metadata_sha256"]}}
        check_run_settings(run_path(runs_dir, *run), record, settings, run[0])
    todo = [run for run in runs if run not in finished]
    if options.jobs > 1 and len(todo) > 1:
        jobs = min(options.jobs, len(todo))
        threads = max(1, (os.cpu_count() or 1) // options.jobs)
        context = torch.multiprocessing.get_context("spawn")
        share = IN_MEMORY_BYTES // jobs  # each process holds its own rows
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(config, options, str(device), threads, share)) as pool:  # fmt: skip
            futures = [pool.submit(_worker_run, arm, seed, str(runs_dir), settings) for arm, seed in todo]
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="experiment", unit="run",
                                   disable=not progress):  # fmt: skip
                    future.result()  # a worker's error (bad input, diverged run) stops the experiment here
            except BaseException:
                for future in futures:  # runs not started are dropped; finished ones are kept for a re-run
                    future.cancel()
                raise
    else:
        for arm, seed in tqdm(todo, desc="experiment", unit="run", disable=not progress):
            _run_one(plans[arm], examples, data, options, seed, config, device, runs_dir, settings, progress)
    results: dict[str, list[dict]] = {}
    for arm, seed in runs:
        record = finished.get((arm, seed)) or json.loads(run_path(runs_dir, arm, seed).read_text())
        results.setdefault(arm, []).append(record)
    beyond = beyond_training_range(data, results)
    summary = summarize(results, frozenset(beyond["day_ids"]))
    report = {
        "options": asdict(options),
        "arms": {
            a: {
                "rows": len(p.rows),
                "heavy_share": p.heavy_share,
                "note": p.note,
                "input_distance": input_distance(p, examples),
                **target_mass(p, examples),
            }
            for a, p in plans.items()
            if isinstance(p, ArmPlan)
        },  # fmt: skip
        "skipped": skipped,
        "test_days": len(data.ids("test")),
        "heavy_test_days": sum(data.is_heavy(d) for d in data.ids("test")),
        "summary": summary,
        "qq": {arm: runs[0].get("qq") for arm, runs in results.items()},
        "qq_heavy": {arm: runs[0].get("qq_heavy") for arm, runs in results.items()},
        "verdict": verdict(summary),
        "blowups": blowups(results),
        "convergence": convergence(results["baseline"]) if "baseline" in results else None,
        "compute": compute_cost(results),
        "beyond_training_range": beyond,
    }
    write_json(out_dir / "experiment.json", report)
    from precip_cvae.downstream.report import write_experiment_report

    maps = {arm: np.load(map_path(runs_dir, arm, 0)) for arm in results if map_path(runs_dir, arm, 0).is_file()}
    day = map_day(data)
    write_experiment_report(out_dir, report, {"day": day, "date": data.date(day), "obs": data.target_mm(day),
                                              "valid": data.valid_mask, "arms": maps})  # fmt: skip
    return report


def _run_one(plan: ArmPlan, examples: Examples, data: PreparedData, options: ExperimentConfig, seed: int,
             config: Config, device: torch.device, runs_dir: Path, settings: dict, progress: bool = False,
             memory_bytes: int = IN_MEMORY_BYTES) -> None:  # fmt: skip
    """Train and score one (arm, seed) and store it: its map first, then its JSON (with the ``settings`` it was
    trained under and what it cost), which marks the run done.

    The cost: wall seconds; CPU seconds of this process (all its threads; DataLoader worker processes not included),
    which a run paused or sharing its cores does not inflate; the device and the CPU threads."""
    started, cpu_started = time.perf_counter(), time.process_time()
    model, selection = train_run(plan, examples, data, options, seed, config, device, progress, memory_bytes)
    scores = {**score_run(model, plan, data, options, device), "selection": selection}
    field = scores.pop("map")
    cost = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
            "device": str(device), "threads": torch.get_num_threads()}  # fmt: skip
    save_npy(map_path(runs_dir, plan.name, seed), field["mm"])
    write_json(run_path(runs_dir, plan.name, seed),
               {**scores, "map_day": field["day"], "settings": settings, "cost": cost})  # fmt: skip


def compute_cost(results: dict[str, list[dict]]) -> dict | None:
    """What the runs cost, from the ``cost`` each recorded (runs stored before it was kept have none): how many were
    timed, their total and mean wall seconds, the same of CPU seconds over the runs that recorded them (``cpu_timed``;
    absent when none did), and the devices and CPU threads they ran on. None when no run was timed."""
    costs = [run["cost"] for runs in results.values() for run in runs if run.get("cost")]
    if not costs:
        return None
    out = {"runs": sum(len(runs) for runs in results.values()), "timed": len(costs),
           **_total_and_mean("seconds", [c["seconds"] for c in costs]),
           "devices": sorted({f"{c['device']}, {c['threads']} thread{'s' if c['threads'] > 1 else ''}"
                              for c in costs})}  # fmt: skip
    cpu = [c["cpu_seconds"] for c in costs if "cpu_seconds" in c]
    if cpu:
        out.update(cpu_timed=len(cpu), **_total_and_mean("cpu_seconds", cpu))
    return out


def _total_and_mean(name: str, values: list[float]) -> dict:
    return {f"{name}_total": float(np.sum(values)), f"{name}_mean": float(np.mean(values))}


#: Keys of ``experiment`` that do not change what one (arm, seed) run computes: a re-run may add seeds or arms, use
#: more processes, or read the same sample store from another place (its manifest's hash stands for its content), and
#: keep the finished runs; the layout and cuDNN's choice of algorithms change the speed, the numbers only by rounding.
RUN_INDEPENDENT = ("arms", "seeds", "jobs", "source", "channels_last", "cudnn_benchmark")


def run_settings(options: ExperimentConfig, config: Config, data: PreparedData, examples: Examples,
                 device: torch.device) -> dict:  # fmt: skip
    """What a finished run's numbers depend on: the ``experiment`` keys but :data:`RUN_INDEPENDENT`, ``train.amp``
    and the precision it gives on ``device`` (float32 on a CPU whatever ``train.amp`` says), and the hashes of the
    dataset's metadata and of the sample store's manifest (not its path)."""
    store = examples.store.root / MANIFEST
    return {
        **{k: v for k, v in asdict(options).items() if k not in RUN_INDEPENDENT},
        "train.amp": config.train.amp,
        "precision": Precision.for_device(device, config.train.amp).name,
        "metadata_sha256": data.metadata_sha256,
        "samples_sha256": content_sha256(store) if store.is_file() else None,
    }


def _recorded_precision(record: dict) -> str:
    """The precision of a run recorded before runs recorded it: float32 on a CPU, bfloat16 on CUDA under
    ``train.amp`` (a GPU without bf16 ran float16, which the record cannot tell)."""
    on_cuda = str(record.get("cost", {}).get("device", "cpu")).startswith("cuda")
    return "bfloat16" if on_cuda and record.get("settings", {}).get("train.amp") else "float32"


def check_run_settings(path: Path, record: dict, settings: dict, arm: str) -> None:
    """Refuse to mix a finished run (``record``, read from ``path``) of ``arm`` made under other settings into this
    experiment's statistics (a re-run into the same ``--out`` with, e.g., another ``--steps``), naming the first keys
    that differ. The sample store's hash counts for arms outside :data:`SAMPLE_FREE_ARMS` only."""
    recorded = record.get("settings")
    if recorded is None:
        raise InputError(f"{path}: this run records no settings (an older version made it); use another --out")
    if "precision" not in recorded:
        recorded = {**recorded, "precision": _recorded_precision(record)}
    # through JSON, as they were stored: tuples become lists
    differ = [k for k, v in json.loads(json.dumps(settings)).items() if recorded.get(k, "(absent)") != v
              and not (k == "samples_sha256" and arm in SAMPLE_FREE_ARMS)]  # fmt: skip
    if differ:
        shown = ", ".join(f"{k} {recorded.get(k, '(absent)')!r} there, {settings[k]!r} now" for k in differ[:3])
        hint = " (train.amp=false trains in float32 on a GPU too)" if "precision" in differ else ""
        raise InputError(f"{path}: this finished run was made under other settings ({shown}){hint}; use another "
                         "--out, or delete its runs/ to train them again")  # fmt: skip


#: A worker process's dataset, examples, plans and settings (``experiment.jobs`` > 1), set once by _start_worker.
_WORKER: dict = {}


def _start_worker(config: Config, options: ExperimentConfig, device: str, threads: int, memory_bytes: int) -> None:
    keep_freed_memory()  # a spawned process starts with glibc's defaults (precip_cvae.heap)
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    data = PreparedData(config.data.data_root)
    examples = Examples(data, SampleStore(options.source, data))
    plans = plan_arms(data, options, examples)
    _WORKER.update(config=config, options=options, device=torch.device(device), data=data, examples=examples,
                   plans=plans, memory_bytes=memory_bytes)  # fmt: skip


def _worker_run(arm: str, seed: int, runs_dir: str, settings: dict) -> None:
    w = _WORKER
    _run_one(w["plans"][arm], w["examples"], w["data"], w["options"], seed, w["config"], w["device"], Path(runs_dir),
             settings, memory_bytes=w["memory_bytes"])  # fmt: skip


def run_path(runs_dir: Path, arm: str, seed: int) -> Path:
    """Where a finished run keeps its scores (its presence marks the run done; a re-run skips it)."""
    return runs_dir / f"{arm}_seed{seed}.json"


def map_path(runs_dir: Path, arm: str, seed: int) -> Path:
    """Where a run keeps its point prediction of the :func:`map_day` (mm/day, (H, W) float32)."""
    return runs_dir / f"{arm}_seed{seed}_map.npy"
