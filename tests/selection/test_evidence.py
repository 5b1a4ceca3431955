"""The warnings about weak or disagreeing pseudo-OOD evidence."""
from featurenorm.selection.evidence import selection_warnings


def test_weak_evidence_and_disagreement_warnings(kind_rows):
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


def test_strong_disagreement_names_the_kinds_that_rank_the_chosen_block_low(kind_rows):
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
