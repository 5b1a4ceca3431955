"""featurenorm/training/checkpoint.py: reading checkpoints safely."""
from __future__ import annotations

import pytest

from featurenorm.errors import UserError
from featurenorm.training.checkpoint import read_checkpoint


@pytest.mark.parametrize("payload", [b"hello\n", b"\x80\x04K\x01.", b"PK\x03\x04garbage"])
def test_foreign_bytes_are_a_one_line_checkpoint_error(tmp_path, payload):
    path = tmp_path / "last.pt"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="last.pt"):
        read_checkpoint(path)
