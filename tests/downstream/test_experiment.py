"""The downstream experiment: coarse-graining by hand, every arm end to end, and a planted effect it must see."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from precip_cvae.data.dataset import PreparedData
from precip_cvae.downstream.experiment import ARMS, ExperimentOptions, coarse_precipitation, run_experiment, verdict
from tests.cases import make_case, write_netcdf_case


def test_coarse_precipitation_by_hand(prepared):
    data = PreparedData(prepared)  # 24x20 -> 4x3, regular lat/lon grids over the same domain
    field = np.zeros(data.hr_shape)
    field[:6, :7] = 12.0  # exactly the pixels of coarse cell (0, 0): 24/4 = 6 rows, 20/3 -> 7 columns
    field[~data.valid_mask] = np.nan
    coarse, covered = coarse_precipitation(field, data)
    rows = slice(0, 6)
    cols = slice(0, 7)
    assert covered[0, 0] == data.valid_mask[rows, cols].any()
    if covered[0, 0]:
        assert coarse[0, 0] == pytest.approx(12.0)
    assert np.nanmax(np.where(covered, coarse, np.nan)[1:, :]) == pytest.approx(0.0)


class _Store:
    """A stand-in sample store: one accepted sample per heavy training day, its target the real one doubled."""

    def __init__(self, data: PreparedData):
        self.data = data

    def exists(self) -> bool:
        return True

    def accepted(self) -> dict[int, list[int]]:
        return {d: [0] for d in self.data.ids("train") if self.data.is_heavy(d)}

    def load(self, day: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
        doubled = self.data.normalization.to_z(2.0 * self.data.target_mm(day))
        return self.data.inputs(day), doubled[None].astype(np.float32)


def test_augment_pairs_makes_every_channel_from_the_synthetic_target(tmp_path):
    """Predictors that are the target block-averaged (as on the Fraser basin): prepare records the operator, and a
    synthetic day's X is the same operator applied to its own target, checked against hand-computed values."""
    from precip_cvae.data.coarsen import block_mean
    from precip_cvae.data.netcdf import read_netcdf
    from precip_cvae.data.prepare import PrepareOptions, prepare
    from precip_cvae.downstream.experiment import Examples, Row, plan_arms

    case = make_case(n_days=60, hr=(8, 6))
    paths = write_netcdf_case(tmp_path / "nc", case)
    source = read_netcdf([paths["highres"]], paths["highres"], "2000-01-01:2000-02-09", "2000-02-10:2000-02-29",
                         statics=[paths["statics"]], coarsen=2)  # fmt: skip
    prepare(source, tmp_path, PrepareOptions(progress=False))
    data = PreparedData(tmp_path / "data")
    (record,) = [v["derived_from_target"] for v in data.variables]
    assert record["operator"] == "block_mean" and record["factor"] == 2 and data.lr_shape == (4, 3)
    examples = Examples(data, _Store(data))
    assert examples.derivation_error() < 1e-5  # the recorded operator reproduces the prepared X of real days
    mean, std = data.variables[0]["mean"], data.variables[0]["std"]
    day = data.ids("train")[3]
    mm = case["pr"][day]  # NaN over the two sea pixels of block (0, 0): the NaN-aware mean skips them
    assert block_mean(mm, 2)[0, 0] == pytest.approx(np.nanmean(mm[:2, :2]))
    real_x = examples.load(Row(day))[0].numpy()[0]
    np.testing.assert_allclose(real_x * std + mean, block_mean(mm, 2), rtol=1e-5, atol=1e-4)
    # a synthetic row whose target is the real one doubled: a block mean is linear, so its raw X is twice the real
    heavy = next(iter(examples.store.accepted()))
    pair_x = examples.load(Row(heavy, 0, "target"))[0].numpy()[0]
    same_x = examples.load(Row(heavy, 0))[0].numpy()[0]
    np.testing.assert_allclose(pair_x * std + mean, 2 * (same_x * std + mean), rtol=1e-4, atol=1e-3)
    plans = plan_arms(data, replace(ExperimentOptions(), arms=("augment", "augment_pairs")), examples)
    assert [r.x_from for r in plans["augment_pairs"].rows if r.synthetic] == ["target"] * len(examples.store.accepted())
    assert len(plans["augment_pairs"].rows) == len(plans["augment"].rows)


def test_augment_pairs_is_skipped_when_a_channel_is_not_made_from_the_target(prepared):
    from precip_cvae.downstream.experiment import Examples, plan_arms

    data = PreparedData(prepared)  # the synthetic benchmark: predictors from the weather state, not the field
    plans = plan_arms(data, replace(ExperimentOptions(), arms=("augment_pairs",)), Examples(data, _Store(data)))
    assert isinstance(plans["augment_pairs"], str) and "not made from the target" in plans["augment_pairs"]
    assert data.variables[0]["name"] in plans["augment_pairs"]


