"""Score the generator and reference ensembles on the same days, streaming, and write metrics, figures, report.

For each day of the split the model draws K samples from X_lr alone; the analog, climatological and (on the
synthetic benchmark) oracle ensembles are built for the same day. Every system is scored in mm/day over valid
pixels, on all days and on heavy days, by :class:`precip_cvae.metrics.EnsembleScores`; nothing is kept in
memory but the accumulators and a bounded subsample of values for the Q-Q figure.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from precip_cvae import distributed
from precip_cvae.baselines import AnalogEnsemble, ClimatologyEnsemble, OracleEnsemble
from precip_cvae.config import Config, EvaluateConfig
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.fileio import staged_directory, write_json
from precip_cvae.generator import Generator, select_device
from precip_cvae.metrics import EnsembleScores

#: What `evaluate` does: the config's ``evaluate`` section (the name kept for callers of the API).
EvaluateOptions = EvaluateConfig


class _Reservoir:
    """A uniform random subsample (without replacement) of at most ``size`` values of a stream, for Q-Q plots:
    each value gets a random key and the ``size`` smallest keys are kept (bottom-k sampling)."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.values = np.empty(0, np.float32)
        self.keys = np.empty(0)
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float32)
        self.values = np.concatenate([self.values, values])
        self.keys = np.concatenate([self.keys, self.rng.random(values.size)])
        if self.values.size > self.size:
            keep = np.argpartition(self.keys, self.size)[: self.size]
            self.values, self.keys = self.values[keep], self.keys[keep]

    def merge(self, other: _Reservoir) -> None:
        """The bottom-k sample of both streams (exact when their keys are independent)."""
        self.values = np.concatenate([self.values, other.values])
        self.keys = np.concatenate([self.keys, other.keys])
        if self.values.size > self.size:
            keep = np.argpartition(self.keys, self.size)[: self.size]
            self.values, self.keys = self.values[keep], self.keys[keep]


class _Reliability:
    """Counts for a reliability diagram of P(pr >= threshold): forecast probability bins vs observed frequency."""

    def __init__(self, K: int):
        self.forecast = np.zeros(K + 1)
        self.observed = np.zeros(K + 1)

    def add(self, ens: np.ndarray, obs: np.ndarray, mask: np.ndarray, threshold: float) -> None:
        k = (ens[:, mask] >= threshold).sum(axis=0)
        o = obs[mask] >= threshold
        self.forecast += np.bincount(k, minlength=self.forecast.size)[: self.forecast.size]
        self.observed += np.bincount(k, weights=o, minlength=self.observed.size)[: self.observed.size]

    def merge(self, other: _Reliability) -> None:
        self.forecast += other.forecast
        self.observed += other.observed

    def result(self) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = self.observed / self.forecast
        K = self.forecast.size - 1
        return {
            "probability": (np.arange(K + 1) / K).tolist(),
            "observed_frequency": [None if not np.isfinite(f) else float(f) for f in freq],
            "count": self.forecast.tolist(),
        }


class System:
    """One ensemble system's accumulators for all days and for heavy days."""

    def __init__(self, name: str, K: int, thresholds: dict, seed: int, qq_values: int, rank: int = 0):
        self.name, self.K = name, K
        self.all = EnsembleScores(K, thresholds, rng_seed=seed)
        self.heavy = EnsembleScores(K, thresholds, rng_seed=seed + 1)
        self.values = _Reservoir(qq_values, seed + 2 + 1000 * rank)
        self.reliability = {key: _Reliability(K) for key in ("P95", "P99")}
        self.thresholds = thresholds

    def add(self, ens: np.ndarray, obs: np.ndarray, mask: np.ndarray, heavy: bool) -> None:
        # A member without data at a pixel (an analog day with a station gap) removes that pixel-day from this
        # system's scores rather than counting as 0 mm/day.
        mask = mask & np.isfinite(ens).all(axis=0)
        ens = np.where(mask, ens, np.nan).astype(np.float32)
        self.all.accumulate(ens, obs, mask)
        if heavy:
            self.heavy.accumulate(ens, obs, mask)
        self.values.add(ens[:, mask].ravel())
        for key, r in self.reliability.items():
            r.add(ens, obs, mask, self.thresholds[key])

    def merge(self, other: System) -> None:
        """Add the days another process scored (the scores merge exactly, see :class:`EnsembleScores`)."""
        self.all.merge(other.all)
        self.heavy.merge(other.heavy)
        self.values.merge(other.values)
        for key, r in self.reliability.items():
            r.merge(other.reliability[key])


