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
    assert rows[0].to_dict() == {"index": 0, "name": "a", "shape": [8, 4, 4], "norm_ratio": pytest.approx(1.5),
                       "id_norm_mean": pytest.approx(3.0), "jigsaw_norm_mean": pytest.approx(2.5),
                       # pairs (id, jig): 2>1, 2<4, 4>1, 4=4 -> 2.5 / 4
                       "jigsaw_auroc": pytest.approx(0.625),
                       "pseudo_ood": {"jigsaw": {"norm_ratio": pytest.approx(1.5), "norm_mean": pytest.approx(2.5),
                                                 "auroc": pytest.approx(0.625)}}}
    assert rows[1].norm_ratio == pytest.approx(1.75)  # (3/1 + 1/2) / 2
    assert rows[1].kinds["jigsaw"].auroc == pytest.approx(0.625)  # 3>1, 3>2, 1=1, 1<2 -> 2.5 / 4
    with pytest.raises(ValueError, match="block 'c'"):
        summarize_blocks(hand_norms(), ["c"])


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
def test_summarize_blocks_gives_every_kind_its_norm_ratio_and_auroc():
    norms = hand_norms()
    norms.pseudo["blur"] = {"a": torch.tensor([4.0, 2.0]), "b": torch.tensor([0.5, 0.5])}
    rows = summarize_blocks(norms, ["a", "b"])
    # a: ratios 2/4, 4/2 -> 1.25; pairs (id, blur): 2<4, 2=2, 4=4, 4>2 -> (0 + .5 + .5 + 1) / 4 = 0.5
    assert rows[0].kinds["blur"].to_dict() == {"norm_ratio": pytest.approx(1.25), "norm_mean": pytest.approx(3.0),
                                             "auroc": pytest.approx(0.5)}
    # b: ratios 3/0.5, 1/0.5 -> 4; every ID norm above every blurred one -> 1
    assert rows[1].kinds["blur"].to_dict() == {"norm_ratio": pytest.approx(4.0), "norm_mean": pytest.approx(0.5),
                                             "auroc": pytest.approx(1.0)}
    assert rows[1].to_dict()["norm_ratio"] == pytest.approx(1.75)  # the jigsaw's, at the top level as before


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
    assert [row.kinds["jigsaw"].auroc for row in selection.rows] == [0.5, 0.5]
    with pytest.raises(ValueError, match="must include jigsaw"):
        select_block(model, [torch.rand(6, 3, 8, 8)], ["1"], pseudo_ood="noise,blur")
    with pytest.raises(ValueError, match="combines several pseudo-OOD kinds"):
        select_block(model, [torch.rand(6, 3, 8, 8)], ["1"], criterion="mean_rank")
