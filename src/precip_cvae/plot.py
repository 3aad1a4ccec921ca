"""Figures of an evaluation (matplotlib, PNG): what people would rather look at than tables."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from precip_cvae.fileio import written_as  # noqa: E402

COLORS = {"obs": "black", "model": "tab:red", "analog": "tab:blue", "climatology": "tab:gray", "oracle": "tab:green"}


def save_figure(fig, path: Path) -> str:
    """Save ``fig`` as ``path`` (format from its suffix) through a temporary file and a rename, close it, and
    return the file name (what reports link to)."""
    path = Path(path)
    try:
        with written_as(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path.name


def _precip_cmap():
    return matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # invalid pixels (sea, no data) in light grey


def _field_row(fig, axes, fields: list[np.ndarray], titles: list[str], valid: np.ndarray) -> None:
    """Maps on one shared mm/day colour scale (0 to the 99.5th percentile of their valid pixels), one colour bar."""
    vmax = float(np.nanpercentile(np.concatenate([f[valid] for f in fields]), 99.5)) or 1.0
    for ax, field, title in zip(axes, fields, titles, strict=True):
        image = ax.imshow(np.where(valid, field, np.nan), origin="lower", cmap=_precip_cmap(), vmin=0, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="mm/day")


def heaviest_days(path: Path, maps: dict, valid: np.ndarray) -> str:
    """Real vs synthetic maps of the heaviest days: one row per day, a shared mm/day colour scale per row."""
    days = sorted(maps, key=lambda d: -np.nanmean(maps[d]["obs"]))
    n_cols = 1 + max(len(m["model"]) for m in maps.values())
    fig, axes = plt.subplots(len(days), n_cols, figsize=(2.3 * n_cols, 2.2 * len(days)), squeeze=False)
    for row, day in enumerate(days):
        fields = [maps[day]["obs"], *maps[day]["model"]]
        titles = [f"observed {maps[day]['date'] or day}"] + [f"sample {k}" for k in range(1, len(fields))]
        _field_row(fig, axes[row, : len(fields)], fields, titles, valid)
    return save_figure(fig, path)


def side_by_side(path: Path, fields: dict[str, np.ndarray], valid: np.ndarray, title: str) -> str:
    """One row of maps (e.g. the observation of a day, then each system's field of it) on a shared colour scale."""
    fig, axes = plt.subplots(1, len(fields), figsize=(2.3 * len(fields) + 1, 2.6), squeeze=False)
    _field_row(fig, axes[0], list(fields.values()), list(fields), valid)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def rank_histograms(path: Path, metrics: dict) -> str:
    systems = metrics["systems"]
    fig, axes = plt.subplots(1, len(systems), figsize=(3 * len(systems), 2.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], systems.items(), strict=True):
        counts = np.asarray(s["all"]["rank_histogram"], float)
        freq = counts / counts.sum() * counts.size if counts.sum() else counts
        ax.bar(np.arange(counts.size), freq, color=COLORS.get(name, "tab:purple"))
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{name} (K={s['K']})", fontsize=9)
        ax.set_xlabel("rank of the observation")
    axes[0, 0].set_ylabel("frequency / flat")
    return save_figure(fig, path)


def quantile_quantile(path: Path, values: dict, obs: np.ndarray) -> str:
    """Q-Q of pooled intensities (valid pixels, all days): each system against the observations."""
    levels = 1 - np.logspace(-4, np.log10(0.5), 60)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    q_obs = np.quantile(obs, levels) if obs.size else levels * 0
    for name, v in values.items():
        if v.size:
            ax.plot(q_obs, np.quantile(v, levels), ".-", ms=3, color=COLORS.get(name, "tab:purple"), label=name)
    top = float(max(q_obs.max(), *(np.quantile(v, levels).max() for v in values.values() if v.size))) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="1:1")
    ax.set_xlabel("observed quantile (mm/day)")
    ax.set_ylabel("simulated quantile (mm/day)")
    ax.set_title("Q-Q of pixel intensities, 50th to 99.99th percentile", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def spectra(path: Path, metrics: dict) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    first = next(iter(metrics["systems"].values()))["all"]
    freqs = np.asarray(first["rapsd_freqs"])
    ax.loglog(freqs, first["rapsd_obs"], color="black", lw=2, label="observed")
    for name, s in metrics["systems"].items():
        ax.loglog(freqs, s["all"]["rapsd_sim"], color=COLORS.get(name, "tab:purple"), label=name)
    ax.set_xlabel("frequency (cycles per pixel)")
    ax.set_ylabel("power")
    ax.set_title("radially averaged power spectrum", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def reliability(path: Path, metrics: dict) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.5))
    for ax, key in zip(axes, ("P95", "P99"), strict=True):
        for name, s in metrics["systems"].items():
            r = s["reliability"][key]
            p = np.array(r["probability"])
            f = np.array([np.nan if v is None else v for v in r["observed_frequency"]])
            ax.plot(p, f, "o-", ms=3, color=COLORS.get(name, "tab:purple"), label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"reliability of P(pr >= {key})", fontsize=9)
        ax.set_xlabel("forecast probability")
    axes[0].set_ylabel("observed frequency")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def training_curves(path: Path, log_path: Path) -> str | None:
    if not log_path.is_file():
        return None
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epoch = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for key in ("train_loss", "val_loss"):
        axes[0].plot(epoch, [float(r[key]) for r in rows], label=key)
    axes[0].set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    for key in ("val_MAE_all", "val_MAE_tail", "val_mass_bias"):
        axes[1].plot(epoch, [float(r[key]) for r in rows], label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("mm/day")
    axes[1].legend(fontsize=8)
    return save_figure(fig, path)


def evaluation_figures(
    root: Path, metrics: dict, maps: dict, values: dict, obs_values: np.ndarray, log_path: Path, valid: np.ndarray
) -> dict[str, str]:
    """Write every figure of an evaluation into ``root``; returns caption → file name."""
    figures = {}
    if maps:
        figures["Heaviest days: observed and model samples (mm/day)"] = heaviest_days(
            root / "maps_heaviest.png", maps, valid
        )
    figures["Rank histograms (all days)"] = rank_histograms(root / "rank_histogram.png", metrics)
    figures["Q-Q of intensities"] = quantile_quantile(root / "qq_intensities.png", values, obs_values)
    figures["Power spectra"] = spectra(root / "rapsd.png", metrics)
    figures["Reliability of exceeding P95 and P99"] = reliability(root / "reliability.png", metrics)
    curves = training_curves(root / "training_curves.png", log_path)
    if curves:
        figures["Training curves"] = curves
    return figures
