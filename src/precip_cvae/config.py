"""The one configuration schema: frozen dataclasses, YAML in, ``key=value`` overrides, errors that name the key.

Sections and keys follow the reference design's ``config.yaml`` (``train.epochs``, ``train.batch_size``,
``train.lr``, ``loss.lambda_ext``, ``loss.lambda_mass``, ``loss.beta_kl``, ``model.d_z``,
``model.base_filters``, ...). Defaults ← YAML file ← command-line overrides, in that order.

The defaults are the generator that measured best (``benchmarks/generators.py``): conditional prior, statics to the
decoder, spatial latents at 1/8 and 1/4, the censored output, the ensemble CRPS term and a small KL weight. The
reference design is one config away: the shipped preset ``reference`` (``--config reference``), whose values
:data:`REFERENCE` also holds.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from precip_cvae.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    """Where things are. ``data_root`` is what `prepare` wrote (``<output_dir>/data``)."""

    data_root: str = "data"
    outputs_root: str = "outputs/cvae"
    num_workers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and options of the cVAE.

    ``prior``: "standard" (the reference's N(0, I)) or "conditional" (a learned p(z | X_lr), so that
    prior-mode samples depend on the day). ``decoder_statics``: give the static maps to the decoder too.

    ``latent_scales``: spatial latents (empty: none, the reference). For each factor f (a power of 2, e.g. 8 and 4),
    a map of ``latent_channels`` Gaussian latents on the grid coarsened f times is drawn inside the decoder, top-down,
    with a posterior and a conditional prior of its own (a small hierarchical VAE in the spirit of NVAE), so that
    small-scale structure is drawn rather than averaged. A grid too small for the largest factor gets them all divided
    by the same power of 2 (``model.fit_latent_scales``): (8, 4) is (2, 1) on a 19 x 29 grid.

    ``output``: the output head (``model.heads``): "linear" (the reference: the decoder's channel is the field) or
    "censored" (``max(u, 0 mm/day)`` per pixel: dry pixels exactly dry, amounts continuous above).

    ``decoder_width_cap``: the decoder's channels double from ``base_filters`` at the finest scale toward coarse
    scales, up to this multiple of ``base_filters`` (2 by default: on a grid of several scales each coarser scale
    then costs a quarter of the one below it; the reference preset keeps 8).

    ``decoder_block_width_cap``: the same cap for the up-blocks only, every scale finer than the seed's coarsest map
    (None: ``decoder_width_cap``). With 1 (the default since issue 12: 6.6 GFLOP per training sample at the reference
    geometry instead of 9.7), the blocks are all ``base_filters`` wide and only the seed is wider; on a grid of one
    scale (a seed and one block) it changes nothing. The reference preset sets None.
    """

    d_z: int = 16
    base_filters: int = 16
    d_x: int = 64
    d_y: int = 64
    prior: str = "conditional"
    decoder_statics: bool = True
    dropout: float = 0.0
    latent_scales: tuple[int, ...] = (8, 4)
    latent_channels: int = 4
    output: str = "censored"
    decoder_width_cap: int = 2
    decoder_block_width_cap: int | None = 1


