"""featurenorm/files.py: atomic writes."""
from __future__ import annotations

import os

from featurenorm import files


def test_atomic_outputs_get_ordinary_file_permissions(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