@pytest.mark.slow
def test_every_arm_runs_in_a_subprocess(trained, tmp_path):
    import yaml

    from precip_cvae.sample import SampleOptions, run_sample
    from tests.cases import PERMISSIVE

    synth = tmp_path / "synth"
    run_sample(trained, SampleOptions(mode="prior", K=2, days="heavy_only", preserve_mass="domain"), PERMISSIVE,
               out_dir=synth, progress=False)  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(trained.to_dict()))
    out = tmp_path / "experiment"
    argv = [sys.executable, "-m", "precip_cvae", "experiment", "--config", str(config), "--seeds", "2", "--steps", "6",
            "--batch-size", "4", "--filters", "4", "--blocks", "1", "--source", str(synth), "--out", str(out),
            "--quiet", "experiment.ema=0.9", "experiment.val_every=3"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "experiment.json").read_text())
    assert set(report["arms"]) == set(ARMS) - {"augment_pairs"}  # its X is not made from the target: skipped
    assert list(report["skipped"]) == ["augment_pairs"]
    assert "not made from the target" in report["skipped"]["augment_pairs"]
    for arm in report["arms"]:
        assert report["summary"][arm]["all"]["MAE_tail"]["value"]["n"] == 2
        assert (out / "runs" / f"{arm}_seed1.json").is_file()
    assert report["arms"]["oversample"]["heavy_share"] == pytest.approx(report["arms"]["augment"]["heavy_share"])
    # how far synthetic inputs are from the real day's: none for real-only arms, exactly 0 when X is the real day's,
    # and only the re-derived precipitation channel moves in augment_newx
    arms = report["arms"]
    assert arms["baseline"]["input_distance"] is None and arms["oversample"]["input_distance"] is None
    assert arms["augment"]["input_distance"]["mean_abs_dx_sd"] == 0.0
    newx = arms["augment_newx"]["input_distance"]["per_channel"]
    moved = [name for name, value in newx.items() if value > 0]
    assert len(moved) == 1 and moved[0].lower() in ("pr", "pr_coarse", "tp", "rr", "precip", "precipitation")
    assert np.isfinite(report["summary"]["quantile"]["all"]["CRPS_q"]["value"]["mean"])
    # how wet the synthetic targets are against their real days: the gate's ratios of the samples used (all of them
    # here: K = 2 = per_day, a permissive gate), averaged; 1 after `sample` rescaled them, and as drawn
    records = json.loads((synth / "manifest.json").read_text())["samples"]
    expected = np.mean([r["mass_ratio"] for r in records if r["accepted"]])
    drawn = np.mean([r["drawn_mass_ratio"] for r in records if r["accepted"]])
    assert arms["augment"]["target_mass_ratio"] == pytest.approx(expected) == pytest.approx(1.0, abs=1e-4)
    assert arms["augment"]["drawn_mass_ratio"] == pytest.approx(drawn) and abs(drawn - 1) > 1e-3
    assert arms["augment"]["preserve_mass"] == "domain" and arms["baseline"]["preserve_mass"] is None
    assert arms["baseline"]["target_mass_ratio"] is None
    text = (out / "experiment.md").read_text()
    assert (
        f"its synthetic targets carry {expected:.2f} × their real day's land total (drawn {drawn:.2f} ×, "
        "rescaled with preserve_mass domain)"
    ) in text
    assert text.startswith("# Downstream experiment") and "Best for extremes" in text
    assert "its synthetic inputs differ from their real day's by 0.00 channel standard deviations" in text
    assert "blew up" in text and isinstance(report["blowups"], list)
    beyond = report["beyond_training_range"]
    assert beyond["split_days"] == report["test_days"] and set(beyond["median_day_mae"]) == set(report["arms"])
    assert ("Test days beyond the training record" if beyond["count"] else "within the range of the") in text
    assert (out / "qq_per_arm.png").is_file() and (out / "bars_MAE_tail_all.png").is_file()
    assert (out / "map_per_arm.png").is_file() and "weights (decay 0.9)" in text and "MDE (80 % power)" in text
    assert json.loads((out / "runs" / "augment_seed0.json").read_text())["selection"]["best_step"] in (3, 6)
    # what the runs cost: each records its seconds, device and threads; the report sums them
    costs = [json.loads(p.read_text())["cost"] for p in (out / "runs").glob("*.json")]
    assert len(costs) == 2 * len(report["arms"]) and all(c["seconds"] > 0 and c["device"] == "cpu" for c in costs)
    compute = report["compute"]
    assert all(0 < c["cpu_seconds"] for c in costs) and compute["cpu_timed"] == len(costs)
    assert compute["runs"] == compute["timed"] == len(costs)
    assert compute["seconds_total"] == pytest.approx(sum(c["seconds"] for c in costs), rel=1e-9)
    assert f"Compute: {compute['seconds_mean'] / 60:.1f} minutes per run (training and scoring) on cpu, " in text
    assert f"The CPU time: {compute['cpu_seconds_mean'] / 60:.1f} minutes per run" in text
    # each run keeps per-test-day sums that add up to its scores (the bootstrap's inputs)
    run = json.loads((out / "runs" / "baseline_seed0.json").read_text())
    daily, heavy = run["daily"], np.array(run["daily"]["heavy"])
    assert len(daily["day"]) == report["test_days"] and heavy.sum() == report["heavy_test_days"]
    for m in ("MAE_tail", "MAE_all"):
        num, den = np.array(daily[m]["num"]), np.array(daily[m]["den"])
        assert num.sum() / den.sum() == pytest.approx(run["all"][m], rel=1e-9)
        if heavy.any() and den[heavy].sum() > 0:
            assert num[heavy].sum() / den[heavy].sum() == pytest.approx(run["heavy"][m], rel=1e-9)
    paired = report["summary"]["augment"]["all"]["MAE_tail"]["paired"]
    assert paired["n_seeds"] == 2 and paired["mean"] == pytest.approx(
        report["summary"]["augment"]["all"]["MAE_tail"]["minus_baseline"]["mean"]
    )
    # finished runs are kept: a second call trains nothing and gives the same numbers
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0
    assert json.loads((out / "experiment.json").read_text())["summary"] == report["summary"]


