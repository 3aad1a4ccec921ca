"""The evaluation report: one Markdown page with the model against the reference ensembles, and the figures."""

from __future__ import annotations

import math
from pathlib import Path

from precip_cvae.fileio import write_text

#: (metrics key, label, rule): rule says which value is better — "lower", "higher", "zero" (closest to 0),
#: "one" (closest to 1) — or "none": no winner is marked (a score that rewards a wrong forecast).
ROWS = [
    ("CRPS", "CRPS (fair), mm/day", "lower"),
    ("twCRPS_P95", "threshold-weighted CRPS above P95, mm/day", "lower"),
    ("CRPS_pool4_max", "CRPS of 4x4 max-pooled fields, mm/day", "lower"),
    ("CRPS_pool16_mean", "CRPS of 16x16 mean-pooled fields, mm/day", "lower"),
    ("MAE_all", "MAE of the ensemble median, mm/day", "lower"),
    # Conditioning on the observation being heavy rewards a model that rains too much (the forecaster's dilemma):
    # shown, never marked best; the tail is judged by the threshold-weighted CRPS.
    ("MAE_tail", "MAE where obs >= P95, ensemble median, mm/day (not ranked)", "none"),
    ("RMSE_all", "RMSE of the ensemble median, mm/day", "lower"),
    ("mass_bias", "mass bias of the ensemble median, mm/day", "zero"),
    ("spread_skill_ratio", "spread-skill ratio (1 = calibrated)", "one"),
    ("rank_flatness_rel_dev", "rank histogram: largest deviation from flat", "lower"),
    ("quantile_bias_P99", "P99 bias of pooled intensities, mm/day", "zero"),
    ("quantile_bias_P99.9", "P99.9 bias of pooled intensities, mm/day", "zero"),
    ("CSI_P95", "CSI at P95", "higher"),
    ("SEDI_P99", "SEDI at P99", "higher"),
    ("FSS_P95_w11", "FSS at P95, 11-pixel window", "higher"),
    ("Rx1day_bias", "Rx1day bias, mm/day", "zero"),
]

#: Rows of the short table printed at the end of the demo.
HEADLINE = ("CRPS", "twCRPS_P95", "MAE_tail", "spread_skill_ratio", "quantile_bias_P99")


def _value(block: dict | None, key: str) -> float | None:
    if not block or key not in block or block[key] is None:
        return None
    value = block[key]
    if isinstance(value, dict):
        value = value.get("bias")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _score(value: float, rule: str) -> float:
    return {"lower": value, "higher": -value, "zero": abs(value), "one": abs(value - 1.0)}[rule]


def table(metrics: dict, subset: str, rows=ROWS) -> str:
    """A Markdown table, metrics × systems, with the best non-oracle value in bold (the oracle is the floor)."""
    names = list(metrics["systems"])
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key, label, rule in rows:
        values = {n: _value(metrics["systems"][n][subset], key) for n in names}
        candidates = {n: v for n, v in values.items() if v is not None and n != "oracle" and rule != "none"}
        best = min(candidates, key=lambda n: _score(candidates[n], rule)) if candidates else None
        cells = []
        for n in names:
            v = values[n]
            text = "n/a" if v is None else f"{v:.3f}"
            cells.append(f"**{text}**" if n == best else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(metrics: dict) -> str:
    """The demo's closing table: the headline metrics on all days and on heavy days."""
    rows = [r for r in ROWS if r[0] in HEADLINE]
    out = [f"all {len(metrics['days'])} {metrics['split']} days:", table(metrics, "all", rows)]
    if metrics["heavy_days"]:
        out += [f"\n{len(metrics['heavy_days'])} heavy days:", table(metrics, "heavy", rows)]
    return "\n".join(out)


def ranking(metrics: dict) -> str:
    """In words: how the model's CRPS ranks against each baseline, on all days and on heavy days."""
    systems = metrics["systems"]
    sentences = []
    for subset, label in (
        ("all", f"all {len(metrics['days'])} days"),
        ("heavy", f"{len(metrics['heavy_days'])} heavy days"),
    ):
        model = _value(systems["model"].get(subset), "CRPS")
        if model is None:
            continue
        parts = []
        for name, system in systems.items():
            other = _value(system.get(subset), "CRPS")
            if name == "model" or other is None:
                continue
            verb = "beats" if model < other else "loses to" if model > other else "ties"
            parts.append(f"{verb} {name} ({model:.3f} vs {other:.3f} mm/day, {model / other:.2f} x)")
        sentences.append(f"On {label} the model's CRPS " + ", ".join(parts) + ".")
    return " ".join(sentences)


def _beyond(beyond: dict | None) -> str:
    """The sentence on the evaluated days whose predictors leave the training days' range ("" when none does)."""
    if not beyond or not beyond["count"]:
        return ""
    far = beyond["days"][0]
    return (f" {beyond['count']} of these days ({beyond['heavy']} heavy; {beyond['beyond_1sd']} by more than one "
            "channel standard deviation) have a predictor outside the range of the training days: there the model "
            "extrapolates, and the analog and climatology baselines can only repeat training days. The furthest, "
            f"{far['date'] or far['day']}: {far['channel']} at {far['value_sd']:.1f} standard deviations where the "
            f"training days reach {far['training_bound_sd']:.1f}.")  # fmt: skip


def write_report(path: Path, metrics: dict, figures: dict[str, str]) -> None:
    systems = metrics["systems"]
    lines = [
        f"# precip-cvae evaluation — {metrics['split']} split",
        "",
        ranking(metrics),
        "",
        f"Checkpoint `{metrics['checkpoint']}` (epoch {metrics['checkpoint_epoch']}), "
        f"{metrics['options']['mode']} samples, K = {systems['model']['K']}, temperature "
        f"{metrics['options']['temperature']}. {len(metrics['days'])} days, of which "
        f"{len(metrics['heavy_days'])} heavy ({metrics['heavy_rule']}). All numbers in mm/day over valid pixels; "
        "thresholds: " + ", ".join(f"{k} = {v:.2f}" for k, v in metrics["thresholds_mm_per_day"].items()) + " mm/day."
        + _beyond(metrics.get("beyond_training_range")),
        "",
        "Systems: **model** (the cVAE, from X_lr alone); **analog** (the K training days with the nearest "
        "standardized X_lr); **climatology** (K training days of the same calendar month)"
        + ("; **oracle** (redraws of the benchmark's small-scale randomness: the floor no model can beat)" if
           "oracle" in systems else "")
        + ". Bold: the best value among model and baselines (the oracle is not a competitor).",
        "",
        "## All days",
        "",
        table(metrics, "all"),
        "",
    ]  # fmt: skip
    if metrics["heavy_days"]:
        lines += ["## Heavy days", "", table(metrics, "heavy"), ""]
    if "oracle" in systems:
        gap = [
            f"{subset} days: model CRPS {systems['model'][subset]['CRPS']:.3f} vs oracle "
            f"{systems['oracle'][subset]['CRPS']:.3f} mm/day "
            f"({systems['model'][subset]['CRPS'] / systems['oracle'][subset]['CRPS']:.2f}x the floor)"
            for subset in ("all", "heavy")
            if systems["model"][subset] and systems["oracle"][subset]
        ]
        lines += ["## Gap to the oracle", "", *[f"- {g}" for g in gap], ""]
    lines += ["## Figures", ""]
    for caption, name in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    write_text(path, "\n".join(lines))
