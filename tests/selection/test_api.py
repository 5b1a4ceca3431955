import math

import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from featurenorm.selection.collect import BlockNorms, collect_block_norms
from featurenorm.selection.jigsaw import jigsaw
from featurenorm.core.tap import block_feature_norms
from featurenorm.models import build_model
from featurenorm.selection.pseudo_ood import kind_generator, make_pseudo_ood
from featurenorm.core.metrics import auroc as _auroc  # the one AUROC, also behind every block row
from featurenorm.reporting.tables import format_block_table
from featurenorm.selection.criteria import average_auroc_ranks, choose_block, criterion_values, selection_warnings
from featurenorm.selection.api import select_block
from featurenorm.selection.ratios import norm_ratio, summarize_blocks


def test_norm_ratio_hand_numbers():
    ratio = norm_ratio(torch.tensor([2.0, 3.0, 1.0]), torch.tensor([1.0, 6.0, 4.0]))
    assert ratio == pytest.approx((2.0 + 0.5 + 0.25) / 3, rel=1e-12)


def test_norm_ratio_pairs_each_image_with_its_own_puzzle():
    # mean of ratios, not ratio of means: (4/1 + 1/4) / 2 = 2.125, whereas 5/5 = 1
    assert norm_ratio(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0])) == pytest.approx(2.125)


def test_norm_ratio_guards_silent_puzzle():
    assert norm_ratio(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])) == pytest.approx(0.5e12)
    with pytest.raises(ValueError, match="pairing each image"):
        norm_ratio(torch.tensor([1.0, 2.0]), torch.tensor([1.0]))


def test_auroc_hand_numbers_and_sklearn_with_ties():
    # pairs: 3>1, 3>2, 2>1, 2=2 (half) -> 3.5 / 4
    assert _auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    generator = torch.Generator().manual_seed(0)
    positive = torch.randint(0, 6, (40,), generator=generator).float()
    negative = torch.randint(0, 5, (30,), generator=generator).float()
    labels = [1] * 40 + [0] * 30
    expected = roc_auc_score(labels, torch.cat([positive, negative]).numpy())
    assert _auroc(positive, negative) == pytest.approx(expected, rel=1e-12)


def hand_norms() -> BlockNorms:
    return BlockNorms(
        id={"a": torch.tensor([2.0, 4.0]), "b": torch.tensor([3.0, 1.0])},
        pseudo={"jigsaw": {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([1.0, 2.0])}},
        shapes={"a": (8, 4, 4), "b": (16, 2, 2)},
    )


def test_summarize_blocks_rows():
    rows = summarize_blocks(hand_norms(), ["a", "b"])
    assert rows[0] == {"index": 0, "name": "a", "shape": [8, 4, 4], "norm_ratio": pytest.approx(1.5),
                       "id_norm_mean": pytest.approx(3.0), "jigsaw_norm_mean": pytest.approx(2.5),
                       # pairs (id, jig): 2>1, 2<4, 4>1, 4=4 -> 2.5 / 4
                       "jigsaw_auroc": pytest.approx(0.625),
                       "pseudo_ood": {"jigsaw": {"norm_ratio": pytest.approx(1.5), "norm_mean": pytest.approx(2.5),
                                                 "auroc": pytest.approx(0.625)}}}
    assert rows[1]["norm_ratio"] == pytest.approx(1.75)  # (3/1 + 1/2) / 2
    assert rows[1]["jigsaw_auroc"] == pytest.approx(0.625)  # 3>1, 3>2, 1=1, 1<2 -> 2.5 / 4
    with pytest.raises(ValueError, match="block 'c'"):
        summarize_blocks(hand_norms(), ["c"])


def rows_for(norm_ratios: list[float], aurocs: list[float]) -> list[dict]:
    return [{"index": i, "name": f"block{i}", "shape": [4], "norm_ratio": r, "id_norm_mean": 1.0,
             "jigsaw_norm_mean": 1.0, "jigsaw_auroc": a} for i, (r, a) in enumerate(zip(norm_ratios, aurocs))]


def test_choose_block_argmax_of_each_criterion():
    rows = rows_for([1.1, 1.9, 1.5, 1.9], [0.6, 0.7, 0.95, 0.8])
    assert choose_block(rows) == {"index": 1, "name": "block1"}  # first of the tied maxima
    assert choose_block(rows, "norm_ratio") == {"index": 1, "name": "block1"}
    assert choose_block(rows, "auroc") == {"index": 2, "name": "block2"}
    assert choose_block(rows_for([math.nan, 0.5], [0.5, 0.5])) == {"index": 1, "name": "block1"}
    with pytest.raises(ValueError, match="unknown block selection criterion 'ratio'"):
        choose_block(rows, "ratio")