@dataclass(frozen=True)
class LossConfig:
    """Loss weights: ``L_total = L_rec + lambda_mass * L_mass + beta * L_kl``, with
    ``L_rec = lambda_base * MAE_all + lambda_ext * MAE_ext``.

    ``extreme_threshold``: which threshold marks extreme pixels — a key of thresholds.json ("P95",
    "P99", "P99.9") or a number in mm/day. ``free_bits``: nats per latent dimension not penalized.

    The proper-scoring ensemble term (off with ``crps_weight`` 0, the reference's loss): each step also decodes
    ``crps_members`` draws from the prior and adds ``crps_weight`` times their almost-fair CRPS (``crps_alpha``; 1 is
    the fair CRPS) against the observation, in normalized units, per pixel and on block means of each side in
    ``crps_pools`` (1 = pixels), so spread and spatial structure are rewarded, not only pixel accuracy.
    """

    lambda_base: float = 1.0
    lambda_ext: float = 3.0
    lambda_mass: float = 0.1
    beta_kl: float = 0.005
    extreme_threshold: str | float = "P95"
    free_bits: float = 0.0
    crps_weight: float = 1.0
    crps_members: int = 4
    crps_alpha: float = 0.95
    crps_pools: tuple[int, ...] = (1, 4)


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and bookkeeping. ``warmup_epochs`` is the KL warm-up (beta grows linearly). ``batch_size``: days
    per step, or "auto" (the batch that fills the GPU, measured at the start); ``lr_scaling`` ("none", "sqrt",
    "linear"): ``lr`` scaled from batches of ``lr_reference_batch`` days to the run's (:mod:`precip_cvae.batching`)."""

    epochs: int = 80
    batch_size: int | str = 6
    lr: float = 1e-3
    lr_scaling: str = "none"
    lr_reference_batch: int = 6
    weight_decay: float = 0.0
    amp: bool = True
    grad_clip: float = 1.0
    accumulate: int = 1
    warmup_epochs: int = 10
    lr_warmup_epochs: int = 0
    schedule: str = "constant"
    seed: int = 42
    device: str = "auto"
    save_every: int = 10
    select_metric: str = "val_twCRPS_P95"
    patience: int = 0
    heavy_share: float = 0.0
    max_bad_steps: int = 20
    max_batches_per_epoch: int = 0
    val_samples: int = 2
    tensorboard: bool = False
    compile: str = "none"


#: The columns of ``train_log.csv``; ``train.select_metric`` must be one of them (a ``val_`` one, normally).
TRAIN_LOG_COLUMNS = (
    "epoch", "train_loss", "train_L_rec", "train_L_mass", "train_L_kl", "train_L_crps",
    "val_loss", "val_L_rec", "val_L_mass", "val_L_kl", "val_L_crps",
    "val_MAE_all", "val_MAE_member", "val_MAE_tail", "val_RMSE_all", "val_mass_bias", "val_rec_MAE_tail", "val_CRPS",
    "val_twCRPS_P95", "val_heavy_twCRPS_P95",
    "val_active_units", "val_sample_spread_mm", "val_wet_fraction_samples", "val_wet_fraction_obs",
    "val_spatial_std_ratio", "beta", "lr", "seconds", "skipped_steps", "alarms",
    "train_L_kl_scales", "val_L_kl_scales", "val_active_scales",
)  # fmt: skip
#: Log columns that hold text (per-scale values of spatial latents, alarms), not one number.
TEXT_LOG_COLUMNS = ("epoch", "alarms", "train_L_kl_scales", "val_L_kl_scales", "val_active_scales")
#: Log columns where a larger value is better (for best-checkpoint selection).
HIGHER_IS_BETTER = ("val_active_units", "val_sample_spread_mm")