def test_runs_in_parallel_processes_equal_runs_one_after_another(prepared, tmp_path):
    from precip_cvae.config import load_config

    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", "train.device=cpu"])
    options = replace(config.experiment, arms=("baseline", "oversample"), seeds=1, steps=3, batch_size=4, filters=4,
                      n_blocks=1, ema=0.5)  # fmt: skip
    serial = run_experiment(config, options, tmp_path / "serial", progress=False)
    parallel = run_experiment(config, replace(options, jobs=2), tmp_path / "parallel", progress=False)
    for arm in ("baseline", "oversample"):
        for m in ("MAE_all", "MAE_tail", "RMSE_all"):
            a = serial["summary"][arm]["all"][m]["value"]["mean"]
            assert parallel["summary"][arm]["all"][m]["value"]["mean"] == pytest.approx(a, rel=1e-5)
        a, b = (np.load(tmp_path / d / "runs" / f"{arm}_seed0_map.npy") for d in ("serial", "parallel"))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batches_from_memory_equal_the_dataloader_s(trained, tmp_path):
    """The in-memory rows (real days loaded once per process, then the arm's synthetic rows) give the runs the
    DataLoader gives, bit for bit: same rows, same order, same BatchNorm re-estimation draws."""
    from precip_cvae.data.sample_store import SampleStore
    from precip_cvae.downstream import experiment as ex
    from precip_cvae.sample import SampleOptions, run_sample
    from tests.cases import PERMISSIVE

    synth = tmp_path / "synth"
    run_sample(trained, SampleOptions(mode="prior", K=2, days="heavy_only"), PERMISSIVE, out_dir=synth, progress=False)
    data = PreparedData(trained.data.data_root)
    options = replace(trained.experiment, arms=("baseline", "augment_newx"), steps=5, batch_size=4, filters=4,
                      n_blocks=1, ema=0.9, val_every=0, bn_recalibrate=2)  # fmt: skip
    examples = ex.Examples(data, SampleStore(synth, data))
    plans = ex.plan_arms(data, options, examples)
    assert len(plans["augment_newx"].rows) > len(data.ids("train"))
    device = torch.device("cpu")
    stacked = examples.stacked(plans["augment_newx"].rows)
    row = plans["augment_newx"].rows[-1]
    for tensor, expected in zip((stacked[k][-1] for k in ("inputs", "target", "mask")), examples.load(row),
                                strict=True):  # fmt: skip
        assert torch.equal(tensor, expected)
    for arm in ("baseline", "augment_newx"):
        in_memory, _ = ex.train_run(plans[arm], examples, data, options, 3, trained, device)
        from_disk, _ = ex.train_run(plans[arm], examples, data, options, 3, trained, device, memory_bytes=0)
        for (name, a), b in zip(in_memory.state_dict().items(), from_disk.state_dict().values(), strict=True):
            assert torch.equal(a, b), (arm, name)


@pytest.mark.slow
def test_a_run_that_fails_in_a_worker_stops_the_experiment_with_its_error(trained, tmp_path):
    from precip_cvae.errors import InputError
    from precip_cvae.sample import SampleOptions, run_sample
    from tests.cases import PERMISSIVE

    synth = tmp_path / "synth"
    run_sample(trained, SampleOptions(mode="prior", K=2, days="heavy_only"), PERMISSIVE, out_dir=synth, progress=False)
    for path in synth.glob("*.Y_hr_syn.npy"):
        path.write_bytes(b"not an array")  # listed as accepted, unreadable: found only when a worker loads one
    options = replace(trained.experiment, arms=("baseline", "augment"), seeds=1, steps=20, batch_size=4, filters=4,
                      n_blocks=1, val_every=0, jobs=2, source=str(synth))  # fmt: skip
    with pytest.raises(InputError, match="not a readable .npy array"):
        run_experiment(trained, options, tmp_path / "experiment", progress=False)
    assert not (tmp_path / "experiment" / "runs" / "augment_seed0.json").exists()


def test_convergence_from_the_validation_curves_by_hand():
    from precip_cvae.downstream.experiment import convergence

    still = {"selection": {"scores": [[100, 10.0], [200, 8.0], [300, 6.0], [400, 5.0]]}}  # best before 300: 6 -> 5
    flat = {"selection": {"scores": [[100, 10.0], [200, 4.0], [300, 4.1], [400, 4.0]]}}  # 4 -> 4
    worse = {"selection": {"scores": [[100, 10.0], [200, 4.0], [300, 4.1], [400, 4.4]]}}  # 4 -> 4.4
    assert convergence([still])["last_quarter_gain"] == pytest.approx([1 / 6])
    assert not convergence([still])["converged"] and convergence([still])["steps"] == 400
    both = convergence([flat, worse])
    assert both["last_quarter_gain"] == pytest.approx([0.0, -0.1]) and both["converged"]
    assert convergence([{"selection": {"val_every": 0, "scores": []}}]) is None


