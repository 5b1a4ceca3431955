"""The paper's published CIFAR-10 numbers and ImageNet blocks, and a side-by-side comparison with our results.

Source: Yu et al., "Block Selection Method for Using Feature Norm in Out-of-distribution
Detection", CVPR 2023 (arXiv 2212.02295). The numbers live in ``paper_results.json`` (package
data, with its ``source`` field). The paper reports FPR95 and AUROC in percent; our result files
hold fractions in [0, 1], so every comparison converts ours to percent first.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..evaluation.results import AVERAGE, to_percent

PAPER_RESULTS_PATH = Path(__file__).with_name("paper_results.json")

# Key of the per-method average in both the paper data and our ood_results.json.


def load_paper_results() -> dict[str, Any]:
    """The paper's numbers as a fresh dict (callers may modify it without affecting others)."""
    with open(PAPER_RESULTS_PATH) as f:
        return json.load(f)


def _check_arch(arch: str, paper: Mapping[str, Any]) -> None:
    if arch not in paper["fpr95_auroc"]:
        raise UserError(f"the paper has no numbers for arch '{arch}'; it reports "
                        f"{', '.join(paper['fpr95_auroc'])} (pass --arch to pick one)")


@dataclass(frozen=True)
class PaperBlock:
    """The block the paper's NormRatio selected. ``index`` is 0-based among ``num_blocks``."""

    name: str
    index: int
    num_blocks: int


def paper_selected_block(arch: str) -> PaperBlock:
    """The paper's selected block for ``arch``.

    Our block names differ from the paper's wording for wrn28_10 and vgg11 (e.g. the paper's
    "block3, 3rd residual block" is our ``block3.2``), so compare by ``index``.
    """
    paper = load_paper_results()
    _check_arch(arch, paper)
    entry = paper["selected_blocks"][arch]
    return PaperBlock(name=str(entry["block"]), index=int(entry["index"]), num_blocks=int(entry["of"]))


# The paper's ImageNet blocks (``imagenet_selected_blocks`` in paper_results.json, in the paper's words) in
# torchvision's module names: arch -> (the paper's key, our block, its 0-based index among
# candidate_blocks(model), how many there are). VGG-16's 13th conv layer is read after its ReLU, features.29;
# MobileNetV3's block 17 is the 17th entry of features, the 960-channel last conv.
IMAGENET_BLOCKS = {
    "torchvision/resnet50": ("resnet50", "layer4.1", 14, 16),
    "torchvision/vgg16": ("vgg16", "features.29", 12, 13),
    "torchvision/mobilenet_v3_large": ("mobilenetv3", "features.16", 16, 17),
}


def paper_imagenet_block(arch: str) -> PaperBlock:
    """The paper's selected ImageNet block for ``arch`` (``torchvision/resnet50``, ``torchvision/vgg16`` or
    ``torchvision/mobilenet_v3_large``); ``name`` is the paper's wording, ``index`` our block's index."""
    if arch not in IMAGENET_BLOCKS:
        raise UserError(f"the paper selected ImageNet blocks only for {', '.join(IMAGENET_BLOCKS)}, not '{arch}'")
    key, _, index, num_blocks = IMAGENET_BLOCKS[arch]
    return PaperBlock(name=str(load_paper_results()["imagenet_selected_blocks"][key]), index=index,
                      num_blocks=num_blocks)


def point_difference(ours_percent: float, paper_percent: float) -> float:
    """ours - paper, in percentage points, rounded to 2 decimals (both inputs already in %)."""
    return round(ours_percent - paper_percent, 2)


@dataclass(frozen=True)
class ComparisonRow:
    """One (method, OOD set) cell pair. All values in percent; ``dataset`` may be ``average``."""

    method: str
    dataset: str
    ours_fpr95: float
    paper_fpr95: float
    ours_auroc: float
    paper_auroc: float

    @property
    def fpr95_diff(self) -> float:
        return point_difference(self.ours_fpr95, self.paper_fpr95)

    @property
    def auroc_diff(self) -> float:
        return point_difference(self.ours_auroc, self.paper_auroc)


