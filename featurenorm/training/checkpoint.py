"""Checkpoints: atomic writes, and loading that never runs code (``weights_only=True``)."""
from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, from_dict
from ..errors import UserError
from ..files import atomic_path
from ..models import build_model

FORMAT = "featurenorm-checkpoint/1"
# Modules a legacy (non-zip) torch.save file imports to rebuild tensors; anything else is code.
SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, then rename)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely; every failure is a one-line :class:`UserError`."""
    path = Path(path)
    state = _torch_load(path, device)
    if not is_featurenorm_checkpoint(state):
        raise UserError(f"'{path}' is not a featurenorm checkpoint (no model/config/num_classes entries)")
    return state


def _torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
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


def is_featurenorm_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and all(key in state for key in ("model", "config", "num_classes"))


# Where other code bases keep the weights inside a checkpoint dict, and the prefixes their wrappers add.
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


def _head_classes(weights: dict[str, torch.Tensor]) -> int | None:
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
    import pickletools

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


def checkpoint_config(state: dict[str, Any]) -> Config:
    return from_dict(state["config"], source="checkpoint config")


def model_from_state(state: dict[str, Any], path: str | Path = "checkpoint") -> tuple[nn.Module, Config]:
    cfg = checkpoint_config(state)
    model = build_model(cfg.arch, state["num_classes"], width=cfg.width, in_channels=cfg.channels)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"checkpoint '{path}' does not fit {cfg.arch} with {state['num_classes']} classes "
                        f"({str(err).splitlines()[0]})") from None
    return model, cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    cfg: Config | None = None) -> tuple[nn.Module, Config]:
    """Load a trained model and its config; the model comes back in eval mode on ``device``.

    A featurenorm checkpoint carries its config. A checkpoint from elsewhere (see :func:`load_for_config`)
    needs ``cfg`` for its architecture.
    """
    path = Path(path)
    state = _torch_load(path, "cpu")
    if is_featurenorm_checkpoint(state):
        model, saved = model_from_state(state, path)
        return model.to(device).eval(), saved
    if cfg is None:
        raise UserError(f"'{path}' is not a featurenorm checkpoint; pass cfg= (a Config naming its arch) to load "
                        "its weights")
    return load_for_config(cfg, path, torch.device(device)), cfg


def check_compatible(state: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """The checkpoint must match the config's architecture and class count; say both when not."""
    saved = state["config"]
    if saved.get("arch") != cfg.arch or (cfg.num_classes is not None and state["num_classes"] != cfg.num_classes):
        raise UserError(f"checkpoint '{path}' is {saved.get('arch')} with {state['num_classes']} classes but the config "
                        f"asks for {cfg.arch} with {cfg.num_classes} classes; use the matching config or checkpoint")
    if float(saved.get("width", 1.0)) != float(cfg.width):
        raise UserError(f"checkpoint '{path}' has width {saved.get('width')} but the config has {cfg.width}; "
                        "use the matching config or checkpoint")


def default_checkpoint(cfg: Config, path: str | Path | None) -> Path:
    """``--checkpoint`` when given, else ``<save_path>/last.pt``."""
    return Path(path) if path else cfg.save_dir / "last.pt"


def load_for_config(cfg: Config, path: str | Path, device: torch.device) -> nn.Module:
    """The config's model with the checkpoint's weights; eval mode, on ``device``.

    A featurenorm checkpoint must agree with the config (arch, width, classes). A checkpoint from
    elsewhere (a plain state_dict, one under ``state_dict``/``model``/``net``, DDP or torch.compile
    prefixes, OpenOOD's ``fc`` head) is loaded into ``cfg.arch`` built from the config.
    """
    path = Path(path)
    state = _torch_load(path)
    if is_featurenorm_checkpoint(state):
        check_compatible(state, cfg, path)
        model, _ = model_from_state(state, path)
        if cfg.num_classes is None:
            cfg.num_classes = state["num_classes"]
    else:
        weights = foreign_state_dict(state)
        if weights is None:
            raise UserError(f"'{path}' holds neither a featurenorm checkpoint nor a state_dict (looked under "
                            f"{', '.join(STATE_DICT_KEYS)}); pass a checkpoint of the configured arch")
        if cfg.num_classes is None:
            cfg.num_classes = _head_classes(weights) or _pretrained_classes(cfg)
        if cfg.num_classes is None:
            raise UserError(f"cannot tell the class count of '{path}'; set num_classes in the config")
        model = build_model(cfg.arch, cfg.num_classes, width=cfg.width, in_channels=cfg.channels)
        load_foreign_weights(model, weights, path)
    return _placed(model, cfg, device)