def test_verdict_says_when_a_difference_is_noise():
    def block(mean, low, high):
        value = {"mean": mean, "low": mean - 1, "high": mean + 1, "n": 3}
        paired = {"mean": mean - 10, "low": low, "high": high, "n": 3}
        return {"heavy": {"MAE_tail": {"value": value, "minus_baseline": paired}}}

    clear = {"baseline": block(10, None, None), "oversample": block(7, -4, -2)}
    assert "**oversample**" in verdict(clear) and "larger than the seed-to-seed noise" in verdict(clear)
    noisy = {"baseline": block(10, None, None), "oversample": block(9.5, -2, 1)}
    assert "not distinguishable" in verdict(noisy)


@pytest.mark.slow
def test_planted_case_oversampling_beats_the_baseline_on_extremes(tmp_path):
    """Extremes that are learnable only from the rare heavy days: seeing them more often must help."""
    from precip_cvae.config import load_config
    from precip_cvae.data.netcdf import read_netcdf
    from precip_cvae.data.prepare import PrepareOptions, prepare

    rng = np.random.default_rng(0)
    case = make_case(n_days=200, hr=(12, 10), lr=(3, 2))
    level = rng.uniform(0.5, 3.0, 200).astype(np.float32)
    heavy = rng.random(200) < 0.05
    heavy[[170, 180, 190]] = True  # heavy test days
    level[heavy] = rng.uniform(40, 60, heavy.sum())
    case["pr"] = np.where(case["land"], level[:, None, None], np.nan).astype(np.float32)
    case["ta"] = np.repeat(level[:, None, None], 3, 1).repeat(2, 2) + rng.normal(0, 0.1, (200, 3, 2)).astype(np.float32)
    paths = write_netcdf_case(tmp_path / "nc", case)
    source = read_netcdf([paths["lowres"]], paths["highres"], "2000-01-01:2000-05-29", "2000-05-30:2000-07-18",
                         statics=[paths["statics"]])  # fmt: skip
    prepare(source, tmp_path, PrepareOptions(progress=False))
    config = load_config(None, [f"data.data_root={tmp_path / 'data'}", f"data.outputs_root={tmp_path / 'out'}"])
    options = ExperimentOptions(arms=("baseline", "oversample"), seeds=3, steps=150, batch_size=8, filters=8,
                                n_blocks=2, oversample_share=0.5, ema=0.95, val_every=0)  # fmt: skip
    # (no checkpoint choice: this case has about two heavy validation days to choose on)
    report = run_experiment(config, options, progress=False)
    diff = report["summary"]["oversample"]["all"]["MAE_tail"]["minus_baseline"]
    assert diff["mean"] < 0 and diff["high"] < 0, diff
    assert Path(tmp_path / "out" / "experiment" / "experiment.md").is_file()


def test_verdict_gives_the_bootstrap_interval_and_the_minimum_detectable_effect():
    def block(mean, paired=None):
        entry = {"value": {"mean": mean, "low": mean - 1, "high": mean + 1, "n": 5},
                 "minus_baseline": {"mean": mean - 10, "low": None, "high": None, "n": 5}}  # fmt: skip
        if paired:
            entry["paired"] = {"mean": mean - 10, "se": 0.5, "n_seeds": 5, "n_days": 30, "block": 7, **paired}
        return {"heavy": {"MAE_tail": entry}}

    helps = {"baseline": block(10), "augment": block(8, {"low": -3.0, "high": -1.0, "mde": 1.5})}
    text = verdict(helps)
    assert ("On the 30 heavy test days, it brought SRDRN's mean absolute error on pixels at or above P95 from 10.00 "
            "to 8.00 mm/day (paired difference -2.00 mm/day, 95 % interval [-3.00, -1.00] over 5 seeds and test days "
            "resampled in 7-day blocks): larger than the noise") in text  # fmt: skip
    assert "could detect with 80 % power is 1.50 mm/day (15% of the baseline's)" in text
    noise = verdict({"baseline": block(10), "augment": block(9.5, {"low": -1.5, "high": 0.5, "mde": 1.4})})
    assert noise.startswith("Best for extremes: **augment**, but not distinguishable from the noise. On the 30 heavy "
                            "test days, no arm changed")  # fmt: skip
    assert "and the smallest difference this run could detect with 80 % power is 1.40 mm/day (14% of" in noise
    none = {"baseline": block(10), "augment": block(10.4, {"low": -0.5, "high": 1.3, "mde": 1.2})}
    text = verdict(none)
    assert "no alternative beat the plain baseline (the nearest, augment, by +0.40 mm/day" in text
    assert "1.20 mm/day, 12% of the baseline's" in text


