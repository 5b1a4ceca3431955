"""runtime.init_distributed: which processes join a process group."""
from __future__ import annotations

import socket

import torch.distributed as dist

from featurenorm.config import Config
from featurenorm.runtime import init_distributed, shutdown_distributed


def test_a_one_process_torchrun_job_joins_a_gloo_group(monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # what torchrun --nproc_per_node=1 puts in the environment
    for key, value in {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    info, device = init_distributed(Config(device="cpu"))
    try:
        assert (info.rank, info.world_size, info.enabled, device.type) == (0, 1, True, "cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert capsys.readouterr().err == "process group: backend gloo, world size 1\n"
    finally:
        shutdown_distributed()
    assert not dist.is_initialized()


def test_a_plain_process_joins_no_group(monkeypatch):
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info, _ = init_distributed(Config(device="cpu"))
    assert (info.world_size, info.enabled) == (1, False) and not dist.is_initialized()
