"""The typed values of block selection keep the public JSON: ``block_selection.json`` rows and the selected block."""
import json
import math

import pytest

from featurenorm.core.block_rows import BlockRow, KindFigures, SelectedBlock
from featurenorm.core.criteria import CRITERIA, Criterion, register_criterion

# a row as select_block.py writes it: the jigsaw's figures at the top level, then every kind
ROW = {"index": 2, "name": "layer3.0", "shape": [256, 8, 8], "norm_ratio": 1.25, "id_norm_mean": 3.5,
       "jigsaw_norm_mean": 2.75, "jigsaw_auroc": 0.875,
       "pseudo_ood": {"jigsaw": {"norm_ratio": 1.25, "norm_mean": 2.75, "auroc": 0.875},
                      "blur": {"norm_ratio": 0.5, "norm_mean": 7.0, "auroc": 0.25}}}


def test_a_row_reads_and_writes_the_same_json():
    row = BlockRow.from_dict(json.loads(json.dumps(ROW)))
    assert row.kinds["blur"] == KindFigures(norm_ratio=0.5, norm_mean=7.0, auroc=0.25)
    assert row.norm_ratio == 1.25 and row.shape == (256, 8, 8)
    assert json.dumps(row.to_dict()) == json.dumps(ROW)  # same keys, same order, same values


def test_an_old_row_holds_the_jigsaw_only_and_a_row_without_it_has_no_norm_ratio():
    old = BlockRow.from_dict({key: ROW[key] for key in ROW if key != "pseudo_ood"})
    assert list(old.kinds) == ["jigsaw"] and old.kinds["jigsaw"] == KindFigures(1.25, 2.75, 0.875)
    blur_only = BlockRow(0, "a", (4,), 1.0, {"blur": KindFigures(0.5, 7.0, 0.25)})
    assert math.isnan(blur_only.norm_ratio)
    assert "norm_ratio" not in blur_only.to_dict() and "jigsaw_auroc" not in blur_only.to_dict()


def test_the_selected_block_has_one_shape():
    assert SelectedBlock("layer3.0", 2).to_dict() == {"name": "layer3.0", "index": 2}
    chosen = SelectedBlock("fc", None, source="--block")
    assert chosen.to_dict() == {"name": "fc", "index": None, "source": "--block"}
    assert SelectedBlock.from_dict(chosen.to_dict()) == chosen
    assert BlockRow.from_dict(ROW).as_selected() == SelectedBlock("layer3.0", 2)


def test_a_criterion_name_is_held_by_one_entry():
    taken = CRITERIA["norm_ratio"]
    assert register_criterion(taken) is taken  # the same entry again: nothing happens
    with pytest.raises(ValueError, match="criterion name 'norm_ratio' is registered already"):
        register_criterion(Criterion("norm_ratio", "another rule", lambda rows: [0.0] * len(rows)))
    assert CRITERIA["norm_ratio"] is taken