#: ``train.compile``: off, or the ``torch.compile`` mode of the training step (:mod:`precip_cvae.compiled`): "default"
#: fuses kernels, "reduce-overhead" also replays CUDA graphs (against launch-bound small batches on a GPU),
#: "max-autotune" also times kernel variants.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
#: ``sampling.preserve_mass``: samples as drawn, or rescaled to the real day's land total or coarse-cell totals
#: (:mod:`precip_cvae.conserve`).
PRESERVE_MASS = ("none", "domain", "cells")


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults of `precip-cvae sample` (each also a command-line option).

    ``min_threshold`` is the reference's name of the gate's ``min_mass_ratio``: when given it sets it.
    ``preserve_mass`` one of :data:`PRESERVE_MASS`.
    """

    mode: str = "posterior"
    K: int = 2
    temperature: float = 1.0
    days: str = "heavy_only"
    min_threshold: float | None = None
    seed: int = 0
    batch_size: int = 16
    preserve_mass: str = "none"


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the quality gate between generation and export (all relative to the real day or to the observed
    climatology; checks in mm/day over valid land pixels).

    Attributes
    ----------
    min_mass_ratio : reject below this land total / the real day's (the reference's ``--min_threshold``)
    max_mass_ratio : reject above this ratio
    wet_margin : the wet-fraction band is the 5-95 % range of training days of the same category, widened
        by this much on each side
    peak_factor : reject a peak above this multiple of the largest value observed in the training period
    copy_correlation, copy_difference : a near copy of the real day has a Pearson correlation at or
        above ``copy_correlation`` and a mean absolute difference at or below ``copy_difference`` times the
        real day's land mean
    min_diversity : reject a sample whose mean absolute difference to an accepted sample of the same day
        is below this times the real day's land mean
    min_variability : reject a flat field, whose spatial std over land is below this times the real day's
    """

    min_mass_ratio: float = 0.1
    max_mass_ratio: float = 5.0
    wet_margin: float = 0.10
    peak_factor: float = 1.5
    copy_correlation: float = 0.98
    copy_difference: float = 0.05
    min_diversity: float = 0.05
    min_variability: float = 0.3


@dataclass(frozen=True)
class EvaluateConfig:
    """Defaults of `precip-cvae evaluate` (each also a command-line option).

    ``baselines``: any of analog, climatology, oracle; ``oracle``: the oracle file (default: the one `prepare`
    recorded); ``qq_values``: values kept for the Q-Q figure; ``maps``: heaviest days drawn as maps; ``workers``:
    processes that score batches while this one draws (0: a thread of this one scores them beside the draws, or on
    a GPU the GPU that draws them).
    """

    split: str = "test"
    K: int = 16
    mode: str = "prior"
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    baselines: tuple[str, ...] = ("analog", "climatology", "oracle")
    oracle: str | None = None
    qq_values: int = 200_000
    maps: int = 3
    workers: int = 0


#: The downstream experiment's arms, in report order.
ARMS = (
    "baseline",
    "augment",
    "oversample",
    "reweight",
    "quantile",
    "quantile_augment",
    "augment_newx",
    "augment_pairs",
)


@dataclass(frozen=True)
class ExperimentConfig:
    """Defaults of `precip-cvae experiment` (each also a command-line option); every arm shares them.

    The budget is ``steps`` gradient steps of ``batch_size`` days, or ``epochs`` passes over the real training days
    when > 0. ``grad_clip``: largest gradient norm (0 = off). ``filters``/``n_blocks``: SRDRN's width and depth (the
    paper's: 64 and 16). ``per_day``: synthetic samples used per heavy training day. ``oversample_share``: the heavy
    share of the ``oversample`` arm's draws (by default that of ``augment``). ``source``: the sample store (default
    ``<outputs_root>/synth``). ``schedule``: the learning rate over the steps, "constant" or "cosine" (decay to 0).
    ``bn_momentum``: SRDRN's BatchNorm momentum in PyTorch's convention (0.5: Keras' 0.5 of the original code, so the
    running statistics come from the last few batches). ``bn_recalibrate``: when > 0, after training the BatchNorm
    statistics are re-estimated as the plain average over that many batches of the arm's training rows.
    ``val_every``: when > 0, score the validation days every that many steps and keep the best weights (by MAE above
    P95 on heavy validation days); 0 keeps the last. ``ema``: when > 0, the weights used (validated, kept, scored) are
    the exponential moving average of the training path with this decay (e.g. 0.995: about the last 200 steps).
    ``ema_warmup``: a smaller decay over the first steps, ``min(ema, (1 + n) / (10 + n))`` at step n, so the average
    does not carry the random initial weights (a share 0.995^n of them without it).
    ``jobs``: runs trained at once in separate processes (each with its share of the CPU threads; on a GPU they share
    it); the results do not depend on it. ``channels_last``: SRDRN's weights (and so its activations) in channels-last
    memory layout (None, the default: on a CPU, where it trains SRDRN 1.4-1.7 x faster, and not on a GPU, where it is
    not measured yet); ``cudnn_benchmark``: cuDNN times its convolution algorithms for each shape and keeps the fastest
    (CUDA only). Both change speed, not the function: the numbers agree to float rounding, and runs made with and
    without them are pooled (``benchmarks/srdrn_speed.py`` measures what they buy).
    """

    arms: tuple[str, ...] = ARMS
    seeds: int = 5
    steps: int = 2000
    epochs: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    grad_clip: float = 0.0
    filters: int = 32
    n_blocks: int = 8
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    reweight_alpha: float = 1.0
    per_day: int = 2
    oversample_share: float | None = None
    fixed_thresholds_mm: tuple[float, ...] = (10.0, 25.0, 50.0)
    source: str | None = None
    schedule: str = "constant"
    bn_momentum: float = 0.5
    bn_recalibrate: int = 0
    val_every: int = 100
    ema: float = 0.995
    ema_warmup: bool = False
    jobs: int = 1
    channels_last: bool | None = None
    cudnn_benchmark: bool = False


