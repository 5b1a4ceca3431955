"""The wheel works without the source tree: import, console scripts, package data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("featurenorm-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import featurenorm, featurenorm.reporting.paper as p; print(featurenorm.__file__); "
            "print(p.load_paper_results()['selected_blocks']['resnet18']['block']); "
            "print(sorted(featurenorm.__all__)[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                         check=True).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1] == "layer4.0"
    assert out[2] == "['BlockRow', 'BlockSelection', 'Config']"
    for script, flag in (("featurenorm-train", "--resume"), ("featurenorm-select", "--num-samples"),
                         ("featurenorm-eval", "--all-blocks")):
        help_text = subprocess.run([sys.executable, str(site / "bin" / script), "--help"], capture_output=True,
                                   text=True, cwd=elsewhere, env=env, check=True).stdout
        assert flag in help_text
    # a config mistake through a console script is the same one-line error as through the repo's script
    bad = subprocess.run([sys.executable, str(site / "bin" / "featurenorm-train"), "--config", "missing.json"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert bad.returncode == 2 and bad.stderr == ("error: config file 'missing.json' not found; pass an existing "
                                                  "file, e.g. --config conf/digits.json\n")


def test_console_scripts_take_exactly_the_flags_of_the_repository_scripts():
    for script, console in (("train.py", "train_main"), ("select_block.py", "select_main"),
                            ("eval_ood.py", "eval_main")):
        via_repo = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=REPO,
                                  check=True).stdout
        via_module = subprocess.run([sys.executable, "-c", f"import sys; from featurenorm.cli import {console}; "
                                     f"sys.argv[0] = '{script}'; {console}(['--help'])"], capture_output=True,
                                    text=True, cwd=REPO).stdout
        assert via_repo == via_module and "--config" in via_repo


def test_scripts_do_not_insert_paths():
    for path in list((REPO / "scripts").glob("*.py")) + [REPO / "train.py", REPO / "select_block.py",
                                                          REPO / "eval_ood.py"]:
        assert "sys.path.insert" not in path.read_text(), path
