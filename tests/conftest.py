"""Shared fixtures: tiny hand-made inputs in both formats, and the optional real data of ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cases import TINY_MODEL, make_case, write_netcdf_case

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tiny_case() -> dict:
    return make_case()


@pytest.fixture
def tiny_netcdf(tmp_path: Path, tiny_case: dict) -> dict[str, Path]:
    return write_netcdf_case(tmp_path / "nc", tiny_case)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared synthetic dataset: 80 days, 4x3 -> 24x20."""
    from precip_cvae.data.prepare import PrepareOptions, prepare
    from precip_cvae.data.srdrn import read_srdrn_directory
    from precip_cvae.data.synthetic import SynthOptions, run_synth

    root = tmp_path_factory.mktemp("prepared")
    options = SynthOptions(days=80, hr_shape=(24, 20), lr_shape=(4, 3), oracle_members=2, seed=1)
    run_synth(options, root / "bench", progress=False)
    prepare(read_srdrn_directory(root / "bench"), root, PrepareOptions(progress=False))
    return root / "data"


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    """A tiny cVAE trained for a few epochs on ``prepared``: returns its config."""
    from precip_cvae.config import load_config
    from precip_cvae.train import fit

    out = tmp_path_factory.mktemp("trained")
    config = load_config(
        "reference",  # the reference design: cheaper than the default generator, which has tests of its own
        [f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL, "train.epochs=30",
         "model.base_filters=8", "model.d_z=8", "loss.beta_kl=0.0005", "train.lr=0.003"],
    )  # fmt: skip
    fit(config, progress=False)
    return config