def test_summary_bootstraps_the_per_day_sums_of_runs_that_have_them():
    """Runs with per-day sums get the seed-and-day bootstrap ("paired"); runs stored before get seed intervals."""
    from precip_cvae.downstream.experiment import DAILY_SCORES, summarize

    rng = np.random.default_rng(0)
    days = list(range(12))

    def run(shift):
        num = rng.gamma(2.0, 3.0, 12) + shift
        den = rng.integers(1, 5, 12).astype(float)
        daily = {"day": days, "heavy": [d % 3 == 0 for d in days]}
        daily.update({m: {"num": num.tolist(), "den": den.tolist()} for m in DAILY_SCORES})
        score = {m: float(num.sum() / den.sum()) for m in DAILY_SCORES}
        heavy = [d % 3 == 0 for d in days]
        hscore = {m: float(num[heavy].sum() / den[heavy].sum()) for m in DAILY_SCORES}
        return {"all": score, "heavy": hscore, "daily": daily}

    results = {"baseline": [run(0.0) for _ in range(4)], "augment": [run(-1.0) for _ in range(4)]}
    summary = summarize(results)
    for subset in ("all", "heavy"):
        entry = summary["augment"][subset]["MAE_tail"]
        assert entry["paired"]["mean"] == pytest.approx(entry["minus_baseline"]["mean"])
        assert entry["paired"]["n_seeds"] == 4 and entry["paired"]["n_days"] == (12 if subset == "all" else 4)
        assert entry["paired"]["low"] < entry["paired"]["mean"] < entry["paired"]["high"]
    old = {arm: [{k: v for k, v in r.items() if k != "daily"} for r in runs] for arm, runs in results.items()}
    assert "paired" not in summarize(old)["augment"]["all"]["MAE_tail"]  # runs stored before: seed intervals only


def test_the_schedule_and_batchnorm_options_run_and_recalibration_changes_only_the_statistics(prepared, tmp_path):
    from precip_cvae.config import load_config

    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", "train.device=cpu"])
    base = replace(config.experiment, arms=("baseline",), seeds=1, steps=4, batch_size=4, filters=4, n_blocks=1,
                   schedule="cosine")  # fmt: skip
    plain = run_experiment(config, base, tmp_path / "plain", progress=False)
    recal = run_experiment(config, replace(base, bn_recalibrate=3), tmp_path / "recal", progress=False)
    a, b = (r["summary"]["baseline"]["all"]["MAE_all"]["value"]["mean"] for r in (plain, recal))
    assert np.isfinite(a) and np.isfinite(b) and a != b  # same weights (same seed and draws), other statistics
    assert recal["options"]["bn_recalibrate"] == 3 and recal["options"]["schedule"] == "cosine"


