"""The configuration reference, written from :class:`featurenorm.config.Config` itself.

Each field's meaning is its one-line comment in ``config.py`` (``name: type = default  # meaning``),
and each ``# --- section`` comment in the class body starts a table. The documentation site renders
:func:`config_reference` into ``docs/configuration.md`` (``docs/hooks.py``), so the page cannot drift
from the code; ``tests/test_docs.py`` fails when a field has no comment.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import tokenize
from pathlib import Path

from . import config as config_module
from .core.criteria import CRITERIA

SECTION_MARK = "# ---"
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


@dataclasses.dataclass
class FieldDoc:
    """One config key as the reference page shows it."""

    name: str
    key: str  # the JSON spelling
    type: str
    default: str
    comment: str
    section: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string for tok in tokens if tok.type == tokenize.COMMENT}


def _json_type(annotation: str) -> str:
    """``int | None`` -> ``integer or null``; ``list[str]`` -> ``list of string``."""
    parts = []
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            parts.append("null")
        elif part.startswith("list["):
            parts.append(f"list of {_JSON_TYPES.get(part[5:-1], part[5:-1])}")
        else:
            parts.append(_JSON_TYPES.get(part, part))
    return " or ".join(parts)


def _default(name: str) -> str:
    if name in config_module.REQUIRED:
        return "required"
    spec = config_module.FIELDS[name]
    value = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    return json.dumps(value)


def config_fields(source: str | None = None) -> list[FieldDoc]:
    """Every field of ``Config`` in class order, with its comment ("" when it has none)."""
    if source is None:
        source = Path(config_module.__file__).read_text()
    comments = _comments(source)
    tree = ast.parse(source)
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Config")
    sections = {line: text[len(SECTION_MARK):].strip() for line, text in comments.items()
                if text.startswith(SECTION_MARK) and cls.lineno <= line <= cls.end_lineno}
    json_keys = {field: key for key, field in config_module.ALIASES.items() if key != "epoch"}
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        section = next((sections[line] for line in sorted(sections, reverse=True) if line < node.lineno), "")
        comment = comments.get(node.lineno, "").lstrip("#").strip()
        out.append(FieldDoc(name, json_keys.get(name, name), _json_type(ast.unparse(node.annotation)),
                            _default(name), comment, section))
    return out


def undocumented_fields() -> list[str]:
    """The fields of ``Config`` without a comment; the reference needs one for each."""
    return [f.name for f in config_fields() if not f.comment]


def _key_cell(field: FieldDoc) -> str:
    aliases = [k for k, v in config_module.ALIASES.items() if v == field.name and k != field.key]
    return f"`{field.key}`" + "".join(f" (alias `{a}`)" for a in aliases)


def _meaning(field: FieldDoc) -> str:
    # JSON says null; a bare <name> would be read as an HTML tag; | would end the table cell
    meaning = re.sub(r"\bNone\b", "null", field.comment)
    meaning = meaning.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    choices = config_module.CHOICES.get(field.name)
    if choices:
        meaning += "; one of " + ", ".join(f"`{c}`" for c in choices)
    return meaning


def config_reference() -> str:
    """Markdown tables of every config key: JSON key, type, default and meaning, one table per section."""
    missing = undocumented_fields()
    if missing:
        raise ValueError(f"Config fields without a comment in featurenorm/config.py: {', '.join(missing)}; "
                         "add a one-line '# meaning' after each")
    lines: list[str] = []
    section = None
    for field in config_fields():
        if field.section != section:
            section = field.section
            lines += ["", f"### {section[:1].upper() + section[1:]}", "",
                      "| key | type | default | meaning |", "|---|---|---|---|"]
        default = field.default if field.name in config_module.REQUIRED else f"`{field.default}`"
        lines.append(f"| {_key_cell(field)} | {field.type} | {default} | {_meaning(field)} |")
    return "\n".join(lines).strip() + "\n"


def criteria_reference() -> str:
    """A Markdown list of the block-selection criteria, each with its rule (``core.criteria.CRITERIA``)."""
    return "\n".join(f"- `{name}`: {criterion.rule};" for name, criterion in CRITERIA.items()) + "\n"