def test_format_block_table_marks_selected_row():
    rows = summarize_blocks(hand_norms(), ["a", "b"])
    table = format_block_table(rows, {"index": 1, "name": "b"})
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["index", "block", "shape", "id", "norm", "jigsaw", "norm", "NormRatio", "AUROC"]
    assert lines[2].split() == ["0", "a", "8x4x4", "3.0000", "2.5000", "1.5000", "0.6250"]
    assert lines[3].split() == ["*", "1", "b", "16x2x2", "2.0000", "1.5000", "1.7500", "0.6250"]
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width


@pytest.fixture(scope="module")
def tiny_model_and_batches():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, 32, 32, generator=generator) for _ in range(2)]
    return model, batches


BLOCKS = ["layer1.1", "layer2.0", "layer3.1"]


def test_collect_block_norms_reproducible_and_equal_to_direct_norms(tiny_model_and_batches):
    model, batches = tiny_model_and_batches
    first = collect_block_norms(model, batches, BLOCKS, generator=torch.Generator().manual_seed(5), progress=False)
    again = collect_block_norms(model, batches, BLOCKS, generator=torch.Generator().manual_seed(5), progress=False)
    for name in BLOCKS:
        assert torch.equal(first.id[name], again.id[name]) and torch.equal(first.jigsaw[name], again.jigsaw[name])
    assert first.shapes == {"layer1.1": (8, 32, 32), "layer2.0": (16, 16, 16), "layer3.1": (32, 8, 8)}

    images = torch.cat(batches)
    generator = torch.Generator().manual_seed(5)  # the same puzzles, drawn in the same order
    puzzles = torch.cat([jigsaw(batch, 3, generator) for batch in batches])
    direct_id = block_feature_norms(model, images, BLOCKS)
    direct_jigsaw = block_feature_norms(model, puzzles, BLOCKS)
    for name in BLOCKS:
        assert first.id[name].shape == (8,) and first.id[name].device.type == "cpu"
        torch.testing.assert_close(first.id[name], direct_id[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(first.jigsaw[name], direct_jigsaw[name], rtol=1e-5, atol=1e-6)


def test_collect_block_norms_uses_eval_mode_and_restores_training(tiny_model_and_batches):
    model, batches = tiny_model_and_batches
    model.train()
    try:
        labelled = [(batch, torch.zeros(4, dtype=torch.long)) for batch in batches]  # DataLoader-style tuples
        in_train = collect_block_norms(model, labelled, BLOCKS, generator=torch.Generator().manual_seed(5),
                                       progress=False)
        assert model.training
    finally:
        model.eval()
    in_eval = collect_block_norms(model, batches, BLOCKS, generator=torch.Generator().manual_seed(5), progress=False)
    for name in BLOCKS:
        assert torch.equal(in_train.id[name], in_eval.id[name])


def test_collect_block_norms_without_images_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with pytest.raises(ValueError, match="no images"):
        collect_block_norms(model, [], ["1"], progress=False)


# ------------------------------------------------------------------------------ several pseudo-OOD kinds
def kind_rows(aurocs: dict[str, list[float]], ratios: list[float] | None = None) -> list[dict]:
    """Block rows holding each kind's AUROC per block (NormRatio 1 unless given for the jigsaw)."""
    count = len(next(iter(aurocs.values())))
    ratios = ratios or [1.0] * count
    return [{"index": i, "name": f"block{i}", "shape": [4], "norm_ratio": ratios[i], "id_norm_mean": 1.0,
             "jigsaw_norm_mean": 1.0, "jigsaw_auroc": aurocs["jigsaw"][i],
             "pseudo_ood": {kind: {"norm_ratio": ratios[i] if kind == "jigsaw" else 1.0, "norm_mean": 1.0,
                                   "auroc": values[i]} for kind, values in aurocs.items()}} for i in range(count)]


def test_summarize_blocks_gives_every_kind_its_norm_ratio_and_auroc():
    norms = hand_norms()
    norms.pseudo["blur"] = {"a": torch.tensor([4.0, 2.0]), "b": torch.tensor([0.5, 0.5])}
    rows = summarize_blocks(norms, ["a", "b"])
    # a: ratios 2/4, 4/2 -> 1.25; pairs (id, blur): 2<4, 2=2, 4=4, 4>2 -> (0 + .5 + .5 + 1) / 4 = 0.5
    assert rows[0]["pseudo_ood"]["blur"] == {"norm_ratio": pytest.approx(1.25), "norm_mean": pytest.approx(3.0),
                                             "auroc": pytest.approx(0.5)}
    # b: ratios 3/0.5, 1/0.5 -> 4; every ID norm above every blurred one -> 1
    assert rows[1]["pseudo_ood"]["blur"] == {"norm_ratio": pytest.approx(4.0), "norm_mean": pytest.approx(0.5),
                                             "auroc": pytest.approx(1.0)}
    assert rows[1]["norm_ratio"] == pytest.approx(1.75)  # the jigsaw's, at the top level as before


def test_mean_rank_is_the_average_rank_over_kinds():
    rows = kind_rows({"jigsaw": [0.9, 0.8, 0.6], "noise": [0.5, 0.7, 0.6], "blur": [0.7, 0.9, 0.9]})
    # ranks (1 = best): jigsaw 1, 2, 3; noise 3, 1, 2; blur 3, 1.5, 1.5 -> means 7/3, 4.5/3, 6.5/3
    assert average_auroc_ranks(rows) == pytest.approx([7 / 3, 1.5, 6.5 / 3])
    assert choose_block(rows, "mean_rank") == {"index": 1, "name": "block1"}
    assert choose_block(rows, "auroc") == {"index": 0, "name": "block0"}  # the jigsaw alone
    with pytest.raises(ValueError, match="combines several pseudo-OOD kinds"):
        choose_block(kind_rows({"jigsaw": [0.9, 0.8]}), "mean_rank")


def test_mean_and_min_auroc_over_kinds_hand_numbers():
    # disagreeing kinds: the jigsaw prefers block0, noise block2, blur block1
    rows = kind_rows({"jigsaw": [0.9, 0.6, 0.5], "noise": [0.2, 0.7, 0.95], "blur": [0.7, 0.8, 0.6]})
    # means 1.8/3 = 0.6, 2.1/3 = 0.7, 2.05/3; minima 0.2, 0.6, 0.5
    assert criterion_values(rows, "mean_auroc") == pytest.approx([0.6, 0.7, 2.05 / 3])
    assert criterion_values(rows, "min_auroc") == pytest.approx([0.2, 0.6, 0.5])
    assert choose_block(rows, "mean_auroc") == choose_block(rows, "min_auroc") == {"index": 1, "name": "block1"}


def test_mean_and_min_auroc_with_one_kind_ties_and_nan():
    one = kind_rows({"jigsaw": [0.55, 0.8, 0.7]})
    assert criterion_values(one, "mean_auroc") == criterion_values(one, "min_auroc") == pytest.approx([0.55, 0.8, 0.7])
    tied = kind_rows({"jigsaw": [0.6, 0.8, 0.8], "noise": [0.9, 0.7, 0.7]})
    assert choose_block(tied, "mean_auroc") == {"index": 0, "name": "block0"}  # 0.75, 0.75, 0.75: the first wins
    assert choose_block(tied, "min_auroc") == {"index": 1, "name": "block1"}  # 0.6, 0.7, 0.7
    nan = kind_rows({"jigsaw": [0.9, float("nan"), 0.6], "noise": [0.9, 1.0, 0.7]})
    values = criterion_values(nan, "mean_auroc")
    assert values[0] == pytest.approx(0.9) and math.isnan(values[1]) and values[2] == pytest.approx(0.65)
    assert choose_block(nan, "min_auroc") == {"index": 0, "name": "block0"}  # block1's NaN never wins
    notes = selection_warnings(kind_rows({"jigsaw": [0.5, 0.55], "noise": [0.52, 0.58]}), "mean_auroc")
    assert len(notes) == 1 and "jigsaw 0.55, noise 0.58" in notes[0]  # it reads every kind


def test_weak_evidence_and_disagreement_warnings():
    weak = kind_rows({"jigsaw": [0.49, 0.52, 0.51]})
    notes = selection_warnings(weak, "norm_ratio")
    assert len(notes) == 1 and "weakly supported" in notes[0] and "jigsaw 0.52 (at most 0.60)" in notes[0]
    assert selection_warnings(kind_rows({"jigsaw": [0.49, 0.61, 0.51]}), "norm_ratio") == []
    several = kind_rows({"jigsaw": [0.55, 0.52, 0.51], "noise": [0.7, 0.9, 0.6]})
    notes = selection_warnings(several, "norm_ratio")  # weak for the jigsaw, which norm_ratio reads
    assert "jigsaw 0.55" in notes[0]
    assert notes[1] == ("the pseudo-OOD kinds disagree on the best block (by AUROC): jigsaw block0 (0.55), "
                        "noise block1 (0.90)")
    assert len(notes) == 2  # noise ranks the chosen block0 2nd of 3: not the bottom half
    assert selection_warnings(several, "mean_rank") == [notes[1]]  # noise separates well: not weak
    assert "\n" not in "".join(notes)


def test_strong_disagreement_names_the_kinds_that_rank_the_chosen_block_low():
    rows = kind_rows({"jigsaw": [0.9, 0.6, 0.5, 0.4], "noise": [0.3, 0.5, 0.8, 0.9], "blur": [0.8, 0.9, 0.7, 0.6]},
                     ratios=[2.0, 1.0, 1.0, 1.0])
    notes = selection_warnings(rows, "norm_ratio")  # picks block0
    assert notes[0] == ("the pseudo-OOD kinds disagree on the best block (by AUROC): jigsaw block0 (0.90), "
                        "noise block3 (0.90), blur block1 (0.90)")
    # noise: 0.3 at block0, below all three others -> rank 4 of 4; blur: 0.8, only 0.9 above -> rank 2: not named
    assert notes[1].startswith("strong disagreement: the chosen block block0 ranks in the bottom half for noise "
                               "(AUROC 0.30, rank 4 of 4; best block3 0.90);")
    assert "blur" not in notes[1]
    # min_auroc picks block1 (minima 0.3, 0.5, 0.5, 0.4): noise ranks it 3rd of 4, the jigsaw 2nd
    strong = selection_warnings(rows, "min_auroc")[1]
    assert "block1 ranks in the bottom half for noise (AUROC 0.50, rank 3 of 4;" in strong and "jigsaw" not in strong


def test_format_block_table_adds_a_per_kind_table():
    rows = kind_rows({"jigsaw": [0.9, 0.8], "noise": [0.5, 0.75]}, ratios=[1.5, 1.25])
    lines = format_block_table(rows, {"index": 1, "name": "block1"}).splitlines()
    assert lines[5] == "per pseudo-OOD kind: NormRatio / AUROC of ID vs. that kind; mean rank by AUROC over the kinds"
    assert lines[6].split() == ["index", "block", "jigsaw", "noise", "mean", "rank"]
    assert lines[8].split() == ["0", "block0", "1.500", "/", "0.900", "1.000", "/", "0.500", "1.50"]
    assert lines[9].split() == ["*", "1", "block1", "1.250", "/", "0.800", "1.000", "/", "0.750", "1.50"]


def test_collect_block_norms_measures_each_kind_like_a_direct_computation(tiny_model_and_batches):
    model, batches = tiny_model_and_batches
    kinds = ["jigsaw", "noise", "mixup"]
    norms = collect_block_norms(model, batches, BLOCKS, generator=torch.Generator().manual_seed(5), progress=False,
                                kinds=kinds, mean=[0.5] * 3, std=[0.25] * 3)
    alone = collect_block_norms(model, batches, BLOCKS, generator=torch.Generator().manual_seed(5), progress=False)
    assert list(norms.pseudo) == kinds
    generators = {kind: kind_generator(5, kind, "cpu") for kind in ("noise", "mixup")}
    for kind, generator in generators.items():
        made = torch.cat([make_pseudo_ood(kind, batch, generator, mean=[0.5] * 3, std=[0.25] * 3)
                          for batch in batches])
        direct = block_feature_norms(model, made, BLOCKS)
        for name in BLOCKS:
            torch.testing.assert_close(norms.pseudo[kind][name], direct[name], rtol=1e-5, atol=1e-6)
    for name in BLOCKS:  # adding kinds leaves the jigsaw's puzzles and the ID norms as they were
        torch.testing.assert_close(norms.jigsaw[name], alone.jigsaw[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norms.id[name], alone.id[name], rtol=1e-5, atol=1e-6)


def test_select_block_warns_when_no_block_tells_puzzles_apart():
    # every image gets the same FeatureNorm (a constant feature map): AUROC 0.5 everywhere
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    nn.init.zeros_(model[0].weight)
    nn.init.ones_(model[0].bias)
    with pytest.warns(UserWarning, match=r"weakly supported: .* jigsaw 0\.50 \(at most 0\.60\)"):
        selection = select_block(model, [torch.rand(6, 3, 8, 8)], ["0", "1"])
    assert [row["jigsaw_auroc"] for row in selection.rows] == [0.5, 0.5]
    with pytest.raises(ValueError, match="must include jigsaw"):
        select_block(model, [torch.rand(6, 3, 8, 8)], ["1"], pseudo_ood="noise,blur")
    with pytest.raises(ValueError, match="combines several pseudo-OOD kinds"):
        select_block(model, [torch.rand(6, 3, 8, 8)], ["1"], criterion="mean_rank")
