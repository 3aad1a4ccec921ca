"""Score the generator and reference ensembles on the same days, streaming, and write metrics, figures, report.

For each day of the split the model draws K samples from X_lr alone; the analog, climatological and (on the
synthetic benchmark) oracle ensembles are built for the same day. Every system is scored in mm/day over valid
pixels, on all days and on heavy days, by :class:`precip_cvae.metrics.EnsembleScores`; nothing is kept in
memory but the accumulators and a bounded subsample of values for the Q-Q figure.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from precip_cvae import distributed
from precip_cvae.baselines import AnalogEnsemble, ClimatologyEnsemble, OracleEnsemble
from precip_cvae.config import Config, EvaluateConfig
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.fileio import content_sha256, staged_directory, write_json
from precip_cvae.generator import Generator, select_device
from precip_cvae.metrics import DeviceFields, EnsembleScores

#: What `evaluate` does: the config's ``evaluate`` section (the name kept for callers of the API).
EvaluateOptions = EvaluateConfig


class _Reservoir:
    """A uniform random subsample (without replacement) of at most ``size`` values of a stream, for Q-Q plots:
    each value gets a random key and the ``size`` smallest keys are kept (bottom-k sampling).

    Values are gathered until twice ``size`` and then cut to the ``size`` smallest keys; after a cut no key at or
    above the largest kept one can ever be among the smallest, so such values are not even gathered."""

    def __init__(self, size: int, seed: int | list[int]):
        self.size = size
        self._values = np.empty(0, np.float32)
        self._keys = np.empty(0)
        self._bound = np.inf
        self.rng = np.random.default_rng(seed)

    @property
    def values(self) -> np.ndarray:
        self._cut()
        return self._values

    @property
    def keys(self) -> np.ndarray:
        self._cut()
        return self._keys

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float32)
        self._keep_smallest(values, self.rng.random(values.size))

    def add_device(self, values: torch.Tensor) -> None:
        """:meth:`add` of a tensor where it is: the same keys drawn here, only the values kept copied back."""
        values = values[torch.isfinite(values)]
        keys = self.rng.random(values.numel())
        below = np.flatnonzero(keys < self._bound)
        kept = values[torch.from_numpy(below).to(values.device)].to(torch.float32).cpu().numpy()
        self._keep_smallest(kept, keys[below])

    def merge(self, other: _Reservoir) -> None:
        """The bottom-k sample of both streams (exact when their keys are independent)."""
        self._keep_smallest(other.values, other.keys)

    def _keep_smallest(self, values: np.ndarray, keys: np.ndarray) -> None:
        below = keys < self._bound
        self._values = np.concatenate([self._values, values[below]])
        self._keys = np.concatenate([self._keys, keys[below]])
        if self._values.size > 2 * self.size:
            self._cut()

    def _cut(self) -> None:
        if self._values.size > self.size:
            keep = np.argpartition(self._keys, self.size)[: self.size]
            self._values, self._keys = self._values[keep], self._keys[keep]
            self._bound = float(self._keys.max())


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

    def add_device(self, ens: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, threshold: float) -> None:
        """:meth:`add` of a batch of tensors, ens (N, K, H, W), obs and mask (N, H, W): counted where they are."""
        k = (ens >= threshold).sum(dim=1)[mask]
        o = (obs >= threshold)[mask].to(torch.float64)
        size = self.forecast.size
        self.forecast += torch.bincount(k, minlength=size)[:size].cpu().numpy()
        self.observed += torch.bincount(k, weights=o, minlength=size)[:size].cpu().numpy()

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

    def __init__(self, name: str, K: int, thresholds: dict, seed: int, qq_values: int):
        self.name, self.K = name, K
        self.all = EnsembleScores(K, thresholds, rng_seed=seed)
        self.heavy = EnsembleScores(K, thresholds, rng_seed=seed + 1)
        self.values = _Reservoir(qq_values, seed + 2)
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

    def add_device(self, ens: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, heavy: np.ndarray) -> None:
        """:meth:`add` of a batch of days as tensors, scored where they are: ens (N, K, H, W), obs and mask (N, H, W),
        ``heavy`` (N,) bool. The same numbers as :meth:`add` day by day (the Q-Q sample too: its keys are drawn in
        the same order)."""
        mask = mask & torch.isfinite(ens).all(dim=1)
        ens = torch.where(mask[:, None], ens, torch.nan).to(torch.float32)
        self.all.add_device(DeviceFields(ens, obs, mask))
        if heavy.any():
            rows = torch.from_numpy(np.flatnonzero(heavy)).to(ens.device)
            self.heavy.add_device(DeviceFields(ens[rows], obs[rows], mask[rows]))
        for i in range(ens.shape[0]):
            self.values.add_device(ens[i][:, mask[i]].reshape(-1))
        for key, r in self.reliability.items():
            r.add_device(ens, obs, mask, self.thresholds[key])

    def merge(self, other: System) -> None:
        """Add the days another process scored (the scores merge exactly, see :class:`EnsembleScores`)."""
        self.all.merge(other.all)
        self.heavy.merge(other.heavy)
        self.values.merge(other.values)
        for key, r in self.reliability.items():
            r.merge(other.reliability[key])


class _Scorer:
    """Scores one batch of days for every system into fresh accumulators (the model's samples given, the baselines'
    members built here), so batches can be scored anywhere — in this process, in a worker process
    (``evaluate.workers``) or on another rank — and merged in batch order. Holds only picklable settings; the dataset
    and the baselines are opened on first use in the process that scores."""

    def __init__(self, data_root: str, options: EvaluateConfig, pool: list[int], oracle_path: Path | None,
                 maps: set[int]):  # fmt: skip
        self.data_root, self.options, self.pool = data_root, options, pool
        self.oracle_path, self.maps = oracle_path, maps
        self._ready: tuple | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ready": None}

    def setup(self) -> tuple[PreparedData, dict, dict]:
        """The dataset, the baselines by name and the thresholds (mm/day)."""
        if self._ready is None:
            data, options = PreparedData(self.data_root), self.options
            builders: dict[str, object] = {}
            if "analog" in options.baselines:
                builders["analog"] = AnalogEnsemble(data, self.pool, options.K)
            if "climatology" in options.baselines:
                builders["climatology"] = ClimatologyEnsemble(data, self.pool, options.K, seed=options.seed)
            if "oracle" in options.baselines and self.oracle_path is not None:
                builders["oracle"] = OracleEnsemble(data, self.oracle_path)
            keys = ("P95", "P99", "P99.9")
            thresholds = {key: data.thresholds_mm[key] for key in keys if key in data.thresholds_mm}
            self._ready = (data, builders, thresholds)
        return self._ready

    def empty(self, index: int) -> tuple[dict[str, System], _Reservoir, dict]:
        """Fresh accumulators (Q-Q samples seeded by the batch ``index``)."""
        data, builders, thresholds = self.setup()
        o = self.options
        sizes = {"model": o.K, **{name: b.K for name, b in builders.items()}}
        systems = {name: System(name, K, thresholds, o.seed, o.qq_values) for name, K in sizes.items()}
        for k, system in enumerate(systems.values()):
            system.values = _Reservoir(o.qq_values, [o.seed, index + 1, k])
        return systems, _Reservoir(o.qq_values, [o.seed, index + 1, 99]), {}

    def __call__(self, index: int, days: list[int], sims) -> tuple[dict[str, System], _Reservoir, dict]:
        """Score batch ``index``: ``sims`` (N, K, H, W) mm/day, a numpy array (scored day by day here) or a tensor
        (every system scored where it is, the baselines' members moved there)."""
        if isinstance(sims, torch.Tensor):
            return self._on_device(index, days, sims)
        data, builders, _ = self.setup()
        systems, obs_values, maps = self.empty(index)
        for b, day in enumerate(days):
            obs = data.target_mm(day)
            day_mask = data.valid_mask & np.isfinite(obs)
            heavy = data.is_heavy(day)
            obs_values.add(obs[day_mask])
            systems["model"].add(sims[b], obs, day_mask, heavy)
            for name, builder in builders.items():
                members, _ = builder.members(day)
                systems[name].add(members, obs, day_mask, heavy)
            if day in self.maps:
                maps[day] = {"obs": obs, "model": sims[b][:4].copy(), "date": data.date(day)}
        return systems, obs_values, maps

    def _on_device(self, index: int, days: list[int], sims: torch.Tensor) -> tuple[dict[str, System], _Reservoir, dict]:
        data, builders, _ = self.setup()
        systems, obs_values, maps = self.empty(index)
        obs_mm = np.stack([data.target_mm(day) for day in days])
        masks = data.valid_mask & np.isfinite(obs_mm)
        heavy = np.array([data.is_heavy(day) for day in days])
        for b, day in enumerate(days):
            obs_values.add(obs_mm[b][masks[b]])
            if day in self.maps:
                maps[day] = {"obs": obs_mm[b], "model": sims[b][:4].cpu().numpy(), "date": data.date(day)}
        obs, mask = torch.from_numpy(obs_mm).to(sims.device), torch.from_numpy(masks).to(sims.device)
        systems["model"].add_device(sims, obs, mask, heavy)
        for name, builder in builders.items():
            members = torch.from_numpy(np.stack([builder.members(day)[0] for day in days]))
            systems[name].add_device(members.to(sims.device), obs, mask, heavy)
        return systems, obs_values, maps


def _merge(into: tuple, part: tuple) -> None:
    systems, obs_values, maps = into
    for name, system in systems.items():
        system.merge(part[0][name])
    obs_values.merge(part[1])
    maps.update(part[2])


#: A worker process's scorer (``evaluate.workers`` > 0), set once by _start_worker.
_WORKER: _Scorer | None = None


def _start_worker(scorer: _Scorer) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)
    _WORKER = scorer
    scorer.setup()