#: The reference design's values of the keys whose defaults changed (what the ``reference`` preset sets).
REFERENCE = {
    "model": {
        "prior": "standard",
        "decoder_statics": False,
        "latent_scales": (),
        "output": "linear",
        # the reference's sizes (the default is the size every variant was compared at, 1/15 of the cost)
        "d_z": 64,
        "base_filters": 64,
        "d_x": 128,
        "d_y": 256,
        # the decoder's widths doubled up to 8 x base_filters before the key existed (issue 12 made 2 the default)
        "decoder_width_cap": 8,
        "decoder_block_width_cap": None,
    },  # fmt: skip
    "loss": {"beta_kl": 0.5, "crps_weight": 0.0},
}
#: Config files shipped with the package, by the name ``--config`` also accepts.
PRESETS = {"reference": "reference_config.yaml"}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def gate_config(self) -> GateConfig:
        """The gate's thresholds, with ``sampling.min_threshold`` (the reference's name) where given."""
        if self.sampling.min_threshold is None:
            return self.gate
        return dataclasses.replace(self.gate, min_mass_ratio=self.sampling.min_threshold)


_CHOICES = {
    "model.prior": ("standard", "conditional"),
    "model.output": ("linear", "censored"),
    "train.schedule": ("constant", "cosine"),
    "train.lr_scaling": ("none", "sqrt", "linear"),
    "train.compile": COMPILE_MODES,
    "train.select_metric": tuple(c for c in TRAIN_LOG_COLUMNS if c not in TEXT_LOG_COLUMNS),
    "sampling.mode": ("posterior", "prior"),
    "sampling.preserve_mass": PRESERVE_MASS,
    "evaluate.split": ("test", "val", "train"),
    "evaluate.mode": ("prior", "posterior"),
    "experiment.schedule": ("constant", "cosine"),
}
#: Keys whose value is a tuple of choices.
_MEMBER_CHOICES = {
    "evaluate.baselines": ("analog", "climatology", "oracle"),
    "experiment.arms": ARMS,
}


