"""A corpus of bad data files (issue 13 point 1): inputs of `prepare` in both formats, prepared datasets edited by
hand, foreign or damaged checkpoints, day lists, sample stores and oracle files. Each case must exit 2 with one line
on stderr naming the file (and the variable, day or shape where there is one), no traceback, and nothing written or
changed. The command-line and config cases are in test_bad_inputs.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from precip_cvae.cli import main
from tests.cases import PERMISSIVE, make_case, write_netcdf_case, write_srdrn_case

TRAIN, TEST = "2000-01-01:2000-01-30", "2000-01-31:2000-02-09"  # 30 + 10 days of make_case()


class Bench:
    """Builds one bad input under ``tmp`` from the session's tiny prepared dataset, trained model and samples."""

    def __init__(self, tmp: Path, trained, samples: Path):
        self.tmp, self.trained, self.samples = tmp, trained, samples
        self.outputs = Path(trained.data.outputs_root)

    # ---- prepare ---------------------------------------------------------------------------------------------
    def netcdf(self, edit: Callable[[dict], None] | None = None, **write) -> dict[str, Path]:
        case = make_case()
        if edit:
            edit(case)
        return write_netcdf_case(self.tmp / "nc", case, **write)

    def prepare_nc(self, paths: dict[str, Path], *extra: str, train: str = TRAIN, test: str = TEST) -> list[str]:
        return ["prepare", "--lowres", str(paths["lowres"]), "--highres", str(paths["highres"]), "--statics",
                str(paths["statics"]), "--train-period", train, "--test-period", test, "--output_dir",
                str(self.tmp / "out"), *extra]  # fmt: skip

    def srdrn(self, edit: Callable[[Path], None]) -> list[str]:
        root = write_srdrn_case(self.tmp / "srdrn", make_case(), n_train=30)
        edit(root)
        return ["prepare", "--input_dir", str(root), "--output_dir", str(self.tmp / "out")]

    # ---- the later stages --------------------------------------------------------------------------------------
    def dataset(self) -> Path:
        """A copy of the prepared dataset, to be damaged."""
        root = self.tmp / "edited" / "data"
        shutil.copytree(self.trained.data.data_root, root)
        return root

    def stage(self, stage: str, *extra: str, data_root: Path | None = None) -> list[str]:
        data_root = data_root or Path(self.trained.data.data_root)
        argv = [stage, f"data.data_root={data_root}"]
        if stage == "train":
            return [*argv, f"data.outputs_root={self.tmp / 'run'}", *extra]
        argv.append(f"data.outputs_root={self.outputs}")
        if stage in ("sample", "evaluate"):
            argv += ["--checkpoint", str(self.outputs / "checkpoints" / "cvae_best.pt"), "--K", "2"]
        return [*argv, "--out", str(self.tmp / "out"), *extra]

    def checkpoint(self, edit: Callable[[dict], None]) -> Path:
        state = torch.load(self.outputs / "checkpoints" / "cvae_best.pt", weights_only=True)
        edit(state)
        path = self.tmp / "edited.pt"
        torch.save(state, path)
        return path

    def store(self) -> Path:
        """A copy of the session's sample store, to be damaged."""
        root = self.tmp / "synth"
        shutil.copytree(self.samples, root)
        return root


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _rewrite(path: Path, edit: Callable[[xr.Dataset], xr.Dataset]) -> None:
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    edit(ds).to_netcdf(path, mode="w")


def _set(name: str, day: int, where: tuple, value: float) -> Callable[[dict], None]:
    def edit(case: dict) -> None:
        case[name][(day, *where)] = value

    return edit