def run_evaluate(
    config: Config,
    options: EvaluateConfig | None = None,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate on ``options.split``; write ``metrics.json``, figures and ``report.md`` into ``out_dir``
    (default ``<outputs_root>/evaluation``); ``options`` default to ``config.evaluate``. Returns the metrics dict.

    Started by ``torchrun``, each process scores every N-th batch of days and rank 0 merges the scores and writes
    (the other ranks return an empty dict). Batch b of the split draws its samples from a generator seeded by
    ``options.seed`` and b, so the numbers do not depend on the number of processes."""
    options = options or config.evaluate
    if options.mode not in ("prior", "posterior"):
        raise InputError(f"--mode: must be prior or posterior, got {options.mode!r}")
    data = PreparedData(config.data.data_root)
    requested = select_device(config.train.device)
    ctx = distributed.context(requested)
    gen = Generator.from_outputs(data, config.data.outputs_root, checkpoint, distributed.rank_device(requested, ctx))
    days = data.ids(options.split)
    if not days:
        raise InputError(f"--split {options.split}: no days")
    # Analog and climatological pools: the training period for test days, the train split otherwise.
    pool = data.split["train"] + (data.split["val"] if options.split == "test" else [])
    pool = [i for i in pool if i not in set(days)]
    thresholds = {key: data.thresholds_mm[key] for key in ("P95", "P99", "P99.9") if key in data.thresholds_mm}
    builders: dict[str, object] = {}
    if "analog" in options.baselines:
        builders["analog"] = AnalogEnsemble(data, pool, options.K)
    if "climatology" in options.baselines:
        builders["climatology"] = ClimatologyEnsemble(data, pool, options.K, seed=options.seed)
    oracle_path = options.oracle or (data.oracle_path if options.split == "test" else None)
    if "oracle" in options.baselines and oracle_path is not None:
        builders["oracle"] = OracleEnsemble(data, oracle_path)
    systems = {"model": System("model", options.K, thresholds, options.seed, options.qq_values, ctx.rank)}
    for name, builder in builders.items():
        systems[name] = System(name, builder.K, thresholds, options.seed, options.qq_values, ctx.rank)
    obs_values = _Reservoir(options.qq_values, options.seed + 99 + 1000 * ctx.rank)
    mask = data.valid_mask
    land_means = data.land_means
    heaviest = set(np.asarray(days)[np.argsort(-np.nan_to_num(land_means[days], nan=-1))[: options.maps]].tolist())
    maps: dict[int, dict] = {}
    heavy_days = [d for d in days if data.is_heavy(d)]

    batches = [days[s : s + options.batch_size] for s in range(0, len(days), options.batch_size)]
    mine = range(ctx.rank, len(batches), ctx.world)  # this process's batches
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc=f"evaluate {options.split} (K={options.K})",
               unit="day", disable=not (progress and ctx.main))  # fmt: skip
    for index in mine:
        batch = batches[index]
        rng = gen.rng(options.seed + 1_000_003 * (index + 1))
        _, _, sims = gen.draw(batch, options.K, options.mode, options.temperature, rng)
        for b, day in enumerate(batch):
            obs = data.target_mm(day)
            day_mask = mask & np.isfinite(obs)
            heavy = data.is_heavy(day)
            obs_values.add(obs[day_mask])
            systems["model"].add(sims[b], obs, day_mask, heavy)
            for name, builder in builders.items():
                members, _ = builder.members(day)
                systems[name].add(members, obs, day_mask, heavy)
            if day in heaviest:
                maps[day] = {"obs": obs, "model": sims[b][:4].copy(), "date": data.date(day)}
        bar.update(len(batch))
    bar.close()
    if ctx.active:  # rank 0 merges every rank's scores, Q-Q samples and maps, and alone writes
        parts = ctx.gather((systems, obs_values, maps))
        if not ctx.main:
            return {}
        for other_systems, other_values, other_maps in parts[1:]:
            for name, system in systems.items():
                system.merge(other_systems[name])
            obs_values.merge(other_values)
            maps.update(other_maps)

    metrics = {
        "split": options.split,
        "units": "mm/day",
        "options": {**asdict(options), "baselines": list(options.baselines)},
        "checkpoint": str(gen.path),
        "checkpoint_epoch": gen.epoch,
        "oracle": str(oracle_path) if oracle_path else None,
        "thresholds_mm_per_day": thresholds,
        "heavy_rule": f"land mean >= P95 of training-period land means ({data.heavy_land_mean:.3f} mm/day)",
        "days": days,
        "heavy_days": heavy_days,
        "systems": {
            name: {
                "K": s.K,
                "all": s.all.compute(),
                "heavy": s.heavy.compute() if heavy_days else None,
                "reliability": {k: r.result() for k, r in s.reliability.items()},
            }
            for name, s in systems.items()
        },
    }
    out_dir = Path(out_dir) if out_dir else Path(config.data.outputs_root) / "evaluation"
    from precip_cvae.plot import evaluation_figures
    from precip_cvae.report import write_report

    log_path = Path(config.data.outputs_root) / "logs" / "train_log.csv"
    with staged_directory(out_dir, overwrite=True) as root:
        write_json(root / "metrics.json", metrics)
        figures = evaluation_figures(
            root, metrics, maps, {n: s.values.values for n, s in systems.items()}, obs_values.values, log_path,
            data.valid_mask,
        )  # fmt: skip
        write_report(root / "report.md", metrics, figures)
    metrics["out_dir"] = str(out_dir)
    return metrics
