"""The README and the documentation site are kept true by the tests.

- Every ```python block of README.md and docs/**/*.md runs: the blocks of one page in order, in one
  fresh interpreter (a later block may use an earlier one's names), in a temporary folder. A block
  that cannot run offline is preceded by ``<!-- docs-test: skip REASON -->``.
- The configuration page is written from ``Config``: every field needs its comment in config.py.
- ``mkdocs build --strict`` passes (skipped when the [docs] extra is not installed).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featurenorm import config as config_module
from featurenorm import config_doc

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))
SKIP = re.compile(r"<!-- docs-test: skip (?P<reason>.+?) -->\s*$")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(first line of the code, code, skip reason or None) for every ```python block."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before)
        blocks.append((line, match.group(1), skip.group("reason") if skip else None))
    return blocks


# Runs the blocks of one page in one namespace; line numbers in tracebacks are the page's own.
RUNNER = """
import sys
page, blocks = sys.argv[1], eval(sys.stdin.read())
namespace = {"__name__": "__docs_example__"}
for line, code in blocks:
    exec(compile("\\n" * (line - 1) + code, page, "exec"), namespace)
"""


def run_blocks(page: str, blocks: list[tuple[int, str]], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, page], input=repr(blocks), capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p.read_text())]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_example_runs(page, tmp_path):
    blocks = [(line, code) for line, code, skip in python_blocks(page.read_text()) if skip is None]
    out = run_blocks(str(page.relative_to(REPO)), blocks, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]


def test_a_broken_example_fails(tmp_path):
    out = run_blocks("page.md", [(3, "x = 1\n"), (7, "assert x == 2, 'broken'\n")], tmp_path)
    assert out.returncode != 0 and 'File "page.md", line 7' in out.stderr


def test_skip_markers_give_a_reason_and_every_page_has_code_checked():
    text = "intro\n<!-- docs-test: skip needs the internet -->\n```python\nimport x\n```\n\n```python\ny = 1\n```\n"
    assert [(line, skip) for line, _, skip in python_blocks(text)] == [(4, "needs the internet"), (8, None)]
    # the pages that must keep an executed example
    for name in ("README.md", "docs/api.md", "docs/extending.md"):
        assert any(skip is None for _, _, skip in python_blocks((REPO / name).read_text())), name


def test_every_config_field_has_a_comment():
    assert config_doc.undocumented_fields() == []


def test_a_field_without_a_comment_is_found():
    source = Path(config_module.__file__).read_text()
    stripped = re.sub(r"(\n    knn_k: int = 50)  #[^\n]*", r"\1", source)
    assert stripped != source
    assert [f.name for f in config_doc.config_fields(stripped) if not f.comment] == ["knn_k"]


def test_the_configuration_page_lists_every_field():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown((REPO / "docs" / "configuration.md").read_text())
    rows = re.findall(r"^\| `([^`]+)`", page, re.M)
    json_keys = [key if key != "lsun_resize" else "lsun-resize" for key in config_module.FIELDS]
    assert sorted(rows) == sorted(json_keys)
    assert "| `knn_k` | integer | `50` | KNN k |" in page
    assert "| `criterion` | string | `\"norm_ratio\"` | default of --criterion; one of `norm_ratio`" in page
    assert "<!-- generated" not in page


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["bash scripts/quickstart.sh",
                                                                      "bash scripts/test.sh"]
    assert text.index("```bash") < text.index("\n## ")
    assert "bash scripts/build_docs.sh" in text
    assert "## Real data: MNIST and Fashion-MNIST" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def test_mkdocs_build_is_strict_clean(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("MkDocs is not installed: the [docs] extra (bash scripts/build_docs.sh installs it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "WARNING" not in out.stderr
    config_page = (tmp_path / "site" / "configuration.html").read_text()
    assert "stop_grace_seconds" in config_page and "generated: config-reference" not in config_page