def _array(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """An edit of an SRDRN directory: file ``name`` replaced by ``change`` of its array."""

    def edit(root: Path) -> None:
        np.save(root / name, change(np.load(root / name)))

    return edit


def _setting(index: tuple, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array[index] = value
        return array

    return change


def _first_day_file(root: Path, folder: str) -> Path:
    return sorted((root / folder).glob("day_*.npy"))[0]


def _train_day(bench: Bench) -> int:
    return json.loads((Path(bench.trained.data.data_root) / "metadata" / "split.json").read_text())["train"][3]


CASES: dict[str, Callable[[Bench], tuple[list[str], str]]] = {}


def case(name: str):
    def register(build):
        CASES[name] = build
        return build

    return register


# ---- prepare, NetCDF/Zarr ----------------------------------------------------------------------------------------
@case("predictor Inf")
def _(b):
    return b.prepare_nc(b.netcdf(_set("ta", 5, (1, 1), np.inf))), "lowres.nc:ta: NaN or Inf in predictors on 2000-01-06"


@case("predictor NaN")
def _(b):
    return b.prepare_nc(
        b.netcdf(_set("psl", 33, (0, 1), np.nan))
    ), "lowres.nc:psl: NaN or Inf in predictors on 2000-02-03"


@case("target Inf on land")
def _(b):
    return b.prepare_nc(b.netcdf(_set("pr", 7, (3, 3), np.inf))), "highres.nc:pr: Inf on 2000-01-08"


@case("target -9999 fill value without _FillValue")
def _(b):
    return b.prepare_nc(b.netcdf(_set("pr", 12, (4, 4), -9999.0))), "highres.nc:pr: -9999 mm/day on 2000-01-13"


@case("predictor of text")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["lowres"], lambda ds: ds.assign(ta=ds["ta"].astype(str).str.replace(".", "x")))
    return b.prepare_nc(paths), "lowres.nc:ta: values of type"


@case("predictor with a level dimension")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["lowres"], lambda ds: ds.expand_dims(level=[850, 500], axis=1))
    return b.prepare_nc(paths), "lowres.nc: no variable with dimensions (time, y, x)"


@case("target without a time axis")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["highres"], lambda ds: ds.isel(time=0, drop=True))
    return b.prepare_nc(paths), "highres.nc"


@case("duplicate dates")
def _(b):
    def edit(case):
        case["dates"] = case["dates"].where(case["dates"] != case["dates"][9], case["dates"][8])

    return b.prepare_nc(b.netcdf(edit)), "day 2000-01-09 appears 2 times"


@case("time axis of plain numbers")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["lowres"], lambda ds: ds.assign_coords(time=np.arange(40.0)))
    return b.prepare_nc(paths), "lowres.nc"


@case("no common days")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["lowres"], lambda ds: ds.assign_coords(time=ds.time + np.timedelta64(3650, "D")))
    return b.prepare_nc(paths), "no day of it is present in every input"


@case("periods overlap")
def _(b):
    return b.prepare_nc(b.netcdf(), test=TRAIN), "overlap"


@case("period in another format")
def _(b):
    return b.prepare_nc(b.netcdf(), train="2000/01/01-2000/01/30"), "--train-period: expected YYYY-MM-DD:YYYY-MM-DD"


@case("unknown precipitation units")
def _(b):
    return b.prepare_nc(b.netcdf(pr_units="furlongs")), "highres.nc:pr"


@case("no precipitation variable of that name")
def _(b):
    return b.prepare_nc(b.netcdf(), "--pr-var", "precip"), "highres.nc: no variable 'precip'"


@case("land mask on another grid")
def _(b):
    paths = b.netcdf()
    _rewrite(paths["statics"], lambda ds: ds.assign_coords(lat=ds.lat + 1.0))
    return b.prepare_nc(paths), "statics.nc"


@case("empty NetCDF file")
def _(b):
    paths = b.netcdf()
    paths["lowres"].write_bytes(b"")
    return b.prepare_nc(paths), "lowres.nc: cannot be opened as NetCDF/Zarr"


@case("truncated NetCDF file")
def _(b):
    paths = b.netcdf()
    _truncate(paths["highres"])
    return b.prepare_nc(paths), "highres.nc"


@case("empty Zarr store")
def _(b):
    paths = b.netcdf()
    (b.tmp / "empty.zarr").mkdir()
    paths["lowres"] = b.tmp / "empty.zarr"
    return b.prepare_nc(paths), "empty.zarr: cannot be opened as NetCDF/Zarr"


@case("Zarr store with a chunk lost")
def _(b):
    paths = b.netcdf()
    store = b.tmp / "lowres.zarr"
    with xr.open_dataset(paths["lowres"]) as ds:
        ds.load().to_zarr(store, encoding={"ta": {"chunks": (10, 3, 2)}})
    chunk = sorted(p for p in (store / "ta").rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name != "zarr.json")[1]  # fmt: skip
    chunk.unlink()
    paths["lowres"] = store
    return b.prepare_nc(paths), "lowres.zarr:ta"


