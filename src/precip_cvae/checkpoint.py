"""Checkpoints: plain dicts of tensors and primitives, written atomically, readable with weights_only=True.

The schema lives here. A cVAE checkpoint holds:

- ``model_state_dict``, ``optimizer_state_dict``, ``scaler_state_dict`` (AMP; empty without it);
- ``epoch`` (0-based, the last finished), ``config`` (the resolved config as a dict);
- ``shapes``: ``in_channels``, ``lr_shape``, ``hr_shape``, ``statics`` (names) — what the model was built for;
- ``normalization``: :meth:`precip_cvae.data.normalize.Normalization.state_dict`, compared whole on load;
- ``thresholds_mm_per_day``, ``data_root``: where it was trained;
- ``best_value``, ``best_epoch``, ``stale_epochs``, ``select_metric``: best-checkpoint bookkeeping;
- ``noise_rng_state``, ``torch_rng_state``: so that a resumed run equals an uninterrupted one;
- ``versions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from precip_cvae import __version__
from precip_cvae.data.dataset import PreparedData
from precip_cvae.data.normalize import Normalization
from precip_cvae.errors import InputError
from precip_cvae.fileio import full_disk_as_enospc, written_as

#: Keys every checkpoint must have.
REQUIRED = ("model_state_dict", "epoch", "config")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary sibling, then rename: a kill leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_as(path) as tmp, full_disk_as_enospc(path.parent):
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), naming the file in any failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise InputError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    for key in REQUIRED:
        if key not in state:
            raise InputError(f"{path}: not a precip-cvae checkpoint (no {key!r})")
    return state


def model_shapes(data: PreparedData) -> dict[str, Any]:
    """What a model built for ``data`` takes and gives: channels, grids and the static maps' names."""
    return {
        "in_channels": data.n_channels,
        "lr_shape": list(data.lr_shape),
        "hr_shape": list(data.hr_shape),
        "statics": list(data.static_names),
    }


def training_state(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    config: dict[str, Any],
    data: PreparedData,
    best_value: float | None,
    best_epoch: int,
    stale_epochs: int,
    select_metric: str,
    noise: torch.Generator,
) -> dict[str, Any]:
    """The checkpoint of a training run after ``epoch`` (see the module's docstring for the schema)."""
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "config": config,
        "shapes": model_shapes(data),
        "normalization": data.normalization.state_dict(),
        "thresholds_mm_per_day": dict(data.thresholds_mm),
        "data_root": str(data.root),
        "best_value": best_value,
        "best_epoch": best_epoch,
        "stale_epochs": stale_epochs,
        "select_metric": select_metric,
        "noise_rng_state": noise.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "versions": {"precip_cvae": __version__, "torch": str(torch.__version__)},
    }


def check_against(state: dict[str, Any], data: PreparedData, path: str | Path) -> None:
    """Raise :class:`InputError` naming ``path`` when the checkpoint was not made for ``data``'s shapes and
    normalization."""
    expected = model_shapes(data)
    if state.get("shapes") != expected:
        raise InputError(f"{path}: trained for {state.get('shapes')}, but {data.root} has {expected}")
    if "normalization" not in state:
        raise InputError(f"{path}: not a precip-cvae checkpoint (no 'normalization')")
    differences = Normalization.from_state_dict(state["normalization"]).differences(data.normalization)
    if differences:
        raise InputError(f"{path}: trained with another normalization than {data.root} ({'; '.join(differences)})")
