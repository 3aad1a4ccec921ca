"""experiment.md and its figures: every arm with intervals, the verdict first."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from precip_cvae.fileio import write_text  # noqa: E402
from precip_cvae.plot import save_figure, side_by_side  # noqa: E402

TABLE_METRICS = ("MAE_tail", "MAE_all", "RMSE_all", "quantile_bias_P99", "quantile_bias_P99.9", "CSI_P95", "SEDI_P99",
                 "CRPS_q")  # fmt: skip


def _fmt(interval: dict | None) -> str:
    if not interval or interval.get("mean") is None:
        return "n/a"
    if interval.get("low") is None:
        return f"{interval['mean']:.3f}"
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def bar_chart(path: Path, summary: dict, metric: str, subset: str) -> str:
    arms = [a for a in summary if summary[a][subset] and summary[a][subset][metric]["value"]["mean"] is not None]
    means = np.array([summary[a][subset][metric]["value"]["mean"] for a in arms])
    lows = np.array([summary[a][subset][metric]["value"]["low"] or m for a, m in zip(arms, means, strict=True)])
    highs = np.array([summary[a][subset][metric]["value"]["high"] or m for a, m in zip(arms, means, strict=True)])
    fig, ax = plt.subplots(figsize=(1.1 * len(arms) + 2, 3.2))
    ax.bar(arms, means, yerr=[means - lows, highs - means], capsize=4, color="tab:blue")
    ax.set_ylabel(f"{metric} (mm/day)" if "CSI" not in metric and "SEDI" not in metric else metric)
    ax.set_title(f"{metric}, {subset.replace('_', ' ')} test days (mean and 95 % interval over seeds)", fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    return save_figure(fig, path)


def qq_chart(path: Path, qq: dict, which: str = "heavy test days") -> str | None:
    """Q-Q of test intensities (valid pixel-days of ``which``): each arm's point predictions (first seed) vs
    observations."""
    curves = {arm: c for arm, c in qq.items() if c}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    top = 0.0
    for arm, c in curves.items():
        ax.plot(c["obs"], c["sim"], ".-", ms=3, label=arm)
        top = max(top, max(c["obs"]), max(c["sim"]))
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="1:1")
    ax.set_xlabel("observed quantile (mm/day)")
    ax.set_ylabel("predicted quantile (mm/day)")
    ax.set_title(f"Q-Q of intensities on {which}, 50th to 99.99th percentile", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _beyond_text(beyond: dict) -> str:
    """The paragraph on test days whose predictors leave the training days' range."""
    if not beyond["count"]:
        return (f"Every one of the {beyond['split_days']} test days has its predictors within the range of the "
                f"{beyond['training_days']} training days.")  # fmt: skip
    far = beyond["days"][0]
    label = f"{far['date']} (day {far['day']}{', heavy' if far['heavy'] else ''})"
    text = (f"Test days beyond the training record: {beyond['count']} of {beyond['split_days']} test days "
            f"({beyond['heavy']} heavy) have a predictor outside the range of the {beyond['training_days']} training "
            f"days, {beyond['beyond_1sd']} by more than one channel standard deviation; there the networks "
            f"extrapolate. The furthest, {label}: {far['channel']} at {far['value_sd']:.1f} standard deviations where "
            f"the training days reach {far['training_bound_sd']:.1f}.")  # fmt: skip
    if far["mae"]:
        arms = ", ".join(f"{a} {v:.1f}" for a, v in far["mae"].items())
        median = ", ".join(f"{a} {v:.2f}" for a, v in beyond["median_day_mae"].items())
        text += f" Each arm's MAE on that day (mean over seeds): {arms} mm/day (on the median test day: {median})."
    if far["heavy_mae_tail_share"]:
        share = ", ".join(f"{a} {v:.2f}" for a, v in far["heavy_mae_tail_share"].items())
        text += f" That day alone adds to each arm's MAE above P95 on heavy days: {share} mm/day."
    return text


