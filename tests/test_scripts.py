"""The command-line scripts, run as subprocesses: summarize, compare_paper, download_data, reproduce."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
ALL_DATASETS = ["cifar10", "cifar100", "svhn", "textures", "lsun", "lsun-resize", "isun", "places365"]
DESTINATIONS = ["cifar10/cifar-10-batches-py", "cifar100/cifar-100-python", "svhn/test_32x32.mat", "dtd/images",
                "LSUN", "LSUN_resize", "iSUN", "places365/val_256"]


def run_python(script: str, *args: str) -> subprocess.CompletedProcess:
    # From another folder, so the scripts must find the package on their own.
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          cwd="/", timeout=60)


def run_bash(script: str, *args: str, env: dict | None = None, cwd: Path | str = "/") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=60)


def write_results(path: Path, arch: str = "resnet18", auroc_svhn: float = 0.90, fpr_svhn: float = 0.10) -> Path:
    results = {
        "id_dataset": "cifar10", "arch": arch, "id_accuracy": 0.95,
        "block": {"name": "layer4.0", "index": 6, "source": "block_selection.json"},
        "methods": {"featurenorm": {
            "svhn": {"fpr95": fpr_svhn, "auroc": auroc_svhn, "aupr_in": 0.5, "aupr_out": 0.5, "num_ood": 10},
            "textures": {"fpr95": 0.30, "auroc": 0.93, "aupr_in": 0.5, "aupr_out": 0.5, "num_ood": 10},
            "average": {"fpr95": 0.2, "auroc": 0.9}}},
    }
    path.write_text(json.dumps(results))
    return path


# --- summarize.py

def test_summarize_md_and_csv(tmp_path):
    files = [str(write_results(tmp_path / f"r{i}.json", auroc_svhn=a)) for i, a in enumerate([0.90, 0.92, 0.94])]
    md = run_python("summarize.py", *files)
    assert md.returncode == 0, md.stderr
    assert md.stderr == ""
    assert "| featurenorm | 3 | 10.00 ± 0.00 | 92.00 ± 2.00 | 30.00 ± 0.00 | 93.00 ± 0.00 |" in md.stdout
    out = run_python("summarize.py", *files, "--format", "csv")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert (values["n"], values["svhn_auroc_mean"], values["svhn_auroc_std"]) == ("3", "92.0000", "2.0000")


def test_summarize_warns_when_arch_differs(tmp_path):
    a = write_results(tmp_path / "a.json")
    b = write_results(tmp_path / "b.json", arch="vgg11", auroc_svhn=0.94)
    out = run_python("summarize.py", str(a), str(b))
    assert out.returncode == 0
    assert out.stderr.startswith("warning: runs differ in arch")
    assert "vgg11" in out.stderr
    assert "| featurenorm | 2 | 10.00 ± 0.00 | 92.00 ± 2.83 |" in out.stdout


def test_summarize_missing_file_is_one_line_exit_2(tmp_path):
    out = run_python("summarize.py", str(write_results(tmp_path / "a.json")), str(tmp_path / "nope.json"))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: results file ") and "nope.json not found" in out.stderr


# --- compare_paper.py

def test_compare_paper_prints_differences_and_block(tmp_path):
    out = run_python("compare_paper.py", str(write_results(tmp_path / "r.json")))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    svhn = next(line.split() for line in lines if line.startswith("featurenorm") and " svhn " in line)
    assert svhn == ["featurenorm", "svhn", "10.00", "7.13", "+2.87", "90.00", "98.65", "-8.65"]
    average = next(line.split() for line in lines if line.startswith("featurenorm") and " average " in line)
    # ours (10 + 30) / 2 = 20; paper re-averaged over svhn, textures: (7.13 + 31.18) / 2 = 19.155
    assert average[:3] == ["featurenorm", "average", "20.00"]
    assert lines[-1] == "selected block: ours layer4.0 (index 6); paper index 6 of 8 (layer4.0): same block"
    assert "not evaluated (methods): msp, odin, energy, energy_react, energy_dice" in lines
    assert "not evaluated (featurenorm OOD sets): lsun, lsun-resize, isun, places365" in lines
    md = run_python("compare_paper.py", str(tmp_path / "r.json"), "--format", "md", "--arch", "wrn28_10")
    assert "| featurenorm | svhn | 10.00 | 3.83 | +6.17 | 90.00 | 99.18 | -9.18 |" in md.stdout


def test_compare_paper_unknown_arch(tmp_path):
    out = run_python("compare_paper.py", str(write_results(tmp_path / "r.json", arch="resnet50")))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "no numbers for arch 'resnet50'" in out.stderr
    assert "resnet18, wrn28_10, vgg11" in out.stderr


# --- download_data.sh

def test_download_dry_run_lists_all_datasets(tmp_path):
    out = run_bash("download_data.sh", str(tmp_path / "data"), "--dry-run")
    assert out.returncode == 0, out.stderr
    for name in ALL_DATASETS:
        assert f"would fetch {name}: " in out.stdout
    assert "cifar-10-python.tar.gz" in out.stdout and "val_256.tar" in out.stdout
    assert not (tmp_path / "data").exists()


OFFLINE = {"FEATURENORM_DATA_MIRROR": "http://127.0.0.1:9", "FEATURENORM_DATA_TIMEOUT": "2",
           "FEATURENORM_DATA_RETRIES": "0"}


def test_download_offline_lists_every_missing_dataset(tmp_path):
    dest = tmp_path / "data"
    start = time.monotonic()
    out = run_bash("download_data.sh", str(dest), env=OFFLINE)
    assert time.monotonic() - start < 15
    assert out.returncode == 1
    assert f"error: 8 dataset(s) missing: {' '.join(ALL_DATASETS)}" in out.stderr
    hints = [line.strip() for line in out.stderr.splitlines() if line.startswith("  ")]
    assert len(hints) == 8
    for name, destination, hint in zip(ALL_DATASETS, DESTINATIONS, hints):
        assert hint.startswith(f"{name}: download http")  # the public URL, not the mirror
        assert f"{dest}/{destination}" in hint
    # Nothing half-written is left behind.
    assert sorted(p.name for p in dest.iterdir()) == []


def test_download_skips_present_dataset(tmp_path):
    dest = tmp_path / "data"
    (dest / "LSUN" / "test").mkdir(parents=True)
    (dest / "LSUN" / "test" / "a.jpg").write_bytes(b"jpg")
    out = run_bash("download_data.sh", str(dest), "--only", "lsun,isun", env=OFFLINE)
    assert out.returncode == 1
    assert f"skip lsun: already present at {dest}/LSUN" in out.stdout
    assert "error: 1 dataset(s) missing: isun" in out.stderr


def make_tar(path: Path, members: dict[str, bytes], gzip: bool) -> None:
    src = path.parent / "src"
    for name, data in members.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with tarfile.open(path, "w:gz" if gzip else "w") as tar:
        for top in {name.split("/")[0] for name in members}:
            tar.add(src / top, arcname=top)


def test_download_from_mirror_installs_layout(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_tar(mirror / "LSUN.tar.gz", {"LSUN/test/a.jpg": b"a"}, gzip=True)
    make_tar(mirror / "val_256.tar", {"val_256/b.jpg": b"b"}, gzip=False)
    (mirror / "test_32x32.mat").write_bytes(b"mat")
    dest = tmp_path / "data"
    env = {"FEATURENORM_DATA_MIRROR": f"file://{mirror}", "FEATURENORM_DATA_NO_MD5": "1"}
    out = run_bash("download_data.sh", str(dest), "--only", "lsun,places365,svhn", env=env)
    assert out.returncode == 0, out.stderr
    assert (dest / "LSUN" / "test" / "a.jpg").read_bytes() == b"a"
    assert (dest / "places365" / "val_256" / "b.jpg").read_bytes() == b"b"
    assert (dest / "svhn" / "test_32x32.mat").read_bytes() == b"mat"
    assert sorted(p.name for p in dest.iterdir()) == ["LSUN", "places365", "svhn"]  # archives removed
    # Without NO_MD5 the fake archive fails its checksum and is kept aside.
    out = run_bash("download_data.sh", str(tmp_path / "data2"), "--only", "lsun",
                   env={"FEATURENORM_DATA_MIRROR": f"file://{mirror}"})
    assert out.returncode == 1
    assert "md5 mismatch" in out.stdout
    assert (tmp_path / "data2" / ".downloads" / "LSUN.tar.gz.bad").exists()
    assert not (tmp_path / "data2" / "LSUN").exists()


def test_download_bad_usage_exits_2(tmp_path):
    assert run_bash("download_data.sh", "--only", "mnist").returncode == 2
    assert run_bash("download_data.sh", "--frobnicate").returncode == 2
    help_out = run_bash("download_data.sh", "--help")
    assert help_out.returncode == 0 and "FEATURENORM_DATA_TIMEOUT" in help_out.stdout


# --- reproduce_cifar10.sh

def test_reproduce_dry_run_prints_the_chain():
    out = run_bash("reproduce_cifar10.sh", "wrn28_10", "3", "--dry-run")
    assert out.returncode == 0, out.stderr
    py = ".venv/bin/python" if (REPO / ".venv/bin/python").exists() else "python"
    conf, run = "conf/cifar10_wrn28_10.json", "runs/cifar10_wrn28_10_seed3"
    assert out.stdout.splitlines() == [
        f"+ {py} train.py --config {conf} --set seed=3 --set save_path={run}",
        f"+ {py} select_block.py --config {conf} --set save_path={run} --set seed=3",
        f"+ {py} eval_ood.py --config {conf} --set save_path={run} --methods all --all-blocks",
        f"+ {py} scripts/compare_paper.py {run}/ood_results.json",
    ]
    default_seed = run_bash("reproduce_cifar10.sh", "--dry-run", "resnet18")
    assert "--set save_path=runs/cifar10_resnet18_seed0" in default_seed.stdout.splitlines()[0]


@pytest.mark.parametrize("args", [("resnet50",), ("vgg11", "x"), ()])
def test_reproduce_bad_arguments_exit_2(args):
    out = run_bash("reproduce_cifar10.sh", *args, "--dry-run")
    assert out.returncode == 2
    assert out.stdout == ""
    assert "resnet18" in out.stderr or "SEED" in out.stderr


def test_reproduce_unknown_arch_lists_the_three():
    out = run_bash("reproduce_cifar10.sh", "resnet50")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown arch 'resnet50'; the paper's CIFAR-10 archs are: resnet18 wrn28_10 vgg11"


# --- OpenOOD v1.5: download_data.sh --only openood, reproduce_openood.sh

OPENOOD_PARTS = ["openood-imglist", "openood-cifar10", "openood-cifar100", "openood-tin", "openood-mnist",
                 "openood-svhn", "openood-texture", "openood-places365", "openood-checkpoints"]
OPENOOD_CKPT = "cifar10_resnet18_32x32_base_e100_lr0.1_default"


def test_download_openood_without_mirror_says_what_to_fetch_and_where(tmp_path):
    dest = tmp_path / "data"
    (dest / "openood" / "images_classic" / "mnist").mkdir(parents=True)
    (dest / "openood" / "images_classic" / "mnist" / "a.png").write_bytes(b"png")
    out = run_bash("download_data.sh", str(dest), "--only", "openood")  # Google Drive: nothing is fetched
    assert out.returncode == 1
    assert f"skip openood-mnist: already present at {dest}/openood/images_classic/mnist" in out.stdout
    missing = [p for p in OPENOOD_PARTS if p != "openood-mnist"]
    assert f"error: 8 dataset(s) missing: {' '.join(missing)}" in out.stderr
    assert (f"--contents datasets checkpoints --datasets cifar-10 --checkpoints cifar10_res18_v1.5 "
            f"--save_dir {dest}/openood {dest}/openood/results") in out.stderr
    hints = {line.split(":")[0].strip(): line for line in out.stderr.splitlines() if line.startswith("  openood-")}
    assert ("https://drive.google.com/uc?export=download&id=1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1 as benchmark_imglist.zip"
            in hints["openood-imglist"])
    assert f"so that {dest}/openood/benchmark_imglist/cifar10/test_cifar10.txt exists" in hints["openood-imglist"]
    assert f"so that {dest}/openood/results/{OPENOOD_CKPT}/s0/best.ckpt exists" in hints["openood-checkpoints"]
    assert sorted(p.name for p in dest.iterdir()) == ["openood"]  # nothing half-written
    dry = run_bash("download_data.sh", str(dest), "--only", "openood-tin", "--dry-run")
    assert dry.returncode == 0 and "would need openood-tin by hand: " in dry.stdout


def make_zip(path: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_download_openood_from_mirror_installs_layout(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_zip(mirror / "benchmark_imglist.zip",
             {"benchmark_imglist/cifar10/test_cifar10.txt": b"cifar10/test/a.png 0\n"})
    make_zip(mirror / "texture.zip", {"test/b.png": b"b"})  # no top-level folder: the content is the set
    make_zip(mirror / "cifar10_res18_v1.5.zip", {f"{OPENOOD_CKPT}/s0/best.ckpt": b"ckpt"})
    dest = tmp_path / "data"
    out = run_bash("download_data.sh", str(dest), "--only", "openood-imglist,openood-texture,openood-checkpoints",
                   env={"FEATURENORM_DATA_MIRROR": f"file://{mirror}"})
    assert out.returncode == 0, out.stderr
    root = dest / "openood"
    assert (root / "benchmark_imglist" / "cifar10" / "test_cifar10.txt").read_text() == "cifar10/test/a.png 0\n"
    assert (root / "images_classic" / "texture" / "test" / "b.png").read_bytes() == b"b"
    assert (root / "results" / OPENOOD_CKPT / "s0" / "best.ckpt").read_bytes() == b"ckpt"
    assert sorted(p.name for p in dest.iterdir()) == ["openood"]  # archives and scratch folders removed


def test_reproduce_openood_dry_run_prints_the_chain():
    out = run_bash("reproduce_openood.sh", "--dry-run")
    assert out.returncode == 0, out.stderr
    py = ".venv/bin/python" if (REPO / ".venv/bin/python").exists() else "python"
    expected = []
    for seed in (0, 1, 2):
        common = (f"--config conf/openood_cifar10.json --checkpoint ./data/openood/results/{OPENOOD_CKPT}/s{seed}/"
                  f"best.ckpt --set openood_root=./data/openood --set save_path=runs/openood_cifar10/s{seed}")
        expected += [f"+ {py} select_block.py {common}",
                     f"+ {py} eval_ood.py {common} --benchmark openood_v1.5 --methods all"]
    results = " ".join(f"runs/openood_cifar10/s{seed}/ood_results.json" for seed in (0, 1, 2))
    expected.append(f"+ {py} scripts/compare_openood.py {results}")
    assert out.stdout.splitlines() == expected


def test_reproduce_openood_without_data_says_what_to_download(tmp_path):
    out = run_bash("reproduce_openood.sh", str(tmp_path / "data"))
    assert out.returncode == 1
    assert out.stdout == ""  # no command ran
    assert out.stderr.startswith(f"error: OpenOOD's data is incomplete under {tmp_path}/data/openood; missing: ")
    assert f"{tmp_path}/data/openood/results/{OPENOOD_CKPT}/s2/best.ckpt" in out.stderr
    assert "openood-checkpoints: download https://drive.google.com/" in out.stderr
    assert run_bash("reproduce_openood.sh", "a", "b").returncode == 2


def test_the_study_variant_called_norm_profile_is_the_library_method():
    import importlib.util

    import numpy as np
    import torch

    from featurenorm.methods import Outputs
    from featurenorm.methods.norm_profile import NormProfile

    spec = importlib.util.spec_from_file_location("profile_variants", REPO / "scripts" / "profile_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    rng = np.random.default_rng(0)
    train, queries = np.exp(rng.normal(size=(50, 3))), np.exp(rng.normal(size=(7, 3)) * 2)
    method = NormProfile()
    method.fit(torch.tensor(train), torch.zeros(50, dtype=torch.long), None)
    expected = method.score(Outputs(block_norms=torch.tensor(queries)), None).numpy()
    got = variants.VARIANTS["log norms, full covariance (norm_profile)"](train)(queries)
    assert got == pytest.approx(expected, rel=1e-9)
    # the one-sided mean z-score by hand: block means/stds of the log norms
    logs = np.log(train)
    z = (np.log(queries) - logs.mean(0)) / (logs.std(0) + 1e-12)
    assert variants.VARIANTS["mean z-score of the log norms (one-sided)"](train)(queries) == pytest.approx(z.mean(1))
