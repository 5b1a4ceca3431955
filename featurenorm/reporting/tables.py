"""Turn OOD results and block-selection rows into tables and text (the figures: :mod:`featurenorm.reporting.plots`).

Every file is written atomically (``featurenorm.files``): a failed write leaves an
existing target untouched. Metrics in the results dict are fractions in [0, 1];
tables show them in percent, rounded with ``round(100 * x, 2)``, so a value read
back from a table equals the JSON value in percent exactly.

Score convention (project-wide): higher score = more in-distribution; ID is the
positive class for AUROC / AUPR-In, and FPR95 is the fraction of OOD samples
accepted at 95% ID acceptance. ``fpr95_openood`` is OpenOOD's FPR@95 (OOD positive:
the fraction of ID samples rejected at 95% OOD recall).

Table layout: the columns named by ``results["table_metrics"]`` (default FPR95 and AUROC)
for every OOD set, then the average; a grouped benchmark (``results["groups"]``, OpenOOD
v1.5) puts its groups first (near, far), then every OOD set, as OpenOOD's tables do.
"""
from __future__ import annotations

import csv
import io as _stringio
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from featurenorm.errors import UserError
from featurenorm.files import atomic_path, write_text
from featurenorm.evaluation.results import (AVERAGE, DEFAULT_TABLE_METRICS, METRIC_LABELS, methods_of, group_names,
                                 ood_set_names, to_percent)
from featurenorm.core.block_rows import JIGSAW, BlockRow, SelectedBlock
from featurenorm.core.criteria import average_auroc_ranks


# ---------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------

def _format_percent(value: Any, missing: str) -> str:
    percent = to_percent(value)
    return missing if percent is None else f"{percent:.2f}"


def table_metrics(results: Mapping[str, Any]) -> list[str]:
    """The metric columns of the tables: ``results["table_metrics"]``, else the paper's FPR95 and AUROC."""
    metrics = results.get("table_metrics") or DEFAULT_TABLE_METRICS
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise UserError(f"results name an unknown table metric '{unknown[0]}'; valid: {', '.join(METRIC_LABELS)}")
    return list(metrics)


def table_columns(results: Mapping[str, Any]) -> list[str]:
    """Column groups in order: OpenOOD's layout (groups, then sets) or the paper's (sets, then average)."""
    groups = group_names(results)
    if groups:
        return groups + ood_set_names(results)
    return ood_set_names(results) + [AVERAGE]


def _metric(per_set: Mapping[str, Any], set_name: str, metric: str) -> Any:
    return (per_set.get(set_name) or {}).get(metric)


def _block_label(results: Mapping[str, Any]) -> str:
    block = results.get("block")
    if not isinstance(block, Mapping) or block.get("name") is None:
        return "n/a"
    label = str(block["name"])
    details = []
    if block.get("index") is not None:
        details.append(f"index {block['index']}")
    if block.get("source"):
        details.append(f"from {block['source']}")
    return f"{label} ({', '.join(details)})" if details else label


def _to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars / arrays and paths into plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(key): _to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# ---------------------------------------------------------------------------
# Tables and text
# ---------------------------------------------------------------------------