@case("target missing on every day")
def _(b):
    def edit(case):
        case["pr"][:] = np.nan

    return b.prepare_nc(b.netcdf(edit)), "no finite value"


# ---- prepare, SRDRN arrays ---------------------------------------------------------------------------------------
@case("SRDRN truncated predictors")
def _(b):
    return b.srdrn(lambda r: _truncate(r / "predictors_train_mean_std_separate.npy")), (
        "predictors_train_mean_std_separate.npy: not a readable .npy array"
    )


@case("SRDRN empty obs file")
def _(b):
    return b.srdrn(lambda r: (r / "obs_test_mean_std_single.npy").write_bytes(b"")), (
        "obs_test_mean_std_single.npy: not a readable .npy array"
    )


@case("SRDRN predictors of 3 dimensions")
def _(b):
    edit = _array("predictors_test_mean_std_separate.npy", lambda x: x[..., 0])
    return b.srdrn(edit), "predictors_test_mean_std_separate.npy: expected 4 dimensions"


@case("SRDRN complex predictors")
def _(b):
    edit = _array("predictors_train_mean_std_separate.npy", lambda x: x.astype(np.complex64))
    return b.srdrn(edit), "predictors_train_mean_std_separate.npy: values of type complex64"


@case("SRDRN NaN predictor")
def _(b):
    edit = _array("predictors_test_mean_std_separate.npy", _setting((4, 0, 0, 1), np.nan))
    return b.srdrn(edit), "predictors_test_mean_std_separate.npy: NaN or Inf in predictors at day index 4"


@case("SRDRN Inf target")
def _(b):
    return b.srdrn(
        _array("obs_train_mean_std_single.npy", _setting((6, 3, 3), np.inf))
    ), "obs_train_mean_std_single.npy: Inf in the target at day index 6"


@case("SRDRN day counts differ")
def _(b):
    return b.srdrn(_array("obs_train_mean_std_single.npy", lambda z: z[:29])), "obs_train_mean_std_single.npy has 29"


@case("SRDRN zero std")
def _(b):
    return b.srdrn(
        _array("ERA5_std_train.npy", _setting((2, 2), 0.0))
    ), "ERA5_std_train.npy: statistics must be finite with std > 0"


@case("SRDRN land mask of another shape")
def _(b):
    return b.srdrn(lambda r: np.save(r / "land_mask.npy", np.ones((5, 5), np.uint8))), "land_mask.npy: expected shape"


# ---- a prepared dataset edited by hand -------------------------------------------------------------------------
@case("no prepared dataset")
def _(b):
    return b.stage("train", data_root=b.tmp / "nowhere"), "nowhere: no prepared dataset here"


@case("metadata file missing")
def _(b):
    root = b.dataset()
    (root / "metadata" / "split.json").unlink()
    return b.stage("train", data_root=root), "split.json: file not found"


@case("metadata file truncated")
def _(b):
    root = b.dataset()
    _truncate(root / "metadata" / "H_W.json")
    return b.stage("train", data_root=root), "H_W.json: not valid JSON"


@case("a day file missing")
def _(b):
    root = b.dataset()
    path = root / "Y_hr" / f"day_{_train_day(b):06d}.npy"
    path.unlink()
    return b.stage("train", data_root=root), f"{path.name}: file not found"


@case("a day file of the wrong shape")
def _(b):
    root = b.dataset()
    path = root / "X_lr" / f"day_{_train_day(b):06d}.npy"
    np.save(path, np.load(path)[:, :-1])
    return b.stage("train", data_root=root), f"{path.name}: shape"


@case("a day file truncated")
def _(b):
    root = b.dataset()
    path = _first_day_file(root, "Y_hr")
    _truncate(path, 0.7)
    return b.stage("sample", "--days", "split:train", data_root=root), f"{path.name}: not a readable .npy array"


@case("valid mask of another shape")
def _(b):
    root = b.dataset()
    np.save(root / "statics" / "valid_mask.npy", np.ones((3, 3), bool))
    return b.stage("evaluate", data_root=root), "valid_mask.npy: shape (3, 3), H_W.json says (24, 20)"


