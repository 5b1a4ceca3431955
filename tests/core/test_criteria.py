"""The block selection criteria on hand-made rows: argmax, ties, NaN, one kind, disagreeing kinds."""
import math

import pytest

from featurenorm.core.block_rows import BlockRow
from featurenorm.core.criteria import average_auroc_ranks, choose_block, criterion_values
from featurenorm.selection.evidence import selection_warnings


def rows_for(norm_ratios: list[float], aurocs: list[float]) -> list[BlockRow]:
    return [BlockRow.from_dict({"index": i, "name": f"block{i}", "shape": [4], "norm_ratio": r, "id_norm_mean": 1.0,
             "jigsaw_norm_mean": 1.0, "jigsaw_auroc": a}) for i, (r, a) in enumerate(zip(norm_ratios, aurocs))]


def test_choose_block_argmax_of_each_criterion():
    rows = rows_for([1.1, 1.9, 1.5, 1.9], [0.6, 0.7, 0.95, 0.8])
    assert choose_block(rows).name == "block1"  # first of the tied maxima
    assert choose_block(rows, "norm_ratio").name == "block1"
    assert choose_block(rows, "auroc").name == "block2"
    assert choose_block(rows_for([math.nan, 0.5], [0.5, 0.5])).name == "block1"
    with pytest.raises(ValueError, match="unknown block selection criterion 'ratio'"):
        choose_block(rows, "ratio")


def test_mean_rank_is_the_average_rank_over_kinds(kind_rows):
    rows = kind_rows({"jigsaw": [0.9, 0.8, 0.6], "noise": [0.5, 0.7, 0.6], "blur": [0.7, 0.9, 0.9]})
    # ranks (1 = best): jigsaw 1, 2, 3; noise 3, 1, 2; blur 3, 1.5, 1.5 -> means 7/3, 4.5/3, 6.5/3
    assert average_auroc_ranks(rows) == pytest.approx([7 / 3, 1.5, 6.5 / 3])
    assert choose_block(rows, "mean_rank").name == "block1"
    assert choose_block(rows, "auroc").name == "block0"  # the jigsaw alone
    with pytest.raises(ValueError, match="combines several pseudo-OOD kinds"):
        choose_block(kind_rows({"jigsaw": [0.9, 0.8]}), "mean_rank")


def test_mean_and_min_auroc_over_kinds_hand_numbers(kind_rows):
    # disagreeing kinds: the jigsaw prefers block0, noise block2, blur block1
    rows = kind_rows({"jigsaw": [0.9, 0.6, 0.5], "noise": [0.2, 0.7, 0.95], "blur": [0.7, 0.8, 0.6]})
    # means 1.8/3 = 0.6, 2.1/3 = 0.7, 2.05/3; minima 0.2, 0.6, 0.5
    assert criterion_values(rows, "mean_auroc") == pytest.approx([0.6, 0.7, 2.05 / 3])
    assert criterion_values(rows, "min_auroc") == pytest.approx([0.2, 0.6, 0.5])
    assert choose_block(rows, "mean_auroc").name == choose_block(rows, "min_auroc").name == "block1"


def test_mean_and_min_auroc_with_one_kind_ties_and_nan(kind_rows):
    one = kind_rows({"jigsaw": [0.55, 0.8, 0.7]})
    assert criterion_values(one, "mean_auroc") == criterion_values(one, "min_auroc") == pytest.approx([0.55, 0.8, 0.7])
    tied = kind_rows({"jigsaw": [0.6, 0.8, 0.8], "noise": [0.9, 0.7, 0.7]})
    assert choose_block(tied, "mean_auroc").name == "block0"  # 0.75, 0.75, 0.75: the first wins
    assert choose_block(tied, "min_auroc").name == "block1"  # 0.6, 0.7, 0.7
    nan = kind_rows({"jigsaw": [0.9, float("nan"), 0.6], "noise": [0.9, 1.0, 0.7]})
    values = criterion_values(nan, "mean_auroc")
    assert values[0] == pytest.approx(0.9) and math.isnan(values[1]) and values[2] == pytest.approx(0.65)
    assert choose_block(nan, "min_auroc").name == "block0"  # block1's NaN never wins
    notes = selection_warnings(kind_rows({"jigsaw": [0.5, 0.55], "noise": [0.52, 0.58]}), "mean_auroc")
    assert len(notes) == 1 and "jigsaw 0.55, noise 0.58" in notes[0]  # it reads every kind