def test_a_rerun_keeps_finished_runs_of_the_same_settings_and_refuses_others(prepared, tmp_path):
    """More seeds (or jobs, or the sample store read from another path) reuse the finished runs byte for byte; another
    budget, the EMA warm-up or another dataset in the same --out is refused, naming the key, before anything is
    trained."""
    from precip_cvae.config import load_config
    from precip_cvae.errors import InputError

    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", "train.device=cpu"])
    options = replace(config.experiment, arms=("baseline",), seeds=1, steps=3, batch_size=4, filters=4, n_blocks=1,
                      val_every=0)  # fmt: skip
    out = tmp_path / "experiment"
    run_experiment(config, options, out, progress=False)
    first = (out / "runs" / "baseline_seed0.json").read_bytes()
    assert json.loads(first)["settings"]["steps"] == 3
    report = run_experiment(config, replace(options, seeds=2), out, progress=False)
    assert (out / "runs" / "baseline_seed0.json").read_bytes() == first
    assert report["summary"]["baseline"]["all"]["MAE_all"]["value"]["n"] == 2
    # the same samples read from another place (no store either time here: the same manifest hash)
    run_experiment(config, replace(options, seeds=2, source=str(tmp_path / "moved")), out, progress=False)
    assert (out / "runs" / "baseline_seed0.json").read_bytes() == first
    for change, key in ((dict(steps=4), "steps"), (dict(ema_warmup=True), "ema_warmup"), (dict(lr=2e-3), "lr")):
        with pytest.raises(InputError, match=f"baseline_seed0.json.*{key}"):
            run_experiment(config, replace(options, **change), out, progress=False)
    assert not (out / "runs" / "baseline_seed2.json").exists()
    # a run recorded before prepare's report was left out of the dataset's hash (the whole folder's) is kept
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.fileio import content_sha256

    record = json.loads(first)
    assert record["settings"]["metadata_sha256"] == PreparedData(prepared).metadata_sha256
    record["settings"]["metadata_sha256"] = content_sha256(Path(prepared) / "metadata")
    assert record["settings"]["metadata_sha256"] != PreparedData(prepared).metadata_sha256
    (out / "runs" / "baseline_seed0.json").write_text(json.dumps(record))
    run_experiment(config, options, out, progress=False)
    record["settings"]["metadata_sha256"] = "0" * 64
    (out / "runs" / "baseline_seed0.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="metadata_sha256"):
        run_experiment(config, options, out, progress=False)


def test_a_finished_run_is_kept_across_sample_stores_only_where_its_arm_reads_none():
    """Rescaled or re-gated samples (another manifest hash) leave baseline, quantile and reweight runs valid;
    augmentation arms and oversample (whose heavy share follows the number of accepted samples) are refused."""
    from precip_cvae.downstream.experiment import SAMPLE_ARMS, SAMPLE_FREE_ARMS, check_run_settings
    from precip_cvae.errors import InputError

    settings = {"steps": 10, "samples_sha256": "a" * 64}
    record = {"settings": {"steps": 10, "samples_sha256": "b" * 64}}
    for arm in SAMPLE_FREE_ARMS:
        check_run_settings(Path(f"{arm}_seed0.json"), record, settings, arm)
    for arm in (*SAMPLE_ARMS, "oversample"):
        with pytest.raises(InputError, match=f"{arm}_seed0.json.*samples_sha256"):
            check_run_settings(Path(f"{arm}_seed0.json"), record, settings, arm)
    assert set(SAMPLE_FREE_ARMS) | set(SAMPLE_ARMS) | {"oversample"} == set(ARMS)
    with pytest.raises(InputError, match="steps"):  # any other key still counts for every arm
        check_run_settings(Path("baseline_seed0.json"), {"settings": {**record["settings"], "steps": 9}}, settings,
                           "baseline")  # fmt: skip


def test_runs_of_another_precision_are_not_pooled():
    """A run records the precision its steps computed in: float32 on a CPU whatever train.amp says, bfloat16 on CUDA
    under train.amp. Runs made before it was recorded have it inferred from their device."""
    from precip_cvae.downstream.experiment import check_run_settings
    from precip_cvae.errors import InputError
    from precip_cvae.loop import Precision

    assert Precision.for_device(torch.device("cpu"), True).name == "float32"
    assert Precision(torch.bfloat16).name == "bfloat16"
    gpu = {"steps": 10, "train.amp": True, "precision": "bfloat16"}
    cpu = {**gpu, "precision": "float32"}
    old_cpu_run = {"settings": {"steps": 10, "train.amp": True}, "cost": {"device": "cpu"}}
    old_gpu_run = {"settings": {"steps": 10, "train.amp": True}, "cost": {"device": "cuda:0"}}
    check_run_settings(Path("baseline_seed0.json"), old_cpu_run, cpu, "baseline")
    check_run_settings(Path("baseline_seed0.json"), old_gpu_run, gpu, "baseline")
    check_run_settings(Path("baseline_seed0.json"), {"settings": cpu}, cpu, "baseline")
    with pytest.raises(InputError, match="precision 'float32' there, 'bfloat16' now.*train.amp=false"):
        check_run_settings(Path("baseline_seed0.json"), old_cpu_run, gpu, "baseline")
    with pytest.raises(InputError, match="precision 'bfloat16' there, 'float32' now"):
        check_run_settings(Path("baseline_seed0.json"), {"settings": gpu}, cpu, "baseline")


def _baseline_run(prepared, tmp_path, *overrides):
    """A tiny baseline-arm setup on the prepared case: the config (with ``overrides``), data, examples and plan."""
    from precip_cvae.config import load_config
    from precip_cvae.data.sample_store import SampleStore
    from precip_cvae.downstream.experiment import Examples, plan_arms

    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", "train.device=cpu",
                                "experiment.arms=[baseline]", "experiment.batch_size=4", "experiment.filters=4",
                                "experiment.n_blocks=1", "experiment.lr=0.01", *overrides])  # fmt: skip
    data = PreparedData(prepared)
    examples = Examples(data, SampleStore(tmp_path / "none"))
    return config, data, examples, plan_arms(data, config.experiment, examples)["baseline"]


def test_validation_every_n_steps_keeps_the_best_weights(prepared, tmp_path):
    from precip_cvae.downstream.experiment import score_run, train_run, validation_score

    config, data, examples, plan = _baseline_run(prepared, tmp_path, "experiment.steps=9", "experiment.val_every=0",
                                                 "experiment.ema=0")  # fmt: skip
    options, device = config.experiment, torch.device("cpu")
    last, plain = train_run(plan, examples, data, options, 0, config, device)
    assert plain == {"val_every": 0, "scores": []}
    picked, selection = train_run(plan, examples, data, replace(options, val_every=3), 0, config, device)
    steps, scores = zip(*selection["scores"], strict=True)
    assert steps == (3, 6, 9)
    assert selection["best_score"] == min(scores)
    assert selection["best_step"] == steps[scores.index(min(scores))]
    again = validation_score(score_run(picked, plan, data, options, device, split="val"))
    assert again == pytest.approx(selection["best_score"])
    # the last checkpoint of the validated run is the plain run's (same seed, same draws, same steps)
    final = validation_score(score_run(last, plan, data, options, device, split="val"))
    assert final == pytest.approx(scores[-1])


def test_channels_last_trains_the_same_function_and_keeps_finished_runs(prepared, tmp_path):
    """experiment.channels_last puts SRDRN in channels-last layout (by default on a CPU) and changes nothing but float
    rounding; runs made with and without it (or with cudnn_benchmark, a no-op on the CPU) are pooled: a re-run reuses
    them."""
    from precip_cvae.downstream.experiment import score_run, train_run

    config, data, examples, plan = _baseline_run(prepared, tmp_path, "experiment.seeds=1", "experiment.steps=6",
                                                 "experiment.val_every=3")  # fmt: skip
    options, device = config.experiment, torch.device("cpu")
    assert options.channels_last is None  # the default: channels-last on a CPU
    plain, plain_selection = train_run(plan, examples, data, replace(options, channels_last=False), 0, config, device)
    for fast_options in (options, replace(options, channels_last=True)):
        fast, fast_selection = train_run(plan, examples, data, fast_options, 0, config, device)
        convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    assert not plain.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast_selection["best_step"] == plain_selection["best_step"]
    a = score_run(plain, plan, data, options, device, split="test")["all"]["MAE_all"]
    b = score_run(fast, plan, data, options, device, split="test")["all"]["MAE_all"]
    assert b == pytest.approx(a, rel=1e-4)
    out = tmp_path / "experiment"
    run_experiment(config, options, out, progress=False)
    first = (out / "runs" / "baseline_seed0.json").read_bytes()
    run_experiment(config, replace(options, channels_last=False, cudnn_benchmark=True), out, progress=False)
    assert (out / "runs" / "baseline_seed0.json").read_bytes() == first