def _score_in_worker(index: int, days: list[int], sims: np.ndarray) -> tuple:
    assert _WORKER is not None
    return _WORKER(index, days, sims)


def _score_on_device(device: torch.device) -> bool:
    """Whether `evaluate` scores where the model draws: on an accelerator (GPU scoring keeps pace with its draws;
    a CPU scores faster day by day in NumPy, see :meth:`precip_cvae.metrics.Scores.add_tensors`)."""
    return device.type != "cpu"


def _beyond(data: PreparedData, days: list[int], top: int = 10) -> dict:
    """How many of ``days`` have a predictor outside the training days' range (where the generator extrapolates),
    how many of them heavy or beyond by more than one channel standard deviation, and the ``top`` furthest."""
    found = data.beyond_training_range(days)
    return {"count": len(found), "heavy": sum(f["heavy"] for f in found),
            "beyond_1sd": sum(f["excess_sd"] > 1 for f in found), "days": found[:top]}  # fmt: skip


def run_evaluate(
    config: Config,
    options: EvaluateConfig | None = None,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate on ``options.split``; write ``metrics.json``, figures and ``report.md`` into ``out_dir``
    (default ``<outputs_root>/evaluation``); ``options`` default to ``config.evaluate``. Returns the metrics dict.

    Batch b of the split draws its samples from a generator seeded by ``options.seed`` and b, and is scored into
    accumulators of its own, merged in batch order, so the numbers do not depend on where batches are scored: on an
    accelerator where it draws (``options.workers`` = 0), else beside the draws, by ``options.workers`` > 0 worker
    processes or by one thread of this process, which then draws on a CPU with one thread fewer than torch's; and
    started by ``torchrun`` each process draws and scores every N-th batch and rank 0 merges and writes (the other
    ranks return an empty dict)."""
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
    data.check_days(days + pool)
    oracle_path = options.oracle or (data.oracle_path if options.split == "test" else None)
    land_means = data.land_means
    heaviest = set(np.asarray(days)[np.argsort(-np.nan_to_num(land_means[days], nan=-1))[: options.maps]].tolist())
    heavy_days = [d for d in days if data.is_heavy(d)]
    scorer = _Scorer(str(config.data.data_root), options, pool, oracle_path, heaviest)
    _, _, thresholds = scorer.setup()
    merged = scorer.empty(-1)

    batches = [days[s : s + options.batch_size] for s in range(0, len(days), options.batch_size)]
    mine = ctx.mine(len(batches))
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc=f"evaluate {options.split} (K={options.K})",
               unit="day", disable=not (progress and ctx.main))  # fmt: skip
    # Where batches are scored: on the accelerator that draws them (below), else beside the draws, by worker
    # processes (evaluate.workers) or one thread of this process; on a CPU the draws then leave that a core.
    on_device = options.workers == 0 and _score_on_device(gen.device)
    scoring, score = None, scorer
    if options.workers > 0:
        context = multiprocessing.get_context("spawn")
        scoring = ProcessPoolExecutor(options.workers, mp_context=context, initializer=_start_worker,
                                      initargs=(scorer,))  # fmt: skip
        score = _score_in_worker
    elif not on_device:
        scoring = ThreadPoolExecutor(1, thread_name_prefix="evaluate-scores")
    threads = torch.get_num_threads()
    if gen.device.type == "cpu":
        torch.set_num_threads(max(1, threads - 1))
    pending: deque = deque()  # (days, future) of the batches being scored, oldest first

    def merge_oldest() -> None:  # batches are merged in batch order
        n, future = pending.popleft()
        _merge(merged, future.result())
        bar.update(n)

    try:
        for index in mine:
            batch = batches[index]
            rng = gen.rng(distributed.batch_seed(options.seed, index))
            if on_device:  # drawn and scored on the accelerator (the same numbers: tests/test_evaluate.py)
                _merge(merged, scorer(index, batch, gen.draw_mm(batch, options.K, options.mode,
                                                                options.temperature, rng)))  # fmt: skip
                bar.update(len(batch))
                continue
            _, _, sims = gen.draw(batch, options.K, options.mode, options.temperature, rng)
            pending.append((len(batch), scoring.submit(score, index, batch, sims)))
            while len(pending) > 2 * max(1, options.workers) or (pending and pending[0][1].done()):
                merge_oldest()
        while pending:
            merge_oldest()
    finally:
        torch.set_num_threads(threads)
        if scoring is not None:
            scoring.shutdown(cancel_futures=True)
    bar.close()
    if ctx.active:  # rank 0 merges every rank's scores, Q-Q samples and maps, and alone writes
        parts = ctx.gather(merged)
        if not ctx.main:
            return {}
        for part in parts[1:]:
            _merge(merged, part)
    systems, obs_values, maps = merged

    metrics = {
        "split": options.split,
        "units": "mm/day",
        "options": {**asdict(options), "baselines": list(options.baselines)},
        "checkpoint": str(gen.path),
        "checkpoint_epoch": gen.epoch,
        "checkpoint_sha256": content_sha256(gen.path),
        "metadata_sha256": data.metadata_sha256,
        "oracle": str(oracle_path) if oracle_path else None,
        "thresholds_mm_per_day": thresholds,
        "heavy_rule": f"land mean >= P95 of training-period land means ({data.heavy_land_mean:.3f} mm/day)",
        "days": days,
        "heavy_days": heavy_days,
        "beyond_training_range": _beyond(data, days),
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
