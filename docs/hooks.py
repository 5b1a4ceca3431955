"""MkDocs hook: pages generated from the code, so that they cannot drift from it.

``<!-- generated: config-reference -->`` becomes the tables of every config key
(:func:`featurenorm.config_doc.config_reference`), ``<!-- generated: criteria -->`` the list of
block-selection criteria.
"""
from __future__ import annotations

from featurenorm import config_doc  # scripts/build_docs.sh puts the checkout on PYTHONPATH

MARKERS = {
    "<!-- generated: config-reference -->": config_doc.config_reference,
    "<!-- generated: criteria -->": config_doc.criteria_reference,
}


def on_page_markdown(markdown: str, **_) -> str:
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
