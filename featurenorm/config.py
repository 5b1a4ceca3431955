"""One flat JSON config mapped onto a typed dataclass, with ``--set key=value`` overrides.

The seed project's format loads unchanged: numbers may arrive as strings, ``epoch`` is an
alias of ``epochs``, and the OOD paths use the keys ``svhn``, ``textures``, ``lsun``,
``lsun-resize``, ``isun`` and ``places365``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .benchmarks import BENCHMARKS, DEFAULT_BENCHMARK
from .errors import ConfigError, UserError
from .arch_config import model_key_problem, preprocessing_defaults
from .core.criteria import CRITERIA

# Keys of the OOD benchmark folders, as they are spelled in JSON (seed format).
OOD_KEYS = ("svhn", "textures", "lsun", "lsun-resize", "isun", "places365", "cifar10", "cifar100",
            "inaturalist", "sun", "places", "mnist", "fashion_mnist")
# ID data sets whose images are not RGB: their channels, when the config does not set ``channels``.
DATA_CHANNELS = {"mnist": 1, "fashion_mnist": 1}

# JSON spellings that differ from the dataclass field name.
ALIASES = {"epoch": "epochs", "lsun-resize": "lsun_resize"}
REQUIRED = ("id_dataset", "save_path")
# Keys written into a run's config.json for provenance; skipped when that file is loaded again.
RECORD_ONLY = ("git_commit",)
# Spellings from other code bases that string similarity cannot link to ours.
SYNONYMS = {"learning_rate": "lr", "wd": "weight_decay", "model": "arch", "architecture": "arch",
            "num_epochs": "epochs", "n_epochs": "epochs"}


@dataclass
class Config:
    """Every key a config file may hold. Defaults follow the paper's ResNet-18 CIFAR-10 recipe."""

    # --- model
    arch: str = "resnet18"  # resnet18/34/50, wrn28_10, wrn{depth}_{widen}, vgg11/13/16, timm/<name>, torchvision/<name>
    width: float = 1.0  # channel multiplier for our own architectures (tiny models for tests and CPU)
    num_classes: int | None = None  # None: from the data; when set, checked against the data set
    pretrained: bool = False  # timm, torchvision: start from their weights (local cache; fetched only with download)
    weights: str | None = None  # torchvision weights enum member (IMAGENET1K_V1, ...), also the preprocessing; None: DEFAULT
    weights_file: str | None = None  # a state_dict file (any key prefix) loaded into a timm/ or torchvision/ arch
    blocks: list[str] | None = None  # the modules select_block.py scores; None: the model's own list
    # --- ID data
    id_dataset: str = ""  # digits, mnist, fashion_mnist, cifar10, cifar100, or a folder (recognised as below)
    dataset: str | None = None  # force cifar10, cifar100, mnist, fashion_mnist, digits, imagefolder or imagenet
    channels: int | None = None  # None: the ID data's own (1 for mnist, fashion_mnist; else 3); 3 on gray data repeats it
    data_root: str = "./data"  # where the data sets given by name live
    download: bool = False  # let torchvision fetch missing data (md5-checked) and pretrained weights (hash-checked)
    image_size: int = 32  # input size; evaluated images are resized (or cropped) to it. timm/torchvision: the model's own
    resize_size: int | None = None  # None: stretch to image_size; else shorter side to it, then a center crop
    interpolation: str = "bilinear"  # the evaluation resize; timm/torchvision archs: the model's own
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # normalization, one per channel (the paper's)
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # normalization, one per channel
    crop_padding: int = 4  # random-crop padding for training (0: off)
    hflip: bool = True  # random horizontal flip for training
    # --- training
    epochs: int = 100  # training epochs
    batch_size: int = 128  # global batch, split across torchrun processes
    lr: float = 0.1  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    nesterov: bool = False  # Nesterov momentum
    milestones: list[int] | None = None  # MultiStepLR epochs; None: 50%, 75% and 90% of epochs ([50, 75, 90] for 100)
    gamma: float = 0.1  # MultiStepLR factor
    seed: int = 0  # model init, data order, augmentation, selection subsample, puzzles and pseudo-OOD
    # --- execution
    device: str = "auto"  # auto (CUDA if available, else CPU), cpu, cuda, cuda:N
    loader: str = "auto"  # gpu: uint8 data on the device, batched augmentation (CIFAR, digits); torch: DataLoader
    num_workers: int = 2  # DataLoader workers (the torch loader and OOD folders)
    amp: str = "auto"  # auto: bf16 autocast on GPUs that support it
    channels_last: bool = False  # off unless asked: measured slower, or hanging, on some CPUs (Performance)
    compile: bool = False  # torch.compile the training model
    eval_batch_size: int = 256  # batch size for selection and evaluation
    save_path: str = ""  # the run folder
    stop_grace_seconds: float = 30.0  # after SIGINT/SIGTERM, how long a training step may take to finish and save
    # --- block selection
    jigsaw_grid: int = 3  # puzzle grid (grid x grid tiles)
    selection_samples: int | None = None  # default of --num-samples; None: all, or the data set's subsample (ImageNet)
    fit_samples: int | None = None  # ID-train images the fitted methods read (seed 0); None: as selection_samples
    criterion: str = "norm_ratio"  # default of --criterion
    pseudo_ood: list[str] = field(default_factory=lambda: ["jigsaw"])  # default of --pseudo-ood, the jigsaw among them
    # --- OOD benchmark folders (None: not configured)
    svhn: str | None = None  # the folder holding SVHN's test_32x32.mat
    textures: str | None = None  # the DTD images folder
    lsun: str | None = None  # the LSUN-C folder
    lsun_resize: str | None = None  # the LSUN-R folder
    isun: str | None = None  # the iSUN folder
    places365: str | None = None  # the Places365 folder (subsampled)
    cifar10: str | None = None  # CIFAR-10, near-OOD when it is not the ID set
    cifar100: str | None = None  # CIFAR-100, near-OOD when it is not the ID set
    inaturalist: str | None = None  # the iNaturalist folder of benchmark imagenet_four
    sun: str | None = None  # the SUN folder of benchmark imagenet_four
    places: str | None = None  # the Places folder of benchmark imagenet_four
    mnist: str | None = None  # the folder of MNIST's IDX files (featurenorm.data.idx); its test split is scored
    fashion_mnist: str | None = None  # the same for Fashion-MNIST
    places365_samples: int = 10000  # Places365 subsample size (seed 0; benchmark paper)
    # --- benchmark: which table of data sets (featurenorm.benchmarks) a run scores
    benchmark: str = DEFAULT_BENCHMARK  # paper (CIFAR, MNIST, digits, ImageFolder), imagenet_four, openood_v1.5
    openood_root: str | None = None  # OpenOOD's data folder (benchmark_imglist/, images_classic/); for openood_v1.5
    # --- method hyperparameters
    odin_temperature: float = 1000.0  # ODIN (and odin_blocknorm) temperature
    odin_epsilon: float = 0.0014  # ODIN step in pixel units: on normalized channel c, epsilon / std[c]
    energy_temperature: float = 1.0  # energy T (also ReAct, DICE, ASH)
    react_percentile: float = 90.0  # ReAct clipping percentile of ID-train activations
    dice_sparsity: float = 90.0  # DICE weight sparsity (%)
    ash_percentile: float = 90.0  # ASH-S pruning percentile
    knn_k: int = 50  # KNN k
    vim_dim: int | None = None  # ViM subspace dimension; None: 1000 for D >= 2048, 512 for D >= 768, else D // 2

    def __post_init__(self) -> None:
        if self.channels is None:
            self.channels = data_channels(self.dataset or self.id_dataset)
        for key in ("mean", "std"):  # a single value repeated over RGB (the default) means that value per channel
            values = getattr(self, key)
            if len(values) == 3 and len(set(values)) == 1 and self.channels != 3:
                setattr(self, key, [values[0]] * self.channels)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, with JSON spellings (``lsun-resize``)."""
        out = dataclasses.asdict(self)
        out["lsun-resize"] = out.pop("lsun_resize")
        return out

    def ood_paths(self) -> dict[str, str]:
        """The configured OOD folders, keyed by benchmark name, in table order."""
        paths = {k: getattr(self, ALIASES.get(k, k)) for k in OOD_KEYS}
        return {k: v for k, v in paths.items() if v}

    @property
    def save_dir(self) -> Path:
        return Path(self.save_path)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)
CHOICES = {
    "device": None,  # free form: auto, cpu, cuda, cuda:1, mps
    "loader": ("auto", "gpu", "torch"),
    "amp": ("auto", "bf16", "fp16", "fp32"),
    "criterion": CRITERIA.keys(),  # a live view: criteria registered later are valid too
    "benchmark": tuple(BENCHMARKS),
    "interpolation": ("bilinear", "bicubic"),
}


# The default learning-rate schedule, as fractions of the run: the paper's [50, 75, 90] of 100 epochs.
MILESTONE_FRACTIONS = (0.5, 0.75, 0.9)


def default_milestones(epochs: int) -> list[int]:
    """The paper's schedule scaled to ``epochs``: ``[50, 75, 90]`` for 100, ``[5, 8, 9]`` for 10."""
    return [max(1, round(fraction * epochs)) for fraction in MILESTONE_FRACTIONS]