#: A number in exponent notation without a decimal point, which YAML 1.1 (PyYAML) leaves a string: 1e-3, -2E5.
_EXPONENT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are expected."""
    hint = annotation
    origin = typing.get_origin(hint)
    if hint is type(None):
        if value is None:
            return None
        raise InputError(f"config key {key}: expected None, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise InputError(f"config key {key}: expected a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except InputError:
                continue
        raise InputError(f"config key {key}: expected {hint}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise InputError(f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge(config: Config, updates: dict[str, Any], origin: str) -> Config:
    sections = {f.name: getattr(config, f.name) for f in fields(config)}
    for section_name, values in updates.items():
        if section_name not in sections:
            raise InputError(f"{origin}: unknown config section {section_name!r} (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise InputError(f"{origin}: config section {section_name!r} must be a mapping of keys to values")
        section = sections[section_name]
        hints = _section_types(type(section))
        changes = {}
        for key, value in values.items():
            full = f"{section_name}.{key}"
            if key not in hints:
                raise InputError(f"{origin}: unknown config key {full} (known: {', '.join(hints)})")
            value = _coerce(value, hints[key], full)
            if full in _CHOICES and value not in _CHOICES[full]:
                raise InputError(f"{origin}: config key {full} must be one of {_CHOICES[full]}, got {value!r}")
            unknown = [v for v in value if v not in _MEMBER_CHOICES[full]] if full in _MEMBER_CHOICES else []
            if unknown:
                raise InputError(
                    f"{origin}: config key {full}: unknown {', '.join(map(str, unknown))} "
                    f"(known: {', '.join(_MEMBER_CHOICES[full])})"
                )
            changes[key] = value
        sections[section_name] = dataclasses.replace(section, **changes)
    return Config(**sections)


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text:
        raise InputError(f"override {text!r}: expected section.key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    if key.count(".") != 1:
        raise InputError(f"override {text!r}: the key must be section.key (e.g. train.epochs)")
    section, name = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return section, name, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML file (or the name of a shipped preset: ``reference``) ← ``section.key=value`` overrides.

    Raises
    ------
    InputError naming the file and the key for a missing file, bad YAML, an unknown key or a wrong type.
    """
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file() and str(path) in PRESETS:
            from importlib.resources import files

            path = Path(str(files("precip_cvae").joinpath(PRESETS[str(path)])))
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: the config must be a mapping of sections")
        config = _merge(config, loaded, str(path))
    for text in overrides or []:
        section, name, value = _parse_override(text)
        config = _merge(config, {section: {name: value}}, "override")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range checks that types alone cannot express."""
    block_cap, batch = config.model.decoder_block_width_cap, config.train.batch_size
    if isinstance(batch, str) and batch != "auto":
        raise InputError(f"config key train.batch_size: a number of days or auto, got {batch!r}")
    checks = [
        ("train.epochs", ">= 1", config.train.epochs >= 1),
        ("train.batch_size", ">= 1 or auto", isinstance(batch, str) or batch >= 1),  # a string is "auto" (above)
        ("train.lr_reference_batch", ">= 1", config.train.lr_reference_batch >= 1),
        ("train.lr", "> 0", config.train.lr > 0),
        ("train.accumulate", ">= 1", config.train.accumulate >= 1),
        ("train.save_every", ">= 1", config.train.save_every >= 1),
        ("train.warmup_epochs", ">= 0", config.train.warmup_epochs >= 0),
        ("train.heavy_share", "in [0, 1)", 0.0 <= config.train.heavy_share < 1.0),
        ("train.val_samples", ">= 1", config.train.val_samples >= 1),
        ("model.d_z", ">= 1", config.model.d_z >= 1),
        ("model.base_filters", ">= 1", config.model.base_filters >= 1),
        ("model.decoder_width_cap", ">= 1", config.model.decoder_width_cap >= 1),
        ("model.decoder_block_width_cap", ">= 1 or null", block_cap is None or block_cap >= 1),
        ("model.d_x", ">= 1", config.model.d_x >= 1),
        ("model.d_y", ">= 1", config.model.d_y >= 1),
        ("model.latent_scales", "powers of 2", all(f >= 1 and f & (f - 1) == 0 for f in config.model.latent_scales)),
        ("model.latent_channels", ">= 1", config.model.latent_channels >= 1),
        ("loss.beta_kl", ">= 0", config.loss.beta_kl >= 0),
        ("loss.free_bits", ">= 0", config.loss.free_bits >= 0),
        ("loss.crps_weight", ">= 0", config.loss.crps_weight >= 0),
        ("loss.crps_members", ">= 2", config.loss.crps_members >= 2),
        ("loss.crps_alpha", "in [0, 1]", 0 <= config.loss.crps_alpha <= 1),
        (
            "loss.crps_pools",
            "one or more block sides >= 1",
            len(config.loss.crps_pools) >= 1 and all(p >= 1 for p in config.loss.crps_pools),
        ),
        ("sampling.K", ">= 1", config.sampling.K >= 1),
        ("sampling.temperature", "> 0", config.sampling.temperature > 0),
        (
            "sampling.min_threshold",
            ">= 0 or null",
            config.sampling.min_threshold is None or config.sampling.min_threshold >= 0,
        ),
        ("sampling.batch_size", ">= 1", config.sampling.batch_size >= 1),
        ("gate.min_mass_ratio", ">= 0", config.gate.min_mass_ratio >= 0),
        ("gate.max_mass_ratio", "> gate.min_mass_ratio", config.gate.max_mass_ratio > config.gate.min_mass_ratio),
        ("gate.wet_margin", ">= 0", config.gate.wet_margin >= 0),
        ("gate.peak_factor", "> 0", config.gate.peak_factor > 0),
        ("gate.min_diversity", ">= 0", config.gate.min_diversity >= 0),
        ("gate.min_variability", ">= 0", config.gate.min_variability >= 0),
        ("evaluate.K", ">= 2", config.evaluate.K >= 2),
        ("evaluate.temperature", ">= 0", config.evaluate.temperature >= 0),
        ("evaluate.batch_size", ">= 1", config.evaluate.batch_size >= 1),
        ("evaluate.qq_values", ">= 1", config.evaluate.qq_values >= 1),
        ("evaluate.maps", ">= 0", config.evaluate.maps >= 0),
        ("evaluate.workers", ">= 0", config.evaluate.workers >= 0),
        ("experiment.arms", "one or more arms", len(config.experiment.arms) >= 1),
        ("experiment.seeds", ">= 1", config.experiment.seeds >= 1),
        ("experiment.steps", ">= 1", config.experiment.steps >= 1),
        ("experiment.epochs", ">= 0", config.experiment.epochs >= 0),
        ("experiment.batch_size", ">= 1", config.experiment.batch_size >= 1),
        ("experiment.lr", "> 0", config.experiment.lr > 0),
        ("experiment.grad_clip", ">= 0", config.experiment.grad_clip >= 0),
        ("experiment.filters", ">= 1", config.experiment.filters >= 1),
        ("experiment.n_blocks", ">= 1", config.experiment.n_blocks >= 1),
        ("experiment.bn_momentum", "in (0, 1]", 0.0 < config.experiment.bn_momentum <= 1.0),
        ("experiment.bn_recalibrate", ">= 0", config.experiment.bn_recalibrate >= 0),
        ("experiment.val_every", ">= 0", config.experiment.val_every >= 0),
        ("experiment.ema", "in [0, 1)", 0.0 <= config.experiment.ema < 1.0),
        ("experiment.jobs", ">= 1", config.experiment.jobs >= 1),
        ("experiment.quantiles", "each in (0, 1)", all(0 < q < 1 for q in config.experiment.quantiles)),
        ("experiment.per_day", ">= 1", config.experiment.per_day >= 1),
        (
            "experiment.oversample_share",
            "in (0, 1) or null",
            config.experiment.oversample_share is None or 0 < config.experiment.oversample_share < 1,
        ),
    ]
    for key, rule, ok in checks:
        if not ok:
            section, name = key.split(".")
            raise InputError(f"config key {key}: must be {rule}, got {getattr(getattr(config, section), name)!r}")


def dump_config(config: Config) -> str:
    """The resolved config as YAML (written next to every command's outputs)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
