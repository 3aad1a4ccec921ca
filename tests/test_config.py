from pathlib import Path

import pytest

from precip_cvae.cli import main
from precip_cvae.config import Config, dump_config, load_config
from precip_cvae.errors import InputError


def test_shipped_default_yaml_equals_the_dataclass_defaults():
    from importlib.resources import files

    path = files("precip_cvae").joinpath("default_config.yaml")
    assert load_config(Path(str(path))) == Config()


def test_reference_keys_and_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  epochs: 80\n  batch_size: 6\n  lr: 0.001\nloss:\n  lambda_ext: 3.0\n  lambda_mass: 0.1\n"
                    "  beta_kl: 0.5\nmodel:\n  d_z: 64\n  base_filters: 64\n")  # fmt: skip
    config = load_config(path, ["train.epochs=5", "loss.extreme_threshold=P99", "loss.lambda_ext=5", "train.amp=false"])
    assert config.train.epochs == 5 and config.train.batch_size == 6
    assert config.loss.extreme_threshold == "P99" and config.loss.lambda_ext == 5.0
    assert config.train.amp is False
    assert load_config(None, ["loss.extreme_threshold=25.0"]).loss.extreme_threshold == 25.0
    assert load_config(path, []).to_dict() == load_config(path).to_dict()
    assert "epochs: 80" in dump_config(load_config(path))


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("train:\n  epochz: 3\n", "train.epochz"),
        ("train:\n  epochs: three\n", "train.epochs"),
        ("train:\n  amp: 1\n", "train.amp"),
        ("modle:\n  d_z: 3\n", "modle"),
        ("model:\n  prior: fancy\n", "model.prior"),
        ("train:\n  epochs: 0\n", "train.epochs"),
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, key):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_config(path)


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(InputError, match="train.batch_size"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(InputError, match="section.key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_print_config_and_cli_error(capsys, tmp_path):
    assert main(["train", "--print-config"]) == 0
    assert "lambda_ext: 3.0" in capsys.readouterr().out
    assert main(["train", "train.epochz=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochz" in err[0]


def test_every_stage_has_a_section_validated_before_work(tmp_path):
    overrides = ["gate.min_variability=0.1", "evaluate.baselines=analog,oracle", "experiment.arms=[quantile]",
                 "experiment.oversample_share=0.4", "evaluate.oracle=o.npy"]  # fmt: skip
    config = load_config(None, overrides)
    assert config.gate.min_variability == 0.1 and config.evaluate.baselines == ("analog", "oracle")
    assert config.experiment.arms == ("quantile",) and config.experiment.oversample_share == 0.4
    assert config.evaluate.oracle == "o.npy"
    bad = [("train.select_metric=val_nope", "train.select_metric"), ("evaluate.K=1", "evaluate.K"),
           ("evaluate.baselines=analog,persistence", "evaluate.baselines"),
           ("experiment.arms=baseline,magic", "experiment.arms"), ("gate.peak_factor=0", "gate.peak_factor"),
           ("experiment.quantiles=[0.5,1.5]", "experiment.quantiles")]  # fmt: skip
    for override, key in bad:
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            load_config(None, [override])
    # a range check names its rule and the value it got
    ranges = [("evaluate.K=1", "evaluate.K: must be >= 2, got 1"),
              ("gate.max_mass_ratio=0.05", "gate.max_mass_ratio: must be > gate.min_mass_ratio, got 0.05"),
              ("experiment.quantiles=[0.5,1.5]", r"must be each in \(0, 1\), got \(0.5, 1.5\)")]  # fmt: skip
    for override, said in ranges:
        with pytest.raises(InputError, match=said):
            load_config(None, [override])


def test_min_threshold_is_the_references_name_of_the_gates_mass_ratio():
    assert load_config(None).gate_config().min_mass_ratio == 0.1
    assert load_config(None, ["gate.min_mass_ratio=0.3"]).gate_config().min_mass_ratio == 0.3
    assert load_config(None, ["sampling.min_threshold=0.2"]).gate_config().min_mass_ratio == 0.2


def test_command_flags_are_config_overrides(capsys):
    # a flag left out keeps the config's value; a flag given is validated as the config key it stands for
    assert main(["evaluate", "--K", "1", "--quiet"]) == 2
    assert "evaluate.K" in capsys.readouterr().err
    assert main(["experiment", "--arms", "baseline,magic", "--quiet"]) == 2
    assert "experiment.arms: unknown magic" in capsys.readouterr().err


def test_the_reference_preset_is_the_reference_design():
    from precip_cvae.config import REFERENCE

    ref = load_config("reference", ["train.epochs=3"])
    assert ref.train.epochs == 3
    for section, values in REFERENCE.items():
        for key, value in values.items():
            assert getattr(getattr(ref, section), key) == value, (section, key)
            assert getattr(getattr(Config(), section), key) != value, (section, key)  # the default is the winner
    assert (ref.model.prior, ref.model.latent_scales, ref.model.output) == ("standard", (), "linear")
    assert (ref.loss.beta_kl, ref.loss.crps_weight, ref.model.d_z) == (0.5, 0.0, 64)
    with pytest.raises(InputError, match="referenc: config file not found"):
        load_config("referenc")


def test_exponent_notation_without_a_point_is_a_float():
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; a learning rate is often written so
    config = load_config(None, ["train.lr=1e-3", "loss.beta_kl=2E-4", "train.grad_clip=+1e0"])
    assert (config.train.lr, config.loss.beta_kl, config.train.grad_clip) == (0.001, 0.0002, 1.0)
    with pytest.raises(InputError, match="train.lr: expected float, got '1e-3x'"):
        load_config(None, ["train.lr=1e-3x"])
    with pytest.raises(InputError, match="train.epochs"):  # an int is not given in exponent notation
        load_config(None, ["train.epochs=1e3"])
