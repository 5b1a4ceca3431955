"""featurenorm.config: the seed format, ``--set`` overrides, and one-line errors that name the key."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from featurenorm.config import Config, from_dict, load_config, parse_override
from featurenorm.errors import ConfigError, UserError

SEED_CONFIG = {"epoch": "100", "id_dataset": "./cifar10", "batch_size": 128, "save_path": "./cifar10/",
               "num_classes": 10, "svhn": "./svhn", "textures": "./textures", "lsun": "./lsun",
               "lsun-resize": "./lsun_resized", "isun": "./isun"}
MINIMAL = {"id_dataset": "digits", "save_path": "runs/x"}


def write_config(tmp_path: Path, raw: dict | str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw, indent=2))
    return path


def test_seed_format_loads_unchanged(tmp_path):
    cfg = load_config(write_config(tmp_path, SEED_CONFIG))
    assert cfg.epochs == 100 and type(cfg.epochs) is int  # "100" arrives as a string
    assert (cfg.id_dataset, cfg.save_path, cfg.batch_size, cfg.num_classes) == ("./cifar10", "./cifar10/", 128, 10)
    assert cfg.lsun_resize == "./lsun_resized"
    assert cfg.places365 is None
    assert list(cfg.ood_paths().items()) == [("svhn", "./svhn"), ("textures", "./textures"), ("lsun", "./lsun"),
                                             ("lsun-resize", "./lsun_resized"), ("isun", "./isun")]
    # the keys the seed file does not set keep the paper's ResNet-18 recipe
    assert (cfg.arch, cfg.lr, cfg.milestones, cfg.momentum, cfg.weight_decay) == ("resnet18", 0.1, [50, 75, 90], 0.9,
                                                                                  5e-4)


def test_places365_key_joins_ood_paths_in_table_order(tmp_path):
    cfg = load_config(write_config(tmp_path, {**SEED_CONFIG, "places365": "./places", "cifar100": "./c100"}))
    assert cfg.places365 == "./places"
    assert list(cfg.ood_paths()) == ["svhn", "textures", "lsun", "lsun-resize", "isun", "places365", "cifar100"]


def test_numbers_as_strings_are_coerced():
    cfg = from_dict({**MINIMAL, "lr": "0.05", "width": "0.5", "milestones": "[3, 6]", "hflip": "false",
                     "num_classes": 10.0})
    assert (cfg.lr, cfg.width, cfg.milestones, cfg.hflip, cfg.num_classes) == (0.05, 0.5, [3, 6], False, 10)
    assert type(cfg.num_classes) is int


def test_set_overrides_parse_json_and_keep_strings(tmp_path):
    path = write_config(tmp_path, SEED_CONFIG)
    cfg = load_config(path, ["lr=0.01", "milestones=[10, 20]", "hflip=false", "device=cpu", "save_path=./runs/x",
                             "blocks=[\"layer4.0\"]", "num_classes=null", "arch=wrn28_10"])
    assert (cfg.lr, cfg.milestones, cfg.hflip, cfg.device) == (0.01, [10, 20], False, "cpu")
    assert (cfg.save_path, cfg.blocks, cfg.num_classes, cfg.arch) == ("./runs/x", ["layer4.0"], None, "wrn28_10")
    assert parse_override("save_path=a=b") == ("save_path", "a=b")  # split at the first '='
    assert parse_override("id_dataset=123") == ("id_dataset", 123)
    assert load_config(path, ["id_dataset=123"]).id_dataset == "123"


@pytest.mark.parametrize("override", ["epoch=3", "epochs=3"])
def test_override_replaces_every_spelling_of_a_key(tmp_path, override):
    # the seed file says "epoch": "100"; either spelling of the override must win
    cfg = load_config(write_config(tmp_path, {**SEED_CONFIG, "milestones": [1]}), [override])
    assert cfg.epochs == 3


def test_override_of_lsun_resize_by_either_spelling(tmp_path):
    path = write_config(tmp_path, SEED_CONFIG)
    assert load_config(path, ["lsun-resize=./a"]).lsun_resize == "./a"
    assert load_config(path, ["lsun_resize=./b"]).lsun_resize == "./b"


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match=r"--set expects key=value, got 'lr'"):
        load_config(None, ["lr"], base=MINIMAL)


@pytest.mark.parametrize("key, suggestion", [("epochz", "epochs"), ("learning_rate", "lr"),
                                             ("batchsize", "batch_size"), ("lsun_resized", "lsun-resize"),
                                             ("num_class", "num_classes")])
def test_unknown_key_names_it_and_suggests_the_closest(tmp_path, key, suggestion):
    with pytest.raises(ConfigError) as err:
        path = write_config(tmp_path, {**MINIMAL, key: 1})
        load_config(path)
    assert str(err.value) == f"{path}: unknown config key '{key}'; did you mean '{suggestion}'?"
    with pytest.raises(ConfigError) as err:  # the same through --set
        load_config(None, [f"{key}=1"], base=MINIMAL)
    assert str(err.value) == f"unknown config key '{key}'; did you mean '{suggestion}'?"


def test_unknown_key_with_no_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_dict({**MINIMAL, "zzz": 1})
    message = str(err.value)
    assert message.startswith("unknown config key 'zzz'; valid keys: ")
    assert "epoch, epochs" in message and "lsun-resize" in message and "lsun_resize" not in message


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "ten", "config key 'epochs' must be an integer, got 'ten'"),
    ("epochs", 2.5, "config key 'epochs' must be an integer, got 2.5"),
    ("batch_size", True, "config key 'batch_size' must be an integer, got True"),
    ("lr", "fast", "config key 'lr' must be a number, got 'fast'"),
    ("hflip", "maybe", "config key 'hflip' must be true or false, got 'maybe'"),
    ("milestones", 5, "config key 'milestones' must be a list, got 5"),
    ("milestones", ["a"], "config key 'milestones' must be an integer, got 'a'"),
    ("save_path", ["x"], "config key 'save_path' must be a string, got ['x']"),
])
def test_wrong_type_names_the_key(tmp_path, key, value, message):
    path = write_config(tmp_path, {**MINIMAL, key: value})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("missing", ["id_dataset", "save_path"])
def test_missing_required_key(tmp_path, missing):
    raw = {k: v for k, v in MINIMAL.items() if k != missing}
    path = write_config(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: missing required key '{missing}' "
                              f"(add it to the config file or pass --set {missing}=...)")
    # an override supplies it
    assert getattr(load_config(path, [f"{missing}=here"]), missing) == "here"


@pytest.mark.parametrize("overrides, message", [
    ({"lr": -0.1}, "config key 'lr' must not be negative, got -0.1"),
    ({"lr": 0}, "config key 'lr' must be positive, got 0"),
    ({"epochs": 0, "milestones": []}, "config key 'epochs' must be at least 1, got 0"),
    ({"epochs": 10, "milestones": [0, 5]}, "config key 'milestones' must be at least 1, got [0, 5]"),
    ({"milestones": [75, 50]}, "config key 'milestones' must be increasing, got [75, 50]"),
    ({"width": 0}, "config key 'width' must be positive, got 0.0"),
    ({"num_classes": 1}, "config key 'num_classes' must be at least 2, got 1"),
    ({"gamma": 1.5}, "config key 'gamma' must be in (0, 1], got 1.5"),
    ({"react_percentile": 100}, "config key 'react_percentile' must be in [0, 100), got 100.0"),
    ({"mean": [0.5, 0.5]}, "config key 'mean' must have one value per channel: 3 for channels 3, got 2"),
    ({"std": [0.5, 0, 0.5]}, "config key 'std' must be positive"),
    ({"loader": "fast"}, "config key 'loader' must be one of auto, gpu, torch, got 'fast'"),
    ({"amp": "fp8"}, "config key 'amp' must be one of auto, bf16, fp16, fp32, got 'fp8'"),
])
def test_out_of_range_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        from_dict({**MINIMAL, **overrides}, source="my.json")
    assert str(err.value) == f"my.json: {message}"


@pytest.mark.parametrize("text, line, column", [
    ('{\n  "id_dataset": "digits",\n  "save_path": "x",\n}\n', 4, 1),   # trailing comma
    ('{\n  "id_dataset": "digits"\n  "save_path": "x"\n}\n', 3, 3),     # missing comma
    ('{"id_dataset": \'digits\'}', 1, 16),                               # single quotes
])
def test_invalid_json_reports_line_and_column(tmp_path, text, line, column):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: invalid JSON at line {line}, column {column}: ")
    assert "\n" not in str(err.value)


def test_config_must_be_an_object_and_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"the config must be a JSON object \{\.\.\.\}, got list"):
        load_config(write_config(tmp_path, "[1, 2]"))
    with pytest.raises(ConfigError, match=r"config file '.*nope\.json' not found"):
        load_config(tmp_path / "nope.json")


def test_config_errors_reach_the_user_as_one_line_and_exit_status_2(tmp_path, capsys):
    from featurenorm.cli import select_main
    from featurenorm.errors import run_cli

    path = write_config(tmp_path, {**MINIMAL, "criterion": "best"})
    assert run_cli(select_main, ["--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"error: {path}: config key 'criterion' must be one of norm_ratio, auroc, mean_rank, "
                            "mean_auroc, min_auroc, got 'best'\n")
    assert captured.out == ""


def test_criteria_are_listed_once_for_the_config_and_the_command_line(capsys):
    from featurenorm.core.criteria import CRITERIA
    from featurenorm.cli import select_main
    from featurenorm.config import CHOICES

    assert list(CHOICES["criterion"]) == list(CRITERIA)
    assert list(CRITERIA) == ["norm_ratio", "auroc", "mean_rank", "mean_auroc", "min_auroc"]
    with pytest.raises(SystemExit):
        select_main(["--help"])
    assert "--criterion {norm_ratio,auroc,mean_rank,mean_auroc,min_auroc}" in capsys.readouterr().out


def test_pseudo_ood_key():
    assert load_config(None, ["pseudo_ood=jigsaw,blur"], base=MINIMAL).pseudo_ood == ["jigsaw", "blur"]
    assert Config().pseudo_ood == ["jigsaw"]
    with pytest.raises(ConfigError, match="'pseudo_ood' must list at least one pseudo-OOD kind"):
        load_config(None, ['pseudo_ood=[]'], base=MINIMAL)


def test_to_dict_round_trips_through_from_dict():
    cfg = from_dict({**SEED_CONFIG, "blocks": ["layer4.0"], "lsun-resize": "./lr", "places365": "./p",
                     "milestones": [10, 20], "width": 0.5, "vim_dim": 8, "dataset": "cifar10"})
    raw = cfg.to_dict()
    assert "lsun-resize" in raw and "lsun_resize" not in raw
    assert raw["lsun-resize"] == "./lr"
    assert set(raw) == {f.name for f in dataclasses.fields(Config)} - {"lsun_resize"} | {"lsun-resize"}
    again = from_dict(json.loads(json.dumps(raw)))  # through JSON, as config.json and checkpoints store it
    assert again == cfg


def test_run_folder_config_json_loads_back(tmp_path):
    # train.py writes the resolved config plus a git_commit record into <save_path>/config.json
    cfg = from_dict(SEED_CONFIG)
    path = write_config(tmp_path, {**cfg.to_dict(), "git_commit": "0123abc"})
    assert load_config(path) == cfg


# ---------------------------------------------------------------------- paper cuts of a new user
def test_default_schedule_scales_with_epochs(tmp_path):
    # the paper's [50, 75, 90] of 100 epochs, at the same fractions of a shorter or longer run
    assert load_config(write_config(tmp_path, {**MINIMAL, "epochs": 100})).milestones == [50, 75, 90]
    assert load_config(write_config(tmp_path, {**MINIMAL, "epochs": 10})).milestones == [5, 8, 9]
    assert load_config(write_config(tmp_path, {**MINIMAL, "epochs": 200})).milestones == [100, 150, 180]
    assert load_config(write_config(tmp_path, {**SEED_CONFIG, "epoch": "1"})).milestones == [1, 1, 1]


def test_explicit_milestone_beyond_the_last_epoch_warns_once_and_never_fires(tmp_path):
    from featurenorm.training.loop import _epoch_lr

    with pytest.warns(UserWarning, match=r"milestone\(s\) \[10, 20\] lie beyond the last epoch \(4\) and never fire"):
        cfg = load_config(write_config(tmp_path, {**MINIMAL, "epochs": 4, "milestones": [2, 10, 20]}))
    assert [_epoch_lr(cfg, e) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_set_null_resets_a_key_to_its_default(tmp_path):
    path = write_config(tmp_path, {**MINIMAL, "width": 0.25, "arch": "resnet18"})
    cfg = load_config(path, ["arch=timm/resnet10t", "width=null"])
    assert (cfg.arch, cfg.width) == ("timm/resnet10t", 1.0)
    assert load_config(path, ["num_classes=7", "num_classes=null"]).num_classes is None


def test_utf16_config_is_a_one_line_error(tmp_path):
    path = tmp_path / "utf16.json"
    path.write_text(json.dumps(MINIMAL), encoding="utf-16")
    with pytest.raises(ConfigError, match=r"utf16.json: not UTF-8 text .*save it as UTF-8"):
        load_config(path)