def test_runs_whose_heavy_day_p99_is_off_by_more_than_100_percent_are_named():
    from precip_cvae.downstream.experiment import blowups

    def run(ratio, obs=40.0):
        heavy = {"quantile_ratio_P99": ratio, "quantile_sim_P99": ratio * obs, "quantile_obs_P99": obs}
        return {"heavy": heavy, "all": heavy}

    results = {"baseline": [run(1.2), run(2.5)], "augment": [run(0.05), run(1.9)], "quantile": [run(float("nan"))]}
    found = blowups(results)
    assert [(b["arm"], b["seed"]) for b in found] == [("baseline", 1)]
    assert found[0]["relative_bias"] == pytest.approx(1.5) and found[0]["sim"] == pytest.approx(100.0)
    assert blowups({"baseline": [run(-0.5)]})[0]["relative_bias"] == pytest.approx(-1.5)


def test_verdict_names_the_arms_that_are_worse_than_the_baseline_beyond_the_noise():
    def block(mean, low=None, high=None):
        entry = {"value": {"mean": mean, "low": mean - 1, "high": mean + 1, "n": 5},
                 "minus_baseline": {"mean": mean - 10, "low": None, "high": None, "n": 5}}  # fmt: skip
        if low is not None:
            entry["paired"] = {"mean": mean - 10, "se": 0.1, "n_seeds": 5, "n_days": 30, "block": 7, "low": low,
                               "high": high, "mde": 0.3}  # fmt: skip
        return {"heavy": {"MAE_tail": entry}}

    summary = {"baseline": block(10), "reweight": block(10.1, -0.1, 0.3), "augment": block(10.5, 0.2, 0.8),
               "quantile": block(11, 0.6, 1.4)}  # fmt: skip
    text = verdict(summary)
    assert "no alternative beat the plain baseline (the nearest, reweight, by +0.10 mm/day" in text
    assert ("Worse than the baseline beyond the noise (paired difference, 95 % interval): augment (+0.50 mm/day, "
            "[+0.20, +0.80]), quantile (+1.00 mm/day, [+0.60, +1.40]).") in text  # fmt: skip
    assert text.endswith("Ranking by this metric: baseline < reweight < augment < quantile.")
    summary["augment"] = block(10.2, -0.2, 0.6)
    summary["quantile"] = block(10.3, -0.1, 0.7)
    assert "Worse than" not in verdict(summary)


def test_compute_cost_by_hand():
    from precip_cvae.downstream.experiment import compute_cost

    def run(seconds=None, device="cpu", threads=1, cpu=None):
        cost = {"seconds": seconds, "device": device, "threads": threads} | ({"cpu_seconds": cpu} if cpu else {})
        return {"cost": cost} if seconds else {}

    results = {"baseline": [run(60), run(120)], "augment": [run(90, "cuda:0", 16), run()]}
    cost = compute_cost(results)
    assert cost == {"runs": 4, "timed": 3, "seconds_total": 270.0, "seconds_mean": 90.0,
                    "devices": ["cpu, 1 thread", "cuda:0, 16 threads"]}  # fmt: skip
    assert compute_cost({"baseline": [run(), run()]}) is None
    # CPU seconds over the runs that recorded them (older runs have none): 100 and 50 of the three timed runs
    cost = compute_cost({"baseline": [run(60, cpu=100.0), run(120)], "augment": [run(90, cpu=50.0)]})
    assert cost["timed"] == 3 and cost["cpu_timed"] == 2
    assert cost["cpu_seconds_total"] == 150.0 and cost["cpu_seconds_mean"] == 75.0


