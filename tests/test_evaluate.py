"""Evaluation: baselines by hand, the E-OBS cross-check, and `evaluate` end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from precip_cvae.baselines import AnalogEnsemble, ClimatologyEnsemble, OracleEnsemble
from precip_cvae.data.dataset import PreparedData


def test_analog_ensemble_finds_the_nearest_inputs(prepared):
    data = PreparedData(prepared)
    pool = data.ids("train")
    analog = AnalogEnsemble(data, pool, K=3)
    day = pool[5]
    members, ids = analog.members(day)
    assert day not in ids  # never its own analog
    x = lambda i: ((data.inputs(i) - analog.mean) / analog.std).ravel()  # noqa: E731
    distances = {i: float(((x(i) - x(day)) ** 2).sum()) for i in pool if i != day}
    assert list(ids) == sorted(distances, key=distances.get)[:3]
    np.testing.assert_array_equal(members[0], data.target_mm(int(ids[0])))


def test_climatology_ensemble_keeps_the_calendar_month(prepared):
    data = PreparedData(prepared)
    clim = ClimatologyEnsemble(data, data.ids("train"), K=4, seed=0)
    day = data.ids("val")[0]  # a February day; the train split has January and February days
    _, ids = clim.members(day)
    assert data.date(day)[5:7] == "02" and {data.date(int(i))[5:7] for i in ids} == {"02"}
    _, ids = clim.members(data.ids("test")[0])  # March: no March day in the pool, so any pool day
    assert set(ids) <= set(data.ids("train"))


def test_oracle_is_found_and_aligned(prepared):
    data = PreparedData(prepared)
    path = data.oracle_path
    assert path is not None and path.name == "oracle_test.npy"
    oracle = OracleEnsemble(data, path)
    members, _ = oracle.members(data.ids("test")[0])
    assert members.shape == (2, 24, 20)
    assert np.isnan(members[:, ~data.valid_mask]).all() and (members[:, data.valid_mask] >= 0).all()


def test_evaluate_end_to_end_in_a_subprocess(trained, tmp_path):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(trained.to_dict()))
    out = tmp_path / "evaluation"
    argv = [sys.executable, "-m", "precip_cvae", "evaluate", "--config", str(config), "--K", "4", "--out", str(out),
            "--quiet"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"model", "analog", "climatology", "oracle"}
    data = PreparedData(trained.data.data_root)
    assert metrics["days"] == data.ids("test")
    for system in metrics["systems"].values():
        assert system["all"]["CRPS"] > 0 and len(system["all"]["rank_histogram"]) == system["K"] + 1
    report = (out / "report.md").read_text()
    assert "| CRPS (fair), mm/day |" in report and "Gap to the oracle" in report
    beyond = metrics["beyond_training_range"]  # the test days where the generator extrapolates
    assert beyond["count"] == len(data.beyond_training_range(data.ids("test")))
    assert ("have a predictor outside the range of the training days" in report) == (beyond["count"] > 0)
    for figure in ("rank_histogram.png", "qq_intensities.png", "rapsd.png", "reliability.png", "training_curves.png"):
        assert (out / figure).is_file(), figure


def test_worker_processes_score_what_this_process_scores(trained, tmp_path):
    # batches scored into accumulators of their own, by 2 worker processes while this one draws, merged in batch
    # order: the same metrics, to the last digit, as scoring here
    from precip_cvae.config import EvaluateConfig
    from precip_cvae.evaluate import run_evaluate

    runs = {}
    for workers in (0, 2):
        options = EvaluateConfig(K=4, batch_size=3, workers=workers, qq_values=500)
        runs[workers] = run_evaluate(trained, options, out_dir=tmp_path / f"w{workers}", progress=False)
    here, pooled = runs[0]["systems"], runs[2]["systems"]
    assert len(runs[0]["days"]) > 6 and here.keys() == pooled.keys() == {"model", "analog", "climatology", "oracle"}
    for name in here:
        assert json.dumps(pooled[name], sort_keys=True) == json.dumps(here[name], sort_keys=True), name


def test_on_a_cpu_one_thread_scores_while_the_draws_leave_it_a_core(trained, tmp_path, monkeypatch):
    import threading

    from precip_cvae import evaluate
    from precip_cvae.config import EvaluateConfig
    from precip_cvae.generator import Generator

    seen = {"draw": set(), "score": set()}
    draw, score = Generator.draw, evaluate._Scorer.__call__

    def recorded_draw(self, *args):
        seen["draw"].add((threading.current_thread().name, torch.get_num_threads()))
        return draw(self, *args)

    def recorded_score(self, *args):
        seen["score"].add(threading.current_thread().name.rsplit("_", 1)[0])
        return score(self, *args)

    monkeypatch.setattr(Generator, "draw", recorded_draw)
    monkeypatch.setattr(evaluate._Scorer, "__call__", recorded_score)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        evaluate.run_evaluate(trained, EvaluateConfig(K=2, batch_size=4, qq_values=100), out_dir=tmp_path / "t",
                              progress=False)  # fmt: skip
        assert torch.get_num_threads() == 3  # given back
    finally:
        torch.set_num_threads(threads)
    assert seen == {"draw": {("MainThread", 2)}, "score": {"evaluate-scores"}}


def _numbers(tree, path=""):
    """Every number of a metrics tree by its path (lists by position)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{path}/{i}").items()}
    return {path: tree}


