"""Reading torch files safely (``weights_only=True``, one-line errors) and loading a foreign state_dict into a
model: what featurenorm checkpoints, ``--checkpoint`` files of other code and ``weights_file`` share."""
from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError

# Modules a legacy (non-zip) torch.save file imports to rebuild tensors; anything else is code.
SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs")


def torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found; train first (python train.py --config ...) "
                        "or pass --checkpoint PATH")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError) as err:  # what torch's unpickler raises on foreign bytes
        raise _load_error(path, err) from None


STATE_DICT_KEYS = ("state_dict", "model", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
# Names other code bases give the final linear layer that featurenorm's models call ``head``.
HEAD_ALIASES = ("fc", "linear", "classifier")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def foreign_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights in a checkpoint written elsewhere, wrapper prefixes removed; None if none is found.

    Accepts a plain state_dict or a dict holding one under ``state_dict``, ``model`` or ``net``.
    """
    if not _is_state_dict(obj):
        inner = [obj[key] for key in STATE_DICT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(key))]
        if not inner:
            return None
        obj = inner[0]
    cleaned = {}
    for key, value in obj.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def _rename_head(weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map another code base's classifier name (``fc``, ...) onto ``head`` when the model calls it so."""
    expected = model.state_dict()
    if "head.weight" not in expected or "head.weight" in weights:
        return weights
    for alias in HEAD_ALIASES:
        if f"{alias}.weight" in weights and f"{alias}.weight" not in expected:
            return {(f"head.{k[len(alias) + 1:]}" if k.startswith(f"{alias}.") else k): v for k, v in weights.items()}
    return weights


def load_foreign_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: str | Path,
                         what: str = "checkpoint") -> None:
    """Load ``weights`` into ``model`` strictly; a mismatch is one line naming the first missing/unexpected keys."""
    weights = _rename_head(weights, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first '{unexpected[0]}'")
        raise UserError(f"{what} '{path}' does not fit {type(model).__name__}: {'; '.join(parts)}; check the "
                        "config's arch, width and num_classes")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(weights[k].shape)]
    if wrong:
        raise UserError(f"{what} '{path}' does not fit {type(model).__name__}: {len(wrong)} tensor(s) of another "
                        f"shape, first '{wrong[0]}' {tuple(weights[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)};"
                        " check the config's arch, width and num_classes")
    model.load_state_dict(weights)


def head_classes(weights: dict[str, torch.Tensor]) -> int | None:
    for name in ("head",) + HEAD_ALIASES:
        weight = weights.get(f"{name}.weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None


def _load_error(path: Path, err: Exception) -> UserError:
    """Tell a refused (code-carrying) file from a truncated or foreign one."""
    text = str(err)
    with open(path, "rb") as f:
        head = f.read(4)
    complete_zip = head.startswith(b"PK") and zipfile.is_zipfile(path)
    # any import torch blocks is code (a pickled nn.Module, os.system, ...); only in a legacy
    # (non-zip) file can a torch name blocked for being cut short mean truncation instead
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked and (complete_zip or blocked.group(1).split(".")[0] not in SAFE_PICKLE_MODULES) \
            or _pickle_calls_code(path):
        return UserError(f"refused to load '{path}': it holds pickled Python objects that could run code; "
                         "only load checkpoints written by featurenorm from sources you trust")
    if head.startswith(b"PK") and not complete_zip:
        why = "the zip archive is incomplete"
    elif not head.startswith(b"PK") and not head.startswith(b"\x80"):
        why = "not a PyTorch file"
    elif blocked:
        why = f"it names an unknown function {blocked.group(1)}"
    elif text.startswith("Weights only load failed"):  # torch's long advice; keep its one specific line
        why = next((line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")),
                   "unreadable pickle data")
    else:
        why = text.splitlines()[0] if text else type(err).__name__
    return UserError(f"checkpoint '{path}' is truncated or corrupt ({why}); retrain or re-download it")


def _pickle_calls_code(path: Path) -> bool:
    """Whether a plain pickle (not torch's zip format) imports anything beyond torch's own rebuild helpers.

    The opcodes are only read, never run.
    """
    strings: list[str] = []  # STACK_GLOBAL takes its module and name from the two strings before it
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings = (strings + [arg])[-2:]
                if op.name in ("GLOBAL", "INST"):
                    module = str(arg).split(" ")[0]
                elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                    module = strings[0]
                else:
                    continue
                if module.split(".")[0] not in SAFE_PICKLE_MODULES:
                    return True
    except Exception:  # not a pickle, or cut short: nothing found to run
        return False
    return False
