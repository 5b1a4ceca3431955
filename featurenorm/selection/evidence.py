"""What the pseudo-OOD evidence behind a block choice says: one-line warnings when it is weak, or when the
kinds disagree on the best block (the criteria themselves are :mod:`featurenorm.core.criteria`)."""
from __future__ import annotations

from typing import Sequence

from ..core.block_rows import JIGSAW, BlockRow
from ..core.criteria import CRITERIA, best_block_per_kind, choose_block, worst_if_nan

# A best ID-vs-pseudo-OOD AUROC at or below this, at every block, is weak evidence for any choice.
WEAK_AUROC = 0.6


def selection_warnings(rows: Sequence[BlockRow], criterion: str,
                       weak_auroc: float = WEAK_AUROC) -> list[str]:
    """One-line warnings about the evidence behind a choice (empty when there is nothing to say).

    - weak: at every block, ID-vs-pseudo-OOD AUROC is at most ``weak_auroc`` for every kind the
      criterion reads (the jigsaw for ``norm_ratio``/``auroc``, every kind for the others);
    - disagreement: the measured kinds' best blocks (by AUROC) differ; each is named with its AUROC;
    - strong disagreement: some kinds rank the chosen block in the bottom half of the blocks by
      AUROC; each is named with its AUROC and rank there, and its own best block.
    """
    if not rows:
        return []
    kinds = list(rows[0].kinds)
    read = [JIGSAW] if CRITERIA[criterion].jigsaw_only else kinds
    notes = []
    aurocs = {kind: [worst_if_nan(row.kinds[kind].auroc) for row in rows] for kind in kinds}
    best_auroc = {kind: max(aurocs[kind]) for kind in read if kind in kinds}
    if best_auroc and all(value <= weak_auroc for value in best_auroc.values()):
        figures = ", ".join(f"{kind} {value:.2f}" for kind, value in best_auroc.items())
        notes.append(f"the block choice is weakly supported: the best ID-vs-pseudo-OOD AUROC over all blocks is "
                     f"{figures} (at most {weak_auroc:.2f}); these pseudo-OOD images barely differ from ID ones "
                     "at any block")
    best = best_block_per_kind(rows)
    if len(set(best.values())) > 1:
        notes.append("the pseudo-OOD kinds disagree on the best block (by AUROC): "
                     + ", ".join(f"{kind} {name} ({max(aurocs[kind]):.2f})" for kind, name in best.items()))
        chosen = choose_block(rows, criterion)
        position = next(i for i, row in enumerate(rows) if row is chosen)
        against = []
        for kind, values in aurocs.items():
            rank = 1 + sum(value > values[position] for value in values)
            if rank > (len(rows) + 1) / 2:
                against.append(f"{kind} (AUROC {values[position]:.2f}, rank {rank} of {len(rows)}; "
                               f"best {best[kind]} {max(values):.2f})")
        if against:
            notes.append(f"strong disagreement: the chosen block {chosen.name} ranks in the bottom half for "
                         + ", ".join(against) + "; compare --criterion mean_auroc and the per-kind table, or score "
                         "with the norm_profile method, which reads every block and needs no choice")
    return notes