def _placed(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The model in eval mode on ``device``, channels-last when the config asks (the loaders hand over
    channels-last batches too)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _pretrained_classes(cfg: Config) -> int | None:
    """The class count of a torchvision arch's weights (1000 for ImageNet-1K); None for other archs."""
    from ..models.torchvision_models import is_torchvision_arch, num_categories

    return num_categories(cfg.arch, cfg.weights) if is_torchvision_arch(cfg.arch) else None


# ``--checkpoint none``: no checkpoint file; the model as the config builds it.
NO_CHECKPOINT = "none"


@dataclass(frozen=True)
class WeightsSource:
    """Where a run's model weights came from.

    Attributes:
        description: what ``block_selection.json`` and ``ood_results.json`` record as ``checkpoint``:
            the file's path, or ``random init (seed S)`` / ``timm pretrained <name>``.
        file: the file the weights were read from (hashed for the fit cache); None when there is none.
    """

    description: str
    file: Path | None = None

    def fingerprint(self) -> str:
        """sha256 of the weights file, else of the description."""
        digest = hashlib.sha256()
        if self.file is None:
            digest.update(self.description.encode())
            return digest.hexdigest()
        with open(self.file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def load_run_model(cfg: Config, checkpoint: str | Path | None, device: torch.device) -> tuple[nn.Module, WeightsSource]:
    """The model select_block.py and eval_ood.py score, in eval mode on ``device``, and where its weights came from.

    - ``checkpoint`` a path: that file (a featurenorm checkpoint or a foreign state_dict, see :func:`load_for_config`);
    - ``checkpoint`` ``"none"``: no file; the model as the config builds it: the torchvision/timm pretrained
      weights when ``pretrained`` is true, else a random init seeded by ``seed`` (the same in every process);
    - ``checkpoint`` None: ``<save_path>/last.pt`` when it exists; else, when ``pretrained`` is true, as for
      ``"none"``; else a UserError (a randomly initialised model is never scored by accident).
    """
    if checkpoint is not None and str(checkpoint) != NO_CHECKPOINT:
        path = Path(checkpoint)
        return load_for_config(cfg, path, device), WeightsSource(str(path), path)
    last = default_checkpoint(cfg, None)
    if checkpoint is None and last.is_file():
        return load_for_config(cfg, last, device), WeightsSource(str(last), last)
    if checkpoint is None and not (cfg.pretrained or cfg.weights_file):
        raise UserError(f"checkpoint '{last}' not found; train first (python train.py --config ...), pass "
                        "--checkpoint PATH, set pretrained true for torchvision/timm weights, or pass "
                        f"--checkpoint {NO_CHECKPOINT} to score the randomly initialised model")
    model, source = _built_model(cfg)
    return _placed(model, cfg, device), source


def _built_model(cfg: Config) -> tuple[nn.Module, WeightsSource]:
    from ..data.datasets import num_classes_of
    from .weights import build_configured
    from ..models.torchvision_models import is_torchvision_arch, resolve_weights, weights_file

    torchvision = is_torchvision_arch(cfg.arch)
    if cfg.pretrained and not (torchvision or cfg.arch.startswith("timm/")):
        raise UserError(f"pretrained weights exist only for torchvision/<name> and timm/<name> archs, not "
                        f"'{cfg.arch}'; set pretrained false and pass --checkpoint PATH")
    num_classes = cfg.num_classes
    if num_classes is None:
        num_classes = _pretrained_classes(cfg) if torchvision else num_classes_of(cfg)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(cfg.seed)  # a random init must be the same in select_block.py and eval_ood.py
        model = build_configured(cfg, num_classes)
    if cfg.weights_file:
        return model, WeightsSource(str(cfg.weights_file), Path(cfg.weights_file))
    if not cfg.pretrained:
        return model, WeightsSource(f"random init (seed {cfg.seed})")
    if torchvision:
        path = weights_file(resolve_weights(cfg.arch.split("/", 1)[1], cfg.weights))
        return model, WeightsSource(str(path), path)
    from ..models.timm_models import cached_weights

    path = cached_weights(cfg.arch.split("/", 1)[1])[0]  # the file it was just read from (or downloaded to)
    return model, WeightsSource(str(path), path) if path else WeightsSource(f"timm pretrained {cfg.arch[5:]}")
