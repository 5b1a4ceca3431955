"""Edge cases found in review: file modes, foreign checkpoint bytes, block lists, argument ranges."""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import replace

import pytest

from featurenorm import files
from featurenorm.training.checkpoint import read_checkpoint
from featurenorm.errors import UserError


def test_atomic_outputs_get_ordinary_file_permissions(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("payload", [b"hello\n", b"\x80\x04K\x01.", b"PK\x03\x04garbage"])
def test_foreign_bytes_are_a_one_line_checkpoint_error(tmp_path, payload):
    path = tmp_path / "last.pt"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="last.pt"):
        read_checkpoint(path)


def test_all_blocks_and_block_follow_the_blocks_key(trained_digits_run, tmp_path, make_png_folder):
    from featurenorm.runs.evaluate import run_evaluation

    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "last.pt")
    make_png_folder(tmp_path / "ood", 6, size=(16, 16))
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path), blocks=["layer2.1", "layer3.1"])
    results = run_evaluation(cfg, methods="featurenorm", block="layer3.1", all_blocks=True,
                             ood_specs=[f"noise={tmp_path / 'ood'}"], progress=False).results
    assert list(results["per_block"]) == ["layer2.1", "layer3.1"]
    assert results["block"]["index"] == 1
    assert results["per_block"]["layer3.1"]["noise"] == {
        k: v for k, v in results["methods"]["featurenorm"]["noise"].items() if k != "num_ood"}


def test_num_samples_below_one_is_refused(trained_digits_run):
    from featurenorm.runs.select import run_selection

    for bad in (0, -5):
        with pytest.raises(UserError, match="--num-samples must be at least 1"):
            run_selection(trained_digits_run.cfg, num_samples=bad, progress=False)


def test_a_user_method_reading_block_norm_gets_the_block(monkeypatch):
    from featurenorm.methods.base import uses_block
    from featurenorm.methods import base

    class Scaled(base.Method):
        name = "scaled_norm"
        needs = frozenset({"block_norm"})

        def score(self, out, head):
            return 2 * out.block_norm

    monkeypatch.setitem(base.METHODS, "scaled_norm", Scaled)
    assert uses_block("scaled_norm") and uses_block("featurenorm") and uses_block("msp_blocknorm")
    assert not uses_block("msp") and not uses_block("knn")


def test_a_selection_made_for_another_checkpoint_warns(trained_digits_run, tmp_path, make_png_folder):
    from featurenorm.runs.evaluate import run_evaluation
    from featurenorm.runs.select import run_selection

    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "last.pt")
    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "other.pt")
    make_png_folder(tmp_path / "ood", 6, size=(16, 16))
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path))
    run_selection(cfg, num_samples=20, progress=False)
    specs = [f"noise={tmp_path / 'ood'}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_evaluation(cfg, methods="featurenorm", ood_specs=specs, progress=False)
        assert not [w for w in caught if "was made for checkpoint" in str(w.message)]
        run_evaluation(cfg, checkpoint=str(tmp_path / "other.pt"), methods="featurenorm", ood_specs=specs,
                       progress=False)
    assert [w for w in caught if "was made for checkpoint" in str(w.message)]


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(trained_digits_run, tmp_path):
    from featurenorm.training.checkpoint import save_checkpoint
    from featurenorm.training.loop import train

    state = read_checkpoint(trained_digits_run.save_path / "last.pt")
    state.update(epoch=3, finished=False)
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in state.items() if k != "format"})
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path), epochs=2, milestones=[1])
    with pytest.raises(UserError, match="at epoch 3, but epochs is 2"):
        train(cfg, resume=True, progress=False)