@dataclass
class PaperComparison:
    """Our results beside the paper's, for one architecture.

    Attributes:
        arch: the paper architecture compared against.
        rows: per (method, OOD set) rows, each method followed by its ``average`` row.
        methods_not_in_paper: methods we evaluated that the paper does not report.
        methods_not_evaluated: methods the paper reports that our results lack.
        datasets_not_in_paper / datasets_not_evaluated: per compared method, the OOD sets only
            we have / only the paper has.
        partial_average: methods whose average row covers fewer sets than the paper's average
            (then both sides are re-averaged over the shared sets).
        block_line: one sentence comparing our selected block with the paper's.
    """

    arch: str
    rows: list[ComparisonRow] = field(default_factory=list)
    methods_not_in_paper: list[str] = field(default_factory=list)
    methods_not_evaluated: list[str] = field(default_factory=list)
    datasets_not_in_paper: dict[str, list[str]] = field(default_factory=dict)
    datasets_not_evaluated: dict[str, list[str]] = field(default_factory=dict)
    partial_average: dict[str, list[str]] = field(default_factory=dict)
    block_line: str = ""
    id_dataset: str = "CIFAR-10"
    table_note: str = ""  # why the table is empty, when the paper has no metrics to compare


def _our_metric(results: Mapping[str, Any], method: str, dataset: str, metric: str) -> float:
    try:
        value = results["methods"][method][dataset][metric]
        return float(value)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"results: methods.{method}.{dataset} has no numeric '{metric}'; "
                        "is this an ood_results.json written by eval_ood.py?") from None


def block_comparison_line(results: Mapping[str, Any], arch: str) -> str:
    """One sentence comparing ``results["block"]`` with the paper's selected block (CIFAR-10, or ImageNet for the
    archs of :data:`IMAGENET_BLOCKS`), by index."""
    paper_block = paper_imagenet_block(arch) if arch in IMAGENET_BLOCKS else paper_selected_block(arch)
    paper_text = f"paper index {paper_block.index} of {paper_block.num_blocks} ({paper_block.name})"
    ours = results.get("block")
    if not isinstance(ours, Mapping) or ours.get("index") is None:
        return f"selected block: ours not recorded in the results; {paper_text}"
    ours_index = int(ours["index"])
    ours_text = f"ours {ours.get('name', '?')} (index {ours_index})"
    if ours_index == paper_block.index:
        verdict = "same block"
    else:
        verdict = f"differs by {ours_index - paper_block.index:+d} block(s)"
    return f"selected block: {ours_text}; {paper_text}: {verdict}"