# ---- checkpoints --------------------------------------------------------------------------------------------------
@case("checkpoint truncated")
def _(b):
    path = b.tmp / "cut.pt"
    shutil.copy(b.outputs / "checkpoints" / "cvae_best.pt", path)
    _truncate(path)
    return b.stage("sample", "--checkpoint", str(path)), "cut.pt: not a readable checkpoint"


@case("checkpoint of something else")
def _(b):
    path = b.tmp / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    return b.stage("evaluate", "--checkpoint", str(path)), "weights.pt: not a precip-cvae checkpoint"


@case("checkpoint from another grid")
def _(b):
    def edit(state):
        state["shapes"]["hr_shape"] = [48, 40]

    return b.stage("sample", "--checkpoint", str(b.checkpoint(edit))), "edited.pt: trained for"


@case("checkpoint with another channel count")
def _(b):
    def edit(state):
        state["shapes"]["in_channels"] += 1

    return b.stage("evaluate", "--checkpoint", str(b.checkpoint(edit))), "edited.pt: trained for"


@case("checkpoint from another dataset's normalization")
def _(b):
    def edit(state):
        state["normalization"]["target_log1p_mean"] += 0.5

    return b.stage("sample", "--checkpoint", str(b.checkpoint(edit))), "edited.pt: trained with another normalization"


# ---- day lists, sample stores, oracle files ------------------------------------------------------------------------
@case("day list with unknown ids")
def _(b):
    days = b.tmp / "days.txt"
    days.write_text("3\n99999\n../../etc/passwd\n")
    return b.stage("sample", "--days", f"file:{days}"), "days.txt: unknown day ids: 99999, ../../etc/passwd"


@case("sample store without a manifest")
def _(b):
    store = b.store()
    (store / "manifest.json").unlink()
    return b.stage("augment", "--source", str(store)), "manifest.json: file not found"


@case("sample store with an accepted file missing")
def _(b):
    store = b.store()
    path = sorted(store.glob("*.Y_hr_syn.npy"))[0]
    path.unlink()
    return b.stage("augment", "--source", str(store)), f"{path.name}: listed as accepted in manifest.json but missing"


@case("sample file of the wrong shape")
def _(b):
    store = b.store()
    path = sorted(store.glob("*.Y_hr_syn.npy"))[0]
    np.save(path, np.load(path)[:, :-2])
    return b.stage("augment", "--source", str(store)), f"{path.name}: shape"


@case("sample store from another dataset")
def _(b):
    store = b.store()
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["metadata_sha256"] = "0" * 64
    (store / "manifest.json").write_text(json.dumps(manifest))
    return b.stage("augment", "--source", str(store)), "synth: drawn for another dataset"


@case("sample store naming a path for a day")
def _(b):
    store = b.store()
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["samples"][0]["day"] = "../../etc/passwd"
    (store / "manifest.json").write_text(json.dumps(manifest))
    return b.stage("augment", "--source", str(store)), "day and sample must be whole numbers >= 0, got '../../etc"


@case("oracle file of the wrong shape")
def _(b):
    path = b.tmp / "oracle_test.npy"
    np.save(path, np.zeros((4, 2, 5, 5), np.float32))
    return b.stage("evaluate", "--oracle", str(path)), "oracle_test.npy: shape"


@pytest.fixture(scope="module")
def samples(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "synth"
    config = Path(trained.data.outputs_root) / "config.yaml"
    argv = ["sample", "--config", str(config), "--K", "2", "--days", "split:train", "--out", str(out), "--quiet"]
    permissive = [f"gate.{key}={value}" for key, value in vars(PERMISSIVE).items()]
    assert main([*argv, *permissive]) == 0
    return out


def _snapshot(*roots: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_data_file_exits_2_with_one_line_and_writes_nothing(name, trained, samples, tmp_path, capsys):
    bench = Bench(tmp_path, trained, samples)
    argv, needle = CASES[name](bench)
    before = _snapshot(tmp_path, bench.outputs, samples.parent)
    capsys.readouterr()
    status = main([*argv, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, (name, err)
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert _snapshot(tmp_path, bench.outputs, samples.parent) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