PERCENTILE_KEYS = ("react_percentile", "dice_sparsity", "ash_percentile")


def check_percentile(key: str, value: float) -> float:
    """``value`` as a float if it lies in [0, 100) (100 would prune or clip everything), else ValueError."""
    if not 0 <= value < 100:
        raise ValueError(f"{key} must be in [0, 100), got {float(value)}")
    return float(value)


def _valid_keys() -> list[str]:
    return sorted([k for k in FIELDS if k != "lsun_resize"] + list(ALIASES))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the type ``hint``; strings that hold numbers are accepted (seed format)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, str):  # --set blocks=layer3.1,layer4.0
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint in (int, float):
        return _number(key, value, hint)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _number(key: str, value: Any, kind: type) -> int | float:
    """``value`` as ``kind`` (int or float): a number, or text of one; a bool, or a fraction for an int, is refused."""
    if not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and (kind is float or value.is_integer())):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
    raise ConfigError(f"config key '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")


def _field_name(key: str) -> str:
    name = ALIASES.get(key, key)
    if name not in FIELDS:
        # suggest the canonical spelling ('epochs', not the seed alias 'epoch')
        canonical = [k for k in _valid_keys() if k != "epoch"]
        close = [SYNONYMS[key]] if key in SYNONYMS else difflib.get_close_matches(key, canonical, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(_valid_keys())}"
        raise ConfigError(f"unknown config key '{key}'{hint}")
    return name


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value``; the value is read as JSON when it parses, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a validated :class:`Config` from a flat mapping (JSON spellings allowed)."""
    values: dict[str, Any] = {}
    where = f"{source}: " if source != "config" else ""  # name the file when there is one
    for key, value in raw.items():
        if key in RECORD_ONLY:
            continue
        try:
            name = _field_name(key)
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None
        try:
            values[name] = _coerce(key, value, _HINTS[name])
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ConfigError(f"{source}: missing required key '{missing[0]}' (add it to the config file or pass --set {missing[0]}=...)")
    channels = values.get("channels") or data_channels(values.get("dataset") or values["id_dataset"])
    try:  # a timm/torchvision model's own evaluation preprocessing, for every key the config leaves out
        values = {**preprocessing_defaults(values, channels), **values}
    except UserError as err:
        raise ConfigError(f"{where}{err}") from None
    cfg = Config(**values)
    validate(cfg, source)
    if cfg.milestones is None:
        cfg.milestones = default_milestones(cfg.epochs)
    return cfg


def validate(cfg: Config, source: str = "config") -> None:
    """Range checks that a type cannot express."""
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{source}: config key '{key}' {why}")

    for key, allowed in CHOICES.items():
        if allowed and getattr(cfg, key) not in allowed:
            bad(key, f"must be one of {', '.join(allowed)}, got '{getattr(cfg, key)}'")
    for key in ("epochs", "batch_size", "image_size", "eval_batch_size", "knn_k", "places365_samples", "jigsaw_grid"):
        if getattr(cfg, key) < 1:
            bad(key, f"must be at least 1, got {getattr(cfg, key)}")
    for key in ("lr", "weight_decay", "momentum", "odin_temperature", "energy_temperature", "odin_epsilon"):
        if getattr(cfg, key) < 0:
            bad(key, f"must not be negative, got {getattr(cfg, key)}")
    if cfg.lr == 0:
        bad("lr", "must be positive, got 0")
    if cfg.width <= 0:
        bad("width", f"must be positive, got {cfg.width}")
    if cfg.num_classes is not None and cfg.num_classes < 2:
        bad("num_classes", f"must be at least 2, got {cfg.num_classes}")
    if not 0 < cfg.gamma <= 1:
        bad("gamma", f"must be in (0, 1], got {cfg.gamma}")
    if cfg.num_workers < 0:
        bad("num_workers", f"must not be negative, got {cfg.num_workers}")
    if cfg.milestones is not None:
        if any(m < 1 for m in cfg.milestones):
            bad("milestones", f"must be at least 1, got {cfg.milestones}")
        if sorted(cfg.milestones) != cfg.milestones:
            bad("milestones", f"must be increasing, got {cfg.milestones}")
        late = [m for m in cfg.milestones if m > cfg.epochs]
        if late:  # a shortened run keeps its file: warn, never fail
            warnings.warn(f"{source}: milestone(s) {late} lie beyond the last epoch ({cfg.epochs}) and never fire; "
                          "lower them or leave 'milestones' out to scale the schedule with 'epochs'", stacklevel=3)
    for key in PERCENTILE_KEYS:
        try:
            check_percentile(key, getattr(cfg, key))
        except ValueError as err:
            bad(key, str(err)[len(key) + 1:])
    if cfg.channels not in (1, 3):
        bad("channels", f"must be 1 (grayscale) or 3 (RGB), got {cfg.channels}")
    for key in ("mean", "std"):
        if len(getattr(cfg, key)) != cfg.channels:
            bad(key, f"must have one value per channel: {cfg.channels} for channels {cfg.channels}, "
                     f"got {len(getattr(cfg, key))}")
    if any(s <= 0 for s in cfg.std):
        bad("std", "must be positive")
    for key in ("selection_samples", "fit_samples"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            bad(key, "must be at least 1")
    if model_key_problem(cfg.arch, cfg.weights, cfg.weights_file, cfg.pretrained):
        bad(*model_key_problem(cfg.arch, cfg.weights, cfg.weights_file, cfg.pretrained))
    if cfg.resize_size is not None and cfg.resize_size < cfg.image_size:
        bad("resize_size", f"must be at least image_size ({cfg.image_size}), got {cfg.resize_size}")
    if cfg.vim_dim is not None and cfg.vim_dim < 1:
        bad("vim_dim", "must be at least 1")
    root_key = BENCHMARKS[cfg.benchmark].root_key
    if root_key and not getattr(cfg, root_key):
        bad(root_key, f"is required with benchmark '{cfg.benchmark}': the folder holding "
                      f"{BENCHMARKS[cfg.benchmark].root_holds} (e.g. --set {root_key}=./data/openood)")
    if not cfg.pseudo_ood:
        bad("pseudo_ood", "must list at least one pseudo-OOD kind, e.g. [\"jigsaw\"]")


def data_channels(id_dataset: str) -> int:
    """The image channels of an ID data set named ``id_dataset`` (a name, or a folder named after one)."""
    base = Path(id_dataset).name.lower().replace("-", "_")
    if base in DATA_CHANNELS:
        return DATA_CHANNELS[base]
    return next((DATA_CHANNELS[name] for name in sorted(DATA_CHANNELS, key=len, reverse=True) if name in base), 3)


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object; a syntax error is reported with its line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing file, e.g. --config conf/digits.json")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (an editor may have saved it as UTF-16); save it as UTF-8") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a JSON object {{...}}, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Load a config file (or ``base``), apply ``key=value`` overrides, validate and return it."""
    raw = dict(base or {})
    if path is not None:
        raw.update(read_json(path))
    for text in overrides:
        key, value = parse_override(text)
        _field_name(key)  # unknown override keys fail here, with a suggestion
        # an override replaces any spelling of the same key; key=null resets it to its default
        for k in [k for k in raw if ALIASES.get(k, k) == ALIASES.get(key, key)]:
            del raw[k]
        if value is not None:
            raw[key] = value
    return from_dict(raw, source=str(path) if path is not None else "config")