def test_scoring_where_the_model_draws_gives_what_numpy_gives_day_by_day(trained, tmp_path, monkeypatch):
    # on an accelerator evaluate draws with Generator.draw_mm and scores every system where the samples are (analogs,
    # climatology and oracle moved there); forced here on the CPU: the same metrics as the numpy path, the same Q-Q
    # sample, the same rank histograms
    import precip_cvae.evaluate as evaluate
    import precip_cvae.plot as plot
    from precip_cvae.config import EvaluateConfig

    options = EvaluateConfig(K=4, batch_size=5, qq_values=500)
    samples, figures = [], plot.evaluation_figures

    def keep_qq(root, metrics, maps, values, obs_values, *rest):  # the Q-Q samples the figures get, and the maps
        samples.append((values, obs_values, maps))
        return figures(root, metrics, maps, values, obs_values, *rest)

    monkeypatch.setattr(plot, "evaluation_figures", keep_qq)
    host = evaluate.run_evaluate(trained, options, out_dir=tmp_path / "host", progress=False)
    calls = []
    real = evaluate.System.add_device

    def counted(self, *args):
        calls.append(self.name)
        return real(self, *args)

    monkeypatch.setattr(evaluate, "_score_on_device", lambda device: True)
    monkeypatch.setattr(evaluate.System, "add_device", counted)
    device = evaluate.run_evaluate(trained, options, out_dir=tmp_path / "device", progress=False)
    batches = -(-len(host["days"]) // 5)
    assert sorted(set(calls)) == ["analog", "climatology", "model", "oracle"] and len(calls) == 4 * batches
    a, b = _numbers(host["systems"]), _numbers(device["systems"])
    assert a.keys() == b.keys() and len(a) > 200
    for key, value in a.items():
        if isinstance(value, float) and not np.isfinite(value):
            assert not np.isfinite(b[key]) or b[key] == value, key
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        else:
            assert b[key] == value, key
    assert any("rank_histogram" in key for key in a)
    (values, obs_values, maps), (values_d, obs_values_d, maps_d) = samples
    assert values.keys() == values_d.keys() and maps.keys() == maps_d.keys() and maps
    np.testing.assert_array_equal(obs_values_d, obs_values)
    for name, kept in values.items():
        assert kept.size == 500  # the same keys kept, so the same values (to float32 rounding of the samples)
        np.testing.assert_allclose(values_d[name], kept, rtol=1e-6, atol=1e-6, err_msg=name)
    for day, m in maps.items():
        np.testing.assert_allclose(maps_d[day]["model"], m["model"], rtol=1e-6, atol=1e-6)
    for name in ("host", "device"):
        assert (tmp_path / name / "metrics.json").is_file() and (tmp_path / name / "report.md").is_file()


def test_eobs_analog_crps_cross_check(tmp_path, shared_data):
    """The issue's independent numbers: fair CRPS of the K=16 analog ensemble, 0.934 and 4.52 mm/day."""
    from precip_cvae.data.netcdf import read_netcdf
    from precip_cvae.data.prepare import PrepareOptions, prepare
    from precip_cvae.metrics import EnsembleScores

    d = shared_data / "eobs_iberia"
    source = read_netcdf(
        [d / "NCEP_Iberia_hus850.nc", d / "NCEP_Iberia_psl.nc", d / "NCEP_Iberia_ta850.nc"],
        d / "EOBS_Iberia_pr.nc", "1982-12-01:1998-02-28", "1998-12-01:2002-02-28",
        statics=[d / "EOBS_Iberia_grid_static.nc"],
    )  # fmt: skip
    prepare(source, tmp_path, PrepareOptions(progress=False))
    data = PreparedData(tmp_path / "data")
    analog = AnalogEnsemble(data, data.ids("train") + data.ids("val"), K=16)
    thresholds = {k: data.thresholds_mm[k] for k in ("P95", "P99", "P99.9")}
    scores = {"all": EnsembleScores(16, thresholds), "heavy": EnsembleScores(16, thresholds)}
    for day in data.ids("test"):
        members, _ = analog.members(day)
        obs = data.target_mm(day)
        mask = data.valid_mask & np.isfinite(obs) & np.isfinite(members).all(axis=0)
        scores["all"].accumulate(members, obs, mask)
        if data.is_heavy(day):
            scores["heavy"].accumulate(members, obs, mask)
    assert len(data.ids("test")) == 361 and sum(data.is_heavy(i) for i in data.ids("test")) == 16
    assert scores["all"].compute()["CRPS"] == pytest.approx(0.934, rel=0.05)
    assert scores["heavy"].compute()["CRPS"] == pytest.approx(4.52, rel=0.05)


def test_report_marks_the_best_non_oracle_value():
    from precip_cvae.report import table

    block = lambda crps: {"CRPS": crps}  # noqa: E731
    metrics = {"systems": {"model": {"all": block(2.0)}, "analog": {"all": block(1.5)}, "oracle": {"all": block(1.0)}}}
    text = table(metrics, "all", rows=[("CRPS", "CRPS", "lower")])
    assert "| CRPS | 2.000 | **1.500** | 1.000 |" in text


def test_report_says_how_the_model_ranks_and_never_crowns_the_tail_mae():
    from precip_cvae.report import ROWS, ranking, table

    def block(crps, mae_tail):
        return {"CRPS": crps, "MAE_tail": mae_tail}

    metrics = {
        "days": list(range(10)), "heavy_days": [3, 4],
        "systems": {"model": {"all": block(2.0, 5.0), "heavy": block(8.0, 6.0)},
                    "analog": {"all": block(1.5, 9.0), "heavy": block(9.0, 9.0)},
                    "oracle": {"all": block(1.0, 8.0), "heavy": block(4.0, 8.0)}},
    }  # fmt: skip
    text = ranking(metrics)
    assert text.startswith("On all 10 days the model's CRPS loses to analog (2.000 vs 1.500 mm/day, 1.33 x)")
    assert "On 2 heavy days the model's CRPS beats analog (8.000 vs 9.000 mm/day, 0.89 x)" in text
    mae_tail = [r for r in ROWS if r[0] == "MAE_tail"]
    assert "**" not in table(metrics, "all", rows=mae_tail)  # the over-forecasting model "wins" it: not marked


def test_the_qq_reservoir_keeps_the_values_of_the_smallest_keys_of_everything_added_and_merged():
    """Bottom-k sampling: after adds (each value gets a random key from the reservoir's generator) and a merge, the
    kept values are exactly those with the `size` smallest keys of the whole stream, recomputed here by replaying
    the generators over everything added."""
    from precip_cvae.evaluate import _Reservoir

    size, streams = 50, {1: [30, 40, 1000, 3, 500], 2: [80, 7, 300]}
    reservoirs, every_value, every_key, start = {}, [], [], 0
    for seed, sizes in streams.items():
        reservoirs[seed], replay = _Reservoir(size, seed), np.random.default_rng(seed)
        for n in sizes:
            values = np.arange(start, start + n, dtype=np.float32)  # distinct values, to name what is kept
            start += n
            reservoirs[seed].add(np.concatenate([values, [np.nan]]))  # a non-finite value is dropped, draws no key
            every_value.append(values)
            every_key.append(replay.random(n))
    a = reservoirs[1]
    a.merge(reservoirs[2])
    keys, values = np.concatenate(every_key), np.concatenate(every_value)
    expected = np.sort(values[np.argsort(keys)[:size]])
    assert a.values.size == size and np.array_equal(np.sort(a.values), expected)
    assert np.array_equal(np.sort(a.keys), np.sort(keys)[:size])


def test_report_names_the_days_beyond_the_training_range():
    from precip_cvae.report import _beyond

    far = {"day": 5371, "date": "1995-09-16", "heavy": True, "channel": "pr_coarse", "excess_sd": 21.6,
           "value_sd": 41.42, "training_bound_sd": 19.77}  # fmt: skip
    text = _beyond({"count": 47, "heavy": 14, "beyond_1sd": 7, "days": [far]})
    assert text == (" 47 of these days (14 heavy; 7 by more than one channel standard deviation) have a predictor "
                    "outside the range of the training days: there the model extrapolates, and the analog and "
                    "climatology baselines can only repeat training days. The furthest, 1995-09-16: pr_coarse at 41.4 "
                    "standard deviations where the training days reach 19.8.")  # fmt: skip
    assert _beyond({"count": 0, "heavy": 0, "beyond_1sd": 0, "days": []}) == "" and _beyond(None) == ""