def compare_with_paper(results: Mapping[str, Any], arch: str | None = None) -> PaperComparison:
    """Pair our metrics with the paper's for every method and OOD set that both have.

    Args:
        results: a parsed ``ood_results.json`` (metrics as fractions).
        arch: the paper architecture to compare with; defaults to ``results["arch"]``.

    The average row of a method is the paper's printed average when we evaluated all of the
    paper's OOD sets (ours: the mean over those sets); otherwise both sides are the mean over the
    shared sets only, and the method is listed in ``partial_average``.
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("methods"), Mapping):
        raise UserError("results have no 'methods' table; is this an ood_results.json written by eval_ood.py?")
    arch = arch or results.get("arch")
    if not arch:
        raise UserError("results name no arch; pass --arch (resnet18, wrn28_10 or vgg11)")
    if arch in IMAGENET_BLOCKS:  # paper_results.json holds the paper's ImageNet blocks, not its ImageNet metrics
        return PaperComparison(arch=arch, id_dataset="ImageNet-1K", block_line=block_comparison_line(results, arch),
                               table_note="paper_results.json holds the paper's selected ImageNet blocks but not "
                                          "its ImageNet metrics; only the block is compared")
    paper = load_paper_results()
    _check_arch(arch, paper)
    id_dataset = results.get("id_dataset")
    if id_dataset and id_dataset != paper["id_dataset"]:
        warnings.warn(f"these results are for ID data '{id_dataset}', the paper's table for '{paper['id_dataset']}'; "
                      "the numbers are not comparable", stacklevel=2)
    paper_table: Mapping[str, Mapping[str, Sequence[float]]] = paper["fpr95_auroc"][arch]

    comparison = PaperComparison(arch=arch)
    ours_methods = list(results["methods"])
    comparison.methods_not_in_paper = [m for m in ours_methods if m not in paper_table]
    comparison.methods_not_evaluated = [m for m in paper_table if m not in results["methods"]]

    for method in ours_methods:
        if method not in paper_table:
            continue
        ours_sets = [d for d in results["methods"][method] if d != AVERAGE]
        paper_sets = [d for d in paper_table[method] if d != AVERAGE]
        shared = [d for d in ours_sets if d in paper_sets]
        only_ours = [d for d in ours_sets if d not in paper_sets]
        only_paper = [d for d in paper_sets if d not in ours_sets]
        if only_ours:
            comparison.datasets_not_in_paper[method] = only_ours
        if only_paper:
            comparison.datasets_not_evaluated[method] = only_paper
        if not shared:
            continue
        method_rows = []
        for dataset in shared:
            paper_fpr, paper_auroc = paper_table[method][dataset]
            method_rows.append(ComparisonRow(
                method, dataset,
                ours_fpr95=to_percent(_our_metric(results, method, dataset, "fpr95")),
                paper_fpr95=float(paper_fpr),
                ours_auroc=to_percent(_our_metric(results, method, dataset, "auroc")),
                paper_auroc=float(paper_auroc)))
        comparison.rows.extend(method_rows)
        comparison.rows.append(_average_row(results, method, shared, only_paper, paper_table[method]))
        if only_paper:
            comparison.partial_average[method] = shared

    comparison.block_line = block_comparison_line(results, arch)
    return comparison


def _average_row(results: Mapping[str, Any], method: str, shared: Sequence[str], only_paper: Sequence[str],
                 paper_method: Mapping[str, Sequence[float]]) -> ComparisonRow:
    """Mean over ``shared`` sets for ours; the paper's printed average when nothing is missing."""
    ours_fpr = to_percent(sum(_our_metric(results, method, d, "fpr95") for d in shared) / len(shared))
    ours_auroc = to_percent(sum(_our_metric(results, method, d, "auroc") for d in shared) / len(shared))
    if not only_paper and AVERAGE in paper_method:
        paper_fpr, paper_auroc = (float(v) for v in paper_method[AVERAGE])
    else:
        # The paper's printed average covers sets we lack; re-average its cells over ours.
        paper_fpr = round(sum(paper_method[d][0] for d in shared) / len(shared), 2)
        paper_auroc = round(sum(paper_method[d][1] for d in shared) / len(shared), 2)
    return ComparisonRow(method, AVERAGE, ours_fpr, paper_fpr, ours_auroc, paper_auroc)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _fmt_diff(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.2f}"


def format_comparison(comparison: PaperComparison, fmt: str = "text") -> str:
    """Render a :class:`PaperComparison` as ``text`` (aligned columns) or ``md`` (a Markdown table)."""
    if fmt not in ("text", "md"):
        raise UserError(f"unknown format '{fmt}'; use text or md")
    header = ["method", "OOD set", "FPR95 ours", "FPR95 paper", "FPR95 diff",
              "AUROC ours", "AUROC paper", "AUROC diff"]
    body = [[r.method, r.dataset, _fmt(r.ours_fpr95), _fmt(r.paper_fpr95), _fmt_diff(r.fpr95_diff),
             _fmt(r.ours_auroc), _fmt(r.paper_auroc), _fmt_diff(r.auroc_diff)] for r in comparison.rows]
    title = (f"ours vs paper (Yu et al., CVPR 2023), arch {comparison.arch}, {comparison.id_dataset}; "
             "FPR95 (lower is better) and AUROC (higher is better) in %, diff = ours - paper in points")
    lines = [title, ""]
    if not body:
        lines.append(comparison.table_note or "no method and OOD set is present in both our results and the paper")
    elif fmt == "md":
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * 6) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in body)
    else:
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        for row in [header] + body:
            cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
            lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(_notes(comparison))
    lines.append(comparison.block_line)
    return "\n".join(lines) + "\n"


def _notes(comparison: PaperComparison) -> list[str]:
    notes = []
    for method, shared in comparison.partial_average.items():
        notes.append(f"note: {method} average is over the {len(shared)} sets both have "
                     f"({', '.join(shared)}), not the paper's full average")
    if comparison.methods_not_in_paper:
        notes.append("not in paper (methods): " + ", ".join(comparison.methods_not_in_paper))
    if comparison.methods_not_evaluated:
        notes.append("not evaluated (methods): " + ", ".join(comparison.methods_not_evaluated))
    for method, sets in comparison.datasets_not_in_paper.items():
        notes.append(f"not in paper ({method} OOD sets): " + ", ".join(sets))
    for method, sets in comparison.datasets_not_evaluated.items():
        notes.append(f"not evaluated ({method} OOD sets): " + ", ".join(sets))
    return notes