def _table_rows(results: Mapping[str, Any], missing: str) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Column keys (set, metric) and one row of formatted percent strings per method."""
    columns = [(name, metric) for name in table_columns(results) for metric in table_metrics(results)]
    rows = []
    for method, per_set in methods_of(results).items():
        rows.append([method] + [_format_percent(_metric(per_set, name, metric), missing)
                                for name, metric in columns])
    return columns, rows


def _markdown_table(results: Mapping[str, Any]) -> str:
    columns, rows = _table_rows(results, missing="-")
    header = ["Method"]
    for name, metric in columns:
        label, arrow = METRIC_LABELS[metric]
        header.append(f"{'Average' if name == AVERAGE else name} {label}{arrow}")

    accuracy = to_percent(results.get("id_accuracy"))
    benchmark = f"benchmark: {results['benchmark']} | " if results.get("benchmark") else ""
    lines = [
        f"{benchmark}ID: {results.get('id_dataset', 'n/a')} | arch: {results.get('arch', 'n/a')} | "
        f"block: {_block_label(results)} | ID accuracy: "
        f"{'n/a' if accuracy is None else f'{accuracy:.2f}%'} | "
        f"{results.get('convention', 'ID positive')}; values in %",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(columns)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]

    groups = results.get("groups") or {}
    if groups:
        lines += ["", "Groups: " + "; ".join(f"{name} = {', '.join(members) or 'none scored'}"
                                            for name, members in groups.items())]
    skipped = results.get("skipped") or {}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{name} ({why})" for name, why in skipped.items())]
    return "\n".join(lines) + "\n"


def _csv_table(results: Mapping[str, Any]) -> str:
    columns, rows = _table_rows(results, missing="")
    buffer = _stringio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{name}_{metric}" for name, metric in columns])
    writer.writerows(rows)
    return buffer.getvalue()


def results_table(results: dict, fmt: str = "md") -> str:
    """Render results as a table, metrics in percent with 2 decimals.

    One row per method (order of ``results["methods"]``). Paper layout: for each OOD set
    (benchmark order) an FPR95 and an AUROC column, then the averages. OpenOOD layout
    (results with ``groups``): near, far, then each OOD set, with the metrics of
    ``results["table_metrics"]`` (FPR@95 OpenOOD and AUROC). Missing values are ``-``
    in Markdown and empty in CSV.

    Args:
        results: the dict written to ``ood_results.json``.
        fmt: ``"md"`` (header line + Markdown table, skipped sets noted below it) or
            ``"csv"`` (header ``method,<set>_fpr95,<set>_auroc,...,average_fpr95,average_auroc``).

    Returns:
        The table as text, ending in a newline.
    """
    if fmt == "md":
        return _markdown_table(results)
    if fmt == "csv":
        return _csv_table(results)
    raise UserError(f"unknown table format {fmt!r}; use 'md' or 'csv'")


def per_block_text(results: Mapping[str, Any]) -> str:
    """FeatureNorm's AUROC (%) at every block (``per_block``) for each OOD set and on average, one row per
    block, the scored block marked with ``*``; an empty string without ``per_block``."""
    per_block = results.get("per_block") or {}
    if not per_block:
        return ""
    selected = (results.get("block") or {}).get("name")
    sets = [name for name in next(iter(per_block.values())) if name != AVERAGE] + [AVERAGE]
    header = ["block"] + sets
    body = [[f"{block}{'*' if block == selected else ''}"]
            + [_format_percent(per_set.get(name, {}).get("auroc"), "-") for name in sets]
            for block, per_set in per_block.items()]
    widths = [max(len(line[col]) for line in [header] + body) for col in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if col == 0 else cell.rjust(width)
                               for col, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in [header] + body)


def write_ood_results(results: dict, save_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``ood_results.json``, ``ood_results.md`` and ``ood_results.csv`` into ``save_dir``.

    Everything is rendered before the first file is written, so a rendering error
    leaves no half-updated set of files behind.

    Returns:
        ``{"json": path, "md": path, "csv": path}``.
    """
    save_dir = Path(save_dir)
    texts = {
        "json": json.dumps(_to_jsonable(results), indent=2) + "\n",
        "md": results_table(results, fmt="md"),
        "csv": results_table(results, fmt="csv"),
    }
    paths = {kind: save_dir / f"ood_results.{kind}" for kind in texts}
    for kind, text in texts.items():
        write_text(paths[kind], text)
    return paths


def _best_methods(values: Mapping[str, float | None]) -> set[str]:
    """Methods whose value equals the maximum (ties all win); none if every value is missing."""
    present = {method: value for method, value in values.items() if value is not None}
    if not present:
        return set()
    best = max(present.values())
    return {method for method, value in present.items() if value == best}


