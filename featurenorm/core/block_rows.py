"""The values block selection passes around: a block's figures per pseudo-OOD kind (:class:`KindFigures`),
one row per candidate block (:class:`BlockRow`), and the block FeatureNorm reads (:class:`SelectedBlock`).

Each converts to and from the public JSON: ``block_selection.json["blocks"]`` and ``["selected"]``, and the
``block`` of ``ood_results.json``. Rows written before the pseudo-OOD kinds existed hold the jigsaw's
figures at the top level only; :meth:`BlockRow.from_dict` reads them too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

# The paper's pseudo-OOD kind; its figures are also written at the top level of a row.
JIGSAW = "jigsaw"


@dataclass(frozen=True)
class KindFigures:
    """One pseudo-OOD kind at one block (NaN where a figure could not be computed).

    Attributes:
        norm_ratio: mean over ID images of FN(x) / FN(kind(x)).
        norm_mean: mean FeatureNorm of the kind's images.
        auroc: ID (positive) against the kind, scored by FeatureNorm.
    """

    norm_ratio: float
    norm_mean: float
    auroc: float

    def to_dict(self) -> dict[str, float]:
        return {"norm_ratio": self.norm_ratio, "norm_mean": self.norm_mean, "auroc": self.auroc}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "KindFigures":
        return cls(*(_number(values.get(key)) for key in ("norm_ratio", "norm_mean", "auroc")))


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class BlockRow:
    """One candidate block's evidence: where it sits, its ID FeatureNorm and each measured kind's figures.

    Attributes:
        index: position among the candidate blocks.
        name: the module name.
        shape: the block output's shape without the batch, e.g. ``[64, 8, 8]``.
        id_norm_mean: mean FeatureNorm of the ID images.
        kinds: ``{kind: KindFigures}`` in measured order.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    id_norm_mean: float
    kinds: dict[str, KindFigures] = field(default_factory=dict)

    @property
    def norm_ratio(self) -> float:
        """The jigsaw's NormRatio (the paper's criterion); NaN when the jigsaw was not measured."""
        return self.kinds[JIGSAW].norm_ratio if JIGSAW in self.kinds else float("nan")

    def as_selected(self) -> "SelectedBlock":
        """This block, as the one FeatureNorm reads."""
        return SelectedBlock(self.name, self.index)

    def to_dict(self) -> dict[str, Any]:
        """The ``block_selection.json`` row: the jigsaw's figures at the top level, then ``pseudo_ood``."""
        row: dict[str, Any] = {"index": self.index, "name": self.name, "shape": list(self.shape)}
        jigsaw = self.kinds.get(JIGSAW)
        if jigsaw:
            row["norm_ratio"] = jigsaw.norm_ratio
        row["id_norm_mean"] = self.id_norm_mean
        if jigsaw:
            row["jigsaw_norm_mean"] = jigsaw.norm_mean
            row["jigsaw_auroc"] = jigsaw.auroc
        row["pseudo_ood"] = {kind: figures.to_dict() for kind, figures in self.kinds.items()}
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "BlockRow":
        """A row of ``block_selection.json["blocks"]``, old (jigsaw figures only) or new."""
        if row.get("pseudo_ood"):
            kinds = {kind: KindFigures.from_dict(values) for kind, values in row["pseudo_ood"].items()}
        else:
            kinds = {JIGSAW: KindFigures.from_dict({"norm_ratio": row.get("norm_ratio"),
                                                    "norm_mean": row.get("jigsaw_norm_mean"),
                                                    "auroc": row.get("jigsaw_auroc")})}
        return cls(index=int(row["index"]), name=str(row["name"]), shape=tuple(row.get("shape", ())),
                   id_norm_mean=_number(row.get("id_norm_mean")), kinds=kinds)


@dataclass(frozen=True)
class SelectedBlock:
    """The block FeatureNorm reads.

    Attributes:
        name: the module name.
        index: its position among the candidate blocks; None for a ``--block`` outside them.
        source: where the choice came from (``block_selection.json`` or ``--block``); None inside a selection.
    """

    name: str
    index: Optional[int] = None
    source: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "index"}``, and ``source`` when known."""
        out: dict[str, Any] = {"name": self.name, "index": self.index}
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SelectedBlock":
        return cls(name=str(values["name"]), index=values.get("index"), source=values.get("source"))