def test_test_days_beyond_the_training_range_are_found_and_costed(prepared, tmp_path):
    """One test day pushed 2.5 channel standard deviations above every training day's largest value of its channel:
    found with that excess, its channel, value and bound; its MAE (mean over seeds of num/den) and its share of the
    heavy-day MAE above P95 (its tail sum over all heavy days' tail counts) by hand; and the report's paragraph."""
    import shutil

    from precip_cvae.downstream.experiment import beyond_training_range
    from precip_cvae.downstream.report import _beyond_text

    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    data = PreparedData(root)
    train_max = max(float(data.inputs(d)[2].max()) for d in data.ids("train"))
    test = data.ids("test")
    before = beyond_training_range(data, {})
    target = test[1]
    x = data.inputs(target).copy()
    x[2, 1, 1] = train_max + 2.5
    np.save(root / "X_lr" / f"day_{target:06d}.npy", x)
    heavy = [d == target or i % 3 == 0 for i, d in enumerate(test)]
    rng = np.random.default_rng(0)

    def run():
        daily = {"day": list(test), "heavy": heavy}
        for m in ("MAE_all", "MAE_tail"):
            daily[m] = {"num": rng.uniform(1, 9, len(test)).tolist(), "den": rng.integers(1, 5, len(test)).tolist()}
        return {"daily": daily}

    results = {"baseline": [run(), run()], "augment": [run()]}
    found = beyond_training_range(data, results)
    assert found["count"] == before["count"] + (target not in [f["day"] for f in before["days"]])
    far = found["days"][0]
    assert far["day"] == target and far["channel"] == data.variables[2]["name"]
    assert far["excess_sd"] == pytest.approx(2.5, abs=1e-5) and far["value_sd"] == pytest.approx(train_max + 2.5)
    assert far["training_bound_sd"] == pytest.approx(train_max) and found["beyond_1sd"] >= 1
    i = test.index(target)
    expect = np.mean([r["daily"]["MAE_all"]["num"][i] / r["daily"]["MAE_all"]["den"][i] for r in results["baseline"]])
    assert far["mae"]["baseline"] == pytest.approx(expect, rel=1e-12)
    only = results["augment"][0]["daily"]["MAE_tail"]
    share = only["num"][i] / sum(d for d, h in zip(only["den"], heavy, strict=True) if h)
    assert far["heavy_mae_tail_share"]["augment"] == pytest.approx(share, rel=1e-12)
    text = _beyond_text(found)
    assert f"{found['count']} of {len(test)} test days" in text
    assert f"{far['channel']} at {train_max + 2.5:.1f} standard deviations where the training days reach" in text
    assert f"baseline {expect:.1f}" in text and f"augment {share:.2f} mm/day" in text
    inside = {**found, "count": 0}
    assert _beyond_text(inside).startswith(f"Every one of the {len(test)} test days has its predictors within")


def test_heavy_days_within_the_training_range_are_summarized_apart():
    """Runs with per-day sums where one heavy day (beyond the training range) carries a huge error for the baseline
    alone: on all heavy days augment looks better, without that day they are equal. The in-range subset's scores are
    the ratio of sums over the kept days (by hand), its paired difference counts the kept days, the verdict says
    it, and excluding only a light day adds no subset."""
    from precip_cvae.downstream.experiment import summarize

    days = list(range(100, 160))
    heavy = [i % 2 == 0 for i in range(60)]
    far = 100  # heavy
    rng = np.random.default_rng(3)

    def run(blow: float, seed_shift: float) -> dict:
        tail = rng.uniform(4, 6, 60) + seed_shift
        den = rng.integers(5, 9, 60).astype(float)
        num = tail * den
        num[days.index(far)] += blow * den[days.index(far)]
        daily = {"day": days, "heavy": heavy, "MAE_tail": {"num": num.tolist(), "den": den.tolist()},
                 "MAE_all": {"num": (num / 2).tolist(), "den": (den * 2).tolist()}}  # fmt: skip
        h = np.array(heavy)
        score = {"MAE_tail": num[h].sum() / den[h].sum(), "MAE_all": (num / 2)[h].sum() / (den * 2)[h].sum()}
        return {"all": dict(score), "heavy": dict(score), "daily": daily}

    results = {
        "baseline": [run(300.0, s) for s in (0.0, 0.1, -0.1)],
        "augment": [run(0.0, s) for s in (0.0, 0.1, -0.1)],
    }
    summary = summarize(results, frozenset({far, 131}))
    inside = summary["augment"]["heavy_in_range"]["MAE_tail"]
    keep = np.array(heavy) & (np.array(days) != far)
    sums = [(np.array(r["daily"]["MAE_tail"]["num"])[keep].sum(), np.array(r["daily"]["MAE_tail"]["den"])[keep].sum())
            for r in results["augment"]]  # fmt: skip
    expect = [n / d for n, d in sums]
    assert inside["value"]["mean"] == pytest.approx(np.mean(expect), rel=1e-12)
    assert inside["paired"]["n_days"] == 29 and summary["augment"]["heavy"]["MAE_tail"]["paired"]["n_days"] == 30
    everything = summary["augment"]["heavy"]["MAE_tail"]["paired"]
    assert everything["mean"] < -5 and everything["mde"] > 10 * inside["paired"]["mde"]  # one day: large and noisy
    assert inside["paired"]["low"] < 0 < inside["paired"]["high"] and abs(inside["paired"]["mean"]) < 0.5
    assert set(summary["baseline"]["heavy_in_range"]) == {"MAE_tail", "MAE_all"}
    text = verdict(summary)
    assert "Best for extremes: **augment**, but not distinguishable from the noise. On the 30 heavy test days" in text
    assert "leave the range of the training days (where the networks extrapolate; see below), on the other 29:" in text
    assert "not distinguishable from the noise; smallest detectable difference" in text
    assert "heavy_in_range" not in summarize(results, frozenset({131}))["augment"]  # 131 is a light day
    assert "Without the heavy test days" not in verdict(summarize(results))
    one_seed = verdict(summarize({a: runs[:1] for a, runs in results.items()}, frozenset({far})))
    assert one_seed.endswith("of the baseline's; one seed: the interval covers the choice of test days, not "
                             "seed-to-seed variation).")  # fmt: skip