def write_experiment_report(out_dir: Path, report: dict, maps: dict | None = None) -> None:
    """experiment.md: the verdict, the settings and arms, the tables, then the figures (bar charts with intervals,
    Q-Q of heavy-day intensities per arm, and ``maps``, when given, of one heavy test day: ``{"day", "date", "obs",
    "valid", "arms": {arm: (H, W) mm/day}}``)."""
    summary = report["summary"]
    o = report["options"]
    figures = []
    for metric, subset in (("MAE_tail", "heavy"), ("MAE_tail", "heavy_in_range"), ("MAE_tail", "all"),
                           ("quantile_bias_P99", "heavy")):  # fmt: skip
        if summary and any(summary[a].get(subset) for a in summary):
            figures.append(bar_chart(out_dir / f"bars_{metric}_{subset}.png", summary, metric, subset))
    heavy_qq = any(report.get("qq_heavy", {}).values())
    qq = qq_chart(out_dir / "qq_per_arm.png", report["qq_heavy"] if heavy_qq else report.get("qq", {}),
                  "heavy test days" if heavy_qq else "all test days")  # fmt: skip
    if qq:
        figures.append(qq)
    if maps and maps["arms"]:
        label = maps["date"] or f"day {maps['day']}"
        panels = {f"observed {label}": maps["obs"], **maps["arms"]}
        title = f"The wettest heavy test day ({label}): observation and each arm's prediction (seed 0)"
        figures.append(side_by_side(out_dir / "map_per_arm.png", panels, maps["valid"], title))
    lines = [
        "# Downstream experiment: does augmentation help SRDRN with extremes?",
        "",
        report["verdict"],
        "",
        f"Settings: {o['seeds']} seed{'s' if o['seeds'] != 1 else ''} per arm, {o['steps']} gradient steps of "
        f"{o['batch_size']} days each, "
        f"SRDRN with {o['filters']} filters and {o['n_blocks']} residual blocks, Adam lr {o['lr']}; quantiles "
        f"{list(o['quantiles'])}; {report['test_days']} test days, {report['heavy_test_days']} heavy. Values: mean "
        "and 95 % interval over seeds (Student t); 'minus baseline' is the paired difference, same seed. All in "
        "mm/day except CSI and SEDI; the quantile arms are scored on their 0.5 quantile, and CRPS_q is the CRPS "
        "approximated from their quantiles. For the MAEs, the row 'seeds × 7-day blocks' is the paired difference "
        "with an interval that also resamples test days in 7-day blocks, and MDE the smallest difference that interval "
        "would detect with 80 % power."
        + (
            f" Training: learning rate {o.get('schedule', 'constant')}, BatchNorm momentum {o.get('bn_momentum')}"
            + (f", moving average of the weights (decay {o['ema']})" if o.get("ema") else "")
            + (f", checkpoint chosen on validation days every {o['val_every']} steps" if o.get("val_every") else "")
            + "."
        ),
        "",
    ]
    for arm, info in report["arms"].items():
        line = f"- `{arm}`: {info['rows']} training rows, heavy share of draws {info['heavy_share']:.3f}"
        line += f" ({info['note']})" if info["note"] else ""
        dx = info.get("input_distance")
        if dx:
            channels = ", ".join(f"{k} {v:.2f}" for k, v in dx["per_channel"].items())
            line += (f"; its synthetic inputs differ from their real day's by {dx['mean_abs_dx_sd']:.2f} channel "
                     f"standard deviations on average ({channels})")  # fmt: skip
        if info.get("target_mass_ratio") is not None:
            line += f"; its synthetic targets carry {info['target_mass_ratio']:.2f} × their real day's land total"
            if info.get("preserve_mass") not in (None, "none") and info.get("drawn_mass_ratio") is not None:
                line += (f" (drawn {info['drawn_mass_ratio']:.2f} ×, rescaled with preserve_mass "
                         f"{info['preserve_mass']})")  # fmt: skip
        lines.append(line)
    for arm, why in report["skipped"].items():
        lines.append(f"- `{arm}`: not run — {why}")
    conv = report.get("convergence")
    if conv:
        gain = conv["mean_gain"]
        lines += [
            "",
            (
                f"Budget: over the last quarter of its {conv['steps']} steps the baseline's validation score "
                f"(MAE above P95 on heavy validation days) improved by {gain:.1%} on average over seeds "
                f"({', '.join(f'{g:.1%}' for g in conv['last_quarter_gain'])}): "
                + (
                    "it had stopped improving."
                    if conv["converged"]
                    else "it was still improving; a longer budget (--steps) would train every arm further."
                )
            ),
        ]
    cost = report.get("compute")
    if cost:
        timed = "" if cost["timed"] == cost["runs"] else f" ({cost['timed']} of {cost['runs']} runs timed)"
        cpu = ""
        if cost.get("cpu_timed"):
            of = "" if cost["cpu_timed"] == cost["timed"] else f" of the {cost['cpu_timed']} runs that recorded it"
            cpu = (f" The CPU time{of}: {cost['cpu_seconds_mean'] / 60:.1f} minutes per run, "
                   f"{cost['cpu_seconds_total'] / 3600:.2f} hours in all (a run paused or sharing its cores has a "
                   "longer wall time, not a longer CPU time).")  # fmt: skip
        lines += ["", (f"Compute: {cost['seconds_mean'] / 60:.1f} minutes per run (training and scoring) on "
                       f"{'; '.join(cost['devices'])}, {cost['seconds_total'] / 3600:.2f} hours in all{timed}; "
                       f"the wall time is this divided by the runs trained at once (--jobs).{cpu}")]  # fmt: skip
    bad = report.get("blowups") or []
    if bad:
        runs = "; ".join(f"`{b['arm']}` seed {b['seed']}: P99 {b['sim']:.1f} vs {b['obs']:.1f} mm/day "
                         f"({b['relative_bias']:+.0%})" for b in bad)  # fmt: skip
        lines += ["", f"Runs that blew up on heavy days (P99 off by more than 100 %): {runs}."]
    elif "blowups" in report:
        lines += ["", "No run blew up: every run's P99 on heavy test days is within ±100 % of the observed."]
    beyond = report.get("beyond_training_range")
    if beyond:
        lines += ["", _beyond_text(beyond)]
    headings = {"heavy": "Heavy test days", "all": "All test days",
                "heavy_in_range": "Heavy test days within the training days' range (per-day scores only)"}  # fmt: skip
    for subset in ("heavy", "all", "heavy_in_range"):
        arms = [a for a in summary if summary[a].get(subset)]
        if not arms:
            continue
        lines += ["", f"## {headings[subset]}", ""]
        lines.append("| metric | " + " | ".join(arms) + " |")
        lines.append("| --- |" + " --- |" * len(arms))
        for m in TABLE_METRICS:
            if not arms or m not in summary[arms[0]][subset]:
                continue
            lines.append(f"| {m} | " + " | ".join(_fmt(summary[a][subset][m]["value"]) for a in arms) + " |")
            lines.append(
                f"| {m} minus baseline | "
                + " | ".join(
                    _fmt(summary[a][subset][m].get("minus_baseline")) if a != "baseline" else "–" for a in arms
                )
                + " |"
            )
            if any(summary[a][subset][m].get("paired") for a in arms):
                paired = [summary[a][subset][m].get("paired") for a in arms]
                cells = " | ".join(_fmt(p) if p else "–" for p in paired)
                lines.append(f"| {m} minus baseline, seeds × 7-day blocks | {cells} |")
                lines.append(f"| {m} MDE (80 % power) | "
                             + " | ".join(f"{p['mde']:.3f}" if p else "–" for p in paired) + " |")  # fmt: skip
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    write_text(out_dir / "experiment.md", "\n".join(lines) + "\n")