def summary_text(results: dict) -> str:
    """Compact fixed-width table for stdout, metrics in percent.

    Rows are methods; columns are average FPR95, AUROC and AUPR-In, the AUROC of each
    group (near, far) when the benchmark has groups, plus the AUROC of each OOD set when
    there are at most 6 sets. The best average AUROC is marked with ``*`` (all of them
    on a tie).
    """
    methods = methods_of(results)
    set_names = ood_set_names(results)
    per_set_columns = set_names if len(set_names) <= 6 else []
    columns = [("avg FPR95", AVERAGE, "fpr95"), ("avg AUROC", AVERAGE, "auroc"),
               ("avg AUPR-In", AVERAGE, "aupr_in")]
    columns += [(f"{name} AUROC", name, "auroc") for name in group_names(results)]
    columns += [(f"{name} AUROC", name, "auroc") for name in per_set_columns]

    best = _best_methods({method: to_percent(_metric(per_set, AVERAGE, "auroc"))
                          for method, per_set in methods.items()})
    table = [["method"] + [title for title, _, _ in columns]]
    for method, per_set in methods.items():
        row = [method]
        for _, set_name, metric in columns:
            cell = _format_percent(_metric(per_set, set_name, metric), missing="-")
            # The mark goes right after the number; a space keeps the other cells aligned.
            if set_name == AVERAGE and metric == "auroc":
                cell += "*" if method in best else " "
            row.append(cell)
        table.append(row)

    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
             for row in table]
    footer = f"(percent; * = best average AUROC; {len(set_names)} OOD set{'s' if len(set_names) != 1 else ''}"
    footer += ")" if per_set_columns or not set_names else "; per-set AUROC omitted, see ood_results.md)"
    return "\n".join(lines + [footer]) + "\n"


def write_scores_npz(scores: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Atomically save score arrays to an ``.npz`` file (keys like ``"featurenorm.svhn"``, ``"msp.id"``).

    ``np.savez`` appends ``.npz`` to names without it, so the temporary file ends in
    ``.npz`` and, like numpy, a target without that suffix gets it appended.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {str(key): np.asarray(value) for key, value in scores.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


# ---------------------------------------------------------------------------
# Block selection
# ---------------------------------------------------------------------------

def format_block_table(rows: Sequence[BlockRow], selected: SelectedBlock | None = None) -> str:
    """A fixed-width text table of the block summary, the selected row marked with ``*``.

    Args:
        rows: from :func:`featurenorm.selection.ratios.summarize_blocks` (or ``BlockRow.from_dict``).
        selected: the chosen block; None marks nothing.
    """
    selected_index = selected.index if selected else None
    header = [" ", "index", "block", "shape", "id norm", "jigsaw norm", "NormRatio", "AUROC"]
    nan = float("nan")
    body = []
    for row in rows:
        jigsaw = row.kinds.get(JIGSAW)
        body.append(["*" if row.index == selected_index else "", str(row.index), row.name,
                     "x".join(str(d) for d in row.shape), f"{row.id_norm_mean:.4f}",
                     f"{jigsaw.norm_mean if jigsaw else nan:.4f}", f"{row.norm_ratio:.4f}",
                     f"{jigsaw.auroc if jigsaw else nan:.4f}"])
    widths = [max(len(line[col]) for line in [header] + body) for col in range(len(header))]
    text_columns = {2, 3}  # left-aligned; numbers are right-aligned

    def render(line: list[str]) -> str:
        cells = [cell.ljust(width) if col in text_columns else cell.rjust(width)
                 for col, (cell, width) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    table = "\n".join([render(header), rule] + [render(line) for line in body])
    kinds = list(rows[0].kinds) if rows else []
    if len(kinds) < 2:
        return table
    return table + "\n\nper pseudo-OOD kind: NormRatio / AUROC of ID vs. that kind; mean rank by AUROC over the kinds\n" \
        + _kind_table(rows, selected_index, kinds)


def _kind_table(rows: Sequence[BlockRow], selected_index: int | None, kinds: Sequence[str]) -> str:
    ranks = average_auroc_ranks(rows)
    header = [" ", "index", "block"] + list(kinds) + ["mean rank"]
    body = [["*" if row.index == selected_index else "", str(row.index), row.name]
            + [f"{row.kinds[kind].norm_ratio:.3f} / {row.kinds[kind].auroc:.3f}" for kind in kinds]
            + [f"{rank:.2f}"] for row, rank in zip(rows, ranks)]
    widths = [max(len(line[col]) for line in [header] + body) for col in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(cell.ljust(width) if col == 2 else cell.rjust(width)
                         for col, (cell, width) in enumerate(zip(line, widths))).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule] + [render(line) for line in body])
